"""The kernel-side collector's event layout, read from bpf/kprobe_events.h."""

from __future__ import annotations

from functools import cache

from harness.collectors.bpfsource import BPF_DIR
from harness.collectors.cstruct import Header

HEADER_FILE = BPF_DIR / "kprobe_events.h"
DEFAULT_MAX_CAPTURE = 16384


@cache
def header(max_capture: int = DEFAULT_MAX_CAPTURE) -> Header:
    return Header(HEADER_FILE, {"PB_MAX_CAPTURE": max_capture})
