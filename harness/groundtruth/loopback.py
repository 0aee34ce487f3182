"""Known HTTP/1.x traffic on loopback, for checking the ground-truth decode against what was sent.

A tiny threaded server with a few fixed routes and a client that records every
exchange in the workload.jsonl format (scenarios/README.md). Used by the tests,
the committed fixture and the benchmark; not a scenario target.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness.errors import TargetError

ID_HEADER = "x-probebench-id"
CHUNK = 1000  # bytes per chunk of /chunked responses


class _Handler(BaseHTTPRequestHandler):
    """Routes: /bytes/N (GET, HEAD), /echo (POST, 201), /empty (204), /chunked/N.

    /chunked/N is close-delimited (no Content-Length) for HTTP/1.0 clients.
    """

    protocol_version = "HTTP/1.1"  # keep-alive for 1.1 clients; 1.0 clients still get a close
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms ACK stalls

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the default writes every request to stderr

    def _start(self, status: int) -> None:
        if self.request_version == "HTTP/1.0":
            self.protocol_version = "HTTP/1.0"  # answer in the client's version
        self.send_response(status)
        self.send_header(ID_HEADER, self.headers.get(ID_HEADER, ""))

    def _size(self) -> int:
        try:
            return int(self.path.split("?", 1)[0].rsplit("/", 1)[1])
        except (IndexError, ValueError):
            return 0

    def do_GET(self) -> None:
        if self.path.startswith("/empty"):
            self._start(204)
            self.end_headers()
        elif self.path.startswith("/chunked/") and self.request_version == "HTTP/1.0":
            # no chunking in HTTP/1.0: the body ends where the connection does
            self._start(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(b"c" * self._size())
        elif self.path.startswith("/chunked/"):
            n = self._size()
            self._start(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for off in range(0, n, CHUNK):
                part = b"c" * min(CHUNK, n - off)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._bytes(head=False)

    def do_HEAD(self) -> None:
        self._bytes(head=True)

    def _bytes(self, *, head: bool) -> None:
        n = self._size()
        self._start(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if not head:
            self.wfile.write(b"b" * n)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        reply = b"%d" % len(body)
        self._start(201)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


@contextmanager
def http_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Serve the routes above on a background thread; yields the bound port."""
    try:
        server = ThreadingHTTPServer((host, port), _Handler)
    except OSError as e:
        raise TargetError(f"loopback HTTP server could not bind {host}:{port}: {e}") from e
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="loopback-http", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    body: int = 0  # request body bytes (POST)


@dataclass(frozen=True, slots=True)
class Connection:
    version: str  # "1.0": one request then close; "1.1": keep-alive
    requests: tuple[Request, ...]


def fixture_plan() -> list[Connection]:
    """The committed fixture's traffic: every kind of exchange the decode must get right."""
    short = [
        Request("GET", "/bytes/2048"),
        Request("POST", "/echo", body=3000),
        Request("HEAD", "/bytes/4096"),
        Request("GET", "/empty"),
        Request("GET", "/bytes/0?q=1"),
        Request("GET", "/chunked/2500"),  # close-delimited body
    ]
    keep_a = (
        Request("GET", "/bytes/1500"),
        Request("POST", "/echo", body=5000),
        Request("GET", "/chunked/3500"),
        Request("HEAD", "/bytes/100"),
        Request("GET", "/empty"),
        Request("GET", "/bytes/4000?x=y&z=1"),
        Request("POST", "/echo", body=0),
    )
    keep_b = (
        Request("GET", "/chunked/2000"),
        Request("GET", "/bytes/10"),
        Request("POST", "/echo", body=1200),
        Request("GET", "/chunked/1"),
        Request("HEAD", "/chunked/500"),
        Request("GET", "/bytes/3333"),
        Request("GET", "/empty"),
        Request("GET", "/bytes/64"),
    )
    return [
        *(Connection("1.0", (r,)) for r in short),
        Connection("1.1", keep_a),
        Connection("1.1", keep_b),
    ]


def _recv_all(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def _http10(host: str, port: int, req: Request, xid: int) -> tuple[int, int, int]:
    """One HTTP/1.0 exchange on its own connection; returns (client_port, status, body bytes)."""
    body = b"p" * req.body
    head = f"{req.method} {req.path} HTTP/1.0\r\nHost: {host}:{port}\r\n{ID_HEADER}: {xid}\r\n"
    if req.method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    with socket.create_connection((host, port), timeout=10) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(head.encode() + b"\r\n" + body)
        raw = _recv_all(sock)
    header, _, rest = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return client_port, status, 0 if req.method == "HEAD" else len(rest)


def drive(
    host: str,
    port: int,
    plan: Sequence[Connection],
    workload: Path | None = None,
    *,
    first_id: int = 0,
) -> list[dict[str, Any]]:
    """Make the planned exchanges in order; returns (and appends to ``workload``) their records."""
    records: list[dict[str, Any]] = []
    xid = first_id
    for conn in plan:
        client: http.client.HTTPConnection | None = None
        if conn.version == "1.1":
            client = http.client.HTTPConnection(host, port, timeout=10)
            client.connect()
        try:
            for seq, req in enumerate(conn.requests):
                t0 = time.monotonic_ns()
                if client is None:
                    cport, status, nbytes = _http10(host, port, req, xid)
                else:
                    cport = client.sock.getsockname()[1]
                    body = b"p" * req.body if req.method == "POST" else None
                    client.request(req.method, req.path, body=body, headers={ID_HEADER: str(xid)})
                    resp = client.getresponse()
                    nbytes = len(resp.read())
                    status = resp.status
                records.append({
                    "id": xid, "protocol": f"http/{conn.version}",
                    "client_ip": host, "client_port": cport, "server_ip": host,
                    "server_port": port, "conn_seq": seq, "method": req.method,
                    "path": req.path, "status": status, "req_bytes": req.body,
                    "resp_bytes": nbytes, "req_messages": None, "resp_messages": None,
                    "grpc_status": None, "t_start_ns": t0, "t_end_ns": time.monotonic_ns(),
                    "phase": "main",
                })
                xid += 1
        finally:
            if client is not None:
                client.close()
    if workload is not None:
        with workload.open("a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    return records


def keepalive_plan(exchanges: int, connections: int = 1, size: int = 256) -> list[Connection]:
    """Bulk HTTP/1.1 keep-alive GETs spread over a few connections (benchmark traffic)."""
    per = -(-exchanges // connections)
    plan = []
    left = exchanges
    for _ in range(connections):
        n = min(per, left)
        plan.append(Connection("1.1", tuple(Request("GET", f"/bytes/{size}") for _ in range(n))))
        left -= n
    return plan
