"""HTTP/1 parser and stitcher on real bytes from Python's http.server and http.client.

A recording TCP relay on 127.0.0.1 sits between client and server and keeps
every chunk it reads from each side, with CLOCK_MONOTONIC timestamps. The same
recorder wrote tests/fixtures/http1/traffic.json (regenerate with
``.venv/bin/python tests/test_http1_traffic.py``); the tests run on the
committed fixture and on fresh traffic.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.protocols.common import Segment
from harness.protocols.http1 import stitch_http1

FIXTURE = Path(__file__).parent / "fixtures" / "http1" / "traffic.json"
CHUNKED_PARTS = [b"hello", b" chunked", b" world" * 50]


class _Handler(BaseHTTPRequestHandler):
    """Routes that cover every framing: length, chunked (ext + trailers), close, no body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _send(self, status: int, body: bytes, *, head: bool = False, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._get(head=False)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def _get(self, *, head: bool) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/bytes/"):
            self._send(200, b"x" * int(path.rsplit("/", 1)[1]), head=head, X_Kind="bytes")
        elif path == "/nocontent":
            self.send_response(204)
            self.end_headers()
        elif path == "/notmodified":
            self.send_response(304)
            self.send_header("ETag", '"v1"')
            self.end_headers()
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Checksum")
            self.end_headers()
            for i, part in enumerate(CHUNKED_PARTS):
                self.wfile.write(b"%x;part=%d\r\n%s\r\n" % (len(part), i, part))
            self.wfile.write(b"0\r\nX-Checksum: abc123\r\n\r\n")
        elif path == "/close":
            # No Content-Length: the body runs until the server closes.
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until close " * 40)
            self.close_connection = True
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        body = self._body()
        self._send(201, b"got %d" % len(body))

    def do_PUT(self) -> None:
        self.do_POST()


class _Handler10(_Handler):
    protocol_version = "HTTP/1.0"


class _Http10Connection(http.client.HTTPConnection):
    """http.client speaking HTTP/1.0 on the request line."""

    _http_vsn = 10
    _http_vsn_str = "HTTP/1.0"


@dataclass
class Recording:
    """Both directions of one relayed connection, as chunks the relay read."""

    c2s: list[tuple[int, bytes]] = field(default_factory=list)
    s2c: list[tuple[int, bytes]] = field(default_factory=list)
    closed_ns: int | None = None


class RecordingRelay:
    """Loopback TCP relay that records what passes each way, chunk by chunk."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.recordings: list[Recording] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:  # closed by close()
                return
            server = socket.create_connection(self.upstream)
            rec = Recording()
            self.recordings.append(rec)
            for src, dst, chunks in ((client, server, rec.c2s), (server, client, rec.s2c)):
                t = threading.Thread(target=self._pump, args=(src, dst, chunks, rec), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(
        src: socket.socket, dst: socket.socket, chunks: list[tuple[int, bytes]], rec: Recording
    ) -> None:
        while True:
            try:
                data = src.recv(4096)
            except OSError:
                data = b""
            if not data:
                rec.closed_ns = rec.closed_ns or time.monotonic_ns()
                with contextlib.suppress(OSError):  # the other side may be gone already
                    dst.shutdown(socket.SHUT_WR)
                return
            chunks.append((time.monotonic_ns(), data))
            dst.sendall(data)

    def close(self) -> None:
        self.sock.close()
        for t in self._threads:
            t.join(timeout=10)


def _exchange(conn: http.client.HTTPConnection, method: str, path: str, **kw: Any) -> dict:
    body_arg = kw.get("body")
    if isinstance(body_arg, list):  # chunked upload: send the parts as an iterator
        req_bytes = sum(len(b) for b in body_arg)
        kw["body"] = iter(body_arg)
    else:
        req_bytes = len(body_arg or b"")
    conn.request(method, path, **kw)
    resp = conn.getresponse()
    body = resp.read()
    return {
        "method": method,
        "path": path,
        "status": resp.status,
        "req_bytes": req_bytes,
        "resp_bytes": len(body),
    }


def _run_http11(port: int) -> list[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = [
        _exchange(conn, "GET", "/bytes/10"),
        _exchange(conn, "GET", "/bytes/20000?big=1"),
        _exchange(conn, "HEAD", "/bytes/5000"),
        _exchange(conn, "POST", "/echo", body=b"p" * 3000),
        _exchange(conn, "GET", "/nocontent"),
        _exchange(conn, "GET", "/notmodified"),
        _exchange(conn, "GET", "/chunked"),
        _exchange(conn, "PUT", "/upload", body=[b"abc", b"defgh" * 100], encode_chunked=True),
        _exchange(
            conn,
            "POST",
            "/continue",
            body=b"c" * 700,
            headers={"Expect": "100-continue", "X-Probebench-Id": "7"},
        ),
        _exchange(conn, "GET", "/close"),
    ]
    conn.close()
    return out


def _run_http10(port: int) -> list[list[dict]]:
    conns = []
    for method, path, kw in (
        ("GET", "/bytes/1500", {}),
        ("POST", "/form", {"body": b"a=1&b=2"}),
        ("HEAD", "/bytes/99", {}),
        ("GET", "/missing", {}),  # send_error closes even HTTP/1.1 connections
        ("GET", "/close", {}),
    ):
        conn = _Http10Connection("127.0.0.1", port, timeout=10)
        conns.append([_exchange(conn, method, path, **kw)])
        conn.close()
    return conns


def record_traffic() -> list[dict]:
    """Real traffic over loopback: one HTTP/1.1 keep-alive connection, four HTTP/1.0 ones."""
    out = []
    for handler, runner in ((_Handler, _run_http11), (_Handler10, _run_http10)):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        relay = RecordingRelay(server.server_address[1])
        try:
            result = runner(relay.port)
            # Wait for the relay to see every close before reading its recordings.
            deadline = time.monotonic() + 10
            n_conns = 1 if runner is _run_http11 else len(result)
            while time.monotonic() < deadline and (
                len(relay.recordings) < n_conns
                or any(r.closed_ns is None for r in relay.recordings)
            ):
                time.sleep(0.01)
        finally:
            relay.close()
            server.shutdown()
            server.server_close()
        expected = [result] if runner is _run_http11 else result
        for rec, exp in zip(relay.recordings, expected, strict=True):
            out.append(
                {
                    "protocol": "http/1.1" if runner is _run_http11 else "http/1.0",
                    "c2s": [[ts, base64.b64encode(d).decode()] for ts, d in rec.c2s],
                    "s2c": [[ts, base64.b64encode(d).decode()] for ts, d in rec.s2c],
                    "closed_ns": rec.closed_ns,
                    "expected": exp,
                }
            )
    return out


def _segments(chunks: list[list[Any]], cap: int | None = None) -> list[Segment]:
    segs = []
    for ts, b64 in chunks:
        data = base64.b64decode(b64)
        segs.append(Segment(ts, data[:cap] if cap else data, len(data)))
    return segs


def _check_connection(conn: dict, side: str) -> None:
    c2s, s2c = _segments(conn["c2s"]), _segments(conn["s2c"])
    send, recv = (c2s, s2c) if side == "client" else (s2c, c2s)
    exchanges, stats = stitch_http1(
        send, recv, side=side, closed_ns=conn["closed_ns"], from_start=True, source="kprobe"
    )
    expected = conn["expected"]
    assert [(x.method, x.path, x.status) for x in exchanges] == [
        (e["method"], e["path"], e["status"]) for e in expected
    ]
    assert [(x.req_bytes, x.resp_bytes) for x in exchanges] == [
        (e["req_bytes"], e["resp_bytes"]) for e in expected
    ]
    assert [x.conn_seq for x in exchanges] == list(range(len(expected)))
    assert all(x.protocol == conn["protocol"] for x in exchanges)
    assert all(x.side == side and x.source == "kprobe" for x in exchanges)
    assert all(not x.degraded for x in exchanges)
    for x in exchanges:
        if conn["protocol"] == "http/1.1":
            assert x.authority is not None and x.authority.startswith("127.0.0.1:")
        else:  # http.client sends no Host header on HTTP/1.0
            assert x.authority is None and "host" not in x.req_headers
    for x in exchanges:
        assert x.t_start_ns is not None and x.t_end_ns is not None
        assert x.t_start_ns <= x.t_end_ns
    first_c2s, last_s2c = conn["c2s"][0][0], conn["s2c"][-1][0]
    assert exchanges[0].t_start_ns == first_c2s
    assert exchanges[-1].t_end_ns == last_s2c
    assert stats.exchanges == stats.complete == len(expected)
    for ps in (stats.requests, stats.responses):
        assert ps.skipped_bytes == ps.invalid == ps.resyncs == ps.lost_messages == 0
    assert stats.requests.bytes == sum(len(s.data) for s in c2s)


def _fixture() -> list[dict]:
    return json.loads(FIXTURE.read_text())


def test_fixture_holds_every_framing() -> None:
    conns = _fixture()
    statuses = {e["status"] for c in conns for e in c["expected"]}
    assert {200, 201, 204, 304, 404} <= statuses
    raw = b"".join(base64.b64decode(d) for c in conns for _, d in c["s2c"])
    assert b"HTTP/1.1 100 Continue" in raw and b"Transfer-Encoding: chunked" in raw
    raw_req = b"".join(base64.b64decode(d) for c in conns for _, d in c["c2s"])
    assert b"GET /bytes/1500 HTTP/1.0" in raw_req and b"Transfer-Encoding: chunked" in raw_req


@pytest.mark.parametrize("side", ["client", "server"])
def test_fixture_traffic_stitches_exactly(side: str) -> None:
    for conn in _fixture():
        _check_connection(conn, side)


@pytest.mark.parametrize("side", ["client", "server"])
def test_live_traffic_stitches_exactly(side: str) -> None:
    for conn in record_traffic():
        _check_connection(conn, side)


def test_fixture_chunked_trailers_and_continue() -> None:
    conn = _fixture()[0]
    exchanges, stats = stitch_http1(
        _segments(conn["c2s"]), _segments(conn["s2c"]), side="client", closed_ns=None
    )
    chunked = next(x for x in exchanges if x.path == "/chunked")
    assert chunked.trailers == {"x-checksum": "abc123"}
    assert chunked.resp_bytes == sum(len(p) for p in CHUNKED_PARTS)
    assert stats.informational == 1
    cont = next(x for x in exchanges if x.path == "/continue")
    assert cont.req_headers["expect"] == "100-continue"
    assert cont.req_headers["x-probebench-id"] == "7"
    assert cont.status == 201
    close = exchanges[-1]
    assert close.path == "/close" and close.resp_bytes == len(b"until close " * 40)


@pytest.mark.parametrize("cap", [64, 256, 1024])
def test_fixture_under_capture_limit_keeps_counts(cap: int) -> None:
    """Each chunk cut to ``cap`` bytes: lost framing degrades, never shifts pairing."""
    truncated = 0
    for conn in _fixture():
        c2s, s2c = _segments(conn["c2s"], cap), _segments(conn["s2c"], cap)
        exchanges, stats = stitch_http1(
            c2s, s2c, side="client", closed_ns=conn["closed_ns"], from_start=True
        )
        expected = conn["expected"]
        assert len(exchanges) == len(expected)
        for x, e in zip(exchanges, expected, strict=True):
            reasons = {d.field: d.reason for d in x.degraded}
            if "method" in reasons:
                assert reasons["method"] == "truncated_payload"
            else:
                assert (x.method, x.path) == (e["method"], e["path"])
            if "status" not in reasons:
                assert x.status == e["status"]
            if "resp_bytes" not in reasons:
                assert x.resp_bytes == e["resp_bytes"]
            else:
                assert reasons["resp_bytes"] == "truncated_payload"
            if "req_bytes" not in reasons:
                assert x.req_bytes == e["req_bytes"]
        hidden = sum(s.truncated for s in s2c)
        assert stats.responses.truncated_bytes + stats.responses.skipped_bytes <= hidden + sum(
            len(s.data) for s in s2c
        )
        truncated += stats.responses.truncated_bytes
        if cap == 1024:
            # Headers all fit in 1 KiB: only the chunked bodies can lose their framing.
            assert stats.lost_requests == stats.lost_responses == 0
            assert stats.complete >= len(expected) - 2
        if cap == 64:
            # Every response header block is over 64 bytes: known lost, counted, kept in place.
            assert stats.lost_responses == len(expected)
            assert stats.exchanges == len(expected) and stats.complete == 0
    # Bodies hidden by the limit are skipped by length, not lost (at 64 only headers are cut).
    assert (truncated > 0) == (cap > 64)


if __name__ == "__main__":
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(record_traffic(), indent=1) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
