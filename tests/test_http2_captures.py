"""Third-party grpc-go captures: our decode of the TCP payloads agrees with tshark's."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from shared_files import needs, shared_captures

from harness.protocols.common import Segment
from harness.protocols.http2 import stitch_http2

CAPTURES = shared_captures("grpc-go-for-professionals")
PORT = "50051"
FILES = ["Unary.pcapng", "Server Streaming.pcapng", "Client Streaming.pcapng",
         "Bidi Streaming.pcapng"]

pytestmark = [
    pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark"),
    needs(CAPTURES),
]


def tshark(path: Path, *args: str) -> list[list[str]]:
    out = subprocess.run(["tshark", "-r", str(path), *args], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def segments(path: Path) -> dict[str, tuple[list[Segment], list[Segment]]]:
    """Per TCP stream: (client->server, server->client) payloads, as syscall segments."""
    rows = tshark(path, "-Y", f"tcp.port=={PORT} && tcp.len>0", "-T", "fields",
                  "-e", "tcp.stream", "-e", "tcp.srcport", "-e", "frame.time_epoch",
                  "-e", "tcp.payload")
    conns: dict[str, tuple[list[Segment], list[Segment]]] = {}
    for stream, srcport, epoch, payload in rows:
        data = bytes.fromhex(payload.replace(":", ""))
        sec, _, frac = epoch.partition(".")
        ts = int(sec) * 10**9 + int(frac.ljust(9, "0")[:9])
        c2s, s2c = conns.setdefault(stream, ([], []))
        (s2c if srcport == PORT else c2s).append(Segment(ts, data, len(data)))
    return conns


@dataclass
class TruthCall:
    headers: dict[str, list[str]] = field(default_factory=dict)
    messages: Counter = field(default_factory=Counter)


def tshark_calls(path: Path) -> dict[str, TruthCall]:
    """What Wireshark's dissector decodes, per TCP stream (each capture has one call)."""
    rows = tshark(path, "-d", f"tcp.port=={PORT},http2", "-Y", "http2", "-T", "fields",
                  "-E", "aggregator=|", "-e", "tcp.stream", "-e", "tcp.srcport",
                  "-e", "http2.header.name", "-e", "http2.header.value",
                  "-e", "grpc.message_length")
    calls: dict[str, TruthCall] = {}
    for stream, srcport, names, values, lengths in rows:
        call = calls.setdefault(stream, TruthCall())
        if names:
            for n, v in zip(names.split("|"), values.split("|"), strict=True):
                call.headers.setdefault(n, []).append(v)
        if lengths:
            direction = "resp" if srcport == PORT else "req"
            call.messages[direction] += len(lengths.split("|"))
    return calls


@pytest.mark.parametrize("name", FILES)
def test_decode_matches_tshark(name):
    path = CAPTURES / name
    truth = tshark_calls(path)
    conns = segments(path)
    assert conns.keys() == truth.keys()
    for stream, (c2s, s2c) in conns.items():
        exchanges, stats = stitch_http2(c2s, s2c)
        t = truth[stream]
        assert len(exchanges) == len(t.headers[":path"]) == 1
        x = exchanges[0]
        assert x.degraded == []
        assert x.protocol == "h2c-grpc"
        assert x.method == t.headers[":method"][0]
        assert x.path == t.headers[":path"][0]
        assert x.authority == t.headers[":authority"][0]
        assert x.status == int(t.headers[":status"][0])
        assert x.grpc_status == int(t.headers["grpc-status"][0])
        assert x.grpc_message == t.headers["grpc-message"][0]
        assert x.req_messages == t.messages["req"]
        assert x.resp_messages == t.messages["resp"]
        assert x.req_headers["user-agent"] == t.headers["user-agent"][0]
        assert stats.from_start
        assert stats.c2s_frames.preface_seen
        assert stats.c2s_hpack.fields_unknown == stats.s2c_hpack.fields_unknown == 0


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("limit", [16, 40, 80])
def test_capture_limit_degrades_but_never_lies(name, limit):
    """Each segment cut to `limit` bytes, as a kprobe with a small copy size would see it."""
    path = CAPTURES / name
    (c2s, s2c), = segments(path).values()
    full, _ = stitch_http2(c2s, s2c)

    def cut(segs: list[Segment]) -> list[Segment]:
        return [Segment(s.ts_ns, s.data[:limit], s.orig_len) for s in segs]

    exchanges, stats = stitch_http2(cut(c2s), cut(s2c))
    longest = max(len(s.data) for s in c2s + s2c)
    assert stats.c2s_frames.bytes_unseen + stats.s2c_frames.bytes_unseen == sum(
        max(0, len(s.data) - limit) for s in c2s + s2c)
    assert longest > limit
    by_id = {x.stream_id: x for x in full}
    for x in exchanges:
        ref = by_id.get(x.stream_id)
        assert ref is not None, "phantom stream"
        for f in ("method", "path", "authority", "status", "grpc_status", "grpc_message",
                  "req_bytes", "resp_bytes", "req_messages", "resp_messages"):
            got = getattr(x, f)
            if got is not None:
                assert got == getattr(ref, f), f
            else:
                assert any(d.field == f for d in x.degraded) or getattr(ref, f) is None, f
        for k, v in x.req_headers.items():
            assert ref.req_headers[k] == v
