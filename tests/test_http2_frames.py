"""The per-direction frame parser: preface, segmentation, unseen bytes, late attach and resync."""

from __future__ import annotations

import random

import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.protocols.common import Segment
from harness.protocols.http2.errors import FrameError
from harness.protocols.http2.frames import (
    PREFACE,
    FrameParsed,
    FrameParser,
    PrefaceReceived,
    SyncAcquired,
    SyncLost,
)


def frames_of(seed: int, n: int) -> list[Frame]:
    rng = random.Random(seed)
    out: list[Frame] = [SettingsFrame(0, settings={1: 4096, 4: 65535})]
    for i in range(n):
        sid = 2 * (i % 5) + 1
        kind = rng.randrange(5)
        if kind == 0:
            f: Frame = HeadersFrame(sid, data=rng.randbytes(rng.randint(1, 60)))
            f.flags.add("END_HEADERS")
        elif kind == 1:
            f = DataFrame(sid, data=rng.randbytes(rng.randint(0, 3000)))
            if rng.random() < 0.3:
                f.flags.add("END_STREAM")
        elif kind == 2:
            f = WindowUpdateFrame(rng.choice([0, sid]), window_increment=rng.randint(1, 10**6))
        elif kind == 3:
            f = PingFrame(0, opaque_data=rng.randbytes(8))
        else:
            f = RstStreamFrame(sid, error_code=8)
        out.append(f)
    out.append(GoAwayFrame(0, last_stream_id=9))
    return out


def as_tuple(f: Frame) -> tuple[int, int, int, bytes]:
    raw = f.serialize()
    return raw[3], raw[4], f.stream_id, raw[9:]


def split(data: bytes, rng: random.Random, max_len: int = 400) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_len)
        out.append(data[i : i + n])
        i += n
    return out


def run(parser: FrameParser, chunks: list[tuple[bytes, int]]) -> list:
    events = []
    for ts, (data, orig) in enumerate(chunks):
        events += parser.feed(Segment(ts, data, orig))
    return events + parser.close()


def parsed(events: list) -> list[FrameParsed]:
    return [e for e in events if isinstance(e, FrameParsed)]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9))
def test_any_segmentation_gives_the_same_frames(seed):
    rng = random.Random(seed)
    frames = frames_of(seed, 30)
    wire = PREFACE + b"".join(f.serialize() for f in frames)
    events = run(FrameParser(role="client"), [(c, len(c)) for c in split(wire, rng)])
    assert isinstance(events[0], PrefaceReceived)
    got = parsed(events)
    assert [(f.type, f.flags, f.stream_id, f.payload) for f in got] == [as_tuple(f) for f in frames]
    assert all(f.truncated_bytes == 0 for f in got)


def test_capture_limit_cut_is_skipped_by_length():
    frames = [DataFrame(1, data=b"a" * 1000), PingFrame(0, opaque_data=b"12345678"),
              DataFrame(3, data=b"b" * 50)]
    raw = [f.serialize() for f in frames]
    # One syscall per frame, each cut to 100 captured bytes.
    p = FrameParser()
    events = run(p, [(r[:100], len(r)) for r in raw])
    got = parsed(events)
    assert [(f.type, f.stream_id, f.length) for f in got] == [(0, 1, 1000), (6, 0, 8), (0, 3, 50)]
    assert got[0].payload == b"a" * 91 and got[0].truncated_bytes == 909
    assert got[1].payload == b"12345678" and got[1].truncated_bytes == 0
    assert p.stats.bytes_unseen == 1009 - 100
    assert p.stats.frames_truncated == 1 and p.stats.sync_losses == 0


def test_unseen_bytes_in_the_middle_of_a_payload_are_reported_as_pieces():
    f = DataFrame(1, data=bytes(range(200))).serialize()
    chunks = [(f[:50], 60), (f[60:], len(f) - 60)]  # ten payload bytes at 41..50 unseen
    got = parsed(run(FrameParser(), chunks))
    assert len(got) == 1
    assert got[0].pieces == ((0, bytes(range(41))), (51, bytes(range(51, 200))))
    assert got[0].truncated_bytes == 200 - 41


def test_late_attach_mid_frame_finds_the_next_boundary():
    frames = frames_of(7, 20)
    wire = b"".join(f.serialize() for f in frames)
    first = len(frames[0].serialize()) + len(frames[1].serialize())
    cut = first - 5  # inside frame 1
    p = FrameParser(role="client")
    events = run(p, [(c, len(c)) for c in split(wire[cut:], random.Random(1))])
    sync = [e for e in events if isinstance(e, SyncAcquired)]
    assert sync and sync[0].offset == 5 and sync[0].skipped == 5
    assert [as_tuple(f) for f in frames[2:]] == [
        (f.type, f.flags, f.stream_id, f.payload) for f in parsed(events)]
    assert p.stats.initial_skipped_bytes == 5 and p.stats.resyncs == 0
    assert not p.stats.preface_seen


def test_lost_frame_header_resyncs_and_counts():
    a = DataFrame(1, data=b"x" * 30).serialize()
    b = PingFrame(0, opaque_data=b"p" * 8).serialize()
    c = WindowUpdateFrame(0, window_increment=5).serialize()
    d = SettingsFrame(0, settings={4: 70000}).serialize()
    e = RstStreamFrame(1, error_code=8).serialize()
    # One write of a+b+c captured only up to the PING's payload: c's header is unseen.
    chunks = [(a + b[:12], len(a) + len(b) + len(c)), (d, len(d)), (e, len(e))]
    p = FrameParser()
    events = run(p, chunks)
    kinds = [type(ev).__name__ for ev in events]
    assert kinds == ["SyncAcquired", "FrameParsed", "FrameParsed", "SyncLost", "SyncAcquired",
                     "FrameParsed", "FrameParsed"]
    lost = events[3]
    assert isinstance(lost, SyncLost) and lost.reason == "header_unseen"
    assert lost.offset == len(a) + len(b)
    got = parsed(events)
    assert [f.type for f in got] == [0, 6, 4, 3]
    assert got[1].payload == b"ppp" and got[1].truncated_bytes == 5
    assert p.stats.resyncs == 1 and p.stats.sync_losses == 1
    assert p.stats.skipped_bytes == len(c)


def test_first_frame_is_not_trusted_without_a_seen_follower():
    a = DataFrame(1, data=b"x" * 30).serialize()
    c = WindowUpdateFrame(0, window_increment=5).serialize()
    d = SettingsFrame(0, settings={4: 70000}).serialize()
    p = FrameParser()
    got = parsed(run(p, [(a, len(a) + 20), (c, len(c)), (d, len(d))]))
    assert [f.type for f in got] == [8, 4]
    assert p.stats.initial_skipped_bytes == len(a) + 20


def test_garbage_before_frames_is_skipped_and_counted():
    rng = random.Random(3)
    garbage = bytes(rng.choice(b"\xff\xfe\x80") for _ in range(37))
    frames = frames_of(11, 10)
    wire = garbage + b"".join(f.serialize() for f in frames)
    p = FrameParser()
    got = parsed(run(p, [(wire, len(wire))]))
    assert [as_tuple(f) for f in frames] == [(f.type, f.flags, f.stream_id, f.payload)
                                             for f in got]
    assert p.stats.skipped_bytes == 37


def test_frame_open_at_the_end_is_delivered_truncated():
    f = DataFrame(5, data=b"z" * 100).serialize()
    p = FrameParser()
    p.feed(Segment(0, PREFACE, len(PREFACE)))
    got = parsed(p.feed(Segment(1, f[:40], 40)) + p.close())
    assert len(got) == 1 and got[0].truncated_bytes == 100 - 31
    assert p.stats.incomplete_at_end == 1


def test_preface_split_across_segments():
    p = FrameParser()
    assert p.feed(Segment(0, PREFACE[:5], 5)) == []
    events = p.feed(Segment(1, PREFACE[5:], len(PREFACE) - 5))
    assert events == [PrefaceReceived(0)]


def test_segment_shorter_than_its_data_is_refused():
    with pytest.raises(FrameError):
        FrameParser().feed(Segment(0, b"abc", 2))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.integers(0, 5000), st.floats(0, 0.5))
def test_late_attach_and_cuts_never_invent_frames(seed, cut, loss):
    """Frames reported after a random cut and random capture limits are real frames."""
    rng = random.Random(seed)
    frames = frames_of(seed, 25)
    wire = b"".join(f.serialize() for f in frames)
    cut = min(cut, len(wire))
    truth: dict[int, tuple[int, int, int, bytes]] = {}
    off = 0
    for f in frames:
        truth[off] = as_tuple(f)
        off += len(f.serialize())
    chunks = []
    for c in split(wire[cut:], rng):
        keep = len(c) if rng.random() > loss else rng.randint(0, len(c))
        chunks.append((c[:keep], len(c)))
    p = FrameParser(role="client")
    events = run(p, chunks)
    pos = None
    for e in events:
        if isinstance(e, SyncAcquired):
            pos = cut + e.offset
        elif isinstance(e, FrameParsed):
            assert pos in truth, "a frame was reported where none starts"
            t, flags, sid, payload = truth[pos]
            assert (e.type, e.flags, e.stream_id) == (t, flags, sid)
            assert payload.startswith(e.payload)
            for o, piece in e.pieces:
                assert payload[o : o + len(piece)] == piece
            pos += 9 + e.length
        elif isinstance(e, SyncLost):
            pos = None
    assert p.stats.bytes_seen + p.stats.bytes_unseen == len(wire) - cut


def _false_boundary_wire(fake_sid_low: int) -> tuple[bytes, bytes, bytes]:
    """A gRPC DATA frame on stream 17 whose header, read from its 7th byte, is a header too.

    Its last three stream id bytes (00 00 11: length 17), the message prefix (00: DATA,
    00: no flags, 00 00 00 12) and the message's first byte read as DATA of length 17 on
    stream 0x12NN, ending exactly where the next real frame starts.
    """
    msg = bytes([fake_sid_low]) + b"m" * 17
    real = DataFrame(17, data=b"\x00" + len(msg).to_bytes(4, "big") + msg).serialize()
    fake = real[6:15]
    assert fake == b"\x00\x00\x11\x00\x00\x00\x00\x12" + bytes([fake_sid_low])
    after = (DataFrame(17, data=b"\x00\x00\x00\x00\x05hello").serialize()
             + HeadersFrame(17, data=b"\x88", flags=["END_HEADERS", "END_STREAM"]).serialize())
    return real, fake, after


def test_server_data_on_an_even_stream_is_no_boundary_without_push():
    # Late attach one byte into the real header (its start unseen): the first candidate is
    # the fake DATA on stream 0x1246, even, which a server only sends after a PUSH_PROMISE.
    real, _, after = _false_boundary_wire(0x46)
    p = FrameParser(role="server")
    events = run(p, [(real[1:], len(real) - 1), (after, len(after))])
    assert [(f.type, f.stream_id) for f in parsed(events)] == [(0, 17), (1, 17)]
    assert p.stats.initial_skipped_bytes == len(real) - 1


@pytest.mark.parametrize("role", ["server", None])
def test_stream_id_far_beyond_those_seen_is_no_boundary_after_a_loss(role):
    # In sync up to stream 13, then the real header is cut: the fake DATA on odd stream
    # 0x1247 would need ~2300 streams opened in the 6 bytes skipped since.
    real, _, after = _false_boundary_wire(0x47)
    before = DataFrame(13, data=b"x" * 20).serialize()
    p = FrameParser(role=role)
    p.feed(Segment(0, PREFACE, len(PREFACE)))
    events = run(p, [(before + real[:1], len(before) + 2), (real[2:], len(real) - 2),
                     (after, len(after))])
    assert [(f.type, f.stream_id) for f in parsed(events)] == [(0, 13), (0, 17), (1, 17)]
    assert p.stats.resyncs == 1 and p.stats.skipped_bytes == len(real)
