"""The uprobe collector's event layout, read from bpf/uprobe_events.h."""

from __future__ import annotations

import ctypes
import struct
from functools import cache

from harness.collectors.bpfsource import BPF_DIR
from harness.collectors.cstruct import Header
from harness.errors import ProbebenchError

HEADER_FILE = BPF_DIR / "uprobe_events.h"
PROGRAM = "uprobe_grpc.c"
# event file format version (header "format"); /3 added RST_STREAM, /4 packs each header
# field's lengths with its bytes (struct pb_hfield) instead of a fixed per-event table, /5
# names read-only strings by address once sent (pb_hfield.how)
FORMAT = "uprobe-grpc/5"
# what replay reads: /2 and /3 have the same data and reset records, and header records
# with the per-field table (decode converts them); /4 a pb_hfield without `how`
READABLE_FORMATS = frozenset({"uprobe-grpc/2", "uprobe-grpc/3", "uprobe-grpc/4", FORMAT})
HFIELD_V4 = struct.Struct("=4I")  # pb_hfield of uprobe-grpc/2 to /4
DEFAULT_RINGBUF_PAGES = 4096  # 16 MiB: a header event holds up to PB_HDR_BLOB + 96 bytes
DATA_PROBES = frozenset({"write_data", "client_data", "server_data"})
MAX_VALUE_MAX = 1 << 20
PROBE_NAMES = {
    1: "write_header",
    2: "client_headers",
    3: "server_headers",
    4: "write_data",
    5: "client_data",
    6: "server_data",
    7: "write_rst",
    8: "client_rst",
    9: "server_rst",
}


@cache
def header() -> Header:
    return Header(HEADER_FILE)


@cache
def roles() -> dict[int, str]:
    """PB_ROLE_* of bpf/pb_common.h: 0 unknown, 1 client, 2 server."""
    return header().enum("PB_ROLE_")


@cache
def hfield_struct() -> struct.Struct:
    """struct pb_hfield (the lengths before each field's bytes in a header event's blob) as
    a struct.Struct: replay unpacks one per field, much cheaper than a ctypes object."""
    hf = header().structs["pb_hfield"]
    types = {f[1] for f in hf._fields_}
    if types != {ctypes.c_uint32}:
        raise ProbebenchError(f"struct pb_hfield is not all u32: {sorted(map(str, types))}")
    return struct.Struct("=" + "I" * len(hf._fields_))


def sizing_defines(value_max: int) -> dict[str, int]:
    """-D flags for a header value cap: the blob must be a power of two that holds a whole
    name and value, so one field always fits in an empty part."""
    if not 1 <= value_max <= MAX_VALUE_MAX:
        raise ProbebenchError(f"the header value cap must be 1..{MAX_VALUE_MAX} bytes")
    # + 16: a field's name and value may each come with its 8-byte address (pb_hfield)
    need = value_max + header().defines["PB_NAME_MAX"] + hfield_struct().size + 16
    blob = max(header().defines["PB_HDR_BLOB"], 1 << (need - 1).bit_length())
    return {"PB_VALUE_MAX": value_max, "PB_HDR_BLOB": blob}
