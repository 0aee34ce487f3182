"""Replay: a run directory in, exchanges and metrics.json out; no root, no BPF, deterministic."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import multiprocessing
import os
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from harness.analysis.match import HORIZON_NS, match_into
from harness.analysis.metrics import DEFINITIONS, Row
from harness.analysis.streaming import RowStream, TruthFeed
from harness.analysis.truthworker import extract, stream_truth, usage
from harness.collectors import registry
from harness.collectors.base import (
    STREAM_END_NS,
    VARIANTS,
    EncryptedConn,
    ExchangeStream,
    ReplayInput,
    Variant,
)
from harness.errors import RunDirError
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

if TYPE_CHECKING:
    import pandas as pd

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


_PLAIN = tuple(n for n in _COLUMNS if n not in _JSON_COLUMNS and n != "degraded")
_GETTERS = tuple((n, attrgetter(n)) for n in _PLAIN)


class _ColumnBuilder:
    """Exchanges as one list per field (dicts and degradations as sorted JSON text), appended
    as they come: each batch is read while its exchanges are still in the CPU's caches (read
    100k at a time at a row group's end, every field's pass over them missed the cache:
    about 140 ns a value, a tenth of a soak's replay).

    Column by column: ``dataclasses.asdict`` per row deep-copies every value; each plain
    field is read in one C-level pass over the batch (a map of its attrgetter: a tuple per
    row transposed by ``zip(*rows)`` took twice as long)."""

    __slots__ = ("_text", "cols")

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {n: [] for n in _COLUMNS}
        # header dicts are shared among exchanges (Sharer): each is encoded once. Keyed by
        # id, the dict kept beside its text: alive, so no other dict takes its id meanwhile
        self._text: dict[int, tuple[dict[str, str], str]] = {}

    def __len__(self) -> int:
        return len(self.cols["source"])

    def add(self, exchanges: list[Exchange]) -> None:
        cols, text = self.cols, self._text
        for name, get in _GETTERS:
            cols[name] += map(get, exchanges)
        for name in _JSON_COLUMNS:
            col = cols[name]
            for d in map(attrgetter(name), exchanges):
                if not d:  # (each exchange has its own empty dict: none shared to look up)
                    col.append("{}")
                    continue
                got = text.get(id(d))
                if got is None:
                    got = text[id(d)] = (d, _json(d))
                col.append(got[1])
        cols["degraded"] += [
            json.dumps([[d.field, d.reason] for d in x.degraded]) if x.degraded else "[]"
            for x in exchanges
        ]

    def take(self) -> dict[str, list[Any]]:
        """The columns so far (in field order); the builder starts afresh."""
        cols = self.cols
        self.cols, self._text = {n: [] for n in _COLUMNS}, {}
        return cols


def _columns(exchanges: list[Exchange]) -> dict[str, list[Any]]:
    """One list per Exchange field (dicts and degradations as sorted JSON text)."""
    b = _ColumnBuilder()
    b.add(exchanges)
    return b.take()


def to_frame(exchanges: list[Exchange]) -> pd.DataFrame:
    """Exchanges as a table, one column per field."""
    import pandas as pd  # here: a replay writes parquet through pyarrow alone (0.5 CPU-s)

    return pd.DataFrame(_columns(exchanges)) if exchanges else pd.DataFrame()


# Rows per parquet row group: the frame of one group is built at a time.
ROW_GROUP = 100_000
_INT_COLUMNS = frozenset({
    "client_port", "server_port", "conn_seq", "stream_id", "status", "grpc_status",
    "req_bytes", "resp_bytes", "req_messages", "resp_messages", "t_start_ns", "t_end_ns", "pid",
})  # fmt: skip
SCHEMA = pa.schema([(n, pa.int64() if n in _INT_COLUMNS else pa.string()) for n in _COLUMNS])


class ParquetSink:
    """One source's exchanges to parquet in row groups of ROW_GROUP as they come (none held
    beyond a group, and that as columns), one fixed schema (integers stay integers when
    some are missing); ``path`` None counts them only."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.count = path, 0
        self._cols = _ColumnBuilder()
        self._w: pq.ParquetWriter | None = None

    def add(self, xs: list[Exchange]) -> None:
        self.count += len(xs)
        if self.path is None:
            return
        self._cols.add(xs)
        if len(self._cols) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        assert self.path is not None
        if self._w is None:
            self._w = pq.ParquetWriter(self.path, SCHEMA)
        cols = self._cols.take()
        n = len(cols["source"])
        for i in range(0, n, ROW_GROUP):  # the whole buffer: at close
            part = cols if n <= ROW_GROUP else {k: v[i : i + ROW_GROUP] for k, v in cols.items()}
            arrays = {k: pa.array(part[k], SCHEMA.field(k).type) for k in part}
            self._w.write_table(pa.table(arrays, schema=SCHEMA))

    def close(self) -> None:
        if self.path is None:
            return
        if len(self._cols) or self._w is None:  # the rest, or an empty file with the schema
            self._flush()
        assert self._w is not None
        self._w.close()


def write_parquet(exchanges: list[Exchange], path: Path) -> None:
    sink = ParquetSink(path)
    sink.add(exchanges)
    sink.close()


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


def truth_window(manifest: RunManifest, exchanges: int) -> dict[str, Any]:
    """What stretch of time the truth covers and is scored over (monotonic ns), as
    metrics.json says it: observe's capture starts after the attach and is scored up to
    the collectors' stop; run's capture covers the whole run."""
    p = manifest.params
    since, until = p.get("truth_from_ns"), p.get("observed_until_ns")
    out: dict[str, Any] = {
        "from_ns": since, "until_ns": until,
        "seconds": round((until - since) / 1e9, 3)
        if since is not None and until is not None else None,
        "exchanges": exchanges,  # truth that started in it
    }  # fmt: skip
    if since is not None:
        out["before_from"] = "not captured: the capture starts once the collectors are attached"
    if until is not None:
        out["after_until"] = "captured, not scored: the collectors were stopping"
    if p.get("stopped_capture_bytes"):  # observe --max-capture-mb ended the window early
        out["ended_early"] = p["stopped_capture_bytes"]
    return out


class _TruthJob:
    """The truth of a run, decoded in a worker process for a big capture (started at once,
    so it overlaps the collectors' decode), else in this one when asked for."""

    def __init__(self, args: tuple[Any, ...], pool: ProcessPoolExecutor | None) -> None:
        self._args = args
        self._fut = pool.submit(extract, *args) if pool is not None else None
        self.stats: Any = None
        self.usage: dict[str, float] = {}

    def ready(self) -> bool:
        """Whether asking now would not wait (in-process: decoded last, like before)."""
        return self._fut is not None and self._fut.done()

    def next(self) -> tuple[list[Exchange], int] | None:
        """The whole truth as one batch, then None (``stats`` and ``usage`` are set then)."""
        if self._fut is None and not self._args:
            return None
        truth, self.stats, self.usage = (
            self._fut.result() if self._fut is not None else extract(*self._args))
        self._fut, self._args = None, ()
        return truth, STREAM_END_NS

    def cancel(self) -> None:
        if self._fut is not None:
            self._fut.cancel()


# Truth batches a streaming worker may have queued ahead of the replay (back-pressure:
# beyond it the worker waits, so its memory stays bounded too).
TRUTH_QUEUE = 8


class _TruthStream:
    """The truth decoded by a worker process and handed over in batches as tshark's output
    is read (groundtruth.stream_exchanges): the replay never holds all of it."""

    def __init__(self, args: tuple[Any, ...], ctx: Any) -> None:
        self._q = ctx.Queue(TRUTH_QUEUE)
        self._proc = ctx.Process(target=stream_truth, args=(self._q, args), daemon=True)
        self._proc.start()
        self.stats: Any = None
        self.usage: dict[str, float] = {}
        self._done = False

    def ready(self) -> bool:
        return not self._done and not self._q.empty()

    def next(self) -> tuple[list[Exchange], int] | None:
        if self._done:
            return None
        while True:
            try:
                kind, a, b = self._q.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._proc.is_alive() and self._q.empty():
                    self._done = True
                    raise RunDirError(
                        f"the truth worker ended (exit code {self._proc.exitcode}) before "
                        "it finished the capture's decode"
                    ) from None
        if kind == "batch":
            return a, b
        self._done = True
        self._proc.join()
        if kind == "error":
            raise a
        self.stats, self.usage = a, b
        return None

    def cancel(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()


@contextlib.contextmanager
def _truth_job(
    pcap: Path, http1_ports: list[int], h2c_ports: list[int], offset: int, out_of_order: bool,
    keylog: Path | None = None, *, whole: bool = False,
) -> Iterator[_TruthJob | _TruthStream]:
    """``whole``: the truth as one list (the workload's comparison needs it whole, and the
    id-carrying truth is known to the matcher before anything else, as ``match`` has it)."""
    args = (pcap, http1_ports, h2c_ports, offset, out_of_order, keylog)
    big = pcap.is_file() and pcap.stat().st_size >= PARALLEL_TRUTH_BYTES
    if not big or (os.cpu_count() or 1) < 2:
        yield _TruthJob(args, None)
        return
    # forkserver: the worker does not inherit the caller's threads (observe's)
    ctx = multiprocessing.get_context("forkserver")
    if not whole:
        stream = _TruthStream(args, ctx)
        try:
            yield stream
        finally:
            stream.cancel()
        return
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        job = _TruthJob(args, pool)
        try:
            yield job
        finally:
            job.cancel()


@dataclass
class _Observed:
    """One collector variant's replay in progress: its stream, where its watermark is, and
    its rows (one per side)."""

    name: str
    attach_ns: int
    info: dict[str, Any]
    variant: Variant
    stream: ExchangeStream
    rows: dict[str, RowStream]
    encrypted: list[EncryptedConn]
    sink: ParquetSink | None
    watermark: int = -STREAM_END_NS
    stats: Any = None  # the stream's return value, once it ended


# Collector exchanges held waiting for the truth before the replay waits on the truth
# worker instead of decoding further ahead of it.
MAX_AHEAD = 250_000
# How far the streamed truth is taken ahead of the slowest collector's watermark: the
# matching window and a second. Beyond it the worker waits on its bounded queue, so a
# truth decoded faster than the collectors (tshark on the other core) is not held here
# (a 2.46 M-request soak's main process reached 1.77 GB holding it).
TRUTH_AHEAD_NS = HORIZON_NS + 1_000_000_000


# The cyclic GC's thresholds in the replaying process. Its young collections walk every
# object made since the last one that is still alive, and the matching window keeps
# several per exchange alive; once it is full, about as many are freed as made, and the young
# count (allocations less deallocations) grows only slowly. At the truth worker's 100,000
# a 1.3 M-exchange replay ran 30 young collections and one older one (2.9 CPU-s of 51);
# at a million, one (0.3 s). Cycles, were any made per exchange, are still collected
# every million objects.
GC_THRESHOLD = (1_000_000, 20, 100)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    old = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*old)


def replay(
    run_dir: Path, *, attach_at_s: float | None = None, write: bool = True
) -> dict[str, Any]:
    """Re-derive every exchange and metric of a recorded run.

    ``attach_at_s`` replays as if each collector had attached that many seconds after it
    really did (a run recorded with early attach replayed at a later point).

    Streamed: each collector variant's exchanges are scored (streaming.RowStream) and
    written to parquet as its replay yields them, beside the truth; only the matching
    window and what is still open are held."""
    with _fewer_collections():
        return _replay(run_dir, attach_at_s=attach_at_s, write=write)


def _replay(
    run_dir: Path, *, attach_at_s: float | None = None, write: bool = True
) -> dict[str, Any]:
    """``replay``'s body."""
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
    has_workload = (run_dir / WORKLOAD).exists()  # `observe` runs have none
    # observe: when the collectors were told to stop; traffic of services outside the
    # command goes on, and what the capture saw after that was no collector's to see
    until = p.get("observed_until_ns")
    # observe: the capture began after the attach; nothing before it can be scored
    since = p.get("truth_from_ns")
    saving = write and attach_at_s is None  # a simulated attach never overwrites the recording's
    xdir = run_dir / EXCHANGES_DIR
    if saving:
        xdir.mkdir(exist_ok=True)

    def sink(src: str) -> ParquetSink:
        return ParquetSink(xdir / f"{src}.parquet" if saving else None)

    attach_mode = p["attach"] if attach_at_s is None else f"at+{attach_at_s:g}s"
    # A simulated attach is one moment for every collector: T after the first real attach.
    first_attach = min(int(manifest.collectors[c]["attach_ns"]) for c in p["collectors"])
    target_pids = {int(pr["pid"]) for pr in manifest.processes}
    attach = OBSERVE if manifest.scenario == OBSERVE else p["attach"]
    observed: list[_Observed] = []
    collectors: dict[str, Any] = {}
    # the whole truth is kept where something needs it whole: the workload's comparison
    # (scenario runs) and TLS's encrypted counts (small runs)
    kept: list[Exchange] | None = [] if has_workload or tls_version else None
    truth_sink = sink("truth")
    in_window = [0]
    lo, hi = since or 0, until if until is not None else STREAM_END_NS
    truth_batch: list[Exchange] = []

    def released(t: Exchange) -> None:
        t.run_id, t.scenario = manifest.run_id, manifest.scenario
        if lo <= (t.t_start_ns or 0) <= hi:
            in_window[0] += 1
        for o in observed:
            for r in o.rows.values():
                r.count_truth(t)
        truth_batch.append(t)

    feed = TruthFeed(released)
    # every collector variant's rows exist before any truth is released: each counts it all
    for name in p["collectors"]:
        info = manifest.collectors.get(name, {})
        attach_ns = (
            int(info["attach_ns"]) if attach_at_s is None else first_attach + int(attach_at_s * 1e9)
        )
        events = run_dir / EVENTS_DIR / f"{name}.bin"
        if not events.exists():
            raise RunDirError(f"{events} is missing: the {name} collector recorded nothing")
        coll = registry.get(name)
        collectors[name] = {"attach_ns": attach_ns, "stats": info}
        for vname in coll.variants(attach, protocol, attach_at_s is not None):
            variant = VARIANTS[vname]
            encrypted: list[EncryptedConn] = []
            stream = coll.replay_stream(ReplayInput(
                events, ports, protocol,
                attach_at_ns=attach_ns if attach_at_s is not None else None,
                target_pids=target_pids, variant=variant, encrypted=encrypted,
            ))  # fmt: skip
            by_side: dict[str, RowStream] = {}
            for side in SIDES:
                row = Row(
                    scenario=manifest.scenario,
                    protocol=tls_protocol(protocol) if tls_version else protocol,
                    client=p["client"], server=p["server"], attach=attach_mode, collector=name,
                    side=side, variant=variant.name, grpc_go=p.get("grpc_version"),
                    tls=tls_version,
                )  # fmt: skip
                row.lost_events = int(info.get("lost_events", 0) or 0)
                by_side[side] = RowStream(row, max(attach_ns, since or 0), feed, until=until,
                                          since=since)  # fmt: skip
            observed.append(_Observed(
                name, attach_ns, info, variant, stream, by_side, encrypted,
                sink(name) if variant.name == "default" else None,
            ))  # fmt: skip
    # Wireshark's decode and the collectors' decode are independent until matching: on a
    # big capture they run side by side, tshark and its reader in a second process.
    with _truth_job(*truth_args, whole=kept is not None) as truth_job:
        active = list(observed)
        while active or not feed.done:
            held = sum(r.held for o in observed for r in o.rows.values())
            slowest = min((o.watermark for o in active), default=STREAM_END_NS)
            # the whole truth (small runs) is taken as it comes
            behind = isinstance(truth_job, _TruthJob) or feed.watermark <= slowest + TRUTH_AHEAD_NS
            if not feed.done and (not active or held > MAX_AHEAD or
                                  (truth_job.ready() and behind)):  # fmt: skip
                got = truth_job.next()
                if got is None:  # a stream's end
                    feed.add([], STREAM_END_NS)
                elif isinstance(truth_job, _TruthJob):
                    feed.whole(got[0])
                    if kept is not None:
                        kept = got[0]
                else:
                    feed.add(*got)
                del got
            else:
                o = min(active, key=lambda o: o.watermark)
                try:
                    batch = next(o.stream)
                except StopIteration as stop:
                    o.stats, o.watermark = stop.value, STREAM_END_NS
                    active.remove(o)
                else:
                    o.watermark = max(o.watermark, batch.watermark_ns)
                    for x in batch.exchanges:
                        x.run_id, x.scenario, x.source = manifest.run_id, manifest.scenario, o.name
                    if o.sink is not None:
                        o.sink.add(batch.exchanges)
                    for side, r in o.rows.items():
                        r.push(x for x in batch.exchanges if x.side == side)
                        r.finished(batch.finished)
            if truth_batch:
                truth_sink.add(truth_batch)
                truth_batch.clear()
            for o in observed:
                for r in o.rows.values():
                    r.step(o.watermark, feed.watermark)
            feed.trim(min((r.position() for o in observed for r in o.rows.values()),
                          default=feed.base + len(feed.items)))  # fmt: skip
        while (got := truth_job.next()) is not None:  # the stream's end: its stats
            feed.add(*got)
        tstats, truth_usage = truth_job.stats, truth_job.usage
    rows: list[dict[str, Any]] = []
    for o in observed:
        collectors[o.name][o.variant.name] = vars(o.stats)
        for side, r in o.rows.items():
            row = r.done()
            row.not_covered = registry.get(o.name).not_covered(p.get(side), is_grpc(protocol))
            if o.encrypted:
                assert kept is not None  # TLS runs keep their truth
                win, _ = _window(kept, [], until, since)
                row.undecodable["encrypted"] = encrypted_count(win, o.encrypted, side,
                                                               r.scorer.attach_ns)  # fmt: skip
            rows.append(row.to_dict())
    workload = workload_exchanges(run_dir / WORKLOAD) if has_workload else []
    tvw = match_workload(kept or [], run_dir / WORKLOAD) if has_workload else None
    sinks = {"truth": truth_sink, "workload": sink("workload")}
    sinks["workload"].add(workload)
    sinks.update({o.name: o.sink for o in observed if o.sink is not None})
    for sk in sinks.values():
        sk.close()
    metrics = {
        "run_id": manifest.run_id,
        "scenario": manifest.scenario,
        "params": p,
        "attach_at_s": attach_at_s,
        "truth_vs_workload": tvw,
        "truth": tstats.to_dict(),
        "truth_window": truth_window(manifest, in_window[0]),
        "tls": tls_info,
        "capture": {k: manifest.capture.get(k) for k in ("packets_captured", "packets_dropped")},
        "collectors": collectors,
        "rows": rows,
        "definitions": DEFINITIONS,
    }
    if saving:
        save_metrics(run_dir, metrics)
        manifest.recording = recording_size(run_dir, truth_sink.count)
        manifest.save(run_dir)
        mine = usage()
        write_json_atomic(run_dir / REPLAY_JSON, {
            "wall_s": round(time.monotonic() - t0, 3),
            "exchanges": {src: sk.count for src, sk in sinks.items()},
            "peak_rss_kb": mine["peak_rss_kb"],
            "children_peak_rss_kb": mine["children_peak_rss_kb"],
            # the truth worker: tshark is its child (in-process: these are the replay's)
            "truth_peak_rss_kb": truth_usage["peak_rss_kb"],
            "truth_cpu_s": truth_usage["cpu_s"], "tshark_cpu_s": truth_usage["children_cpu_s"],
            # the largest tshark run (a large capture is decoded in parts, one after
            # another); an upper bound: the kernel counts the worker's RSS when it started it
            "tshark_peak_rss_kb": truth_usage.get("children_peak_rss_kb", 0),
            "cpu_s": mine["cpu_s"],
        })  # fmt: skip
    return metrics
