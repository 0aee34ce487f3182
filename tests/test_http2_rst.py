"""Calls ended by RST_STREAM in the byte-stream stitcher: the status their client sees, and
a reset that is the stream's first frame seen still makes a call (sans-I/O, h2's bytes)."""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection

from harness.protocols.common import Segment
from harness.protocols.http2 import stitch_http2
from harness.protocols.http2.grpc import R_RST_CANCEL_OR_DEADLINE, grpc_timeout_ns

C2S, S2C = 0, 1
MS = 1_000_000
REQ = [(":method", "POST"), (":scheme", "http"), (":path", "/svc.A/M"),
       (":authority", "localhost:1"), ("content-type", "application/grpc"), ("te", "trailers"),
       ("x-probebench-id", "7")]  # fmt: skip


def _peers() -> tuple[H2Connection, H2Connection, list[tuple[int, bytes]]]:
    cfg = {"header_encoding": "utf-8", "validate_inbound_headers": False}
    client = H2Connection(H2Configuration(client_side=True, **cfg))
    server = H2Connection(H2Configuration(client_side=False, **cfg))
    client.initiate_connection()
    server.initiate_connection()
    out: list[tuple[int, bytes]] = []
    _pump(client, server, out)
    return client, server, out


def _pump(client: H2Connection, server: H2Connection, out: list[tuple[int, bytes]]) -> None:
    for d, src, dst in ((C2S, client, server), (S2C, server, client)):
        data = src.data_to_send()
        if data:
            dst.receive_data(data)
            out.append((d, data))


def _segs(chunks: list[tuple[int, int, bytes]], d: int) -> list[Segment]:
    return [Segment(ts, data, len(data)) for dd, ts, data in chunks if dd == d]


def _stitch(chunks: list[tuple[int, int, bytes]], side: str = "server"):
    xs, stats = stitch_http2(_segs(chunks, C2S), _segs(chunks, S2C), source="kprobe",
                             side=side)  # type: ignore[arg-type]
    return xs, stats


def _call(code: int, timeout: str | None, elapsed_ms: int, by_client: bool) -> list:
    client, server, out = _peers()
    chunks = [(d, i, b) for i, (d, b) in enumerate(out)]
    t0 = 1000 * MS
    client.send_headers(1, REQ + ([("grpc-timeout", timeout)] if timeout else []))
    chunks.append((C2S, t0, client.data_to_send()))
    server.receive_data(chunks[-1][2])
    src = client if by_client else server
    src.reset_stream(1, code)
    chunks.append((C2S if by_client else S2C, t0 + elapsed_ms * MS, src.data_to_send()))
    return chunks


def test_rst_codes_map_as_grpc_go_maps_them() -> None:
    for code, want in ((8, 1), (7, 14), (2, 13), (11, 8), (12, 7), (0x42, 2)):
        xs, stats = _stitch(_call(code, None, 5, by_client=code == 8))
        assert len(xs) == 1 and stats.rst_streams == 1
        assert (xs[0].protocol, xs[0].grpc_status) == ("h2c-grpc", want), code


def test_cancel_against_the_deadline() -> None:
    """CANCEL on a call with a grpc-timeout: DEADLINE_EXCEEDED once the timeout ran out on
    the client's side (never concluded by a server, which may read the head late);
    CANCELLED well before it; unknown in between, with the reason."""
    assert grpc_timeout_ns("100m") == 100 * MS and grpc_timeout_ns("99975894n") == 99975894
    assert grpc_timeout_ns("123456789S") is None and grpc_timeout_ns("5x") is None
    for timeout, elapsed, side, want in (
        ("100m", 101, "client", 4), ("100m", 100, "client", 4), ("30S", 100, "client", 1),
        ("30S", 100, "server", 1), (None, 10_000, "server", 1), (None, 10_000, "client", 1),
        ("100m", 101, "server", None), ("100m", 20, "client", None), ("100m", 90, "client", None),
        ("3S", 1900, "client", None), ("3S", 1400, "client", 1),
    ):  # fmt: skip
        (x,), _ = _stitch(_call(8, timeout, elapsed, by_client=True), side)
        assert x.grpc_status == want, (timeout, elapsed, side)
        if want is None:
            assert ("grpc_status", R_RST_CANCEL_OR_DEADLINE) in [(d.field, d.reason)
                                                                 for d in x.degraded]


def test_grpc_status_before_the_reset_stands() -> None:
    client, server, out = _peers()
    chunks = [(d, i, b) for i, (d, b) in enumerate(out)]
    client.send_headers(1, REQ)
    chunks.append((C2S, 100, client.data_to_send()))
    server.receive_data(chunks[-1][2])
    server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc"),
                            ("grpc-status", "5")], end_stream=True)
    server.reset_stream(1, 0)  # NO_ERROR: the client need not send the rest of its request
    chunks.append((S2C, 200, server.data_to_send()))
    (x,), _ = _stitch(chunks)
    assert x.grpc_status == 5


def test_refused_stream_merged_before_its_request_is_a_call() -> None:
    """A server refusing a stream sends RST_STREAM as its first frame on it; read on another
    CPU, the reset can be merged before the request's HEADERS."""
    chunks = _call(7, None, 1, by_client=False)
    d, ts, data = chunks[-1]
    chunks[-1] = (d, ts - 2 * MS, data)  # stamped before the request
    xs, stats = _stitch(chunks)
    assert len(xs) == 1
    x = xs[0]
    assert (x.stream_id, x.path, x.grpc_status) == (1, "/svc.A/M", 14)
    assert stats.headers_missed_streams == 0


def test_a_reset_alone_is_a_call() -> None:
    """Attached after the request went by: the reset alone still makes a call, whose
    request fields are unknown, and so is its status (a CANCEL's deadline is unknown)."""
    for code in (7, 8):
        chunks = _call(code, None, 1, by_client=code == 8)
        (x,), _ = _stitch([c for c in chunks if c[0] == S2C or c is chunks[-1]])
        assert x.stream_id == 1 and x.path is None
        assert x.grpc_status is None  # gRPC or not is unknown: nothing is guessed
        reasons = {g.field: g.reason for g in x.degraded}
        assert reasons["path"] == "headers_missed_stream" and "grpc_status" in reasons
