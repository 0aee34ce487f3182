"""The HTTP/2 frame walk goes on across chained tail calls: one syscall with hundreds of
frames, far more than one program run's PB_H2_STEPS, is still captured frame by frame."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_bpf_kprobe import start_recorder

from harness.collectors.kprobe.decode import decode
from harness.model import waited
from harness.protocols.http2.frames import FrameParsed, FrameParser
from harness.runner.record import free_port

pytestmark = pytest.mark.bpf

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

SERVER = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("READY", flush=True)
c, _ = s.accept()
n = 0
while (b := c.recv(65536)):
    n += len(b)
print(n, flush=True)
"""
CLIENT = """
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
c.sendall(bytes.fromhex(sys.argv[2]))  # one call: the whole walk happens in one syscall
c.close()
"""


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([ftype, flags])
        + struct.pack(">I", sid)
        + payload
    )


def one_call(tmp_path: Path, frames: int) -> tuple[list[FrameParsed], int, dict[str, int]]:
    """Send preface + SETTINGS + `frames` WINDOW_UPDATEs in one call; what replay parses of
    the client's send side, the parser's sync losses and the collector's stats."""
    port = free_port()
    out = tmp_path / "k.bin"
    rec = start_recorder(out, [port])
    wire = (
        PREFACE
        + frame(4, 0, 0, b"")
        + b"".join(frame(8, 0, 0, struct.pack(">I", i + 1)) for i in range(frames))
    )
    try:
        srv = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True
        )
        assert srv.stdout is not None and srv.stdout.readline().strip() == "READY"
        subprocess.run([sys.executable, "-c", CLIENT, str(port), wire.hex()], check=True)
        assert int(srv.stdout.readline()) == len(wire)
        srv.wait(timeout=waited(30))
    finally:
        rec.send_signal(signal.SIGTERM)
        rec.wait(timeout=waited(60))
    stats = json.loads(out.with_suffix(".json").read_text())
    conns, _ = decode(out)
    (client,) = [c for c in conns if c.role == "client" and c.send]
    assert client.proto == "http2" and sum(s.orig_len for s in client.send) == len(wire)
    p = FrameParser(role="client")
    events = [e for seg in client.send for e in p.feed(seg)]
    return [e for e in events if isinstance(e, FrameParsed)], p.stats.sync_losses, stats


def test_walk_of_one_call_goes_on_across_tail_calls(tmp_path: Path) -> None:
    frames, losses, stats = one_call(tmp_path, 400)  # about 800 steps, PB_H2_STEPS is 48
    assert stats["h2_sync_lost_bound"] == 0 and stats["tail_call_failures"] == 0
    assert losses == 0
    updates = [f for f in frames if f.type == 8]
    assert [struct.unpack(">I", f.payload)[0] for f in updates] == list(range(1, 401))


def test_walk_longer_than_the_chain_gives_up_sync_and_says_so(tmp_path: Path) -> None:
    frames, _, stats = one_call(tmp_path, 2000)  # beyond 32 chained runs
    assert stats["h2_sync_lost_bound"] >= 1
    updates = [f for f in frames if f.type == 8]
    # what was captured before the bound is a true prefix of the frames
    got = [struct.unpack(">I", f.payload)[0] for f in updates if len(f.payload) == 4]
    assert 400 < len(got) < 2000
    assert got == list(range(1, len(got) + 1))
