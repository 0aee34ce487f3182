"""One grpc-go recording under the uprobe collector, as the uprobe tests all need it: the
collector on the server and client binaries of one build, that build's server, the caller's
clients, then everything stopped and the collector's stats checked."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.model import waited

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "scenarios" / "go" / "bin"
# what the collector must give exactly as the client wrote it to workload.jsonl
FIELDS = (
    "path", "grpc_status", "grpc_message", "req_messages", "resp_messages", "req_bytes",
    "resp_bytes", "client_ip", "client_port", "server_ip", "server_port", "status",
)  # fmt: skip


def start_collector(
    out: Path, binaries: list[Path], port: int, level: str = "messages",
    value_max: int | None = None, profile: bool = False,
) -> subprocess.Popen[str]:
    stats = out.with_suffix(".json")
    args = [sys.executable, "-m", "harness.collectors.uprobe.record", "--out", str(out),
            "--stats", str(stats), "--deadline", "300", "--port", str(port),
            "--level", level]  # fmt: skip
    if value_max is not None:
        args += ["--value-max", str(value_max)]
    if profile:
        args.append("--profile")
    for b in binaries:
        args += ["--binary", str(b)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ATTACHED "), line
    return proc


def start_server(version: str, port: int, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    srv = subprocess.Popen(
        [str(BIN / f"grpc-server-{version}"), "--proto", "grpc", "--host", "127.0.0.1",
         "--port", str(port), *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert srv.stdout is not None and srv.stdout.readline().startswith("READY")
    return srv


def client_args(version: str, port: int, mode: str, n: int, workload: Path) -> list[str]:
    return [str(BIN / f"grpc-client-{version}"), "--proto", "grpc", "--host", "127.0.0.1",
            "--port", str(port), "--exchanges", str(n), "--seed", "3", "--connections", "2",
            "--warmup", "0", "--workload", str(workload), "--mode", mode]  # fmt: skip


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=waited(60))


def run_client(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=waited(120))


@contextlib.contextmanager
def recording(
    events: Path, build: str, port: int, *, level: str = "messages",
    value_max: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yields a dict that holds the collector's stats once the block has ended; the body
    runs the clients. No event may be lost and every probe must have attached."""
    col = start_collector(events, [BIN / f"grpc-server-{build}", BIN / f"grpc-client-{build}"],
                          port, level=level, value_max=value_max)  # fmt: skip
    out: dict[str, Any] = {}
    try:
        srv = start_server(build, port)
        try:
            yield out
        finally:
            stop(srv)
    finally:
        assert stop(col) == 0
    out.update(json.loads(events.with_suffix(".json").read_text()))
    assert out["lost_events"] == 0 and out["unsupported"] == []


def assert_both_sides_match(xs: list[Any], workload: Path, n: int) -> list[dict[str, Any]]:
    """Every call of the workload seen once from each side, undegraded, every field in
    FIELDS as the client wrote it. Returns the workload records."""
    want = {str(w["id"]): w for w in map(json.loads, workload.read_text().splitlines())}
    assert len(want) == n
    for side in ("client", "server"):
        got = {x.req_headers["x-probebench-id"]: x for x in xs if x.side == side}
        assert sorted(got, key=int) == sorted(want, key=int), side
        for i, w in want.items():
            assert got[i].degraded == [], (side, i, got[i].degraded)
            for f in FIELDS:
                assert getattr(got[i], f) == w[f], (side, i, f)
    return list(want.values())
