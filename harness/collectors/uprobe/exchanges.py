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

from harness.collectors.base import ObservedStats, ReplayInput
from harness.collectors.uprobe.decode import (
    Event,
    HeaderBlock,
    ResetFrame,
    Seen,
    decode,
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


def _roles(events: list[Event], ports: set[int]) -> dict[ConnKey, str]:
    """Each connection's role in its process: the receive probes know it (http2Client or
    http2Server); a sent request or response says it too; the server port last."""
    roles: dict[ConnKey, str] = {}
    for ev in events:
        s = ev.seen
        key = _conn_key(s)
        if s.role != "unknown":
            roles[key] = s.role
        elif key not in roles and isinstance(ev, HeaderBlock) and s.direction == "send":
            if _has(ev, ":method"):
                roles[key] = "client"
            elif _has(ev, ":status"):
                roles[key] = "server"
    for ev in events:
        key = _conn_key(ev.seen)
        if key in roles:
            continue
        if ev.seen.local and ev.seen.local.port in ports:
            roles[key] = "server"
        elif ev.seen.remote and ev.seen.remote.port in ports:
            roles[key] = "client"
    return roles


def uprobe_exchanges(
    events: Path, server_ports: list[int], attach_at_ns: int | None = None
) -> tuple[list[Exchange], ObservedStats]:
    evs, dst = decode(events, attach_at_ns=attach_at_ns)
    st = ObservedStats(decode=dict(vars(dst)))
    ports = set(server_ports)
    messages = dst.level == "messages"
    roles = _roles(evs, ports)
    calls: dict[tuple[ConnKey, int], _Call] = {}
    finished: list[_Call] = []
    conns: set[ConnKey] = set()
    parse = {"calls": 0, "orphan_frames": 0, "extra_blocks": 0, "unknown_role": 0,
             "after_end": 0}  # fmt: skip
    # streams ended by a reset, or reset after their end: later frames are not a new call
    closed: set[tuple[ConnKey, int]] = set()
    for ev in evs:
        s = ev.seen
        ckey = _conn_key(s)
        role = roles.get(ckey, "unknown")
        if role == "unknown":
            parse["unknown_role"] += 1
            continue
        server = s.local if role == "server" else s.remote
        if server is not None and ports and server.port not in ports:
            st.skipped_other_ports += 1
            continue
        conns.add(ckey)
        d = C2S if (s.direction == "send") == (role == "client") else S2C
        key = (ckey, s.stream_id)
        call = calls.get(key)
        if key in closed or (isinstance(ev, ResetFrame) and call is not None and call.done):
            # e.g. a server's RST_STREAM(NO_ERROR) after its trailers, DATA crossing a reset
            parse["after_end"] += 1
            closed.add(key)
            continue
        if call is not None and call.done:
            finished.append(calls.pop(key))
            call = None
        if call is None:
            call = _Call(seen=s, seq=len(calls) + len(finished), t_start=s.ts_ns, t_end=s.ts_ns,
                         messages=messages)  # fmt: skip
            calls[key] = call
            parse["calls"] += 1
            if not (isinstance(ev, HeaderBlock) and d == C2S):
                parse["orphan_frames"] += 1  # the stream's start went by unseen
        call.t_end = max(call.t_end, s.ts_ns)
        if isinstance(ev, HeaderBlock):
            _add_block(call, ev, d, parse)
        elif isinstance(ev, ResetFrame):
            call.rst = (ev.error_code, s.ts_ns)
            closed.add(key)
        else:
            if ev.unread or ev.length_partial:
                call.bodies[d].mark_lost()
            pieces = [(0, ev.head)] if ev.head else []
            call.bodies[d].add_data_frame(ev.length, False, pieces)
        if s.end_stream:
            call.ended[d] = True
    finished.extend(calls.values())
    st.connections = len(conns)
    st.connections_by_proto = {"http2": len(conns)} if conns else {}
    st.parse = parse
    out = [_exchange(c, roles[_conn_key(c.seen)]) for c in sorted(finished, key=lambda c: c.seq)]
    for x in out:
        for g in x.degraded:
            counter = f"degraded_{g.reason}"
            st.parse[counter] = st.parse.get(counter, 0) + 1
    return out, st


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
