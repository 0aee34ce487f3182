"""HTTP/1.x framing as real clients and servers speak it, checked in the truth and the collector.

Each case is one TCP connection written as the peers' writes, in order. The truth side
gets it as a hand-written capture (IPv4/TCP, LINKTYPE_RAW, handshake and FIN included)
decoded by the real tshark; the collector side gets the same writes as the syscall
segments each process would make, stitched from the client's and from the server's
view. Both must report the same exchanges.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.groundtruth import extract_exchanges
from harness.protocols.common import Segment
from harness.protocols.http1 import stitch_http1

CLIENT, SERVER = ("127.0.0.1", 40000), ("127.0.0.1", 8081)
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
BODY = bytes(range(48, 58)) * 300  # 3,000 bytes


@dataclass(frozen=True)
class Case:
    name: str
    writes: list[tuple[str, bytes]]  # ("c" client to server | "s" server to client, bytes)
    want: list[tuple[str, str, int, int, int]]  # method, path, status, req_bytes, resp_bytes
    server_closes: bool = False
    # TShark 4.0.17 cannot decode the responses from this exchange on: the truth must say
    # so (status and resp_bytes truth_unreliable), not report them unanswered or drop them
    tshark_lost_from: int | None = None


def get(path: str, *extra: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    head = [f"{method} {path} {version}", "Host: h.example", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def resp(status: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    return ("\r\n".join([f"{version} {status}", *headers]) + "\r\n\r\n").encode() + body


def ok(body: bytes) -> bytes:
    return resp("200 OK", f"Content-Length: {len(body)}", body=body)


CASES = [
    Case("pipelined-one-write-each-way",
         [("c", get("/a") + get("/b") + get("/c", method="HEAD") + get("/d")),
          ("s", ok(b"hello") + ok(b"abc") + resp("200 OK", "Content-Length: 4096")
           + ok(b"last"))],
         [("GET", "/a", 200, 0, 5), ("GET", "/b", 200, 0, 3), ("HEAD", "/c", 200, 0, 0),
          ("GET", "/d", 200, 0, 4)],
         tshark_lost_from=2),  # it frames the HEAD response by the last request's method
    Case("pipelined-responses-one-by-one",
         [("c", get("/1") + get("/2") + get("/3")), ("s", ok(b"x" * 700)), ("s", ok(b"")),
          ("c", get("/4")), ("s", ok(b"yy")), ("s", ok(b"zzz"))],
         [("GET", "/1", 200, 0, 700), ("GET", "/2", 200, 0, 0), ("GET", "/3", 200, 0, 2),
          ("GET", "/4", 200, 0, 3)]),
    Case("expect-100-continue",
         [("c", get("/up", "Expect: 100-continue", f"Content-Length: {len(BODY)}",
                    method="POST")),
          ("s", resp("100 Continue")), ("c", BODY), ("s", resp("201 Created",
                                                               "Content-Length: 2", body=b"ok")),
          ("c", get("/next")), ("s", ok(b"n"))],
         [("POST", "/up", 201, 3000, 2), ("GET", "/next", 200, 0, 1)]),
    Case("expect-100-answered-before-the-body",  # nginx `return 200` does this
         [("c", get("/up", "Expect: 100-continue", f"Content-Length: {len(BODY)}",
                    method="POST")),
          ("s", resp("100 Continue")), ("s", ok(b"ok\n")), ("c", BODY),
          ("c", get("/after")), ("s", ok(b"a"))],
         [("POST", "/up", 200, 3000, 3), ("GET", "/after", 200, 0, 1)]),
    Case("early-hints-103",
         [("c", get("/page")), ("s", resp("103 Early Hints", "Link: </s.css>; rel=preload")),
          ("s", ok(b"<html>"))],
         [("GET", "/page", 200, 0, 6)]),
    Case("head-with-length-then-get",
         [("c", get("/big", method="HEAD")), ("s", resp("200 OK", "Content-Length: 4096")),
          ("c", get("/small")), ("s", ok(b"hi"))],
         [("HEAD", "/big", 200, 0, 0), ("GET", "/small", 200, 0, 2)]),
    Case("204-and-304",
         [("c", get("/gone", method="DELETE")), ("s", resp("204 No Content")),
          ("c", get("/doc", 'If-None-Match: "v1"')),
          ("s", resp("304 Not Modified", 'ETag: "v1"', "Content-Length: 1234")),
          ("c", get("/doc2")), ("s", ok(b"fresh"))],
         [("DELETE", "/gone", 204, 0, 0), ("GET", "/doc", 304, 0, 0),
          ("GET", "/doc2", 200, 0, 5)]),
    Case("close-delimited-body",
         [("c", get("/old", version="HTTP/1.0")),
          ("s", resp("200 OK", "Content-Type: text/plain", version="HTTP/1.0")),
          ("s", BODY[:1500]), ("s", BODY[1500:2500])],
         [("GET", "/old", 200, 0, 2500)], server_closes=True),
    Case("chunked-response-extensions-trailers",
         [("c", get("/ch")),
          ("s", resp("200 OK", "Transfer-Encoding: chunked", "Trailer: X-Sum")
           + b"5;name=value\r\nhello\r\n"),
          ("s", b"3;quoted=\"a;b\"\r\nabc\r\n0\r\nX-Sum: 8\r\n\r\n"),
          ("c", get("/ch2")), ("s", ok(b"ok"))],
         [("GET", "/ch", 200, 0, 8), ("GET", "/ch2", 200, 0, 2)]),
    Case("chunked-request",
         [("c", get("/upload", "Transfer-Encoding: chunked", method="PUT")
           + b"4\r\nabcd\r\n"),
          ("c", b"6;x=y\r\nefghij\r\n0\r\nX-Checksum: 1\r\n\r\n"),
          ("s", resp("200 OK", "Content-Length: 0")),
          ("c", get("/x")), ("s", ok(b"x"))],
         [("PUT", "/upload", 200, 10, 0), ("GET", "/x", 200, 0, 1)]),
    Case("connection-upgrade-ends-the-exchange",
         [("c", get("/chat", "Connection: Upgrade", "Upgrade: probe/1")),
          ("s", resp("101 Switching Protocols", "Connection: Upgrade", "Upgrade: probe/1")),
          ("c", b"GET /not-http HTTP/1.1\r\nHost: inside\r\n\r\n"),
          ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), ("c", b"\x00\x01binary")],
         [("GET", "/chat", 101, 0, 0)]),
]  # fmt: skip


# -- a capture written by hand -----------------------------------------------------------


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _packet(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int,
            payload: bytes = b"") -> bytes:  # fmt: skip
    ips = [bytes(int(x) for x in a[0].split(".")) for a in (src, dst)]
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = ips[0] + ips[1] + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack("!H", 0xFFFF - _sum16(pseudo + tcp + payload)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6,
                     0, ips[0], ips[1])  # fmt: skip
    ip = ip[:10] + struct.pack("!H", 0xFFFF - _sum16(ip)) + ip[12:]
    return ip + tcp + payload


def write_capture(path: Path, case: Case) -> None:
    """The connection as packets: handshake, one packet per write (split at 1400 bytes,
    like loopback's segments under a small MSS), then the server's FIN if it closes."""
    cseq, sseq = 1000, 5000
    pkts = [_packet(CLIENT, SERVER, cseq, 0, SYN),
            _packet(SERVER, CLIENT, sseq, cseq + 1, SYN | ACK),
            _packet(CLIENT, SERVER, cseq + 1, sseq + 1, ACK)]  # fmt: skip
    cseq, sseq = cseq + 1, sseq + 1
    for who, data in case.writes:
        for k in range(0, len(data), 1400):
            piece = data[k : k + 1400]
            if who == "c":
                pkts.append(_packet(CLIENT, SERVER, cseq, sseq, ACK | PSH, piece))
                cseq += len(piece)
            else:
                pkts.append(_packet(SERVER, CLIENT, sseq, cseq, ACK | PSH, piece))
                sseq += len(piece)
    if case.server_closes:
        pkts.append(_packet(SERVER, CLIENT, sseq, cseq, FIN | ACK))
        pkts.append(_packet(CLIENT, SERVER, cseq, sseq + 1, FIN | ACK))
        pkts.append(_packet(SERVER, CLIENT, sseq + 1, cseq + 1, ACK))
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]  # LINKTYPE_RAW
    for i, p in enumerate(pkts):
        out.append(struct.pack("<IIII", 1_700_000_000, i * 1000, len(p), len(p)) + p)
    path.write_bytes(b"".join(out))


def _fields(xs: list) -> list[tuple]:
    return [(x.method, x.path, x.status, x.req_bytes, x.resp_bytes) for x in xs]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_truth_pairs_as_the_protocol_does(tmp_path: Path, case: Case) -> None:
    pcap = tmp_path / f"{case.name}.pcap"
    write_capture(pcap, case)
    xs, stats = extract_exchanges(pcap, http1_ports=[SERVER[1]], h2c_ports=[])
    assert [x.conn_seq for x in xs] == list(range(len(case.want)))
    good = len(xs) if case.tshark_lost_from is None else case.tshark_lost_from
    assert _fields(xs[:good]) == case.want[:good]
    assert all(not x.degraded for x in xs[:good]), [x.degraded for x in xs]
    for x, want in zip(xs[good:], case.want[good:], strict=True):
        assert (x.method, x.path) == want[:2]
        assert {(d.field, d.reason) for d in x.degraded} >= {
            ("status", "truth_unreliable"), ("resp_bytes", "truth_unreliable")}
    assert stats.unpaired_requests == len(xs) - good


@pytest.mark.parametrize("side", ["client", "server"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_collector_stitches_as_the_protocol_does(case: Case, side: str) -> None:
    # One syscall per write; the reader sees each write just after it was made.
    c2s = [Segment(1000 * i, d, len(d)) for i, (w, d) in enumerate(case.writes) if w == "c"]
    s2c = [Segment(1000 * i, d, len(d)) for i, (w, d) in enumerate(case.writes) if w == "s"]
    send, recv = (c2s, s2c) if side == "client" else (s2c, c2s)
    closed = 1000 * len(case.writes) if case.server_closes else None
    xs, stats = stitch_http1(send, recv, side=side, closed_ns=closed, from_start=True)
    assert _fields(xs) == case.want
    assert all(not x.degraded for x in xs), [x.degraded for x in xs]
    assert stats.no_response == stats.request_missed == 0
