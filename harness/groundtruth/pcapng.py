"""Where a pcapng file's packets lie, so tshark can be given the capture one part at a time.

A part is the file's header blocks followed by a run of its packet blocks, sent to
``tshark -r -``: valid pcapng, read without a copy of the file. Only the simple layout
dumpcap writes is walked (section and interface blocks first, then packets, name
resolution and statistics blocks); anything else answers None and the capture is decoded
whole.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

_SHB = 0x0A0D0D0A
_IDB = 1
_PACKET_BLOCKS = frozenset({2, 3, 6})  # obsolete packet, simple packet, enhanced packet
_SKIPPED_BLOCKS = frozenset({4, 5})  # name resolution, interface statistics: not frames
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_CHUNK = 1 << 22


@dataclass(frozen=True, slots=True)
class Layout:
    """``header_end``: bytes of the blocks before the first packet; ``offsets[n]``: where
    frame n begins (1-based, as tshark numbers them) for each n asked for; ``packets``:
    frames in the file; ``size``: bytes in the file (a block cut short at its end included)."""

    header_end: int
    offsets: dict[int, int]
    packets: int
    size: int


def layout(pcap: Path, every: int, before: int = 0) -> Layout | None:
    """Walk the blocks of ``pcap``, noting where frames 1, 1 + ``every``, 1 + 2 * ``every``...
    begin, and the frames ``before`` packets ahead of each of those. None: not pcapng, or a
    layout not walked (a second section, an interface block after a packet, an unknown
    block)."""
    try:
        f = open(pcap, "rb")  # noqa: SIM115
    except OSError:
        return None  # tshark's pass says what is wrong with it
    with f:
        # read, not mapped: a mapping of the whole file would count in this process's
        # resident set as it is walked (1.5 GB for a 2 M-exchange soak)
        head = f.read(12)
        size = f.seek(0, 2)
        if len(head) < 12 or struct.unpack_from("<I", head, 0)[0] != _SHB:
            return None
        magic = struct.unpack_from("<I", head, 8)[0]
        if magic == _BYTE_ORDER_MAGIC:
            fmt = "<II"
        elif magic == struct.unpack(">I", struct.pack("<I", _BYTE_ORDER_MAGIC))[0]:
            fmt = ">II"
        else:
            return None
        unpack = struct.Struct(fmt).unpack_from
        off, n, header_end = 0, 0, -1
        buf, base = b"", 0  # buf holds the file's bytes from offset base
        offsets: dict[int, int] = {}
        while off + 8 <= size:
            if off + 8 > base + len(buf):
                f.seek(off)
                buf, base = f.read(_CHUNK), off
            btype, blen = unpack(buf, off - base)
            if blen < 12 or blen % 4:
                return None
            if btype in _PACKET_BLOCKS:
                if header_end < 0:
                    header_end = off
                n += 1
                if (n - 1) % every == 0 or (n - 1 + before) % every == 0:
                    offsets[n] = off
            elif header_end >= 0:
                if btype not in _SKIPPED_BLOCKS:
                    return None  # the part's header would miss what this block says
            elif off and btype != _IDB:
                return None  # before the packets: only one section and its interfaces
            off += blen
    if header_end < 0:
        return None
    return Layout(header_end, offsets, n, size)
