"""The recorders' shared loop (harness/collectors/cli.py): what it does per wake-up, and
where a stop signal lands. No BPF here: the loop only sees objects with poll/note/flush."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from harness.collectors import cli


class _Rings:
    def __init__(self, stop: dict[str, int], after: int) -> None:
        self.waits: list[int] = []
        self.stop, self.after = stop, after

    def poll(self, timeout_ms: int) -> None:
        self.waits.append(timeout_ms)
        if len(self.waits) == self.after:
            self.stop["signal"] = signal.SIGTERM


class _Writer:
    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.flushes = 0

    def note(self, obj: dict[str, Any]) -> None:
        self.notes.append(obj)

    def flush(self) -> None:
        self.flushes += 1


def test_loop_polls_on_the_timer_and_counts_its_polls(capsys: Any) -> None:
    stop = {"signal": 0}
    rings, writer, ticks = _Rings(stop, 3), _Writer(), []
    polls = cli.record_until_stopped(writer, rings, [], 60.0, stop, lambda: ticks.append(1))
    assert polls == 3 and rings.waits == [cli.TIMER_POLL_MS] * 3
    assert len(ticks) == 3 and writer.flushes == 3
    assert writer.notes[0]["type"] == "attached"
    assert capsys.readouterr().out.startswith("ATTACHED ")
    stop["signal"] = 0
    rings = _Rings(stop, 1)
    assert cli.record_until_stopped(writer, rings, [], 60.0, stop, poll_ms=7) == 1
    assert rings.waits == [7]


def _status(field: str, tid: int) -> str:
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1]
    raise AssertionError(f"no {field} in the status of thread {tid}")


def test_helper_thread_is_named_and_leaves_stop_signals_to_the_main_thread() -> None:
    seen: dict[str, Any] = {}

    def helper() -> None:
        cli.name_thread("pb-test-helper-long-name")
        cli.block_stop_signals()
        tid = threading.get_native_id()
        seen["comm"] = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        seen["blocked"] = int(_status("SigBlk", tid), 16)

    t = threading.Thread(target=helper)
    t.start()
    t.join()
    assert seen["comm"] == "pb-test-helper-"  # comm holds 15 bytes
    for s in (signal.SIGTERM, signal.SIGINT):
        assert seen["blocked"] & (1 << (s - 1)), f"{s.name} not blocked in the helper"
    # the calling (main) thread is untouched
    assert not int(_status("SigBlk", threading.get_native_id()), 16) & (1 << (signal.SIGTERM - 1))
