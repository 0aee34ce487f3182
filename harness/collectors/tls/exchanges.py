"""TLS-collector recordings -> Exchanges: the plaintext of each SSL connection goes through
the same HTTP/1 and HTTP/2 stitchers as the kernel side's bytes.

A TLS probe attached late meets the same HPACK problem as the kernel side: its
connections' header tables were filled before it looked. That is measured, not hidden.
"""

from __future__ import annotations

from pathlib import Path

from harness.collectors.base import ObservedStats, ReplayInput
from harness.collectors.tls.decode import decode
from harness.model import Exchange, is_h2
from harness.protocols.bytestream import drop_split_tails, place, stitch, trim_to_first_request
from harness.protocols.common import Segment
from harness.protocols.sniff import infer_proto


def _proto(send: list[Segment], recv: list[Segment], from_start: bool) -> str | None:
    for segs in (send, recv):
        if segs and segs[0].data:
            p = infer_proto(segs[0].data[:16], from_start=from_start)
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
    streams_of: dict[int, set[int]] = {}  # id(connection) -> HTTP/2 stream ids it produced
    for conn in conns:
        role = conn.role_by_ports(ports)
        if role is None:
            if conn.local is None:
                st.unattributed_connections += 1
            else:
                st.skipped_other_ports += 1
            continue
        from_start = conn.seen_from_start()
        send, recv = conn.segments(0), conn.segments(1)
        proto = _proto(send, recv, from_start) or ("http2" if h2 else "http1")
        st.connections += 1
        st.connections_by_proto[proto] = st.connections_by_proto.get(proto, 0) + 1
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
        out.extend(xs)
    st.decode = dict(vars(dst))
    return out, st


def replay_exchanges(r: ReplayInput) -> tuple[list[Exchange], ObservedStats]:
    return tls_exchanges(r.events, r.ports, attach_at_ns=r.attach_at_ns, h2=is_h2(r.protocol))


def not_covered(lang: str | None, grpc: bool) -> str | None:
    """Why the TLS collector cannot see a side at all, or None where it can."""
    if lang == "py" and grpc:
        return ("grpcio: its TLS is BoringSSL linked statically into cygrpc with no symbol "
                "table, so there is nothing to probe (uncoverable)")
    return None
