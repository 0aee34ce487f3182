"""The TLS uprobe collector process: find libssl, attach OpenSSL uprobes, record raw events.

Runs as its own process (`python -m harness.collectors.tls.record`), like the other
collectors. The libssl to probe is every ``libssl*.so*`` the --tgid processes map
(from /proc/<pid>/maps), each --library given, and, with no process named yet
(early attach: the targets start later), the system's libssl that Python's ``ssl``
links. Uprobes attach by library path for every process (pid -1); the program keeps
only the --tgid processes, or else only connections on the --port ports.
Calls whose socket the kernel could not name (connections opened before attach)
are looked up once per (pid, fd) through sock_diag, and the answer is written as a
note and seeded into the program, so later calls on that SSL object carry it.
Prints ``ATTACHED <monotonic_ns>`` once the probes are in place; SIGTERM/SIGINT or
the deadline stop it, after a drain.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

from harness.collectors import sockdiag
from harness.collectors.bpfsource import compile_program, percpu_totals
from harness.collectors.cli import (
    record_until_stopped,
    recorder_parser,
    stop_flag,
    stopped_by,
    write_stats,
)
from harness.collectors.eventfile import KERNEL, EventFile, EventWriter
from harness.collectors.rings import Batch, RingSet, Watch
from harness.collectors.tls.gotls import GoTls, resolve_go_tls
from harness.collectors.tls.layout import (
    DEFAULT_RINGBUF_PAGES,
    FORMAT,
    FREE_PROBE,
    GO_PROGRAM,
    HANDSHAKE_PROBE,
    OPENSSL_PROBES,
    PROGRAM,
    RETURN_PROBE,
    header,
)
from harness.collectors.tls.sockhook import KPROBE_FN, TCP_IO, sock_hook
from harness.errors import CollectorError, ProbebenchError

_LIBSSL = re.compile(r"/libssl[^/]*\.so[.\d]*$")
# The drain timer (the others': cli.TIMER_POLL_MS). Shorter here: the sock_diag look-up for
# a call the kernel left unnamed runs after the poll that drained it, while it is still open.
SOCKDIAG_POLL_MS = 100


def mapped_libssl(pid: int) -> list[str]:
    """The libssl files a process maps (its /proc/<pid>/maps), by path."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        path = line.split(None, 5)[5] if len(line.split(None, 5)) == 6 else ""
        if _LIBSSL.search(path) and path not in out:
            out.append(path)
    return out


def system_libssl() -> str | None:
    """The libssl Python's ssl module links: what a Python target will map."""
    import ssl  # noqa: F401  # maps libssl into this process

    libs = mapped_libssl(os.getpid())
    return libs[0] if libs else None


class Recorder:
    def __init__(
        self,
        out: Path,
        tgids: list[int],
        ports: list[int],
        libraries: list[Path],
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        binaries: list[Path] | None = None,
    ) -> None:
        if ringbuf_pages & (ringbuf_pages - 1):
            raise ProbebenchError("--ringbuf-pages must be a power of two")
        self.tgids, self.ports = tgids, ports
        self.hdr = header()
        self.ev_type = self.hdr.structs["pb_tls_event"]
        self.head_size = self.hdr.offset("pb_tls_event", "data")
        self.problems: list[str] = []
        libs: dict[str, None] = {str(p): None for p in libraries}
        for t in tgids:
            found = mapped_libssl(t)
            for lib in found:
                libs[lib] = None
        if not tgids:
            own = system_libssl()
            if own:
                libs[own] = None
        self.libraries = list(libs)
        # Go binaries: those named (early attach) and those the processes run
        exes: dict[str, None] = {os.path.realpath(b): None for b in binaries or []}
        for t in tgids:
            with contextlib.suppress(OSError):
                exes[os.readlink(f"/proc/{t}/exe")] = None
        self.go: list[GoTls] = []
        for exe in exes:
            g = resolve_go_tls(Path(exe))
            if g.error is None:
                self.go.append(g)
            elif "not a Go binary" not in g.error:
                self.problems.append(f"{exe}: Go crypto/tls not probed: {g.error}")
        if not self.libraries and not self.go:
            self.problems.append("no libssl and no Go crypto/tls found to probe")
        self.go_programs: list[Any] = []
        self.batches: list[Batch] = []
        self.defines: dict[str, int | str] = {
            "PB_FILTER_TGID": int(bool(tgids)),
            "PB_FILTER_PORTS": int(bool(ports)),
            "PB_RINGBUF_PAGES": ringbuf_pages,
        }
        # the OpenSSL program's way to a call's socket on this kernel (Go reads its own)
        self.sock_hook = sock_hook() if self.libraries else None
        if self.sock_hook is not None:
            self.defines["PB_SK_HOOK"] = self.hdr.defines[f"PB_SK_{self.sock_hook.upper()}"]
        self.attached: list[dict[str, Any]] = []
        self.looked_up: set[tuple[int, int, int]] = set()  # (tgid, fd, ssl) asked once
        self.pending: list[tuple[int, int, int, int]] = []  # (tgid, fd, ssl, ts)
        self.sockdiag_found = self.sockdiag_missed = 0
        self.writer = EventWriter(
            out,
            {
                "collector": "tls",
                "format": FORMAT,
                "program": PROGRAM,
                "defines": self.defines,
                "libraries": self.libraries,
                "go_binaries": [g.to_dict() for g in self.go],
                "tgids": tgids,
                "ports": ports,
                "clock": "CLOCK_MONOTONIC",
                "sizes": {n: ctypes.sizeof(s) for n, s in self.hdr.structs.items()},
            },
        )
        for p in self.problems:
            self.writer.note({"type": "unsupported", "what": p})

    def _batch(self) -> Batch:
        """In bulk (no Python call per record; records do not wake the recorder, see
        rb_flags in the programs). Events without an address are watched: only a batch
        holding one is read here, for the sock_diag look-up."""
        h = self.hdr
        unnamed = Watch(h.defines["PB_TLS_ADDR_NONE"], h.offset("pb_tls_event", "tgid"))
        return Batch(self._on_batch, rec_type=KERNEL,
                     kind_off=h.offset("pb_tls_event", "addr_source"), watch=unnamed)  # fmt: skip

    def _drain(self, rings: RingSet, bpf: Any) -> None:
        """Serve the program's ring buffer in bulk."""
        batch = self._batch()
        self.batches.append(batch)
        rings.add_batch(bpf["events"], batch)

    def _on_batch(self, framed: memoryview, records: int, payload: int, watched: list[int]) -> None:
        """One poll's records of one program, framed for the event file by the C drain."""
        self.writer.kernel_framed(framed, records, payload)
        if watched:
            data = bytes(framed)
            for _t, raw in EventFile({}, _data=data, _end=len(data)).records():
                assert isinstance(raw, memoryview)
                self._check_address(raw)

    def _check_address(self, raw: memoryview) -> None:
        """Queue a sock_diag look-up for the first event of a call the kernel left unnamed."""
        head = bytes(raw[: self.head_size]).ljust(ctypes.sizeof(self.ev_type), b"\0")
        ev = self.ev_type.from_buffer_copy(head)
        if ev.addr_source == 0 and ev.fd >= 0 and ev.part == 0:
            key = (ev.tgid, ev.fd, ev.ssl)
            if key not in self.looked_up:
                self.looked_up.add(key)
                self.pending.append((ev.tgid, ev.fd, ev.ssl, ev.ts_ns))

    def _resolve_pending(self, bpf: Any) -> None:
        """sock_diag for the sockets the kernel could not name; seeds the SSL's address."""
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        answers = sockdiag.lookup([(t, fd) for t, fd, _s, _ts in batch])
        table = bpf["ssl_addr"] if bpf is not None else None  # Go has no SSL object
        for tgid, fd, ssl, ts in batch:
            a = answers.get((tgid, fd))
            note: dict[str, Any] = {"type": "sockdiag", "tgid": tgid, "fd": fd, "ssl": ssl,
                                    "ts_ns": ts}  # fmt: skip
            if a is None:
                self.sockdiag_missed += 1
            else:
                self.sockdiag_found += 1
                note.update(local_ip=a.local_ip, local_port=a.local_port,
                            remote_ip=a.remote_ip, remote_port=a.remote_port)  # fmt: skip
                if table is not None:
                    self._seed(table, ssl, a)
            self.writer.note(note)

    @staticmethod
    def _seed(table: Any, ssl: int, a: sockdiag.SocketAddress) -> None:
        v = table.Leaf()
        lip, rip = ipaddress.ip_address(a.local_ip), ipaddress.ip_address(a.remote_ip)
        v.family = 2 if lip.version == 4 else 10
        v.lport, v.rport = a.local_port, a.remote_port
        ctypes.memmove(v.laddr, lip.packed, len(lip.packed))
        ctypes.memmove(v.raddr, rip.packed, len(rip.packed))
        table[table.Key(ssl)] = v

    def _attach(self, bpf: Any) -> None:
        if self.sock_hook == "kprobes":
            # before the uprobes: an SSL call that starts first would find no socket
            for fn in TCP_IO:
                try:
                    bpf.attach_kprobe(event=fn, fn_name=KPROBE_FN)
                except Exception as e:  # bcc raises bare Exception with the kernel's reason
                    raise CollectorError(f"could not attach a kprobe on {fn}: {e}") from e
        for lib in self.libraries:
            for sym, fn in OPENSSL_PROBES:
                try:
                    bpf.attach_uprobe(name=lib.encode(), sym=sym.encode(), fn_name=fn.encode(),
                                      pid=-1)  # fmt: skip
                    bpf.attach_uretprobe(name=lib.encode(), sym=sym.encode(),
                                         fn_name=RETURN_PROBE.encode(), pid=-1)  # fmt: skip
                except Exception as e:  # bcc raises bare Exception when attaching fails
                    msg = f"{lib}: unsupported: attach {sym} ({e})"
                    self.problems.append(msg)
                    self.writer.note({"type": "unsupported", "what": msg})
                    continue
                self.attached.append({"library": lib, "symbol": sym})
            try:
                bpf.attach_uprobe(name=lib.encode(), sym=FREE_PROBE[0].encode(),
                                  fn_name=FREE_PROBE[1].encode(), pid=-1)  # fmt: skip
            except Exception as e:  # without it a reused SSL address joins two connections
                msg = f"{lib}: attach {FREE_PROBE[0]} failed ({e})"
                self.problems.append(msg)
                self.writer.note({"type": "unsupported", "what": msg})
            sym, entry, ret = HANDSHAKE_PROBE
            try:
                bpf.attach_uprobe(name=lib.encode(), sym=sym.encode(), fn_name=entry.encode(),
                                  pid=-1)  # fmt: skip
                bpf.attach_uretprobe(name=lib.encode(), sym=sym.encode(), fn_name=ret.encode(),
                                     pid=-1)  # fmt: skip
            except Exception as e:  # without it a read served from the handshake's buffer
                msg = f"{lib}: attach {sym} failed ({e})"  # may lack its address
                self.problems.append(msg)
                self.writer.note({"type": "unsupported", "what": msg})

    def _attach_go(self, rings: RingSet) -> None:
        """One program per distinct Go layout; uprobes at Write, Read and Read's RETs."""
        by_layout: dict[tuple[tuple[str, int], ...], Any] = {}
        for g in self.go:
            key = tuple(sorted(g.defines.items()))
            bpf = by_layout.get(key)
            if bpf is None:
                bpf = compile_program(GO_PROGRAM, {**g.defines, **self.defines})
                by_layout[key] = bpf
                self.go_programs.append(bpf)
                for t in self.tgids:
                    bpf["targets"][ctypes.c_uint32(t)] = ctypes.c_uint8(1)
                for p in self.ports:
                    bpf["ports"][ctypes.c_uint16(p)] = ctypes.c_uint8(1)
                self._drain(rings, bpf)
            # Read's entry only when its RETs cannot find the buffer themselves
            entry = [] if g.read_args_spilled else [(g.read, "probe_go_read")]
            points = [(g.write, "probe_go_write"), *entry] + [
                (a, "probe_go_read_ret") for a in g.read_rets]
            for addr, fn in points:
                try:
                    bpf.attach_uprobe(name=g.path.encode(), addr=addr, fn_name=fn.encode(),
                                      pid=-1)  # fmt: skip
                except Exception as e:  # bcc raises bare Exception when attaching fails
                    msg = f"{g.path}: unsupported: attach {fn} at {addr:#x} ({e})"
                    self.problems.append(msg)
                    self.writer.note({"type": "unsupported", "what": msg})
                    continue
                self.attached.append({"binary": g.path, "probe": fn, "address": addr})

    def run(self, deadline_s: float) -> dict[str, Any]:
        stop = stop_flag()
        rings = RingSet()
        # The OpenSSL program only with a libssl to probe: its socket and syscall
        # tracepoints (how an SSL call finds its socket) fire on every process's I/O, and
        # Go's probes read their addresses from the *tls.Conn
        bpf = compile_program(PROGRAM, self.defines) if self.libraries else None
        try:
            if bpf is not None:
                for t in self.tgids:
                    bpf["targets"][ctypes.c_uint32(t)] = ctypes.c_uint8(1)
                for p in self.ports:
                    bpf["ports"][ctypes.c_uint16(p)] = ctypes.c_uint8(1)
                self._drain(rings, bpf)
            t0 = time.monotonic()
            if bpf is not None:
                self._attach(bpf)
            self._attach_go(rings)
            if (self.libraries or self.go) and not self.attached:
                raise CollectorError(f"no OpenSSL probe attached: {self.problems[-1]}")
            attach_s = time.monotonic() - t0
            record_until_stopped(self.writer, rings, self.attached, deadline_s, stop,
                                 lambda: self._resolve_pending(bpf), SOCKDIAG_POLL_MS)  # fmt: skip
            rings.consume()
            self._resolve_pending(bpf)
            stats = self._stats(bpf, attach_s)
            stats["stopped_by"] = stopped_by(stop)
            self.writer.note({"type": "stats", **stats})
            return stats
        finally:
            self.writer.close()
            rings.close()
            if bpf is not None:
                bpf.cleanup()
            for gp in self.go_programs:
                gp.cleanup()

    def _stats(self, bpf: Any, attach_s: float) -> dict[str, Any]:
        d = self.hdr.defines
        t = [0] * d["PB_TSTAT_MAX"]
        for prog in ([bpf] if bpf is not None else []) + self.go_programs:
            t = [a + b for a, b in zip(t, percpu_totals(prog["stats"], d["PB_TSTAT_MAX"]),
                                       strict=True)]  # fmt: skip
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            # the C drain's losses too (a record over its headroom): counted, never silent
            "lost_events": t[d["PB_STAT_DROPPED"]] + sum(b.dropped for b in self.batches),
            "data_events": t[d["PB_TSTAT_EVENTS"]],
            "calls": t[d["PB_TSTAT_CALLS"]],
            "truncated_calls": t[d["PB_TSTAT_TRUNCATED"]],
            "addr_from_syscall": t[d["PB_TSTAT_ADDR_SYSCALL"]],
            "addr_from_ssl": t[d["PB_TSTAT_ADDR_SSL"]],
            "addr_unknown": t[d["PB_TSTAT_ADDR_NONE"]],
            "addr_mismatch": t[d["PB_TSTAT_ADDR_MISMATCH"]],
            "nested_calls": t[d["PB_TSTAT_NESTED"]],
            "reads_unseen": t[d["PB_TSTAT_READ_UNSEEN"]],
            "sockdiag_found": self.sockdiag_found,
            "sockdiag_missed": self.sockdiag_missed,
            "records_written": self.writer.records,
            "bytes_written": self.writer.bytes,
            "drain_batches": sum(b.batches for b in self.batches),
            "libraries": self.libraries,
            "attached_probes": len(self.attached) + sum(
                1 for a in self.attached if "symbol" in a) + len(self.libraries),
            "go_binaries": [g.path for g in self.go],
            "unsupported": list(self.problems),
            "attach_s": round(attach_s, 3),
            "sock_hook": self.sock_hook,
            "cpu_user_s": ru.ru_utime,
            "cpu_system_s": ru.ru_stime,
        }


def main(argv: list[str] | None = None) -> int:
    ap = recorder_parser("probebench-tls-record", __doc__)
    ap.add_argument("--library", type=Path, action="append", default=[],
                    help="a libssl to probe besides those the processes map")  # fmt: skip
    ap.add_argument("--ringbuf-pages", type=int, default=DEFAULT_RINGBUF_PAGES)
    ap.add_argument("--binary", type=Path, action="append", default=[],
                    help="a Go binary whose crypto/tls to probe")  # fmt: skip
    a = ap.parse_args(argv)
    try:
        rec = Recorder(a.out, a.tgid, a.port, a.library, a.ringbuf_pages, a.binary)
        stats = rec.run(a.deadline)
    except (ProbebenchError, CollectorError) as e:
        print(f"tls collector: {e}", file=sys.stderr)
        return 2
    for p in stats["unsupported"]:
        print(f"tls collector: {p}", file=sys.stderr)
    write_stats(a.stats, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
