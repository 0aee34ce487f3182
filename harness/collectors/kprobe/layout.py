"""The kernel-side collector's event layout, read from bpf/kprobe_events.h, and its limits."""

from __future__ import annotations

from functools import cache

from harness.collectors.bpfsource import BPF_DIR
from harness.collectors.cstruct import Header
from harness.errors import ProbebenchError

HEADER_FILE = BPF_DIR / "kprobe_events.h"
MAX_CHUNK = 16384  # payload bytes per data event
MAX_CHUNKS = 16  # events per syscall, the program's loop bound
# 64 KiB per call covers Go's 32 KiB reads whole, so chunked framing stays in view.
DEFAULT_MAX_CAPTURE = 65536
# gRPC message-body bytes captured per frame-aware HTTP/2 call: none. No field needs them
# (messages are counted by their 5-byte prefixes, which are always kept), and they were
# most of the collector's cost on gRPC (1 MiB messages written to the event file).
DEFAULT_H2_BODY_LIMIT = 0
# 64 MiB: a Go client moving 256 KiB bodies outruns a Python consumer for a moment
DEFAULT_RINGBUF_PAGES = 16384


def chunk_for(max_capture: int) -> int:
    """Event payload size for a per-call capture limit; validates the limit."""
    if max_capture <= MAX_CHUNK:
        if max_capture < 64 or max_capture & (max_capture - 1):
            raise ProbebenchError("--max-capture below 16384 must be a power of two >= 64")
        return max_capture
    if max_capture % MAX_CHUNK or max_capture > MAX_CHUNK * MAX_CHUNKS:
        raise ProbebenchError(
            f"--max-capture above {MAX_CHUNK} must be a multiple of it, at most "
            f"{MAX_CHUNK * MAX_CHUNKS}"
        )
    return MAX_CHUNK


@cache
def header(chunk: int = MAX_CHUNK) -> Header:
    return Header(HEADER_FILE, {"PB_CHUNK": chunk})
