"""The uprobe collector process: resolve grpc-go binaries, attach uprobes, record raw events.

Runs as its own process (`python -m harness.collectors.uprobe.record`), like the
kernel-side collector. Uprobes attach by binary path for every process running it
(early attach: the targets start later) and, with --tgid, the program keeps only
those processes. One bcc program is compiled per distinct binary layout (offsets
arrive as -D cflags). A binary that cannot be probed is reported as
``unsupported: ...`` in a NOTE record and the stats, and the collector still attaches
what it can (possibly nothing), so a run never fails or hangs over it.
Prints ``ATTACHED <monotonic_ns>`` once the probes are in place; SIGTERM/SIGINT or the
deadline stop it, after a drain.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.collectors.bpfsource import compile_program
from harness.collectors.cli import recorder_parser, stop_flag, stopped_by, write_stats
from harness.collectors.eventfile import EventWriter
from harness.collectors.uprobe.layout import DEFAULT_RINGBUF_PAGES, FORMAT, PROGRAM, header
from harness.collectors.uprobe.resolve import Resolution, resolve
from harness.errors import CollectorError, ProbebenchError


@dataclass
class Program:
    """One compiled bcc program and the binaries sharing its layout."""

    defines: dict[str, int]
    binaries: list[Resolution]
    bpf: Any = None
    attached: list[dict[str, Any]] = field(default_factory=list)


def target_binaries(binaries: list[Path], tgids: list[int]) -> tuple[list[Path], list[str]]:
    """The binaries to probe: those named, and those the named processes run."""
    out: dict[str, Path] = {}
    problems: list[str] = []
    for b in binaries:
        out.setdefault(os.path.realpath(b), Path(os.path.realpath(b)))
    for t in tgids:
        try:
            exe = os.readlink(f"/proc/{t}/exe")
        except OSError as e:
            problems.append(f"process {t}: cannot read its executable ({e.strerror})")
            continue
        out.setdefault(exe, Path(exe))
    return list(out.values()), problems


class Recorder:
    def __init__(
        self,
        out: Path,
        tgids: list[int],
        ports: list[int],
        binaries: list[Path],
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
    ) -> None:
        if ringbuf_pages & (ringbuf_pages - 1):
            raise ProbebenchError("--ringbuf-pages must be a power of two")
        self.tgids, self.ports = tgids, ports
        self.hdr = header()
        paths, self.problems = target_binaries(binaries, tgids)
        t0 = time.monotonic()
        self.resolutions = [resolve(p) for p in paths]
        self.resolve_s = time.monotonic() - t0
        self.programs: dict[tuple[tuple[str, int], ...], Program] = {}
        for r in self.resolutions:
            if r.error:
                self.problems.append(r.error)
            self.problems += [f"{r.path}: {u}" for u in r.unsupported]
            if r.usable:
                key = tuple(sorted(r.defines.items()))
                self.programs.setdefault(key, Program(dict(r.defines), [])).binaries.append(r)
        self.common = {
            "PB_FILTER_TGID": int(bool(tgids)),
            "PB_RINGBUF_PAGES": ringbuf_pages,
        }
        self.writer = EventWriter(
            out,
            {
                "collector": "uprobe",
                "format": FORMAT,
                "program": PROGRAM,
                "common_defines": self.common,
                "binaries": [r.to_dict() for r in self.resolutions],
                "tgids": tgids,
                "ports": ports,
                "clock": "CLOCK_MONOTONIC",
                "sizes": {n: ctypes.sizeof(s) for n, s in self.hdr.structs.items()},
            },
        )
        for p in self.problems:
            self.writer.note({"type": "unsupported", "what": p})

    def _on_event(self, _ctx: Any, data: int, size: int) -> None:
        self.writer.kernel(ctypes.string_at(data, size))

    def _attach(self, prog: Program) -> None:
        prog.bpf = compile_program(PROGRAM, {**prog.defines, **self.common})
        targets = prog.bpf["targets"]
        for t in self.tgids:
            targets[ctypes.c_uint32(t)] = ctypes.c_uint8(1)
        for r in prog.binaries:
            for name, point in r.probes.items():
                try:
                    prog.bpf.attach_uprobe(
                        name=r.path.encode(), addr=point.address, fn_name=f"probe_{name}".encode(),
                        pid=-1,
                    )  # fmt: skip
                except Exception as e:  # bcc raises bare Exception when attaching fails
                    msg = f"{r.path}: unsupported: attach {point.symbol} ({e})"
                    self.problems.append(msg)
                    self.writer.note({"type": "unsupported", "what": msg})
                    continue
                prog.attached.append(
                    {"binary": r.path, "probe": name, "symbol": point.symbol,
                     "address": point.address}
                )  # fmt: skip
        prog.bpf["events"].open_ring_buffer(self._on_event)

    def run(self, deadline_s: float) -> dict[str, Any]:
        stop = stop_flag()
        progs = list(self.programs.values())
        t0 = time.monotonic()
        try:
            for prog in list(progs):
                try:
                    self._attach(prog)
                except CollectorError as e:
                    # one layout the verifier refuses must not take the others down
                    progs.remove(prog)
                    if prog.bpf is not None:
                        prog.bpf.cleanup()
                    for r in prog.binaries:
                        msg = f"{r.path}: unsupported: program rejected ({e})"
                        self.problems.append(msg)
                        self.writer.note({"type": "unsupported", "what": msg})
            compile_s = time.monotonic() - t0
            attach_ns = time.monotonic_ns()
            attached = [a for p in progs for a in p.attached]
            self.writer.note({"type": "attached", "ts_ns": attach_ns, "probes": attached})
            print(f"ATTACHED {attach_ns}", flush=True)
            end = time.monotonic() + deadline_s
            slice_ms = max(10, 100 // max(1, len(progs)))
            while not stop["signal"] and time.monotonic() < end:
                if not progs:
                    time.sleep(0.1)
                for prog in progs:
                    prog.bpf.ring_buffer_poll(slice_ms)
            for prog in progs:  # drain what the kernel already queued
                prog.bpf.ring_buffer_consume()
            stats = self._stats(progs, compile_s, len(attached))
            stats["stopped_by"] = stopped_by(stop)
            self.writer.note({"type": "stats", **stats})
            return stats
        finally:
            self.writer.close()
            for prog in progs:
                if prog.bpf is not None:
                    prog.bpf.cleanup()

    def _stats(self, progs: list[Program], compile_s: float, attached: int) -> dict[str, Any]:
        d = self.hdr.defines
        totals = [0] * d["PB_USTAT_MAX"]
        for prog in progs:
            arr = prog.bpf["stats"]
            for i in range(d["PB_USTAT_MAX"]):
                totals[i] += sum(arr.getvalue(ctypes.c_int(i)))
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "lost_events": totals[d["PB_USTAT_DROPPED"]],
            "header_events": totals[d["PB_USTAT_HEADER_EVENTS"]],
            "data_events": totals[d["PB_USTAT_DATA_EVENTS"]],
            "extra_fields": totals[d["PB_USTAT_EXTRA_FIELDS"]],
            "read_errors": totals[d["PB_USTAT_READ_ERRORS"]],
            "records_written": self.writer.records,
            "bytes_written": self.writer.bytes,
            "programs": len(progs),
            "attached_probes": attached,
            "unsupported": list(self.problems),
            "binaries": {
                r.path: {
                    "grpc_version": r.grpc_version,
                    "go_version": r.go_version,
                    "probes": sorted(r.probes),
                    "error": r.error,
                }
                for r in self.resolutions
            },
            "resolve_s": round(self.resolve_s, 3),
            "compile_attach_s": round(compile_s, 3),
            "cpu_user_s": ru.ru_utime,
            "cpu_system_s": ru.ru_stime,
        }


def main(argv: list[str] | None = None) -> int:
    ap = recorder_parser("probebench-uprobe-record", __doc__)
    ap.add_argument("--binary", type=Path, action="append", default=[], help="Go binary to probe")
    ap.add_argument("--ringbuf-pages", type=int, default=DEFAULT_RINGBUF_PAGES)
    a = ap.parse_args(argv)
    try:
        rec = Recorder(a.out, a.tgid, a.port, a.binary, a.ringbuf_pages)
        stats = rec.run(a.deadline)
    except (ProbebenchError, CollectorError) as e:
        print(f"uprobe collector: {e}", file=sys.stderr)
        return 2
    for p in stats["unsupported"]:
        print(f"uprobe collector: {p}", file=sys.stderr)
    write_stats(a.stats, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
