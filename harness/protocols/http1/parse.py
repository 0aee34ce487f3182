"""Incremental HTTP/1.x message parser for one direction of one connection (sans-I/O).

Bytes arrive as :class:`~harness.protocols.common.Segment` s (one per data syscall);
past-tense events come out. The parser never raises on bytes: malformed input,
capture-limit truncation and late attach are counted in :class:`Http1ParseStats`
and answered by resynchronising on the next plausible start line.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from harness.errors import ProtocolError
from harness.model import TRUNCATED_PAYLOAD
from harness.protocols.common import ParseState, Segment

Kind = Literal["request", "response"]
Headers = list[tuple[str, str]]

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE")

# Limits that bound buffering whatever the bytes are.
MAX_HEADER_BLOCK = 64 * 1024  # start line + header fields; larger is invalid
MAX_START_LINE = 16 * 1024
MAX_CHUNK_LINE = 4 * 1024  # chunk-size line with extensions
_MAX_HEX_DIGITS = 16
_FIELD_CACHE = 64  # distinct header blocks remembered per direction (a Date per second)

# Reason codes carried by MessageLost; they double as Exchange degradation reasons.
STREAM_ENDED = "stream_ended"  # end() came in the middle of a message
INVALID_FRAMING = "invalid_framing"  # a chunk-size line or trailer block made no sense
# A response's body size hangs on its request's method (a HEAD response has none whatever
# its headers say), and that method was not seen.
METHOD_UNKNOWN = "method_unknown"
# After a loss, which of several queued requests a response answers is not proven.
PAIRING_UNKNOWN = "pairing_unknown"
_STATUS_PREFIX = b"HTTP/1."

_REQUEST_LINE = re.compile(
    rb"(" + b"|".join(m.encode() for m in METHODS) + rb") "
    rb"([\x21-\x7e\x80-\xff]{1,%d}) HTTP/1\.([01])\r?\n" % MAX_START_LINE
)
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]{0,%d}))?\r?\n" % MAX_START_LINE)
_HEADER_END = re.compile(rb"\n\r?\n")
_LINE_SPLIT = re.compile(rb"\r?\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,%d}" % _MAX_HEX_DIGITS)
_DIGITS = re.compile(r"[0-9]{1,18}")


class Http1UsageError(ProtocolError):
    """The parser was driven wrongly (fed after end(), asked a request parser about responses)."""


# -- events --------------------------------------------------------------------
# Read only once made. Not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, about 2 us more per event, and a replay makes four per exchange.


@dataclass(slots=True)
class RequestHeadersParsed:
    """A request line and its header block were parsed; ``ts_ns`` is the start line's first byte."""

    method: str
    target: str
    version: str  # "HTTP/1.0" or "HTTP/1.1"
    headers: Headers
    ts_ns: int


@dataclass(slots=True)
class ResponseHeadersParsed:
    """A final (non-1xx, or 101) status line and header block were parsed.

    ``matched`` says whether a request queued with ``expect_response_to`` was
    consumed for it (``request_method`` is that request's method, None when it
    was unknown); ``unanswered`` queued requests before it were dropped as
    having lost their responses.
    """

    status: int
    reason: str
    version: str
    headers: Headers
    ts_ns: int
    request_method: str | None = None
    matched: bool = False
    unanswered: int = 0
    # after a loss: it answers one of several queued requests, which one is unproven; the
    # oldest of them was consumed (its answer is unknown) and this response is no one's
    unpaired: bool = False


@dataclass(slots=True)
class InformationalResponseParsed:
    """A 1xx interim response (100 Continue, 103 Early Hints) was parsed; the real one follows."""

    status: int
    reason: str
    version: str
    headers: Headers
    ts_ns: int


@dataclass(slots=True)
class BodyDataReceived:
    """Seen body bytes, de-chunked; only emitted when the parser was made with emit_body=True."""

    data: bytes
    ts_ns: int


@dataclass(slots=True)
class MessageCompleted:
    """The message ended where its framing said it would.

    ``body_bytes`` is the de-chunked body size including ``truncated_bytes``
    that the capture limit hid but whose count the framing made certain.
    """

    body_bytes: int
    truncated_bytes: int
    ts_ns: int
    trailers: Headers = field(default_factory=list)
    # the framing is a best reading, not proven: why (METHOD_UNKNOWN); body_bytes unknown
    unsure: str | None = None


@dataclass(slots=True)
class MessageLost:
    """A message that certainly existed could not be followed to its end.

    ``headers_seen`` False means its start line/header block was never parsed
    (no HeadersParsed event came for it). For a response parser, ``matched`` /
    ``request_method`` / ``unanswered`` pair it with the queued requests exactly
    as ResponseHeadersParsed would.
    """

    reason: str  # TRUNCATED_PAYLOAD, STREAM_ENDED or INVALID_FRAMING
    headers_seen: bool
    body_bytes: int  # body bytes known so far (a lower bound)
    ts_ns: int
    request_method: str | None = None
    matched: bool = False
    unanswered: int = 0
    # headers_seen False but the start line was whole: (method, target, version) or
    # (status, reason, version). A request's method still frames its response.
    start_line: tuple[str, str, str] | None = None
    unpaired: bool = False  # as ResponseHeadersParsed.unpaired


@dataclass(slots=True)
class Resynchronised:
    """Parsing resumed at a plausible start line after ``skipped_bytes`` that could not be used."""

    skipped_bytes: int
    ts_ns: int
    reason: str  # "mid_stream_start", "after_loss" or "garbage"


Event = (
    RequestHeadersParsed
    | ResponseHeadersParsed
    | InformationalResponseParsed
    | BodyDataReceived
    | MessageCompleted
    | MessageLost
    | Resynchronised
)


@dataclass(slots=True)
class Http1ParseStats:
    """What one direction's parser saw, lost and skipped; nothing is only logged."""

    segments: int = 0
    bytes: int = 0  # bytes the syscalls moved (sum of orig_len)
    captured_bytes: int = 0  # bytes actually present in the segments
    messages: int = 0  # MessageCompleted
    informational: int = 0  # 1xx interim responses
    lost_messages: int = 0  # MessageLost
    resyncs: int = 0  # Resynchronised
    skipped_bytes: int = 0  # bytes not attributable to any parsed message
    truncated_bytes: int = 0  # body bytes hidden by the capture limit, skipped by length
    invalid: int = 0  # start lines/header blocks/chunk lines that failed to parse
    tunnel_bytes: int = 0  # bytes after a 101 / CONNECT 2xx, no longer HTTP/1


class _State(Enum):
    SCAN = "scan"  # looking for a start line
    HEADERS = "headers"  # start line found, waiting for the end of the header block
    BODY_LENGTH = "body_length"
    CHUNK_SIZE = "chunk_size"
    CHUNK_DATA = "chunk_data"
    CHUNK_DATA_END = "chunk_data_end"  # the CRLF after a chunk's data
    TRAILERS = "trailers"
    # A response's headers say it has a body, but its request's method is unknown (a HEAD
    # response sends such headers and no body): the next bytes tell which.
    PEEK = "peek"
    BODY_CLOSE = "body_close"  # response body delimited by connection close
    TUNNEL = "tunnel"
    CLOSED = "closed"


class _Invalid(Exception):
    """Internal: the bytes at the parse position cannot be what the state expects."""


@dataclass(slots=True)
class _Head:
    """The start line and header block of the message being parsed."""

    first: str  # method, or status code as text
    second: str  # target, or reason
    version: str
    headers: Headers
    ts_ns: int


class Http1Parser:
    """One direction of an HTTP/1.x connection: ``feed`` Segments, get events.

    ``kind`` says which messages the direction carries. A response parser must
    be told, in order, the method of each request it will answer
    (``expect_response_to``) so that HEAD and CONNECT responses are framed
    right. ``from_start=True`` promises the first byte fed is the first byte of
    the connection, so a truncated first segment counts as a lost message.
    ``pipelined=True`` pairs responses with queued requests in order (HTTP/1's
    rule; load tools and proxies do pipeline). After a lost message (this parser's,
    or the request direction's, see ``note_request_loss``) the count is off, and
    time order decides: a response answers the latest queued request that started
    before it, unless pipelining was seen on the connection (two requests
    outstanding at once, see ``note_pipelining``): then only a response with
    exactly one candidate is paired, and otherwise none is (``unpaired``), so a
    lost message never shifts a pairing. ``pipelined=False`` always pairs by time.
    """

    def __init__(
        self,
        kind: Kind,
        *,
        from_start: bool = False,
        pipelined: bool = False,
        emit_body: bool = False,
    ) -> None:
        if kind not in ("request", "response"):
            raise Http1UsageError(f"kind must be 'request' or 'response', not {kind!r}")
        self.kind: Kind = kind
        self.stats = Http1ParseStats()
        self._pipelined = pipelined
        self._emit_body = emit_body
        self._from_start = from_start
        self._first_ts: int | None = None  # this direction's first segment
        self._state = _State.SCAN
        # In sync: the next byte should start a message (so garbage is invalid,
        # and a truncated start is a lost message rather than an unknown gap).
        self._synced = from_start
        self._lost_since_pair = False
        self._pipelining_seen = False  # two requests outstanding at once on this connection
        self._requests_hidden = False  # the request direction lost messages (count unknown)
        self._requests_lost_after: int | None = None  # ... at unknown times after this
        self._resync_reason = "mid_stream_start"  # why bytes are being skipped, for the event
        self._buf = bytearray()
        self._pos = 0
        self._base = 0  # stream offset (captured bytes) of _buf[0]
        self._seg_starts: list[int] = []  # stream offsets of buffered segments
        self._seg_ts: list[int] = []
        self._last_ts = 0
        self._skip_pending = 0  # bytes skipped since the last start line
        self._expected: deque[tuple[str | None, int]] = deque()
        # Message under construction.
        self._head: _Head | None = None
        self._line_end = 0  # relative to _pos: end of the start line
        self._hdr_search = 0  # relative to _pos: where to resume looking for the blank line
        self._remaining = 0
        self._body = 0
        self._truncated = 0
        self._unsure: str | None = None
        self._peek_framing: tuple[bool, int | None, bool] = (False, None, False)
        self._events: list[Event] = []
        self._tunnel_next = False  # switch_protocols() came in the middle of a message
        self._field_cache: dict[bytes, tuple[Headers, tuple[bool | None, int | None]]] = {}
        self._line_cache: dict[bytes, tuple[str, str, str]] = {}
        # _whole's last head: its bytes, length, start line, fields and framing
        self._last_head: (
            tuple[bytes, int, str, str, str, Headers, bool | None, int | None] | None
        ) = None

    # -- public API -------------------------------------------------------------

    @property
    def state(self) -> str:
        """The internal state's name, for diagnostics and tests."""
        return self._state.value

    @property
    def buffered(self) -> int:
        """Bytes held waiting for more (a partial start line, header block or chunk line)."""
        return len(self._buf) - self._pos

    def pending_since(self) -> int | None:
        """When the oldest byte still buffered arrived (a message begun there is still to
        come), or None when nothing is buffered."""
        return self._ts_at(self._pos) if len(self._buf) > self._pos else None

    def expect_response_to(self, method: str | None, ts_ns: int = 0) -> None:
        """Queue the method (None if unknown) of a request whose response this parser will see."""
        if self.kind != "response":
            raise Http1UsageError("expect_response_to() is for response parsers")
        self._expected.append((method, ts_ns))

    @property
    def pipelining_seen(self) -> bool:
        """Two requests were outstanding at once on this connection (as far as seen)."""
        return self._pipelining_seen

    def note_request_loss(self) -> None:
        """The request direction lost sync: requests may be missing from the queue, so
        in-order pairing is off until a response is paired by time again."""
        self._lost_since_pair = True
        self._requests_hidden = True

    def note_requests_lost_after(self, ts_ns: int) -> None:
        """Requests were lost at unknown times after ``ts_ns``: a queued request after it
        may follow a lost one, and a response after it may answer one, so neither pairs."""
        had = self._requests_lost_after
        self._requests_lost_after = ts_ns if had is None else min(had, ts_ns)

    def note_pipelining(self) -> None:
        """The other direction showed two requests outstanding at once on this connection:
        after a loss, time order no longer says which request a response answers."""
        self._pipelining_seen = True

    def switch_protocols(self) -> None:
        """The other direction switched protocols (101, CONNECT 2xx): what follows the
        message in progress (or from now, between messages) is no longer HTTP/1."""
        if self._state is _State.SCAN:
            self._state = _State.TUNNEL
        elif self._state is not _State.CLOSED:
            self._tunnel_next = True

    def feed(self, seg: Segment) -> list[Event]:
        """Parse one segment; returns the events it completed."""
        if self._state is _State.CLOSED:
            raise Http1UsageError("feed() after end()")
        self._events = []
        self.stats.segments += 1
        self.stats.bytes += max(seg.orig_len, len(seg.data))
        self.stats.captured_bytes += len(seg.data)
        self._last_ts = seg.ts_ns
        if self._first_ts is None:
            self._first_ts = seg.ts_ns
        if (
            self._state is _State.SCAN and self._synced and not self._buf and seg.data
            and not self._skip_pending
            and not self._emit_body and not self._tunnel_next and self._whole(seg)
        ):  # fmt: skip
            return self._events
        if seg.data:
            self._seg_starts.append(self._base + len(self._buf))
            self._seg_ts.append(seg.ts_ns)
            self._buf += seg.data
            self._run(seg.ts_ns)
        if seg.truncated > 0:
            self._gap(seg.truncated, seg.ts_ns)
        self._compact()
        return self._events

    def end(self, ts_ns: int | None = None) -> list[Event]:
        """The connection closed (or observation stopped): finish or account for what is open."""
        if self._state is _State.CLOSED:
            return []
        self._events = []
        ts = self._last_ts if ts_ns is None else ts_ns
        st = self._state
        if st is _State.BODY_CLOSE:
            self._complete(self._last_ts)
        elif st is _State.SCAN:
            leftover = self._buf[self._pos :]
            if not self._synced or leftover.strip(b"\r\n"):
                self._skip_pending += len(leftover)
        elif st is _State.HEADERS:
            self._lose(STREAM_ENDED, headers_seen=False, ts_ns=ts, start=self._head)
            self._skip_pending += len(self._buf) - self._pos
        elif st is _State.PEEK:  # nothing followed the headers: a HEAD's, or a cut body
            self._lose(METHOD_UNKNOWN, headers_seen=True, ts_ns=ts)
        elif st is not _State.TUNNEL:
            self._lose(STREAM_ENDED, headers_seen=True, ts_ns=ts)
        self.stats.skipped_bytes += self._skip_pending
        self._skip_pending = 0
        self._buf.clear()
        self._pos = 0
        self._state = _State.CLOSED
        return self._events

    # -- driving loop -----------------------------------------------------------

    def _run(self, ts: int) -> None:
        while True:
            try:
                outcome = self._step(ts)
            except _Invalid:
                outcome = ParseState.INVALID
            if outcome is ParseState.NEEDS_MORE_DATA:
                return
            if outcome is ParseState.INVALID:
                self._invalid()

    def _step(self, ts: int) -> ParseState:
        st = self._state
        if st is _State.SCAN:
            return self._scan()
        if st is _State.HEADERS:
            return self._headers(ts)
        if st is _State.BODY_LENGTH or st is _State.CHUNK_DATA:
            return self._body_data(ts)
        if st is _State.CHUNK_SIZE:
            return self._chunk_size(ts)
        if st is _State.CHUNK_DATA_END:
            return self._chunk_data_end()
        if st is _State.TRAILERS:
            return self._trailers(ts)
        if st is _State.BODY_CLOSE:
            return self._body_close(ts)
        if st is _State.PEEK:
            return self._peek(ts)
        # TUNNEL: the bytes are another protocol now.
        n = len(self._buf) - self._pos
        self.stats.tunnel_bytes += n
        self._pos += n
        return ParseState.NEEDS_MORE_DATA

    # -- start line and header block -----------------------------------------------

    def _scan(self) -> ParseState:
        buf, pos = self._buf, self._pos
        if self._synced:
            # Empty lines between messages are tolerated (RFC 9112 section 2.2).
            while pos < len(buf) and buf[pos] in b"\r\n":
                pos += 1
            self._pos = pos
        if pos >= len(buf):
            return ParseState.NEEDS_MORE_DATA
        pattern = _REQUEST_LINE if self.kind == "request" else _STATUS_LINE
        m = pattern.search(buf, pos)
        if m is None:
            # A future start line has no '\n' before its end, so everything up to
            # the last '\n' (and beyond the longest start line) can go.
            keep = max(buf.rfind(b"\n", pos) + 1, len(buf) - MAX_START_LINE - 16, pos)
            if self._synced and keep > pos:
                self._mark_garbage()
            self._skip_pending += keep - pos
            self._pos = keep
            return ParseState.NEEDS_MORE_DATA
        if m.start() > pos:
            if self._synced:
                self._mark_garbage()
            self._skip_pending += m.start() - pos
        msg_ts = self._ts_at(m.start())
        if self._skip_pending:
            self.stats.resyncs += 1
            self.stats.skipped_bytes += self._skip_pending
            self._events.append(Resynchronised(self._skip_pending, msg_ts, self._resync_reason))
            self._skip_pending = 0
        self._resync_reason = "garbage"  # what a later loss of sync will be, unless told
        self._synced = True
        first, second, version = self._start_line(m)
        self._head = _Head(first, second, version, [], msg_ts)
        self._pos = m.start()
        self._line_end = m.end() - m.start()
        self._hdr_search = self._line_end - 1
        self._state = _State.HEADERS
        return ParseState.SUCCESS

    def _start_line(self, m: re.Match[bytes]) -> tuple[str, str, str]:
        """(method, target, version) or (status, reason, version) of a matched start line;
        a busy connection repeats a few start lines: each is decoded once."""
        line = m.group()
        got = self._line_cache.get(line)
        if got is None:
            g = [x.decode("latin-1") if x is not None else "" for x in m.groups()]
            if self.kind == "request":
                got = (g[0], g[1], f"HTTP/1.{g[2]}")
            else:
                got = (g[1], g[2], f"HTTP/1.{g[0]}")
            if len(self._line_cache) >= _FIELD_CACHE:
                self._line_cache.clear()
            self._line_cache[line] = got
        return got

    def _whole(self, seg: Segment) -> bool:
        """The common case of keep-alive traffic, without the state machine: ``seg`` arrives
        between messages and holds exactly one whole message framed by its length (or with
        no body), its body's end possibly cut by the capture (the kernel side skips bodies
        it need not see). Emits what the general path would for it and says True; says
        False having changed nothing whenever anything is otherwise (the general path then
        runs)."""
        data = seg.data
        size = seg.orig_len
        if size < len(data):
            return False
        request = self.kind == "request"
        last = self._last_head
        if last is not None and data.startswith(last[0]):
            # the last head again (a keep-alive client's next request, its answer within
            # the same second): the regexes read no byte past a head's end, so what they
            # found there holds (_whole was a tenth of a soak's main process, now 5%)
            _, end, first, second, version, headers, chunked, length = last
        else:
            m = (_REQUEST_LINE if request else _STATUS_LINE).match(data)
            if m is None:
                return False
            h = _HEADER_END.search(data, m.end() - 1)
            if h is None or h.end() > MAX_HEADER_BLOCK:
                return False
            try:
                headers, (chunked, length) = self._fields(data[m.end() : h.start() + 1])
            except _Invalid:
                return False
            first, second, version = self._start_line(m)
            end = h.end()
            self._last_head = (data[:end], end, first, second, version, headers, chunked, length)
        ts = seg.ts_ns
        if request:
            body = length or 0
            if chunked is not False or end + body != size:
                return False
            head: Event = RequestHeadersParsed(first, second, version, headers, ts)
        else:
            status = int(first)
            q, gone = self._expected, self._requests_lost_after
            # only the in-order pairing of ``_pair`` (both counts exact), which it then takes
            if 100 <= status < 200 or not q or not self._pipelined or self._lost_since_pair or (
                gone is not None and q[0][1] > gone
            ):
                return False
            method = q[0][0]
            if method is None or method == "CONNECT":
                return False
            if method == "HEAD" or status in (204, 304):
                body = 0
            elif chunked is not False or length is None:
                return False
            else:
                body = length
            if end + body != size:
                return False
            method, matched, unanswered, unpaired = self._pair(ts)
            head = ResponseHeadersParsed(status, second, version, headers, ts, method, matched,
                                         unanswered, unpaired)  # fmt: skip
        self._resync_reason = "garbage"
        self._base += len(data)
        self.stats.messages += 1
        cut = size - len(data)  # of the body (the head is all in data)
        self.stats.truncated_bytes += cut
        self._events = [head, MessageCompleted(body, cut, ts, [], None)]
        return True

    def _mark_garbage(self) -> None:
        """Bytes where a message should have started were not one: count once per episode."""
        self.stats.invalid += 1
        self._synced = False

    def _headers(self, ts: int) -> ParseState:
        buf, pos = self._buf, self._pos
        m = _HEADER_END.search(buf, pos + self._hdr_search)
        if m is None or m.end() - pos > MAX_HEADER_BLOCK:
            if len(buf) - pos > MAX_HEADER_BLOCK:
                raise _Invalid("header block too large")
            self._hdr_search = max(self._line_end - 1, len(buf) - pos - 2)
            return ParseState.NEEDS_MORE_DATA
        head = self._head
        assert head is not None
        head.headers, framing = self._fields(bytes(buf[pos + self._line_end : m.start() + 1]))
        end = m.end()
        if self.kind == "request":
            self._begin_request_body(head, end, ts, framing)
        else:
            self._begin_response_body(head, end, ts, framing)
        return ParseState.SUCCESS

    def _fields(self, block: bytes) -> tuple[Headers, tuple[bool | None, int | None]]:
        """A header block's fields and framing; a busy connection repeats the same few
        blocks, so they are parsed once (the lists are shared: events are read only)."""
        got = self._field_cache.get(block)
        if got is None:
            headers = _parse_fields(block)
            got = (headers, _framing(headers))
            if len(self._field_cache) >= _FIELD_CACHE:
                self._field_cache.clear()
            self._field_cache[block] = got
        return got

    def _begin_request_body(
        self, head: _Head, end: int, ts: int, framing: tuple[bool | None, int | None]
    ) -> None:
        chunked, length = framing
        if chunked is None:
            raise _Invalid("unsupported transfer-coding on a request")
        self._pos = end
        self._events.append(
            RequestHeadersParsed(head.first, head.second, head.version, head.headers, head.ts_ns)
        )
        self._start_body(chunked, length, close_delimited=False, ts=ts)

    def _begin_response_body(
        self, head: _Head, end: int, ts: int, framing: tuple[bool | None, int | None]
    ) -> None:
        if not head.first.isdigit():
            raise _Invalid("status code")
        status = int(head.first)
        chunked, length = framing
        self._pos = end
        if 100 <= status < 200 and status != 101:
            self.stats.informational += 1
            self._events.append(
                InformationalResponseParsed(
                    status, head.second, head.version, head.headers, head.ts_ns
                )
            )
            self._head = None
            self._state = _State.SCAN
            return
        method, matched, unanswered, unpaired = self._pair(head.ts_ns)
        self._events.append(
            ResponseHeadersParsed(
                status,
                head.second,
                head.version,
                head.headers,
                head.ts_ns,
                request_method=method,
                matched=matched,
                unanswered=unanswered,
                unpaired=unpaired,
            )
        )
        if status == 101 or (method == "CONNECT" and 200 <= status < 300):
            self._reset_body()
            self._complete(ts)
            self._state = _State.TUNNEL
            return
        if method == "HEAD" or status in (204, 304):
            self._start_body(False, 0, close_delimited=False, ts=ts)
        elif method is None and (chunked is not False or length or length is None):
            # every framing but Content-Length: 0 is one a HEAD response could carry
            self._reset_body()
            self._peek_framing = (chunked is True, length, chunked is None or (
                chunked is False and length is None))
            self._state = _State.PEEK
        elif chunked is None:  # a transfer-coding other than chunked: ends at close
            self._start_body(False, None, close_delimited=True, ts=ts)
        else:
            self._start_body(chunked, length, close_delimited=length is None, ts=ts)

    def _start_body(
        self, chunked: bool, length: int | None, *, close_delimited: bool, ts: int
    ) -> None:
        self._reset_body()
        if chunked:
            self._state = _State.CHUNK_SIZE
        elif close_delimited:
            self._state = _State.BODY_CLOSE
        elif length:
            self._remaining = length
            self._state = _State.BODY_LENGTH
        else:
            self._complete(ts)

    def _reset_body(self) -> None:
        self._remaining = 0
        self._body = 0
        self._truncated = 0
        self._unsure = None

    def _peek(self, ts: int) -> ParseState:
        """Body or next response? Only the next response (or nothing) follows a HEAD's."""
        buf, pos = self._buf, self._pos
        while pos < len(buf) and buf[pos] in b"\r\n":  # blank lines between messages
            pos += 1
        ahead = bytes(buf[pos : pos + len(_STATUS_PREFIX)])
        if len(ahead) < len(_STATUS_PREFIX) and _STATUS_PREFIX.startswith(ahead):
            return ParseState.NEEDS_MORE_DATA
        chunked, length, close_delimited = self._peek_framing
        if ahead == _STATUS_PREFIX:
            self._unsure = METHOD_UNKNOWN  # most likely a HEAD's: not proven
            self._complete(ts)
        elif close_delimited:
            # to the close: a body, or a CONNECT tunnel; its size is not proven either way
            self._start_body(False, None, close_delimited=True, ts=ts)
            self._unsure = METHOD_UNKNOWN
        else:  # bytes that cannot start a response follow the headers: a body, framed
            self._start_body(chunked, length, close_delimited=False, ts=ts)
        return ParseState.SUCCESS

    def _pair(self, ts: int) -> tuple[str | None, bool, int, bool]:
        """Consume the queued request this response (or lost response) answers:
        (its method, matched, unanswered requests dropped before it, unpaired)."""
        q = self._expected
        lost, self._lost_since_pair = self._lost_since_pair, False
        if not q:
            return None, False, 0, False
        k = 0  # requests that started before this response: the candidates
        while k < len(q) and q[k][1] <= ts:
            k += 1
        # Found mid-stream, with candidates queued before this direction's first call seen:
        # the oldest's answer may be in a call before that, never numbered (hooks reach a
        # running process one at a time), so the count is not exact. Pipelining (this answers
        # the oldest) and a missed answer (this answers the latest) show the same calls:
        # which it answers is unknown, and no pipelining is concluded (unless the caller
        # ruled pipelining out: then the latest, as always). A part after lost calls is
        # not this: its gap was numbered, and it pairs as after any loss.
        unproven = (self._pipelined and k > 1 and not self._from_start
                    and not self._requests_hidden and q[0][1] < (self._first_ts or 0))  # fmt: skip
        gone = self._requests_lost_after
        if self._pipelined and not lost and not unproven and (gone is None or q[0][1] <= gone):
            # both counts exact up to the oldest queued request: it is the one answered
            if k > 1:
                self._pipelining_seen = True
            return q.popleft()[0], True, 0, False
        if k == 0:
            return None, False, 0, False
        # a request lost at an unknown time may be the one answered
        lost_between = gone is not None and ts > gone
        if not lost_between and not unproven and (not self._pipelined or not self._pipelining_seen
                                                  or (k == 1 and not self._requests_hidden)):
            # The latest request that started before this response; older ones lost theirs
            # (one at a time on the connection, or only one candidate).
            for _ in range(k - 1):
                q.popleft()
            return q.popleft()[0], True, k - 1, False
        # Any of the k may be the one (pipelining, or requests lost among them). The oldest
        # is answered by now (by this response or one lost before it); the count stays
        # unknown.
        self._lost_since_pair = True
        frames = {m for m, _ in list(q)[:k]}
        method = q.popleft()[0]
        if frames & {None, "HEAD", "CONNECT"}:
            method = None  # the body's framing hangs on which it answers
        return method, False, 0, True

    # -- bodies -----------------------------------------------------------------

    def _body_data(self, ts: int) -> ParseState:
        avail = len(self._buf) - self._pos
        if avail == 0:
            return ParseState.NEEDS_MORE_DATA
        n = min(avail, self._remaining)
        self._take_body(n, ts)
        self._remaining -= n
        if self._remaining:
            return ParseState.NEEDS_MORE_DATA
        if self._state is _State.CHUNK_DATA:
            self._state = _State.CHUNK_DATA_END
        else:
            self._complete(ts)
        return ParseState.SUCCESS

    def _body_close(self, ts: int) -> ParseState:
        self._take_body(len(self._buf) - self._pos, ts)
        return ParseState.NEEDS_MORE_DATA

    def _take_body(self, n: int, ts: int) -> None:
        if self._emit_body and n:
            self._events.append(BodyDataReceived(bytes(self._buf[self._pos : self._pos + n]), ts))
        self._pos += n
        self._body += n

    def _chunk_size(self, ts: int) -> ParseState:
        buf, pos = self._buf, self._pos
        nl = buf.find(b"\n", pos, pos + MAX_CHUNK_LINE)
        if nl < 0:
            if len(buf) - pos >= MAX_CHUNK_LINE:
                raise _Invalid("chunk-size line too long")
            return ParseState.NEEDS_MORE_DATA
        size_text = bytes(buf[pos:nl]).split(b";", 1)[0].strip(b" \t\r")
        if not _HEX.fullmatch(size_text):
            raise _Invalid("chunk size")
        size = int(size_text, 16)
        self._pos = nl + 1
        if size == 0:
            self._state = _State.TRAILERS
        else:
            self._remaining = size
            self._state = _State.CHUNK_DATA
        return ParseState.SUCCESS

    def _chunk_data_end(self) -> ParseState:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            return ParseState.NEEDS_MORE_DATA
        if buf[pos] == 0x0A:
            self._pos = pos + 1
        elif buf[pos] == 0x0D:
            if pos + 1 >= len(buf):
                return ParseState.NEEDS_MORE_DATA
            if buf[pos + 1] != 0x0A:
                raise _Invalid("chunk data not followed by CRLF")
            self._pos = pos + 2
        else:
            raise _Invalid("chunk data not followed by CRLF")
        self._state = _State.CHUNK_SIZE
        return ParseState.SUCCESS

    def _trailers(self, ts: int) -> ParseState:
        buf, pos = self._buf, self._pos
        if pos >= len(buf) or (buf[pos] == 0x0D and pos + 1 >= len(buf)):
            return ParseState.NEEDS_MORE_DATA
        if buf[pos] == 0x0A or buf[pos : pos + 2] == b"\r\n":  # no trailer fields
            self._pos = pos + (1 if buf[pos] == 0x0A else 2)
            self._complete(ts)
            return ParseState.SUCCESS
        m = _HEADER_END.search(buf, pos, pos + MAX_HEADER_BLOCK)
        if m is None:
            if len(buf) - pos >= MAX_HEADER_BLOCK:
                raise _Invalid("trailer block too large")
            return ParseState.NEEDS_MORE_DATA
        trailers = _parse_fields(bytes(buf[pos : m.start() + 1]))
        self._pos = m.end()
        self._complete(ts, trailers)
        return ParseState.SUCCESS

    # -- outcomes ---------------------------------------------------------------

    def _complete(self, ts: int, trailers: Headers | None = None) -> None:
        self.stats.messages += 1
        self._events.append(
            MessageCompleted(self._body, self._truncated, ts, trailers or [], self._unsure)
        )
        self._head = None
        self._reset_body()
        self._state = _State.TUNNEL if self._tunnel_next else _State.SCAN
        self._synced = True

    def _lose(
        self, reason: str, *, headers_seen: bool, ts_ns: int, start: _Head | None = None
    ) -> None:
        """A message certainly existed and is given up; the stream is out of sync after it.
        ``start``: its start line, when that was whole and only the header block was cut."""
        if start is not None and self.kind == "response" and start.first[:1] == "1" and (
            start.first != "101"
        ):
            # a cut 100 Continue: not an answer, but what its hidden bytes held is unknown
            self.stats.informational += 1
            self._out_of_sync()
            return
        self.stats.lost_messages += 1
        method, matched, unanswered, unpaired = None, False, 0, False
        if not headers_seen and self.kind == "response":
            method, matched, unanswered, unpaired = self._pair(ts_ns)
        line = (start.first, start.second, start.version) if start is not None else None
        lost = MessageLost(reason, headers_seen, self._body, ts_ns, method, matched, unanswered,
                           line, unpaired)  # fmt: skip
        self._events.append(lost)
        self._out_of_sync()

    def _out_of_sync(self) -> None:
        """After a loss: pairing by count is off, and the next start line is looked for."""
        self._lost_since_pair = True
        self._resync_reason = "after_loss"
        self._head = None
        self._reset_body()
        self._state = _State.SCAN
        self._synced = False

    def _invalid(self) -> None:
        """The bytes at the parse position broke the framing: count, then resynchronise."""
        self.stats.invalid += 1
        st = self._state
        if st is _State.HEADERS:
            # A start line whose header block failed is not known to be a message:
            # skip its first byte and look again.
            self._head = None
            self._skip_pending += 1
            self._pos += 1
            self._state = _State.SCAN
            self._synced = False
            self._lost_since_pair = True
            return
        # Chunk framing or trailers broke after the headers were reported.
        self._lose(INVALID_FRAMING, headers_seen=True, ts_ns=self._last_ts)

    def _gap(self, n: int, ts: int) -> None:
        """``n`` bytes the syscall moved but the capture limit cut, right after the buffer."""
        st = self._state
        if st is _State.BODY_LENGTH or st is _State.CHUNK_DATA:
            hidden = min(n, self._remaining)
            self._remaining -= hidden
            self._body += hidden
            self._truncated += hidden
            self.stats.truncated_bytes += hidden
            n -= hidden
            if self._remaining == 0:
                if st is _State.BODY_LENGTH:
                    self._complete(ts)
                elif n == 0:
                    self._state = _State.CHUNK_DATA_END
                    return
                else:
                    # The CRLF and the next size line are unseen: the framing is gone.
                    self._skip_pending += n
                    self._lose(TRUNCATED_PAYLOAD, headers_seen=True, ts_ns=ts)
                    return
            if n == 0:
                return
        elif st is _State.BODY_CLOSE:
            self._body += n
            self._truncated += n
            self.stats.truncated_bytes += n
            return
        elif st is _State.TUNNEL:
            self.stats.tunnel_bytes += n
            return
        elif st in (_State.CHUNK_SIZE, _State.CHUNK_DATA_END, _State.TRAILERS, _State.PEEK):
            self._skip_pending += n + len(self._buf) - self._pos
            self._pos = len(self._buf)
            self._lose(TRUNCATED_PAYLOAD, headers_seen=True, ts_ns=ts)
            return
        # SCAN or HEADERS (also reached after a length-delimited body ended in the gap).
        partial = len(self._buf) - self._pos
        # In sync, the hidden bytes (or the partial start line) begin a message.
        began = self._state is _State.HEADERS or self._synced
        if self._head is not None:
            start_ts = self._head.ts_ns
        else:
            start_ts = self._ts_at(self._pos) if partial else ts
        self._skip_pending += n + partial
        self._pos = len(self._buf)
        if began:
            self._lose(TRUNCATED_PAYLOAD, headers_seen=False, ts_ns=start_ts, start=self._head)
        elif self._resync_reason == "garbage":
            self._resync_reason = "after_loss"
        self._state = _State.SCAN
        self._synced = False

    # -- buffer bookkeeping -----------------------------------------------------

    def _ts_at(self, index: int) -> int:
        """Timestamp of the segment that carried buffer byte ``index``."""
        i = bisect_right(self._seg_starts, self._base + index) - 1
        return self._seg_ts[max(i, 0)] if self._seg_ts else self._last_ts

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0
        if not self._buf:
            self._seg_starts.clear()
            self._seg_ts.clear()
            return
        # Forget segments that lie wholly before the buffer.
        i = bisect_right(self._seg_starts, self._base) - 1
        if i > 0:
            del self._seg_starts[:i]
            del self._seg_ts[:i]


# -- header helpers -----------------------------------------------------------------


def _parse_fields(block: bytes) -> Headers:
    """Parse field lines (each ending in a line break) into (name, value) pairs."""
    out: Headers = []
    lines = _LINE_SPLIT.split(block)
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not out:
                raise _Invalid("continuation line with no field before it")
            name, prev = out[-1]
            more = line.strip(b" \t").decode("latin-1")
            out[-1] = (name, f"{prev} {more}".strip())
            continue
        colon = line.find(b":")
        if colon <= 0 or not _TOKEN.fullmatch(line, 0, colon):
            raise _Invalid("malformed header field")
        value = line[colon + 1 :].strip(b" \t")
        out.append((line[:colon].decode("ascii"), value.decode("latin-1")))
    return out


def _framing(headers: Headers) -> tuple[bool | None, int | None]:
    """(chunked, content-length) from the header fields.

    chunked is None when a transfer-coding other than chunked is last (the body
    then runs to connection close); content-length is None when absent.
    Conflicting or malformed content-lengths are invalid.
    """
    te: list[str] = []
    lengths: set[str] = set()
    for name, value in headers:
        lname = name.lower()
        if lname == "transfer-encoding":
            te += [c.strip().lower() for c in value.split(",") if c.strip()]
        elif lname == "content-length":
            lengths.update(v.strip() for v in value.split(","))
    if te:
        return (True if te[-1] == "chunked" else None), None
    if not lengths:
        return False, None
    if len(lengths) != 1:
        raise _Invalid("conflicting content-length")
    (text,) = lengths
    if not _DIGITS.fullmatch(text):
        raise _Invalid("content-length")
    return False, int(text)
