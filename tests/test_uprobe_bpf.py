"""The uprobe collector for real: bcc uprobes on the grpc-go targets, real gRPC on loopback.

Each run starts the collector on the server and client binaries (attach by path, as
for early attach), then the Go server and client of one grpc-go version, replays
the recording and compares every call, seen from both sides, with what the client
wrote to workload.jsonl. The teardown tests kill the collector mid-run and check the
kernel holds nothing of it afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from uprobe_run import (
    BIN,
    assert_both_sides_match,
    client_args,
    start_collector,
    start_server,
    stop,
)

from harness.collectors.bpfsource import compile_program
from harness.collectors.btf import task_image_defines
from harness.collectors.eventfile import KERNEL, read_event_file
from harness.collectors.uprobe.exchanges import uprobe_exchanges
from harness.collectors.uprobe.layout import header, hfield_struct
from harness.model import waited
from harness.runner.record import free_port
from harness.runner.tlsfiles import make_tls_files

pytestmark = pytest.mark.bpf

UPROBE_EVENTS = Path("/sys/kernel/tracing/uprobe_events")


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
                           check=True, capture_output=True, timeout=waited(120))  # fmt: skip
        finally:
            stop(srv)
    finally:
        assert stop(col) == 0
    stats = json.loads(events.with_suffix(".json").read_text())
    assert stats["lost_events"] == 0 and stats["unsupported"] == []
    xs, _ = uprobe_exchanges(events, [port])
    want = assert_both_sides_match(xs, workload, 40)
    _assert_header_records_sized_to_content(events)
    nonce = {str(w["id"]): w["req_headers"]["x-request-nonce"] for w in want}
    assert all(x.req_headers["x-request-nonce"] == nonce[x.req_headers["x-probebench-id"]]
               for x in xs)  # fmt: skip
    # some calls of a streaming plan carry many messages: the counts above were not all 1
    assert mode == "unary" or max(w["req_messages"] + w["resp_messages"] for w in want) > 2


def _assert_header_records_sized_to_content(events: Path) -> None:
    """A header record is as long as its fields: prefix, then per field a pb_hfield, the
    addresses of read-only strings and the captured bytes (a fixed per-field table made
    every record 1 KiB longer). Read-only strings met again go by address alone."""
    h = header()
    d = h.defines
    hf, kind_off = hfield_struct(), h.offset("pb_header_event", "kind")
    he = h.structs["pb_header_event"]
    blob_off = h.offset("pb_header_event", "blob")
    seen = refs = 0
    for rtype, rec in read_event_file(events).records():
        if rtype != KERNEL or bytes(rec[kind_off : kind_off + 1])[0] != d["PB_UEV_HEADERS"]:
            continue
        ev = he.from_buffer_copy(bytes(rec[:blob_off]).ljust(ctypes.sizeof(he), b"\0"))
        assert len(rec) == blob_off + ev.blob_len
        pos = 0
        for _ in range(ev.count):
            _, _, nc, vc, how = hf.unpack_from(rec, blob_off + pos)
            pos += hf.size + nc + vc
            for bit in ("PB_HOW_NAME_ADDR", "PB_HOW_VALUE_ADDR"):
                pos += 8 if how & d[bit] else 0
            refs += (how & d["PB_HOW_NAME_REF"]) > 0
        assert pos == ev.blob_len
        seen += 1
    assert seen and refs > seen  # header names are constants: most go by address


def _our_probes(pid: int, binary: Path) -> list[str]:
    """uprobe perf events the kernel still holds for this process on this binary."""
    out = subprocess.run(["bpftool", "perf", "list"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if f"pid {pid} " in ln and str(binary) in ln]


def _prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    return {
        p["id"] for p in json.loads(out.stdout or "[]") if p.get("name", "").startswith("probe_")
    }


def _prog_ids_of(pid: int) -> set[int]:
    """The BPF programs one process holds open (its fdinfo says): other engineers' and
    other tests' collectors on the same machine are not ours to judge."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            for line in info.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
    return ids


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
        ours = _prog_ids_of(col.pid) & _prog_ids()
        assert ours
        client = subprocess.Popen(
            client_args(version, port, "unary", 3000, tmp_path / "workload.jsonl"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        # wait until events flow (the collector is mid-run), then kill it
        deadline = time.monotonic() + waited(60)
        while events.stat().st_size < 200_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert events.stat().st_size >= 200_000, "no traffic reached the collector"
        code = stop(col, sig)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
        # the kernel frees the programs once their last reference (the probe) is gone
        deadline = time.monotonic() + waited(20)
        while (_our_probes(col.pid, server_bin) or ours & _prog_ids()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert _our_probes(col.pid, server_bin) == []
        assert ours & _prog_ids() == set()
        assert str(server_bin) not in UPROBE_EVENTS.read_text()
        # the traced processes carry on unharmed (a breakpoint left behind would kill them)
        _, err = client.communicate(timeout=waited(120))
        assert client.returncode == 0, err
        assert srv.poll() is None
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        stop(srv)
        if col.poll() is None:
            col.kill()


def _spawn_as(pid: int, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start args under a given (free) pid, as a reused pid would: the kernel hands out the
    pid after ns_last_pid next, unless another fork on the machine takes it first."""
    for _ in range(200):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        p = subprocess.Popen(args, env=env, text=True)
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    raise AssertionError(f"pid {pid} could not be had again")


def _health_checks(port: int, n: int) -> None:
    """n grpc.health.v1 Check calls on one connection (raw bytes: the empty request, and
    the answer SERVING)."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=waited(30))
        check = ch.unary_unary("/grpc.health.v1.Health/Check")
        for _ in range(n):
            assert check(b"", timeout=waited(30)) == b"\x08\x01"


def test_cached_connection_not_taken_by_a_new_process_under_the_same_pid(
    tmp_path: Path,
) -> None:
    """The connection cache (conn_at, uprobe_grpc.c) holds each goroutine's connection by
    (tgid, goroutine id, probe), checked against the probe's root object. A Go < 1.26 binary
    (Debian's Go 1.19 build) counts goroutines from 1 and allocates its transports at the
    same addresses in every run, so a second server under the first one's pid met the first
    one's entries, root and all, and its calls were named by the first server's port (or
    its response headers by one port and its requests by the other). Two servers, one pid,
    two ports: each call named by its own server's port, and the cache still used."""
    srv_bin = BIN / "grpc-health-debian"
    port1, port2 = free_port(), free_port()
    events = tmp_path / "uprobe.bin"
    # one P: the goroutine ids and heap addresses of the two runs are then the same
    env = {**os.environ, "GOMAXPROCS": "1"}
    col = start_collector(events, [srv_bin], port1, level="headers", profile=True)
    try:
        first = subprocess.Popen([str(srv_bin), "--port", str(port1)], env=env, text=True)
        try:
            _health_checks(port1, 3)
        finally:
            stop(first)
        second = _spawn_as(first.pid, [str(srv_bin), "--port", str(port2)], env)
        try:
            _health_checks(port2, 4)
        finally:
            stop(second)
    finally:
        assert stop(col) == 0
    stats = json.loads(events.with_suffix(".json").read_text())
    assert stats["lost_events"] == 0 and stats["unsupported"] == []
    xs, _ = uprobe_exchanges(events, [port1, port2])
    got = Counter((x.side, x.server_port, x.path) for x in xs)
    check = "/grpc.health.v1.Health/Check"
    assert got == {("server", port1, check): 3, ("server", port2, check): 4}, got
    assert stats["conns_cached"] > 0


def test_task_image_tells_an_exec_and_a_new_process_apart(tmp_path: Path) -> None:
    """pb_task_image (pb_common.h), which the connection cache is checked by: an exec keeps
    the tgid and the start time and moves the exec count on; another process starts at
    another time."""
    src = tmp_path / "image_probe.c"
    src.write_text(
        "#include <uapi/linux/ptrace.h>\n"
        '#include "pb_common.h"\n'
        "BPF_ARRAY(images, struct pb_image, 4);\n"
        "BPF_ARRAY(count, u32, 1);\n"
        "TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {\n"
        "  u32 tgid = bpf_get_current_pid_tgid() >> 32;\n"
        "  if (tgid != PB_A && tgid != PB_B) return 0;\n"
        "  int zero = 0; u32 *n = count.lookup(&zero); if (!n) return 0;\n"
        "  int i = *n; struct pb_image img = {}; pb_task_image(&img);\n"
        "  images.update(&i, &img); *n = i + 1; return 0; }\n"
    )
    # A calls getppid, then execs a Python that calls it again; then B calls it once
    again = "import os; os.getppid()"
    first = ("import os, sys; sys.stdin.readline(); os.getppid(); "
             f"os.execv(sys.executable, [sys.executable, '-c', {again!r}])")  # fmt: skip
    second = "import os, sys; sys.stdin.readline(); os.getppid()"
    a = subprocess.Popen([sys.executable, "-c", first], stdin=subprocess.PIPE, text=True)
    b = subprocess.Popen([sys.executable, "-c", second], stdin=subprocess.PIPE, text=True)
    prog = compile_program(str(src), {**task_image_defines(), "PB_A": a.pid, "PB_B": b.pid})
    try:
        for p in (a, b):
            assert p.stdin is not None
            p.communicate("go\n", timeout=waited(60))
            assert p.returncode == 0
        n = prog["count"][ctypes.c_int(0)].value
        imgs = [prog["images"][ctypes.c_int(i)] for i in range(n)]
    finally:
        prog.cleanup()
    assert n == 3
    before, after, other = ((i.start, i.exec_id) for i in imgs)
    assert before[0] == after[0] and after[1] == before[1] + 1
    assert other[0] not in (0, before[0])
