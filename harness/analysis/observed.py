"""Collector recordings -> Exchanges: decode raw events, stitch each connection per protocol."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.analysis.compact import Sharer
from harness.collectors.kprobe.decode import Connection, decode
from harness.model import Exchange
from harness.protocols.http1.stitch import stitch_http1
from harness.protocols.http2.stitch import stitch_http2

ADDRESS_FIELDS = ("client_ip", "client_port", "server_ip", "server_port")


@dataclass(frozen=True)
class Variant:
    """A collector option compared in the report; replay applies it to one recording."""

    name: str = "default"
    use_sockdiag: bool = True
    hpack_mode: str = "tolerant"


VARIANTS = {
    v.name: v
    for v in (
        Variant(),
        Variant("no-sockdiag", use_sockdiag=False),
        Variant("hpack-strict", hpack_mode="strict"),
    )
}


@dataclass
class ObservedStats:
    connections: int = 0
    connections_by_proto: dict[str, int] = field(default_factory=dict)
    skipped_other_ports: int = 0
    # server port unknown and not one of the run's processes: cannot be tied to the run
    unattributed_connections: int = 0
    # HTTP/2 streams cut in two by lost events: the part after the gap is not a new call
    split_stream_tails: int = 0
    parse: dict[str, int] = field(default_factory=dict)
    decode: dict[str, Any] = field(default_factory=dict)
    # TLS connections: nothing in them can be decoded; by side, with and without address
    encrypted_connections: dict[str, int] = field(default_factory=dict)
    encrypted_without_address: int = 0


@dataclass(frozen=True)
class EncryptedConn:
    """A connection whose bytes were TLS records, as one side saw it (for scoring)."""

    side: str
    client_port: int
    server_port: int
    start_ns: int
    end_ns: int | None


def _int_fields(stats: Any) -> dict[str, int]:
    """The integer counters of a parser's stats dataclass (slots or not)."""
    return {
        f.name: v
        for f in dataclasses.fields(stats)
        if isinstance(v := getattr(stats, f.name), int) and not isinstance(v, bool)
    }


def _role(conn: Connection, server_ports: set[int]) -> str:
    if conn.role != "unknown":
        return conn.role
    if conn.local and conn.local.port in server_ports:
        return "server"
    if conn.remote and conn.remote.port in server_ports:
        return "client"
    return "unknown"


def _stitch_h2(conn: Connection, role: str, variant: Variant) -> tuple[list[Exchange], Any]:
    c2s, s2c = (conn.send, conn.recv) if role == "client" else (conn.recv, conn.send)
    return stitch_http2(c2s, s2c, hpack_mode=variant.hpack_mode, side=role, conn_id=conn.key)  # type: ignore[arg-type]


def _h2_by_content(conn: Connection, variant: Variant) -> tuple[str, list[Exchange], Any]:
    """An HTTP/2 connection found mid-stream with no address: no preface and no port says
    which end is the client. Requests carry :method and responses :status, both static-table
    entries that decode even after a late attach, so the orientation that yields more of
    them is the right one."""
    best: tuple[int, str, list[Exchange], Any] | None = None
    for role in ("client", "server"):
        xs, hst = _stitch_h2(conn, role, variant)
        score = sum((x.method is not None) + (x.status is not None) for x in xs)
        if best is None or score > best[0]:
            best = (score, role, xs, hst)
    assert best is not None
    return best[1], best[2], best[3]


def drop_split_tails(
    conn: Any, xs: list[Exchange], streams_of: dict[int, set[int]], st: ObservedStats
) -> list[Exchange]:
    """HTTP/2 streams cut in two by lost events: the part after the gap is not a new call
    (the part before it is, degraded). ``conn.continues`` links a connection split at lost
    events to the part before the gap; ``streams_of`` maps id(part) -> its stream ids."""
    seen: set[int] = set()
    prev = conn.continues
    while prev is not None:
        seen |= streams_of.get(id(prev), set())
        prev = prev.continues
    st.split_stream_tails += sum(1 for x in xs if x.stream_id in seen)
    xs = [x for x in xs if x.stream_id not in seen]
    streams_of[id(conn)] = {x.stream_id for x in xs if x.stream_id is not None}
    return xs


def kprobe_exchanges(
    events: Path,
    server_ports: list[int],
    *,
    variant: Variant = Variant(),
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
    st = ObservedStats(decode=dict(vars(dstats)))
    ports = set(server_ports)
    out: list[Exchange] = []
    streams_of: dict[int, set[int]] = {}  # id(connection) -> HTTP/2 stream ids it produced
    for conn in conns:
        role = _role(conn, ports)
        h2: tuple[list[Exchange], Any] | None = None
        if role == "unknown" and conn.proto == "http2":
            role, *rest = _h2_by_content(conn, variant)
            h2 = (rest[0], rest[1])
        elif role == "unknown":
            role = "server"  # an HTTP/1 connection always gets a role from its first bytes
        client, server = (
            (conn.local, conn.remote) if role == "client" else (conn.remote, conn.local)
        )
        if server is not None and ports and server.port not in ports:
            st.skipped_other_ports += 1
            continue
        if server is None and (target_pids is None or conn.tgid not in target_pids):
            st.unattributed_connections += 1
            continue
        st.connections += 1
        st.connections_by_proto[conn.proto] = st.connections_by_proto.get(conn.proto, 0) + 1
        if conn.proto == "tls":
            side = role if role != "unknown" else "server"
            st.encrypted_connections[side] = st.encrypted_connections.get(side, 0) + 1
            if client is None or server is None:
                st.encrypted_without_address += 1
            elif encrypted is not None:
                encrypted.append(EncryptedConn(side, client.port, server.port, conn.opened_ns,
                                               conn.closed_ns))  # fmt: skip
            continue
        if conn.stitched is not None:  # stitched while decoded
            xs, pst = conn.stitched
            conn.stitched = None
            counters = _int_fields(pst)
        elif conn.proto == "http1":
            xs, pst = stitch_http1(
                conn.send, conn.recv, side=role, closed_ns=conn.closed_ns,
                from_start=conn.from_start,
            )  # fmt: skip
            counters = _int_fields(pst)
        elif conn.proto == "http2":
            xs, hst = h2 or _stitch_h2(conn, role, variant)
            counters = _int_fields(hst)
        else:
            continue
        for k, v in counters.items():
            st.parse[k] = st.parse.get(k, 0) + v
        # its bytes are parsed: let them go while the next connection is stitched
        conn.send, conn.recv = [], []
        share(xs)
        if conn.proto == "http2":
            xs = drop_split_tails(conn, xs, streams_of, st)
        for x in xs:
            x.side = role  # type: ignore[assignment]
            x.pid = conn.tgid
            x.conn_id = conn.key
            if client is not None:
                x.client_ip, x.client_port = client.ip, client.port
            if server is not None:
                x.server_ip, x.server_port = server.ip, server.port
            for f in ADDRESS_FIELDS:
                if getattr(x, f) is None:
                    x.degrade(f, "no_peer_address")
            out.append(x)
    return out, st
