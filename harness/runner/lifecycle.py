"""Clean teardown, shared by the runner and the collectors.

Whatever ends a run (normal exit, an exception, SIGINT, SIGTERM, the parent
dying), every child is stopped and reaped, and every collector process gets
the chance to detach its probes. Children run in their own process group, get
SIGTERM when their parent dies (PR_SET_PDEATHSIG), and are stopped in reverse
start order: clients before collectors before the capture.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

from harness.errors import ProbebenchError, TargetError
from harness.procfs import die_with_parent


class Interrupted(ProbebenchError):
    """SIGINT or SIGTERM arrived; raised so every `finally` and `with` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into Interrupted for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[Any]
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class ProcessSet:
    """Children started for one run; `close()` stops and reaps them all."""

    children: list[Child] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        args: list[str],
        *,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Child:
        try:
            proc = subprocess.Popen(
                args,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches us; we stop children in order
                preexec_fn=die_with_parent,
                text=True,
                bufsize=1,
            )
        except OSError as e:
            raise TargetError(f"cannot start {name} ({args[0]}): {e.strerror}") from e
        child = Child(name, proc, stop_signal, stop_timeout)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> int:
        """Signal, wait, then SIGKILL the child's process group; always reaps."""
        return self.stop_all([child])[0]

    def stop_all(self, children: list[Child]) -> list[int]:
        """Stop several children at once: all are signalled before any is waited for, so
        their shutdowns (a collector's drain and detach takes seconds) overlap. Returns
        their exit codes, in order."""
        signalled = []
        for child in children:
            if not child.stopped and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, child.stop_signal)
                signalled.append(child)
        for child in children:
            self._reap(child, child in signalled)
        return [c.proc.returncode for c in children]

    def _reap(self, child: Child, was_running: bool) -> None:
        """Wait for a signalled child (SIGKILL its group after its stop timeout), then close
        its pipes."""
        proc = child.proc
        if child.stopped:
            return
        child.stopped = True
        if was_running:
            try:
                proc.wait(timeout=child.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # The group may hold grandchildren that outlived the leader. Only now: a group
            # id of a child reaped long ago could have been reused by somebody else.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def close(self) -> None:
        for child in reversed(self.children):
            self.stop(child)
        self.children.clear()

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_line_until(
    child: Child, predicate: Callable[[str], bool], timeout: float, what: str
) -> str:
    """Read the child's stdout until a line satisfies predicate; TargetError on death or timeout."""
    assert child.proc.stdout is not None
    result: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert child.proc.stdout is not None
        for line in child.proc.stdout:
            if predicate(line.strip()):
                result.append(line.strip())
                break
        done.set()

    t = threading.Thread(target=reader, daemon=True, name=f"read-{child.name}")
    t.start()
    deadline = time.monotonic() + timeout
    while not done.wait(0.05):
        if time.monotonic() > deadline:
            raise TargetError(f"{child.name} did not report {what} within {timeout:.0f} s")
    if not result:
        code = child.proc.wait(timeout=5) if child.proc.poll() is None else child.proc.returncode
        last = ""
        if child.proc.stderr is not None:
            lines = child.proc.stderr.read().strip().splitlines()
            last = f": {lines[-1]}" if lines else ""
        raise TargetError(f"{child.name} exited (code {code}) before reporting {what}{last}")
    return result[0]
