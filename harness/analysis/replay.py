"""Replay: a run directory in, exchanges and metrics.json out; no root, no BPF, deterministic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from harness.analysis.match import match
from harness.analysis.metrics import DEFINITIONS, Row, score
from harness.analysis.observed import VARIANTS, Variant, kprobe_exchanges
from harness.errors import RunDirError
from harness.groundtruth.extract import extract_exchanges
from harness.groundtruth.match import match_workload, read_workload
from harness.model import (
    CAPTURE,
    EVENTS_DIR,
    EXCHANGES_DIR,
    WORKLOAD,
    Exchange,
    RunManifest,
    save_metrics,
)
from harness.runner import scenarios

SIDES = ("client", "server")


def workload_exchanges(path: Path) -> list[Exchange]:
    out = []
    for r in read_workload(path):
        x = Exchange(source="workload", side="client", protocol=r.get("protocol") or "")
        for f in ("client_ip", "client_port", "server_ip", "server_port", "conn_seq", "method",
                  "path", "status", "grpc_status", "req_bytes", "resp_bytes", "req_messages",
                  "resp_messages", "t_start_ns", "t_end_ns"):  # fmt: skip
            setattr(x, f, r.get(f))
        x.req_headers = {"x-probebench-id": str(r["id"])}
        out.append(x)
    return out


def to_frame(exchanges: list[Exchange]) -> pd.DataFrame:
    rows = []
    for x in exchanges:
        d = x.to_dict()
        for k in ("req_headers", "resp_headers", "trailers", "degraded"):
            d[k] = json.dumps(d[k], sort_keys=True)
        rows.append(d)
    return pd.DataFrame(rows)


def _variants(collector: str, attach: str, protocol: str, simulated: bool) -> list[Variant]:
    out = [VARIANTS["default"]]
    if collector == "kprobe" and (attach == "late" or simulated):
        out.append(VARIANTS["no-sockdiag"])
        if protocol.startswith("h2c"):
            out.append(VARIANTS["hpack-strict"])
    return out


def _window(
    truth: list[Exchange], seen: list[Exchange], until: int | None
) -> tuple[list[Exchange], list[Exchange]]:
    """Truth that started before the observation's end, and what a collector saw of it.

    Cut on the truth's clock and carried over through the pairing: a client's send begins
    a moment before its packet is on the wire, so one cut on both would leave that exchange
    a phantom on one side of it."""
    if until is None:
        return truth, seen
    kept = [t for t in truth if (t.t_start_ns or 0) <= until]
    ids = {id(t) for t in kept}
    partner = {id(v.observed): id(v.truth) for v in match(truth, seen).pairs}
    return kept, [
        x
        for x in seen
        if (partner[id(x)] in ids if id(x) in partner else (x.t_start_ns or 0) <= until)
    ]


def replay(
    run_dir: Path, *, attach_at_s: float | None = None, write: bool = True
) -> dict[str, Any]:
    """Re-derive every exchange and metric of a recorded run.

    ``attach_at_s`` replays as if each collector had attached that many seconds after it
    really did (a run recorded with early attach replayed at a later point)."""
    manifest = RunManifest.load(run_dir)
    if manifest.status != "complete":
        raise RunDirError(
            f"{run_dir} is a {manifest.status} recording"
            + (f" ({manifest.error})" if manifest.error else "")
            + "; only complete runs can be replayed"
        )
    p = manifest.params
    if manifest.scenario == scenarios.OBSERVE:
        h2c, protocol = bool(p.get("h2c")), "h2c" if p.get("h2c") else "http/1.x"
    else:
        scen = scenarios.get(manifest.scenario)
        h2c, protocol = scen.is_grpc, scen.protocol
    ports = manifest.ports
    offset = int(manifest.capture.get("mono_offset_ns", 0))
    truth, tstats = extract_exchanges(
        run_dir / CAPTURE,
        http1_ports=[] if h2c else ports,
        h2c_ports=ports if h2c else [],
        mono_offset_ns=offset,
    )
    for x in truth:
        x.run_id, x.scenario = manifest.run_id, manifest.scenario
    has_workload = (run_dir / WORKLOAD).exists()  # `observe` runs have none
    workload = workload_exchanges(run_dir / WORKLOAD) if has_workload else []
    tvw = match_workload(truth, run_dir / WORKLOAD) if has_workload else None
    rows: list[dict[str, Any]] = []
    # observe: when the collectors were told to stop; traffic of services outside the
    # command goes on, and what the capture saw after that was no collector's to see
    until = p.get("observed_until_ns")
    frames: dict[str, list[Exchange]] = {"truth": truth, "workload": workload}
    collectors: dict[str, Any] = {}
    attach_mode = p["attach"] if attach_at_s is None else f"at+{attach_at_s:g}s"
    # A simulated attach is one moment for every collector: T after the first real attach.
    first_attach = min(int(manifest.collectors[c]["attach_ns"]) for c in p["collectors"])
    for name in p["collectors"]:
        info = manifest.collectors.get(name, {})
        attach_ns = (
            int(info["attach_ns"]) if attach_at_s is None else first_attach + int(attach_at_s * 1e9)
        )
        events = run_dir / EVENTS_DIR / f"{name}.bin"
        if not events.exists():
            raise RunDirError(f"{events} is missing: the {name} collector recorded nothing")
        collectors[name] = {"attach_ns": attach_ns, "stats": info}
        for variant in _variants(name, p["attach"], protocol, attach_at_s is not None):
            if name == "kprobe":
                observed, ostats = kprobe_exchanges(
                    events, ports, variant=variant,
                    attach_at_ns=attach_ns if attach_at_s is not None else None,
                    target_pids={int(pr["pid"]) for pr in manifest.processes},
                )  # fmt: skip
            else:
                from harness.analysis.uprobe_observed import uprobe_exchanges

                observed, ostats = uprobe_exchanges(
                    events, ports, attach_at_ns=attach_ns if attach_at_s is not None else None
                )
            for x in observed:
                x.run_id, x.scenario, x.source = manifest.run_id, manifest.scenario, name  # type: ignore[assignment]
            collectors[name][variant.name] = vars(ostats)
            if variant.name == "default":
                frames[name] = observed
            for side in SIDES:
                row = Row(
                    scenario=manifest.scenario, protocol=protocol, client=p["client"],
                    server=p["server"], attach=attach_mode, collector=name, side=side,
                    variant=variant.name, grpc_go=p.get("grpc_version"),
                )  # fmt: skip
                row.lost_events = int(info.get("lost_events", 0) or 0)
                seen = [x for x in observed if x.side == side]
                score(row, *_window(truth, seen, until), attach_ns)
                rows.append(row.to_dict())
    metrics = {
        "run_id": manifest.run_id,
        "scenario": manifest.scenario,
        "params": p,
        "attach_at_s": attach_at_s,
        "truth_vs_workload": tvw,
        "truth": tstats.to_dict(),
        "capture": {k: manifest.capture.get(k) for k in ("packets_captured", "packets_dropped")},
        "collectors": collectors,
        "rows": rows,
        "definitions": DEFINITIONS,
    }
    if write and attach_at_s is None:  # a simulated attach never overwrites the recording's
        xdir = run_dir / EXCHANGES_DIR
        xdir.mkdir(exist_ok=True)
        for src, xs in frames.items():
            to_frame(xs).to_parquet(xdir / f"{src}.parquet", index=False)
        save_metrics(run_dir, metrics)
    return metrics
