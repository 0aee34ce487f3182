"""One connection's plaintext as a collector that sees bytes hands it to the stitchers.

Any collector that reads plaintext (the kernel side's syscalls, TLS probes on the library's
read and write) gives the same thing: the two ends, which end the observed process is,
each direction's calls in order as Segments, and where lost calls split the stream. This
module holds that shape and the glue that feeds it to the HTTP/1 and HTTP/2 stitchers and
places their exchanges on the connection, so every such collector stitches alike.
Sans-I/O: segments in, exchanges out.

A stream split at lost calls goes on as a new ByteStream seen mid-stream (``continues``
names the part before the gap): the stitchers start over there (HPACK from an empty table,
HTTP/1 pairing from the next message) instead of joining bytes that were never adjacent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, Self

from harness.model import NO_PEER_ADDRESS, Exchange
from harness.protocols.common import Segment
from harness.protocols.http1.stitch import Http1Stats, stitch_http1
from harness.protocols.http2.hpack import HpackMode
from harness.protocols.http2.stitch import Http2Stats, orient, stitch_http2
from harness.protocols.sniff import HTTP1_STARTS

ADDRESS_FIELDS = ("client_ip", "client_port", "server_ip", "server_port")
Role = Literal["client", "server"]
AF_INET, AF_INET6 = 2, 10


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int


def ip_text(raw: bytes, family: int) -> str:
    """A raw address as the wire (and Wireshark) writes it: IPv4-mapped IPv6 (a dual-stack
    socket, or Go's 16-byte form, talking IPv4) as IPv4; "" for another family."""
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == AF_INET6:
        v6 = ipaddress.IPv6Address(raw[:16])
        return str(v6.ipv4_mapped or v6)
    return ""


@dataclass(kw_only=True)
class ByteStream:
    """One connection (or the part of it between lost calls) as one process saw it."""

    role: str = "unknown"  # client | server | unknown: which end the observed process is
    local: Endpoint | None = None
    remote: Endpoint | None = None
    # the part of the same connection before lost calls split it (this one is mid-stream)
    continues: Self | None = field(default=None, repr=False)

    def ends(self, role: str) -> tuple[Endpoint | None, Endpoint | None]:
        """(client, server) when the observed process is ``role``."""
        return (self.local, self.remote) if role == "client" else (self.remote, self.local)

    def role_by_ports(self, server_ports: set[int]) -> Role | None:
        """Which end the observed process is: the role it knows, else the end on one of the
        run's server ports (None: neither tells)."""
        if self.role in ("client", "server"):
            return self.role  # type: ignore[return-value]
        if self.local is not None and self.local.port in server_ports:
            return "server"
        if self.remote is not None and self.remote.port in server_ports:
            return "client"
        return None

    def before(self) -> Iterator[Self]:
        """The parts before this one, nearest first."""
        part = self.continues
        while part is not None:
            yield part
            part = part.continues


class _Endpoint(Protocol):
    @property
    def ip(self) -> str: ...
    @property
    def port(self) -> int: ...


def set_addresses(x: Exchange, client: _Endpoint | None, server: _Endpoint | None) -> None:
    """The ends a collector knows, and each one it does not marked no_peer_address."""
    if client is not None:
        x.client_ip, x.client_port = client.ip, client.port
    if server is not None:
        x.server_ip, x.server_port = server.ip, server.port
    for f in ADDRESS_FIELDS:
        if getattr(x, f) is None:
            x.degrade(f, NO_PEER_ADDRESS)


def stitch(
    send: Sequence[Segment],
    recv: Sequence[Segment],
    *,
    proto: str,
    role: Role,
    source: str,
    conn_id: str,
    closed_ns: int | None = None,
    from_start: bool = False,
    after_loss: bool = False,
    pipelining: bool = False,
    requests_lost_after: int | None = None,
    hpack_mode: HpackMode = "tolerant",
) -> tuple[list[Exchange], Http1Stats | Http2Stats]:
    """One stream's exchanges by its protocol (``http1`` or ``http2``), from what the observed
    process sent and received. The HTTP/1 arguments (``closed_ns``: when it closed, for
    close-delimited bodies; ``pipelining``: seen before a split) go to its stitcher, and
    ``hpack_mode`` to HTTP/2's."""
    if proto == "http1":
        return stitch_http1(send, recv, side=role, closed_ns=closed_ns, source=source,
                            from_start=from_start, after_loss=after_loss, pipelining=pipelining,
                            requests_lost_after=requests_lost_after)  # fmt: skip
    c2s, s2c = orient(send, recv, role)
    return stitch_http2(c2s, s2c, hpack_mode=hpack_mode, source=source, side=role,
                        conn_id=conn_id)  # fmt: skip


def trim_to_first_request(role: str, send: list[Segment], recv: list[Segment]) -> int:
    """HTTP/1 found mid-stream (opened before the attach, after a loss, or a read begun
    before the attach): leave out the response segments before the first request start
    seen; how many. They answer requests no one saw, and without the request a response's
    body length is a guess (a HEAD or a 204 has none whatever its headers say): parsing
    them could swallow the next response and pair it with the wrong request. A response
    alone has no start time either, so nothing could tie it to the truth: a phantom."""
    if role not in ("client", "server"):
        return 0
    reqs, resps = (send, recv) if role == "client" else (recv, send)
    start = next(
        (s.ts_ns for s in reqs if s.data.startswith(HTTP1_STARTS[:-1])), None
    )  # fmt: skip
    keep = [s for s in resps if start is not None and s.ts_ns > start]
    dropped = len(resps) - len(keep)
    resps[:] = keep
    return dropped


def drop_split_tails(
    stream: ByteStream, xs: list[Exchange], streams_of: dict[int, Container[int]]
) -> tuple[list[Exchange], int]:
    """HTTP/2 streams cut in two by lost calls: the part after the gap is not a new call (the
    part before it is, degraded). ``streams_of`` maps id(part) -> the stream ids it gave;
    returns the exchanges kept and how many were left out."""
    before = [s for prev in stream.before() if (s := streams_of.get(id(prev))) is not None]
    kept = [x for x in xs if not any(x.stream_id in s for s in before)]
    streams_of[id(stream)] = {x.stream_id for x in kept if x.stream_id is not None}
    return kept, len(xs) - len(kept)


def place(
    xs: list[Exchange],
    stream: ByteStream,
    role: str,
    *,
    pid: int,
    conn_id: str,
    both_ends: bool = False,
) -> None:
    """Put a stream's exchanges on it: the observed side, process, connection and addresses.
    ``both_ends``: an address is used only with the other end's (one alone cannot be tied
    to the truth)."""
    client, server = stream.ends(role)
    if both_ends and (client is None or server is None):
        client = server = None
    for x in xs:
        x.side = role  # type: ignore[assignment]
        x.pid = pid
        x.conn_id = conn_id
        set_addresses(x, client, server)
