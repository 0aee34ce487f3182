"""What `observe`'s exec gate costs a command that execs a lot (DESIGN: overhead).

    .venv/bin/pytest benchmarks/bench_exec_gate.py --benchmark-only -s

A shell runs /bin/true EXECS times in a loop, once alone and once followed by the
uprobe collector's exec gate (`--follow`): every exec stops until the collector has
looked at it (the binary is known after the first). Timed: from releasing the held
shell to its exit; the collector's start is in the untimed setup. `extra_info` has
the added cost per exec and the collector's own hold times.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from harness.runner.collectors import (
    CollectorOptions,
    RunningCollector,
    start_collector,
    stop_collector,
)
from harness.runner.lifecycle import ProcessSet

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

EXECS = 300
ROUNDS = 5
LOOP = f"read -r _; i=0; while [ $i -lt {EXECS} ]; do /bin/true; i=$((i+1)); done"


@pytest.mark.parametrize("gate", [False, True], ids=["alone", "gated"])
def test_exec_loop(benchmark: BenchmarkFixture, tmp_path: Path, gate: bool) -> None:
    holds: list[dict[str, Any]] = []
    with ProcessSet() as procs:
        current: list[RunningCollector] = []

        def stop_current() -> None:
            for rc in current:
                holds.append(stop_collector(procs, rc).get("gate") or {})
            current.clear()

        def setup() -> tuple[tuple[subprocess.Popen[str]], dict[str, Any]]:
            stop_current()
            sh = procs.spawn("loop", ["/bin/sh", "-c", LOOP], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            if gate:
                events = tmp_path / f"round{len(holds)}"
                rc = start_collector(
                    procs, "uprobe", events, tgids=[], ports=[], options=CollectorOptions(),
                    deadline_s=600, follow=sh.pid,
                )  # fmt: skip
                current.append(rc)
            return (sh.proc,), {}

        def release_and_wait(sh: subprocess.Popen[str]) -> None:
            assert sh.stdin is not None
            sh.stdin.write("go\n")
            sh.stdin.close()
            assert sh.wait(timeout=300) == 0

        benchmark.pedantic(release_and_wait, setup=setup, rounds=ROUNDS, iterations=1)
        stop_current()
    mean_s = benchmark.stats.stats.mean
    benchmark.extra_info["execs_per_round"] = EXECS
    benchmark.extra_info["us_per_exec"] = round(mean_s / EXECS * 1e6, 1)
    if gate:
        benchmark.extra_info["gate"] = holds
        assert all(h.get("held") == EXECS and h.get("lost") == 0 for h in holds), json.dumps(holds)
