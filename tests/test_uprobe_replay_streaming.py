"""The uprobe collector's replay streams (issue 14): each gRPC call is handed over when it
ends, not when the recording does, so a minutes-long ``observe --collectors uprobe`` is
replayed in memory bounded by the calls open at once, not by its length.

Root-free, on generated event files: a grpc-go server's view of many unary calls 1 ms
apart on one connection that never closes, after a late attach (calls in flight then: their
request went by before it). The streamed replay must give what the whole one gives, in
batches that do not grow with the recording, behind a watermark that follows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from streamed import assert_same_exchanges, drain
from test_uprobe_replay import REQ, RESP, SERVER_PORT, Rec, msg, write

from harness.collectors import registry
from harness.collectors.base import ExchangeBatch, ReplayInput
from harness.collectors.uprobe import decode as decode_mod
from harness.collectors.uprobe.exchanges import uprobe_exchanges

MS = 1_000_000
ZOMBIES = 3  # in flight at the attach: response and trailers seen, the request not
# field names given by address: the bytes come with the first block that names each one
RO = {":path": (0x4000, False), "content-type": (0x5000, False)}
TRAILERS = [("grpc-status", "0")]


def _recording(path: Path, n: int) -> Path:
    s = Rec("server")
    recs = []
    for z in range(ZOMBIES):
        sid = 2 * z + 1
        s.ts = MS + z * 1000
        recs += [s.headers(sid, RESP), s.data(sid, msg(4), send=True),
                 s.headers(sid, TRAILERS, end=True)]  # fmt: skip
    for k in range(n):
        sid = 2 * (k + ZOMBIES) + 1
        s.ts = (k + 2) * MS
        ro = {**RO} if k == 0 else {t: (a, True) for t, (a, _) in RO.items()}
        recs += [s.headers(sid, REQ, ro=ro), s.data(sid, msg(10), send=False, end=True),
                 s.headers(sid, RESP), s.data(sid, msg(20), send=True),
                 s.headers(sid, TRAILERS, end=True)]  # fmt: skip
    return write(path, recs)


def _stream(path: Path) -> tuple[list[ExchangeBatch], Any]:
    return drain(registry.get("uprobe").replay_stream(ReplayInput(path, [SERVER_PORT], "h2c-grpc")))


def test_a_long_uprobe_recording_streams_call_by_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 5_000  # 5 s of calls; the decode's lag is 1 s
    path = _recording(tmp_path / "uprobe.bin", n)
    whole, wst = uprobe_exchanges(path, [SERVER_PORT])
    assert len(whole) == n + ZOMBIES
    zombies = [x for x in whole if x.method is None]
    assert len(zombies) == ZOMBIES and all(x.status == 200 for x in zombies)
    assert sum(x.path == "/probebench.Bench/Unary" and x.degraded == [] for x in whole) == n
    monkeypatch.setattr(decode_mod, "STEP_RECORDS", 1_000, raising=False)
    batches, sst = _stream(path)
    # held: the decode's second of calls and a step, not the recording (the whole replay
    # gave all of them in one batch at the end, the calls in flight at the attach too)
    assert max(len(b.exchanges) for b in batches) < 1_500
    got = [x for b in batches for x in b.exchanges]
    assert_same_exchanges(whole, got, lambda x: (x.conn_id, x.stream_id))
    assert sst.parse == wst.parse and sst.connections == wst.connections
    assert sst.decode == wst.decode
    assert sst.decode["late_exchanges"] == 0 and sst.decode["strings_changed_after_use"] == 0
    marks = [b.watermark_ns for b in batches]
    assert marks == sorted(marks)
    assert marks[-2] > (n - 1_500) * MS  # the watermark followed the connection
    for b, prev in zip(batches[1:], marks, strict=False):
        assert all((x.t_start_ns or 0) >= prev for x in b.exchanges)
