"""The truth of an HTTP/2 connection whose start the capture missed (observe attached to a
running service): header fields Wireshark could not resolve are unknown, never absent."""

from __future__ import annotations

from harness.analysis.match import judge
from harness.groundtruth.extract import _apply_headers, _Call, _truth_blind
from harness.model import Exchange


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
