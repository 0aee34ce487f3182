"""The kernel-side collector process: attach the syscall-tracepoint program, record raw events.

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
import os
import resource
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness.collectors import sockdiag
from harness.collectors.bpfsource import compile_program, percpu_totals
from harness.collectors.btf import socket_walk_defines
from harness.collectors.cli import recorder_parser, stop_flag, stopped_by, write_stats
from harness.collectors.eventfile import EventWriter
from harness.collectors.kprobe.layout import (
    DEFAULT_MAX_CAPTURE,
    DEFAULT_RINGBUF_PAGES,
    chunk_for,
    header,
)
from harness.errors import CollectorError, ProbebenchError

PROGRAM = "kprobe_collector.c"


class Recorder:
    def __init__(
        self,
        out: Path,
        tgids: list[int],
        ports: list[int],
        max_capture: int = DEFAULT_MAX_CAPTURE,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
    ) -> None:
        chunk = chunk_for(max_capture)
        if ringbuf_pages & (ringbuf_pages - 1):
            raise ProbebenchError("--ringbuf-pages must be a power of two")
        self.hdr = header(chunk)
        d = self.hdr.defines
        self.kind_off = self.hdr.offset("pb_conn_event", "kind")
        self.key_fmt = struct.Struct("<IIi")  # ts low bits skipped: tgid, tid, fd at offset 8
        self.defines = {
            "PB_FILTER_TGID": int(bool(tgids)),
            "PB_FILTER_PORTS": int(bool(ports)),
            "PB_SELF_TGID": os.getpid(),
            "PB_CHUNK": chunk,
            "PB_CALL_LIMIT": max_capture,
            "PB_RINGBUF_PAGES": ringbuf_pages,
        }
        # fd -> socket walk at the running kernel's offsets (connections' own addresses)
        self.defines.update(socket_walk_defines())
        self.ev_conn, self.ev_infer, self.ev_exit = (
            d["PB_EV_CONN"],
            d["PB_EV_CONN_INFER"],
            d["PB_EV_EXIT"],
        )
        self.lport_off = self.hdr.offset("pb_conn_event", "lport")
        self.tgids, self.ports = tgids, ports
        self.writer = EventWriter(
            out,
            {
                "collector": "kprobe",
                "program": PROGRAM,
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
        self.tail_failed_before_attach = 0

    def _on_event(self, _ctx: Any, data: int, size: int) -> None:
        raw = ctypes.string_at(data, size)
        with self.lock:
            self.writer.kernel(raw)
        if raw[self.kind_off] == self.ev_exit:
            self.exited.append(struct.unpack_from("<I", raw, 8)[0])

    def _sockdiag_loop(self, bpf: Any, stop: threading.Event) -> None:
        """The netlink step: one sock_diag dump per round answers every wanted address."""
        wanted = bpf["addr_wanted"]
        while True:
            final = stop.wait(0.005)
            batch = [(k.tgid, k.fd, v.value) for k, v in wanted.items()]
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
        for k in [k for k in conns if k.tgid in gone]:
            del conns[k]

    def run(self, deadline_s: float) -> dict[str, Any]:
        stop = stop_flag()
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
            bpf["events"].open_ring_buffer(self._on_event)
            diag_stop = threading.Event()
            diag = threading.Thread(
                target=self._sockdiag_loop, args=(bpf, diag_stop), name="sockdiag", daemon=True
            )
            diag.start()
            attach_ns = time.monotonic_ns()
            self.writer.note({"type": "attached", "ts_ns": attach_ns})
            print(f"ATTACHED {attach_ns}", flush=True)
            end = time.monotonic() + deadline_s
            try:
                while not stop["signal"] and time.monotonic() < end:
                    bpf.ring_buffer_poll(100)
                    self.writer.flush()
                    self._collect_exited(bpf)
                # drain what the kernel already queued
                bpf.ring_buffer_consume()
            finally:
                diag_stop.set()
                diag.join()
            stats = self._stats(bpf)
            stats["stopped_by"] = stopped_by(stop)
            self.writer.note({"type": "stats", **stats})
            return stats
        finally:
            self.writer.close()
            bpf.cleanup()

    def _load_walkers(self, bpf: Any) -> None:
        """Put the data-call walkers into the program array the sys_exit_* programs tail-call.

        They are plain functions, not TRACEPOINT_PROBEs, so bcc neither loads nor attaches
        them; each is verified once here. Calls that end before this are counted as failed
        tail calls, which happen before ATTACHED: that count is kept to subtract.
        """
        d = self.hdr.defines
        walkers = bpf["walkers"]
        for name, idx in (("data_fn", d["PB_TC_DATA"]), ("h2_walk_fn", d["PB_TC_H2"])):
            try:
                fn = bpf.load_func(name.encode(), bpf.TRACEPOINT)
            except Exception as e:  # bcc raises bare Exception with the verifier's log
                raise CollectorError(f"the kernel rejected {name}: {e}") from e
            walkers[ctypes.c_int(idx)] = ctypes.c_int(fn.fd)
        self.tail_failed_before_attach = percpu_totals(bpf["stats"], d["PB_STAT_MAX"])[
            d["PB_STAT_TAIL_FAILED"]
        ]

    def _stats(self, bpf: Any) -> dict[str, Any]:
        d = self.hdr.defines
        totals = percpu_totals(bpf["stats"], d["PB_STAT_MAX"])
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "lost_events": totals[d["PB_STAT_DROPPED"]],
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
            "tail_call_failures": totals[d["PB_STAT_TAIL_FAILED"]] - self.tail_failed_before_attach,
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


def main(argv: list[str] | None = None) -> int:
    ap = recorder_parser("probebench-kprobe-record", __doc__)
    ap.add_argument("--max-capture", type=int, default=DEFAULT_MAX_CAPTURE)
    ap.add_argument("--ringbuf-pages", type=int, default=DEFAULT_RINGBUF_PAGES)
    a = ap.parse_args(argv)
    try:
        rec = Recorder(a.out, a.tgid, a.port, a.max_capture, a.ringbuf_pages)
        stats = rec.run(a.deadline)
    except ProbebenchError as e:
        print(f"kprobe collector: {e}", file=sys.stderr)
        return 2
    write_stats(a.stats, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
