"""HTTP/2 found mid-stream (the collector attached to a connection already carrying frames):
the frame walk starts at a call that begins with a plausible frame header, captures
everything while on trial, then leaves gRPC message bodies out (PB_H2_BODY_LIMIT 0) except
on streams that began before it was in sync; a trial that fails captures the rest of the
call as the prefix capture would."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_kprobe_capture_chain import PREFACE, SERVER, frame

from harness.collectors.kprobe.decode import decode
from harness.model import waited
from harness.runner.record import free_port

pytestmark = pytest.mark.bpf

# one call per stdin line (hex), acknowledged, so each is its own syscall
CLIENT = """
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for line in sys.stdin:
    c.sendall(bytes.fromhex(line.strip()))
    print("SENT", flush=True)
c.close()
"""


def grpc_message(body: bytes) -> bytes:
    return b"\0" + struct.pack(">I", len(body)) + body


def seen_map(segments: list) -> list[tuple[int, bytes]]:
    """(stream offset, captured bytes) of each segment; unseen bytes fall between."""
    out, pos = [], 0
    for s in segments:
        if s.data:
            out.append((pos, bytes(s.data)))
        pos += s.orig_len
    return out


def seen(spans: list[tuple[int, bytes]], lo: int, hi: int) -> int:
    """How many of the stream's bytes [lo, hi) were captured."""
    return sum(max(0, min(hi, p + len(d)) - max(lo, p)) for p, d in spans)


def test_midstream_walk_skips_bodies_only_where_it_knows_the_messages(tmp_path: Path) -> None:
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE,
                           text=True)  # fmt: skip
    assert srv.stdout is not None and srv.stdout.readline().strip() == "READY"
    cli = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert cli.stdin is not None and cli.stdout is not None

    def send(b: bytes) -> None:
        cli.stdin.write(b.hex() + "\n")  # type: ignore[union-attr]
        cli.stdin.flush()  # type: ignore[union-attr]
        assert cli.stdout.readline().strip() == "SENT"  # type: ignore[union-attr]
        time.sleep(0.05)

    body1 = bytes(range(256)) * 8  # stream 1's message, begun before the attach
    msg1 = grpc_message(body1)
    before = (PREFACE + frame(4, 0, 0, b"") + frame(1, 4, 1, b"\x83\x86")
              + frame(0, 0, 1, msg1)[:600])  # fmt: skip
    body3 = b"\x42" * 4000
    calls = [
        frame(0, 0, 1, msg1)[600:],  # A: mid-frame: not even HTTP/2 yet, nothing inferred
        # B: starts with a plausible header: on trial for 3 headers, everything captured
        frame(1, 4, 3, b"\x83\x86") + frame(8, 0, 0, b"\0\0\1\0") + frame(6, 0, 0, b"p" * 8)
        + frame(0, 0, 3, grpc_message(body3)),
        frame(0, 0, 3, grpc_message(body3)),  # C: in sync, stream 3 known: body left out
        frame(0, 0, 1, grpc_message(body1)),  # D: stream 1 began before the sync: whole
        frame(0xFF, 0, 0, b"") + b"\x11" * 300,  # E: implausible in sync: the rest unseen
        # F: a new trial that fails at its second header: the rest captured
        frame(8, 0, 0, b"\0\0\1\0") + frame(0xFF, 0, 0, b"") + b"\x22" * 300,
    ]
    out = tmp_path / "k.bin"
    rec = None
    try:
        send(before)
        rec = subprocess.Popen(
            [sys.executable, "-m", "harness.collectors.kprobe.record", "--out", str(out),
             "--stats", str(out.with_suffix(".json")), "--deadline", "120", "--port", str(port)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert rec.stdout is not None and rec.stdout.readline().startswith("ATTACHED ")
        for c in calls:
            send(c)
        cli.stdin.close()
        assert cli.wait(timeout=waited(30)) == 0
        assert int(srv.stdout.readline()) == len(before) + sum(map(len, calls))
        srv.wait(timeout=waited(30))
    finally:
        for p in (cli, srv):
            if p.poll() is None:
                p.kill()
                p.wait()
        if rec is not None:
            rec.send_signal(signal.SIGTERM)
            rec.wait(timeout=waited(60))
    stats = json.loads(out.with_suffix(".json").read_text())
    conns, _ = decode(out)
    (client,) = [c for c in conns if c.send and c.proto == "http2"]
    # the connection is inferred at B, whose first bytes are a plausible frame header
    observed = calls[1:]
    assert sum(s.orig_len for s in client.send) == sum(map(len, observed))
    spans = seen_map(client.send)
    starts = [sum(map(len, observed[:i])) for i in range(len(observed) + 1)]
    b, c, d, e, f = ((starts[i], starts[i + 1]) for i in range(len(observed)))
    assert seen(spans, *b) == len(calls[1])  # on trial: all of it
    # C: the frame header and the message prefix, not the body (but its length passes by)
    assert seen(spans, *c) == 9 + 5
    # the stats count the server's receive side too (the same walk, unless the server's
    # reads joined calls together on a busy machine)
    assert stats["h2_skipped_body_bytes"] in (len(body3), 2 * len(body3))
    assert seen(spans, *d) == len(calls[3])  # a stream whose messages began unseen
    assert seen(spans, *e) == 9  # the implausible header itself, then nothing
    assert seen(spans, *f) == len(calls[5])  # the failed trial lost nothing
    assert stats["h2_resyncs"] >= 2 and stats["h2_sync_lost_implausible"] >= 2
    assert stats["truncated_calls"] in (1, 2)  # E only: skipped bodies are not truncation
    # what was captured is the bytes that were sent
    wire = b"".join(observed)
    assert all(wire[p : p + len(x)] == x for p, x in spans)
