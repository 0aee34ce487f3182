"""HTTP/2 connections that stay open stream through the kernel side's replay: each call is
handed over when its stream ends, not when the recording does (issue 14: h2load's or a gRPC
client's few long-lived connections, and connections an ``observe`` finds already open).

Root-free, on generated event files: one server-side connection carrying many unary calls
1 ms apart, seen from its open or found mid-stream; the streamed decode must hand over what
the whole decode gives, in batches that do not grow with the recording.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pytest
from streamed import assert_same_exchanges, drain

from harness.collectors.eventfile import EventWriter
from harness.collectors.kprobe import decode as decode_mod
from harness.collectors.kprobe.exchanges import kprobe_exchanges, kprobe_stream
from harness.collectors.kprobe.layout import header
from harness.model import Exchange

H = header()
D = H.defines
MS = 1_000_000
PORT, PEER = 8080, 40000


def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


# GET / http, :authority "x" (not indexed: the table stays empty); :status 200
REQUEST = bytes([0x82, 0x86, 0x84, 0x01, 0x01]) + b"x"
RESPONSE = bytes([0x88])
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")


class _Recording:
    """A server's view of one h2c connection, as the kernel side records it."""

    def __init__(self, mid_stream: bool) -> None:
        self.records: list[bytes] = []
        self.seq = {D["PB_DIR_SEND"]: 0, D["PB_DIR_RECV"]: 0}
        e = H.structs["pb_conn_event"](
            ts_ns=1, tgid=100, tid=100, fd=7, role=2, proto=D["PB_PROTO_HTTP2"], family=2,
            kind=D["PB_EV_CONN_INFER" if mid_stream else "PB_EV_CONN"], lport=PORT, rport=PEER,
        )  # fmt: skip
        e.laddr[:4] = e.raddr[:4] = [127, 0, 0, 1]
        e.comm = b"srv"
        self.records.append(bytes(e))

    def data(self, ts: int, direction: str, data: bytes) -> None:
        d = D["PB_DIR_SEND" if direction == "send" else "PB_DIR_RECV"]
        self.seq[d] += 1
        e = H.structs["pb_data_event"](
            ts_ns=ts, tgid=100, tid=100, fd=7, kind=D["PB_EV_DATA"], role=2,
            proto=D["PB_PROTO_HTTP2"], dir=d, syscall=D["PB_SC_READ"], orig_len=len(data),
            cap_len=len(data), seq=self.seq[d],
        )  # fmt: skip
        self.records.append(bytes(e)[: H.offset("pb_data_event", "data")] + data)

    def write(self, path: Path) -> Path:
        sizes = {n: ctypes.sizeof(s) for n, s in H.structs.items()}
        w = EventWriter(
            path, {"collector": "kprobe", "defines": {"PB_CHUNK": D["PB_CHUNK"]}, "sizes": sizes}
        )
        for r in self.records:
            w.kernel(r)
        w.close()
        return path


ZOMBIES = 4  # found mid-stream: calls whose request went by before the attach


def _calls(path: Path, n: int, *, mid_stream: bool) -> Path:
    """n unary calls 1 ms apart on one connection that never closes (the recording ends
    with it open); every 50th call is reset by the client instead of answered. Found
    mid-stream, it first answers ZOMBIES calls whose requests (and their END_STREAM) came
    before the attach: their client side never ends."""
    rec = _Recording(mid_stream)
    if not mid_stream:
        rec.data(MS, "recv", PREFACE)
        rec.data(MS + 10, "send", _frame(4, 0, 0, b""))
    for z in range(ZOMBIES if mid_stream else 0):
        sid = 2 * z + 1
        rec.data(MS + z, "send", _frame(1, 0x4, sid, RESPONSE) + _frame(0, 0x1, sid, b"hi"))
    for k in range(n):
        t, sid = (k + 2) * MS, 2 * (k + ZOMBIES) + 1
        rec.data(t, "recv", _frame(1, 0x5, sid, REQUEST))  # END_STREAM | END_HEADERS
        if k % 50 == 49:
            rec.data(t + 200_000, "recv", _frame(3, 0, sid, (8).to_bytes(4, "big")))  # CANCEL
            continue
        rec.data(t + 300_000, "send", _frame(1, 0x4, sid, RESPONSE) + _frame(0, 0x1, sid, b"hi"))
    return rec.write(path)


def _stream(path: Path) -> tuple[list[list[Exchange]], list[int], Any]:
    got, stats = drain(kprobe_stream(path, [PORT]))
    return [b.exchanges for b in got], [b.watermark_ns for b in got], stats


@pytest.mark.parametrize("mid_stream", [False, True])
def test_an_open_h2_connection_hands_each_call_over_as_its_stream_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mid_stream: bool
) -> None:
    n = 4_000  # 4 s of calls; the watermark trails the newest event by 1 s
    path = _calls(tmp_path / "kprobe.bin", n, mid_stream=mid_stream)
    whole, wst = kprobe_exchanges(path, [PORT])
    zombies = ZOMBIES if mid_stream else 0
    assert len(whole) == n + zombies
    # the zombies: known by their responses only, the method unknown (never guessed)
    assert sum(x.method is None and x.status == 200 for x in whole) == zombies
    monkeypatch.setattr(decode_mod, "HANDOVER_RECORDS", 1000)
    batches, marks, sst = _stream(path)
    got = [x for b in batches for x in b]
    assert_same_exchanges(whole, got, lambda x: (x.conn_id, x.stream_id))
    assert sst.decode == wst.decode and sst.parse == wst.parse
    assert sst.decode["late_exchanges"] == 0
    # held: about the watermark's second of calls and one hand-over step, not the recording
    # (the whole decode held all of them to the end: one batch of n)
    assert max(len(b) for b in batches) < 1_500
    assert marks == sorted(marks)
    assert marks[-2] > (n - 1_500) * MS  # the watermark followed the connection
    for b, prev in zip(batches[1:], marks, strict=False):
        assert all((x.t_start_ns or 0) >= prev for x in b)
    statuses = [x.status for x in got]
    assert statuses.count(200) == n - n // 50 + zombies
