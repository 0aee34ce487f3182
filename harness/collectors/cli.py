"""The command line every collector process shares: the contract with the runner."""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


def recorder_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """--out, --tgid, --port, --ringbuf-pages, --deadline, --stats; collectors add their own."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--out", type=Path, required=True, help="event file to write")
    ap.add_argument("--tgid", type=int, action="append", default=[], help="trace only these")
    ap.add_argument("--port", type=int, action="append", default=[], help="server ports")
    ap.add_argument("--deadline", type=float, default=3600.0, help="stop after this many s")
    ap.add_argument("--stats", type=Path, help="also write the final stats here as JSON")
    return ap


def name_thread(name: str) -> None:
    """Give the calling thread its name in /proc (comm, 15 bytes), so the overhead bench can
    show each of a recorder's threads' CPU apart (Python's thread names stay inside it)."""
    pr_set_name = 15
    ctypes.CDLL(None).prctl(pr_set_name, name.encode()[:15], 0, 0, 0)


def write_stats(path: Path | None, stats: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(stats, indent=2) + "\n")


def stop_flag() -> dict[str, int]:
    """SIGTERM/SIGINT set ``flag["signal"]`` instead of killing the recorder, so its poll
    loop ends, drains the ring buffer, writes its stats and detaches every probe."""
    flag = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        flag["signal"] = signum

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    return flag


class _Writer(Protocol):
    def note(self, obj: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...


class _Rings(Protocol):
    def poll(self, timeout_ms: int) -> Any: ...


# The recorders' drain timer. Records go into the rings without waking anyone (rb_flags /
# pb_rb_flags in the programs); a ring is drained early once a CPU has queued a share of it
# (PB_WAKE_BYTES), so the timer only paces a quiet or slow ring, and a drained record
# only goes to a file. Each wake-up of a Python recorder costs about 100 µs of CPU on this
# 2-core box whatever it finds (interpreter, ctypes, scheduler): at 20 ms that was most of
# the kernel-side recorder's CPU at 2,000 exchanges/s (issue 10), at 200 ms it is 5/s.
TIMER_POLL_MS = 200


def block_stop_signals() -> None:
    """In a recorder's helper thread: leave SIGTERM/SIGINT to the main thread, so the kernel
    delivers them there and they cut its poll's wait short (a signal taken by another
    thread would wait for the poll timer)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def record_until_stopped(
    writer: _Writer, rings: _Rings, probes: list[Any], deadline_s: float,
    stop: dict[str, int], tick: Callable[[], None] = lambda: None,
    poll_ms: int = TIMER_POLL_MS,
) -> int:
    """The recorder's loop: note the attach in the event file and print ``ATTACHED <ns>`` (what
    the runner waits for), then poll the rings, run ``tick`` and flush the events until a
    signal or the deadline; returns the polls made. The caller drains and writes its stats
    after. ``tick`` runs on every wake-up: it must cost next to nothing when idle."""
    attach_ns = time.monotonic_ns()
    writer.note({"type": "attached", "ts_ns": attach_ns, "probes": probes})
    print(f"ATTACHED {attach_ns}", flush=True)
    end = time.monotonic() + deadline_s
    polls = 0
    while not stop["signal"] and time.monotonic() < end:
        rings.poll(poll_ms)
        polls += 1
        tick()
        writer.flush()
    return polls


def stopped_by(flag: dict[str, int]) -> str:
    """What ended the recording, for its stats: the signal's name, or the deadline."""
    return signal.Signals(flag["signal"]).name if flag["signal"] else "deadline"
