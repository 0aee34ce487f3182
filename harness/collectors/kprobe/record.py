"""The kernel-side collector process: attach the syscall program (tracepoints or kprobes, see
hooks.py), record raw events.

Runs as its own process (`python -m harness.collectors.kprobe.record`), so its
CPU time is its own and a crash cannot take the runner down. The live path only
appends ring-buffer records to the event file; the one thing it does besides is
the seed's netlink step (sock_diag) for connections found without an address,
because sockets exist only live. That step runs on its own thread and clock,
fed by a BPF map, so a data backlog in the ring buffer cannot delay it until
the sockets are gone. Prints ``ATTACHED <monotonic_ns>`` once the
probes are in place; SIGTERM/SIGINT or the deadline stop it, after a drain.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness.collectors import sockdiag
from harness.collectors.base import (
    DEFAULT_H1_BODIES,
    DEFAULT_H2_BODY_LIMIT,
    DEFAULT_KERNEL_HOOKS,
    DEFAULT_MAX_CAPTURE,
    DEFAULT_RINGBUF_PAGES,
    H1_BODIES,
)
from harness.collectors.bpfsource import compile_program, load_bcc, percpu_totals
from harness.collectors.btf import VMLINUX, socket_walk_defines
from harness.collectors.cli import (
    TIMER_POLL_MS,
    block_stop_signals,
    name_thread,
    record_until_stopped,
    recorder_parser,
    stop_flag,
    stopped_by,
    write_stats,
)
from harness.collectors.eventfile import KERNEL, EventWriter
from harness.collectors.kprobe import hooks
from harness.collectors.kprobe.layout import FORMAT, chunk_for, header
from harness.collectors.rings import Batch, RingSet, Trim, Watch
from harness.errors import CollectorError, ProbebenchError

PROGRAM = "kprobe_collector.c"
# The ring is drained on this timer (records go in without waking us, see
# rb_flags in the program), or earlier when a CPU has submitted PB_WAKE_BYTES.
DEFAULT_POLL_MS = TIMER_POLL_MS
# The sock_diag thread's wait: while look-ups come, then backing off (doubling) to the
# second when idle, or to the third when the programs name sockets themselves (the fd ->
# socket walk, PB_FD_SOCK): sock_diag is then a fallback that a run with BTF never
# needed (0 look-ups in the bench's runs), and its idle timer was a third of an idle
# recorder's wake-ups.
SOCKDIAG_WAIT_S = (0.005, 0.05, 0.25)
# Up to this many target tgids are compared inline in the programs (no map lookup
# for the syscalls of other processes); more go through the `targets` map.
INLINE_TGIDS = 8  # at most 16: the size of traced_hits in the program
# Floor builds (PB_FLOOR_* in kprobe_events.h), for the overhead bench: what a collector on
# these hooks costs before any work of ours. Their recordings are not replayed.
FLOORS = {"none": "", "filter": "PB_FLOOR_FILTER", "record": "PB_FLOOR_RECORD"}


class Recorder:
    def __init__(
        self,
        out: Path,
        tgids: list[int],
        ports: list[int],
        max_capture: int = DEFAULT_MAX_CAPTURE,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        poll_ms: int = DEFAULT_POLL_MS,
        h2_body_limit: int = DEFAULT_H2_BODY_LIMIT,
        kernel_hooks: str = DEFAULT_KERNEL_HOOKS,
        h1_bodies: str = DEFAULT_H1_BODIES,
        profile: bool = False,
        floor: str = "none",
    ) -> None:
        chunk = chunk_for(max_capture)
        if floor not in FLOORS:
            raise ProbebenchError(f"--floor must be one of {', '.join(FLOORS)}")
        if not 0 <= h2_body_limit <= max_capture:
            raise ProbebenchError("--h2-body-limit must be between 0 and --max-capture")
        hooks.require(kernel_hooks)
        self.kernel_hooks = kernel_hooks
        self.kprobes: list[str] = []  # probes attached in kprobes mode
        if not 1 <= poll_ms <= 1000:
            raise ProbebenchError("--poll-ms must be between 1 and 1000")
        self.poll_ms = poll_ms
        if ringbuf_pages & (ringbuf_pages - 1):
            raise ProbebenchError("--ringbuf-pages must be a power of two")
        self.hdr = header(chunk)
        d = self.hdr.defines
        self.kind_off = self.hdr.offset("pb_conn_event", "kind")
        self.defines: dict[str, int | str] = {
            "PB_FILTER_TGID": int(bool(tgids)),
            "PB_FILTER_PORTS": int(bool(ports)),
            "PB_SELF_TGID": os.getpid(),
            "PB_CHUNK": chunk,
            "PB_CALL_LIMIT": max_capture,
            "PB_H2_BODY_LIMIT": h2_body_limit,
            "PB_H1_SKIP": int(h1_bodies == "skip"),
            "PB_RINGBUF_PAGES": ringbuf_pages,
            "PB_KPROBES": int(kernel_hooks == "kprobes"),
            "PB_PROFILE": int(profile),
        }
        if floor != "none":
            self.defines["PB_FLOOR"] = d[FLOORS[floor]]
        # fd -> socket walk at the running kernel's offsets (connections' own addresses)
        self.defines.update(socket_walk_defines())
        if VMLINUX.exists():
            self.defines["PB_TASK_STORAGE"] = 1  # bpf_get_current_task_btf needs kernel BTF
            # receives' arguments read at their exit: no enter program for them
            self.defines["PB_EXIT_ARGS"] = int(hooks.exit_args())
        if 0 < len(tgids) <= INLINE_TGIDS:
            self.defines["PB_TGID_LIST"] = ",".join(str(t) for t in tgids)
        self.ev_exit = d["PB_EV_EXIT"]
        self.tgids, self.ports = tgids, ports
        self.writer = EventWriter(
            out,
            {
                "collector": "kprobe",
                "format": FORMAT,
                "program": PROGRAM,
                "kernel_hooks": kernel_hooks,
                "defines": self.defines,
                "tgids": tgids,
                "ports": ports,
                "clock": "CLOCK_MONOTONIC",
                "sizes": {n: ctypes.sizeof(s) for n, s in self.hdr.structs.items()},
            },
        )
        self.exited: list[int] = []
        self.lock = threading.Lock()  # the writer is shared with the sock_diag thread
        self.sockdiag_lookups = 0
        self.sockdiag_misses = 0
        self.polls = 0

    def _on_batch(self, framed: memoryview, records: int, payload: int, exits: list[int]) -> None:
        """One poll's records, already framed for the event file by the C drain."""
        with self.lock:
            self.writer.kernel_framed(framed, records, payload)
        self.exited += exits

    def _batch(self) -> Batch:
        h = self.hdr
        ev_data = h.defines["PB_EV_DATA"]
        if h.offset("pb_data_event", "kind") != self.kind_off:
            raise CollectorError("kprobe_events.h: kind must sit at one offset in every event")
        return Batch(
            self._on_batch,
            rec_type=KERNEL,
            kind_off=self.kind_off,
            # data events are reserved by size class: keep only their valid bytes; the
            # HTTP/2 walk packs a call's small ones into one record (`packed`)
            trim=Trim(ev_data, h.offset("pb_data_event", "cap_len"),
                      h.offset("pb_data_event", "data"), h.offset("pb_data_event", "packed")),
            watch=Watch(self.ev_exit, h.offset("pb_conn_event", "tgid")),
        )

    def _sockdiag_loop(self, bpf: Any, stop: threading.Event) -> None:
        """The netlink step: one sock_diag dump per round answers every wanted address."""
        name_thread("pb-sockdiag")
        block_stop_signals()
        wanted = bpf["addr_wanted"]
        # 5 ms while look-ups come (a short connection must still be open when asked about),
        # backing off when none do: an idle 5 ms timer was most of an idle recorder's CPU
        # (1.7% of a core, 150 wake-ups/s)
        busy, idle = SOCKDIAG_WAIT_S[0], SOCKDIAG_WAIT_S[2 if self.defines["PB_FD_SOCK"] else 1]
        wait = busy
        lib, key = load_bcc().lib, wanted.Key()
        while True:
            final = stop.wait(wait)
            # one syscall says the map is empty (nearly every idle round): bcc's items()
            # cost ~150 µs of Python per round, half of an idle recorder's CPU
            if lib.bpf_get_first_key(wanted.map_fd, ctypes.byref(key), ctypes.sizeof(key)) < 0:
                batch = []
            else:
                batch = [(k.tgid, k.fd, v.value) for k, v in wanted.items()]
            wait = busy if batch else min(2 * wait, idle)
            if batch:
                found = sockdiag.lookup([(t, f) for t, f, _ in batch])
                for tgid, fd, ts in batch:
                    self._note_address(tgid, fd, ts, found.get((tgid, fd)))
                    del wanted[wanted.Key(tgid, fd)]
            if final:
                return

    def _note_address(self, tgid: int, fd: int, ts: int, a: sockdiag.SocketAddress | None) -> None:
        self.sockdiag_lookups += 1
        # ts_ns names the connection event this answers (fds are reused)
        note: dict[str, Any] = {"type": "sockdiag", "tgid": tgid, "fd": fd, "ts_ns": ts}
        if a is None:
            self.sockdiag_misses += 1
            note["found"] = False
        else:
            note.update(
                found=True,
                local_ip=a.local_ip,
                local_port=a.local_port,
                remote_ip=a.remote_ip,
                remote_port=a.remote_port,
            )
        with self.lock:
            self.writer.note(note)

    def _collect_exited(self, bpf: Any) -> None:
        """Drop connection-table state of processes that exited."""
        if not self.exited:
            return
        gone, self.exited = set(self.exited), []
        conns = bpf["conns"]
        items = [(k, v) for k, v in conns.items() if k.tgid in gone]
        self._note_call_counts(items)
        for k, _ in items:
            del conns[k]

    def _note_call_counts(self, items: list[tuple[Any, Any]]) -> None:
        """How many data calls the kernel numbered on each connection by now: replay finds
        calls lost at the end of a stream (no later call shows the gap) from these."""
        counts = [[k.tgid, k.fd, int(v.seq[0]), int(v.seq[1])] for k, v in items
                  if v.seq[0] or v.seq[1]]  # fmt: skip
        if counts:
            with self.lock:
                self.writer.note({"type": "call_counts", "conns": counts})

    def run(self, deadline_s: float) -> dict[str, Any]:
        stop = stop_flag()
        t0 = time.monotonic()
        bpf = compile_program(PROGRAM, self.defines)
        try:
            # filters first: data calls reach the walkers as soon as they are loaded, and a
            # socket not seen opened that meets an empty port filter is remembered as ignored
            targets, ports = bpf["targets"], bpf["ports"]
            for t in self.tgids:
                targets[ctypes.c_uint32(t)] = ctypes.c_uint8(1)
            for p in self.ports:
                ports[ctypes.c_uint16(p)] = ctypes.c_uint8(1)
            self._load_walkers(bpf)
            if self.kernel_hooks == "kprobes":
                self.kprobes = hooks.attach_syscall_kprobes(bpf, load_bcc().lib)
            self._arm(bpf)
            rings = RingSet()
            batch = self._batch()
            rings.add_batch(bpf["events"], batch)
            diag_stop = threading.Event()
            diag = threading.Thread(
                target=self._sockdiag_loop, args=(bpf, diag_stop), name="sockdiag", daemon=True
            )
            diag.start()
            # bcc's objects live until the end: out of the collector's sight, so its
            # periodic passes (a tenth of the recorder's CPU in a perf profile) stay small
            gc.freeze()
            # the report's attach time (ease of building), beside the uprobe collector's
            self.compile_attach_s = time.monotonic() - t0
            try:
                self.polls = record_until_stopped(self.writer, rings, [], deadline_s, stop,
                                                  lambda: self._collect_exited(bpf),
                                                  self.poll_ms)  # fmt: skip
                # drain what the kernel already queued
                rings.consume()
                self._note_call_counts(list(bpf["conns"].items()))
            finally:
                diag_stop.set()
                diag.join()
                rings.close()
            stats = self._stats(bpf)
            stats.update(
                traced_hits_by_tgid=self._traced_hits(bpf),
                polls=self.polls,
                drain_batches=batch.batches,
                drain_trimmed_bytes=batch.trimmed_bytes,
                drain_dropped=batch.dropped,
                poll_ms=self.poll_ms,
                programs=program_names(bpf),
                kernel_hooks=self.kernel_hooks,
                pid=os.getpid(),  # names its kprobe events (…_bcc_PID) for leak checks
                kprobes_attached=len(self.kprobes),
                kprobe_misses=hooks.kprobe_misses(self.kprobes) if self.kprobes else 0,
            )
            if self.defines["PB_PROFILE"]:
                stats["profile"] = self._profile(bpf)
            stats["lost_events"] += batch.dropped  # counted in user space, never silent
            stats["stopped_by"] = stopped_by(stop)
            self.writer.note({"type": "stats", **stats})
            return stats
        finally:
            self.writer.close()
            bpf.cleanup()

    def _profile(self, bpf: Any) -> dict[str, int]:
        """The data path's work counters (PB_PROF_* in kprobe_events.h), by name."""
        d = self.hdr.defines
        totals = percpu_totals(bpf["prof"], d["PB_PROF_MAX"])
        return {name: totals[i] for i, name in self.hdr.enum("PB_PROF_").items() if name != "max"}

    def _traced_hits(self, bpf: Any) -> dict[str, int]:
        """Data-syscall program runs (enter and exit hits) of each inline-listed target."""
        if "PB_TGID_LIST" not in self.defines:
            return {}
        totals = percpu_totals(bpf["traced_hits"], len(self.tgids))
        return {str(t): n for t, n in zip(self.tgids, totals, strict=True)}

    def _load_walkers(self, bpf: Any) -> None:
        """Put the data-call walkers into the program array the sys_exit_* programs tail-call.

        They are plain functions, not TRACEPOINT_PROBEs, so bcc neither loads nor attaches
        them; each is verified once here.

        data_fn goes in last: it numbers each call and hands it to a frame walker, so a
        walker missing meanwhile would leave numbered calls unseen. h1_walk_fn takes
        seconds to verify; with data_fn in first, every connection already open lost its
        walked directions for those seconds (a gap replay must treat as a loss). No call
        reaches them before ``_arm``.
        """
        d = self.hdr.defines
        walkers = bpf["walkers"]
        # a tail call stays within one program type: the hooks' own
        kind = bpf.KPROBE if self.kernel_hooks == "kprobes" else bpf.TRACEPOINT
        for name, idx in (("h2_walk_fn", d["PB_TC_H2"]), ("h1_walk_fn", d["PB_TC_H1"]),
                          ("data_fn", d["PB_TC_DATA"])):
            try:
                fn = bpf.load_func(name.encode(), kind)
            except Exception as e:  # bcc raises bare Exception with the verifier's log
                raise CollectorError(f"the kernel rejected {name}: {e}") from e
            walkers[ctypes.c_int(idx)] = ctypes.c_int(fn.fd)

    def _arm(self, bpf: Any) -> None:
        """Let data calls through to data_fn, once every walker is in and every hook attached.

        One flag, set at one instant: putting a program into `walkers` patches each
        caller's direct tail-call jump in turn, over milliseconds on a loaded machine (18 ms
        seen), so the receive hooks reached data_fn before the send hooks did and the first
        sends of every busy connection went unnumbered (kprobes mode: hooks attach one by one
        too). Calls before are not numbered: their connections are found from the next call
        on, as if the attach came then; no tail call is tried before, so every failed one
        counted is a call lost.
        """
        bpf["armed"][ctypes.c_int(0)] = ctypes.c_uint32(1)

    def _stats(self, bpf: Any) -> dict[str, Any]:
        d = self.hdr.defines
        totals = percpu_totals(bpf["stats"], d["PB_STAT_MAX"])
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "lost_events": totals[d["PB_STAT_DROPPED"]],
            "compile_attach_s": round(getattr(self, "compile_attach_s", 0.0), 3),
            "data_events": totals[d["PB_STAT_DATA_EVENTS"]],
            "conn_events": totals[d["PB_STAT_CONN_EVENTS"]],
            "truncated_calls": totals[d["PB_STAT_TRUNCATED_CALLS"]],
            "truncated_bytes": totals[d["PB_STAT_TRUNCATED_BYTES"]],
            "non_http_connections": totals[d["PB_STAT_NON_HTTP"]],
            "payload_read_failures": totals[d["PB_STAT_READ_FAILED"]],
            "h2_frame_aware_calls": totals[d["PB_STAT_H2_CALLS"]],
            "h2_skipped_body_bytes": totals[d["PB_STAT_H2_SKIPPED_BYTES"]],
            "h2_sync_lost_implausible": totals[d["PB_STAT_H2_IMPLAUSIBLE"]],
            "h2_sync_lost_bound": totals[d["PB_STAT_H2_BOUND"]],
            "h2_resyncs": totals[d["PB_STAT_H2_RESYNC"]],
            "h1_skipped_body_bytes": totals[d["PB_STAT_H1_SKIPPED_BYTES"]],
            "h1_framing_given_up": totals[d["PB_STAT_H1_GIVEN_UP"]],
            "h1_midstream_starts": totals[d["PB_STAT_H1_MIDSTREAM"]],
            "tail_call_failures": totals[d["PB_STAT_TAIL_FAILED"]],
            "records_written": self.writer.records,
            "bytes_written": self.writer.bytes,
            "connections": conn_stats(bpf, d),
            "sockdiag_lookups": self.sockdiag_lookups,
            "sockdiag_misses": self.sockdiag_misses,
            "cpu_user_s": ru.ru_utime,
            "cpu_system_s": ru.ru_stime,
        }


def conn_stats(bpf: Any, d: dict[str, int]) -> dict[str, int]:
    """The connection-tracking counters (PB_CSTAT_* in kprobe_events.h), by name."""
    totals = percpu_totals(bpf["conn_stats"], d["PB_CSTAT_MAX"])
    return {
        k[len("PB_CSTAT_") :].lower(): totals[v]
        for k, v in d.items()
        if k.startswith("PB_CSTAT_") and k != "PB_CSTAT_MAX"
    }
def program_names(bpf: Any) -> dict[str, str]:
    """Kernel program id -> full function name (bpftool shows only 15 characters), so the
    overhead bench can name each program's run time."""
    out: dict[str, str] = {}
    for name, fn in bpf.funcs.items():
        try:
            info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("prog_id:"):
                out[line.split()[1]] = name.decode() if isinstance(name, bytes) else str(name)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = recorder_parser("probebench-kprobe-record", __doc__)
    ap.add_argument("--max-capture", type=int, default=DEFAULT_MAX_CAPTURE)
    ap.add_argument("--ringbuf-pages", type=int, default=DEFAULT_RINGBUF_PAGES)
    ap.add_argument("--poll-ms", type=int, default=DEFAULT_POLL_MS,
                    help="drain the ring at least this often (records do not wake the recorder)")
    ap.add_argument("--h2-body-limit", type=int, default=DEFAULT_H2_BODY_LIMIT,
                    help="gRPC message-body bytes captured per frame-aware HTTP/2 call")
    ap.add_argument("--kernel-hooks", choices=hooks.HOOKS, default=DEFAULT_KERNEL_HOOKS)
    ap.add_argument("--h1-bodies", choices=H1_BODIES, default=DEFAULT_H1_BODIES,
                    help="HTTP/1 bodies it can frame: left out as gaps, or captured")
    ap.add_argument("--profile", action="store_true",
                    help="count the data path's work (calls, walk steps, user reads, ring "
                         "records) into the stats, for the overhead analysis")  # fmt: skip
    ap.add_argument("--floor", choices=tuple(FLOORS), default="none",
                    help="a floor build for the overhead bench: the data programs return "
                         "after the target filter, or write one record of at most 255 bytes "
                         "per call with no framing (not a recording to replay)")  # fmt: skip
    a = ap.parse_args(argv)
    try:
        rec = Recorder(a.out, a.tgid, a.port, a.max_capture, a.ringbuf_pages, a.poll_ms,
                       a.h2_body_limit, a.kernel_hooks, a.h1_bodies, a.profile, a.floor)
        stats = rec.run(a.deadline)
    except ProbebenchError as e:
        print(f"kprobe collector: {e}", file=sys.stderr)
        return 2
    write_stats(a.stats, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
