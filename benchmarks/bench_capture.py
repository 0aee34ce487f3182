"""The capture budget, measured: what each --max-capture costs and what it loses.

    .venv/bin/pytest benchmarks/bench_capture.py --benchmark-only -s

Needs root, bcc and tshark. Writes results/capture_budget.json (schema below, version 1)
for the report. Settings as benchmarks/conftest.py (rounds, scale, out directory).

For http11-keepalive and grpc-unary, Go client and server, and each budget in BUDGETS:

- overhead: the kernel-side collector alone at that budget against no collector, in
  interleaved rounds (order rotated per round), late attach as in bench_overhead.py, BPF
  stats on in every configuration alike: throughput and p99 ratios, BPF run time per
  exchange, collector CPU per 1k exchanges, lost events, truncated calls and bytes;
- fidelity: one `probebench run` (early attach, so gRPC is captured frame-aware) with the
  kernel-side collector at that budget, replayed against Wireshark: completeness,
  degradation rate, wrong, truncated payloads, and the fields and reasons degraded.

The budget is per syscall: HTTP/1 keeps a prefix of each call; HTTP/2 frame-aware capture
keeps every frame header, non-DATA payload and gRPC message prefix whatever the budget,
and spends the budget on message bodies only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from harness.analysis import overhead as oh
from harness.model import machine_info
from harness.runner.collectors import CollectorOptions

if TYPE_CHECKING:
    from conftest import OverheadSettings

pytestmark = [pytest.mark.bpf, pytest.mark.capture, pytest.mark.slow]

BUDGETS = (256, 1024, 4096, 16384, 65536)
SCENARIOS = ("http11-keepalive", "grpc-unary")
SCHEMA_VERSION = 1
FIDELITY_EXCHANGES = 1000  # per probebench run (x scale, at least 200)


def _overhead(bo: Any, settings: OverheadSettings, work: Path) -> dict[str, Any]:
    wls = [bo.Workload(s, "go", max(bo.MIN_EXCHANGES, round(bo.EXCHANGES[(s, "go")]
                                                              * settings.scale)))
           for s in SCENARIOS]  # fmt: skip
    configs = ["none", *(str(b) for b in BUDGETS)]
    runs: dict[str, dict[str, list[Any]]] = {w.key: {c: [] for c in configs} for w in wls}
    stats: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    with bo.bpf_stats_enabled(), bo.servers_running(wls) as targets:
        for r in range(settings.rounds):
            k = r % len(configs)
            for c in configs[k:] + configs[:k]:
                if c == "none":
                    run = bo.run_config("none", targets, work, seed=r + 1)
                else:
                    run = bo.run_config("kprobe", targets, work, seed=r + 1, with_bpf_stats=True,
                                        options=CollectorOptions(max_capture=int(c)))  # fmt: skip
                    stats[c].append(run.collector_stats.get("kprobe", {}))
                for key, res in run.results.items():
                    runs[key][c].append(res)
    out: dict[str, Any] = {}
    for key, by_cfg in runs.items():
        samples = {c: {"throughput": [r.throughput for r in rs], "p99_ms": [r.p99_ms for r in rs]}
                   for c, rs in by_cfg.items()}  # fmt: skip
        analysed, warnings = oh.analyse_configs(samples, label=key)
        entry: dict[str, Any] = {"warnings": warnings, "budgets": {}}
        for b in BUDGETS:
            rs, a = by_cfg[str(b)], analysed[str(b)]
            n = sum(r.exchanges for r in rs)
            bpf_ns = sum(p["run_time_ns"] for r in rs for p in r.programs)
            cpu = sum(r.collectors["kprobe"]["cpu_user_s"] + r.collectors["kprobe"]["cpu_system_s"]
                      for r in rs)  # fmt: skip
            entry["budgets"][str(b)] = {
                "throughput_ratio": a.get("throughput_ratio"),
                "throughput_ci95": a.get("throughput_ci95"),
                "p99_ratio": a.get("p99_ratio"),
                "bpf_ns_per_exchange": bpf_ns / n,
                "collector_cpu_s_per_1k": 1000 * cpu / n,
            }
        out[key] = entry
    # loss and truncation are per attach (both workloads); the same for every workload
    for b in BUDGETS:
        st = stats[str(b)]
        for entry in out.values():
            entry["budgets"][str(b)].update(
                lost_events=sum(s.get("lost_events") or 0 for s in st),
                truncated_calls=sum(s.get("truncated_calls") or 0 for s in st),
                truncated_bytes=sum(s.get("truncated_bytes") or 0 for s in st),
                bytes_written=sum(s.get("bytes_written") or 0 for s in st),
            )
    return out


def _fidelity(scale: float, out_dir: Path) -> dict[str, Any]:
    from harness.analysis.replay import replay
    from harness.runner.record import RunSpec, record

    n = max(200, round(FIDELITY_EXCHANGES * scale))
    res: dict[str, Any] = {}
    for scen in SCENARIOS:
        for b in BUDGETS:
            spec = RunSpec(scenario=scen, client="go", server="go", attach="early",
                           collectors=["kprobe"], exchanges=n,
                           options=CollectorOptions(max_capture=b))  # fmt: skip
            run_dir = record(spec, out_dir, lambda _msg: None)
            metrics = replay(run_dir)
            sides = {}
            for row in metrics["rows"]:
                if row["collector"] != "kprobe" or row["variant"] != "default":
                    continue
                sides[row["side"]] = {k: row.get(k) for k in (
                    "observable", "matched", "completeness", "degradation_rate", "exact_rate",
                    "wrong", "phantoms", "lost_events", "truncated_payloads",
                    "degraded_by_field", "degraded_by_reason")}  # fmt: skip
            res.setdefault(scen, {})[str(b)] = {"exchanges": n, "run": run_dir.name,
                                                "sides": sides}  # fmt: skip
    return res


def test_capture_budget(
    benchmark: BenchmarkFixture, overhead_settings: OverheadSettings, tmp_path: Path
) -> None:
    import bench_overhead as bo  # a sibling module: its run machinery, not a copy of it

    (tmp_path / "events").mkdir()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load0 = os.getloadavg()
    result: dict[str, Any] = {}

    def sweep() -> None:
        result["overhead"] = _overhead(bo, overhead_settings, tmp_path)
        result["fidelity"] = _fidelity(overhead_settings.scale, tmp_path / "runs")

    benchmark.group = "capture budget sweep"
    benchmark.pedantic(sweep, rounds=1, iterations=1)
    settings = {"budgets": list(BUDGETS), "scenarios": list(SCENARIOS), "client": "go",
                "server": "go", "rounds": overhead_settings.rounds,
                "scale": overhead_settings.scale, "loadavg_start": list(load0),
                "loadavg_end": list(os.getloadavg()),
                "overhead_attach": "late (connections warm first)",
                "fidelity_attach": "early"}  # fmt: skip
    doc = {
        "version": SCHEMA_VERSION,
        "kind": "probebench-capture-budget",
        "started_utc": started,
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": settings,
        "overhead": result["overhead"],
        "fidelity": result["fidelity"],
    }
    out = overhead_settings.out.with_name("capture_budget.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"\ncapture budget results: {out}")
    for scen in SCENARIOS:
        key = f"{scen}/go2go"
        print(f"\n{key}")
        for b in BUDGETS:
            o = result["overhead"][key]["budgets"][str(b)]
            f = result["fidelity"][scen][str(b)]["sides"]
            fid = "  ".join(
                f"{side}: complete {100 * (v['completeness'] or 0):.1f}% degraded "
                f"{100 * (v['degradation_rate'] or 0):.1f}% wrong {v['wrong']} "
                f"truncated {v['truncated_payloads']} {dict(v['degraded_by_field'] or {})}"
                for side, v in sorted(f.items()))  # fmt: skip
            print(f"  {b:6d} B: ratio {o['throughput_ratio']:.3f} p99x {o['p99_ratio']:.2f} "
                  f"bpf {o['bpf_ns_per_exchange']:.0f} ns/ex cpu "
                  f"{o['collector_cpu_s_per_1k']:.3f} s/1k lost {o['lost_events']}  {fid}")
