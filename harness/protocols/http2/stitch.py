"""Turn both directions of one HTTP/2 connection into one Exchange per stream (h2c and gRPC).

Segments of both directions are merged by time and fed to one frame parser per direction;
header blocks (HEADERS/PUSH_PROMISE + CONTINUATION) go to that direction's HPACK decoder,
DATA to per-stream body counters. What could not be known is named on each Exchange
(``degraded``) and counted in ``Http2Stats``; nothing is guessed.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from harness.model import (
    HEADERS_MISSED_STREAM,
    HPACK_DECODE_ERROR,
    HPACK_UNKNOWN_INDEX,
    MALFORMED_HEADERS,
    STREAM_INCOMPLETE,
    TRUNCATED_PAYLOAD,
    Exchange,
    Side,
    Source,
)
from harness.protocols.common import Segment
from harness.protocols.http2.errors import HpackDecodeError
from harness.protocols.http2.frames import (
    FrameEvent,
    FrameParsed,
    FrameParser,
    FrameStats,
    FrameType,
    SyncAcquired,
    SyncLost,
)
from harness.protocols.http2.grpc import R_RESET, BodyCounter, apply_reset_status
from harness.protocols.http2.hpack import DecodedField, HpackDecoder, HpackMode, HpackStats
from harness.protocols.idset import IdSet

C2S, S2C = 0, 1
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x1, 0x5

# Reasons, as the analysis counts them.
R_HPACK = HPACK_UNKNOWN_INDEX
R_HPACK_ERROR = HPACK_DECODE_ERROR
R_MISSED = HEADERS_MISSED_STREAM
R_TRUNC = TRUNCATED_PAYLOAD
R_INCOMPLETE = STREAM_INCOMPLETE

# a header block read whole, yet without the pseudo-header every request/response has
R_MALFORMED = MALFORMED_HEADERS
# A stream whose server side ended while its request head was never seen (it began before
# the capture: what its client sent went by unseen) is closed once the segments merged
# reach this long after its end: a client's frame merged later than that is not clock
# skew between CPUs. Its exchange is what it would be at the connection's end, and a
# connection that stays open no longer holds it (and the streamed replay's watermark).
HEAD_UNSEEN_GRACE_NS = 1_000_000_000
FIELDS = ("method", "path", "authority", "status", "grpc_status", "grpc_message",
          "req_bytes", "resp_bytes", "req_messages", "resp_messages", "protocol")


@dataclass(slots=True)
class Http2Stats:
    """Everything the stitcher lost or could not decode, per direction and per field."""

    from_start: bool = False
    c2s_frames: FrameStats = field(default_factory=FrameStats)
    s2c_frames: FrameStats = field(default_factory=FrameStats)
    c2s_hpack: HpackStats = field(default_factory=HpackStats)
    s2c_hpack: HpackStats = field(default_factory=HpackStats)
    streams: int = 0
    exchanges: int = 0
    grpc_exchanges: int = 0
    headers_missed_streams: int = 0
    # request HEADERS merged after frames of the stream's response, still taken as its head
    late_request_headers: int = 0
    incomplete_streams: int = 0
    rst_streams: int = 0
    hpack_errors: int = 0
    truncated_header_blocks: int = 0
    orphan_continuations: int = 0
    push_promises: int = 0
    bodies_broken: int = 0
    unknown_custom_headers: int = 0
    field_decoded: dict[str, int] = field(default_factory=dict)
    field_unknown: dict[str, int] = field(default_factory=dict)
    degraded_by_reason: dict[str, int] = field(default_factory=dict)
    # streamed (Http2Stream): segments that arrived after later ones had been fed, so fed
    # out of the time order a whole stitch would give them (their send blocked > 1 s)
    late_segments: int = 0


@dataclass(slots=True)
class _Block:
    fields: list[DecodedField] | None  # None: the block could not be decoded at all
    truncated: bool = False
    # fields not known (-1: no fields at all); counted once, asked for many times
    unknowns: int = field(init=False)

    def __post_init__(self) -> None:
        self.unknowns = -1 if self.fields is None else sum(not f.known for f in self.fields)

    def reason(self) -> str:
        """Why a field absent from this block may have been there."""
        if self.fields is None:
            return R_HPACK_ERROR
        if self.unknowns:
            return R_HPACK
        return R_TRUNC


# How the client's side of a stream was first seen. The server's frames of a stream can be
# merged before its request's HEADERS (two CPUs' clocks, a segment stamped at its first
# byte), so a call opened by them waits in "unseen" until the client's first frame on it.
_RequestStart = Literal["unseen", "head", "missed"]


@dataclass(slots=True)
class _Call:
    stream_id: int
    seq: int
    t_start: int
    t_end: int
    request: _RequestStart = "unseen"
    req: _Block | None = None
    resp: _Block | None = None
    trailers: _Block | None = None
    bodies: tuple[BodyCounter, BodyCounter] = field(
        default_factory=lambda: (BodyCounter(), BodyCounter()))
    body_from_start: list[bool] = field(default_factory=lambda: [False, False])
    ended: list[bool] = field(default_factory=lambda: [False, False])
    lost: list[bool] = field(default_factory=lambda: [False, False])
    reset: bool = False
    # the first RST_STREAM's error code (None: its payload went unseen) and time
    rst: tuple[int | None, int] | None = None
    expiring: bool = False  # queued to close HEAD_UNSEEN_GRACE_NS after its server's end

    @property
    def done(self) -> bool:
        return self.reset or all(self.ended)

    @property
    def headers_missed(self) -> bool:
        """The request's HEADERS went by unseen (or are not in the capture at all)."""
        return self.request != "head"

    @property
    def closable(self) -> bool:
        # A call reset before any of its client frames was merged keeps waiting for them:
        # its request is on the wire, only later in the merge.
        return self.done and self.request != "unseen"

    def client_frame(self, *, head: bool) -> None:
        """The client's first frame on the stream says whether its request head was seen."""
        if self.request == "unseen":
            self.request = "head" if head else "missed"


_Why = Callable[[_Block | None, int], str]  # names why a header-derived field is missing


@dataclass(slots=True)
class _Pending:
    """A header block waiting for its CONTINUATIONs."""

    stream_id: int
    flags: int
    kind: Literal["headers", "push"]
    fragment: bytearray
    truncated: bool
    ts_ns: int


def orient(sent: Iterable[Segment], received: Iterable[Segment],
           side: Side) -> tuple[Iterable[Segment], Iterable[Segment]]:
    """(client_to_server, server_to_client) from what the observed process sent/received."""
    return (sent, received) if side == "client" else (received, sent)


def stitch_http2(
    client_to_server: Iterable[Segment],
    server_to_client: Iterable[Segment],
    *,
    hpack_mode: HpackMode = "tolerant",
    source: Source = "",  # the collector that saw the bytes: it names itself
    side: Side = "client",
    conn_id: str | None = None,
) -> tuple[list[Exchange], Http2Stats]:
    """Decode one connection; return its Exchanges (call order) and what was lost."""
    st = _Stitcher(hpack_mode, source, side, conn_id)
    tagged = [
        [(s.ts_ns, d, i, s) for i, s in enumerate(segs)]
        for d, segs in ((C2S, client_to_server), (S2C, server_to_client))
    ]
    for ts, d, _, seg in heapq.merge(*(sorted(t, key=lambda x: (x[0], x[2])) for t in tagged)):
        st.expire(ts)
        st.handle(d, st.parsers[d].feed(seg))
    for d in (C2S, S2C):
        st.handle(d, st.parsers[d].close())
    return st.finish()


class Http2Stream:
    """``stitch_http2`` while the segments arrive, so a replay need not hold a connection
    that stays open: segments wait in a heap and are fed in the order ``stitch_http2``
    sorts them (time, direction, arrival) up to ``advance``'s bound, and each call is
    handed to ``on_ready`` when its stream ends (END_STREAM both ways, or RST_STREAM):
    nothing later on the connection changes a finished call. Held: the segments not yet
    fed, the streams still open, and the HPACK tables (bounded by their size)."""

    def __init__(
        self, side: Side, on_ready: Callable[[list[Exchange]], None], *,
        hpack_mode: HpackMode = "tolerant", source: Source = "", conn_id: str | None = None,
    ) -> None:  # fmt: skip
        self._st = _Stitcher(hpack_mode, source, side, conn_id)
        self._client = side == "client"
        self._heap: list[tuple[int, int, int, Segment]] = []
        self._count = [0, 0]  # segments added per direction: their place among equal times
        self._fed_upto = -(1 << 63)  # the latest time fed: a segment before it came late
        self._on_ready = on_ready

    def add(self, sent: bool, seg: Segment) -> None:
        """A segment the observed process sent (else received), in its direction's order."""
        d = C2S if sent == self._client else S2C
        if seg.ts_ns < self._fed_upto:
            # later calls were fed already: fed now, out of the whole replay's order
            self._st.stats.late_segments += 1
        heapq.heappush(self._heap, (seg.ts_ns, d, self._count[d], seg))
        self._count[d] += 1

    def advance(self, upto_ns: int) -> None:
        """Feed the segments before ``upto_ns`` (no segment before it is still to come) and
        hand over the calls that ended."""
        heap, st = self._heap, self._st
        while heap and heap[0][0] < upto_ns:
            ts, d, _i, seg = heapq.heappop(heap)
            self._fed_upto = max(self._fed_upto, ts)
            st.expire(ts)
            st.handle(d, st.parsers[d].feed(seg))
        if upto_ns < 1 << 63:  # every later segment is at or after it (at the end: none)
            st.expire(upto_ns)
        self._hand()

    def _hand(self) -> None:
        st = self._st
        if st.finished:
            xs = [st.exchange(c) for c in st.finished]
            st.handed += len(xs)
            st.finished.clear()
            self._on_ready(xs)

    def earliest_start(self) -> int | None:
        """The earliest start an exchange not yet handed over can have (None: none)."""
        starts = [c.t_start for c in self._st.calls.values()]
        if self._heap:
            starts.append(self._heap[0][0])
        return min(starts, default=None)

    def finish(self) -> tuple[list[Exchange], Http2Stats]:
        """Everything fed; the calls still open handed over as they are (incomplete).
        Returns no exchanges (all went to ``on_ready``) and the connection's stats."""
        self.advance(1 << 63)
        st = self._st
        for d in (C2S, S2C):
            st.handle(d, st.parsers[d].close())
        self._hand()
        rest, stats = st.finish()
        st.closed_ids.update(x.stream_id for x in rest if x.stream_id is not None)
        stats.exchanges += st.handed
        if rest:
            self._on_ready(rest)
        return [], stats

    @property
    def stream_ids(self) -> IdSet:
        """The stream ids of every exchange handed over (a later part split at lost calls
        leaves them out: ``bytestream.drop_split_tails``)."""
        return self._st.closed_ids  # the ended ones; finish adds the rest


class _Stitcher:
    def __init__(self, mode: HpackMode, source: Source, side: Side, conn_id: str | None) -> None:
        self.mode = mode
        self.source: Source = source
        self.side: Side = side
        self.conn_id = conn_id
        self.parsers = (FrameParser(role="client"), FrameParser(role="server"))
        self.decoders: list[HpackDecoder | None] = [None, None]
        self.pending: list[_Pending | None] = [None, None]
        self.calls: dict[int, _Call] = {}
        self.finished: list[_Call] = []
        # a long-lived connection closes streams by the hundred thousand: held as runs
        self.closed_ids = IdSet()
        self.stats = Http2Stats()
        self.allowed_table: list[int | None] = [None, None]
        self.first_s2c_settings = False
        self.s2c_first_offset: int | None = None
        self.nframes = [0, 0]
        self.expiring: deque[tuple[int, _Call]] = deque()  # by server end: see expire
        self.handed = 0  # exchanges made before finish (streamed)

    # -- frames ------------------------------------------------------------------------

    def handle(self, d: int, events: list[FrameEvent]) -> None:
        for ev in events:
            if isinstance(ev, FrameParsed):
                self.frame(d, ev)
            elif isinstance(ev, SyncLost):
                self.lost(d)
            elif isinstance(ev, SyncAcquired) and d == S2C and self.s2c_first_offset is None:
                self.s2c_first_offset = ev.offset

    def lost(self, d: int) -> None:
        """Frames of direction d were lost: bodies and header state there are uncertain."""
        for call in self.calls.values():
            if d == C2S and call.request == "unseen":
                # Its request starts after the gap in the client's bytes, if it was seen at
                # all (else it stays headers_missed): none of it is lost here.
                continue
            call.lost[d] = True
            call.bodies[d].mark_lost()
        if self.pending[d] is not None:
            self.pending[d] = None
        dec = self.decoders[d]
        if dec is not None:
            dec.lose_sync()

    def decoder(self, d: int) -> HpackDecoder:
        dec = self.decoders[d]
        if dec is None:
            # Both directions attach at once, and a server encodes no header block before
            # the client's first request: the client's preface vouches for both tables.
            c2s = self.parsers[C2S].stats
            if c2s.segments:
                from_start = c2s.preface_seen and (d == C2S or self.s2c_first_offset == 0)
            else:  # only the server's bytes: its first frame is SETTINGS at offset 0
                from_start = self.first_s2c_settings
            if d == C2S or not c2s.segments:
                self.stats.from_start = from_start
            dec = HpackDecoder(mode=self.mode, from_start=from_start)
            allowed = self.allowed_table[d]
            if allowed is not None:
                dec.set_allowed_max(allowed)
            self.decoders[d] = dec
        return dec

    def frame(self, d: int, f: FrameParsed) -> None:
        t = f.type
        self.nframes[d] += 1
        if d == S2C and self.nframes[d] == 1:
            self.first_s2c_settings = (self.s2c_first_offset == 0 and t == FrameType.SETTINGS
                                       and not f.has(0x1))
        pend = self.pending[d]
        if pend is not None and t != FrameType.CONTINUATION:
            # The block's end was lost; decode what arrived as a cut block.
            pend.truncated = True
            self.pending[d] = None
            self.header_block(d, pend)
        if t == FrameType.DATA:
            self.data(d, f)
        elif t in (FrameType.HEADERS, FrameType.PUSH_PROMISE):
            self.headers_frame(d, f)
        elif t == FrameType.CONTINUATION:
            self.continuation(d, f)
        elif t == FrameType.RST_STREAM:
            # A reset may be a stream's first frame seen (a server refusing the stream,
            # merged before its request; a request unseen): it still makes a call.
            call = self.call_for(f.stream_id, f.ts_ns)
            if call is not None:
                if d == C2S:  # a client resets only a stream it opened: the head went by
                    call.client_frame(head=False)
                self.stats.rst_streams += 1
                call.reset = True
                call.t_end = f.ts_ns
                if call.rst is None:
                    code = int.from_bytes(f.payload, "big") if len(f.payload) == 4 else None
                    call.rst = (code, f.ts_ns)
                self.maybe_finish(call)
        elif t == FrameType.WINDOW_UPDATE and d == C2S:
            call = self.calls.get(f.stream_id)
            if call is not None:  # sent only on an open stream: after the request head
                call.client_frame(head=False)
        elif t == FrameType.SETTINGS and not f.has(0x1):
            self.settings(d, f)

    def settings(self, d: int, f: FrameParsed) -> None:
        # The sender's settings bind the other direction's encoder and frame sizes.
        other = 1 - d
        for i in range(0, len(f.payload) - 5, 6):
            ident = int.from_bytes(f.payload[i : i + 2], "big")
            value = int.from_bytes(f.payload[i + 2 : i + 6], "big")
            if ident == SETTINGS_HEADER_TABLE_SIZE:
                self.allowed_table[other] = value
                dec = self.decoders[other]
                if dec is not None:
                    dec.set_allowed_max(value)
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                self.parsers[other].set_max_frame_size(value)

    def call_for(self, sid: int, ts: int) -> _Call | None:
        if sid == 0 or sid in self.closed_ids:
            return None
        call = self.calls.get(sid)
        if call is None:
            call = _Call(sid, self.stats.streams, ts, ts)
            self.stats.streams += 1
            self.calls[sid] = call
        call.t_end = max(call.t_end, ts)
        return call

    def data(self, d: int, f: FrameParsed) -> None:
        call = self.call_for(f.stream_id, f.ts_ns)
        if call is None:
            return
        if d == C2S:
            call.client_frame(head=False)
        call.bodies[d].add_data_frame(f.length, f.has(PADDED), f.pieces)
        if f.has(END_STREAM):
            call.ended[d] = True
            self.maybe_finish(call)

    def headers_frame(self, d: int, f: FrameParsed) -> None:
        off = 0
        pad = 0
        seen = f.payload
        if f.has(PADDED):
            if not seen:
                pad = -1
            else:
                pad = seen[0]
                off = 1
        if f.type == FrameType.PUSH_PROMISE:
            off += 4
            self.stats.push_promises += 1
        elif f.has(PRIORITY):
            off += 5
        if pad < 0:  # the padding length is unseen: the fragment's end is unknown
            frag, truncated = b"", True
        else:
            end = f.length - pad
            frag = seen[off:end]
            truncated = len(seen) < end
        pend = _Pending(f.stream_id, f.flags, "push" if f.type == FrameType.PUSH_PROMISE
                        else "headers", bytearray(frag), truncated, f.ts_ns)
        if f.flags & END_HEADERS:
            self.header_block(d, pend)
        else:
            self.pending[d] = pend

    def continuation(self, d: int, f: FrameParsed) -> None:
        pend = self.pending[d]
        if pend is None or pend.stream_id != f.stream_id:
            # The block's start went by unseen: whatever it inserted is unknown.
            self.stats.orphan_continuations += 1
            self.decoder(d).lose_sync()
            call = self.calls.get(f.stream_id)
            if call is not None:
                call.lost[d] = True
                if d == C2S:
                    call.client_frame(head=False)
            return
        if not pend.truncated:
            pend.fragment += f.payload
            pend.truncated = f.truncated_bytes > 0
        pend.ts_ns = f.ts_ns
        if f.flags & END_HEADERS:
            self.pending[d] = None
            self.header_block(d, pend)

    def header_block(self, d: int, pend: _Pending) -> None:
        dec = self.decoder(d)
        if pend.truncated:
            self.stats.truncated_header_blocks += 1
        try:
            fields: list[DecodedField] | None = dec.decode(bytes(pend.fragment),
                                                          complete=not pend.truncated)
        except HpackDecodeError:
            self.stats.hpack_errors += 1
            dec.lose_sync()
            fields = None
        if pend.kind == "push":
            return  # decoded only to keep the table in step
        block = _Block(fields, pend.truncated)
        opened_before = pend.stream_id in self.calls
        call = self.call_for(pend.stream_id, pend.ts_ns)
        if call is None:
            return
        if d == C2S:
            if call.request == "unseen":
                if opened_before:  # by its response's frames, merged first
                    self.stats.late_request_headers += 1
                call.client_frame(head=True)
                call.req = block
                call.body_from_start[C2S] = True
            # else: request trailers, or a block after a missed head: decoded only to keep
            # the table in step
        else:
            kind = _server_block_kind(block, pend.flags) if call.resp is None else "trailers"
            if kind == "informational":
                return
            if kind == "headers":
                call.resp = block
                call.body_from_start[S2C] = True
            else:
                call.trailers = block
        if pend.flags & END_STREAM:
            call.ended[d] = True
            self.maybe_finish(call)

    def maybe_finish(self, call: _Call) -> None:
        if call.closable:
            self.close(call)
        elif (call.ended[S2C] or call.reset) and call.headers_missed and not call.expiring:
            call.expiring = True
            self.expiring.append((call.t_end, call))

    def close(self, call: _Call) -> None:
        self.finished.append(call)
        del self.calls[call.stream_id]
        self.closed_ids.add(call.stream_id)

    def expire(self, now: int) -> None:
        """Close the streams whose server side ended HEAD_UNSEEN_GRACE_NS before ``now``
        with their request head still unseen (called before each segment is fed)."""
        q = self.expiring
        while q and q[0][0] + HEAD_UNSEEN_GRACE_NS <= now:
            call = q.popleft()[1]
            if self.calls.get(call.stream_id) is call and call.headers_missed:
                self.close(call)

    # -- exchanges ---------------------------------------------------------------------

    def finish(self) -> tuple[list[Exchange], Http2Stats]:
        for d in (C2S, S2C):
            dec = self.decoders[d]
            if dec is not None:
                if d == C2S:
                    self.stats.c2s_hpack = dec.stats
                else:
                    self.stats.s2c_hpack = dec.stats
        self.stats.c2s_frames = self.parsers[C2S].stats
        self.stats.s2c_frames = self.parsers[S2C].stats
        calls = sorted([*self.finished, *self.calls.values()], key=lambda c: c.seq)
        out = [self.exchange(c) for c in calls]
        self.stats.exchanges = len(out)
        return out, self.stats

    def exchange(self, call: _Call) -> Exchange:
        st = self.stats
        x = Exchange(source=self.source, side=self.side, protocol="h2c", conn_id=self.conn_id,
                     stream_id=call.stream_id, conn_seq=call.seq,
                     t_start_ns=call.t_start, t_end_ns=call.t_end)
        if not call.done:
            st.incomplete_streams += 1
        if call.headers_missed:
            st.headers_missed_streams += 1
        req = _Fields(call.req)
        resp = _Fields(call.resp)
        trl = _Fields(call.trailers)

        def why(block: _Block | None, d: int) -> str:
            if block is not None:
                return block.reason()
            if d == C2S and call.headers_missed:
                return R_MISSED
            if call.lost[d]:
                return R_TRUNC
            return R_RESET if call.reset else R_INCOMPLETE

        for name, key in (("method", ":method"), ("path", ":path"), ("authority", ":authority")):
            value = req.pseudo.get(key)
            if value is not None:
                setattr(x, name, value)
            elif call.req is None or call.req.unknowns or call.req.truncated:
                x.degrade(name, why(call.req, C2S))
            elif name != "authority":  # a whole request block without it is malformed
                x.degrade(name, R_MALFORMED)
        status = resp.pseudo.get(":status")
        if status is not None and status.isdigit():
            x.status = int(status)
        elif call.resp is None or call.resp.unknowns or call.resp.truncated:
            x.degrade("status", why(call.resp, S2C))
        else:
            x.degrade("status", R_MALFORMED)
        x.req_headers = req.headers
        x.resp_headers = resp.headers
        x.trailers = trl.headers
        if call.req is None:  # the request's header block itself went by unseen
            x.degrade("req_headers", why(None, C2S))
        for name, fl, need in (("req_headers", req, 4), ("resp_headers", resp, 1),
                               ("trailers", trl, 0)):
            missing_pseudo = need - len(fl.pseudo) if need else 0
            custom_unknown = max(0, fl.unknown - max(missing_pseudo, 0))
            if custom_unknown:
                st.unknown_custom_headers += custom_unknown
                x.degrade(name, R_HPACK)

        grpc = self.is_grpc(call, x, req, resp, trl)
        x.protocol = "h2c-grpc" if grpc else "h2c"
        unsure = next((g.reason for g in x.degraded if g.field == "protocol"), None)
        if unsure is not None and not grpc:
            # It may have been gRPC: its gRPC-only fields are unknown, not absent.
            for name in ("grpc_status", "grpc_message", "req_messages", "resp_messages"):
                x.degrade(name, unsure)
        if grpc:
            st.grpc_exchanges += 1
            self.grpc_status(call, x, resp, trl, why)
        for d, prefix in ((C2S, "req"), (S2C, "resp")):
            self.body(call, x, d, prefix, grpc, why)
        if unsure is not None and not grpc:
            # Raw DATA bytes would count a gRPC body's 5-byte prefixes: unknown, not wrong.
            x.req_bytes = x.resp_bytes = None
            x.degrade("req_bytes", unsure)
            x.degrade("resp_bytes", unsure)
        bad_fields = {g.field for g in x.degraded}
        for name in FIELDS:
            target = st.field_unknown if name in bad_fields else st.field_decoded
            target[name] = target.get(name, 0) + 1
        for g in x.degraded:
            st.degraded_by_reason[g.reason] = st.degraded_by_reason.get(g.reason, 0) + 1
        return x

    def is_grpc(self, call: _Call, x: Exchange, req: _Fields, resp: _Fields,
                trl: _Fields) -> bool:
        ct = req.headers.get("content-type") or resp.headers.get("content-type")
        if ct is not None:
            return ct.startswith("application/grpc")
        names = [*req.headers, *resp.headers, *trl.headers]
        if any(n.startswith("grpc-") for n in names) or req.headers.get("te") == "trailers":
            return True
        complete = call.req is not None and call.req.fields is not None and not (
            call.req.unknowns or call.req.truncated)
        if complete:
            return False  # the whole request was read and it carries no content-type
        # No header says so: bodies that are exact gRPC framing are strong evidence, but it
        # is evidence, not a decode, so the protocol is marked as inferred either way.
        x.degrade("protocol", R_MISSED if call.req is None and call.headers_missed
                  else _reason(call.req, call.lost[C2S]))
        bodies = call.bodies
        shaped = all(b.grpc_shaped and not b.broken and b.at_boundary for b in bodies)
        return shaped and any(b.messages for b in bodies)

    def grpc_status(self, call: _Call, x: Exchange, resp: _Fields, trl: _Fields,
                    why: _Why) -> None:
        src, block = (trl, call.trailers) if call.trailers is not None else (resp, call.resp)
        value = src.headers.get("grpc-status")
        msg = src.headers.get("grpc-message")
        if msg is not None:
            x.grpc_message = unquote(msg, errors="replace")
        if value is not None and value.isdigit():
            x.grpc_status = int(value)
            if msg is None and block is not None and (block.unknowns or block.truncated):
                x.degrade("grpc_message", block.reason())
            return
        if call.rst is not None:
            code, ts = call.rst
            req = call.req
            if code is None:  # the reset's payload went unseen
                x.degrade("grpc_status", R_TRUNC)
            else:
                apply_reset_status(x, code, ts - call.t_start, R_MISSED if req is None else (
                    req.reason() if req.unknowns or req.truncated else None))
            return
        if call.trailers is None:
            reason = why(None, S2C)
        elif block is not None and (block.unknowns or block.truncated):
            reason = block.reason()
        else:
            return  # a fully read trailer block without grpc-status: truly absent
        x.degrade("grpc_status", reason)
        if msg is None:
            x.degrade("grpc_message", reason)

    def body(self, call: _Call, x: Exchange, d: int, prefix: str, grpc: bool,
             why: _Why) -> None:
        b = call.bodies[d]
        reason = None
        if not call.body_from_start[d]:
            # DATA before this direction's HEADERS: part of the body went by unseen.
            seen_some = b.frames or call.ended[d]
            reason = R_MISSED if call.headers_missed or seen_some else why(None, d)
        elif not call.ended[d] and not call.reset:
            reason = R_INCOMPLETE  # counts so far are only a lower bound
        if reason is not None:
            x.degrade(f"{prefix}_bytes", reason)
            if grpc:
                x.degrade(f"{prefix}_messages", reason)
            return
        if grpc:
            if b.broken:
                self.stats.bodies_broken += 1
                x.degrade(f"{prefix}_bytes", R_TRUNC)
                x.degrade(f"{prefix}_messages", R_TRUNC)
                return
            setattr(x, f"{prefix}_bytes", b.message_bytes)
            setattr(x, f"{prefix}_messages", b.messages)
        elif b.data_exact:
            setattr(x, f"{prefix}_bytes", b.data_bytes)
        else:
            x.degrade(f"{prefix}_bytes", R_TRUNC)


class _Fields:
    """A decoded block split into pseudo-headers and lowercase regular headers."""

    def __init__(self, block: _Block | None) -> None:
        self.pseudo: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        self.unknown = 0
        if block is None or block.fields is None:
            return
        for f in block.fields:
            if not f.known or f.name is None or f.value is None:
                self.unknown += 1
                continue
            name = f.name.decode("latin-1").lower()
            value = f.value.decode("utf-8", errors="replace")
            target = self.pseudo if name.startswith(":") else self.headers
            target[name] = f"{target[name]}, {value}" if name in target else value


def _reason(block: _Block | None, lost: bool) -> str:
    if block is not None:
        return block.reason()
    return R_TRUNC if lost else R_INCOMPLETE


def _server_block_kind(block: _Block, flags: int) -> str:
    """headers, trailers or informational, for a server block before any response headers.

    Only a known :status makes a response header block; without END_STREAM it can only be
    one too. An END_STREAM block without a known :status is taken as trailers: if it was
    in fact a trailers-only response, its :status was unknown anyway, and the response body
    is then correctly treated as partly unseen.
    """
    for f in block.fields or ():
        if f.known and f.name == b":status" and f.value is not None:
            return "informational" if f.value.startswith(b"1") else "headers"
    return "trailers" if flags & END_STREAM else "headers"
