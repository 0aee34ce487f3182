"""Calls ended by RST_STREAM carry the gRPC status their client saw, in the truth: the
reset's error code mapped as grpc-go maps it (CANCEL: CANCELLED, or DEADLINE_EXCEEDED once
the call's grpc-timeout ran out), or unknown with a reason near the deadline; never wrong.
Checked against the real grpc-go client's own record of each call's status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from go_grpc_capture import capture_go_grpc

from harness.groundtruth import extract as extract_mod
from harness.groundtruth import extract_exchanges
from harness.protocols.http2.grpc import R_RST_CANCEL_OR_DEADLINE

pytestmark = pytest.mark.capture


def _record(tmp_path: Path, mode: str, n: int) -> tuple[Path, int, dict[str, dict]]:
    wl, pcap = tmp_path / "w.jsonl", tmp_path / "c.pcapng"
    port = capture_go_grpc(pcap, ["--exchanges", str(n), "--inflight", "1", "--workload",
                                  str(wl), "--mode", mode, "--cancel-every", "2"])  # fmt: skip
    recs = [json.loads(line) for line in wl.read_text().splitlines()]
    return pcap, port, {str(r["id"]): r for r in recs}


def _check(xs: list, sent: dict[str, dict]) -> int:
    early = exact = 0
    for x in xs:
        rec = sent[x.req_headers["x-probebench-id"]]
        reasons = {d.field: d.reason for d in x.degraded}
        if not rec["phase"].endswith("ended-early"):
            assert x.grpc_status == rec["grpc_status"]
            continue
        early += 1
        if x.grpc_status is None:
            assert reasons.get("grpc_status") == R_RST_CANCEL_OR_DEADLINE
        else:
            assert x.grpc_status == rec["grpc_status"], (x, rec)
            exact += 1
    assert early >= len(xs) // 3
    return exact


@pytest.mark.parametrize("mode", ["unary", "server-stream"])
def test_reset_calls_have_their_clients_status(tmp_path: Path, mode: str) -> None:
    pcap, port, sent = _record(tmp_path, mode, 12)
    xs, stats = extract_exchanges(pcap, http1_ports=[], h2c_ports=[port])
    assert len(xs) == 12
    exact = _check(xs, sent)
    assert exact >= 2  # the cancels (100 ms into a 30 s deadline) at least
    if stats.h2_decode == "fields":  # the JSON route agrees
        scan = extract_mod._Scan(pcap, [], [port], 0, extract_mod.TruthStats())
        scan.read()
        scan.close()
        assert scan.frames is not None
        calls = extract_mod._h2(pcap, [port], scan.frames, extract_mod.TruthStats(), [])
        ys = [y for record in calls.spill.records() for _, _, y in record]
        ys += [y for _, _, y in calls.unended]
        calls.close()
        assert sorted((y.stream_id, y.grpc_status) for y in ys) == \
            sorted((x.stream_id, x.grpc_status) for x in xs)
