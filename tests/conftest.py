"""Markers that need the machine: `bpf` (root, tracepoints, bcc) and `capture` (dumpcap on lo).

Locally a machine without them skips those tests, saying why. With CI set they
must run: a missing capability is a failure that shows `probebench doctor`.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.doctor import missing_for
from harness.model import TRACEBACK_NOW_ENV

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _doctor() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "doctor"], capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout + out.stderr


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kprobes") is not None:
        from harness.collectors.kprobe.hooks import hook_modes

        # a kernel property, not a setup fault: this host's kernel has none, by design
        if why := hook_modes()["kprobes"]:
            pytest.skip(f"kprobes: {why}")
    for marker in ("bpf", "capture"):
        if item.get_closest_marker(marker) is None:
            continue
        why = missing_for(marker)
        if why is None:
            continue
        if os.environ.get("CI"):
            pytest.fail(f"{marker} test cannot run in CI: {why}\n{_doctor()}", pytrace=False)
        pytest.skip(f"{marker}: {why}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and os.environ.get(TRACEBACK_NOW_ENV):
        sys.stdout.write(f"\n--- {report.nodeid} ({report.when}) failed:\n"
                         f"{report.longreprtext}\n---\n")  # fmt: skip
        sys.stdout.flush()
