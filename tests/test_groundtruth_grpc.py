"""h2c/gRPC ground truth on third-party grpc-go captures (shared/captures, never copied)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from shared_files import needs, shared_captures

from harness.groundtruth import extract_exchanges
from harness.groundtruth.tshark import tshark_path

CAPTURES = shared_captures("grpc-go-for-professionals")

# Checked by hand with: tshark -d tcp.port==50051,http2 -Y grpc -T fields -e tcp.srcport
#   -e grpc.message_length (messages and payload bytes per direction).
CASES = [
    # file, tcp.stream, path, req msgs, resp msgs, req bytes, resp bytes, client port
    ("Unary", 1, "/greet.GreetService/Greet", 1, 1, 9, 15, 65094),
    ("Server Streaming", 0, "/greet.GreetService/GreetManyTimes", 1, 10, 9, 250, 50876),
    ("Client Streaming", 0, "/greet.GreetService/LongGreet", 3, 1, 22, 42, 51118),
    ("Bidi Streaming", 0, "/greet.GreetService/GreetEveryone", 3, 3, 22, 43, 51164),
]

pytestmark = needs(CAPTURES)


@pytest.mark.parametrize(("name", "stream", "path", "req_n", "resp_n", "req_b", "resp_b", "cport"),
                         CASES, ids=[c[0] for c in CASES])
def test_grpc_call_decoded(name, stream, path, req_n, resp_n, req_b, resp_b, cport):
    xs, stats = extract_exchanges(CAPTURES / f"{name}.pcapng", http1_ports=[],
                                  h2c_ports=[50051])
    assert len(xs) == 1
    x = xs[0]
    assert x.protocol == "h2c-grpc"
    assert x.conn_id == f"tcp.stream={stream}"
    assert (x.method, x.path, x.authority) == ("POST", path, "localhost:50051")
    assert x.stream_id == 1
    assert (x.status, x.grpc_status, x.grpc_message) == (200, 0, "")
    assert (x.req_messages, x.resp_messages) == (req_n, resp_n)
    assert (x.req_bytes, x.resp_bytes) == (req_b, resp_b)
    assert (x.client_ip, x.client_port, x.server_ip, x.server_port) == ("::1", cport, "::1", 50051)
    assert x.req_headers["content-type"] == "application/grpc"
    assert x.req_headers["user-agent"] == "grpc-go/1.50.1"
    assert ":path" not in x.req_headers
    assert x.trailers["grpc-status"] == "0"
    assert x.t_start_ns is not None and x.t_end_ns is not None and x.t_start_ns < x.t_end_ns
    assert (stats.exchanges, stats.unpaired_requests, stats.unpaired_responses) == (1, 0, 0)
    # the DATA frames' bytes must add up to the gRPC messages (5-byte prefix each)
    assert not any("do not add up" in w for w in stats.warnings)


def test_unary_carries_custom_metadata_and_ignores_other_traffic():
    xs, stats = extract_exchanges(CAPTURES / "Unary.pcapng", http1_ports=[], h2c_ports=[50051])
    assert xs[0].req_headers["authorization"] == "aDummyToken"
    assert stats.packets == 4318
    assert stats.tcp_streams == 2  # the grpc connection and unrelated traffic on other ports


def test_wall_clock_is_shifted_to_monotonic():
    pcap = CAPTURES / "Unary.pcapng"
    (real,), _ = extract_exchanges(pcap, http1_ports=[], h2c_ports=[50051])
    (mono,), _ = extract_exchanges(pcap, http1_ports=[], h2c_ports=[50051],
                                   mono_offset_ns=1_000_000_007)
    assert real.t_start_ns == 1672043401017474000  # frame.time_epoch of the request HEADERS
    assert mono.t_start_ns == real.t_start_ns - 1_000_000_007
    assert mono.t_end_ns == real.t_end_ns - 1_000_000_007


def test_the_wrong_port_decodes_nothing():
    xs, stats = extract_exchanges(CAPTURES / "Bidi Streaming.pcapng", http1_ports=[],
                                  h2c_ports=[50052])
    assert xs == []
    assert stats.packets == 56


def test_a_call_whose_response_wireshark_never_saw_has_unknown_counts(tmp_path: Path) -> None:
    # the Unary capture without the server's data segments: as if Wireshark lost the stream
    cut = tmp_path / "no-response.pcapng"
    subprocess.run(
        [tshark_path(), "-r", str(CAPTURES / "Unary.pcapng"),
         "-Y", "!(tcp.srcport == 50051 && tcp.len > 0)", "-w", str(cut)],
        check=True, capture_output=True,
    )  # fmt: skip
    xs, stats = extract_exchanges(cut, http1_ports=[], h2c_ports=[50051])
    (x,) = xs
    assert x.path == "/greet.GreetService/Greet" and x.req_messages == 1
    assert (x.status, x.resp_bytes, x.resp_messages) == (None, None, None)  # not 0
    unreliable = {d.field for d in x.degraded if d.reason == "truth_unreliable"}
    assert {"resp_bytes", "resp_messages"} <= unreliable
    assert stats.unpaired_requests == 1
