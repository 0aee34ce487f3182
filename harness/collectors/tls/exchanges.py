"""TLS-collector recordings -> Exchanges: the plaintext of each SSL connection goes through
the same HTTP/1 and HTTP/2 stitchers as the kernel side's bytes.

A TLS probe attached late meets the same HPACK problem as the kernel side: its
connections' header tables were filled before it looked. That is measured, not hidden.
"""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path

from harness.collectors.base import (
    STREAM_END_NS,
    ExchangeBatch,
    ExchangeStream,
    ObservedStats,
    ReplayInput,
)
from harness.collectors.tls.decode import TlsConnection, TlsDecodeStats, decode, decode_steps
from harness.model import Exchange, is_h2
from harness.protocols.bytestream import (
    Role,
    drop_split_tails,
    place,
    stitch,
    trim_to_first_request,
)
from harness.protocols.http1.stitch import Http1Stream
from harness.protocols.http2.stitch import Http2Stream
from harness.protocols.sniff import infer_proto


def _proto(heads: tuple[bytes, bytes], from_start: bool) -> str | None:
    """The protocol the first bytes sent, else received, say (None: neither tells)."""
    for head in heads:
        if head:
            p = infer_proto(head[:16], from_start=from_start)
            if p in ("http1", "http2"):
                return p
    return None


def tls_exchanges(
    events: Path,
    server_ports: list[int],
    *,
    attach_at_ns: int | None = None,
    h2: bool = False,
) -> tuple[list[Exchange], ObservedStats]:
    """Exchanges one TLS recording yields, both sides. ``h2``: the run's ports carry HTTP/2
    (used when a late-attached connection's first bytes cannot tell)."""
    conns, dst = decode(events, attach_at_ns=attach_at_ns)
    st = ObservedStats()
    ports = set(server_ports)
    out: list[Exchange] = []
    streams_of: dict[int, Container[int]] = {}  # id(connection) -> HTTP/2 stream ids it produced
    for conn in conns:
        out += _whole(conn, ports, h2, st, dst, streams_of)
    st.decode = dict(vars(dst))
    return out, st


def _whole(
    conn: TlsConnection, ports: set[int], h2: bool, st: ObservedStats, dst: TlsDecodeStats,
    streams_of: dict[int, Container[int]],
) -> list[Exchange]:  # fmt: skip
    """One connection's exchanges, from all of its calls at once."""
    role = conn.role_by_ports(ports)
    if role is None:
        if conn.local is None:
            st.unattributed_connections += 1
        else:
            st.skipped_other_ports += 1
        return []
    from_start = conn.seen_from_start()
    send, recv = conn.segments(0), conn.segments(1)
    heads = (send[0].data if send else b"", recv[0].data if recv else b"")
    proto = _proto(heads, from_start) or ("http2" if h2 else "http1")
    _count(st, proto)
    if proto == "http1" and not from_start:
        # as the kernel side: a connection found mid-stream (opened before the attach,
        # after lost calls, or a read the attach cut: Go's Read entered before it, an
        # OpenSSL SSL_read with no return probe) may show responses whose requests no
        # probe saw
        dst.responses_before_request += trim_to_first_request(role, send, recv)
    xs, pst = stitch(send, recv, proto=proto, role=role,
                     source="tls", conn_id=conn.key, from_start=from_start,
                     after_loss=conn.continues is not None)  # fmt: skip
    if proto == "http2":
        xs, tails = drop_split_tails(conn, xs, streams_of)
        st.split_stream_tails += tails
    st.add_parse(pst)
    place(xs, conn, role, pid=conn.tgid, conn_id=conn.key, both_ends=True)
    return xs


def _count(st: ObservedStats, proto: str) -> None:
    st.connections += 1
    st.connections_by_proto[proto] = st.connections_by_proto.get(proto, 0) + 1


# How long a call's chunks may take to come (they are emitted back to back): the streamed
# replay takes a call whose direction has no later one this long after it began.
SLACK_NS = 1_000_000_000


class _Live:
    """A connection seen from its first byte, stitched while its calls are read."""

    def __init__(self, conn: TlsConnection, role: Role, proto: str,
                 out: list[Exchange]) -> None:  # fmt: skip
        self.conn, self.role, self.proto = conn, role, proto

        def ready(xs: list[Exchange]) -> None:
            place(xs, conn, role, pid=conn.tgid, conn_id=conn.key, both_ends=True)
            out.extend(xs)

        self.h1: Http1Stream | None = None
        self.h2: Http2Stream | None = None
        if proto == "http1":
            self.h1 = Http1Stream(role, source="tls", from_start=True, on_ready=ready,
                                  hand_over=True)  # fmt: skip
        else:
            self.h2 = Http2Stream(role, ready, source="tls", conn_id=conn.key)

    def feed(self, before_ns: int | None) -> None:
        """Its calls that are whole (all: None), to its stitcher."""
        for d in (0, 1):
            for seg in self.conn.take(d, before_ns):
                (self.h1 or self.h2).add(d == 0, seg)  # type: ignore[union-attr]
        if self.h2 is not None:
            self.h2.advance(before_ns if before_ns is not None else 1 << 63)

    def earliest(self) -> int | None:
        starts = [ts for c in self.conn.calls for ts, _o, _p in c.values()]
        if (e := (self.h1 or self.h2).earliest_start()) is not None:  # type: ignore[union-attr]
            starts.append(e)
        return min(starts, default=None)

    def finish(self, st: ObservedStats, streams_of: dict[int, Container[int]]) -> None:
        self.feed(None)
        if self.h1 is not None:
            st.add_parse(self.h1.finish(None)[1])
        else:
            assert self.h2 is not None
            st.add_parse(self.h2.finish()[1])
            streams_of[id(self.conn)] = self.h2.stream_ids


def tls_stream(
    events: Path, server_ports: list[int], *, attach_at_ns: int | None = None, h2: bool = False,
) -> ExchangeStream:  # fmt: skip
    """``tls_exchanges`` as the recording is read. A connection seen from its first byte
    (its socket established after the attach, no call lost) is stitched while read once
    both of its directions have begun (its first bytes say its protocol), its exchanges
    handed over as they finish; the others (found mid-stream, after a loss, of no port of
    the run) are stitched whole at the end, as before, and hold the watermark back."""
    ports = set(server_ports)
    st = ObservedStats()
    steps = decode_steps(events, attach_at_ns=attach_at_ns)
    live: dict[int, _Live] = {}  # id(connection) -> streamed connection, until it ends
    streamed: set[int] = set()  # id(connection): ever streamed
    waiting: list[TlsConnection] = []  # its directions have not both begun
    ignored: list[TlsConnection] = []  # no role: its calls are let go as they come
    pin = STREAM_END_NS  # the earliest start of a connection stitched at the end
    seen = 0  # connections looked at
    streams_of: dict[int, Container[int]] = {}
    out: list[Exchange] = []
    said = -STREAM_END_NS
    late = 0
    while True:
        try:
            conns, newest = next(steps)
        except StopIteration as stop:
            conns, dst = stop.value
            break
        waiting += conns[seen:]
        seen = len(conns)
        still: list[TlsConnection] = []
        for conn in waiting:
            role = conn.role_by_ports(ports)
            if role is not None and conn.seen_from_start() and (all(conn.calls) or conn.replaced):
                proto = _proto((conn.head(0), conn.head(1)), True) or (
                    "http2" if h2 else "http1")
                _count(st, proto)
                live[id(conn)] = _Live(conn, role, proto, out)
                streamed.add(id(conn))
            elif role is None:  # of no port of the run: counted at the end, bytes unused
                ignored.append(conn)
            elif not conn.seen_from_start():  # stitched whole at the end
                pin = min(pin, conn.first_ns)
            else:
                still.append(conn)  # a direction has not begun
        waiting = still
        for conn in ignored:
            conn.calls = [{}, {}]
        bound = newest - SLACK_NS
        marks = [bound, pin, *(c.first_ns for c in waiting)]
        for k, lc in list(live.items()):
            if lc.conn.replaced:  # nothing more comes to it
                lc.finish(st, streams_of)
                del live[k]
                continue
            lc.feed(bound)
            if (e := lc.earliest()) is not None:
                marks.append(e)
        late += sum(1 for x in out if (x.t_start_ns or 0) < said)
        said = max(said, min(marks))
        yield ExchangeBatch(out[:], said)
        out.clear()
    for lc in live.values():
        lc.finish(st, streams_of)
    late += sum(1 for x in out if (x.t_start_ns or 0) < said)
    for conn in conns:  # in their order: a part after a loss needs the one before it
        if id(conn) not in streamed:
            out += _whole(conn, ports, h2, st, dst, streams_of)
    dst.late_exchanges = late
    st.decode = dict(vars(dst))
    yield ExchangeBatch(out, STREAM_END_NS)
    return st


def replay_exchanges(r: ReplayInput) -> tuple[list[Exchange], ObservedStats]:
    return tls_exchanges(r.events, r.ports, attach_at_ns=r.attach_at_ns, h2=is_h2(r.protocol))


def replay_stream(r: ReplayInput) -> ExchangeStream:
    return tls_stream(r.events, r.ports, attach_at_ns=r.attach_at_ns, h2=is_h2(r.protocol))


def not_covered(lang: str | None, grpc: bool) -> str | None:
    """Why the TLS collector cannot see a side at all, or None where it can."""
    if lang == "py" and grpc:
        return ("grpcio: its TLS is BoringSSL linked statically into cygrpc with no symbol "
                "table, so there is nothing to probe (uncoverable)")
    return None
