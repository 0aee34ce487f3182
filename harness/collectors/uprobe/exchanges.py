"""Uprobe recordings -> Exchanges: group grpc-go header blocks and DATA frames into calls.

Pure function of the event file. Each process (client or server) yields its own
Exchange per stream, keyed by process, connection (its netFD and 4-tuple) and
stream id. Headers arrive as plain fields (no HPACK), so what can degrade here is
only what the probes could not read: an address, a field cut to fit, a stream
whose start or end the collector did not see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from harness.collectors.base import (
    STREAM_END_NS,
    ExchangeBatch,
    ExchangeStream,
    ObservedStats,
    ReplayInput,
)
from harness.collectors.uprobe.decode import (
    DecodeStats,
    Event,
    HeaderBlock,
    ResetFrame,
    Seen,
    decode_steps,
)
from harness.model import (
    HEADERS_MISSED_STREAM,
    NOT_COLLECTED,
    STREAM_INCOMPLETE,
    TRUNCATED_HEADERS,
    TRUNCATED_PAYLOAD,
    TRUNCATED_VALUE,
    Exchange,
)
from harness.protocols.bytestream import Endpoint, set_addresses
from harness.protocols.http2.grpc import R_RESET, BodyCounter, apply_reset_status

C2S, S2C = 0, 1
R_MISSED = HEADERS_MISSED_STREAM
R_TRUNC = TRUNCATED_PAYLOAD
R_CUT_VALUE = TRUNCATED_VALUE  # a name or value longer than the probe's cap: not used
R_CUT_HEADERS = TRUNCATED_HEADERS  # fields of a block the probe did not read at all
R_NOT_COLLECTED = NOT_COLLECTED  # the recording's --uprobe-level does not look at it
R_INCOMPLETE = STREAM_INCOMPLETE

ConnKey = tuple[int, int, Endpoint | None, Endpoint | None]


@dataclass
class _Call:
    seen: Seen
    seq: int
    t_start: int
    t_end: int
    req: HeaderBlock | None = None
    resp: HeaderBlock | None = None
    trailers: HeaderBlock | None = None
    extra_blocks: int = 0
    ended: list[bool] = field(default_factory=lambda: [False, False])
    bodies: list[BodyCounter] = field(default_factory=lambda: [BodyCounter(), BodyCounter()])
    body_lost: list[bool] = field(default_factory=lambda: [False, False])
    messages: bool = True  # DATA frames were probed (level "messages")
    rst: tuple[int, int] | None = None  # the first RST_STREAM's (error code, time)
    role: str = "unknown"  # its connection's, in the observing process

    @property
    def done(self) -> bool:
        # without DATA probes a request's END_STREAM (on its last DATA frame) goes unseen
        return self.rst is not None or (
            (self.ended[C2S] or not self.messages) and self.ended[S2C])


def _conn_key(s: Seen) -> ConnKey:
    # the netFD address alone could be reused by a later connection after GC
    return (s.tgid, s.conn, s.local, s.remote)


def _has(block: HeaderBlock, name: str) -> bool:
    return any(n == name for n, _ in block.fields)


# A call whose server side has ended (trailers or END_STREAM) and that nothing has touched
# for this long is handed over: a grpc-go call in flight at the attach (its client's
# END_STREAM went by unseen) would otherwise stay open to the end, and with it every call
# after it in a streamed replay.
IDLE_NS = 1_000_000_000
# How long a call's end (and a stream's reset) is remembered: a RST_STREAM after the end
# (a server's NO_ERROR after its trailers) or DATA crossing a reset is not a new call.
REMEMBER_NS = 10_000_000_000
# Calls taken between two looks for idle calls and forgotten ends
_SWEEP = 4096
# The streamed decode's lag: header parts and the strings they name by address come
# within microseconds of each other; a second is far beyond the ring buffer's disorder.
LAG_NS = 1_000_000_000

CallKey = tuple[ConnKey, int]


class _Calls:
    """Header blocks, DATA and RST_STREAM frames -> calls, one connection at a time.

    A connection's events wait until its role is known: a receive probe says it (the
    first one is taken; a later one that disagrees is counted in ``roles_changed``). A
    connection no receive probe named waits to the end, where a sent request or response
    says it, else the server port. Calls are handed over (``ready``) as they end, in the
    order they began; the same events in the same order give the same calls however they
    are batched."""

    def __init__(self, ports: set[int], messages: bool, st: ObservedStats) -> None:
        self.ports, self.messages, self.st = ports, messages, st
        self.roles: dict[ConnKey, str] = {}
        self.waiting: dict[ConnKey, list[Event]] = {}  # role not known yet
        self.calls: dict[CallKey, _Call] = {}  # open
        self.ended: dict[CallKey, int] = {}  # -> when: ended calls, remembered a while
        self.closed: dict[CallKey, int] = {}  # -> when: streams ended by a reset
        self.ready: list[_Call] = []
        self.conns: set[ConnKey] = set()
        self.parse = {"calls": 0, "orphan_frames": 0, "extra_blocks": 0, "unknown_role": 0,
                      "after_end": 0, "roles_changed": 0}  # fmt: skip
        self.seq = 0
        self.now = -(1 << 63)  # the latest event time taken
        self.taken = 0

    def add(self, ev: Event) -> None:
        s = ev.seen
        key = _conn_key(s)
        role = self.roles.get(key)
        if s.role != "unknown":
            if role is None:
                self.roles[key] = s.role
                for held in self.waiting.pop(key, ()):
                    self._take(held, s.role)
            elif role != s.role:
                self.parse["roles_changed"] += 1
            self._take(ev, self.roles[key])
        elif role is not None:
            self._take(ev, role)
        else:
            self.waiting.setdefault(key, []).append(ev)

    def finish(self) -> None:
        """The end: waiting connections get their role from what they sent, or their port;
        every call still open is handed over."""
        for evs in self.waiting.values():
            sent = (_sent_role(ev) for ev in evs
                    if isinstance(ev, HeaderBlock) and ev.seen.direction == "send")  # fmt: skip
            role = next((r for r in sent if r is not None), None)
            s = evs[0].seen
            if role is not None:
                pass
            elif s.local and s.local.port in self.ports:
                role = "server"
            elif s.remote and s.remote.port in self.ports:
                role = "client"
            for ev in evs:
                self._take(ev, role or "unknown")
        self.waiting.clear()
        self.ready.extend(self.calls.values())
        self.calls.clear()

    def earliest(self) -> int | None:
        """The earliest start of a call not handed over yet, or of an event waiting."""
        starts = [c.t_start for c in self.calls.values()]
        starts += [evs[0].seen.ts_ns for evs in self.waiting.values()]
        return min(starts, default=None)

    def _sweep(self) -> None:
        """Hand over idle calls whose server side ended; forget old ends."""
        now = self.now
        for key, call in list(self.calls.items()):
            if (call.ended[S2C] or call.rst is not None) and call.t_end < now - IDLE_NS:
                self._end(key, call)
        for marks in (self.ended, self.closed):
            for key in [k for k, t in marks.items() if t < now - REMEMBER_NS]:
                del marks[key]

    def _end(self, key: CallKey, call: _Call) -> None:
        del self.calls[key]
        self.ready.append(call)
        self.ended[key] = call.t_end

    def _take(self, ev: Event, role: str) -> None:
        s, parse = ev.seen, self.parse
        self.now = max(self.now, s.ts_ns)
        self.taken += 1
        if not self.taken % _SWEEP:
            self._sweep()
        if role == "unknown":
            parse["unknown_role"] += 1
            return
        server = s.local if role == "server" else s.remote
        if server is not None and self.ports and server.port not in self.ports:
            self.st.skipped_other_ports += 1
            return
        ckey = _conn_key(s)
        self.conns.add(ckey)
        d = C2S if (s.direction == "send") == (role == "client") else S2C
        key = (ckey, s.stream_id)
        call = self.calls.get(key)
        if key in self.closed or (isinstance(ev, ResetFrame) and call is None
                                  and key in self.ended):  # fmt: skip
            # e.g. a server's RST_STREAM(NO_ERROR) after its trailers, DATA crossing a reset
            parse["after_end"] += 1
            self.closed[key] = s.ts_ns
            return
        if call is None:
            call = _Call(seen=s, seq=self.seq, t_start=s.ts_ns, t_end=s.ts_ns,
                         messages=self.messages, role=role)  # fmt: skip
            self.seq += 1
            self.calls[key] = call
            self.ended.pop(key, None)
            parse["calls"] += 1
            if not (isinstance(ev, HeaderBlock) and d == C2S):
                parse["orphan_frames"] += 1  # the stream's start went by unseen
        call.t_end = max(call.t_end, s.ts_ns)
        if isinstance(ev, HeaderBlock):
            _add_block(call, ev, d, parse)
        elif isinstance(ev, ResetFrame):
            call.rst = (ev.error_code, s.ts_ns)
            self.closed[key] = s.ts_ns
        else:
            if ev.unread or ev.length_partial:
                call.bodies[d].mark_lost()
            pieces = [(0, ev.head)] if ev.head else []
            call.bodies[d].add_data_frame(ev.length, False, pieces)
        if s.end_stream:
            call.ended[d] = True
        if call.done:
            self._end(key, call)

    def exchanges(self) -> list[Exchange]:
        """The calls handed over since the last time, as exchanges in the order they began."""
        out = [_exchange(c, c.role) for c in sorted(self.ready, key=lambda c: c.seq)]
        self.ready.clear()
        for x in out:
            for g in x.degraded:
                counter = f"degraded_{g.reason}"
                self.st.parse[counter] = self.st.parse.get(counter, 0) + 1
        return out

    def stats(self, dst: DecodeStats) -> ObservedStats:
        st = self.st
        st.decode = dict(vars(dst))
        st.connections = len(self.conns)
        st.connections_by_proto = {"http2": len(self.conns)} if self.conns else {}
        st.parse = {**self.parse, **st.parse}
        return st


def _sent_role(b: HeaderBlock) -> str | None:
    """A sent request says client, a sent response server."""
    return "client" if _has(b, ":method") else "server" if _has(b, ":status") else None


def uprobe_stream(
    events: Path, server_ports: list[int], attach_at_ns: int | None = None,
    lag_ns: int | None = LAG_NS,
) -> ExchangeStream:  # fmt: skip
    """The recording's calls as it is read: each handed over when it ends (or, its server
    side ended, when it has been idle for IDLE_NS), with a watermark before every call
    still open or waiting for its connection's role. ``lag_ns`` None: one batch at the
    end."""
    dst = DecodeStats()
    steps = decode_steps(events, attach_at_ns=attach_at_ns, lag_ns=lag_ns, st=dst)
    st = ObservedStats()
    calls: _Calls | None = None
    said = -STREAM_END_NS
    late = 0
    while True:
        try:
            evs, mark = next(steps)
        except StopIteration:
            break
        if calls is None:  # the level is in the file's header, read by the first step
            calls = _Calls(set(server_ports), dst.level == "messages", st)
        for ev in evs:
            calls.add(ev)
        if mark >= STREAM_END_NS:
            calls.finish()
        xs = calls.exchanges()
        late += sum(1 for x in xs if (x.t_start_ns or 0) < said)
        if mark < STREAM_END_NS:
            first = calls.earliest()
            said = max(said, mark if first is None else min(mark, first))
            yield ExchangeBatch(xs, said)
        else:
            last = xs
    assert calls is not None
    dst.late_exchanges = late
    st = calls.stats(dst)
    yield ExchangeBatch(last, STREAM_END_NS)
    return st


def uprobe_exchanges(
    events: Path, server_ports: list[int], attach_at_ns: int | None = None
) -> tuple[list[Exchange], ObservedStats]:
    """All of the recording's calls at once (``uprobe_stream`` read whole)."""
    gen = uprobe_stream(events, server_ports, attach_at_ns, lag_ns=None)
    out: list[Exchange] = []
    while True:
        try:
            out.extend(next(gen).exchanges)
        except StopIteration as stop:
            return out, stop.value


def _add_block(call: _Call, b: HeaderBlock, d: int, parse: dict[str, int]) -> None:
    if d == C2S:
        if call.req is None:
            call.req = b
        else:
            call.extra_blocks += 1
            parse["extra_blocks"] += 1
        return
    status = next((v for n, v in b.fields if n == ":status"), None)
    if call.resp is None and status is not None and not status.startswith("1"):
        call.resp = b  # response headers, or a trailers-only response
    elif status is not None and status.startswith("1"):
        call.extra_blocks += 1  # informational: not part of the exchange's fields
    elif call.trailers is None:
        call.trailers = b
    else:
        call.extra_blocks += 1
        parse["extra_blocks"] += 1


def _split(block: HeaderBlock | None) -> tuple[dict[str, str], dict[str, str]]:
    """Pseudo-headers and regular headers. A field cut short is left out (its value is not
    the value), and so is every other field of its name: a join would be wrong too."""
    pseudo: dict[str, str] = {}
    headers: dict[str, str] = {}
    if block is None:
        return pseudo, headers
    cut_names = {block.fields[i][0].lower() for i in block.cut}
    for name, value in block.fields:
        name = name.lower()
        if name in cut_names:
            continue
        if block.missing_fields and not name.startswith(":"):
            continue  # an unread field may share the name: no regular header is certain
        target = pseudo if name.startswith(":") else headers
        target[name] = f"{target[name]}, {value}" if name in target else value
    return pseudo, headers


def _exchange(call: _Call, role: str) -> Exchange:
    s = call.seen
    x = Exchange(
        source="uprobe",
        side=role,  # type: ignore[arg-type]
        protocol="h2c-grpc",
        stream_id=s.stream_id,
        t_start_ns=call.t_start,
        t_end_ns=call.t_end,
        pid=s.tgid,
        conn_id=f"{s.tgid}:{s.conn:x}:{s.local.port if s.local else '?'}"
        f"-{s.remote.port if s.remote else '?'}",
    )
    client, server = (s.local, s.remote) if role == "client" else (s.remote, s.local)
    both = client is not None and server is not None
    set_addresses(x, client if both else None, server if both else None)
    req_p, x.req_headers = _split(call.req)
    resp_p, x.resp_headers = _split(call.resp)
    _, x.trailers = _split(call.trailers)
    ct = x.req_headers.get("content-type") or x.resp_headers.get("content-type") or ""
    if ct and not ct.startswith("application/grpc"):
        x.protocol = "h2c"
    if call.req is None:
        for f in ("method", "path", "authority", "req_headers"):
            x.degrade(f, R_MISSED)
    else:
        x.method, x.path, x.authority = req_p.get(":method"), req_p.get(":path"), (
            req_p.get(":authority"))  # fmt: skip
        _degrade_cut(x, call.req, {":method": "method", ":path": "path",
                                   ":authority": "authority"}, "req_headers")  # fmt: skip
    status = resp_p.get(":status")
    if status is not None and status.isdigit():
        x.status = int(status)
    elif call.resp is None:
        x.degrade("status", R_RESET if call.rst is not None else
                  R_INCOMPLETE if not call.ended[S2C] else R_MISSED)
    if call.resp is not None:
        _degrade_cut(x, call.resp, {":status": "status"}, "resp_headers")
    src, src_headers = (call.trailers, x.trailers) if call.trailers else (call.resp, x.resp_headers)
    gs, gm = src_headers.get("grpc-status"), src_headers.get("grpc-message")
    if gs is not None and gs.isdigit():
        x.grpc_status = int(gs)
    elif call.rst is not None:
        req = call.req
        unknown = R_MISSED if req is None else R_CUT_HEADERS if req.missing_fields or any(
            n.lower() == "grpc-timeout" for n in req.truncated) else None
        apply_reset_status(x, call.rst[0], call.rst[1] - call.t_start, unknown)
    elif src is None or not call.ended[S2C]:
        x.degrade("grpc_status", R_INCOMPLETE)
        x.degrade("grpc_message", R_INCOMPLETE)
    if gm is not None:
        x.grpc_message = unquote(gm, errors="replace")
    if src is not None:
        _degrade_cut(x, src, {"grpc-status": "grpc_status", "grpc-message": "grpc_message"},
                     "trailers")  # fmt: skip
    for d, prefix in ((C2S, "req"), (S2C, "resp")):
        b = call.bodies[d]
        reason = None
        if not call.messages:
            reason = R_NOT_COLLECTED
        elif call.req is None:
            reason = R_MISSED  # frames before the first one seen are unknown
        elif not call.ended[d] and call.rst is None:  # a reset ends the count too
            reason = R_INCOMPLETE
        elif b.broken or not b.at_boundary:
            reason = R_TRUNC
        if reason is not None:
            x.degrade(f"{prefix}_bytes", reason)
            x.degrade(f"{prefix}_messages", reason)
            continue
        setattr(x, f"{prefix}_bytes", b.message_bytes)
        setattr(x, f"{prefix}_messages", b.messages)
    return x


def _degrade_cut(x: Exchange, block: HeaderBlock, named: dict[str, str], rest: str) -> None:
    """Fields cut to fit the probe's buffers, or not read at all (beyond its per-block
    limit, or in a part the ring buffer lost): unknown, never a value."""
    for name in block.truncated:
        x.degrade(named.get(name.lower(), rest), R_CUT_VALUE)
    if block.missing_fields:
        # any field may be among those not read, the named ones too
        for f in (*named.values(), rest):
            if getattr(x, f) in (None, {}) or f == rest:
                x.degrade(f, R_CUT_HEADERS)


def replay_exchanges(r: ReplayInput) -> tuple[list[Exchange], ObservedStats]:
    return uprobe_exchanges(r.events, r.ports, attach_at_ns=r.attach_at_ns)


def replay_stream(r: ReplayInput) -> ExchangeStream:
    return uprobe_stream(r.events, r.ports, attach_at_ns=r.attach_at_ns)
