"""The exec gate: each exec in a followed process tree waits, stopped, until released.

`probebench observe` cannot know which binaries a user's command will start. The
gate (bpf/exec_gate.c) follows the command's process tree from the kernel and
stops every exec in it before the new image runs; the uprobe collector then
looks at the binary, probes it if it links grpc-go, and lets the process go. A
service started by a script is thus probed from its first instruction, not
seconds late. A hold on a binary already seen lasts one ring buffer wake-up.

Nothing is left stopped: execs that cannot be reported are not held (counted as
lost), and closing detaches the tracepoints before releasing every process still
held. Should this collector be killed outright, `observe`'s keeper
(harness/runner/keeper.py) still continues and stops what it held, by the
`--duration` at the latest.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from harness.collectors.bpfsource import BPF_DIR, compile_program, percpu_totals
from harness.collectors.cstruct import Header
from harness.collectors.rings import RingSet

PROGRAM = "exec_gate.c"
TRACEPOINTS = (b"sched:sched_process_exec", b"sched:sched_process_fork")


@cache
def gate_header() -> Header:
    return Header(BPF_DIR / "exec_gate.h")


@dataclass(frozen=True)
class Exec:
    tgid: int
    ts_ns: int  # CLOCK_MONOTONIC of the exec
    held: bool


class ExecGate:
    def __init__(self, root: int, *, ringbuf_pages: int = 16) -> None:
        self.hdr = gate_header()
        self._ev = self.hdr.structs["pb_exec_event"]
        self.bpf: Any = compile_program(PROGRAM, {"PB_GATE_RINGBUF_PAGES": ringbuf_pages})
        self.bpf["tree"][ctypes.c_uint32(root)] = ctypes.c_uint8(1)
        self.root = root
        self._pending: list[Exec] = []
        self._held: dict[int, int] = {}  # tgid -> exec time, for those not yet released
        self.gone = 0  # exited (killed?) while held
        self.released_at_close = 0
        self._closed = False

    def open(self, rings: RingSet) -> None:
        rings.add(self.bpf["execs"], self._on_event)

    def _on_event(self, data: int, size: int) -> None:
        ev = self._ev.from_buffer_copy(ctypes.string_at(data, size))
        ex = Exec(int(ev.tgid), int(ev.ts_ns), bool(ev.held))
        if ex.held:
            self._held[ex.tgid] = ex.ts_ns
        self._pending.append(ex)

    def take(self) -> list[Exec]:
        """The execs reported since the last call, oldest first."""
        out, self._pending = self._pending, []
        return out

    def release(self, tgid: int) -> int | None:
        """Let a held process go; returns how long it was held (None: not held, or gone)."""
        ts = self._held.pop(tgid, None)
        if ts is None:
            return None
        try:
            os.kill(tgid, signal.SIGCONT)
        except ProcessLookupError:
            self.gone += 1
            return None
        return time.monotonic_ns() - ts

    def close(self, rings: RingSet) -> None:
        """Stop holding, hear the execs already reported, and let every held process go.
        Once only: a second call (a `finally` after the normal path) does nothing."""
        if self._closed:
            return
        self._closed = True
        for tp in TRACEPOINTS:
            # bcc raises bare Exception; cleanup() retries what is left
            with contextlib.suppress(Exception):
                self.bpf.detach_tracepoint(tp)
        try:
            rings.consume()
        finally:
            self.released_at_close = len(self._held)
            for tgid in list(self._held):
                self.release(tgid)

    def stats(self) -> dict[str, Any]:
        d = self.hdr.defines
        totals = percpu_totals(self.bpf["gstats"], d["PB_GSTAT_MAX"])

        def total(name: str) -> int:
            return totals[d[name]]

        return {
            "root_pid": self.root,
            "execs": total("PB_GSTAT_EXECS"),
            "held": total("PB_GSTAT_HELD"),
            "lost": total("PB_GSTAT_LOST"),
            "signal_failed": total("PB_GSTAT_SIGNAL_FAILED"),
            "tree_full": total("PB_GSTAT_TREE_FULL"),
            "gone_while_held": self.gone,
            "released_at_close": self.released_at_close,
        }

    def cleanup(self) -> None:
        self.bpf.cleanup()
