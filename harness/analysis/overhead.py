"""Overhead statistics: per-round samples in, ratios to the baseline with intervals out.

Pure functions, no I/O. The benchmark (benchmarks/bench_overhead.py) measures rounds in
which the baseline (no collector) and each collector configuration run interleaved in
one session; this module turns those samples into what the report prints:

- a ratio of means to the baseline with a 95 % interval (t-based by the delta method on
  the log ratio, Welch degrees of freedom; or a seeded percentile bootstrap),
- a significance test (Welch's t-test, Mann-Whitney U beside it),
- a paired view (the rounds are interleaved, so round i of each configuration shared a
  server process and the machine's state of the moment): the geometric mean of the
  per-round ratios, its t interval and a paired t-test on the logs,
- instability warnings in the spirit of pyperf: a coefficient of variation above 10 %,
  too few rounds, a sample far from the median.

Undefined values (too few samples, a zero baseline) are None, never a made-up number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from harness.collectors import registry

# 2: adds fixed_rate, decomposition, collector context switches and system CPU (v1 keys kept)
# 3: the kernel side's bpf_ns_per_exchange (decomposition, fixed-rate bpf_pct) leaves out other
#    processes' hits (the all-process figure kept beside it); adds per side, the recorder's
#    ns per exchange, predicted_ratio_all, event bytes per exchange, bpf_run_time.idle
# 4: adds floor_builds (the kernel side's floor builds, raw) and decomposition.kprobe.floor_builds
SCHEMA_VERSION = 4
ALPHA = 0.05
CONFIDENCE = 0.95
CV_WARN = 0.10  # pyperf warns when the standard deviation exceeds 10 % of the mean
MIN_ROUNDS = 5
OUTLIER_FACTOR = 1.5  # a sample this far above (or this far below, inverted) the median
BASELINE = "none"
# Higher is better for throughput; lower is better for latencies. Only used for wording.
METRICS = ("throughput", "p50_ms", "p99_ms")


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    median: float
    stdev: float | None  # sample standard deviation (ddof=1); None below 2 samples
    cv: float | None  # stdev / mean
    min: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples: Sequence[float]) -> Summary:
    x = _array(samples)
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if len(x) >= 2 else None
    cv = sd / mean if sd is not None and mean != 0 else None
    return Summary(len(x), mean, float(np.median(x)), sd, cv, float(x.min()), float(x.max()))


@dataclass(frozen=True)
class Comparison:
    """A treated configuration against the baseline, for one metric."""

    ratio: float  # mean(treated) / mean(baseline)
    ci95: tuple[float, float] | None
    ci_method: str
    p: float | None  # Welch's t-test, two-sided
    p_mannwhitney: float | None  # two-sided, exact for small samples without ties
    significant: bool | None  # p < alpha; None when p is undefined
    paired_ratio: float | None = None  # geometric mean of per-round treated/baseline
    paired_ci95: tuple[float, float] | None = None
    paired_p: float | None = None  # paired t-test on log ratios

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("ci95", "paired_ci95"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d


def _array(samples: Sequence[float]) -> np.ndarray:
    x = np.asarray(samples, dtype=float)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError("samples must be a non-empty sequence of numbers")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples must be finite")
    return x


def _positive(x: np.ndarray, what: str) -> None:
    if np.any(x <= 0):
        raise ValueError(f"{what} samples must be positive (ratios are taken on them)")


def ratio_ci_t(
    baseline: Sequence[float], treated: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Interval for mean(treated)/mean(baseline): delta method on the log ratio, Welch df.

    The log keeps the interval positive and asymmetric, as a ratio's should be."""
    b, t = _array(baseline), _array(treated)
    _positive(b, "baseline")
    _positive(t, "treated")
    if len(b) < 2 or len(t) < 2:
        return None
    mb, mt = b.mean(), t.mean()
    vb = b.var(ddof=1) / (len(b) * mb * mb)  # relative variance of each mean
    vt = t.var(ddof=1) / (len(t) * mt * mt)
    r = float(mt / mb)
    se = math.sqrt(vb + vt)
    if se == 0:
        return (r, r)
    df = (vb + vt) ** 2 / (vb**2 / (len(b) - 1) + vt**2 / (len(t) - 1))
    q = float(stats.t.ppf(0.5 + confidence / 2, df))
    return (r * math.exp(-q * se), r * math.exp(q * se))


def ratio_ci_bootstrap(
    baseline: Sequence[float],
    treated: Sequence[float],
    confidence: float = CONFIDENCE,
    resamples: int = 5000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap of mean(treated)/mean(baseline), each group resampled on its own.

    Seeded, so the same samples always give the same interval. With a handful of rounds it
    is narrower than it should be; the t interval is the default for that reason."""
    b, t = _array(baseline), _array(treated)
    _positive(b, "baseline")
    _positive(t, "treated")
    if len(b) < 2 or len(t) < 2:
        return None
    rng = np.random.default_rng(seed)
    mb = b[rng.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1)
    mt = t[rng.integers(0, len(t), size=(resamples, len(t)))].mean(axis=1)
    r = mt / mb
    lo, hi = np.quantile(r, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return (float(lo), float(hi))


def welch_p(baseline: Sequence[float], treated: Sequence[float]) -> float | None:
    b, t = _array(baseline), _array(treated)
    if len(b) < 2 or len(t) < 2:
        return None
    if b.var() == 0 and t.var() == 0:
        # scipy returns nan here; two constant groups differ for certain or not at all
        return 1.0 if b[0] == t[0] else 0.0
    return float(stats.ttest_ind(t, b, equal_var=False).pvalue)


def mannwhitney_p(baseline: Sequence[float], treated: Sequence[float]) -> float | None:
    b, t = _array(baseline), _array(treated)
    if len(b) < 2 or len(t) < 2:
        return None
    return float(stats.mannwhitneyu(t, b, alternative="two-sided").pvalue)


def paired_log_ratio(
    baseline: Sequence[float], treated: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, tuple[float, float] | None, float | None]:
    """Geometric mean of per-round ratios, its t interval, and a paired t-test's p on logs."""
    b, t = _array(baseline), _array(treated)
    if len(b) != len(t):
        raise ValueError("paired samples need one treated sample per baseline round")
    _positive(b, "baseline")
    _positive(t, "treated")
    d = np.log(t / b)
    gm = float(math.exp(d.mean()))
    if len(d) < 2:
        return gm, None, None
    sd = float(d.std(ddof=1))
    if sd == 0:
        return gm, (gm, gm), (1.0 if d[0] == 0 else 0.0)
    se = sd / math.sqrt(len(d))
    q = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1))
    p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return gm, (gm * math.exp(-q * se), gm * math.exp(q * se)), p


def compare(
    baseline: Sequence[float],
    treated: Sequence[float],
    *,
    alpha: float = ALPHA,
    ci: str = "t",
    paired: bool = False,
) -> Comparison:
    """Treated against baseline: ratio of means, 95 % interval, Welch and Mann-Whitney p."""
    b, t = _array(baseline), _array(treated)
    _positive(b, "baseline")
    _positive(t, "treated")
    if ci == "t":
        interval = ratio_ci_t(baseline, treated)
    elif ci == "bootstrap":
        interval = ratio_ci_bootstrap(baseline, treated)
    else:
        raise ValueError(f"ci must be 't' or 'bootstrap', not {ci!r}")
    p = welch_p(baseline, treated)
    pr = pci = pp = None
    if paired:
        pr, pci, pp = paired_log_ratio(baseline, treated)
    return Comparison(
        ratio=float(t.mean() / b.mean()),
        ci95=interval,
        ci_method="delta-log-welch-t" if ci == "t" else "percentile-bootstrap",
        p=p,
        p_mannwhitney=mannwhitney_p(baseline, treated),
        significant=None if p is None else p < alpha,
        paired_ratio=pr,
        paired_ci95=pci,
        paired_p=pp,
    )


def instability_warnings(
    label: str,
    samples: Sequence[float],
    *,
    cv_threshold: float = CV_WARN,
    min_rounds: int = MIN_ROUNDS,
) -> list[str]:
    """pyperf-style warnings for one series of samples; empty when it looks stable."""
    s = summarize(samples)
    out: list[str] = []
    if s.n < min_rounds:
        out.append(f"{label}: only {s.n} rounds (fewer than {min_rounds}); intervals are wide "
                   "and the tests weak")  # fmt: skip
    if s.cv is not None and s.cv > cv_threshold:
        out.append(f"{label}: unstable, the standard deviation is {100 * s.cv:.0f}% of the "
                   f"mean (above {100 * cv_threshold:.0f}%)")  # fmt: skip
    if s.median > 0 and (s.max > OUTLIER_FACTOR * s.median or s.min < s.median / OUTLIER_FACTOR):
        out.append(f"{label}: a sample lies more than {OUTLIER_FACTOR}x from the median "
                   f"(min {s.min:.4g}, median {s.median:.4g}, max {s.max:.4g})")  # fmt: skip
    return out


def throughput(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Exchanges per second over the main phase: n / (last end - first start)."""
    main = [r for r in records if r.get("phase", "main") == "main"]
    if not main:
        return None
    span = max(r["t_end_ns"] for r in main) - min(r["t_start_ns"] for r in main)
    return len(main) / (span / 1e9) if span > 0 else None


def latency_percentiles(
    records: Sequence[Mapping[str, Any]], percentiles: Sequence[float] = (50, 99)
) -> dict[str, float] | None:
    """Latency percentiles in milliseconds over the main phase, keyed p50_ms, p99_ms, ..."""
    lat = [r["t_end_ns"] - r["t_start_ns"] for r in records if r.get("phase", "main") == "main"]
    if not lat:
        return None
    vals = np.percentile(np.asarray(lat, dtype=float) / 1e6, list(percentiles))
    return {f"p{p:g}_ms": float(v) for p, v in zip(percentiles, vals, strict=True)}


def per_hit_ns(run_time_ns: int, run_cnt: int) -> float | None:
    return run_time_ns / run_cnt if run_cnt > 0 else None


def core_share(
    user_s: float, system_s: float, bpf_s: float, wall_s: float, context_switches: int,
    cpu_ns: int | None = None,
) -> dict[str, Any]:
    """A collector's CPU over a wall-clock span, as % of one core: its process's CPU plus its
    programs' BPF run time (spent in the traced processes' context).

    With ``cpu_ns`` (the scheduler's exact run time of every thread) that is the process's
    CPU; ``user_s``/``system_s`` (clock ticks: 10 ms steps, too coarse for a few % over
    seconds) then only split it, by their ratio (the kernel samples user against system at
    its ticks, so the split is an estimate either way: ``user_system_split``). Without it,
    the ticks are all there is (``core_pct`` as bench schema 3 gave it, also kept as
    ``core_pct_ticks``)."""
    keys = ("core_pct", "user_pct", "system_pct", "bpf_pct", "context_switches_per_s")
    if wall_s <= 0:
        return dict.fromkeys(keys)
    pct = {"user_pct": 100 * user_s / wall_s, "system_pct": 100 * system_s / wall_s,
           "bpf_pct": 100 * bpf_s / wall_s}  # fmt: skip
    ticks_pct = sum(pct.values())
    out: dict[str, Any] = {"core_pct": ticks_pct, **pct, "user_system_split": "ticks"}
    if cpu_ns is not None:
        process_pct = 100 * cpu_ns / 1e9 / wall_s
        ticks = user_s + system_s
        user_share = user_s / ticks if ticks > 0 else None
        out.update(
            core_pct=process_pct + pct["bpf_pct"], process_pct=process_pct, cpu_ns=cpu_ns,
            user_pct=None if user_share is None else process_pct * user_share,
            system_pct=None if user_share is None else process_pct * (1 - user_share),
            user_system_split=("exact total (schedstat), split by the tick ratio"
                               if user_share is not None else "unknown: no tick in the span"),
        )  # fmt: skip
    return {**out, "core_pct_ticks": ticks_pct,
            "context_switches_per_s": context_switches / wall_s,
            "cpu_user_s": user_s, "cpu_system_s": system_s, "bpf_s": bpf_s,
            "wall_s": wall_s}  # fmt: skip


def idle_share(cpu_ns: int, bpf_ns: float, wall_s: float, context_switches: int,
               threads: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """A collector attached with nothing to record: what its timers and checks cost, as %
    of one core (process, exact) and wake-ups per second, per thread too. Its BPF here is
    other processes' syscalls turned away by the filter (kernel side)."""
    if wall_s <= 0:
        return {"wall_s": wall_s}
    return {"wall_s": wall_s, "cpu_ns": cpu_ns, "process_pct": 100 * cpu_ns / 1e9 / wall_s,
            "bpf_pct": 100 * bpf_ns / 1e9 / wall_s,
            "context_switches_per_s": context_switches / wall_s,
            "threads": thread_shares(threads, wall_s)}  # fmt: skip


def thread_shares(
    threads: Mapping[str, Mapping[str, int]], wall_s: float
) -> dict[str, dict[str, float]]:
    """Each named thread's on-CPU ns and context switches over ``wall_s`` (> 0), as % of one
    core and wake-ups per second."""
    return {n: {"cpu_ns": t["cpu_ns"], "process_pct": 100 * t["cpu_ns"] / 1e9 / wall_s,
                "context_switches_per_s": t["context_switches"] / wall_s}
            for n, t in threads.items()}  # fmt: skip


# The workloads' client and server are pinned to one CPU each: added kernel work per exchange
# is spread over both when they are the bottleneck (closed loop, saturation).
PATH_CPUS = 2


def others_bpf_ns(
    hits_all: float, target_hits: float, ns_per_other_hit: float | None
) -> float:
    """BPF run time spent on other processes' hits (the filter turning them away), from
    their count and the cost of such a hit measured while the workload was idle."""
    if ns_per_other_hit is None or hits_all <= target_hits:
        return 0.0
    return (hits_all - target_hits) * ns_per_other_hit


def own_bpf_ns(
    kind: Mapping[str, Any], target_hits: float | None, ns_per_other_hit: float | None
) -> float | None:
    """BPF ns per exchange of the workload's own hits, from one kind's totals (``_by_kind``):
    other processes' hits (all hits less ``target_hits`` per exchange), charged at the idle
    span's ns per hit, are taken out. None when the run time is unknown."""
    ns, hits_all = kind.get("ns_per_exchange"), kind.get("hits_per_exchange")
    if ns is None:
        return None
    if target_hits is None or hits_all is None:
        return float(ns)
    return float(ns) - min(others_bpf_ns(hits_all, target_hits, ns_per_other_hit), float(ns))


def floor_figures(
    builds: Mapping[str, Any],
    kinds: Sequence[str],
    coll: str,
    configs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Per floor build (the bench's floor pass, raw): BPF ns per exchange and side of the
    workload's own hits, hits per exchange, the pass's one saturation run, and at the fixed
    rate the collector's share of a core and its BPF part; with the interleaved rounds'
    ``configs`` (the collector as ``coll``, a floor build as ``coll-BUILD``), the saturation
    ratios against no collector. The programs are the first of ``kinds`` that ran."""
    out: dict[str, Any] = {}
    for build, e in builds.items():
        by_kind = e.get("by_kind") or {}
        k: Mapping[str, Any] = next((by_kind[x] for x in kinds if by_kind.get(x)), {})
        hits = e.get("target_hits_per_exchange")
        own = own_bpf_ns(k, hits, (e.get("idle") or {}).get(f"{coll}_ns_per_hit"))
        at = e.get("fixed_rate") or {}
        out[build] = {
            "bpf_ns_per_exchange_per_side": own / 2 if own is not None else None,
            "bpf_ns_per_hit": own / hits if own is not None and hits else None,
            "hits_per_exchange": hits,
            "throughput": e.get("throughput"),
            "fixed_rate_core_pct": at.get("core_pct"),
            "fixed_rate_bpf_pct": at.get("bpf_pct"),
            "fixed_rate_process_pct": at.get("process_pct"),
        }
        c = (configs or {}).get(coll if build == "collector" else f"{coll}-{build}") or {}
        for key in ("throughput_ratio", "throughput_ci95", "p99_ratio"):
            out[build][key] = c.get(key)
    return out


def predicted_ratio(added_ns: float | None, baseline_per_s: float | None) -> float | None:
    """Saturation throughput ratio if each exchange cost ``added_ns`` more CPU, spread over
    PATH_CPUS busy CPUs: 1 / (1 + added x rate / (1e9 x PATH_CPUS))."""
    if added_ns is None or not baseline_per_s:
        return None
    return 1 / (1 + added_ns * baseline_per_s / (1e9 * PATH_CPUS))


def decompose(
    workload: Mapping[str, Any],
    trap: Mapping[str, Any] | None,
    floor_builds: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One workload's overhead per collector, against its floor: hits per exchange x the bare
    trap of the same session (what any collector at those points pays), the BPF run time
    per exchange (our programs' work on top of the trap), the collector process's CPU and
    wake-ups per 1k exchanges, the saturation ratios, and the CPU share at a fixed rate.
    ``floor_builds`` (the kernel side's floor pass for this workload) adds each floor
    build's figures to the kernel-side entry (``floor_figures``)."""
    bpf = workload.get("bpf_run_time") or {}
    by_kind = bpf.get("by_kind") or {}
    configs = workload.get("configs") or {}
    fixed = (workload.get("fixed_rate") or {}).get("configs") or {}
    base = (configs.get(BASELINE) or {}).get("throughput") or {}
    out: dict[str, Any] = {}
    for coll, cost in ((c.name, c.bpf) for c in registry.collectors() if c.bpf):
        c = configs.get(coll)
        if not c or "not_measured" in c:
            continue
        k: dict[str, Any] = next((by_kind[x] for x in cost.kinds if by_kind.get(x)), {})
        hits_all = k.get("hits_per_exchange")
        hits = bpf.get("target_hits_per_exchange") if cost.every_process else hits_all
        if hits is None:
            hits = hits_all
        trap_ns = (trap or {}).get(cost.trap)
        floor = hits * trap_ns if hits is not None and trap_ns is not None else None
        bpf_ns = k.get("ns_per_exchange")
        per_hit = k.get("ns_per_hit")
        if (cost.every_process and bpf_ns is not None and hits is not None
                and hits_all is not None):
            # run_cnt counts every process's syscalls the filter turned away: their share,
            # at the idle span's cost per hit, is not this workload's
            idle = (bpf.get("idle") or {}).get(f"{coll}_ns_per_hit")
            if idle is not None:
                bpf_ns = own_bpf_ns(k, hits, idle)
                per_hit = bpf_ns / hits if hits and bpf_ns is not None else None
        proc = (c.get("collectors") or {}).get(coll) or {}
        at_rate = (fixed.get(coll) or {}).get(coll) or {}
        kernel = floor + bpf_ns if floor is not None and bpf_ns is not None else None
        u, s = proc.get("cpu_user_s_per_1k"), proc.get("cpu_system_s_per_1k")
        # the recorder's CPU per exchange (s per 1k = 1e6 ns per exchange): on a box whose
        # cores the client and server fill, it is taken from them too
        recorder_ns = 1e6 * (u + s) if u is not None and s is not None else None
        if proc.get("cpu_ns_per_exchange") is not None:
            recorder_ns = proc["cpu_ns_per_exchange"]  # exact (schedstat), where the bench had it
        everything = (kernel + recorder_ns
                      if kernel is not None and recorder_ns is not None else None)  # fmt: skip
        out[coll] = {
            "hits_per_exchange": hits,
            "hits_per_exchange_all_processes": hits_all,
            "bare_trap_ns": trap_ns,
            "floor_ns_per_exchange": floor,
            "bpf_ns_per_exchange": bpf_ns,
            "bpf_ns_per_exchange_all_processes": k.get("ns_per_exchange"),
            # the workload's client and server are both traced: a side is half of it
            "bpf_ns_per_exchange_per_side": bpf_ns / 2 if bpf_ns is not None else None,
            "bpf_ns_per_hit": per_hit,
            "bpf_per_hit_over_trap": per_hit / trap_ns if per_hit and trap_ns else None,
            "cpu_user_s_per_1k": proc.get("cpu_user_s_per_1k"),
            "cpu_system_s_per_1k": proc.get("cpu_system_s_per_1k"),
            "context_switches_per_1k": proc.get("context_switches_per_1k"),
            "event_bytes_per_exchange": proc.get("event_bytes_per_exchange"),
            "throughput_ratio": c.get("throughput_ratio"),
            "throughput_ci95": c.get("throughput_ci95"),
            "p50_ratio": c.get("p50_ratio"),
            "p99_ratio": c.get("p99_ratio"),
            "predicted_ratio_floor": predicted_ratio(floor, base.get("mean")),
            "predicted_ratio_floor_and_bpf": predicted_ratio(kernel, base.get("mean")),
            "recorder_ns_per_exchange": recorder_ns,
            "predicted_ratio_all": predicted_ratio(everything, base.get("mean")),
            "fixed_rate_core_pct": at_rate.get("core_pct"),
            "fixed_rate_bpf_pct": at_rate.get("bpf_pct"),
            "fixed_rate_context_switches_per_s": at_rate.get("context_switches_per_s"),
            # the recorder process's exact share (schedstat), and the same attached but idle
            "fixed_rate_process_pct": at_rate.get("process_pct"),
            "fixed_rate_idle_process_pct": (at_rate.get("idle") or {}).get("process_pct"),
        }
        if floor_builds and cost.every_process:
            out[coll]["floor_builds"] = floor_figures(floor_builds, cost.kinds, coll, configs)
        helpers = by_kind.get(cost.helper_kind) if cost.helper_kind else None
        if helpers:
            # they run for every process's syscalls: their hits count other processes too
            out[coll]["tracepoint_hits_per_exchange_all_processes"] = helpers.get(
                "hits_per_exchange")
            out[coll]["tracepoint_bpf_ns_per_exchange"] = helpers.get("ns_per_exchange")
            out[coll]["tracepoint_bpf_ns_per_hit"] = helpers.get("ns_per_hit")
    return out


def analyse_configs(
    samples: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    baseline: str = BASELINE,
    label: str = "",
    min_rounds: int = MIN_ROUNDS,
    ci: str = "t",
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """samples[config][metric] = per-round values (same round order in every config).

    Returns ({config: {metric: summary, metric_ratio, metric_ci95, ...}}, warnings). Ratios
    are taken against `baseline` measured in the same session; the paired view is added
    when every config has the baseline's number of rounds."""
    if baseline not in samples:
        raise ValueError(f"no {baseline!r} configuration to compare against")
    out: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    base = samples[baseline]
    prefix = f"{label} " if label else ""
    for config, by_metric in samples.items():
        entry: dict[str, Any] = {}
        for metric, values in by_metric.items():
            if not values:
                continue
            entry[metric] = summarize(values).to_dict()
            entry[f"{metric}_samples"] = [float(v) for v in values]
            if metric == "throughput":
                warnings += instability_warnings(f"{prefix}{config} throughput", values,
                                                 min_rounds=min_rounds)  # fmt: skip
            if config == baseline or not base.get(metric):
                continue
            c = compare(base[metric], values, ci=ci, paired=len(values) == len(base[metric]))
            name = metric.removesuffix("_ms")
            entry[f"{name}_ratio"] = c.ratio
            entry[f"{name}_ci95"] = list(c.ci95) if c.ci95 else None
            entry[f"{name}_p"] = c.p
            entry[f"{name}_comparison"] = c.to_dict()
        if config != baseline and "throughput_ratio" in entry:
            # the brief's short names for the headline metric
            entry["ci95"] = entry["throughput_ci95"]
            entry["p"] = entry["throughput_p"]
            entry["significant"] = entry["throughput_comparison"]["significant"]
        out[config] = entry
    return out, _dedupe(warnings)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
