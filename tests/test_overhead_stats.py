"""Overhead statistics on constructed samples: significant vs not, stable vs unstable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.analysis import overhead as oh

# Ten rounds around 1000/s with ~1 % noise, and a collector 20 % slower.
BASE = [1000, 1010, 990, 1005, 995, 1002, 998, 1008, 992, 1000]
SLOW = [x * 0.8 for x in [1003, 995, 1001, 1009, 990, 1000, 1004, 996, 998, 1006]]
SAME = [1001, 996, 1004, 999, 1003, 994, 1006, 1000, 997, 1002]


def test_summary_and_cv():
    s = oh.summarize([10, 10, 10])
    assert (s.n, s.mean, s.median, s.stdev, s.cv) == (3, 10, 10, 0, 0)
    one = oh.summarize([5.0])
    assert one.stdev is None and one.cv is None
    with pytest.raises(ValueError):
        oh.summarize([])
    with pytest.raises(ValueError):
        oh.summarize([1.0, float("nan")])


def test_significant_slowdown():
    c = oh.compare(BASE, SLOW, paired=True)
    assert c.ratio == pytest.approx(0.8, abs=0.01)
    assert c.ci95 is not None and c.ci95[0] < c.ratio < c.ci95[1] < 0.85
    assert c.p is not None and c.p < 1e-6 and c.significant is True
    assert c.p_mannwhitney is not None and c.p_mannwhitney < 0.001
    assert c.paired_ratio == pytest.approx(0.8, abs=0.01)
    assert c.paired_ci95 is not None and c.paired_ci95[1] < 1 and c.paired_p < 1e-6


def test_no_difference_is_not_significant():
    c = oh.compare(BASE, SAME, paired=True)
    assert c.ratio == pytest.approx(1.0, abs=0.005)
    assert c.ci95 is not None and c.ci95[0] < 1.0 < c.ci95[1]
    assert c.p is not None and c.p > 0.3 and c.significant is False
    assert c.p_mannwhitney is not None and c.p_mannwhitney > 0.3


def test_t_interval_matches_a_simulation():
    """The delta-method interval covers the true ratio about 95 % of the time."""
    rng = np.random.default_rng(7)
    hits = 0
    trials = 400
    for _ in range(trials):
        b = rng.normal(1000, 30, 8)
        t = rng.normal(900, 30, 8)
        lo, hi = oh.ratio_ci_t(b, t)  # type: ignore[misc]
        hits += lo < 0.9 < hi
    assert 0.90 < hits / trials < 0.99


def test_bootstrap_interval_is_seeded_and_close_to_t():
    a = oh.ratio_ci_bootstrap(BASE, SLOW)
    assert a == oh.ratio_ci_bootstrap(BASE, SLOW)
    t = oh.ratio_ci_t(BASE, SLOW)
    assert a is not None and t is not None
    assert a[0] == pytest.approx(t[0], abs=0.01) and a[1] == pytest.approx(t[1], abs=0.01)
    assert oh.compare(BASE, SLOW, ci="bootstrap").ci_method == "percentile-bootstrap"
    with pytest.raises(ValueError):
        oh.compare(BASE, SLOW, ci="guess")


def test_undefined_is_none_not_a_number():
    c = oh.compare([1000.0], [800.0])
    assert c.ratio == pytest.approx(0.8)
    assert c.ci95 is None and c.p is None and c.significant is None
    with pytest.raises(ValueError):
        oh.compare([0.0, 1.0], [1.0, 1.0])  # a ratio to zero is no measurement
    with pytest.raises(ValueError):
        oh.paired_log_ratio([1.0, 2.0], [1.0])


def test_constant_groups():
    assert oh.welch_p([5, 5, 5], [5, 5, 5]) == 1.0
    assert oh.welch_p([5, 5, 5], [4, 4, 4]) == 0.0
    assert oh.ratio_ci_t([5, 5, 5], [4, 4, 4]) == (0.8, 0.8)


def test_stable_series_has_no_warning():
    assert oh.instability_warnings("none throughput", BASE) == []


def test_unstable_series_warns():
    noisy = [1000, 1300, 800, 1250, 700, 1100]
    w = oh.instability_warnings("none throughput", noisy)
    assert any("unstable" in x and "none throughput" in x for x in w)


def test_too_few_rounds_and_outlier_warn():
    w = oh.instability_warnings("x", [1000, 1001, 999])
    assert len(w) == 1 and "only 3 rounds" in w[0]
    w = oh.instability_warnings("x", [1000, 1001, 999, 1002, 998, 1000, 400])
    assert any("from the median" in x for x in w)


def test_throughput_and_latency_from_workload_records():
    recs = [{"t_start_ns": 0, "t_end_ns": 10_000_000, "phase": "warmup"}] + [
        {"t_start_ns": 1_000_000_000 + i * 10_000_000,
         "t_end_ns": 1_000_000_000 + i * 10_000_000 + (i + 1) * 100_000, "phase": "main"}
        for i in range(100)
    ]  # fmt: skip
    # 100 main exchanges from t=1 s to the last end at 1 s + 990 ms + 10 ms
    assert oh.throughput(recs) == pytest.approx(100.0)
    lat = oh.latency_percentiles(recs)
    assert lat is not None
    assert lat["p50_ms"] == pytest.approx(5.05) and lat["p99_ms"] == pytest.approx(9.901)
    assert oh.throughput([]) is None and oh.latency_percentiles([]) is None


def test_per_hit():
    assert oh.per_hit_ns(9_500, 10) == 950
    assert oh.per_hit_ns(0, 0) is None


def test_analyse_configs_ratios_and_warnings():
    samples = {
        "none": {"throughput": BASE, "p99_ms": [2.0] * 9 + [2.1]},
        "kprobe": {"throughput": SLOW, "p99_ms": [2.6] * 9 + [2.5]},
        "uprobe": {"throughput": [1000, 1400, 700, 1300, 700, 1000, 900, 1200, 800, 1100]},
    }
    out, warnings = oh.analyse_configs(samples, label="grpc-unary/go2go")
    k = out["kprobe"]
    assert k["throughput_ratio"] == pytest.approx(0.8, abs=0.01)
    assert k["ci95"] == k["throughput_ci95"] and k["ci95"][1] < 1
    assert k["significant"] is True and k["p"] < 0.001
    assert k["p99_ratio"] == pytest.approx(2.59 / 2.01, rel=1e-6)
    assert k["throughput_samples"] == [float(x) for x in SLOW]
    assert "throughput_ratio" not in out["none"]
    assert out["uprobe"]["significant"] is False
    assert warnings == ["grpc-unary/go2go uprobe throughput: unstable, the standard deviation "
                        "is 24% of the mean (above 10%)"]  # fmt: skip
    assert math.isclose(out["none"]["throughput"]["mean"], float(np.mean(BASE)))
    with pytest.raises(ValueError):
        oh.analyse_configs({"kprobe": {"throughput": BASE}})


def test_core_share_adds_process_and_bpf_time():
    s = oh.core_share(0.01, 0.02, 0.03, 2.0, 100)
    assert s["core_pct"] == pytest.approx(3.0)
    assert (s["user_pct"], s["system_pct"], s["bpf_pct"]) == pytest.approx((0.5, 1.0, 1.5))
    assert s["context_switches_per_s"] == pytest.approx(50)
    assert oh.core_share(1, 1, 1, 0.0, 5)["core_pct"] is None


def test_core_share_takes_the_exact_process_time_and_splits_it_by_the_ticks():
    # 30 ms of ticks (1 user : 2 system) over 2 s, but the scheduler counted 12 ms
    s = oh.core_share(0.01, 0.02, 0.03, 2.0, 100, cpu_ns=12_000_000)
    assert s["process_pct"] == pytest.approx(0.6)
    assert s["core_pct"] == pytest.approx(0.6 + 1.5)
    assert (s["user_pct"], s["system_pct"]) == pytest.approx((0.2, 0.4))
    assert s["core_pct_ticks"] == pytest.approx(3.0)  # what schema 3 called core_pct
    # no tick fell in the span: the split is unknown, never guessed; the total stands
    z = oh.core_share(0.0, 0.0, 0.0, 2.0, 10, cpu_ns=2_000_000)
    assert z["core_pct"] == pytest.approx(0.1) and z["user_pct"] is None
    assert z["system_pct"] is None and z["user_system_split"].startswith("unknown")


def test_idle_share_per_thread():
    i = oh.idle_share(4_000_000, 1_000_000.0, 2.0, 20,
                      {"main": {"cpu_ns": 3_000_000, "context_switches": 10},
                       "pb-sockdiag": {"cpu_ns": 1_000_000, "context_switches": 10}})
    assert i["process_pct"] == pytest.approx(0.2) and i["bpf_pct"] == pytest.approx(0.05)
    assert i["context_switches_per_s"] == pytest.approx(10)
    assert i["threads"]["main"]["process_pct"] == pytest.approx(0.15)
    assert oh.idle_share(1, 0.0, 0.0, 0, {}) == {"wall_s": 0.0}


def test_predicted_ratio():
    assert oh.predicted_ratio(0.0, 10_000) == 1.0
    # 100 us more per exchange at 10k/s over two CPUs: half the CPUs' time added
    assert oh.predicted_ratio(100_000, 10_000) == pytest.approx(1 / 1.5)
    assert oh.predicted_ratio(None, 10_000) is None
    assert oh.predicted_ratio(1.0, None) is None


def test_decompose_against_the_floor():
    workload = {
        "configs": {
            "none": {"throughput": {"mean": 10_000.0}},
            "kprobe": {
                "throughput_ratio": 0.9, "throughput_ci95": [0.85, 0.95], "p99_ratio": 1.2,
                "collectors": {"kprobe": {"cpu_user_s_per_1k": 0.01, "cpu_system_s_per_1k": 0.002,
                                          "context_switches_per_1k": 12.0}},
            },
            "uprobe": {"not_measured": "no probes"},
        },
        "bpf_run_time": {
            "target_hits_per_exchange": 16.0,
            "by_kind": {"tracepoint": {"hits_per_exchange": 40.0, "ns_per_exchange": 8000.0,
                                       "ns_per_hit": 200.0}},
        },
        "fixed_rate": {"configs": {"kprobe": {"kprobe": {"core_pct": 1.5, "bpf_pct": 0.4,
                                                         "context_switches_per_s": 60.0}}}},
    }  # fmt: skip
    d = oh.decompose(workload, {"tracepoint_added_ns": 50.0, "uprobe_added_ns": 9000.0})
    assert set(d) == {"kprobe"}  # uprobe not measured: no made-up row
    k = d["kprobe"]
    # the floor counts the workload's own hits, not other processes' passing the filter
    assert k["hits_per_exchange"] == 16.0 and k["hits_per_exchange_all_processes"] == 40.0
    assert k["floor_ns_per_exchange"] == pytest.approx(800.0)
    assert k["bpf_per_hit_over_trap"] == pytest.approx(4.0)
    assert k["predicted_ratio_floor"] == pytest.approx(1 / (1 + 800 * 10_000 / 2e9))
    assert k["predicted_ratio_floor_and_bpf"] == pytest.approx(1 / (1 + 8800 * 10_000 / 2e9))
    assert k["fixed_rate_core_pct"] == 1.5 and k["context_switches_per_1k"] == 12.0
    assert oh.decompose(workload, None)["kprobe"]["floor_ns_per_exchange"] is None
    # the recorder's CPU (12 ms per 1k = 12,000 ns per exchange) competes for the cores too
    assert k["recorder_ns_per_exchange"] == pytest.approx(12_000.0)
    assert k["predicted_ratio_all"] == pytest.approx(1 / (1 + 20_800 * 10_000 / 2e9))
    assert k["bpf_ns_per_exchange_per_side"] == pytest.approx(4000.0)
    # where the bench read the scheduler's exact time, that is the recorder's CPU
    workload["configs"]["kprobe"]["collectors"]["kprobe"]["cpu_ns_per_exchange"] = 3_000.0
    assert oh.decompose(workload, None)["kprobe"]["recorder_ns_per_exchange"] == 3_000.0


def test_decompose_takes_other_processes_hits_out():
    """24 of the 40 hits per exchange were other processes' syscalls turned away by the
    filter, at 50 ns each (measured idle): 1,200 ns of the 8,000 are not the workload's."""
    workload = {
        "configs": {"none": {"throughput": {"mean": 10_000.0}},
                    "kprobe": {"throughput_ratio": 0.9}},
        "bpf_run_time": {
            "target_hits_per_exchange": 16.0,
            "idle": {"seconds": 0.3, "kprobe_hits": 900, "kprobe_ns_per_hit": 50.0},
            "by_kind": {"tracepoint": {"hits_per_exchange": 40.0, "ns_per_exchange": 8000.0,
                                       "ns_per_hit": 200.0}},
        },
    }  # fmt: skip
    k = oh.decompose(workload, {"tracepoint_added_ns": 50.0})["kprobe"]
    assert k["bpf_ns_per_exchange"] == pytest.approx(6800.0)
    assert k["bpf_ns_per_exchange_all_processes"] == 8000.0
    assert k["bpf_ns_per_hit"] == pytest.approx(6800.0 / 16)
    assert oh.others_bpf_ns(10, 16, 50.0) == 0.0  # never negative


def test_decompose_sets_the_kernel_side_beside_its_floor_builds():
    """The floor pass's raw runs per build: BPF of the workload's own hits per side (other
    processes' hits at the idle cost taken out, as for the collector itself), per hit, and
    the fixed-rate share of a core; only the kernel side gets them."""
    workload = {
        "configs": {"none": {"throughput": {"mean": 10_000.0}},
                    "kprobe": {"throughput_ratio": 0.9},
                    "kprobe-filter": {"throughput_ratio": 0.97, "throughput_ci95": [0.9, 1.0]}},
        "bpf_run_time": {"target_hits_per_exchange": 12.0,
                         "by_kind": {"tracepoint": {"hits_per_exchange": 12.0,
                                                    "ns_per_exchange": 8000.0}}},
    }  # fmt: skip
    def build(ns: float, pct: float) -> dict[str, object]:
        return {"throughput": 20_000.0, "target_hits_per_exchange": 12.0,
                "by_kind": {"tracepoint": {"hits_per_exchange": 14.0, "ns_per_exchange": ns}},
                "idle": {"kprobe_ns_per_hit": 100.0},
                "fixed_rate": {"core_pct": pct, "bpf_pct": pct - 0.4, "process_pct": 0.4}}
    floors = {"collector": build(8200.0, 2.3), "record": build(4800.0, 1.5),
              "filter": build(1400.0, 0.6)}  # fmt: skip
    d = oh.decompose(workload, {"tracepoint_added_ns": 50.0}, floors)
    f = d["kprobe"]["floor_builds"]
    assert list(f) == ["collector", "record", "filter"]
    # 2 of the 14 hits per exchange were other processes' at 100 ns: 200 ns not the workload's
    assert f["record"]["bpf_ns_per_exchange_per_side"] == pytest.approx(2300.0)
    assert f["filter"]["bpf_ns_per_hit"] == pytest.approx(1200.0 / 12)
    assert f["collector"]["fixed_rate_core_pct"] == 2.3
    assert f["filter"]["throughput"] == 20_000.0
    # the saturation ratios come from the interleaved rounds, where the build ran as a config
    assert f["filter"]["throughput_ratio"] == 0.97 and f["filter"]["throughput_ci95"] == [0.9, 1.0]
    assert f["collector"]["throughput_ratio"] == 0.9 and f["record"]["throughput_ratio"] is None
    assert "floor_builds" not in oh.decompose(workload, None)["kprobe"]
    # a build without run time says so, and makes nothing up
    floors["filter"]["by_kind"] = {}
    assert oh.decompose(workload, None, floors)["kprobe"]["floor_builds"]["filter"][
        "bpf_ns_per_exchange_per_side"] is None


def test_decompose_the_tls_collector_against_the_uprobe_trap():
    workload = {
        "configs": {
            "none": {"throughput": {"mean": 1000.0}},
            "tls": {"throughput_ratio": 0.8,
                    "collectors": {"tls": {"cpu_user_s_per_1k": 0.1}}},
        },
        "bpf_run_time": {"by_kind": {
            "tls_uprobe": {"hits_per_exchange": 6.0, "ns_per_exchange": 6000.0,
                           "ns_per_hit": 1000.0},
            "tls_tracepoint": {"hits_per_exchange": 50.0, "ns_per_exchange": 5000.0,
                               "ns_per_hit": 100.0},
            # another collector's programs in the same pass are not the TLS collector's
            "uprobe": {"hits_per_exchange": 99.0, "ns_per_exchange": 1.0, "ns_per_hit": 1.0},
        }},
    }  # fmt: skip
    t = oh.decompose(workload, {"tracepoint_added_ns": 50.0, "uprobe_added_ns": 2000.0})["tls"]
    assert t["hits_per_exchange"] == 6.0 and t["floor_ns_per_exchange"] == 12_000.0
    assert t["bpf_per_hit_over_trap"] == pytest.approx(0.5)
    assert t["tracepoint_hits_per_exchange_all_processes"] == 50.0
    assert t["tracepoint_bpf_ns_per_exchange"] == 5000.0 and t["cpu_user_s_per_1k"] == 0.1
