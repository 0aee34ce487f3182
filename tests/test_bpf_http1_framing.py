"""Pipelining and 100-continue for real: the kernel-side collector against Wireshark.

One `probebench observe` (one BPF compile) around a script that starts the Go HTTP/1
server and plays two Python clients against it: eight requests per write on two
connections, then the mixed plan (HEAD, 304, 204, POST after Expect: 100-continue).
Before issue 19 the first gave hundreds of phantoms and the second's uploads were
missing from the truth.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from harness.groundtruth import extract
from harness.model import load_metrics, waited
from harness.runner.record import free_port

pytestmark = [pytest.mark.bpf, pytest.mark.capture]

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "scenarios" / "go" / "bin" / "http1-server"
CLIENT = ROOT / "scenarios" / "py" / "http1_client.py"
PIPELINED, MIXED = 48, 24


def test_pipelined_and_100_continue_are_seen_whole_on_both_sides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    client = (f"{sys.executable} {CLIENT} --proto http11 --host 127.0.0.1 --port {port} "
              f"--warmup 0 --deadline {waited(60):.0f}")  # fmt: skip
    script = (
        f"sleep {waited(120):.0f} | {SERVER} --proto http11 --host 127.0.0.1 --port {port} & "
        f"sleep 0.3; "
        f"{client} --workload {tmp_path}/p.jsonl --exchanges {PIPELINED} --connections 2 "
        f"--pipeline 8 && "
        f"{client} --workload {tmp_path}/m.jsonl --exchanges {MIXED} --connections 1 --mixed"
    )
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "observe", "--port", str(port),
         "--collectors", "kprobe", "--duration", "120", "--out", str(tmp_path / "runs"),
         "--", "bash", "-c", script],
        capture_output=True, text=True, cwd=ROOT, timeout=waited(600),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    metrics = load_metrics(run_dir)
    truth = metrics["truth"]
    kinds = pd.read_parquet(run_dir / "exchanges" / "truth.parquet")
    methods = kinds["method"].value_counts().to_dict()
    assert methods["POST"] >= MIXED // 4 and methods["HEAD"] == MIXED // 4  # uploads are in
    assert (kinds["status"] == 304).sum() == MIXED // 4
    assert truth["exchanges"] == PIPELINED + MIXED
    assert truth["unpaired_requests"] == truth["unpaired_responses"] == 0
    rows = {r["side"]: r for r in metrics["rows"] if r["variant"] == "default"}
    assert set(rows) == {"client", "server"}
    for side, row in rows.items():
        got = (row["observable"], row["matched"], row["degraded"], row["phantoms"])
        assert got == (PIPELINED + MIXED, PIPELINED + MIXED, 0, 0), (side, row)
    # Frames re-read for their messages or bytes (pipelined, repeated): in batches of frame
    # numbers, or in one pass over every HTTP frame when they are many (a soak): the same
    capture = run_dir / "capture.pcapng"
    batched, _ = extract.extract_exchanges(capture, http1_ports=[port], h2c_ports=[])
    monkeypatch.setattr(extract, "_MULTI_PASSES", 0)
    one_pass, _ = extract.extract_exchanges(capture, http1_ports=[port], h2c_ports=[])
    assert len(batched) == PIPELINED + MIXED
    assert [asdict(x) for x in one_pass] == [asdict(x) for x in batched]
