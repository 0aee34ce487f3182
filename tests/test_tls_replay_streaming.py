"""The TLS collector's replay streams (issue 14): a connection seen from its first byte is
stitched while its calls are read and its exchanges handed over as they finish, so a long
HTTPS recording is replayed in memory bounded by what is open, not by its length.

Root-free, on generated event files (the layout of bpf/tls_events.h): a client's
keep-alive HTTP/1 connection that never closes, and an HTTP/2 one split by lost calls.
The streamed replay must give what the whole one gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from streamed import assert_same_exchanges, drain
from test_tls_loss import PORT, RECV, SEND, client_calls, event, frame, write

from harness.collectors import registry
from harness.collectors.base import ExchangeBatch, ReplayInput
from harness.collectors.tls import decode as decode_mod
from harness.collectors.tls.exchanges import tls_exchanges
from harness.model import Exchange

MS = 1_000_000
REQUEST = b"GET /item HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def _stream(path: Path, protocol: str) -> tuple[list[ExchangeBatch], Any]:
    return drain(registry.get("tls").replay_stream(ReplayInput(path, [PORT], protocol)))


def _same(whole: list[Exchange], got: list[Exchange]) -> None:
    assert_same_exchanges(whole, got, lambda x: (x.conn_id, x.t_start_ns, x.stream_id))


def test_a_long_https_connection_streams_request_by_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 4_000  # 4 s of requests; a call is taken a second after it began at the latest
    records = []
    for k in range(n):
        t = (k + 1) * MS
        records += [event(k + 1, SEND, REQUEST, t), event(k + 1, RECV, RESPONSE, t + MS // 3)]
    write(tmp_path / "tls.bin", records)
    whole, wst = tls_exchanges(tmp_path / "tls.bin", [PORT])
    assert len(whole) == n and all(x.status == 200 and x.degraded == [] for x in whole)
    monkeypatch.setattr(decode_mod, "STEP_RECORDS", 500, raising=False)
    batches, sst = _stream(tmp_path / "tls.bin", "http/1.1")
    # held: about the second of calls behind the newest, not the recording (the whole
    # replay gave all n in one batch at the end)
    assert max(len(b.exchanges) for b in batches) < 1_500
    _same(whole, [x for b in batches for x in b.exchanges])
    assert sst.parse == wst.parse and sst.connections_by_proto == wst.connections_by_proto
    assert sst.decode == wst.decode and sst.decode["late_exchanges"] == 0
    marks = [b.watermark_ns for b in batches]
    assert marks == sorted(marks) and marks[-2] > (n - 1_500) * MS
    for b, prev in zip(batches[1:], marks, strict=False):
        assert all((x.t_start_ns or 0) >= prev for x in b.exchanges)


def test_an_h2_connection_split_by_a_loss_streams_as_the_whole_replay_stitches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part before the gap is streamed, the part after it (mid-stream) stitched at the
    end: the stream cut in two is dropped from the tail in both."""
    calls = client_calls()
    answers = [frame(1, 0x5, sid, bytes([0x88])) for sid in (1, 3, 5)]  # :status 200
    records = [event(1, SEND, calls[0], MS), event(1, RECV, frame(4, 0, 0, b""), MS + 10)]
    records += [event(2, SEND, calls[1], 2 * MS), event(2, RECV, answers[0], 2 * MS + 10)]
    records += [event(3, RECV, answers[1], 3 * MS)]  # its request (send call 3) was lost
    records += [event(4, SEND, calls[3], 4 * MS), event(4, RECV, answers[2], 4 * MS + 10)]
    write(tmp_path / "h2.bin", records)
    whole, wst = tls_exchanges(tmp_path / "h2.bin", [PORT], h2=True)
    assert wst.decode["loss_splits"] == 1
    monkeypatch.setattr(decode_mod, "STEP_RECORDS", 2, raising=False)
    batches, sst = _stream(tmp_path / "h2.bin", "h2c")
    _same(whole, [x for b in batches for x in b.exchanges])
    assert sst.parse == wst.parse and sst.split_stream_tails == wst.split_stream_tails
    assert sst.decode == wst.decode
