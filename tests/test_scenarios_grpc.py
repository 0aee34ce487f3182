"""The gRPC scenario targets (Python grpcio, grpc-go at several versions), run for real on loopback.

Builds first (scripts/build-grpc-targets), then drives every mode through
every client/server language pair and checks workload.jsonl against the
seeded plan, which both clients must compute identically.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build-grpc-targets"
BIN = ROOT / "scenarios" / "go" / "bin"
PYDIR = ROOT / "scenarios" / "py"
NODEDIR = ROOT / "scenarios" / "node"
JAVADIR = ROOT / "scenarios" / "java"
PY = sys.executable
CURRENT = "v1.85.0"
OLD = ("v1.33.3", "v1.50.1")
MODES = ("unary", "server-stream", "client-stream", "bidi")
N, CONNS, WARMUP, SEED = 40, 2, 2, 1
IO_TIMEOUT_S = 30.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def built() -> str:
    """Build once per session; a second run must find nothing to do."""
    first = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr + first.stdout
    again = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines and all(x.startswith("[build] ok: ") for x in lines), again.stdout
    return first.stdout


@pytest.fixture(scope="session")
def plan_mod(built: str):
    """The Python client module, for its plan, and the generated messages."""
    sys.path[:0] = [str(PYDIR), str(PYDIR / "gen")]
    import bench_pb2
    import grpc_client

    return grpc_client, bench_pb2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(proc: subprocess.Popen[str], timeout: float = IO_TIMEOUT_S) -> str:
    """One stdout line, or fail after timeout instead of blocking forever."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output from {proc.args} within {timeout}s"
    return proc.stdout.readline().strip()


def java_cmd(main_class: str) -> list[str]:
    cp = (JAVADIR / "target" / "classpath.txt").read_text().strip()
    return ["java", "-cp", f"{JAVADIR / 'target' / 'classes'}:{cp}", main_class]


RUSTBIN = ROOT / "scenarios" / "rust" / "target" / "release"


def server_cmd(lang: str, version: str = CURRENT) -> list[str]:
    if lang == "rust":
        return [str(RUSTBIN / "grpc_server")]
    if lang == "java":
        return java_cmd("probebench.GrpcServer")
    if lang == "node":
        return ["node", str(NODEDIR / "grpc_server.js")]
    if lang == "py":
        return [PY, str(PYDIR / "grpc_server.py")]
    return [str(BIN / f"grpc-server-{version}")]


def client_cmd(lang: str, version: str = CURRENT) -> list[str]:
    if lang == "rust":
        return [str(RUSTBIN / "grpc_client")]
    if lang == "java":
        return java_cmd("probebench.GrpcClient")
    if lang == "node":
        return ["node", str(NODEDIR / "grpc_client.js")]
    if lang == "py":
        return [PY, str(PYDIR / "grpc_client.py")]
    return [str(BIN / f"grpc-client-{version}")]


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int


def start_server(cmd: list[str], port: int) -> subprocess.Popen[str]:
    args = [*cmd, "--proto", "grpc", "--mode", "unary", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(proc: subprocess.Popen[str]) -> int:
    """Close stdin (the contract's stop signal) and reap; kill only if it hangs."""
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise
    finally:
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture(scope="session")
def node_built() -> None:
    """The Node targets' packages, installed by scripts/build-targets (npm ci, idempotent)."""
    done = subprocess.run([str(ROOT / "scripts" / "build-node-targets")], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout


@pytest.fixture(scope="session")
def java_built() -> None:
    """The Java targets, built by scripts/build-targets (Maven, idempotent)."""
    done = subprocess.run([str(ROOT / "scripts" / "build-java-targets")], capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout


@pytest.fixture(scope="session")
def rust_built() -> None:
    """The Rust targets, built by scripts/build-targets (cargo --locked, idempotent)."""
    done = subprocess.run([str(ROOT / "scripts" / "build-rust-targets")], capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout


def needs_build(request: pytest.FixtureRequest, lang: str) -> None:
    if lang in ("node", "java", "rust"):
        request.getfixturevalue(f"{lang}_built")


# Python and Go in every combination; each further stack against Go, both ways.
PAIRS = [(c, s) for c in ("go", "py") for s in ("go", "py")] + [
    p for lang in ("node", "java", "rust") for p in ((lang, "go"), ("go", lang))
]


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, built: str) -> Iterator[Server]:
    """One server per language for all the client runs (current grpc-go)."""
    needs_build(request, request.param)
    port = free_port()
    proc = start_server(server_cmd(request.param), port)
    try:
        assert read_line(proc) == f"READY {port}"
        yield Server(proc, port)
    finally:
        # Torn down per module: the server must honour the contract's exit 0.
        assert stop(proc) == 0


def run_client(cmd: list[str], mode: str, port: int, workload: Path) -> list[dict]:
    args = [
        *cmd,
        "--proto",
        "grpc",
        "--mode",
        mode,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--exchanges",
        str(N),
        "--seed",
        str(SEED),
        "--connections",
        str(CONNS),
        "--warmup",
        str(WARMUP),
        "--workload",
        str(workload),
        "--deadline",
        "60",
    ]
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert read_line(proc) == "WARM"
        # Warm-up is over before GO: exactly the warm-up calls are on file.
        warm = [json.loads(x) for x in workload.read_text().splitlines()]
        assert sorted(r["id"] for r in warm) == list(range(CONNS * WARMUP))
        assert proc.stdin is not None
        proc.stdin.write("GO\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.strip().splitlines()[-1] == f"DONE {N}"
    return [json.loads(x) for x in workload.read_text().splitlines()]


def expected_bytes(bench_pb2, grpc_client, call) -> tuple[int, int]:
    """Serialized sizes of the messages the plan implies, computed independently."""
    req = sum(
        bench_pb2.Req(
            id=call.id,
            payload=b"a" * call.req_size,
            resp_count=(
                grpc_client.bidi_share(j, call.req_count, call.resp_count)
                if call.method.endswith("/Bidi")
                else call.resp_count
            ),
            resp_size=call.resp_size,
            status_code=call.status_code,
            status_message=call.status_message,
        ).ByteSize()
        for j in range(call.req_count)
    )
    resp = sum(
        bench_pb2.Resp(id=call.id, seq=s, payload=b"a" * call.resp_size).ByteSize()
        for s in range(call.expect_resp_messages)
    )
    return req, resp


def check_workload(records: list[dict], mode: str, port: int, plan_mod) -> None:
    grpc_client, bench_pb2 = plan_mod
    plan = grpc_client.make_plan(mode, N, SEED)
    assert len(records) == N
    assert sorted(r["id"] for r in records) == list(range(N))
    ports: dict[int, set[int]] = {}
    seqs: dict[int, list[int]] = {}
    for r in records:
        call = plan[r["id"]]
        assert r["protocol"] == "h2c-grpc"
        assert (r["method"], r["path"], r["status"]) == ("POST", call.method, 200)
        assert (r["grpc_status"], r["grpc_message"]) == (call.status_code, call.status_message)
        assert (r["req_messages"], r["resp_messages"]) == (
            call.req_count,
            call.expect_resp_messages,
        )
        assert (r["req_bytes"], r["resp_bytes"]) == expected_bytes(bench_pb2, grpc_client, call)
        assert r["req_headers"]["x-probebench-id"] == str(r["id"])
        assert r["req_headers"] == call.metadata
        assert (r["server_ip"], r["server_port"]) == ("127.0.0.1", port)
        assert r["client_ip"] == "127.0.0.1"
        assert r["phase"] == ("warmup" if r["id"] < CONNS * WARMUP else "main")
        assert 0 < r["t_start_ns"] <= r["t_end_ns"]
        assert isinstance(r["client_port"], int), r
        ports.setdefault(r["conn"], set()).add(r["client_port"])
        seqs.setdefault(r["conn"], []).append(r["conn_seq"])
    # C connections, each with one local port of its own, calls numbered 0.. on each.
    assert sorted(ports) == list(range(CONNS))
    assert all(len(p) == 1 for p in ports.values())
    assert len(set().union(*ports.values())) == CONNS
    for s in seqs.values():
        assert sorted(s) == list(range(len(s)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("client", "server"), PAIRS, indirect=["server"])
def test_clients_against_server(
    server: Server, client: str, mode: str, tmp_path: Path, plan_mod,
    request: pytest.FixtureRequest,
) -> None:
    needs_build(request, client)
    workload = tmp_path / "workload.jsonl"
    records = run_client(client_cmd(client), mode, server.port, workload)
    check_workload(records, mode, server.port, plan_mod)


@pytest.mark.parametrize("version", OLD)
def test_old_grpc_go_versions_unary(built: str, version: str, tmp_path: Path, plan_mod) -> None:
    port = free_port()
    proc = start_server(server_cmd("go", version), port)
    try:
        assert read_line(proc) == f"READY {port}"
        records = run_client(client_cmd("go", version), "unary", port, tmp_path / "w.jsonl")
    finally:
        code = stop(proc)
    assert code == 0
    check_workload(records, "unary", port, plan_mod)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 987654321, 2**64 - 1])
def test_python_and_go_plans_are_identical(
    built: str, node_built: None, java_built: None, rust_built: None, mode: str, seed: int
) -> None:
    args = ["--mode", mode, "--exchanges", "500", "--seed", str(seed), "--print-plan"]
    py = subprocess.run(
        [PY, str(PYDIR / "grpc_client.py"), *args], capture_output=True, timeout=60, check=True
    ).stdout
    for version in (CURRENT, *OLD):
        go = subprocess.run(
            [str(BIN / f"grpc-client-{version}"), *args],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        assert go == py, version
    node = subprocess.run(
        ["node", str(NODEDIR / "grpc_client.js"), *args], capture_output=True, timeout=60,
        check=True,
    ).stdout
    assert node == py, "node"
    java = subprocess.run([*java_cmd("probebench.GrpcClient"), *args], capture_output=True,
                          timeout=60, check=True).stdout  # fmt: skip
    assert java == py, "java"
    rust = subprocess.run([str(RUSTBIN / "grpc_client"), *args], capture_output=True,
                          timeout=60, check=True).stdout  # fmt: skip
    assert rust == py, "rust"
    assert len(py.splitlines()) == 500


def test_plan_has_the_traffic_the_scenarios_need(plan_mod) -> None:
    grpc_client, _ = plan_mod
    for mode in MODES:
        plan = grpc_client.make_plan(mode, N, SEED)
        errors = [c for c in plan if c.status_code != 0]
        assert errors, mode
        assert any(max(c.req_size, c.resp_size) >= 1 << 20 for c in plan), mode
        if mode != "unary":
            assert any(max(c.req_count, c.resp_count) >= 100 for c in plan), mode
        # x-trace-context repeats for a while, then changes; the nonce never repeats.
        traces = [c.metadata["x-trace-context"] for c in plan]
        assert len(set(traces)) == (N + 15) // 16 and len(traces[0]) >= 180
        assert len({c.metadata["x-request-nonce"] for c in plan}) == N
    big = grpc_client.make_plan("unary", 2000, 7)
    share = sum(c.status_code != 0 for c in big) / len(big)
    assert 0.07 < share < 0.13
    assert any(any(ord(ch) > 127 for ch in c.status_message) for c in big)


@pytest.mark.parametrize("lang", ["go", "py", "node", "java", "rust"])
def test_server_exits_3_when_the_port_is_taken(
    built: str, lang: str, request: pytest.FixtureRequest
) -> None:
    needs_build(request, lang)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = start_server(server_cmd(lang), port)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode == 3
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("lang", ["go", "py", "node", "java", "rust"])
def test_server_exits_0_on_sigterm(
    built: str, lang: str, request: pytest.FixtureRequest
) -> None:
    needs_build(request, lang)
    port = free_port()
    proc = start_server(server_cmd(lang), port)
    try:
        assert read_line(proc) == f"READY {port}"
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(proc)


def test_binaries_keep_symbols_and_dwarf(built: str) -> None:
    """The uprobe collector resolves grpc-go's transport functions through them."""
    from elftools.elf.elffile import ELFFile

    for version in (CURRENT, *OLD):
        with open(BIN / f"grpc-server-{version}", "rb") as f:
            elf = ELFFile(f)
            assert elf.has_dwarf_info()
            names = {s.name for s in elf.get_section_by_name(".symtab").iter_symbols()}
        assert any(n.endswith("transport.(*loopyWriter).writeHeader") for n in names), version
    assert os.readlink(BIN / "grpc-server") == f"grpc-server-{CURRENT}"
    assert os.readlink(BIN / "grpc-client") == f"grpc-client-{CURRENT}"
