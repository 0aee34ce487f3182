"""Incremental HTTP/2 frame parser for one direction that survives late attach and cut payloads.

Fed the ``Segment``s of one direction in order. Frame lengths drive it: bytes the capture
limit cut (``orig_len > len(data)``) are skipped by length, so a frame whose payload was
partly unseen is still delivered, marked truncated. When it cannot trust where it is (a
late attach starting anywhere, or a frame header lost in unseen bytes) it searches for the
next plausible frame header that the following header confirms, and counts what it skipped.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

from harness.protocols.common import ParseState, Segment
from harness.protocols.http2.errors import FrameError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER_LEN = 9
DEFAULT_MAX_FRAME_SIZE = 16384
ABSOLUTE_MAX_FRAME_SIZE = (1 << 24) - 1
# Extension frame types (ALTSVC 0xa ... PRIORITY_UPDATE 0x10) are accepted once in sync.
_MAX_SYNCED_TYPE = 0x10

Role = Literal["client", "server"]


class FrameType(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag(IntEnum):
    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


_VALID_FLAGS = {
    FrameType.DATA: 0x1 | 0x8,
    FrameType.HEADERS: 0x1 | 0x4 | 0x8 | 0x20,
    FrameType.PRIORITY: 0,
    FrameType.RST_STREAM: 0,
    FrameType.SETTINGS: 0x1,
    FrameType.PUSH_PROMISE: 0x4 | 0x8,
    FrameType.PING: 0x1,
    FrameType.GOAWAY: 0,
    FrameType.WINDOW_UPDATE: 0,
    FrameType.CONTINUATION: 0x4,
}
_CONNECTION_TYPES = {FrameType.SETTINGS, FrameType.PING, FrameType.GOAWAY}
_FIXED_LENGTH = {FrameType.PRIORITY: 5, FrameType.RST_STREAM: 4, FrameType.PING: 8,
                 FrameType.WINDOW_UPDATE: 4}
# After a loss, new streams cannot be far beyond the highest one seen in sync.
_STREAM_ID_SLACK = 20000
# ... and each stream first seen in the skipped bytes cost a frame of at least 10 bytes there
# (HEADERS with one HPACK byte); streams the other end opened before the loss and this end
# has not used yet are bounded by the concurrency, allowed generously here (512 streams).
_MIN_STREAM_OPENER = FRAME_HEADER_LEN + 1
_IN_FLIGHT_IDS = 1024
# Frames that carry a stream's messages: only its initiator's parity (odd: client) unless
# the server pushes.
_STREAM_CARRIERS = {FrameType.DATA, FrameType.HEADERS, FrameType.CONTINUATION}


@dataclass(frozen=True, slots=True)
class FrameParsed:
    """A whole frame went by. ``payload`` is the seen prefix of its payload.

    ``truncated_bytes`` = ``length - len(payload)``. When unseen bytes sit in the middle,
    ``pieces`` lists every seen run as (offset in payload, bytes), the prefix included.
    ``ts_ns`` is the time of the segment holding the frame's last byte.
    """

    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes
    truncated_bytes: int
    ts_ns: int
    pieces: tuple[tuple[int, bytes], ...] = ()

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)


@dataclass(frozen=True, slots=True)
class PrefaceReceived:
    """The client connection preface went by: this direction was seen from its start."""

    ts_ns: int


@dataclass(frozen=True, slots=True)
class SyncLost:
    """The parser stopped trusting its position (a header unseen or implausible)."""

    offset: int
    reason: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class SyncAcquired:
    """The parser found a confirmed frame boundary after skipping ``skipped`` bytes."""

    offset: int
    skipped: int
    ts_ns: int


FrameEvent = FrameParsed | PrefaceReceived | SyncLost | SyncAcquired


@dataclass(slots=True)
class FrameStats:
    segments: int = 0
    bytes_seen: int = 0
    bytes_unseen: int = 0  # cut by the capture limit
    frames: int = 0
    frames_by_type: dict[int, int] = field(default_factory=dict)
    frames_truncated: int = 0
    preface_seen: bool = False
    initial_skipped_bytes: int = 0  # before the first boundary (late attach)
    resyncs: int = 0  # boundaries found again after losing sync
    skipped_bytes: int = 0  # all bytes thrown away while searching, first search included
    sync_losses: int = 0
    implausible_headers: int = 0  # in-sync headers that could not be a frame
    incomplete_at_end: int = 0  # frame still open when the input ended


class _Buffer:
    """The bytes of one direction by absolute offset, with unseen gaps where data was cut."""

    def __init__(self) -> None:
        self.end = 0  # absolute offset after the last byte fed, seen or not
        self._chunks: deque[tuple[int, bytes]] = deque()  # seen runs, in order
        self._seg_starts: list[int] = []
        self._seg_ts: list[int] = []

    def append(self, seg: Segment) -> None:
        self._seg_starts.append(self.end)
        self._seg_ts.append(seg.ts_ns)
        if seg.data:
            self._chunks.append((self.end, seg.data))
        self.end += seg.orig_len

    def get(self, pos: int, n: int) -> bytes | None:
        """n bytes at pos; None if any of them is unseen. Caller checks pos + n <= end."""
        out = bytearray()
        for start, data in self._chunks:
            stop = start + len(data)
            if stop <= pos:
                continue
            if start > pos:
                return None
            take = data[pos - start : pos - start + n - len(out)]
            out += take
            pos += len(take)
            if len(out) == n:
                return bytes(out)
        return None

    def pieces(self, begin: int, stop: int) -> list[tuple[int, bytes]]:
        """Seen runs inside [begin, stop), offsets relative to begin; adjacent runs merged."""
        out: list[tuple[int, bytes]] = []
        for start, data in self._chunks:
            if start >= stop:
                break
            s = max(start, begin)
            e = min(start + len(data), stop)
            if s >= e:
                continue
            if out and out[-1][0] + len(out[-1][1]) == s - begin:
                out[-1] = (out[-1][0], out[-1][1] + data[s - start : e - start])
            else:
                out.append((s - begin, data[s - start : e - start]))
        return out

    def next_seen(self, pos: int) -> int | None:
        """The first seen offset >= pos, or None when nothing seen follows yet."""
        for start, data in self._chunks:
            if start + len(data) > pos:
                return max(start, pos)
        return None

    def is_segment_start(self, pos: int) -> bool:
        i = bisect.bisect_left(self._seg_starts, pos)
        return i < len(self._seg_starts) and self._seg_starts[i] == pos

    def ts_at(self, pos: int) -> int:
        i = bisect.bisect_right(self._seg_starts, pos) - 1
        return self._seg_ts[max(i, 0)] if self._seg_ts else 0

    def discard_before(self, pos: int) -> None:
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= pos:
            self._chunks.popleft()
        # Segment starts are kept as a few ints each: they date the frames.


@dataclass(frozen=True, slots=True)
class _Header:
    length: int
    type: int
    flags: int
    stream_id: int
    reserved: bool


def _header(b: bytes) -> _Header:
    sid = int.from_bytes(b[5:9], "big")
    return _Header(int.from_bytes(b[0:3], "big"), b[3], b[4], sid & 0x7FFFFFFF, bool(sid >> 31))


class FrameParser:
    """Frames of one direction of one connection.

    ``role`` names the endpoint that SENDS these bytes (client or server) when known; it
    only sharpens the plausibility rules of the boundary search. ``max_frame_size`` is the
    receiving peer's SETTINGS_MAX_FRAME_SIZE when known (``set_max_frame_size``); unknown
    (late attach), frames up to 16 MiB are accepted once in sync, while the search for a
    boundary always demands the default 16384.
    """

    def __init__(self, *, role: Role | None = None, max_frame_size: int | None = None) -> None:
        self.role = role
        self.stats = FrameStats()
        self._buf = _Buffer()
        self._pos = 0
        self._max_frame_size = ABSOLUTE_MAX_FRAME_SIZE
        if max_frame_size is not None:
            self.set_max_frame_size(max_frame_size)
        self._state: Literal["start", "header", "payload", "search"] = "start"
        self._hdr: _Header | None = None
        self._search_from = 0  # where the current search began, for the skipped count
        self._synced_once = False
        self._closed = False
        self._max_stream_id = 0
        self._lost_at = 0  # end of the last frame read in sync, for the stream id bound

    @property
    def synced(self) -> bool:
        return self._state in ("header", "payload")

    def set_max_frame_size(self, size: int) -> None:
        self._max_frame_size = max(DEFAULT_MAX_FRAME_SIZE, min(size, ABSOLUTE_MAX_FRAME_SIZE))

    def feed(self, seg: Segment) -> list[FrameEvent]:
        """Take the next segment of this direction; return the events it completed."""
        if self._closed:
            raise FrameError("segment fed after close()")
        if seg.orig_len < len(seg.data):
            raise FrameError(f"segment orig_len {seg.orig_len} < captured {len(seg.data)}")
        self.stats.segments += 1
        self.stats.bytes_seen += len(seg.data)
        self.stats.bytes_unseen += seg.truncated
        self._buf.append(seg)
        return self._run(closing=False)

    def close(self) -> list[FrameEvent]:
        """The input ended: settle a pending search and deliver an unfinished frame."""
        if self._closed:
            return []
        events = self._run(closing=True)
        self._closed = True
        if self._state == "payload" and self._hdr is not None:
            self.stats.incomplete_at_end += 1
            events.append(self._frame(self._hdr, self._pos, self._buf.end))
        elif self._state in ("search", "header"):
            left = self._buf.end - (self._search_from if self._state == "search" else self._pos)
            self.stats.skipped_bytes += left
            if not self._synced_once:
                self.stats.initial_skipped_bytes += left
        return events

    # -- the state machine ------------------------------------------------------------

    def _run(self, *, closing: bool) -> list[FrameEvent]:
        events: list[FrameEvent] = []
        while True:
            if self._state == "start":
                state = self._step_start(events)
            elif self._state == "header":
                state = self._step_header(events)
            elif self._state == "payload":
                state = self._step_payload(events)
            else:
                state = self._step_search(events, closing=closing)
            if state is ParseState.NEEDS_MORE_DATA:
                break
        self._buf.discard_before(self._pos)
        return events

    def _step_start(self, events: list[FrameEvent]) -> ParseState:
        n = min(len(PREFACE), self._buf.end)
        pieces = self._buf.pieces(0, n)
        seen = sum(len(p) for _, p in pieces)
        matches = all(PREFACE[o : o + len(p)] == p for o, p in pieces)
        # A cut preface still counts when its seen start is unmistakable ("PRI" can never
        # begin a plausible frame header: that length would exceed 5 MiB).
        if matches and pieces and pieces[0][0] == 0 and (seen == n or len(pieces[0][1]) >= 3):
            if n < len(PREFACE):
                return ParseState.NEEDS_MORE_DATA
            self._pos = len(PREFACE)
            self.stats.preface_seen = True
            self._synced_once = True
            self._state = "header"
            events.append(PrefaceReceived(self._buf.ts_at(0)))
            return ParseState.SUCCESS
        if not pieces and n < len(PREFACE) and self._buf.end == 0:
            return ParseState.NEEDS_MORE_DATA
        self._state = "search"
        self._search_from = 0
        return ParseState.SUCCESS

    def _step_header(self, events: list[FrameEvent]) -> ParseState:
        if self._pos + FRAME_HEADER_LEN > self._buf.end:
            return ParseState.NEEDS_MORE_DATA
        raw = self._buf.get(self._pos, FRAME_HEADER_LEN)
        if raw is None:
            self._lose(events, "header_unseen")
            return ParseState.INVALID
        hdr = _header(raw)
        if hdr.length > self._max_frame_size or hdr.type > _MAX_SYNCED_TYPE:
            self.stats.implausible_headers += 1
            self._lose(events, "implausible_header")
            self._search_from = self._pos
            return ParseState.INVALID
        self._hdr = hdr
        self._state = "payload"
        return ParseState.SUCCESS

    def _step_payload(self, events: list[FrameEvent]) -> ParseState:
        assert self._hdr is not None
        end = self._pos + FRAME_HEADER_LEN + self._hdr.length
        if end > self._buf.end:
            return ParseState.NEEDS_MORE_DATA
        events.append(self._frame(self._hdr, self._pos, end))
        self._pos = end
        self._hdr = None
        self._state = "header"
        return ParseState.SUCCESS

    def _frame(self, hdr: _Header, pos: int, end: int) -> FrameParsed:
        begin = pos + FRAME_HEADER_LEN
        pieces = self._buf.pieces(begin, min(end, begin + hdr.length))
        payload = pieces[0][1] if pieces and pieces[0][0] == 0 else b""
        truncated = hdr.length - len(payload)
        self.stats.frames += 1
        self._max_stream_id = max(self._max_stream_id, hdr.stream_id)
        self.stats.frames_by_type[hdr.type] = self.stats.frames_by_type.get(hdr.type, 0) + 1
        if truncated:
            self.stats.frames_truncated += 1
        last = max(begin, min(end, self._buf.end)) - 1
        return FrameParsed(hdr.type, hdr.flags, hdr.stream_id, hdr.length, payload, truncated,
                           self._buf.ts_at(last), tuple(pieces))

    def _lose(self, events: list[FrameEvent], reason: str) -> None:
        self.stats.sync_losses += 1
        self._lost_at = self._pos
        events.append(SyncLost(self._pos, reason, self._buf.ts_at(self._pos)))
        self._state = "search"
        self._search_from = self._pos

    def _step_search(self, events: list[FrameEvent], *, closing: bool) -> ParseState:
        pos = max(self._pos, self._search_from)
        while True:
            seen = self._buf.next_seen(pos)
            if seen is None or seen + FRAME_HEADER_LEN > self._buf.end:
                self._pos = pos if seen is None else seen
                return ParseState.NEEDS_MORE_DATA
            pos = seen
            raw = self._buf.get(pos, FRAME_HEADER_LEN)
            if raw is None:  # the 9 bytes run into an unseen gap
                pos += 1
                continue
            hdr = _header(raw)
            if not self._plausible(hdr, pos):
                pos += 1
                continue
            verdict = self._confirm(pos, hdr, closing=closing)
            if verdict is None:
                self._pos = pos  # wait for the bytes that decide
                return ParseState.NEEDS_MORE_DATA
            if not verdict:
                pos += 1
                continue
            skipped = pos - self._search_from
            self.stats.skipped_bytes += skipped
            if self._synced_once:
                self.stats.resyncs += 1
            else:
                self.stats.initial_skipped_bytes += skipped
            self._synced_once = True
            events.append(SyncAcquired(pos, skipped, self._buf.ts_at(pos)))
            self._pos = pos
            self._state = "header"
            return ParseState.SUCCESS

    def _confirm(self, pos: int, hdr: _Header, *, closing: bool) -> bool | None:
        """True/False once the following headers decide; None while they have not arrived.

        A candidate is confirmed by a chain of plausible headers: two followers, or one
        that starts a syscall segment (writers emit whole frames), or one followed by bytes
        nobody saw. Followers must carry stream ids near the candidate's, and an empty
        candidate (nine bytes that often sit just before a real boundary) must also start a
        segment.
        """
        at_segment_start = self._buf.is_segment_start(pos)
        if hdr.length == 0 and not at_segment_start:
            return False
        followers = 0
        nxt = pos + FRAME_HEADER_LEN + hdr.length
        while True:
            if closing and nxt >= self._buf.end:
                return nxt == self._buf.end or followers > 0
            if nxt + FRAME_HEADER_LEN > self._buf.end:
                return None
            raw = self._buf.get(nxt, FRAME_HEADER_LEN)
            if raw is None:  # cannot look through unseen bytes
                return followers > 0
            h = _header(raw)
            if not self._plausible(h, nxt):
                return False
            if hdr.stream_id and h.stream_id and (
                abs(h.stream_id - hdr.stream_id) > _STREAM_ID_SLACK
            ):
                return False
            followers += 1
            if followers >= 2 or self._buf.is_segment_start(nxt):
                return True
            nxt += FRAME_HEADER_LEN + h.length

    def _plausible(self, h: _Header, pos: int) -> bool:
        """Strict rules for a header at ``pos`` nobody vouches for yet (RFC 9113 section 6)."""
        if h.reserved or h.type > FrameType.CONTINUATION:
            return False
        t = FrameType(h.type)
        if h.flags & ~_VALID_FLAGS[t] or h.length > DEFAULT_MAX_FRAME_SIZE:
            return False
        if (h.stream_id == 0) != (t in _CONNECTION_TYPES or
                                  (t is FrameType.WINDOW_UPDATE and h.stream_id == 0)):
            return False
        if t in _FIXED_LENGTH and h.length != _FIXED_LENGTH[t]:
            return False
        if t is FrameType.SETTINGS and (h.length % 6 or (h.flags & Flag.ACK and h.length)):
            return False
        if t is FrameType.GOAWAY and h.length < 8:
            return False
        if h.flags & Flag.PADDED and h.length < 1:
            return False
        # Nine bytes just before a real boundary often read as an empty frame that the real
        # frame then "confirms"; only these two empty frames are common in real traffic.
        if h.length == 0 and not (t in (FrameType.SETTINGS, FrameType.DATA)
                                  and h.flags & Flag.END_STREAM):
            return False
        if self._max_stream_id and h.stream_id > self._max_stream_id + min(
            _STREAM_ID_SLACK,
            _IN_FLIGHT_IDS + 2 * ((pos - self._lost_at) // _MIN_STREAM_OPENER),
        ):
            return False
        if self.role == "client":
            # A client never pushes, and its streams are odd.
            return t is not FrameType.PUSH_PROMISE and not (
                t in _STREAM_CARRIERS and h.stream_id % 2 == 0)
        if self.role == "server":
            # Promises ride the client's (odd) streams; an even stream is a pushed one, so
            # rarely real (gRPC never pushes) that it needs a PUSH_PROMISE seen first.
            if t is FrameType.PUSH_PROMISE:
                return h.stream_id % 2 == 1
            pushes = self.stats.frames_by_type.get(FrameType.PUSH_PROMISE, 0)
            return not (t in _STREAM_CARRIERS and h.stream_id % 2 == 0 and not pushes)
        return True
