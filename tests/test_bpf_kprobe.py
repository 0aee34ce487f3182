"""The kernel-side collector for real: bcc programs on syscall tracepoints, real processes."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.collectors.bpfsource import compile_program
from harness.collectors.eventfile import KERNEL, read_event_file
from harness.collectors.kprobe.decode import decode
from harness.collectors.kprobe.layout import header
from harness.errors import RunDirError
from harness.model import waited
from harness.runner.record import free_port

pytestmark = pytest.mark.bpf

SERVER = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("READY", flush=True)
c, _ = s.accept()
req = c.recv(65536)
c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
c.sendall(sys.argv[2].encode())
print(c.getsockname()[1], c.recv(65536).decode().split("\\r\\n")[0], flush=True)
c.close()
"""


def cli_pid(conns: list, server_pid: int, port: int) -> int:
    """The client's pid: the process that connected to our port."""
    return next(c.tgid for c in conns if c.role == "client" and c.remote and c.remote.port == port)


def start_recorder(out: Path, ports: list[int], *extra: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "harness.collectors.kprobe.record", "--out", str(out),
            "--stats", str(out.with_suffix(".json")), "--deadline", "120"]  # fmt: skip
    for p in ports:
        args += ["--port", str(p)]
    proc = subprocess.Popen([*args, *extra], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ATTACHED "), line
    return proc


def test_event_structs_match_the_compiled_c(tmp_path: Path) -> None:
    """The ctypes layout parsed from the header equals what clang lays out for BPF."""
    src = tmp_path / "layout_probe.c"
    src.write_text(
        '#include "kprobe_events.h"\n'
        "BPF_ARRAY(sizes, u64, 4);\n"
        "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n"
        "  int k0 = 0, k1 = 1, k2 = 2, k3 = 3;\n"
        "  u64 a = sizeof(struct pb_conn_event), b = sizeof(struct pb_data_event);\n"
        "  u64 c = offsetof(struct pb_data_event, data);\n"
        "  u64 d = offsetof(struct pb_conn_event, lport);\n"
        "  sizes.update(&k0, &a); sizes.update(&k1, &b); sizes.update(&k2, &c);\n"
        "  sizes.update(&k3, &d); return 0; }\n"
    )
    prog = compile_program(src, {"PB_CHUNK": 4096})
    try:
        os.getppid()
        got = [prog["sizes"][ctypes.c_int(i)].value for i in range(4)]
    finally:
        prog.cleanup()
    h = header(4096)
    want = [
        ctypes.sizeof(h.structs["pb_conn_event"]),
        ctypes.sizeof(h.structs["pb_data_event"]),
        h.offset("pb_data_event", "data"),
        h.offset("pb_conn_event", "lport"),
    ]
    assert got == want


def test_collector_records_the_bytes_a_process_wrote(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "k.bin"
    rec = start_recorder(out, [port])
    try:
        srv = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
        assert srv.stdout is not None and srv.stdout.readline().startswith(b"READY")
        request = f"GET /probe-{os.getpid()}-{time.time_ns()} HTTP/1.1\r\nHost: t\r\n\r\n"
        cli = subprocess.run(
            [sys.executable, "-c", CLIENT, str(port), request],
            capture_output=True, text=True, timeout=waited(30), check=True,
        )  # fmt: skip
        srv.wait(timeout=waited(30))
        client_port = int(cli.stdout.split()[0])
        time.sleep(0.2)
    finally:
        rec.send_signal(signal.SIGTERM)
        assert rec.wait(timeout=waited(60)) == 0
    conns, st = decode(out)
    assert st.collector["lost_events"] == 0
    # other processes' connections accepted without a known port pass the kernel's port
    # filter (replay sets them aside as unattributed); this test is about its own
    conns = [c for c in conns if c.tgid in (srv.pid, cli_pid(conns, srv.pid, port))]
    assert sorted((c.role, c.tgid == srv.pid) for c in conns) == [
        ("client", False),
        ("server", True),
    ], [(c.key, c.comm, c.role, c.local, c.remote) for c in conns]
    client, server = sorted(conns, key=lambda c: c.role)
    assert b"".join(s.data for s in client.send) == request.encode()
    assert b"".join(s.data for s in server.recv) == request.encode()
    assert b"".join(s.data for s in client.recv).startswith(b"HTTP/1.1 200 OK")
    # the 4-tuple from connect/accept, with no help from sock_diag
    assert (client.local.port, client.remote.port) == (client_port, port)
    assert (server.local.port, server.remote.port) == (port, client_port)
    assert client.addr_source == "connect" and server.addr_source == "accept"
    assert client.closed_ns is not None and server.closed_ns is not None


def test_large_call_is_captured_in_chunks_up_to_the_limit(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "k.bin"
    # bodies captured like any bytes (by default a framed body is left out as a gap)
    rec = start_recorder(out, [port], "--max-capture", "32768", "--h1-bodies", "capture")
    body = bytes(range(256)) * 400  # 102400 bytes
    request = f"POST / HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    try:
        srv = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
        assert srv.stdout is not None and srv.stdout.readline().startswith(b"READY")
        code = (
            "import socket,sys;c=socket.create_connection(('127.0.0.1',int(sys.argv[1])));"
            "c.sendall(sys.stdin.buffer.read());c.recv(100);c.close()"
        )
        subprocess.run([sys.executable, "-c", code, str(port)], input=request, check=True)
        srv.wait(timeout=waited(30))
        time.sleep(0.2)
    finally:
        rec.send_signal(signal.SIGTERM)
        assert rec.wait(timeout=waited(60)) == 0
    conns, st = decode(out)
    [client] = [c for c in conns if c.role == "client" and c.remote and c.remote.port == port]
    [seg] = client.send
    assert seg.orig_len == len(request)
    assert seg.data == request[:32768]  # two 16 KiB chunks, a prefix of the call
    assert st.collector["truncated_calls"] >= 1


@pytest.mark.parametrize("floor", ["record", "filter"])
def test_floor_builds_do_what_the_bench_says_they_do(tmp_path: Path, floor: str) -> None:
    """The overhead bench's floor builds (recorder --floor): `record` writes one data event of
    at most 255 bytes per call and frames nothing, `filter` writes no data event; neither
    recording passes for one replay can read."""
    port = free_port()
    out = tmp_path / "k.bin"
    rec = start_recorder(out, [port], "--floor", floor)
    request = f"GET /{'x' * 400} HTTP/1.1\r\nHost: t\r\n\r\n"
    try:
        srv = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
        assert srv.stdout is not None and srv.stdout.readline().startswith(b"READY")
        subprocess.run([sys.executable, "-c", CLIENT, str(port), request],
                       capture_output=True, text=True, timeout=waited(30), check=True)  # fmt: skip
        srv.wait(timeout=waited(30))
        time.sleep(0.2)
    finally:
        rec.send_signal(signal.SIGTERM)
        assert rec.wait(timeout=waited(60)) == 0
    ef = read_event_file(out)
    assert ef.header["defines"]["PB_FLOOR"] == header().defines[f"PB_FLOOR_{floor.upper()}"]
    h = header(int(ef.header["defines"]["PB_CHUNK"]))
    kind_at = h.offset("pb_data_event", "kind")
    orig_at, cap_at = h.offset("pb_data_event", "orig_len"), h.offset("pb_data_event", "cap_len")
    data = [bytes(r) for t, r in ef.records() if t == KERNEL and isinstance(r, memoryview)
            and r[kind_at] == h.defines["PB_EV_DATA"]]  # fmt: skip
    sizes = [(int.from_bytes(d[orig_at:orig_at + 4], "little"),
              int.from_bytes(d[cap_at:cap_at + 4], "little")) for d in data]  # fmt: skip
    if floor == "filter":
        assert sizes == []
    else:
        # the request (its two sides) cut at 255 bytes, the response whole
        assert (len(request), 255) in sizes and max(c for _, c in sizes) == 255, sizes
    with pytest.raises(RunDirError, match="floor build"):
        decode(out)
