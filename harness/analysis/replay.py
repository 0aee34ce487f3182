"""Replay: a run directory in, exchanges and metrics.json out; no root, no BPF, deterministic."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import resource
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.analysis.match import match_into
from harness.analysis.metrics import DEFINITIONS, Row, score
from harness.collectors import registry
from harness.collectors.base import VARIANTS, EncryptedConn, ReplayInput, Variant
from harness.compact import Sharer
from harness.errors import RunDirError
from harness.groundtruth.extract import extract_exchanges
from harness.groundtruth.match import match_workload, read_workload
from harness.groundtruth.tlskeys import check_handshakes, merge_keylogs
from harness.model import (
    CAPTURE,
    EVENTS_DIR,
    EXCHANGES_DIR,
    H2_FAMILY,
    TLS_DIR,
    WORKLOAD,
    Exchange,
    RunManifest,
    is_grpc,
    is_h2,
    save_metrics,
    write_json_atomic,
)
from harness.scenarios import OBSERVE

SIDES = ("client", "server")
REPLAY_JSON = "replay.json"  # how long the last replay took, and its peak memory


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


_JSON_COLUMNS = ("req_headers", "resp_headers", "trailers")
_COLUMNS = tuple(f.name for f in dataclasses.fields(Exchange))


def _json(d: dict[str, str]) -> str:
    return json.dumps(d, sort_keys=True) if d else "{}"


def _columns(exchanges: list[Exchange]) -> dict[str, list[Any]]:
    """One list per Exchange field (dicts and degradations as sorted JSON text).

    Built column by column: ``dataclasses.asdict`` per row deep-copies every value and
    was more than half of a 70k-exchange replay's time."""
    cols: dict[str, list[Any]] = {}
    # header dicts are shared among exchanges (Sharer): each is encoded once
    text: dict[int, str] = {}
    for name in _COLUMNS:
        if name in _JSON_COLUMNS:
            col = []
            for x in exchanges:
                d = getattr(x, name)
                t = text.get(id(d))
                if t is None:
                    t = text[id(d)] = _json(d)
                col.append(t)
            cols[name] = col
        elif name == "degraded":
            cols[name] = [
                json.dumps([[d.field, d.reason] for d in x.degraded]) if x.degraded else "[]"
                for x in exchanges
            ]
        else:
            cols[name] = [getattr(x, name) for x in exchanges]
    return cols


def to_frame(exchanges: list[Exchange]) -> pd.DataFrame:
    """Exchanges as a table, one column per field."""
    return pd.DataFrame(_columns(exchanges)) if exchanges else pd.DataFrame()


# Rows per parquet row group: the frame of one group is built at a time.
ROW_GROUP = 100_000
_INT_COLUMNS = frozenset({
    "client_port", "server_port", "conn_seq", "stream_id", "status", "grpc_status",
    "req_bytes", "resp_bytes", "req_messages", "resp_messages", "t_start_ns", "t_end_ns", "pid",
})  # fmt: skip
SCHEMA = pa.schema([(n, pa.int64() if n in _INT_COLUMNS else pa.string()) for n in _COLUMNS])


def write_parquet(exchanges: list[Exchange], path: Path) -> None:
    """Exchanges to parquet in row groups of ROW_GROUP, one fixed schema (integers stay
    integers when some are missing)."""
    with pq.ParquetWriter(path, SCHEMA) as w:
        for i in range(0, len(exchanges), ROW_GROUP):
            cols = _columns(exchanges[i : i + ROW_GROUP])
            w.write_table(
                pa.table({n: pa.array(cols[n], SCHEMA.field(n).type) for n in cols}, schema=SCHEMA)
            )


def run_protocol(manifest: RunManifest) -> str:
    """The protocol the run recorded (observe: h2c or HTTP/1 by its --h2c)."""
    p = manifest.params
    if "protocol" in p:
        return str(p["protocol"])
    if "h2c" in p:  # observe, before it recorded its protocol
        return H2_FAMILY if p["h2c"] else "http/1.x"
    raise RunDirError(f"run {manifest.run_id}: run.json's params record no protocol")


def replayable(manifest: RunManifest) -> bool:
    """Complete runs, and interrupted ones (observe stopped for disk space, Ctrl-C) whose
    collectors all attached: what they recorded up to the stop is whole and readable."""
    if manifest.status == "complete":
        return True
    names = manifest.params.get("collectors") or []
    return manifest.status == "interrupted" and all(
        "attach_ns" in manifest.collectors.get(n, {}) for n in names
    )


def recording_size(run_dir: Path, exchanges: int) -> dict[str, Any]:
    """What the recording takes on disk, and per 1,000 truth exchanges (to size a soak)."""
    capture = (run_dir / CAPTURE).stat().st_size if (run_dir / CAPTURE).exists() else 0
    events = sum(
        f.stat().st_size for f in (run_dir / EVENTS_DIR).glob("*") if f.is_file()
    ) if (run_dir / EVENTS_DIR).is_dir() else 0  # fmt: skip
    total = capture + events
    return {
        "capture_bytes": capture, "events_bytes": events, "bytes": total,
        "truth_exchanges": exchanges,
        "bytes_per_1k_exchanges": round(total * 1000 / exchanges) if exchanges else None,
    }  # fmt: skip


def tls_protocol(protocol: str) -> str:
    """The report's name of a protocol carried over TLS: tls-http/1.1, tls-h2-grpc."""
    return "tls-" + protocol.replace("h2c", "h2")


def encrypted_count(
    truth: list[Exchange], conns: list[EncryptedConn], side: str, attach_ns: int
) -> int:
    """Observable truth exchanges on connections this side saw only as TLS records."""
    keys = {(c.client_port, c.server_port) for c in conns if c.side == side}
    return sum(1 for t in truth if (t.t_start_ns or 0) >= attach_ns
               and (t.client_port, t.server_port) in keys)  # fmt: skip


# Below this capture size a second process costs more than it saves.
PARALLEL_TRUTH_BYTES = 8 << 20


def _window(
    truth: list[Exchange], seen: list[Exchange], until: int | None, since: int | None = None
) -> tuple[list[Exchange], list[Exchange]]:
    """Truth that started before the observation's end, and what a collector saw of it.

    Cut on the truth's clock and carried over through the pairing: a client's send begins
    a moment before its packet is on the wire, so one cut on both would leave that exchange
    a phantom on one side of it. ``since``: when the truth begins (observe starts the
    capture after the attach, and lets what was in flight then settle before it): what a
    collector saw start before it has no truth, and is left out before matching, where it
    would take a later truth exchange of its connection as its partner."""
    if since is not None:
        seen = [x for x in seen if (x.t_start_ns or 0) >= since]
    if until is None:
        return truth, seen
    kept = [t for t in truth if (t.t_start_ns or 0) <= until]
    ids = {id(t) for t in kept}
    partner: dict[int, int] = {}
    match_into(truth, seen, lambda v: partner.update({id(v.observed): id(v.truth)}),
               lambda _x: None)  # fmt: skip
    return kept, [
        x
        for x in seen
        if (partner[id(x)] in ids if id(x) in partner else (x.t_start_ns or 0) <= until)
    ]


def truth_window(manifest: RunManifest, truth: list[Exchange]) -> dict[str, Any]:
    """What stretch of time the truth covers and is scored over (monotonic ns), as
    metrics.json says it: observe's capture starts after the attach and is scored up to
    the collectors' stop; run's capture covers the whole run."""
    p = manifest.params
    since, until = p.get("truth_from_ns"), p.get("observed_until_ns")
    hi = until if until is not None else float("inf")
    out: dict[str, Any] = {
        "from_ns": since, "until_ns": until,
        "seconds": round((until - since) / 1e9, 3)
        if since is not None and until is not None else None,
        "exchanges": sum(1 for t in truth if (since or 0) <= (t.t_start_ns or 0) <= hi),
    }  # fmt: skip
    if since is not None:
        out["before_from"] = "not captured: the capture starts once the collectors are attached"
    if until is not None:
        out["after_until"] = "captured, not scored: the collectors were stopping"
    if p.get("stopped_capture_bytes"):  # observe --max-capture-mb ended the window early
        out["ended_early"] = p["stopped_capture_bytes"]
    return out


def _extract(
    pcap: Path, http1_ports: list[int], h2c_ports: list[int], offset: int, out_of_order: bool,
    keylog: Path | None = None,
) -> tuple[list[Exchange], Any, int]:
    """The truth, its stats, and the peak RSS (KiB) of the process that decoded it (a
    worker's is no child's of the replay: the forkserver forked it)."""
    truth, stats = extract_exchanges(
        pcap, http1_ports=http1_ports, h2c_ports=h2c_ports, mono_offset_ns=offset,
        out_of_order=out_of_order, tls_keylog=keylog,
    )  # fmt: skip
    Sharer()(truth)
    return truth, stats, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@contextlib.contextmanager
def _truth_job(
    pcap: Path, http1_ports: list[int], h2c_ports: list[int], offset: int, out_of_order: bool,
    keylog: Path | None = None,
) -> Iterator[Callable[[], tuple[list[Exchange], Any, int]]]:
    """Yields a function that returns the truth: decoded in a worker process for a big
    capture (started at once, so it overlaps whatever the caller does meanwhile), else
    decoded when called."""
    big = pcap.is_file() and pcap.stat().st_size >= PARALLEL_TRUTH_BYTES
    if not big or (os.cpu_count() or 1) < 2:
        yield lambda: _extract(pcap, http1_ports, h2c_ports, offset, out_of_order, keylog)
        return
    # forkserver: the worker does not inherit the caller's threads (observe's)
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        fut = pool.submit(_extract, pcap, http1_ports, h2c_ports, offset, out_of_order, keylog)
        try:
            yield fut.result
        finally:
            fut.cancel()


def _observe_all(
    run_dir: Path, manifest: RunManifest, protocol: str, attach_at_s: float | None
) -> list[tuple[str, int, dict[str, Any], Variant, list[Exchange], Any, list[EncryptedConn]]]:
    """Every collector's exchanges, per replay variant: (name, attach_ns, run.json stats,
    variant, exchanges, decode stats, connections it saw only encrypted)."""
    p, ports = manifest.params, manifest.ports
    out = []
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
        coll = registry.get(name)
        attach = OBSERVE if manifest.scenario == OBSERVE else p["attach"]
        for vname in coll.variants(attach, protocol, attach_at_s is not None):
            variant = VARIANTS[vname]
            encrypted: list[EncryptedConn] = []
            observed, ostats = coll.exchanges(ReplayInput(
                events, ports, protocol,
                attach_at_ns=attach_ns if attach_at_s is not None else None,
                target_pids={int(pr["pid"]) for pr in manifest.processes},
                variant=variant, encrypted=encrypted,
            ))  # fmt: skip
            for x in observed:
                x.run_id, x.scenario, x.source = manifest.run_id, manifest.scenario, name
            out.append((name, attach_ns, info, variant, observed, ostats, encrypted))
    return out


def replay(
    run_dir: Path, *, attach_at_s: float | None = None, write: bool = True
) -> dict[str, Any]:
    """Re-derive every exchange and metric of a recorded run.

    ``attach_at_s`` replays as if each collector had attached that many seconds after it
    really did (a run recorded with early attach replayed at a later point)."""
    manifest = RunManifest.load(run_dir)
    t0 = time.monotonic()
    if not replayable(manifest):
        raise RunDirError(
            f"{run_dir} is a {manifest.status} recording"
            + (f" ({manifest.error})" if manifest.error else "")
            + "; only complete runs, and interrupted ones whose collectors attached, can be "
            "replayed"
        )
    p = manifest.params
    protocol = run_protocol(manifest)
    h2c = is_h2(protocol)
    ports = manifest.ports
    offset = int(manifest.capture.get("mono_offset_ns", 0))
    tls_version = (p.get("tls_version") or "1.3") if p.get("tls") else None
    keylog, tls_info = None, None
    if tls_version:
        (run_dir / TLS_DIR).mkdir(exist_ok=True)
        keylog = run_dir / TLS_DIR / "keys.log"
        kst, randoms = merge_keylogs(sorted((run_dir / TLS_DIR).glob("*.keylog")), keylog)
        check_handshakes(run_dir / CAPTURE, ports, randoms, kst)
        tls_info = kst.to_dict()
        if kst.sessions == 0:
            # no secrets: Wireshark would decode nothing, and an empty truth scores nothing
            why = ("no TLS secrets in the key logs ("
                   + (", ".join(kst.files) or "none written") + "): the truth cannot be "
                   "decrypted, so no collector is scored")  # fmt: skip
            metrics: dict[str, Any] = {
                       "run_id": manifest.run_id, "scenario": manifest.scenario, "params": p,
                       "attach_at_s": attach_at_s, "truth_unavailable": why, "tls": tls_info,
                       "truth_vs_workload": None,
                       "rows": [], "definitions": DEFINITIONS}  # fmt: skip
            if write and attach_at_s is None:
                save_metrics(run_dir, metrics)
            return metrics
    # dumpcap's drops leave gaps that out-of-order reassembly would wait on forever, and so
    # does a capture begun mid-connection (observe of services already connected): on one
    # such wrk connection, 4,996 of 5,000 responses were never dissected
    clean = not int(manifest.capture.get("packets_dropped") or 0) and not p.get(
        "preexisting_connections")  # fmt: skip
    truth_args = (run_dir / CAPTURE, [] if h2c else ports, ports if h2c else [], offset, clean,
                  keylog)  # fmt: skip
    # Wireshark's decode and the collectors' decode are independent until matching: on a
    # big capture they run side by side, tshark and its reader in a second process.
    with _truth_job(*truth_args) as truth_job:
        observed_by = _observe_all(run_dir, manifest, protocol, attach_at_s)
        truth, tstats, truth_rss_kb = truth_job()
    for x in truth:
        x.run_id, x.scenario = manifest.run_id, manifest.scenario
    has_workload = (run_dir / WORKLOAD).exists()  # `observe` runs have none
    workload = workload_exchanges(run_dir / WORKLOAD) if has_workload else []
    tvw = match_workload(truth, run_dir / WORKLOAD) if has_workload else None
    rows: list[dict[str, Any]] = []
    # observe: when the collectors were told to stop; traffic of services outside the
    # command goes on, and what the capture saw after that was no collector's to see
    until = p.get("observed_until_ns")
    # observe: the capture began after the attach; nothing before it can be scored
    since = p.get("truth_from_ns")
    frames: dict[str, list[Exchange]] = {"truth": truth, "workload": workload}
    collectors: dict[str, Any] = {}
    attach_mode = p["attach"] if attach_at_s is None else f"at+{attach_at_s:g}s"
    for name, attach_ns, info, variant, observed, ostats, encrypted in observed_by:
        collectors.setdefault(name, {"attach_ns": attach_ns, "stats": info})
        collectors[name][variant.name] = vars(ostats)
        if variant.name == "default":
            frames[name] = observed
        for side in SIDES:
            row = Row(
                scenario=manifest.scenario,
                protocol=tls_protocol(protocol) if tls_version else protocol,
                client=p["client"], server=p["server"], attach=attach_mode, collector=name,
                side=side, variant=variant.name, grpc_go=p.get("grpc_version"),
                tls=tls_version,
            )  # fmt: skip
            row.lost_events = int(info.get("lost_events", 0) or 0)
            seen = [x for x in observed if x.side == side]
            in_window, seen = _window(truth, seen, until, since)
            scored_from = max(attach_ns, since or 0)
            score(row, in_window, seen, scored_from)
            row.not_covered = registry.get(name).not_covered(p.get(side), is_grpc(protocol))
            if encrypted:
                row.undecodable["encrypted"] = encrypted_count(in_window, encrypted, side,
                                                               scored_from)  # fmt: skip
            rows.append(row.to_dict())
    metrics = {
        "run_id": manifest.run_id,
        "scenario": manifest.scenario,
        "params": p,
        "attach_at_s": attach_at_s,
        "truth_vs_workload": tvw,
        "truth": tstats.to_dict(),
        "truth_window": truth_window(manifest, truth),
        "tls": tls_info,
        "capture": {k: manifest.capture.get(k) for k in ("packets_captured", "packets_dropped")},
        "collectors": collectors,
        "rows": rows,
        "definitions": DEFINITIONS,
    }
    if write and attach_at_s is None:  # a simulated attach never overwrites the recording's
        xdir = run_dir / EXCHANGES_DIR
        xdir.mkdir(exist_ok=True)
        for src, xs in frames.items():
            write_parquet(xs, xdir / f"{src}.parquet")
        save_metrics(run_dir, metrics)
        manifest.recording = recording_size(run_dir, len(truth))
        manifest.save(run_dir)
        write_json_atomic(run_dir / REPLAY_JSON, {
            "wall_s": round(time.monotonic() - t0, 3),
            "exchanges": {src: len(xs) for src, xs in frames.items()},
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "children_peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            "truth_peak_rss_kb": truth_rss_kb,
        })  # fmt: skip
    return metrics
