"""Ground truth when the capture holds a connection's segments out of order.

On loopback with two CPUs, dumpcap can record a later segment of a stream before
an earlier one (a matrix run did: nothing was dropped). Wireshark then takes the
earlier one for a retransmission, and without out-of-order reassembly it loses the
HTTP/2 frame the segments split, and every response after it. The capture here is
written by hand: an h2 conversation made by the h2 library (one gRPC call), carried
in IPv4/TCP packets (LINKTYPE_RAW), with the response cut inside its DATA frame and
the second piece written first.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection

from harness.groundtruth import extract_exchanges

CLIENT, SERVER = ("127.0.0.1", 40000), ("127.0.0.1", 50051)
MESSAGE = bytes(range(256)) * 12  # a 3,072-byte gRPC message


def conversation() -> tuple[bytes, bytes, bytes]:
    """Client bytes, then the server's SETTINGS and its response, of one unary gRPC call."""
    c = H2Connection(H2Configuration(client_side=True))
    s = H2Connection(H2Configuration(client_side=False))
    c.initiate_connection()
    c.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", "/pb.Bench/Unary"),
                       (":authority", "127.0.0.1:50051"), ("content-type", "application/grpc"),
                       ("te", "trailers")])  # fmt: skip
    c.send_data(1, b"\0" + struct.pack(">I", 3) + b"abc", end_stream=True)
    c2s = c.data_to_send()
    s.initiate_connection()
    s.receive_data(c2s)
    preface = s.data_to_send()
    s.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    s.send_data(1, b"\0" + struct.pack(">I", len(MESSAGE)) + MESSAGE)
    s.send_headers(1, [("grpc-status", "0")], end_stream=True)
    return c2s, preface, s.data_to_send()


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def packet(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, payload: bytes) -> bytes:
    ips = [bytes(int(x) for x in a[0].split(".")) for a in (src, dst)]
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, ack, 5 << 4, 0x18, 65535, 0, 0)
    pseudo = ips[0] + ips[1] + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    csum = 0xFFFF - _sum16(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6,
                     0, ips[0], ips[1])  # fmt: skip
    ip = ip[:10] + struct.pack("!H", 0xFFFF - _sum16(ip)) + ip[12:]
    return ip + tcp + payload


def write_pcap(path: Path, packets: list[bytes]) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]  # LINKTYPE_RAW
    for i, p in enumerate(packets):
        out.append(struct.pack("<IIII", 1_700_000_000, i * 1000, len(p), len(p)) + p)
    path.write_bytes(b"".join(out))


@pytest.mark.parametrize("reordered", [False, True], ids=["in-order", "reordered"])
def test_a_response_split_and_captured_out_of_order_is_still_decoded(
    tmp_path: Path, reordered: bool
) -> None:
    c2s, preface, response = conversation()
    cut = response.index(MESSAGE) + 1000  # inside the DATA frame's payload
    first, second = response[:cut], response[cut:]
    ack, sseq = 1000 + len(c2s), 5000 + len(preface)
    pkts = [
        packet(CLIENT, SERVER, 1000, 5000, c2s),
        packet(SERVER, CLIENT, 5000, ack, preface),
        packet(SERVER, CLIENT, sseq, ack, first),
        packet(SERVER, CLIENT, sseq + len(first), ack, second),
    ]
    if reordered:
        pkts[2], pkts[3] = pkts[3], pkts[2]
    pcap = tmp_path / "call.pcap"
    write_pcap(pcap, pkts)
    xs, stats = extract_exchanges(pcap, http1_ports=[], h2c_ports=[SERVER[1]])
    (x,) = xs
    assert (x.path, x.status, x.grpc_status) == ("/pb.Bench/Unary", 200, 0)
    assert (x.req_messages, x.req_bytes) == (1, 3)
    assert (x.resp_messages, x.resp_bytes) == (1, len(MESSAGE))
    assert stats.unpaired_requests == 0 and not x.degraded
