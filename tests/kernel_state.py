"""What the kernel and /proc hold of a run, for the teardown tests: BPF programs,
uprobe events, processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness import procfs


def loaded_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("bpftool is not installed (scripts/setup installs it)")
    return {p["id"] for p in json.loads(out.stdout or "[]")}


def prog_ids_held_by(pids: set[int]) -> set[int]:
    """BPF programs the processes hold open (a program lives while an fd holds it)."""
    ids = set()
    for pid in pids:
        try:
            for f in Path(f"/proc/{pid}/fdinfo").iterdir():
                for line in f.read_text().splitlines():
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def descendants(root: int) -> set[int]:
    """root and every process below it, zombies included."""
    return {root} | procfs.descendants(root, live_only=False)


def our_uprobe_events() -> list[str]:
    path = Path("/sys/kernel/tracing/uprobe_events")
    return [ln for ln in path.read_text().splitlines() if "probebench" in ln or "grpc" in ln]
