"""Collector processes as the runner sees them: start, wait until attached, stop, read stats."""

from __future__ import annotations

import json
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.collectors import registry
from harness.collectors.base import CollectorOptions
from harness.errors import CollectorError, TargetError
from harness.model import waited
from harness.runner.lifecycle import Child, ProcessSet, read_line_until

# bcc compiles one program per grpc-go binary: ~10 s each at load 18 on 2 cores
ATTACH_TIMEOUT_S = 120.0


@dataclass
class RunningCollector:
    name: str
    child: Child
    events: Path
    stats_path: Path
    attach_ns: int = 0

    def stats(self) -> dict[str, Any]:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}


def start_collector(
    procs: ProcessSet,
    name: str,
    events_dir: Path,
    *,
    tgids: list[int],
    ports: list[int],
    options: CollectorOptions,
    deadline_s: float,
    binaries: list[Path] | None = None,
    follow: int | None = None,
) -> RunningCollector:
    return start_collectors(procs, [name], events_dir, tgids=tgids, ports=ports,
                            options=options, deadline_s=deadline_s, binaries=binaries,
                            follow=follow)[0]  # fmt: skip


def start_collectors(
    procs: ProcessSet,
    names: list[str],
    events_dir: Path,
    *,
    tgids: list[int],
    ports: list[int],
    options: CollectorOptions,
    deadline_s: float,
    binaries: list[Path] | None = None,
    follow: int | None = None,
) -> list[RunningCollector]:
    """Start collectors side by side: each compiles and attaches its own bcc program in its
    own process (seconds of clang each), so all are launched before any is waited for.
    Returns once every one has attached; the first that fails is the error (the others are
    stopped with the process set)."""
    events_dir.mkdir(parents=True, exist_ok=True)
    running = []
    for name in names:
        events = events_dir / f"{name}.bin"
        stats_path = events_dir / f"{name}.stats.json"
        coll = registry.get(name)
        args = [sys.executable, "-m", coll.record_module, "--out", str(events),
                "--stats", str(stats_path), "--deadline", str(deadline_s)]  # fmt: skip
        for t in tgids:
            args += ["--tgid", str(t)]
        for p in ports:
            args += ["--port", str(p)]
        args += coll.recorder_args(options, binaries or [], follow)
        errlog = (events_dir / f"{name}.log").open("w")
        child = procs.spawn(
            f"{name} collector", args, stop_signal=signal.SIGTERM, stop_timeout=60, stderr=errlog
        )
        errlog.close()
        running.append(RunningCollector(name, child, events, stats_path))
    for rc in running:
        _wait_attached(rc)
    return running


def _wait_attached(rc: RunningCollector) -> None:
    """Wait for the collector's ``ATTACHED <ns>`` line and note the time it gives."""
    try:
        line = read_line_until(
            rc.child, lambda s: s.startswith("ATTACHED "), waited(ATTACH_TIMEOUT_S),
            "its probes attached"
        )
    except TargetError as e:
        log_path = rc.events.parent / f"{rc.name}.log"
        said = last_words(log_path.read_text())
        raise CollectorError(
            f"the {rc.name} collector failed to attach: {e}"
            + (f"; its log ({log_path.name}) ends: {said}" if said else "")
        ) from e
    rc.attach_ns = int(line.split()[1])


# what clang prints while it compiles a program fine: never why a collector failed
_COMPILER_NOISE = re.compile(
    r"warning: |\d+ warnings? generated|In file included from |\s|\^|#"
    r"|\S+:\d+:\d+: (warning|note): "
)


def last_words(log: str) -> str:
    """A collector log's last line that says something: not bcc's compiler warnings (an
    attach that timed out mid-compile used to be reported as 'loop not unrolled')."""
    for line in reversed(log.strip().splitlines()):
        if line and not _COMPILER_NOISE.match(line):
            return line
    return ""


def stop_collector(procs: ProcessSet, rc: RunningCollector) -> dict[str, Any]:
    """SIGTERM: the collector drains its buffer, writes stats, detaches."""
    return stop_collectors(procs, [rc])[0]


def stop_collectors(procs: ProcessSet, running: list[RunningCollector]) -> list[dict[str, Any]]:
    """Stop several collectors at once (detaching probes takes the kernel a grace period
    each: seconds for a collector's dozens), then read each one's stats, in order."""
    codes = procs.stop_all([rc.child for rc in running])
    out = []
    for rc, code in zip(running, codes, strict=True):
        stats = rc.stats()
        stats["exit_code"] = code
        if code != 0:
            said = last_words((rc.events.parent / f"{rc.name}.log").read_text())
            stats["error"] = said or f"exit code {code}"
        elif stats.get("stopped_by") == "deadline":
            # it stopped itself before it was stopped: what came after went unrecorded (in a
            # slow guest a kprobe collector once ended before the TLS one beside it attached)
            stats["error"] = ("it reached its --deadline and stopped before the run "
                              "ended: its recording is cut short")
        out.append(stats)
    return out
