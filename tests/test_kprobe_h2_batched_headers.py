"""Writes holding several HEADERS frames (after the tail of a big DATA frame, and alone),
traced from the connection's start by the kernel-side collector: every HEADERS frame is
captured byte for byte, on the client's send side and the server's receive side, and its
header block decodes (HPACK table included).

The frame walk packs a call's small captured runs found in its window (the call's first
KiB) into one ring record; a run of exactly H2_PIECE_MAX (512) bytes was copied with its
length masked to 0, so the record carried the pack buffer's stale bytes where those HEADERS
were: headers_missed_stream, then hpack_unknown_index, on a tonic client's busy connection
whose write of three HEADERS came to 512 bytes. The writes that begin with a DATA tail
(their HEADERS lie past the window, so go out alone) are the brief's suspect, kept."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hpack import Decoder, Encoder
from hpack.struct import NeverIndexedHeaderTuple
from test_bpf_kprobe import start_recorder
from test_kprobe_capture_chain import PREFACE, SERVER, frame
from test_kprobe_h2_midstream import CLIENT, grpc_message, seen, seen_map

from harness.collectors.kprobe.decode import decode
from harness.model import waited
from harness.runner.record import free_port

pytestmark = pytest.mark.bpf


def request_headers(sid: int) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", f"/pb.Echo/Call{sid}"),
            (":authority", "t"), ("content-type", "application/grpc"),
            ("x-id", f"stream-{sid}")]  # fmt: skip


def headers_frames(enc: Encoder, sids: list[int], total: int) -> tuple[bytes, list]:
    """HEADERS frames (END_HEADERS) for these streams, `total` bytes together: the last
    block padded with a never-indexed header (which leaves the HPACK table alone)."""
    out, sent = b"", []
    for i, sid in enumerate(sids):
        hs = request_headers(sid)
        block = enc.encode(hs)
        if i == len(sids) - 1:
            want = total - len(out) - 9 - len(block)
            pad = next(
                ("a" * n, p) for n in range(0, 400)
                if len(p := enc.encode([NeverIndexedHeaderTuple("x-pad", "a" * n)],
                                       huffman=False)) == want
            )  # fmt: skip
            block += pad[1]
            hs = [*hs, ("x-pad", pad[0])]
        out += frame(1, 4, sid, block)
        sent.append((sid, hs))
    assert len(out) == total
    return out, sent


def test_headers_batched_after_a_big_data_tail_are_all_captured(tmp_path: Path) -> None:
    enc = Encoder()
    calls = [PREFACE + frame(4, 0, 0, b"")]
    sent: list[tuple[int, list]] = []  # (stream, headers) of each HEADERS frame in order
    sid = 1
    # the HEADERS run of a call, in bytes: the packing limit exactly, and around it
    for total in (512, 511, 513, 500, 512):
        blk = enc.encode(request_headers(sid))
        data = frame(0, 1, sid, grpc_message(bytes(range(256)) * 62))  # a 15872-byte body
        calls.append(frame(1, 4, sid, blk) + data[:-100])
        sent.append((sid, request_headers(sid)))
        batch, more = headers_frames(enc, [sid + 2, sid + 4, sid + 6], total)
        # one write: the big DATA frame's tail, then three HEADERS frames
        calls.append(data[-100:] + batch)
        sent += more
        # and three HEADERS frames alone in a write (as tonic's were on a busy connection)
        batch, more = headers_frames(enc, [sid + 8, sid + 10, sid + 12], total)
        calls.append(batch)
        sent += more
        sid += 14
    wire = b"".join(calls)
    offs, pos = [], len(PREFACE)  # (offset, length) of each HEADERS frame on the wire
    while pos < len(wire):
        ln = int.from_bytes(wire[pos : pos + 3], "big")
        if wire[pos + 3] == 1:
            offs.append((pos, 9 + ln))
        pos += 9 + ln
    expected = [(o, n, sh) for (o, n), sh in zip(offs, sent, strict=True)]

    port = free_port()
    out = tmp_path / "k.bin"
    rec = start_recorder(out, [port])
    srv = cli = None
    try:
        srv = subprocess.Popen([sys.executable, "-c", SERVER, str(port)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert srv.stdout is not None and srv.stdout.readline().strip() == "READY"
        cli = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert cli.stdin is not None and cli.stdout is not None
        for c in calls:
            cli.stdin.write(c.hex() + "\n")
            cli.stdin.flush()
            assert cli.stdout.readline().strip() == "SENT"
            time.sleep(0.02)
        cli.stdin.close()
        assert cli.wait(timeout=waited(30)) == 0
        assert int(srv.stdout.readline()) == len(wire)
        srv.wait(timeout=waited(30))
        time.sleep(0.2)
    finally:
        for p in (cli, srv):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        rec.send_signal(signal.SIGTERM)
        rec.wait(timeout=waited(60))
    conns, st = decode(out)
    assert st.collector["lost_events"] == 0
    (client,) = [c for c in conns if c.role == "client" and c.remote and c.remote.port == port]
    (server,) = [c for c in conns if c.role == "server" and c.local and c.local.port == port]
    for side, segs in (("client send", client.send), ("server recv", server.recv)):
        assert sum(s.orig_len for s in segs) == len(wire), side
        spans = seen_map(segs)
        # what was captured is the bytes that were sent
        bad = [(p, len(x)) for p, x in spans if wire[p : p + len(x)] != x]
        assert not bad, f"{side}: captured bytes differ from the wire at {bad}"
        # every HEADERS frame whole, and its block decodes in order
        dec = Decoder()
        for at, n, (s, hs) in expected:
            assert seen(spans, at, at + n) == n, f"{side}: HEADERS of stream {s} not whole"
            p, x = next((p, x) for p, x in spans if p <= at and at + n <= p + len(x))
            block = x[at - p + 9 : at - p + n]
            assert [tuple(h) for h in dec.decode(block)] == hs, f"{side}: stream {s}"
