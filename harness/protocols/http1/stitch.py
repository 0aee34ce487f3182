"""HTTP/1.x stitcher: the two directions of one connection into request/response Exchanges."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from harness.model import Exchange, Source
from harness.protocols.common import Segment
from harness.protocols.http1.parse import (
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
# invalid_framing).
NO_RESPONSE = "no_response"
REQUEST_MISSED = "request_missed"


@dataclass(slots=True)
class Http1Stats:
    """One connection's stitching outcome, beside each direction's parse stats."""

    requests: Http1ParseStats = field(default_factory=Http1ParseStats)
    responses: Http1ParseStats = field(default_factory=Http1ParseStats)
    exchanges: int = 0  # Exchanges returned (conn_seq runs 0..exchanges-1)
    complete: int = 0  # returned with nothing degraded
    no_response: int = 0  # request seen, its response never parsed
    request_missed: int = 0  # response seen, its request not
    lost_requests: int = 0  # requests known to exist but lost (truncated/ended headers)
    lost_responses: int = 0
    degraded_payload: int = 0  # req_bytes/resp_bytes unknown (framing lost)
    informational: int = 0  # 1xx interim responses (100 Continue), not exchanges
    # Either direction began mid-message (late attach): exchanges before the first
    # one returned were missed and the caller must offset conn_seq.
    started_mid_stream: bool = False


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


def _merge(
    send: Iterable[Segment], recv: Iterable[Segment], requests_are: Literal["send", "recv"]
) -> Iterator[tuple[bool, Segment]]:
    """Both directions in time order, each kept in its own order; requests first on a tie."""
    req, resp = (send, recv) if requests_are == "send" else (recv, send)
    tagged_req = ((s.ts_ns, 0, True, s) for s in req)
    tagged_resp = ((s.ts_ns, 1, False, s) for s in resp)
    for _, _, is_req, seg in heapq.merge(tagged_req, tagged_resp, key=lambda t: t[:2]):
        yield is_req, seg


class _Stitcher:
    """Applies both parsers' events to Exchanges; pending requests mirror the parser's queue."""

    def __init__(
        self, side: Literal["client", "server"], source: Source, from_start: bool, pipelined: bool
    ) -> None:
        self.side = side
        self.source: Source = source
        self.req = Http1Parser("request", from_start=from_start, pipelined=pipelined)
        self.resp = Http1Parser("response", from_start=from_start, pipelined=pipelined)
        self.out: list[Exchange] = []
        self.pending: deque[Exchange] = deque()  # lockstep with self.resp's expected queue
        self.cur_req: Exchange | None = None
        self.cur_resp: Exchange | None = None
        self.stats = Http1Stats(self.req.stats, self.resp.stats)
        self.protocol = "http/1.1"  # last version seen, for exchanges known only by a loss

    def _new(self) -> Exchange:
        x = Exchange(
            source=self.source, side=self.side, protocol=self.protocol, conn_seq=len(self.out)
        )
        self.out.append(x)
        return x

    # -- request direction ----------------------------------------------------------

    def on_request(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, RequestHeadersParsed):
                self.protocol = _protocol(ev.version)
                x = self._new()
                x.method, x.path, x.t_start_ns = ev.method, ev.target, ev.ts_ns
                x.req_headers = _header_dict(ev.headers)
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
                    for name in ("method", "path", "authority", "req_bytes"):
                        x.degrade(name, ev.reason)
                    self._expect(x, None, ev.ts_ns)
                self.cur_req = None
            elif isinstance(ev, Resynchronised) and ev.reason == "mid_stream_start":
                self.stats.started_mid_stream = True

    def _expect(self, x: Exchange, method: str | None, ts_ns: int) -> None:
        self.cur_req = x
        self.pending.append(x)
        self.resp.expect_response_to(method, ts_ns)

    # -- response direction ---------------------------------------------------------

    def on_response(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, ResponseHeadersParsed):
                x = self._paired(ev.matched, ev.unanswered, ev.version)
                x.status = ev.status
                x.resp_headers = _header_dict(ev.headers)
                self.cur_resp = x
                if ev.status == 101 or (ev.request_method == "CONNECT" and ev.status < 300):
                    # the exchange ends at the switch; the client's next bytes are not HTTP
                    self.req.switch_protocols()
            elif isinstance(ev, MessageCompleted):
                if self.cur_resp is not None:
                    self.cur_resp.resp_bytes = ev.body_bytes
                    self.cur_resp.t_end_ns = ev.ts_ns
                    if ev.trailers:
                        self.cur_resp.trailers = _header_dict(ev.trailers)
                self.cur_resp = None
            elif isinstance(ev, MessageLost):
                if ev.headers_seen:
                    x = self.cur_resp
                else:
                    self.stats.lost_responses += 1
                    x = self._paired(ev.matched, ev.unanswered, None)
                    x.degrade("status", ev.reason)
                if x is not None:
                    x.degrade("resp_bytes", ev.reason)
                    x.t_end_ns = ev.ts_ns
                self.cur_resp = None
            elif isinstance(ev, InformationalResponseParsed):
                self.stats.informational += 1
            elif isinstance(ev, Resynchronised) and ev.reason == "mid_stream_start":
                self.stats.started_mid_stream = True

    def _paired(self, matched: bool, unanswered: int, version: str | None) -> Exchange:
        """The exchange a response answers, after dropping requests that lost theirs."""
        for _ in range(unanswered):
            self._no_response(self.pending.popleft())
        if matched:
            return self.pending.popleft()
        if version is not None:
            self.protocol = _protocol(version)
        if not self.out:  # the connection was already mid-exchange when observation began
            self.stats.started_mid_stream = True
        x = self._new()
        self.stats.request_missed += 1
        for name in ("method", "path", "authority", "req_bytes", "t_start_ns"):
            x.degrade(name, REQUEST_MISSED)
        return x

    def _no_response(self, x: Exchange) -> None:
        self.stats.no_response += 1
        x.degrade("status", NO_RESPONSE)

    def finish(self, closed_ns: int | None) -> tuple[list[Exchange], Http1Stats]:
        self.on_request(self.req.end(closed_ns))
        self.on_response(self.resp.end(closed_ns))
        while self.pending:
            self._no_response(self.pending.popleft())
        st = self.stats
        st.exchanges = len(self.out)
        st.complete = sum(1 for x in self.out if not x.degraded)
        st.degraded_payload = sum(
            1
            for x in self.out
            if any(
                d.field in ("req_bytes", "resp_bytes") and d.reason != REQUEST_MISSED
                for d in x.degraded
            )
        )
        return self.out, st


def stitch_http1(
    send: Iterable[Segment],
    recv: Iterable[Segment],
    *,
    side: Literal["client", "server"],
    closed_ns: int | None,
    source: Source = "",  # the collector that saw the bytes: it names itself
    from_start: bool = False,
    pipelined: bool = True,
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
    Addresses, run id and scenario are the caller's to fill in.
    """
    if side not in ("client", "server"):
        raise Http1UsageError(f"side must be 'client' or 'server', not {side!r}")
    st = _Stitcher(side, source, from_start, pipelined)
    for is_req, seg in _merge(send, recv, "send" if side == "client" else "recv"):
        if is_req:
            st.on_request(st.req.feed(seg))
        else:
            st.on_response(st.resp.feed(seg))
    return st.finish(closed_ns)
