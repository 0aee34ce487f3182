"""Real HTTP/1.x targets on loopback: every server x client x protocol, the seeded plan
identical in Python and Go, and the wire versions seen by a capture."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import itertools
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from harness.groundtruth.capture import Dumpcap

ROOT = Path(__file__).resolve().parents[1]
PY_DIR = ROOT / "scenarios" / "py"
GO_BIN = ROOT / "scenarios" / "go" / "bin"
BUILD = ROOT / "scripts" / "build-targets"

N = 60
CONNS = 3
WARMUP = 2
SEED = 20240611
LINE_WAIT_S = 30.0  # a bound on how long a target may take to print a line, not a timing check

RECORD_FIELDS = {
    "id", "protocol", "client_ip", "client_port", "server_ip", "server_port", "conn_seq",
    "method", "path", "status", "req_bytes", "resp_bytes", "req_messages", "resp_messages",
    "grpc_status", "t_start_ns", "t_end_ns", "phase",
}  # fmt: skip


def _load_workload():
    spec = importlib.util.spec_from_file_location("pb_http1_workload", PY_DIR / "workload.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


workload = _load_workload()


@pytest.fixture(scope="session")
def go_bins() -> dict[str, Path] | None:
    """Build the Go targets once (a no-op when up to date); None when Go cannot build."""
    if not BUILD.exists():
        return None
    res = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=600)
    bins = {"server": GO_BIN / "http1-server", "client": GO_BIN / "http1-client"}
    if res.returncode != 0 or not all(os.access(p, os.X_OK) for p in bins.values()):
        return None
    return bins


def _cmd(kind: str, lang: str, go_bins: dict[str, Path] | None) -> list[str]:
    if lang == "py":
        return [sys.executable, str(PY_DIR / f"http1_{kind}.py")]
    if go_bins is None:
        pytest.skip("Go binaries missing: scripts/build-targets did not produce them")
    return [str(go_bins[kind])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    """A child process whose stdout lines arrive through a queue (bounded waits)."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr = ""
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str) -> str:
        try:
            line = self.lines.get(timeout=LINE_WAIT_S)
        except queue.Empty:
            self.stop()
            pytest.fail(f"no {prefix!r} line from {self.proc.args}")
        if line is None or not line.startswith(prefix):
            self.stop()
            pytest.fail(f"expected {prefix!r}, got {line!r}; stderr: {self.stderr.strip()}")
        return line

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stop(self) -> int:
        """Close stdin (the polite stop), then reap; kill only if it does not go."""
        if self.proc.stdin and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=15)
        finally:
            self._reader.join(timeout=5)
            if self.proc.stderr and not self.proc.stderr.closed:
                # Targets write at most one line there, so this read cannot block for long.
                self.stderr = self.proc.stderr.read()
                self.proc.stderr.close()


def start_server(lang: str, proto: str, go_bins: dict[str, Path] | None) -> tuple[Target, int]:
    port = _free_port()
    server = Target([*_cmd("server", lang, go_bins), "--proto", proto, "--port", str(port)])
    assert server.expect("READY") == f"READY {port}"
    return server, port


def run_client(
    lang: str,
    proto: str,
    port: int,
    out: Path,
    go_bins: dict[str, Path] | None,
    n: int = N,
    warmup: int = WARMUP,
) -> tuple[int, str]:
    argv = [
        *_cmd("client", lang, go_bins),
        "--proto", proto, "--host", "127.0.0.1", "--port", str(port),
        "--exchanges", str(n), "--seed", str(SEED), "--connections", str(CONNS),
        "--warmup", str(warmup), "--workload", str(out), "--deadline", "60",
    ]  # fmt: skip
    client = Target(argv)
    if warmup:
        client.expect("WARM")
        # Nothing is written before the run finishes; the warm-up happened, GO is awaited.
        assert not out.exists()
        client.send("GO\n")
    try:
        done = client.lines.get(timeout=LINE_WAIT_S * 2)
    except queue.Empty:
        done = None
    rc = client.stop()
    return rc, done if done is not None else f"no DONE; stderr: {client.stderr.strip()}"


@pytest.mark.parametrize("proto", ["http10", "http11"])
@pytest.mark.parametrize("client_lang", ["py", "go"])
@pytest.mark.parametrize("server_lang", ["py", "go"])
def test_client_server_combo(tmp_path, go_bins, server_lang, client_lang, proto):
    server, port = start_server(server_lang, proto, go_bins)
    try:
        out = tmp_path / "workload.jsonl"
        rc, done = run_client(client_lang, proto, port, out, go_bins)
    finally:
        assert server.stop() == 0
    assert rc == 0, done
    assert done == f"DONE {N}"

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    plan = workload.make_plan(N, SEED, proto)
    assert len(rows) == N
    assert [r["id"] for r in rows] == list(range(N))
    lanes = 1 if proto == "http10" else CONNS
    for row, want in zip(rows, plan, strict=True):
        assert set(row) == RECORD_FIELDS
        assert row["protocol"] == workload.PROTOCOL_NAME[proto]
        assert (row["method"], row["path"], row["status"]) == (want.method, want.path, want.status)
        assert (row["req_bytes"], row["resp_bytes"]) == (want.req_bytes, want.resp_bytes)
        assert row["server_ip"] == row["client_ip"] == "127.0.0.1"
        assert row["server_port"] == port
        assert row["req_messages"] is row["resp_messages"] is row["grpc_status"] is None
        assert 0 < row["t_start_ns"] < row["t_end_ns"]
        assert row["phase"] == ("warmup" if row["id"] < WARMUP * lanes else "main")

    by_lane: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        by_lane[row["id"] % lanes].append(row)
    for lane_rows in by_lane.values():
        # Sequential per lane: each exchange ends before the next one starts.
        for a, b in itertools.pairwise(lane_rows):
            assert a["t_end_ns"] <= b["t_start_ns"]
    if proto == "http10":
        assert all(r["conn_seq"] == 0 for r in rows)
    else:
        # One persistent connection per lane, its exchanges numbered 0.. in id order.
        ports = {k: {r["client_port"] for r in lane_rows} for k, lane_rows in by_lane.items()}
        assert all(len(p) == 1 for p in ports.values())
        assert len({p for s in ports.values() for p in s}) == CONNS
        for lane_rows in by_lane.values():
            assert [r["conn_seq"] for r in lane_rows] == list(range(len(lane_rows)))


@pytest.mark.parametrize(
    ("proto", "variant"),
    [("http10", ()), ("http11", ()), ("http11", ("--mixed",)), ("http11", ("--pipeline", "8"))],
)
def test_python_and_go_plans_identical(go_bins, proto, variant):
    for seed in (0, 1, SEED, -7, 2**63 + 5):
        plans = []
        for lang in ("py", "go"):
            signed = seed if seed < 2**63 else seed - 2**64
            argv = [*_cmd("client", lang, go_bins), "--proto", proto, "--exchanges", "400",
                    "--seed", str(signed), "--plan-only", *variant]  # fmt: skip
            res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
            plans.append(res.stdout)
        assert plans[0] == plans[1], f"plans differ for seed {seed}"
        rows = [json.loads(line) for line in plans[0].splitlines()]
        assert len(rows) == 400
        mixed, pipelined = "--mixed" in variant, "--pipeline" in variant
        assert [(r["method"], r["path"], r["status"]) for r in rows] == [
            (p.method, p.path, p.status)
            for p in workload.make_plan(400, seed, proto, mixed, pipelined)
        ]


def test_mixed_and_pipelined_plans_follow_their_rules():
    mixed = workload.make_plan(400, 1, "http11", mixed=True)
    assert [p.method for p in mixed[:8]] == ["HEAD", "GET", "DELETE", "POST"] * 2
    assert {p.status for p in mixed[1::4]} == {304} and {p.status for p in mixed[2::4]} == {204}
    assert all(("Expect", "100-continue") in p.headers and p.req_bytes > 0 for p in mixed[3::4])
    assert all(p.resp_bytes == 0 for p in mixed[0::4])
    piped = workload.make_plan(2000, 1, "http11", pipelined=True)
    assert "HEAD" not in {p.method for p in piped}
    assert max(max(p.req_bytes, p.resp_size) for p in piped) <= workload.PIPELINED_MAX_BODY


def test_plan_covers_the_space():
    plan = workload.make_plan(2000, 1, "http11")
    assert {p.method for p in plan} == {m for m, _ in workload.METHOD_WEIGHTS}
    assert {p.status for p in plan} == {s for s, _ in workload.STATUS_WEIGHTS}
    assert {p.resp_mode for p in plan} == {"cl", "ch"}
    assert any(p.req_chunked for p in plan)
    assert max(p.req_bytes for p in plan) > 200 * 1024
    assert max(len(p.headers) for p in plan) == 8
    assert all(p.resp_bytes == 0 for p in plan if p.method == "HEAD" or p.status == 204)
    assert all(p.req_bytes == 0 for p in plan if p.method not in workload.BODY_METHODS)
    http10 = workload.make_plan(2000, 1, "http10")
    assert not any(p.req_chunked or p.resp_mode == "ch" for p in http10)
    # Same random stream whatever the protocol: only the encoding choices differ.
    assert [(p.method, p.status) for p in http10] == [(p.method, p.status) for p in plan]


@pytest.mark.parametrize("server_lang", ["py", "go"])
def test_server_behaviour(go_bins, server_lang):
    server, port = start_server(server_lang, "http11", go_bins)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        body = workload.body_chunks(20000)
        conn.request("POST", "/r/201/9000/ch?x=1", body=body, encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked", "x-probebench-id": "5"})  # fmt: skip
        resp = conn.getresponse()
        assert resp.status == 201
        assert resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.getheader("x-req-bytes") == "20000"
        assert resp.getheader("x-probebench-id") == "5"
        assert resp.read() == workload.body_bytes(9000)

        conn.request("HEAD", "/r/200/777/cl")
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("Content-Length"), resp.read()) == (200, "777", b"")

        conn.request("GET", "/r/301/10/cl")
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("Location")) == (301, workload.LOCATION)
        assert resp.read() == workload.body_bytes(10)

        conn.request("DELETE", "/r/204/0/cl")
        resp = conn.getresponse()
        assert (resp.status, resp.read(), resp.getheader("Content-Length")) == (204, b"", None)

        conn.request("PUT", "/r/200/0/cl", body=b"not the pattern")
        resp = conn.getresponse()
        assert resp.status == 400
        resp.read()
        conn.close()

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/nope")
        assert conn.getresponse().status == 400
        conn.close()
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("lang", ["py", "go"])
def test_server_port_in_use_exits_3(go_bins, lang):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = subprocess.run(
            [*_cmd("server", lang, go_bins), "--proto", "http11", "--port", str(port)],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert res.returncode == 3
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("client_lang", ["py", "go"])
def test_client_fails_loudly_on_mismatch(tmp_path, go_bins, client_lang):
    # An http10 server answers HTTP/1.0 and refuses chunked responses: an http11
    # client must notice and exit non-zero with a one-line reason.
    server, port = start_server("py", "http10", go_bins)
    try:
        argv = [*_cmd("client", client_lang, go_bins), "--proto", "http11",
                "--port", str(port), "--exchanges", "20", "--seed", "3",
                "--workload", str(tmp_path / "w.jsonl")]  # fmt: skip
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    finally:
        assert server.stop() == 0
    assert res.returncode != 0
    assert "DONE" not in res.stdout
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w.jsonl").exists()


@pytest.mark.capture
def test_http10_is_http10_on_the_wire(tmp_path, go_bins):
    if os.geteuid() != 0 or shutil.which("dumpcap") is None or shutil.which("tshark") is None:
        pytest.skip("needs root, dumpcap and tshark to capture on lo")
    combos = [(s, c) for s in ("py", "go") for c in ("py", "go")]
    servers = [start_server(s, "http10", go_bins) for s, _ in combos]
    ports = [p for _, p in servers]
    pcap = tmp_path / "cap.pcapng"
    try:
        # Its stop waits for a sentinel to reach the file: dumpcap drops what libpcap
        # still buffers when it is stopped.
        with Dumpcap(pcap, ports):
            for (_, c), (_, port) in zip(combos, servers, strict=True):
                out = tmp_path / f"w{port}.jsonl"
                rc, done = run_client(c, "http10", port, out, go_bins, n=6, warmup=0)
                assert rc == 0, done
    finally:
        for server, _ in servers:
            server.stop()
    for port in ports:
        res = subprocess.run(
            ["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},http", "-Y",
             f"tcp.port=={port} && http", "-T", "fields", "-e", "http.request.version",
             "-e", "http.response.version"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        versions = [tuple(v for v in line.split("\t") if v) for line in res.stdout.splitlines()]
        assert len(versions) == 12, (port, res.stdout)  # 6 requests + 6 responses
        assert all(v == ("HTTP/1.0",) for v in versions), (port, versions)
