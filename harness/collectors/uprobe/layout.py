"""The uprobe collector's event layout, read from bpf/uprobe_events.h."""

from __future__ import annotations

from functools import cache

from harness.collectors.bpfsource import BPF_DIR
from harness.collectors.cstruct import Header

HEADER_FILE = BPF_DIR / "uprobe_events.h"
PROGRAM = "uprobe_grpc.c"
FORMAT = "uprobe-grpc/1"  # event file format version (header "format")
DEFAULT_RINGBUF_PAGES = 4096  # 16 MiB: header events are up to 4.5 KiB each
PROBE_NAMES = {
    1: "write_header",
    2: "client_headers",
    3: "server_headers",
    4: "write_data",
    5: "client_data",
    6: "server_data",
}


@cache
def header() -> Header:
    return Header(HEADER_FILE)
