"""Replay of the frame-aware capture: a call's pieces with gaps become length-true Segments."""

from __future__ import annotations

import struct

import pytest

from harness.collectors.kprobe.decode import call_segments
from harness.protocols.common import Segment
from harness.protocols.http2.frames import FrameParsed, FrameParser


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    head = struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid)
    return head + payload


def test_contiguous_pieces_make_one_segment() -> None:
    segs = call_segments(7, 10, [(0, b"abcd"), (4, b"efghij")])
    assert segs == [Segment(7, b"abcdefghij", 10)]


def test_gap_goes_to_the_piece_before_it_and_tail_to_the_last() -> None:
    segs = call_segments(7, 100, [(0, b"head"), (50, b"mid"), (60, b"x")])
    assert segs == [Segment(7, b"head", 50), Segment(7, b"mid", 10), Segment(7, b"x", 40)]
    assert sum(s.orig_len for s in segs) == 100


def test_unseen_start_still_moves_the_stream_by_its_length() -> None:
    segs = call_segments(1, 30, [(20, b"tail")])
    assert segs == [Segment(1, b"", 20), Segment(1, b"tail", 10)]


def test_overlapping_piece_is_dropped_not_merged() -> None:
    segs = call_segments(1, 10, [(0, b"abcdef"), (3, b"XYZ")])
    assert segs == [Segment(1, b"abcdef", 10)]


def test_frame_parser_stays_in_sync_across_skipped_data_bodies() -> None:
    """What the kernel emits for one call: every header kept, DATA bodies cut after 4 bytes."""
    body = bytes(range(256)) * 64  # 16 KiB per DATA frame
    wire = b"".join(frame(0, 0, 1, body) for _ in range(3)) + frame(1, 5, 1, b"\x88")
    parts, off = [], 0
    for _ in range(3):
        parts.append((off, wire[off : off + 9 + 4]))  # header + 4 payload bytes
        off += 9 + len(body)
    parts.append((off, wire[off:]))
    p = FrameParser(role="server")
    events = []
    for seg in call_segments(5, len(wire), parts):
        events += p.feed(seg)
    frames = [e for e in events if isinstance(e, FrameParsed)]
    assert [(f.type, f.length) for f in frames] == [(0, len(body))] * 3 + [(1, 1)]
    assert frames[-1].payload == b"\x88"
    assert p.stats.sync_losses == 0
    assert all(f.payload == body[:4] for f in frames[:3])


def test_a_kernel_event_file_of_another_format_is_refused(tmp_path) -> None:
    from harness.collectors.eventfile import EventWriter
    from harness.collectors.kprobe.decode import decode
    from harness.errors import RunDirError

    w = EventWriter(tmp_path / "k.bin", {"collector": "kprobe", "format": "kprobe-syscalls/99"})
    w.close()
    with pytest.raises(RunDirError, match="not a kprobe-syscalls/1 recording"):
        decode(tmp_path / "k.bin")
    # a recording from before the format was written reads as format 1
    w = EventWriter(tmp_path / "old.bin", {"collector": "kprobe"})
    w.close()
    conns, _ = decode(tmp_path / "old.bin")
    assert conns == []
