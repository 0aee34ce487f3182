"""`probebench run`: record one scenario run, replay it, print its summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.analysis.replay import replay
from harness.report.summary import summary_table
from harness.runner.record import RunSpec, record

Progress = Callable[[str], None]


def replay_and_summarize(run_dir: Path, progress: Progress) -> dict[str, Any]:
    """Replay a fresh recording and print its summary table (run and observe end so)."""
    progress("replaying: Wireshark decode, parsing, matching")
    metrics = replay(run_dir)
    print(summary_table(metrics))
    return metrics


def record_and_replay(spec: RunSpec, out: Path, progress: Progress) -> Path:
    run_dir = record(spec, out, progress)
    replay_and_summarize(run_dir, progress)
    return run_dir
