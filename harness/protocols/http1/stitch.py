"""HTTP/1.x stitcher: the two directions of one connection into request/response Exchanges."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from harness.model import Exchange, Source
from harness.protocols.common import Segment
from harness.protocols.http1.parse import (
    PAIRING_UNKNOWN,
    Event,
    Headers,
    Http1Parser,
    Http1ParseStats,
    Http1UsageError,
    InformationalResponseParsed,
    MessageCompleted,
    MessageLost,
    RequestHeadersParsed,
    ResponseHeadersParsed,
    Resynchronised,
)

# Degradation reasons this module adds to the parser's (truncated_payload, stream_ended,
# invalid_framing, method_unknown, pairing_unknown).
NO_RESPONSE = "no_response"
REQUEST_MISSED = "request_missed"


@dataclass(slots=True)
class Http1Stats:
    """One connection's stitching outcome, beside each direction's parse stats."""

    requests: Http1ParseStats = field(default_factory=Http1ParseStats)
    responses: Http1ParseStats = field(default_factory=Http1ParseStats)
    # Exchanges returned. conn_seq counts them from 0, skipping one number wherever lost
    # request bytes may have held requests (the position after it is not known)
    exchanges: int = 0
    complete: int = 0  # returned with nothing degraded
    no_response: int = 0  # request seen, its response never parsed
    request_missed: int = 0  # response seen, its request not
    unpaired: int = 0  # requests whose answer could not be told apart after a loss
    lost_requests: int = 0  # requests known to exist but lost (truncated/ended headers)
    lost_responses: int = 0
    degraded_payload: int = 0  # req_bytes/resp_bytes unknown (framing lost)
    informational: int = 0  # 1xx interim responses (100 Continue), not exchanges
    # Either direction began mid-message (late attach): exchanges before the first
    # one returned were missed and the caller must offset conn_seq.
    started_mid_stream: bool = False
    pipelining: bool = False  # two requests were outstanding at once on the connection


_DICT_CACHE = 64  # as the parser's header-block cache


def _header_dict(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _protocol(version: str) -> str:
    return "http/1.0" if version == "HTTP/1.0" else "http/1.1"


def _authority(target: str, headers: dict[str, str]) -> str | None:
    if "host" in headers:
        return headers["host"]
    if target.startswith(("http://", "https://")):  # absolute-form (proxy requests)
        return urlsplit(target).netloc or None
    return None


class Http1Stitcher:
    """Applies both parsers' events to Exchanges; pending requests mirror the parser's queue.

    Incremental: ``feed`` a connection's segments as they come (requests and responses in
    the order ``Http1Stream`` merges them) and take each exchange as soon as nothing can change
    it any more (``ready``), in the order they began; only the exchanges still open stay.
    """

    def __init__(
        self, side: Literal["client", "server"], source: Source, from_start: bool, pipelined: bool,
        after_loss: bool = False, pipelining: bool = False,
        requests_lost_after: int | None = None,
    ) -> None:  # fmt: skip
        self.side = side
        self.source: Source = source
        self.req = Http1Parser("request", from_start=from_start, pipelined=pipelined)
        self.resp = Http1Parser("response", from_start=from_start, pipelined=pipelined)
        if after_loss:
            self.resp.note_request_loss()
        if pipelining:
            self.resp.note_pipelining()
        if requests_lost_after is not None:
            self.resp.note_requests_lost_after(requests_lost_after)
        self.seq = 0  # exchanges begun so far (conn_seq of the next)
        # begun, in order, not yet handed out: the first ones go once nothing can change them
        self.open: deque[Exchange] = deque()
        self.done: list[Exchange] = []  # finished, not yet taken by ``ready``
        self.pending: deque[Exchange] = deque()  # lockstep with self.resp's expected queue
        self._pending_ids: set[int] = set()
        self.cur_req: Exchange | None = None
        self.cur_resp: Exchange | None = None
        self.stats = Http1Stats(self.req.stats, self.resp.stats)
        self.protocol = "http/1.1"  # last version seen, for exchanges known only by a loss
        self.seq_gap = False  # skip a conn_seq before the next exchange
        # Messages begun in one direction since the other's last bytes: a second request
        # before any answer, or a second answer before any new request, means several
        # requests were outstanding at once (pipelining), however much a budget hid.
        self._starts = {True: 0, False: 0}
        # Directions that have shown bytes. Found mid-stream, a direction's calls before its
        # first one seen went unnumbered, so messages of the other direction before then do
        # not count as outstanding at once: a missed answer (or request) may part them.
        self._seen = {True: from_start, False: from_start}
        # header lists the parser shares between equal blocks -> their dict, made once
        self._dicts: dict[int, tuple[Headers, dict[str, str]]] = {}

    def _hdict(self, headers: Headers) -> dict[str, str]:
        """The headers as a dict, one shared dict per list the parser shares (exchanges'
        dicts are read only once stitched; the Sharer shares them later anyway)."""
        got = self._dicts.get(id(headers))
        if got is not None and got[0] is headers:
            return got[1]
        d = _header_dict(headers)
        if len(self._dicts) >= _DICT_CACHE:
            self._dicts.clear()
        self._dicts[id(headers)] = (headers, d)
        return d

    def _new(self) -> Exchange:
        x = Exchange(
            source=self.source, side=self.side, protocol=self.protocol,
            conn_seq=self.seq + self.seq_gap,
        )  # fmt: skip
        self.seq += 1 + self.seq_gap
        self.seq_gap = False
        self.open.append(x)
        return x

    def feed(self, is_request: bool, seg: Segment) -> None:
        events = (self.req if is_request else self.resp).feed(seg)
        starts = self._starts
        if seg.orig_len:
            starts[not is_request] = 0
            self._seen[is_request] = True
        for ev in events if self._seen[not is_request] else ():
            t = type(ev)  # (events are final classes: ``is`` is isinstance here, cheaper)
            if t is RequestHeadersParsed or t is ResponseHeadersParsed or (
                t is MessageLost and not ev.headers_seen  # type: ignore[union-attr]
            ):
                starts[is_request] += 1
        if starts[is_request] > 1:
            self.resp.note_pipelining()
        (self.on_request if is_request else self.on_response)(events)
        self._settle()

    def _settle(self) -> None:
        """Hand out the first open exchanges that no request or response still refers to."""
        while self.open:
            x = self.open[0]
            if x is self.cur_req or x is self.cur_resp or id(x) in self._pending_ids:
                return
            self.open.popleft()
            self.stats.exchanges += 1
            if not x.degraded:
                self.stats.complete += 1
            elif any(d.field in ("req_bytes", "resp_bytes") and d.reason != REQUEST_MISSED
                     for d in x.degraded):  # fmt: skip
                self.stats.degraded_payload += 1
            self.done.append(x)

    def ready(self) -> list[Exchange]:
        """The exchanges finished since the last call, in the order they began."""
        out, self.done = self.done, []
        return out

    # -- request direction ----------------------------------------------------------

    def _requests_lost(self) -> None:
        """Lost request bytes may have held whole requests: pairing and position restart."""
        self.resp.note_request_loss()
        self.seq_gap = True

    def on_request(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, RequestHeadersParsed):
                self.protocol = _protocol(ev.version)
                x = self._new()
                x.method, x.path, x.t_start_ns = ev.method, ev.target, ev.ts_ns
                x.req_headers = self._hdict(ev.headers)
                x.authority = _authority(ev.target, x.req_headers)
                self._expect(x, ev.method, ev.ts_ns)
            elif isinstance(ev, MessageCompleted):
                if self.cur_req is not None:
                    self.cur_req.req_bytes = ev.body_bytes
                self.cur_req = None
            elif isinstance(ev, MessageLost):
                if ev.headers_seen:
                    if self.cur_req is not None:
                        self.cur_req.degrade("req_bytes", ev.reason)
                else:
                    self.stats.lost_requests += 1
                    x = self._new()
                    x.t_start_ns = ev.ts_ns
                    method = None
                    if ev.start_line is not None:  # the header block was cut, not the line
                        method, x.path, version = ev.start_line
                        x.method, x.protocol = method, _protocol(version)
                    for name in ("method", "path", "authority", "req_bytes"):
                        if getattr(x, name) is None:
                            x.degrade(name, ev.reason)
                    self._expect(x, method, ev.ts_ns)
                self.cur_req = None
                self._requests_lost()  # what the lost bytes held is unknown
            elif isinstance(ev, Resynchronised):
                if ev.reason == "mid_stream_start":
                    self.stats.started_mid_stream = True
                else:
                    self._requests_lost()

    def _expect(self, x: Exchange, method: str | None, ts_ns: int) -> None:
        self.cur_req = x
        self.pending.append(x)
        self._pending_ids.add(id(x))
        self.resp.expect_response_to(method, ts_ns)

    # -- response direction ---------------------------------------------------------

    def on_response(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, ResponseHeadersParsed) and ev.unpaired:
                self._unpaired()
                self.cur_resp = None
            elif isinstance(ev, ResponseHeadersParsed):
                x = self._paired(ev.matched, ev.unanswered, ev.version)
                x.status = ev.status
                x.resp_headers = self._hdict(ev.headers)
                self.cur_resp = x
                if ev.status == 101 or (ev.request_method == "CONNECT" and ev.status < 300):
                    # the exchange ends at the switch; the client's next bytes are not HTTP
                    self.req.switch_protocols()
            elif isinstance(ev, MessageCompleted):
                if self.cur_resp is not None:
                    if ev.unsure:
                        self.cur_resp.degrade("resp_bytes", ev.unsure)
                    else:
                        self.cur_resp.resp_bytes = ev.body_bytes
                    self.cur_resp.t_end_ns = ev.ts_ns
                    if ev.trailers:
                        self.cur_resp.trailers = _header_dict(ev.trailers)
                self.cur_resp = None
            elif isinstance(ev, MessageLost):
                if ev.headers_seen:
                    lost: Exchange | None = self.cur_resp
                elif ev.unpaired:
                    self.stats.lost_responses += 1
                    self._unpaired()
                    lost = None
                else:
                    self.stats.lost_responses += 1
                    lost = self._paired(ev.matched, ev.unanswered, None)
                    if ev.start_line is not None:  # the status line was whole
                        lost.status = int(ev.start_line[0])
                        self.protocol = _protocol(ev.start_line[2])
                    else:
                        lost.degrade("status", ev.reason)
                if lost is not None:
                    lost.degrade("resp_bytes", ev.reason)
                    lost.t_end_ns = ev.ts_ns
                self.cur_resp = None
            elif isinstance(ev, InformationalResponseParsed):
                self.stats.informational += 1
            elif isinstance(ev, Resynchronised) and ev.reason == "mid_stream_start":
                self.stats.started_mid_stream = True

    def _paired(self, matched: bool, unanswered: int, version: str | None) -> Exchange:
        """The exchange a response answers, after dropping requests that lost theirs."""
        for _ in range(unanswered):
            self._no_response(self._pop())
        if matched:
            return self._pop()
        if version is not None:
            self.protocol = _protocol(version)
        if not self.seq:  # the connection was already mid-exchange when observation began
            self.stats.started_mid_stream = True
        x = self._new()
        self.stats.request_missed += 1
        for name in ("method", "path", "authority", "req_bytes", "t_start_ns"):
            x.degrade(name, REQUEST_MISSED)
        return x

    def _unpaired(self) -> None:
        """A response that answers one of several queued requests: the oldest of them is
        answered by now, by it or by one lost before it, and which is unknown."""
        self.stats.unpaired += 1
        x = self._pop()
        for name in ("status", "resp_bytes"):
            x.degrade(name, PAIRING_UNKNOWN)

    def _pop(self) -> Exchange:
        x = self.pending.popleft()
        self._pending_ids.discard(id(x))
        return x

    def _no_response(self, x: Exchange) -> None:
        self.stats.no_response += 1
        x.degrade("status", NO_RESPONSE)

    def finish(self, closed_ns: int | None) -> Http1Stats:
        """End both directions (at ``closed_ns``, or open); every exchange is ready then."""
        self.on_request(self.req.end(closed_ns))
        self.on_response(self.resp.end(closed_ns))
        while self.pending:
            self._no_response(self._pop())
        self.cur_req = self.cur_resp = None
        self._settle()
        self.stats.pipelining = self.resp.pipelining_seen
        return self.stats


def unpair_after(xs: list[Exchange], stats: Http1Stats, ts_ns: int) -> None:
    """Requests were lost at unknown times after ``ts_ns``, found only once ``xs`` were
    stitched (a gap noticed at a later call or the close): mark them as a stitch told of it
    up front would, or more cautiously. Requests queued by ``ts_ns`` still paired in order;
    one begun after it may have taken the answer of a lost one. After any loss of its own
    the stitch paired by time, and a response after ``ts_ns`` may answer a lost request.
    Either way that exchange's status and response size are unknown."""
    req, resp = stats.requests, stats.responses
    by_time = bool(req.lost_messages or req.resyncs or resp.lost_messages or resp.resyncs
                   or stats.unpaired)  # fmt: skip
    for x in xs:
        start = x.t_start_ns if x.t_start_ns is not None else x.t_end_ns
        end = x.t_end_ns if by_time else None
        if (start is not None and start <= ts_ns) and (end is None or end <= ts_ns):
            continue
        unknown = {d.field for d in x.degraded}
        if "status" in unknown and "resp_bytes" in unknown:
            continue  # already unknown (no response, a loss, an unprovable pairing)
        was_complete = not x.degraded
        had_payload = any(
            d.field in ("req_bytes", "resp_bytes") and d.reason != REQUEST_MISSED
            for d in x.degraded
        )
        if "status" not in unknown:
            x.status, x.resp_headers, x.trailers = None, {}, {}
            x.degrade("status", PAIRING_UNKNOWN)
            stats.unpaired += 1
        x.resp_bytes = None
        x.degrade("resp_bytes", PAIRING_UNKNOWN)
        stats.complete -= was_complete
        stats.degraded_payload += not had_payload


def stitch_http1(
    send: Iterable[Segment],
    recv: Iterable[Segment],
    *,
    side: Literal["client", "server"],
    closed_ns: int | None,
    source: Source = "",  # the collector that saw the bytes: it names itself
    from_start: bool = False,
    pipelined: bool = True,
    after_loss: bool = False,
    pipelining: bool = False,
    requests_lost_after: int | None = None,
) -> tuple[list[Exchange], Http1Stats]:
    """Parse both directions of one HTTP/1.x connection and pair requests with responses.

    ``send``/``recv`` are the observed process's written and read segments, each
    in stream order; on the client side requests are sent, on the server side
    received. ``closed_ns`` is when the connection closed (None if it was still
    open when observation stopped); it ends close-delimited bodies.
    ``from_start`` promises both directions start at the connection's first byte.
    ``pipelined`` (the default) pairs responses with requests in order, as HTTP/1
    does, falling back to time order only after a lost message; False pairs each
    response with the latest request before it, which loses all but the last of a
    pipelined burst (h2load --h1 -m 8, proxies).
    ``after_loss`` says the streams begin right after lost events (the collector's ring
    buffer overflowed): requests from before may still be unanswered, so pairing starts
    as after any loss. ``pipelining`` says the connection was seen pipelining before.
    ``requests_lost_after``: requests were lost at some unknown time after this one (a
    gap found only later), see ``Http1Parser.note_requests_lost_after``.
    Addresses, run id and scenario are the caller's to fill in.
    """
    st = Http1Stream(
        side, source=source, from_start=from_start, pipelined=pipelined, after_loss=after_loss,
        pipelining=pipelining, requests_lost_after=requests_lost_after,
    )  # fmt: skip
    for seg in send:
        st.add(True, seg)
    for seg in recv:
        st.add(False, seg)
    return st.finish(closed_ns)


class Http1Stream:
    """One HTTP/1.x connection stitched while its segments arrive, so a replay need not
    hold them: each direction keeps its own order, and both are merged in time order
    (requests first on a tie) as far as both have arrived; only segments not yet placed
    and exchanges not yet finished are held. ``exchanges`` grows as they finish."""

    def __init__(
        self, side: Literal["client", "server"], *, source: Source = "",
        from_start: bool = False, pipelined: bool = True,
        on_ready: Callable[[list[Exchange]], None] | None = None,
        after_loss: bool = False, pipelining: bool = False,
        requests_lost_after: int | None = None, hand_over: bool = False,
    ) -> None:  # fmt: skip
        if side not in ("client", "server"):
            raise Http1UsageError(f"side must be 'client' or 'server', not {side!r}")
        self.side = side
        self._client = side == "client"
        self.stitcher = Http1Stitcher(
            side, source, from_start, pipelined, after_loss, pipelining, requests_lost_after
        )
        self._req: deque[Segment] = deque()
        self._resp: deque[Segment] = deque()
        self.exchanges: list[Exchange] = []
        self._on_ready = on_ready  # each batch of finished exchanges, before it is kept
        # the exchanges given to on_ready are its own: not kept here (streamed replay)
        self._hand_over = hand_over

    def _take(self) -> None:
        if not self.stitcher.done:
            return
        xs = self.stitcher.ready()
        if xs and self._on_ready is not None:
            self._on_ready(xs)
            if self._hand_over:
                return
        self.exchanges.extend(xs)

    @property
    def held_segments(self) -> int:
        return len(self._req) + len(self._resp)

    def earliest_start(self) -> int | None:
        """The earliest start time an exchange not yet handed out can have (an exchange
        known only by its response starts at 0), or None when nothing is pending."""
        st = self.stitcher
        starts = [x.t_start_ns or 0 for x in st.open]
        starts += [q[0].ts_ns for q in (self._req, self._resp) if q]
        starts += [t for p in (st.req, st.resp) if (t := p.pending_since()) is not None]
        return min(starts, default=None)

    def add(self, sent: bool, seg: Segment) -> None:
        """A segment the observed process sent (else received), in its direction's order."""
        req, resp = self._req, self._resp
        (req if sent == self._client else resp).append(seg)
        if req and resp:  # else nothing can be placed yet (``_place`` would do nothing)
            self._place()

    def _place(self, final: bool = False) -> None:
        req, resp, st = self._req, self._resp, self.stitcher
        while req and resp:
            if req[0].ts_ns <= resp[0].ts_ns:
                st.feed(True, req.popleft())
            else:
                st.feed(False, resp.popleft())
        while final and req:
            st.feed(True, req.popleft())
        while final and resp:
            st.feed(False, resp.popleft())
        self._take()

    def finish(self, closed_ns: int | None) -> tuple[list[Exchange], Http1Stats]:
        self._place(final=True)
        stats = self.stitcher.finish(closed_ns)
        self._take()
        return self.exchanges, stats
