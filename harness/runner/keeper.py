"""The keeper of an `observe` command: holds it until released, runs it, cleans up after it.

`python -m harness.runner.keeper --report FILE -- CMD [ARGS...]`

- waits for a line on stdin before starting CMD, so the runner can attach every
  collector (and the exec gate, which follows the keeper's tree) first; EOF
  without a line means the runner is gone, and CMD never starts;
- is a child subreaper: whatever CMD leaves behind (`server &`, a daemon that
  double-forks and calls setsid) becomes the keeper's child, not init's;
- when CMD exits, stops all of it, stopped processes included, and reaps it;
- on SIGTERM/SIGINT/SIGHUP, including the SIGTERM it gets when the runner dies
  (even by SIGKILL: PR_SET_PDEATHSIG), does the same with CMD still running;
- writes {"released", "pid", "exit_code", "stopped", "signal"} to FILE (stopped:
  how many processes it had to stop) and exits with CMD's code.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.procfs import descendants

GRACE_S = 5.0  # SIGTERM, then this long, then SIGKILL
_PR_SET_CHILD_SUBREAPER = 36


def _reap() -> None:
    """Collect every child that has exited (orphans of the command land here)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _signal_all(pids: set[int], *sigs: int) -> None:
    for pid in pids:
        for sig in sigs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def end_descendants() -> int:
    """Stop and reap everything below the keeper; returns how many there were."""
    me = os.getpid()
    left = descendants(me)
    if left:
        # SIGCONT after SIGTERM: a stopped process acts on SIGTERM only once continued
        _signal_all(left, signal.SIGTERM, signal.SIGCONT)
        deadline = time.monotonic() + GRACE_S
        while descendants(me) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.05)
        _signal_all(descendants(me), signal.SIGKILL)
        deadline = time.monotonic() + GRACE_S
        while descendants(me) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.01)
    _reap()
    return len(left)


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="probebench-keeper", description=__doc__)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        ap.error("no command")
    report: dict[str, object] = {
        "released": False, "pid": None, "exit_code": None, "stopped": 0, "signal": None,
    }  # fmt: skip
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _raise_stop)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child: subprocess.Popen[bytes] | None = None
    try:
        if not sys.stdin.readline():
            return 1  # the runner is gone: CMD must not run unobserved
        report["released"] = True
        try:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        except OSError as e:
            print(f"probebench: cannot start {command[0]}: {e.strerror}", file=sys.stderr)
            report["exit_code"] = 127
            return 127
        report["pid"] = child.pid
        report["exit_code"] = code = child.wait()
        report["stopped"] = end_descendants()
        return code if code >= 0 else 128 - code
    except _Stop as stop:
        report["signal"] = signal.Signals(stop.signum).name
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # finish the cleanup, whatever comes
        if child is not None:
            report["exit_code"] = child.poll()  # before end_descendants reaps it
            report["stopped"] = end_descendants()
        return 128 + stop.signum
    finally:
        a.report.write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
    sys.exit(main())
