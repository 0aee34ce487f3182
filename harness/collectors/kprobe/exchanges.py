"""Collector recordings -> Exchanges: decode raw events, stitch each connection per protocol."""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path
from typing import Any

from harness.collectors.base import (
    STREAM_END_NS,
    VARIANTS,
    EncryptedConn,
    ExchangeBatch,
    ExchangeStream,
    ObservedStats,
    ReplayInput,
    Variant,
)
from harness.collectors.kprobe.decode import (
    Connection,
    DecodeStats,
    Handover,
    decode,
    decode_steps,
)
from harness.compact import Sharer
from harness.model import Exchange, is_h2
from harness.protocols.bytestream import Role, drop_split_tails, place, stitch
from harness.protocols.http1.stitch import Http1Stats
from harness.protocols.http2.stitch import Http2Stats


def _stitch_h2(conn: Connection, role: Role, variant: Variant) -> tuple[list[Exchange], Any]:
    return stitch(conn.send, conn.recv, proto="http2", role=role, source="kprobe",
                  conn_id=conn.key, hpack_mode=variant.hpack_mode)  # type: ignore[arg-type]


def _h2_by_content(conn: Connection, variant: Variant) -> tuple[Role, list[Exchange], Any]:
    """An HTTP/2 connection found mid-stream with no address: no preface and no port says
    which end is the client. Requests carry :method and responses :status, both static-table
    entries that decode even after a late attach, so the orientation that yields more of
    them is the right one."""
    best: tuple[int, Role, list[Exchange], Any] | None = None
    roles: tuple[Role, Role] = ("client", "server")
    for role in roles:
        xs, hst = _stitch_h2(conn, role, variant)
        score = sum((x.method is not None) + (x.status is not None) for x in xs)
        if best is None or score > best[0]:
            best = (score, role, xs, hst)
    assert best is not None
    return best[1], best[2], best[3]


def kprobe_exchanges(
    events: Path,
    server_ports: list[int],
    *,
    variant: Variant = VARIANTS["default"],
    attach_at_ns: int | None = None,
    target_pids: set[int] | None = None,
    encrypted: list[EncryptedConn] | None = None,
) -> tuple[list[Exchange], ObservedStats]:
    """Exchanges a kernel-side recording yields. TLS connections yield none: each is
    appended to ``encrypted`` (when given) so the scoring can say what it could not see."""
    share = Sharer()
    conns, dstats = decode(
        events, attach_at_ns=attach_at_ns, use_sockdiag=variant.use_sockdiag, stitch=share
    )
    return _exchanges(conns, dstats, set(server_ports), variant, target_pids, encrypted, share)


def kprobe_stream(
    events: Path,
    server_ports: list[int],
    *,
    variant: Variant = VARIANTS["default"],
    attach_at_ns: int | None = None,
    target_pids: set[int] | None = None,
    encrypted: list[EncryptedConn] | None = None,
) -> ExchangeStream:
    """``kprobe_exchanges`` as the recording is read: HTTP/1 connections seen from their
    open come out as their exchanges become final, HTTP/2 connections whose role and
    addresses are known from their first bytes as their streams end; the rest (HTTP/1
    found mid-stream, parts after a loss) at the end, as before."""
    share = Sharer()
    ports = set(server_ports)
    ho = Handover(ports=ports, hpack_mode=variant.hpack_mode)
    steps = decode_steps(events, attach_at_ns=attach_at_ns, use_sockdiag=variant.use_sockdiag,
                         stitch=share, handover=ho)  # fmt: skip
    late = 0
    while True:
        said = ho.watermark
        try:
            next(steps)
        except StopIteration as stop:
            conns, dstats = stop.value
            break
        xs = _handed(ho, ports)
        share(xs)
        late += sum(1 for x in xs if (x.t_start_ns or 0) < said)
        yield ExchangeBatch(xs, ho.watermark, [c.key for c in ho.finished])
        ho.finished.clear()
    xs = _handed(ho, ports)
    share(xs)
    dstats.late_exchanges = late + sum(1 for x in xs if (x.t_start_ns or 0) < ho.watermark)
    rest, st = _exchanges(conns, dstats, ports, variant, target_pids, encrypted, share)
    yield ExchangeBatch(xs + rest, STREAM_END_NS)
    return st


def _handed(ho: Handover, ports: set[int]) -> list[Exchange]:
    """The exchanges a streamed decode handed over, placed on their connection (roles and
    addresses known from the open) and kept if on the run's ports."""
    out: list[Exchange] = []
    for conn, xs in ho.ready:
        _client, server = conn.ends(conn.role)
        if server is not None and ports and server.port not in ports:
            continue  # counted with the connection at the end (skipped_other_ports)
        place(xs, conn, conn.role, pid=conn.tgid, conn_id=conn.key)
        out.extend(xs)
    ho.ready.clear()
    return out


def _exchanges(
    conns: list[Connection], dstats: DecodeStats, ports: set[int], variant: Variant,
    target_pids: set[int] | None, encrypted: list[EncryptedConn] | None, share: Sharer,
) -> tuple[list[Exchange], ObservedStats]:  # fmt: skip
    """Each decoded connection's exchanges: stitched per protocol, placed on their side and
    addresses."""
    st = ObservedStats(decode=dict(vars(dstats)))
    out: list[Exchange] = []
    streams_of: dict[int, Container[int]] = {}  # id(connection) -> HTTP/2 stream ids it produced
    pipelining: set[int] = set()  # id(connection) of HTTP/1 streams seen pipelining
    for conn in conns:
        role = conn.role_by_ports(ports)
        h2: tuple[list[Exchange], Any] | None = None
        if role is None and conn.proto == "http2":
            role, *rest = _h2_by_content(conn, variant)
            h2 = (rest[0], rest[1])
        elif role is None:
            role = "server"  # an HTTP/1 connection always gets a role from its first bytes
        client, server = conn.ends(role)
        if server is not None and ports and server.port not in ports:
            st.skipped_other_ports += 1
            continue
        if server is None and (target_pids is None or conn.tgid not in target_pids):
            st.unattributed_connections += 1
            continue
        st.connections += 1
        st.connections_by_proto[conn.proto] = st.connections_by_proto.get(conn.proto, 0) + 1
        if conn.proto == "tls":
            st.encrypted_connections[role] = st.encrypted_connections.get(role, 0) + 1
            if client is None or server is None:
                st.encrypted_without_address += 1
            elif encrypted is not None:
                encrypted.append(EncryptedConn(role, client.port, server.port, conn.opened_ns,
                                               conn.closed_ns))  # fmt: skip
            continue
        prev = conn.continues
        # a part after a split carries the pipelining seen before it (after lost events,
        # pairing is proven afresh)
        piped = prev is not None and id(prev) in pipelining
        pst: Http1Stats | Http2Stats
        if conn.stitched is not None:  # stitched while decoded (a chain's first part)
            xs, pst = conn.stitched
            conn.stitched = None
        elif conn.proto in ("http1", "http2"):
            xs, pst = h2 or stitch(
                conn.send, conn.recv, proto=conn.proto, role=role, source="kprobe",
                conn_id=conn.key, closed_ns=conn.closed_ns, from_start=conn.from_start,
                after_loss=conn.after_loss, pipelining=piped,
                requests_lost_after=conn.lost_after[0 if role == "client" else 1],
                hpack_mode=variant.hpack_mode,  # type: ignore[arg-type]
            )  # fmt: skip
        else:
            continue
        if isinstance(pst, Http1Stats) and (pst.pipelining or piped):
            pipelining.add(id(conn))
        st.add_parse(pst)
        # its bytes are parsed: let them go while the next connection is stitched
        conn.send, conn.recv = [], []
        share(xs)
        if conn.proto == "http2":
            xs, tails = drop_split_tails(conn, xs, streams_of)
            st.split_stream_tails += tails
            if conn.h2_streams is not None:  # streamed: its exchanges were handed over
                streams_of[id(conn)] = conn.h2_streams
        place(xs, conn, role, pid=conn.tgid, conn_id=conn.key)
        out.extend(xs)
    return out, st


def variants(attach: str, protocol: str, simulated: bool) -> tuple[str, ...]:
    """Replay variants: without sock_diag, and strict HPACK, where a late attach tells.
    ``attach`` "observe" (an observe run): no sock_diag-less variant, which has nothing to
    tell there (every connection predates the attach: without sock_diag none has an
    address, 0% on every observe run) and costs a whole second kernel-side decode."""
    if attach == "observe":
        return ("default", "hpack-strict") if is_h2(protocol) else ("default",)
    if attach != "late" and not simulated:
        return ("default",)
    return ("default", "no-sockdiag", "hpack-strict") if is_h2(protocol) else (
        "default", "no-sockdiag")


def replay_exchanges(r: ReplayInput) -> tuple[list[Exchange], ObservedStats]:
    return kprobe_exchanges(r.events, r.ports, variant=r.variant, attach_at_ns=r.attach_at_ns,
                            target_pids=r.target_pids, encrypted=r.encrypted)  # fmt: skip


def replay_stream(r: ReplayInput) -> ExchangeStream:
    return kprobe_stream(r.events, r.ports, variant=r.variant, attach_at_ns=r.attach_at_ns,
                         target_pids=r.target_pids, encrypted=r.encrypted)  # fmt: skip
