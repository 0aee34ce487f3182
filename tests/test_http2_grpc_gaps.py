"""gRPC message counting across unseen bytes: exact when lengths span the gap, unknown otherwise."""

from __future__ import annotations

import struct

from harness.protocols.http2.grpc import BodyCounter


def msg(n: int) -> bytes:
    return struct.pack(">BI", 0, n) + b"m" * n


def test_gap_inside_a_message_body_keeps_counts_exact() -> None:
    body = msg(100_000) + msg(3)
    b = BodyCounter()
    # seen: the first prefix and 10 body bytes, then a gap, then the last 8 bytes + next msg
    cut = len(msg(100_000))
    b.add_data_frame(len(body), False, [(0, body[:15]), (cut - 8, body[cut - 8 :])])
    assert not b.broken
    assert (b.messages, b.message_bytes) == (2, 100_003)
    assert b.at_boundary


def test_prefix_in_the_gap_breaks_counts() -> None:
    body = msg(10) + msg(20)
    b = BodyCounter()
    b.add_data_frame(len(body), False, [(0, body[:12])])  # second prefix unseen
    assert b.broken


def test_prefix_partly_seen_then_gap_breaks_counts() -> None:
    body = msg(4) + msg(20)
    b = BodyCounter()
    b.add_data_frame(len(body), False, [(0, body[:11]), (13, body[13:])])
    assert b.broken


def test_prefix_split_across_frames_counts_once() -> None:
    body = msg(7)
    b = BodyCounter()
    b.add_data_frame(2, False, [(0, body[:2])])
    b.add_data_frame(len(body) - 2, False, [(0, body[2:])])
    assert not b.broken
    assert (b.messages, b.message_bytes, b.frames) == (1, 7, 2)


def test_gap_past_the_end_of_a_message_breaks_counts() -> None:
    body = msg(10)
    b = BodyCounter()
    b.add_data_frame(len(body) + 5, False, [(0, body)])  # 5 more unseen bytes: a prefix
    assert b.broken
