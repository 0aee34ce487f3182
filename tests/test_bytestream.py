"""The plaintext byte stream every byte-seeing collector feeds the stitchers through."""

from __future__ import annotations

import socket

from harness.model import NO_PEER_ADDRESS
from harness.protocols.bytestream import (
    AF_INET,
    AF_INET6,
    ByteStream,
    Endpoint,
    drop_split_tails,
    ip_text,
    place,
    stitch,
)
from harness.protocols.common import Segment

GET = b"GET /a HTTP/1.1\r\nHost: s\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
CLIENT, SERVER = Endpoint("127.0.0.1", 40000), Endpoint("127.0.0.1", 8443)


def seg(ts: int, data: bytes) -> Segment:
    return Segment(ts, data, len(data))


def test_role_comes_from_the_stream_else_from_the_server_port() -> None:
    known = ByteStream(role="client", local=SERVER, remote=CLIENT)
    assert known.role_by_ports({8443}) == "client"  # what the process knows wins
    unknown = ByteStream(local=SERVER, remote=CLIENT)
    assert unknown.role_by_ports({8443}) == "server"
    assert ByteStream(local=CLIENT, remote=SERVER).role_by_ports({8443}) == "client"
    assert unknown.role_by_ports({9}) is None
    assert ByteStream().role_by_ports({8443}) is None


def test_http1_is_stitched_and_placed_on_its_connection() -> None:
    conn = ByteStream(local=SERVER, remote=CLIENT)
    xs, st = stitch([seg(2, OK)], [seg(1, GET)], proto="http1", role="server", source="tls",
                    conn_id="c1", from_start=True)  # fmt: skip
    place(xs, conn, "server", pid=7, conn_id="c1")
    [x] = xs
    assert (x.method, x.status, x.source, x.side, x.pid, x.conn_id) == (
        "GET", 200, "tls", "server", 7, "c1")  # fmt: skip
    assert (x.client_port, x.server_port) == (40000, 8443)
    assert not x.degraded and st.complete == 1  # type: ignore[union-attr]


def test_one_end_alone_is_used_or_dropped_as_asked() -> None:
    half = ByteStream(role="client", remote=SERVER)  # its own end unknown
    for both_ends, server_port in ((False, 8443), (True, None)):
        xs, _ = stitch([seg(1, GET)], [seg(2, OK)], proto="http1", role="client",
                       source="kprobe", conn_id="c")  # fmt: skip
        place(xs, half, "client", pid=1, conn_id="c", both_ends=both_ends)
        [x] = xs
        assert x.server_port == server_port
        assert {d.field: d.reason for d in x.degraded}["client_port"] == NO_PEER_ADDRESS


def test_a_stream_cut_by_loss_is_not_counted_again_after_the_gap() -> None:
    first = ByteStream(role="client")
    second = ByteStream(role="client", continues=first)
    third = ByteStream(role="client", continues=second)
    assert list(third.before()) == [second, first]

    def xs_of(*ids: int) -> list:  # type: ignore[type-arg]
        out, _ = stitch([seg(i, GET) for i in ids], [seg(i + 1, OK) for i in ids],
                        proto="http1", role="client", source="", conn_id="c")  # fmt: skip
        for x, sid in zip(out, ids, strict=True):
            x.stream_id = sid
        return out

    streams_of: dict[int, set[int]] = {}
    kept, cut = drop_split_tails(first, xs_of(1, 3), streams_of)
    assert (len(kept), cut) == (2, 0)
    kept, cut = drop_split_tails(second, xs_of(5), streams_of)
    assert (len(kept), cut) == (1, 0)
    kept, cut = drop_split_tails(third, xs_of(3, 5, 7), streams_of)  # 3 and 5 began before
    assert ([x.stream_id for x in kept], cut) == ([7], 2)


def test_addresses_read_as_the_wire_writes_them() -> None:
    v4 = socket.inet_aton("10.1.2.3")
    assert ip_text(v4 + bytes(12), AF_INET) == "10.1.2.3"
    mapped = bytes(10) + b"\xff\xff" + v4
    assert ip_text(mapped, AF_INET6) == "10.1.2.3"  # a dual-stack socket talking IPv4
    assert ip_text(socket.inet_pton(socket.AF_INET6, "::1"), AF_INET6) == "::1"
    assert ip_text(bytes(16), 1) == ""  # not an IP family
