"""The uprobe collector process: resolve grpc-go binaries, attach uprobes, record raw events.

Runs as its own process (`python -m harness.collectors.uprobe.record`), like the
kernel-side collector. Uprobes attach by binary path for every process running it
(early attach: the targets start later) and, with --tgid, the program keeps only
those processes. One bcc program is compiled per distinct binary layout (offsets
arrive as -D cflags). A binary that cannot be probed is reported as
``unsupported: ...`` in a NOTE record and the stats, and the collector still attaches
what it can (possibly nothing), so a run never fails or hangs over it.
With --follow PID, the exec gate (gate.py) holds every exec in that process's tree
until the binary is looked at, and grpc-go binaries are probed before they run.
Prints ``ATTACHED <monotonic_ns>`` once the probes are in place; SIGTERM/SIGINT or the
deadline stop it, after a drain.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.collectors.base import DEFAULT_VALUE_MAX, LEVELS
from harness.collectors.bpfsource import compile_program, percpu_totals
from harness.collectors.btf import task_image_defines
from harness.collectors.cli import (
    record_until_stopped,
    recorder_parser,
    stop_flag,
    stopped_by,
    write_stats,
)
from harness.collectors.eventfile import KERNEL, EventWriter
from harness.collectors.rings import Batch, RingSet
from harness.collectors.uprobe.discover import identify
from harness.collectors.uprobe.gate import Exec, ExecGate
from harness.collectors.uprobe.layout import (
    DATA_PROBES,
    DEFAULT_RINGBUF_PAGES,
    FORMAT,
    PROBE_NAMES,
    PROGRAM,
    header,
    sizing_defines,
)
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


Layout = tuple[tuple[str, int], ...]  # a binary's resolved defines: one program each
FileKey = tuple[int, int, int, int]


def _file_key(st: os.stat_result) -> FileKey:
    """Names one version of one file, whatever path reaches it."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _possible_cpus() -> int:
    """CPUs the kernel may ever run on (/sys/devices/system/cpu/possible, e.g. "0-3")."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    except OSError:
        return 1
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def _summary_ms(ns: list[int]) -> dict[str, float] | None:
    if not ns:
        return None
    v = sorted(ns)
    return {
        "n": len(v),
        "min": round(v[0] / 1e6, 3),
        "median": round(v[len(v) // 2] / 1e6, 3),
        "max": round(v[-1] / 1e6, 3),
    }


class Recorder:
    def __init__(
        self,
        out: Path,
        tgids: list[int],
        ports: list[int],
        binaries: list[Path],
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        follow: int | None = None,
        level: str = "headers",
        value_max: int = DEFAULT_VALUE_MAX,
        profile: bool = False,
    ) -> None:
        if ringbuf_pages & (ringbuf_pages - 1):
            raise ProbebenchError("--ringbuf-pages must be a power of two")
        if level not in LEVELS:
            raise ProbebenchError(f"--uprobe-level is one of {', '.join(LEVELS)}, not {level!r}")
        self.tgids, self.ports, self.follow = tgids, ports, follow
        self.level = level
        self.hdr = header()
        paths, self.problems = target_binaries(binaries, tgids)
        t0 = time.monotonic()
        self.resolutions = [resolve(p) for p in paths]
        self.resolve_s = time.monotonic() - t0
        self.programs: dict[Layout, Program] = {}
        self.rejected: dict[Layout, str] = {}  # layouts the verifier refused, and why
        self.rings: RingSet | None = None
        self.batches: list[Batch] = []
        # binaries met through the gate, by file identity -> what became of them
        self.seen: dict[FileKey, str] = {}
        self.followed: dict[str, str] = {}  # exe -> verdict, for the stats
        self.holds_ns: dict[bool, list[int]] = {True: [], False: []}  # by "binary was new"
        self.common = {
            "PB_FILTER_TGID": int(bool(tgids)),
            "PB_RINGBUF_PAGES": ringbuf_pages,
            # bpf_get_smp_processor_id() indexes the header scratch: every possible CPU
            "PB_NCPU": max(os.cpu_count() or 1, _possible_cpus()),
            **sizing_defines(value_max),
            "PB_PROFILE": int(profile),
            # the process image a goroutine's cached connection belongs to (conn_at)
            **task_image_defines(),
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
                "follow": follow,
                "level": level,
                "value_max": value_max,
                "clock": "CLOCK_MONOTONIC",
                "sizes": {n: ctypes.sizeof(s) for n, s in self.hdr.structs.items()},
            },
        )
        for p in self.problems:
            self.writer.note({"type": "unsupported", "what": p})
        for r in self.resolutions:
            self._report(r)

    def _unsupported(self, msg: str) -> None:
        self.problems.append(msg)
        self.writer.note({"type": "unsupported", "what": msg})

    def _report(self, r: Resolution) -> None:
        """What could not be resolved in this binary, in the stats and the event file."""
        for msg in ([r.error] if r.error else []) + [f"{r.path}: {u}" for u in r.unsupported]:
            self._unsupported(msg)

    def _on_batch(self, framed: memoryview, records: int, payload: int, _: list[int]) -> None:
        """One poll's records of one program, framed for the event file by the C drain."""
        self.writer.kernel_framed(framed, records, payload)

    def _program(self, r: Resolution) -> Program | None:
        """The program for this binary's layout, compiled on first use."""
        key: Layout = tuple(sorted(r.defines.items()))
        if key in self.rejected:
            self._unsupported(f"{r.path}: unsupported: program rejected ({self.rejected[key]})")
            return None
        prog = self.programs.get(key)
        if prog is None:
            try:
                bpf = compile_program(PROGRAM, {**r.defines, **self.common})
            except CollectorError as e:
                # one layout the verifier refuses must not take the others down
                self.rejected[key] = str(e)
                self._unsupported(f"{r.path}: unsupported: program rejected ({e})")
                return None
            try:
                self._load_walker(bpf, r)
            except CollectorError as e:
                bpf.cleanup()
                self.rejected[key] = str(e)
                self._unsupported(f"{r.path}: unsupported: program rejected ({e})")
                return None
            prog = self.programs[key] = Program(dict(r.defines), [], bpf)
            targets = bpf["targets"]
            for t in self.tgids:
                targets[ctypes.c_uint32(t)] = ctypes.c_uint8(1)
            assert self.rings is not None
            # in bulk (no Python call per record), and records do not wake the recorder
            # (rb_flags in the program): it drains on its poll timer
            batch = Batch(self._on_batch, rec_type=KERNEL)
            self.batches.append(batch)
            self.rings.add_batch(bpf["events"], batch)
        return prog

    @staticmethod
    def _load_walker(bpf: Any, r: Resolution) -> None:
        """Put hdr_fields, which walks a header block in a chain of tail calls, into the
        program array the header probes call. A plain function: bcc neither loads nor
        attaches it by itself."""
        if "PB_HFIELD_SIZE" not in r.defines:
            return  # no header probe in this layout
        try:
            fn = bpf.load_func(b"hdr_fields", bpf.KPROBE)
        except Exception as e:  # bcc raises bare Exception with the verifier's log
            raise CollectorError(f"the kernel rejected hdr_fields: {str(e)[-300:]}") from e
        bpf["hdr_walker"][ctypes.c_int(0)] = ctypes.c_int(fn.fd)

    def _probe(self, r: Resolution) -> list[dict[str, Any]]:
        """Attach uprobes to every process running this binary, now and later."""
        prog = self._program(r)
        if prog is None:
            return []
        prog.binaries.append(r)
        attached = []
        for name, point in r.probes.items():
            if name in DATA_PROBES and self.level != "messages":
                continue  # a hit per DATA frame: only when message counting is asked for
            try:
                prog.bpf.attach_uprobe(
                    name=r.path.encode(), addr=point.address, fn_name=f"probe_{name}".encode(),
                    pid=-1,
                )  # fmt: skip
            except Exception as e:  # bcc raises bare Exception when attaching fails
                self._unsupported(f"{r.path}: unsupported: attach {point.symbol} ({e})")
                continue
            attached.append(
                {"binary": r.path, "probe": name, "symbol": point.symbol, "address": point.address}
            )
        prog.attached += attached
        return attached

    def _met(self, tgid: int) -> tuple[str | None, bool]:
        """A process of the followed tree just exec'd (and waits): probe its binary if it is
        grpc-go and new to us. Returns its executable (None if gone) and whether it was new."""
        link = f"/proc/{tgid}/exe"
        try:
            st = os.stat(link)
            exe = os.readlink(link)
        except OSError:
            return None, False  # gone already
        key = _file_key(st)
        if key in self.seen:
            return exe, False
        # a deleted or replaced file is still reachable through the link
        path = link if exe.endswith(" (deleted)") else exe
        ident = identify(Path(path))
        if not (ident.go and ident.grpc_version):
            verdict = f"not probed: {ident.why}"
        else:
            r = resolve(Path(path))
            r.path = path
            self.resolutions.append(r)
            self._report(r)
            probes = self._probe(r) if r.usable else []
            self.writer.note(
                {"type": "attached", "ts_ns": time.monotonic_ns(), "pid": tgid, "probes": probes}
            )
            verdict = f"probed: {len(probes)} probes" if probes else "grpc-go, not probed"
        self.seen[key] = verdict
        self.followed[exe] = verdict
        self.writer.note({"type": "binary", "pid": tgid, "exe": exe, "verdict": verdict})
        return exe, True

    def _serve(self, gate: ExecGate, ex: Exec) -> None:
        """Look at one exec, then let it go, whatever happened."""
        exe, new = None, False
        try:
            exe, new = self._met(ex.tgid)
        finally:
            held_ns = gate.release(ex.tgid)
        if held_ns is not None:
            self.holds_ns[new].append(held_ns)
        self.writer.note({"type": "exec", "pid": ex.tgid, "exe": exe, "held_ns": held_ns})

    def run(self, deadline_s: float) -> dict[str, Any]:
        stop = stop_flag()
        self.rings = RingSet()
        gate: ExecGate | None = None
        t0 = time.monotonic()
        try:
            for r in self.resolutions:
                if r.usable:
                    self._probe(r)
                with contextlib.suppress(OSError):  # the gate must not probe these twice
                    self.seen[_file_key(os.stat(r.path))] = "probed from the start"
            if self.follow is not None:
                gate = ExecGate(self.follow)
                gate.open(self.rings)
            compile_s = time.monotonic() - t0
            attached = [a for p in self.programs.values() for a in p.attached]

            def serve_execs() -> None:
                if gate is not None:
                    for ex in gate.take():
                        self._serve(gate, ex)

            record_until_stopped(self.writer, self.rings, attached, deadline_s, stop,
                                 serve_execs)  # fmt: skip
            if gate is not None:
                gate.close(self.rings)  # hears the last execs and lets them go
                for ex in gate.take():
                    self._serve(gate, ex)
            self.rings.consume()  # drain what the kernel already queued
            stats = self._stats(compile_s)
            if gate is not None:
                stats["gate"] = {
                    **gate.stats(),
                    # what the gate cost: a binary met for the first time waits for its
                    # look (and compile), or behind another's; a known one only for a wake-up
                    "hold_ms_new_binary": _summary_ms(self.holds_ns[True]),
                    "hold_ms_known_binary": _summary_ms(self.holds_ns[False]),
                }
                stats["followed"] = dict(self.followed)
            stats["stopped_by"] = stopped_by(stop)
            self.writer.note({"type": "stats", **stats})
            return stats
        finally:
            try:
                if gate is not None:
                    gate.close(self.rings)  # on an error path: never leave one stopped
            finally:
                self.writer.close()
                self.rings.close()
                if gate is not None:
                    gate.cleanup()
                for prog in self.programs.values():
                    prog.bpf.cleanup()

    def _stats(self, compile_s: float) -> dict[str, Any]:
        d = self.hdr.defines
        progs = list(self.programs.values())
        per_prog = [percpu_totals(p.bpf["stats"], d["PB_USTAT_MAX"]) for p in progs]
        totals = [sum(col) for col in zip(*per_prog, strict=True)] or [0] * d["PB_USTAT_MAX"]
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            # dropped by the drain: never expected (the headroom holds the largest record)
            "lost_events": totals[d["PB_STAT_DROPPED"]] + sum(b.dropped for b in self.batches),
            "header_events": totals[d["PB_USTAT_HEADER_EVENTS"]],
            "data_events": totals[d["PB_USTAT_DATA_EVENTS"]],
            "extra_fields": totals[d["PB_USTAT_EXTRA_FIELDS"]],
            "read_errors": totals[d["PB_USTAT_READ_ERRORS"]],
            "cut_values": totals[d["PB_USTAT_CUT_VALUES"]],
            # reads of the traced processes' memory: what a hit costs (--profile only)
            **(
                {"user_reads": totals[d["PB_USTAT_USER_READS"]],
                 "conns_cached": totals[d["PB_USTAT_CONN_CACHED"]]}
                if self.common["PB_PROFILE"]
                else {}
            ),
            "level": self.level,
            # uprobe hits per probe: the collector's cost is hits x the trap's
            "hits": {
                name: totals[d["PB_USTAT_HITS"] + pid] for pid, name in PROBE_NAMES.items()
            },
            "records_written": self.writer.records,
            "bytes_written": self.writer.bytes,
            "programs": len(progs),
            "attached_probes": sum(len(p.attached) for p in progs),
            "unsupported": list(self.problems),
            "binaries": {
                r.path: {
                    "grpc_version": r.grpc_version,
                    "go_version": r.go_version,
                    "probes": sorted(r.probes),
                    "error": r.error,
                    "source": r.source,  # where layouts came from: dwarf | table | none
                    "how": r.how,
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
    ap.add_argument(
        "--level", choices=LEVELS, default="headers",
        help="headers: header blocks sent and received (3 hits per unary call per side); "
        "messages: also one hit per DATA frame, for message counts and sizes",
    )  # fmt: skip
    ap.add_argument(
        "--value-max", type=int, default=DEFAULT_VALUE_MAX,
        help="bytes of each header value captured; a longer value is marked cut, never used",
    )  # fmt: skip
    ap.add_argument(
        "--follow", type=int, metavar="PID",
        help="hold each exec in this process's tree until its binary is probed (if grpc-go)",
    )  # fmt: skip
    ap.add_argument("--profile", action="store_true",
                    help="count the probes' reads of user memory (user_reads in the stats)")
    a = ap.parse_args(argv)
    try:
        rec = Recorder(
            a.out, a.tgid, a.port, a.binary, a.ringbuf_pages, a.follow, a.level, a.value_max,
            a.profile,
        )
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
