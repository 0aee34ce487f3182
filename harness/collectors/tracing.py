"""What this kernel's tracing offers the collectors: tracefs, and whether it has kprobes."""

from __future__ import annotations

from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")


def kprobes_supported(tracefs: Path = TRACEFS, pmu: Path = KPROBE_PMU) -> bool:
    """The kernel was built with kprobes (CONFIG_KPROBES): their PMU or tracefs file."""
    return pmu.exists() or (tracefs / "kprobe_events").exists()
