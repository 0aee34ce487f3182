"""HTTP/1 body skipping in the kernel-side collector, for real (bpf/kprobe_events.h).

One recorder (one BPF compile) watches two connections of one process, each end a
socket of this test, so every write boundary is the test's own. The first carries
what the kernel can frame: a Content-Length body bigger than one read, a HEAD whose
response announces a length and sends none, chunked data, a POST body in its own write,
two pipelined requests in one write answered in one write, a 304 with a length, and a
start line whose first byte comes alone (Go's server reads 1 byte, then the rest). The
second ends with a close-delimited body, which the kernel cannot frame: it gives up and
captures as before. Replay's parser frames everything again, so a wrong gap in the
kernel would show as a lost exchange here. A third test opens its connection before the
recorder attaches (found mid-stream, as a late attach finds them) and checks the same
exchanges are followed from its first request after the attach.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_bpf_kprobe import start_recorder

from harness.collectors.bpfsource import compile_program
from harness.collectors.kprobe.decode import Connection, decode
from harness.collectors.kprobe.record import Recorder
from harness.model import waited
from harness.protocols.http1 import stitch_http1
from harness.runner.record import free_port

pytestmark = pytest.mark.bpf

BIG = 50_000
CHUNKS = [4096, 4096, 1000]


def _body(n: int) -> bytes:
    return bytes(b"0123456789abcdef"[i % 16] for i in range(n))


def _connect(port: int) -> socket.socket:
    """A client socket whose calls time out (scaled): a stalled exchange fails the test
    instead of blocking it to the guest's end (a 6.12 guest sat in one for over an hour)."""
    return socket.create_connection(("127.0.0.1", port), timeout=waited(30))


def _recv_until(s: socket.socket, buf: bytearray, marker: bytes, count: int = 1) -> None:
    while buf.count(marker) < count:
        got = s.recv(65536)
        if not got:
            raise AssertionError(f"closed early: {bytes(buf[-200:])!r}")
        buf += got


def _heads(c: socket.socket) -> Iterator[bytes]:
    """Each request head a test server reads (bodiless requests), until the peer closes."""
    buf = bytearray()
    while True:
        while b"\r\n\r\n" not in buf:
            got = c.recv(65536)
            if not got:
                return
            buf += got
        end = buf.index(b"\r\n\r\n") + 4
        yield bytes(buf[:end])
        del buf[:end]


def _recv_exact(s: socket.socket, buf: bytearray, n: int) -> None:
    while len(buf) < n:
        got = s.recv(65536)
        if not got:
            raise AssertionError("closed early")
        buf += got


HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
# what replay makes of _drive_framed's exchanges: (method, path, status, resp_bytes)
FRAMED = [
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


def _framed_server(ls: socket.socket) -> None:
    c, _ = ls.accept()
    with c:
        _serve_framed(c)


def _serve_framed(c: socket.socket) -> None:
    buf = bytearray()
    _recv_until(c, buf, b"\r\n\r\n")  # GET /big
    c.sendall(HEAD % BIG + _body(BIG))
    buf.clear()
    _recv_until(c, buf, b"\r\n\r\n")  # HEAD /head
    c.sendall(HEAD % 7777)
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
    c.sendall((HEAD % 100 + _body(100)) * 2)
    buf.clear()
    _recv_until(c, buf, b"\r\n\r\n")  # GET /etag
    c.sendall(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 999\r\n\r\n")
    buf.clear()
    _recv_until(c, buf, b"\r\n\r\n")  # GET /last, its first byte read alone
    c.sendall(HEAD % 10 + _body(10))
    buf.clear()
    _recv_until(c, buf, b"\r\n\r\n")  # GET /long, a long head in two writes
    c.sendall(HEAD % 10 + _body(10))
    buf.clear()
    _recv_until(c, buf, b"\r\n0\r\n\r\n")  # PUT /chunks, a size line cut in two
    c.sendall(HEAD % 10 + _body(10))
    buf.clear()
    c.recv(1)  # the client closes


def _framed_client(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        _drive_framed(s)


def _drive_framed(s: socket.socket) -> None:
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
    t.join(timeout=waited(30))


def _exchanges(conn: Connection) -> list[tuple[str | None, str | None, int | None, int | None]]:
    xs, _ = stitch_http1(conn.send, conn.recv, side=conn.role, closed_ns=conn.closed_ns,
                         source="kprobe", from_start=conn.from_start)  # fmt: skip
    assert all(not x.degraded for x in xs), [(k, len(xs), x.path, x.degraded)
                                             for k, x in enumerate(xs) if x.degraded]  # fmt: skip
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
        srv.join(timeout=waited(30))
        assert not srv.is_alive()
        _close_delimited(ls2, port2)
        time.sleep(0.2)
    finally:
        ls.close()
        ls2.close()
        rec.send_signal(signal.SIGTERM)
        assert rec.wait(timeout=waited(60)) == 0
    conns, st = decode(out)
    assert st.collector["lost_events"] == 0
    mine = [c for c in conns if c.local and port in (c.local.port, c.remote.port)]
    assert sorted(c.role for c in mine) == ["client", "server"]
    for conn in mine:
        assert _exchanges(conn) == FRAMED, conn.role
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


def test_a_connection_found_mid_stream_is_followed_from_its_next_request(tmp_path: Path) -> None:
    """A keep-alive connection opened before the attach, with a response still on its way
    when the recorder attaches: its tail is captured whole (nothing says where a message
    starts there); from the next request on, both directions are followed and the same
    bodies as above are left out, and replay frames them the same."""
    port = free_port()
    out = tmp_path / "k.bin"
    ls = socket.create_server(("127.0.0.1", port))
    attached = threading.Event()
    tail = 40_000

    def serve() -> None:
        c, _ = ls.accept()
        with c:
            buf = bytearray()
            _recv_until(c, buf, b"\r\n\r\n")  # GET /pre1
            c.sendall(HEAD % 100 + _body(100))
            buf.clear()
            _recv_until(c, buf, b"\r\n\r\n")  # GET /pre2: its body spans the attach
            c.sendall(HEAD % (10_000 + tail) + _body(10_000))
            # the recorder's compile comes first: minutes in an emulated guest
            assert attached.wait(waited(60))
            c.sendall(_body(tail))
            _serve_framed(c)

    srv = threading.Thread(target=serve)
    srv.start()
    rec = None
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            buf = bytearray()
            s.sendall(b"GET /pre1 HTTP/1.1\r\nHost: t\r\n\r\n")
            _recv_exact(s, buf, len(HEAD % 100) + 100)
            buf.clear()
            s.sendall(b"GET /pre2 HTTP/1.1\r\nHost: t\r\n\r\n")
            _recv_exact(s, buf, 5_000)
            rec = start_recorder(out, [port])
            attached.set()
            _recv_exact(s, buf, len(HEAD % (10_000 + tail)) + 10_000 + tail)
            _drive_framed(s)
        srv.join(timeout=waited(30))
        assert not srv.is_alive()
        time.sleep(0.2)
    finally:
        attached.set()
        ls.close()
        if rec is not None:
            rec.send_signal(signal.SIGTERM)
            assert rec.wait(timeout=waited(60)) == 0
    conns, st = decode(out)
    assert st.collector["lost_events"] == 0
    # both directions of both ends began following, none gave up
    assert st.collector["h1_midstream_starts"] == 4
    assert st.collector["h1_framing_given_up"] == 0
    mine = [c for c in conns if c.local and port in (c.local.port, c.remote.port)]
    assert sorted(c.role for c in mine) == ["client", "server"]
    for conn in mine:
        assert not conn.from_start
        assert _exchanges(conn) == FRAMED, conn.role
        moved = sum(s.orig_len for s in conn.send + conn.recv)
        captured = sum(len(s.data) for s in conn.send + conn.recv)
        # the tail in flight is not HTTP/1 where it starts, so it was not even inferred;
        # from GET /big on: heads, chunk-size lines and one first byte per body call
        assert captured < 5000 < BIG < moved, (conn.role, captured, moved)


def test_a_connection_busy_across_the_attach_is_followed_without_a_gap(tmp_path: Path) -> None:
    """A keep-alive connection exchanging all through the recorder's attach (wrk against
    nginx under `observe`): each direction of each end is seen from its first numbered
    call on, so replay finds no gap (no loss to hold the stream for) and both ends give
    every exchange from the one after the attach to the last. The recorder once put
    data_fn into the walkers' program array before h1_walk_fn, whose verification takes
    seconds: calls numbered meanwhile went unseen, a gap of thousands of calls."""
    port = free_port()
    out = tmp_path / "k.bin"
    ls = socket.create_server(("127.0.0.1", port))
    stop = threading.Event()
    done = [0]  # exchanges the client finished

    def serve() -> None:
        c, _ = ls.accept()
        with c:
            for _head in _heads(c):
                c.sendall(HEAD % 10 + _body(10))

    def drive() -> None:
        deadline = time.monotonic() + waited(120)
        with _connect(port) as s:
            buf = bytearray()
            while not stop.is_set() and time.monotonic() < deadline:
                s.sendall(b"GET /r%d HTTP/1.1\r\nHost: t\r\n\r\n" % done[0])
                buf.clear()
                _recv_exact(s, buf, len(HEAD % 10) + 10)
                done[0] += 1
                time.sleep(0.001)  # paced: a few hundred calls while a walker verifies

    srv, cli = threading.Thread(target=serve), threading.Thread(target=drive)
    srv.start()
    cli.start()
    rec = None
    try:
        while done[0] < 20 and cli.is_alive():
            time.sleep(0.01)
        rec = start_recorder(out, [port])
        at_attach = done[0]
        end = time.monotonic() + 0.5
        while (done[0] < at_attach + 200 or time.monotonic() < end) and cli.is_alive():
            time.sleep(0.01)
    finally:
        stop.set()
        cli.join(timeout=waited(30))
        srv.join(timeout=waited(30))
        ls.close()
        if rec is not None:
            time.sleep(0.2)
            rec.send_signal(signal.SIGTERM)
            assert rec.wait(timeout=waited(60)) == 0
    assert not cli.is_alive() and not srv.is_alive()
    last = done[0] - 1
    conns, st = decode(out)
    assert st.collector["lost_events"] == 0
    assert st.collector["tail_call_failures"] == 0
    # no calls numbered and not seen: nothing for replay to treat as lost
    assert (st.loss_gaps, st.lost_tails, st.lost_call_starts, st.opened_unseen) == (0, 0, 0, 0)
    mine = [c for c in conns if c.local and port in (c.local.port, c.remote.port)]
    assert sorted(c.role for c in mine) == ["client", "server"]  # one part each: no split
    for conn in mine:
        assert not conn.from_start and not conn.after_loss
        paths = [x[1] for x in _exchanges(conn)]
        first = int(paths[0].removeprefix("/r"))
        # from the request after the attach (one in flight at it may be cut) to the last
        assert first <= at_attach + 1, (conn.role, first, at_attach)
        assert paths == [f"/r{k}" for k in range(first, last + 1)], conn.role


def test_busy_connections_across_the_attach_have_every_answer(tmp_path: Path) -> None:
    """Keep-alive connections exchanging back to back (unpaced) through the attach: from
    each end's first call seen on, every request read has its answer sent and every request
    sent has its answer read, in turn. Putting data_fn into the walkers patches each hook's
    tail call in turn (milliseconds on a loaded machine): the receive hooks once numbered
    calls while the send hooks did not yet, so a connection's first answers went unnumbered,
    two requests came before any answer and replay concluded pipelining, pairing every
    answer with the request before its own (seq numbers only, as above, cannot see that)."""
    port = free_port()
    out = tmp_path / "k.bin"
    ls = socket.create_server(("127.0.0.1", port))
    n_conns = 4
    stop = threading.Event()
    done = [0] * n_conns

    def serve(c: socket.socket) -> None:
        with c:
            for head in _heads(c):
                path = head[4 : head.index(b" HTTP/")]
                c.sendall(b"HTTP/1.1 200 OK\r\nX-Path: %s\r\nContent-Length: 10\r\n\r\n" % path
                          + _body(10))  # fmt: skip

    def accept() -> None:
        for _ in range(n_conns):
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    def drive(k: int) -> None:
        deadline = time.monotonic() + waited(120)
        with _connect(port) as s:
            buf = bytearray()
            while not stop.is_set() and time.monotonic() < deadline:
                s.sendall(b"GET /c%d/r%d HTTP/1.1\r\nHost: t\r\n\r\n" % (k, done[k]))
                buf.clear()
                _recv_until(s, buf, b"\r\n\r\n")
                _recv_exact(s, buf, buf.index(b"\r\n\r\n") + 4 + 10)
                done[k] += 1

    acc = threading.Thread(target=accept)
    acc.start()
    clis = [threading.Thread(target=drive, args=(k,)) for k in range(n_conns)]
    for t in clis:
        t.start()
    rec = None
    try:
        while min(done) < 20 and all(t.is_alive() for t in clis):
            time.sleep(0.01)
        rec = start_recorder(out, [port])
        at_attach = list(done)
        end = time.monotonic() + 0.5
        while (min(d - a for d, a in zip(done, at_attach, strict=True)) < 200
               or time.monotonic() < end) and all(t.is_alive() for t in clis):  # fmt: skip
            time.sleep(0.01)
    finally:
        stop.set()
        for t in clis:
            t.join(timeout=waited(30))
        acc.join(timeout=waited(30))
        ls.close()
        if rec is not None:
            time.sleep(0.2)
            rec.send_signal(signal.SIGTERM)
            assert rec.wait(timeout=waited(60)) == 0
    assert not any(t.is_alive() for t in clis)
    conns, st = decode(out)
    assert st.collector["lost_events"] == 0
    assert (st.loss_gaps, st.lost_tails, st.lost_call_starts, st.opened_unseen) == (0, 0, 0, 0)
    mine = [c for c in conns if c.local and port in (c.local.port, c.remote.port)]
    assert sorted(c.role for c in mine) == ["client"] * n_conns + ["server"] * n_conns
    for conn in mine:
        # messages in turn from the first call seen: a request, then its answer
        starts = sorted([(s.ts_ns, d) for d, segs in (("send", conn.send), ("recv", conn.recv))
                         for s in segs if s.data.startswith((b"GET ", b"HTTP/1.1 "))])  # fmt: skip
        dirs = [d for _, d in starts]
        assert all(a != b for a, b in itertools.pairwise(dirs)), (conn.role, dirs[:8])
        xs, stats = stitch_http1(conn.send, conn.recv, side=conn.role, closed_ns=conn.closed_ns,
                                 source="kprobe", from_start=conn.from_start)  # fmt: skip
        assert not stats.pipelining, conn.role
        paired = [x for x in xs if x.status is not None and x.path is not None]
        assert len(paired) >= 200
        assert all(x.resp_headers["x-path"] == x.path for x in paired), conn.role
        assert all(not x.degraded for x in xs[1:]), conn.role  # the first may be cut by the attach


def test_no_data_call_is_numbered_before_the_recorder_arms_the_hooks(tmp_path: Path) -> None:
    """With every walker in, data calls still reach none of them until the recorder arms the
    hooks, at one instant for all: filling `walkers` reaches each hook at its own time (a
    direct tail call is patched per caller), so a call numbered then on one direction while
    the other's calls still went unseen would look like a message missing with no gap."""
    port = free_port()
    rec = Recorder(tmp_path / "k.bin", [], [port])
    rec.defines["PB_SELF_TGID"] = 0  # both ends are this process
    bpf = compile_program("kprobe_collector.c", rec.defines)
    ls = socket.create_server(("127.0.0.1", port))
    try:
        bpf["ports"][ctypes.c_uint16(port)] = ctypes.c_uint8(1)
        rec._load_walkers(bpf)
        with socket.create_connection(("127.0.0.1", port)) as cli:
            srv, _ = ls.accept()
            with srv:

                def exchange(k: int) -> None:
                    buf = bytearray()
                    cli.sendall(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % k)
                    _recv_until(srv, buf, b"\r\n\r\n")
                    srv.sendall(HEAD % 10 + _body(10))
                    buf.clear()
                    _recv_exact(cli, buf, len(HEAD % 10) + 10)

                def numbered() -> dict[int, tuple[int, int]]:
                    return {k.fd: (v.seq[0], v.seq[1]) for k, v in bpf["conns"].items()
                            if k.tgid == os.getpid() and (v.seq[0] or v.seq[1])
                            and k.fd in (cli.fileno(), srv.fileno())}  # fmt: skip

                for k in range(3):
                    exchange(k)
                assert numbered() == {}
                rec._arm(bpf)
                for k in range(3, 6):
                    exchange(k)
                # from the arm on, each end's every call in both directions (send, recv)
                assert numbered() == {cli.fileno(): (3, 3), srv.fileno(): (3, 3)}
    finally:
        ls.close()
        bpf.cleanup()
