"""The TLS (OpenSSL) uprobe collector on real processes: it sees both ends' plaintext,
and leaves no uprobe or program behind however it is stopped (issue 12, stage 4)."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from kernel_state import prog_ids_held_by

from harness.collectors.tls.exchanges import tls_exchanges
from harness.model import waited
from harness.runner.record import free_port
from harness.runner.tlsfiles import make_tls_files

pytestmark = pytest.mark.bpf
ROOT = Path(__file__).resolve().parent.parent


def _perf_lines(pid: int) -> list[str]:
    """uprobe perf events the kernel holds for this process on a libssl."""
    out = subprocess.run(["bpftool", "perf", "list"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if f"pid {pid} " in ln and "libssl" in ln]


def _start(events: Path, port: int, binaries: tuple[Path, ...] = ()) -> subprocess.Popen[str]:
    col = subprocess.Popen(
        [sys.executable, "-m", "harness.collectors.tls.record", "--out", str(events),
         "--stats", str(events.with_suffix(".json")), "--port", str(port), "--deadline", "120",
         *[a for b in binaries for a in ("--binary", str(b))]],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert col.stdout is not None
    line = col.stdout.readline()
    assert line.startswith("ATTACHED "), col.stderr.read() if col.stderr else line
    return col


class _Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"x" * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_a: object) -> None:
        pass


def _https(tmp_path: Path, port: int, n: int) -> None:
    """n HTTPS GETs, Python's ssl (the system libssl) on both ends, in this process."""
    files = make_tls_files(tmp_path / "tls")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(files.cert, files.key)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Quiet)
    srv.socket = sctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        cctx = ssl.create_default_context(cafile=str(files.ca))
        for _ in range(n):
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=cctx,
                                        timeout=waited(10)) as r:  # fmt: skip
                assert r.read() == b"x" * 1000
    finally:
        srv.shutdown()
        srv.server_close()


def test_both_ends_plaintext_seen(tmp_path: Path) -> None:
    port = free_port()
    events = tmp_path / "tls.bin"
    col = _start(events, port)
    try:
        _https(tmp_path, port, 20)
        time.sleep(0.3)
    finally:
        col.send_signal(signal.SIGTERM)
        col.wait(timeout=waited(60))
    assert col.returncode == 0
    stats = json.loads(events.with_suffix(".json").read_text())
    assert stats["lost_events"] == 0
    xs, st = tls_exchanges(events, [port])
    for side in ("client", "server"):
        mine = [x for x in xs if x.side == side]
        assert len(mine) == 20, (side, st)
        assert all(x.method == "GET" and x.status == 200 and x.resp_bytes == 1000
                   and x.server_port == port and not x.degraded for x in mine)  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_probe_left_after_the_collector_is_stopped(tmp_path: Path, sig: int) -> None:
    port = free_port()
    col = _start(tmp_path / "tls.bin", port)
    try:
        assert _perf_lines(col.pid), "the collector's libssl uprobes are not in place"
        progs = prog_ids_held_by({col.pid})
        assert progs
        _https(tmp_path, port, 3)  # mid-run: it has recorded
        col.send_signal(sig)
        col.wait(timeout=waited(60))
        deadline = time.monotonic() + waited(20)
        while _perf_lines(col.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _perf_lines(col.pid) == []
        out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True)
        assert progs & {p["id"] for p in json.loads(out.stdout or "[]")} == set()
        _https(tmp_path, port, 2)  # the traced library still works in everyone
    finally:
        if col.poll() is None:
            col.kill()
            col.wait()


def test_go119_reads_seen_whole_at_their_rets(tmp_path: Path) -> None:
    """Debian's Go 1.19 compiles crypto/tls.(*Conn).Read with its frame allocated before the
    frame pointer is saved; the spill-slot check (gobin/spills.py) follows that layout, so
    its reads are probed at their RETs alone, c and b read from the spill slots. Each
    response, read by the Go client, must come out whole and on its own connection."""
    binary = ROOT / "scenarios" / "go" / "bin" / "tls-client-go1.19"
    port, n = free_port(), 4
    files = make_tls_files(tmp_path / "tls")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(files.cert, files.key)
    body = b"pong" * 50
    listener = socket.create_server(("127.0.0.1", port))

    def serve() -> None:
        for _ in range(n):
            conn, _ = listener.accept()
            with sctx.wrap_socket(conn, server_side=True) as s:
                s.recv(4096)
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    threading.Thread(target=serve, daemon=True).start()
    events = tmp_path / "tls.bin"
    col = _start(events, port, (binary,))
    try:
        for _ in range(n):
            out = subprocess.run([str(binary), f"127.0.0.1:{port}",
                                  "GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
                                 capture_output=True, timeout=waited(60), check=True)  # fmt: skip
            assert out.stdout.endswith(body)
        time.sleep(0.3)
    finally:
        col.send_signal(signal.SIGTERM)
        col.wait(timeout=waited(60))
        listener.close()
    stats = json.loads(events.with_suffix(".json").read_text())
    assert stats["lost_events"] == 0 and stats["reads_unseen"] == 0
    assert stats["unsupported"] == []
    xs, st = tls_exchanges(events, [port])
    mine = [x for x in xs if x.side == "client"]
    assert len(mine) == n, st
    assert len({x.client_port for x in mine}) == n
    assert all(x.status == 200 and x.resp_bytes == len(body) and not x.degraded
               for x in mine)  # fmt: skip


def test_kprobe_socket_hook_passes_the_verifier() -> None:
    """The variant for kernels before 6.3 (no sock tracepoints): compiled and loaded as a
    kprobe program here, where only attaching needs a kernel with kprobes."""
    from harness.collectors.bpfsource import compile_program, load_bcc
    from harness.collectors.tls.layout import PROGRAM, header
    from harness.collectors.tls.sockhook import KPROBE_FN

    d = header().defines
    bpf = compile_program(PROGRAM, {"PB_FILTER_TGID": 0, "PB_FILTER_PORTS": 1,
                                    "PB_SK_HOOK": d["PB_SK_KPROBES"]})  # fmt: skip
    try:
        assert bpf.load_func(KPROBE_FN, load_bcc().BPF.KPROBE).fd >= 0
        # the tracepoint variant's programs are not in this one
        assert not any(b"sock_send_length" in k for k in bpf.tracepoint_fds)
    finally:
        bpf.cleanup()
