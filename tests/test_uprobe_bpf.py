"""The uprobe collector for real: bcc uprobes on the grpc-go targets, real gRPC on loopback.

Each run starts the collector on the server and client binaries (attach by path, as
for early attach), then the Go server and client of one grpc-go version, replays
the recording and compares every call, seen from both sides, with what the client
wrote to workload.jsonl. The teardown tests kill the collector mid-run and check the
kernel holds nothing of it afterwards.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.analysis.uprobe_observed import uprobe_exchanges
from harness.collectors.bpfsource import compile_program
from harness.collectors.uprobe.layout import header
from harness.runner.record import free_port
from harness.runner.tlsfiles import make_tls_files

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "scenarios" / "go" / "bin"
UPROBE_EVENTS = Path("/sys/kernel/tracing/uprobe_events")
FIELDS = (
    "path", "grpc_status", "grpc_message", "req_messages", "resp_messages", "req_bytes",
    "resp_bytes", "client_ip", "client_port", "server_ip", "server_port", "status",
)  # fmt: skip


def start_collector(
    out: Path, binaries: list[Path], port: int, level: str = "messages",
    value_max: int | None = None,
) -> subprocess.Popen[str]:
    stats = out.with_suffix(".json")
    args = [sys.executable, "-m", "harness.collectors.uprobe.record", "--out", str(out),
            "--stats", str(stats), "--deadline", "300", "--port", str(port),
            "--level", level]  # fmt: skip
    if value_max is not None:
        args += ["--value-max", str(value_max)]
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
    return proc.wait(timeout=60)


def test_event_structs_match_the_compiled_c(tmp_path: Path) -> None:
    """The ctypes layout parsed from the header equals what clang lays out for BPF."""
    src = tmp_path / "layout_probe.c"
    src.write_text(
        '#include "uprobe_events.h"\n'
        "BPF_ARRAY(sizes, u64, 4);\n"
        "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n"
        "  int k0 = 0, k1 = 1, k2 = 2, k3 = 3;\n"
        "  u64 a = sizeof(struct pb_header_event), b = sizeof(struct pb_data_event);\n"
        "  u64 c = offsetof(struct pb_header_event, blob);\n"
        "  u64 d = offsetof(struct pb_data_event, data);\n"
        "  sizes.update(&k0, &a); sizes.update(&k1, &b); sizes.update(&k2, &c);\n"
        "  sizes.update(&k3, &d); return 0; }\n"
    )
    prog = compile_program(str(src), {})
    try:
        os.getppid()
        got = [prog["sizes"][ctypes.c_int(i)].value for i in range(4)]
    finally:
        prog.cleanup()
    h = header()
    want = [
        ctypes.sizeof(h.structs["pb_header_event"]),
        ctypes.sizeof(h.structs["pb_data_event"]),
        h.offset("pb_header_event", "blob"),
        h.offset("pb_data_event", "data"),
    ]
    assert got == want
    # both events share their prefix, so the decoder may read it from either
    he, de = h.structs["pb_header_event"], h.structs["pb_data_event"]
    for name, _t in de._fields_[: [f[0] for f in de._fields_].index("frame_len")]:
        assert getattr(he, name).offset == getattr(de, name).offset, name


@pytest.mark.parametrize(
    ("version", "mode", "tls"),
    [
        ("v1.85.0", "bidi", False),
        ("v1.50.1", "server-stream", False),
        ("v1.33.3", "client-stream", False),
        # over TLS the transport's conn is grpc-go's *syscallConn around a *tls.Conn: the
        # addresses (checked below like every field) come from following it to the socket
        ("v1.85.0", "unary", True),
        ("v1.33.3", "bidi", True),
    ],
)
def test_calls_match_the_workload_from_both_sides(
    tmp_path: Path, version: str, mode: str, tls: bool
) -> None:
    port = free_port()
    events, workload = tmp_path / "uprobe.bin", tmp_path / "workload.jsonl"
    extra: tuple[str, ...] = ()
    if tls:
        make_tls_files(tmp_path / "tls")
        extra = ("--tls-dir", str(tmp_path / "tls"), "--tls-version", "1.3")
    col = start_collector(
        events, [BIN / f"grpc-server-{version}", BIN / f"grpc-client-{version}"], port
    )
    try:
        srv = start_server(version, port, extra)
        try:
            subprocess.run([*client_args(version, port, mode, 40, workload), *extra],
                           check=True, capture_output=True, timeout=120)  # fmt: skip
        finally:
            stop(srv)
    finally:
        assert stop(col) == 0
    stats = json.loads(events.with_suffix(".json").read_text())
    assert stats["lost_events"] == 0 and stats["unsupported"] == []
    xs, _ = uprobe_exchanges(events, [port])
    want = [json.loads(line) for line in workload.read_text().splitlines()]
    assert len(want) == 40
    by_side: dict[str, dict[str, object]] = {"client": {}, "server": {}}
    for x in xs:
        by_side[x.side][x.req_headers["x-probebench-id"]] = x
    for side, got in by_side.items():
        assert sorted(got, key=int) == sorted((str(w["id"]) for w in want), key=int), side
        for w in want:
            x = got[str(w["id"])]
            assert x.degraded == [], (side, w["id"], x.degraded)  # type: ignore[attr-defined]
            for f in FIELDS:
                assert getattr(x, f) == w[f], (side, w["id"], f)
            assert x.req_headers["x-request-nonce"] == w["req_headers"]["x-request-nonce"]  # type: ignore[attr-defined]
    # some calls of a streaming plan carry many messages: the counts above were not all 1
    assert mode == "unary" or max(w["req_messages"] + w["resp_messages"] for w in want) > 2


def _our_probes(pid: int, binary: Path) -> list[str]:
    """uprobe perf events the kernel still holds for this process on this binary."""
    out = subprocess.run(["bpftool", "perf", "list"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if f"pid {pid} " in ln and str(binary) in ln]


def _prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    return {
        p["id"] for p in json.loads(out.stdout or "[]") if p.get("name", "").startswith("probe_")
    }


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_nothing_left_after_the_collector_dies_mid_run(tmp_path: Path, sig: int) -> None:
    version = "v1.85.0"
    server_bin = BIN / f"grpc-server-{version}"
    port = free_port()
    events = tmp_path / "uprobe.bin"
    col = start_collector(events, [server_bin, BIN / f"grpc-client-{version}"], port)
    srv = start_server(version, port)
    client = None
    try:
        assert _our_probes(col.pid, server_bin), "the collector's uprobes are not in place"
        ours = _prog_ids()
        assert ours
        client = subprocess.Popen(
            client_args(version, port, "unary", 3000, tmp_path / "workload.jsonl"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        # wait until events flow (the collector is mid-run), then kill it
        deadline = time.monotonic() + 60
        while events.stat().st_size < 200_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert events.stat().st_size >= 200_000, "no traffic reached the collector"
        code = stop(col, sig)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
        # the kernel frees the programs once their last reference (the probe) is gone
        deadline = time.monotonic() + 20
        while (_our_probes(col.pid, server_bin) or ours & _prog_ids()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert _our_probes(col.pid, server_bin) == []
        assert ours & _prog_ids() == set()
        assert str(server_bin) not in UPROBE_EVENTS.read_text()
        # the traced processes carry on unharmed (a breakpoint left behind would kill them)
        _, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        assert srv.poll() is None
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        stop(srv)
        if col.poll() is None:
            col.kill()
