"""HTTP/1 body skipping in the kernel-side collector, for real (bpf/kprobe_events.h).

One recorder (one BPF compile) watches two connections of one process, each end a
socket of this test, so every write boundary is the test's own. The first carries
what the kernel can frame: a Content-Length body bigger than one read, a HEAD whose
response announces a length and sends none, chunked data, a POST body in its own write,
two pipelined requests in one write answered in one write, a 304 with a length, and a
start line whose first byte comes alone (Go's server reads 1 byte, then the rest). The
second ends with a close-delimited body, which the kernel cannot frame: it gives up and
captures as before. Replay's parser frames everything again, so a wrong gap in the
kernel would show as a lost exchange here.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from test_bpf_kprobe import start_recorder

from harness.collectors.kprobe.decode import Connection, decode
from harness.protocols.http1 import stitch_http1
from harness.runner.record import free_port

pytestmark = pytest.mark.bpf

BIG = 50_000
CHUNKS = [4096, 4096, 1000]


def _body(n: int) -> bytes:
    return bytes(b"0123456789abcdef"[i % 16] for i in range(n))


def _recv_until(s: socket.socket, buf: bytearray, marker: bytes, count: int = 1) -> None:
    while buf.count(marker) < count:
        got = s.recv(65536)
        if not got:
            raise AssertionError(f"closed early: {bytes(buf[-200:])!r}")
        buf += got


def _recv_exact(s: socket.socket, buf: bytearray, n: int) -> None:
    while len(buf) < n:
        got = s.recv(65536)
        if not got:
            raise AssertionError("closed early")
        buf += got


def _framed_server(ls: socket.socket) -> None:
    c, _ = ls.accept()
    with c:
        buf = bytearray()
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
        _recv_until(c, buf, b"\r\n\r\n")  # GET /big
        c.sendall(head % BIG + _body(BIG))
        buf.clear()
        _recv_until(c, buf, b"\r\n\r\n")  # HEAD /head
        c.sendall(head % 7777)
        buf.clear()
        _recv_until(c, buf, b"\r\n\r\n")  # GET /chunked
        c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for n in CHUNKS:
            c.sendall(b"%x\r\n" % n + _body(n))
            time.sleep(0.01)
            c.sendall(b"\r\n")  # a chunk's CRLF alone, as Go's client writes it
        c.sendall(b"0\r\n\r\n")
        buf.clear()
        _recv_until(c, buf, b"\r\n\r\n")  # POST /upload, then its body
        _recv_exact(c, buf, buf.index(b"\r\n\r\n") + 4 + 3000)
        c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        buf.clear()
        _recv_until(c, buf, b"\r\n\r\n", 2)  # two pipelined GETs
        c.sendall((head % 100 + _body(100)) * 2)
        buf.clear()
        _recv_until(c, buf, b"\r\n\r\n")  # GET /etag
        c.sendall(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 999\r\n\r\n")
        buf.clear()
        _recv_until(c, buf, b"\r\n\r\n")  # GET /last, its first byte read alone
        c.sendall(head % 10 + _body(10))
        buf.clear()
        _recv_until(c, buf, b"\r\n\r\n")  # GET /long, a long head in two writes
        c.sendall(head % 10 + _body(10))
        buf.clear()
        _recv_until(c, buf, b"\r\n0\r\n\r\n")  # PUT /chunks, a size line cut in two
        c.sendall(head % 10 + _body(10))
        buf.clear()
        c.recv(1)  # the client closes


def _framed_client(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        buf = bytearray()
        s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        _recv_exact(s, buf, BIG + 39)
        buf.clear()
        s.sendall(b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n")
        _recv_until(s, buf, b"\r\n\r\n")
        buf.clear()
        s.sendall(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
        _recv_until(s, buf, b"\r\n0\r\n\r\n")
        buf.clear()
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 3000\r\n\r\n")
        time.sleep(0.01)
        s.sendall(_body(3000))
        _recv_until(s, buf, b"\r\n\r\n")
        buf.clear()
        s.sendall(b"GET /p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /p2 HTTP/1.1\r\nHost: t\r\n\r\n")
        _recv_exact(s, buf, 2 * (38 + 100))
        buf.clear()
        s.sendall(b"GET /etag HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"x\"\r\n\r\n")
        _recv_until(s, buf, b"\r\n\r\n")
        buf.clear()
        s.sendall(b"G")
        time.sleep(0.05)  # the server's first read takes the 1 byte alone
        s.sendall(b"ET /last HTTP/1.1\r\nHost: t\r\n\r\n")
        _recv_exact(s, buf, 37 + 10)
        buf.clear()
        long = b"GET /long HTTP/1.1\r\nHost: t\r\nx-pad: " + b"p" * 3000 + b"\r\n\r\n"
        s.sendall(long[:2500])
        time.sleep(0.05)
        s.sendall(long[2500:])
        _recv_exact(s, buf, 37 + 10)
        buf.clear()
        s.sendall(b"PUT /chunks HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.05)
        s.sendall(b"800\r\n" + _body(2048) + b"\r\n8")
        time.sleep(0.05)
        s.sendall(b"00\r\n" + _body(2048) + b"\r\n0\r\n\r\n")
        _recv_exact(s, buf, 37 + 10)


def _close_delimited(ls: socket.socket, port: int) -> None:
    def serve() -> None:
        c, _ = ls.accept()
        with c:
            _recv_until(c, bytearray(), b"\r\n\r\n")
            c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + _body(5000))

    t = threading.Thread(target=serve)
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        while s.recv(65536):
            pass
    t.join(timeout=30)


def _exchanges(conn: Connection) -> list[tuple[str | None, str | None, int | None, int | None]]:
    xs, _ = stitch_http1(conn.send, conn.recv, side=conn.role, closed_ns=conn.closed_ns,
                         source="kprobe", from_start=True)  # fmt: skip
    assert all(not x.degraded for x in xs), [(x.path, x.degraded) for x in xs]
    return [(x.method, x.path, x.status, x.resp_bytes) for x in xs]


def test_framed_bodies_are_left_out_and_replay_frames_them_the_same(tmp_path: Path) -> None:
    port, port2 = free_port(), free_port()
    out = tmp_path / "k.bin"
    ls = socket.create_server(("127.0.0.1", port))
    ls2 = socket.create_server(("127.0.0.1", port2))
    rec = start_recorder(out, [port, port2])
    try:
        srv = threading.Thread(target=_framed_server, args=(ls,))
        srv.start()
        _framed_client(port)
        srv.join(timeout=30)
        assert not srv.is_alive()
        _close_delimited(ls2, port2)
        time.sleep(0.2)
    finally:
        ls.close()
        ls2.close()
        rec.send_signal(signal.SIGTERM)
        assert rec.wait(timeout=60) == 0
    conns, st = decode(out)
    assert st.collector["lost_events"] == 0
    mine = [c for c in conns if c.local and port in (c.local.port, c.remote.port)]
    assert sorted(c.role for c in mine) == ["client", "server"]
    want = [
        ("GET", "/big", 200, BIG),
        ("HEAD", "/head", 200, 0),
        ("GET", "/chunked", 200, sum(CHUNKS)),
        ("POST", "/upload", 204, 0),
        ("GET", "/p1", 200, 100),
        ("GET", "/p2", 200, 100),
        ("GET", "/etag", 304, 0),
        ("GET", "/last", 200, 10),
        ("GET", "/long", 200, 10),
        ("PUT", "/chunks", 200, 10),
    ]
    for conn in mine:
        assert _exchanges(conn) == want, conn.role
        moved = sum(s.orig_len for s in conn.send + conn.recv)
        captured = sum(len(s.data) for s in conn.send + conn.recv)
        # heads, chunk-size lines and one first byte per body call: the bodies stayed out
        assert captured < 5000 < BIG < moved, (conn.role, captured, moved)
    skipped = BIG + sum(CHUNKS) + 3000 + 200 + 10 + 20 + 4096
    assert st.collector["h1_skipped_body_bytes"] >= 2 * (skipped - 40)
    # the close-delimited body: not framed, so the kernel gave up and captured it all
    other = [c for c in conns if c.local and port2 in (c.local.port, c.remote.port)]
    assert st.collector["h1_framing_given_up"] == 2  # its response direction, both ends
    for conn in other:
        assert _exchanges(conn) == [("GET", "/stream", 200, 5000)]
        resp = conn.recv if conn.role == "client" else conn.send
        assert sum(len(s.data) for s in resp) == sum(s.orig_len for s in resp)
