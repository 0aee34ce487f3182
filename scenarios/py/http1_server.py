"""HTTP/1.0 and HTTP/1.1 keep-alive target server (stdlib http.server).

The request path says what to answer: `/r/<status>/<size>/<mode>` (see
scenarios/plan.md), so this server and the Go one behave identically. Control
protocol: scenarios/README.md.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from workload import CHUNK, LOCATION, MAX_BODY, NO_BODY_STATUSES, body_bytes, parse_route

# Idle keep-alive connections must outlive the runner's late-attach pause
# (collectors compile and attach between WARM and GO), yet end on their own.
IDLE_TIMEOUT_S = 300.0
# Bounds on what a request may make us read, so a bad peer cannot pin a thread.
MAX_REQ_BODY = 4 * MAX_BODY
MAX_CHUNKS = 10_000
MAX_TRAILERS = 100


class BadRequest(Exception):
    """The request body is malformed; answer 400 and close."""


class Http1Handler(BaseHTTPRequestHandler):
    server_version = "probebench-py"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S
    # Headers and body go out in separate sends; without TCP_NODELAY, Nagle plus
    # delayed ACK stalls keep-alive exchanges ~40 ms (Go sets it by default too).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        """Silent: stderr is for the one-line failure reason only."""

    def _read_body(self) -> int:
        """Read the whole request body (content-length or chunked); return its size."""
        te = self.headers.get("Transfer-Encoding", "").strip().lower()
        if te == "chunked":
            return self._read_chunked()
        if te:
            raise BadRequest(f"unsupported transfer-encoding {te!r}")
        cl = self.headers.get("Content-Length")
        if cl is None:
            return 0
        try:
            n = int(cl)
        except ValueError as e:
            raise BadRequest(f"bad content-length {cl!r}") from e
        if not 0 <= n <= MAX_REQ_BODY:
            raise BadRequest(f"content-length {n} out of range")
        data = self.rfile.read(n)
        if len(data) != n:
            raise BadRequest("body shorter than content-length")
        self._check_pattern(data, 0)
        return n

    def _read_chunked(self) -> int:
        total = 0
        for _ in range(MAX_CHUNKS):
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as e:
                raise BadRequest(f"bad chunk size line {line[:40]!r}") from e
            if size == 0:
                for _ in range(MAX_TRAILERS):
                    if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                        return total
                raise BadRequest("too many trailer lines")
            if size < 0 or total + size > MAX_REQ_BODY:
                raise BadRequest("chunked body too large")
            data = self.rfile.read(size)
            if len(data) != size or self.rfile.read(2) != b"\r\n":
                raise BadRequest("truncated chunk")
            self._check_pattern(data, total)
            total += size
        raise BadRequest("too many chunks")

    @staticmethod
    def _check_pattern(data: bytes, offset: int) -> None:
        """Request bodies are the shared pattern; anything else means a broken client."""
        if offset + len(data) <= MAX_BODY and data != body_bytes(offset + len(data))[offset:]:
            raise BadRequest("request body differs from the pattern")

    def _fail(self, reason: str) -> None:
        self.close_connection = True
        self.send_response(400)
        self.send_header("Content-Type", "text/plain")
        msg = reason.encode()
        self.send_header("Content-Length", str(len(msg)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(msg)

    def _handle(self) -> None:
        try:
            req_bytes = self._read_body()
        except BadRequest as e:
            self._fail(str(e))
            return
        route = parse_route(self.path)
        if route is None:
            self._fail(f"bad route {self.path[:80]!r}")
            return
        status, size, mode = route
        if mode == "ch" and self.request_version != "HTTP/1.1":
            self._fail("chunked response needs HTTP/1.1")
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("x-req-bytes", str(req_bytes))
        pid = self.headers.get("x-probebench-id")
        if pid is not None:
            self.send_header("x-probebench-id", pid)
        if status == 301:
            self.send_header("Location", LOCATION)
        if self.protocol_version == "HTTP/1.0":
            self.send_header("Connection", "close")
        if status in NO_BODY_STATUSES:
            self.end_headers()  # 204, 304: no length header, no body (RFC 9110 6.4.1, 15.4.5)
            return
        if mode == "cl" or self.command == "HEAD":
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD" and size:
                self.wfile.write(body_bytes(size))
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        data = body_bytes(size)
        # One send per chunk, like the Go server's write+flush per chunk.
        for k in range(0, size, CHUNK):
            piece = data[k : k + CHUNK]
            self.wfile.write(b"%X\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class Http1Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive handlers must not hold up exit


class Http1Server6(Http1Server):
    address_family = socket.AF_INET6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--proto", choices=("http10", "http11"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--max-seconds",
        type=float,
        default=3600.0,
        help="exit by itself after this long even if nobody stops it",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    version = "HTTP/1.0" if args.proto == "http10" else "HTTP/1.1"
    handler = type("Handler", (Http1Handler,), {"protocol_version": version})
    server_cls = Http1Server6 if ":" in args.host else Http1Server
    try:
        server = server_cls((args.host, args.port), handler)
    except OSError as e:
        print(f"cannot bind {args.host}:{args.port}: {e}", file=sys.stderr, flush=True)
        return 3

    stop = threading.Event()
    terminated: list[int] = []

    def on_term(signum: int, frame: FrameType | None) -> None:
        terminated.append(signum)  # no locks in a signal handler; the loop below polls

    def watch_stdin() -> None:
        # Returns at EOF: the runner closing our stdin is the stop signal.
        while sys.stdin.readline():
            pass
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    serving.start()
    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {server.server_address[1]}", flush=True)
    end = time.monotonic() + args.max_seconds
    try:
        while not stop.wait(0.2) and not terminated and time.monotonic() < end:
            pass
    finally:
        server.shutdown()
        serving.join(timeout=5)
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
