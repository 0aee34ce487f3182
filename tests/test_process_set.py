"""ProcessSet: children stopped together are all signalled before any is waited for."""

from __future__ import annotations

import signal
from pathlib import Path

from harness.runner.lifecycle import ProcessSet


def _child(mark: Path, name: str, wait_for: str | None) -> list[str]:
    """A shell that, on SIGTERM, writes its name to ``mark`` and exits 0, first waiting
    (as a collector waits on its detach) until ``wait_for`` is in the file too."""
    wait = f'until grep -q {wait_for} "$M"; do sleep 0.05; done; ' if wait_for else ""
    script = (f'trap \'echo {name} >> "$M"; {wait}exit 0\' TERM; echo up; '
              'while :; do sleep 0.05; done')  # fmt: skip
    return ["sh", "-c", script.replace("$M", str(mark))]


def test_stop_all_signals_every_child_before_waiting(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    mark.touch()
    with ProcessSet() as procs:
        # a exits only once b got its signal: stopped one after the other, a would wait for
        # b until its stop timeout and be killed
        a = procs.spawn("a", _child(mark, "a", "b"), stop_timeout=20)
        b = procs.spawn("b", _child(mark, "b", None), stop_timeout=20)
        for c in (a, b):
            assert c.proc.stdout is not None and c.proc.stdout.readline().strip() == "up"
        assert procs.stop_all([a, b]) == [0, 0]
        assert procs.stop(a) == 0  # stopping again only reads the code
    assert sorted(mark.read_text().split()) == ["a", "b"]


def test_stop_all_reaps_a_child_that_already_exited(tmp_path: Path) -> None:
    with ProcessSet() as procs:
        gone = procs.spawn("gone", ["sh", "-c", "exit 3"])
        gone.proc.wait()
        live = procs.spawn("live", ["sleep", "30"], stop_signal=signal.SIGTERM)
        assert procs.stop_all([gone, live]) == [3, -signal.SIGTERM]
        assert gone.stopped and live.stopped
