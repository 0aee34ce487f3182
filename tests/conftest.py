"""Markers that need the machine: `bpf` (root, tracepoints, bcc) and `capture` (dumpcap on lo).

Locally a machine without them skips those tests, saying why. With CI set they
must run: a missing capability is a failure that shows `probebench doctor`.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _missing(marker: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if marker == "capture":
        return None if shutil.which("dumpcap") else "dumpcap is not installed"
    if not Path("/sys/kernel/tracing/events/syscalls").is_dir():
        return "syscall tracepoints not available (tracefs not mounted?)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (run scripts/setup)"
    return None


@functools.cache
def _doctor() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "doctor"], capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout + out.stderr


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in ("bpf", "capture"):
        if item.get_closest_marker(marker) is None:
            continue
        why = _missing(marker)
        if why is None:
            continue
        if os.environ.get("CI"):
            pytest.fail(f"{marker} test cannot run in CI: {why}\n{_doctor()}", pytrace=False)
        pytest.skip(f"{marker}: {why}")
