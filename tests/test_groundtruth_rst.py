"""Calls ended by RST_STREAM carry the gRPC status their client saw, in the truth: the
reset's error code mapped as grpc-go maps it (CANCEL: CANCELLED, or DEADLINE_EXCEEDED once
the call's grpc-timeout ran out), or unknown with a reason near the deadline; never wrong.
Checked against the real grpc-go client's own record of each call's status."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.groundtruth import Dumpcap, extract_exchanges
from harness.groundtruth import extract as extract_mod
from harness.protocols.http2.grpc import R_RST_CANCEL_OR_DEADLINE
from harness.runner.record import free_port

pytestmark = pytest.mark.capture

BIN = Path(__file__).resolve().parent.parent / "scenarios" / "go" / "bin"
VERSION = "v1.85.0"


def _record(tmp_path: Path, mode: str, n: int) -> tuple[Path, int, dict[str, dict]]:
    port = free_port()
    wl, pcap = tmp_path / "w.jsonl", tmp_path / "c.pcapng"
    with Dumpcap(pcap, [port]):
        srv = subprocess.Popen(
            [str(BIN / f"grpc-server-{VERSION}"), "--proto", "grpc", "--port", str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert srv.stdout is not None and srv.stdout.readline().startswith("READY")
            subprocess.run(
                [str(BIN / f"grpc-client-{VERSION}"), "--proto", "grpc", "--port", str(port),
                 "--exchanges", str(n), "--connections", "1", "--inflight", "1",
                 "--workload", str(wl), "--mode", mode, "--cancel-every", "2"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        finally:
            srv.terminate()
            srv.wait(timeout=10)
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
        frames, _ = extract_mod._scan(pcap, [], [port], 0, extract_mod.TruthStats())
        ys = extract_mod._h2(pcap, [port], frames, extract_mod.TruthStats(), [])
        assert [(y.stream_id, y.grpc_status) for y in ys] == \
            [(x.stream_id, x.grpc_status) for x in xs]
