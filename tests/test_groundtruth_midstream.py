"""The truth of a connection whose start the capture missed (observe attached to a running
service). HTTP/2: header fields Wireshark could not resolve are unknown, never absent.
HTTP/1: a response to a request sent before the capture began pairs with nothing."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from harness.analysis.match import judge
from harness.groundtruth.capture import Dumpcap
from harness.groundtruth.extract import _apply_headers, _Call, _truth_blind, extract_exchanges
from harness.model import Exchange
from harness.runner.record import free_port


def _midstream_call() -> _Call:
    call = _Call(Exchange(source="truth", side="wire", protocol="h2c", stream_id=25))
    # what tshark gives for a HEADERS block of indexes into a dynamic table it never saw
    _apply_headers(call, True, [(":method", "POST"), ("<unknown>", "")])
    _apply_headers(call, False, [(":status", "200"), ("<unknown>", "")])
    _apply_headers(call, False, [("<unknown>", "")])
    call.data_bytes = [214, 25]
    call.x.req_bytes, call.x.resp_bytes = call.data_bytes
    _truth_blind(call)
    return call


def test_unresolved_header_fields_are_unknown_to_the_truth() -> None:
    x = _midstream_call().x
    assert x.method == "POST" and x.status == 200
    assert x.req_headers == {}  # the marker is not a header
    unknown = {d.field for d in x.degraded}
    assert {"path", "authority", "req_headers", "grpc_status", "req_bytes"} <= unknown
    assert "method" not in unknown  # a static-table entry: the truth knows it


def test_a_collector_that_saw_the_headers_is_not_wrong_against_it() -> None:
    truth = _midstream_call().x
    seen = Exchange(
        source="uprobe", side="server", protocol="h2c-grpc", stream_id=25, method="POST",
        path="/probebench.Bench/Unary", status=200, grpc_status=0, req_bytes=209, resp_bytes=20,
        req_headers={"x-tenant": "acme"},
    )  # fmt: skip
    v = judge(truth, seen)
    assert not v.wrong, v.wrong


def test_a_stream_seen_from_its_start_is_judged_in_full() -> None:
    call = _Call(Exchange(source="truth", side="wire", protocol="h2c", stream_id=1))
    _apply_headers(call, True, [(":method", "POST"), ("content-type", "application/grpc"),
                                ("x-tenant", "acme")])  # fmt: skip
    _truth_blind(call)
    assert call.x.degraded == []
    seen = Exchange(source="uprobe", side="server", protocol="h2c-grpc", stream_id=1,
                    method="POST", req_headers={"x-tenant": "other"})  # fmt: skip
    assert "req_headers" in judge(call.x, seen).wrong


# -- HTTP/1 on a keep-alive connection whose start the capture missed ----------------------


@pytest.mark.capture
@pytest.mark.parametrize("out_of_order", [False, True])
def test_an_answer_to_a_request_before_the_capture_is_not_paired(
    tmp_path: Path, out_of_order: bool
) -> None:
    """The capture begins between a request and its response (observe attached to a busy
    service): that response answers nothing the capture holds. Paired in order, it would
    shift every pairing of the connection by one (and mark them all truth_unreliable)."""
    port = free_port()
    body = b"x" * 300
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    pcap = tmp_path / "c.pcapng"
    with socket.create_server(("127.0.0.1", port)) as srv:
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        with cli, conn:
            cli.sendall(b"GET /before HTTP/1.1\r\nHost: h\r\n\r\n")
            conn.recv(4096)
            with Dumpcap(pcap, [port]):
                conn.sendall(resp)  # the answer to /before: its request is not captured
                _read_response(cli, len(resp))
                for i in range(3):
                    cli.sendall(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
                    conn.recv(4096)
                    conn.sendall(resp[:-1] + b"%d" % i)
                    _read_response(cli, len(resp))
    xs, stats = extract_exchanges(pcap, http1_ports=[port], h2c_ports=[],
                                   out_of_order=out_of_order)
    assert [(x.path, x.status, x.resp_bytes, x.degraded) for x in xs] == [
        (f"/{i}", 200, 300, []) for i in range(3)
    ]
    assert stats.unpaired_responses == 1
    assert any("before the capture began" in w for w in stats.warnings)


def _read_response(s: socket.socket, n: int) -> None:
    got = b""
    while len(got) < n:
        got += s.recv(n - len(got))
