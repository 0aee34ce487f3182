"""The kernel-side collector's event layout, read from bpf/kprobe_events.h, and its limits."""

from __future__ import annotations

from functools import cache

from harness.collectors.bpfsource import BPF_DIR
from harness.collectors.cstruct import Header
from harness.errors import ProbebenchError

HEADER_FILE = BPF_DIR / "kprobe_events.h"
# event file format version (header "format"); recordings from before it was written have
# none and are this same format
FORMAT = "kprobe-syscalls/1"
MAX_CHUNK = 16384  # payload bytes per data event
MAX_CHUNKS = 16  # events per syscall, the program's loop bound


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


@cache
def roles() -> dict[int, str]:
    """PB_ROLE_* of bpf/pb_common.h: 0 unknown, 1 client, 2 server."""
    return header().enum("PB_ROLE_")


@cache
def protos() -> dict[int, str | None]:
    """PB_PROTO_* of the event header by value; None for unknown (not inferred)."""
    return {v: (None if n == "unknown" else n) for v, n in header().enum("PB_PROTO_").items()}
