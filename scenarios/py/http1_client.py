"""HTTP/1.0 and HTTP/1.1 keep-alive target client (stdlib http.client).

Plays the seeded plan of scenarios/plan.md over C persistent connections
(http11) or one connection per exchange (http10), verifies every response, and
writes workload.jsonl. Control protocol: scenarios/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from workload import (
    BODY_METHODS,
    LOCATION,
    MAX_BODY,
    PROTOCOL_NAME,
    PlannedRequest,
    body_bytes,
    body_chunks,
    make_plan,
)

# Per-socket-operation cap; the overall --deadline is the real bound.
IO_TIMEOUT_S = 30.0
MAX_LINE = 64 * 1024  # bounds on a response head read by hand
MAX_HEADERS = 200


class ExchangeFailed(Exception):
    """A response did not match the plan, or the connection misbehaved."""


@dataclass
class Worker:
    """One persistent connection (http11) or the one sequential lane (http10)."""

    index: int
    conn: http.client.HTTPConnection | None = None
    raw: RawConn | None = None
    conn_seq: int = 0
    records: list[dict[str, object]] = field(default_factory=list)


@dataclass
class RawResponse:
    """What a raw read of one final response gave (the subset _verify reads)."""

    version: int  # 10 or 11
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    will_close: bool

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class RawConn:
    """One HTTP/1.1 connection spoken by hand, for what http.client cannot do: several
    requests in one write (pipelining), and a body held back until 100 Continue."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def _line(self) -> bytes:
        line = self.rfile.readline(MAX_LINE + 1)
        if not line.endswith(b"\n") or len(line) > MAX_LINE:
            raise ExchangeFailed("connection closed or line too long in a response head")
        return line

    def read_head(self) -> tuple[int, int, dict[str, str]]:
        parts = self._line().decode("latin-1").split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.0", "HTTP/1.1") or not parts[1].isdigit():
            raise ExchangeFailed(f"bad status line {parts!r}")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = self._line()
            if line in (b"\r\n", b"\n"):
                return (10 if parts[0] == "HTTP/1.0" else 11), int(parts[1]), headers
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raise ExchangeFailed("too many header lines")

    def read_response(self, method: str) -> RawResponse:
        """The next final response (1xx interim ones are skipped), framed as RFC 9112 6.3."""
        for _ in range(MAX_HEADERS):
            version, status, headers = self.read_head()
            if not 100 <= status < 200:
                break
        else:
            raise ExchangeFailed("too many interim responses")
        close = headers.get("connection", "").lower() == "close" or version == 10
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
        elif "content-length" in headers:
            n = int(headers["content-length"])
            body = self.rfile.read(n)
            if len(body) != n:
                raise ExchangeFailed("response body shorter than its content-length")
        else:
            body = self.rfile.read(MAX_BODY + 1)
            close = True
        return RawResponse(version, status, headers, body, close)

    def _chunked(self) -> bytes:
        out = bytearray()
        for _ in range(MAX_BODY):
            size = int(self._line().split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._line() not in (b"\r\n", b"\n"):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            if self.rfile.read(2) != b"\r\n" or len(out) > MAX_BODY:
                raise ExchangeFailed("bad chunk in a response")
        raise ExchangeFailed("too many chunks")


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.pipeline: int = args.pipeline
        self.raw: bool = args.pipeline > 1 or args.mixed
        self.proto: str = args.proto
        self.host: str = args.host
        self.port: int = args.port
        self.deadline = time.monotonic() + args.deadline
        self.host_header = (
            f"[{self.host}]:{self.port}" if ":" in self.host else (f"{self.host}:{self.port}")
        )
        self.errors: list[str] = []
        self.errors_lock = threading.Lock()

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ExchangeFailed("deadline passed")
        return min(IO_TIMEOUT_S, left)

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self._timeout())
        if self.proto == "http10":
            # http.client has no public switch; these two attributes are what it reads.
            conn._http_vsn = 10
            conn._http_vsn_str = "HTTP/1.0"
        # A silent reconnect would corrupt conn_seq and the 4-tuple: fail instead.
        conn.auto_open = 0
        conn.connect()
        return conn

    def exchange(
        self,
        conn: http.client.HTTPConnection,
        req: PlannedRequest,
        conn_seq: int,
        t_start: int,
        phase: str,
    ) -> dict[str, object]:
        if conn.sock is None:
            raise ExchangeFailed(f"id {req.id}: connection closed before its turn")
        conn.sock.settimeout(self._timeout())
        local = conn.sock.getsockname()
        peer = conn.sock.getpeername()
        conn.putrequest(req.method, req.path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", self.host_header)
        conn.putheader("x-probebench-id", str(req.id))
        for name, value in req.headers:
            conn.putheader(name, value)
        if req.method in BODY_METHODS:
            if req.req_chunked:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders(body_chunks(req.req_bytes), encode_chunked=True)
            else:
                conn.putheader("Content-Length", str(req.req_bytes))
                conn.endheaders(body_bytes(req.req_bytes))
        else:
            conn.endheaders()
        resp = conn.getresponse()
        data = resp.read()
        t_end = time.monotonic_ns()
        self._verify(req, resp, data)
        return {
            "id": req.id,
            "protocol": PROTOCOL_NAME[self.proto],
            "client_ip": local[0],
            "client_port": local[1],
            "server_ip": peer[0],
            "server_port": peer[1],
            "conn_seq": conn_seq,
            "method": req.method,
            "path": req.path,
            "status": resp.status,
            "req_bytes": req.req_bytes,
            "resp_bytes": len(data),
            "req_messages": None,
            "resp_messages": None,
            "grpc_status": None,
            "t_start_ns": t_start,
            "t_end_ns": t_end,
            "phase": phase,
        }

    def request_bytes(self, req: PlannedRequest) -> tuple[bytes, bytes]:
        """The head and the body of a request as the raw connection sends them."""
        lines = [f"{req.method} {req.path} HTTP/1.1", f"Host: {self.host_header}",
                 f"x-probebench-id: {req.id}", *(f"{n}: {v}" for n, v in req.headers)]
        body = b""
        if req.method in BODY_METHODS:
            if req.req_chunked:
                lines.append("Transfer-Encoding: chunked")
                body = b"".join(b"%X\r\n%s\r\n" % (len(c), c) for c in body_chunks(req.req_bytes))
                body += b"0\r\n\r\n"
            else:
                lines.append(f"Content-Length: {req.req_bytes}")
                body = body_bytes(req.req_bytes)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body

    def _record(
        self, conn: RawConn, req: PlannedRequest, resp: RawResponse, conn_seq: int,
        t_start: int, t_end: int, phase: str,
    ) -> dict[str, object]:
        self._verify(req, resp, resp.body)  # type: ignore[arg-type]
        local, peer = conn.sock.getsockname(), conn.sock.getpeername()
        return {
            "id": req.id, "protocol": PROTOCOL_NAME[self.proto],
            "client_ip": local[0], "client_port": local[1],
            "server_ip": peer[0], "server_port": peer[1], "conn_seq": conn_seq,
            "method": req.method, "path": req.path, "status": resp.status,
            "req_bytes": req.req_bytes, "resp_bytes": len(resp.body),
            "req_messages": None, "resp_messages": None, "grpc_status": None,
            "t_start_ns": t_start, "t_end_ns": t_end, "phase": phase,
        }

    def run_raw(self, worker: Worker, requests: list[PlannedRequest], phase: str) -> None:
        """Pipelined bursts, or one exchange at a time with 100-continue uploads."""
        try:
            if worker.raw is None:
                sock = socket.create_connection((self.host, self.port), timeout=self._timeout())
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                worker.raw = RawConn(sock)
            conn = worker.raw
            for k in range(0, len(requests), self.pipeline):
                batch = requests[k : k + self.pipeline]
                conn.sock.settimeout(self._timeout())
                t_start = time.monotonic_ns()
                if self.pipeline > 1:
                    conn.sock.sendall(b"".join(h + b for h, b in map(self.request_bytes, batch)))
                else:
                    (req,) = batch
                    head, body = self.request_bytes(req)
                    conn.sock.sendall(head)
                    if ("Expect", "100-continue") in req.headers:
                        _, status, _ = conn.read_head()  # the body waits for the 100
                        if status != 100:
                            raise ExchangeFailed(f"id {req.id}: {status} instead of 100 Continue")
                    if body:
                        conn.sock.sendall(body)
                for req in batch:
                    resp = conn.read_response(req.method)
                    t_end = time.monotonic_ns()
                    worker.records.append(
                        self._record(conn, req, resp, worker.conn_seq, t_start, t_end, phase)
                    )
                    worker.conn_seq += 1
        except (OSError, ValueError, ExchangeFailed) as e:
            self._record_error(f"connection {worker.index}: {type(e).__name__}: {e}")

    def _verify(self, req: PlannedRequest, resp: http.client.HTTPResponse, data: bytes) -> None:
        want_vsn = 10 if self.proto == "http10" else 11
        problems = []
        if resp.version != want_vsn:
            problems.append(f"response version {resp.version} != {want_vsn}")
        if resp.status != req.status:
            problems.append(f"status {resp.status} != {req.status}")
        if data != body_bytes(req.resp_bytes):
            problems.append(f"body of {len(data)} bytes != pattern of {req.resp_bytes}")
        if resp.getheader("x-req-bytes") != str(req.req_bytes):
            problems.append(f"x-req-bytes {resp.getheader('x-req-bytes')} != {req.req_bytes}")
        if resp.getheader("x-probebench-id") != str(req.id):
            problems.append("x-probebench-id not echoed")
        if req.status == 301 and resp.getheader("Location") != LOCATION:
            problems.append("301 without the expected Location")
        if self.proto == "http11" and resp.will_close:
            problems.append("server closed a keep-alive connection")
        if problems:
            raise ExchangeFailed(f"id {req.id} {req.method} {req.path[:60]}: {'; '.join(problems)}")

    def run_http11(self, worker: Worker, requests: list[PlannedRequest], phase: str) -> None:
        try:
            if worker.conn is None:
                worker.conn = self._connect()
            for req in requests:
                t_start = time.monotonic_ns()
                worker.records.append(
                    self.exchange(worker.conn, req, worker.conn_seq, t_start, phase)
                )
                worker.conn_seq += 1
        except (OSError, http.client.HTTPException, ExchangeFailed) as e:
            self._record_error(f"connection {worker.index}: {type(e).__name__}: {e}")

    def run_http10(self, worker: Worker, requests: list[PlannedRequest], phase: str) -> None:
        try:
            for req in requests:
                # The exchange includes the connect: that is what HTTP/1.0 costs.
                t_start = time.monotonic_ns()
                conn = self._connect()
                try:
                    worker.records.append(self.exchange(conn, req, 0, t_start, phase))
                finally:
                    conn.close()
        except (OSError, http.client.HTTPException, ExchangeFailed) as e:
            self._record_error(f"{type(e).__name__}: {e}")

    def _record_error(self, msg: str) -> None:
        with self.errors_lock:
            self.errors.append(msg)

    def run_phase(
        self,
        workers: list[Worker],
        lists: list[list[PlannedRequest]],
        phase: str,
    ) -> None:
        target = self.run_http10 if self.proto == "http10" else self.run_http11
        if self.raw:
            target = self.run_raw
        threads = [
            threading.Thread(target=target, args=(w, reqs, phase), daemon=True)
            for w, reqs in zip(workers, lists, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            # Socket timeouts are capped by the deadline, so threads end by then.
            t.join(timeout=max(0.0, self.deadline - time.monotonic()) + IO_TIMEOUT_S)
            if t.is_alive():
                self._record_error("a connection thread outlived the deadline")
        if self.errors:
            raise ExchangeFailed(self.errors[0])

    def wait_go(self) -> None:
        """Block until the runner writes GO (bounded by the deadline)."""
        buf = b""
        fd = sys.stdin.fileno()
        for _ in range(10_000):
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise ExchangeFailed("deadline passed while waiting for GO")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1024)
            if not chunk:
                raise ExchangeFailed("stdin closed before GO")
            buf += chunk
            if b"GO" in buf.splitlines():
                return
        raise ExchangeFailed("no GO line on stdin")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--proto", choices=("http10", "http11"), required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--exchanges", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--workload")
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--plan-only", action="store_true", help="print the plan as JSON lines and exit")
    p.add_argument("--pipeline", type=int, default=1,
                   help="requests sent in one write before their responses (http11)")
    p.add_argument("--mixed", action="store_true",
                   help="the mixed plan: HEAD, 304, 204, 100-continue uploads")
    args = p.parse_args(argv)
    if args.exchanges < 0 or args.connections < 1 or args.warmup < 0 or args.deadline <= 0:
        p.error("--exchanges/--warmup must be >= 0, --connections >= 1, --deadline > 0")
    if args.pipeline < 1 or (args.pipeline > 1 and (args.mixed or args.proto != "http11")):
        p.error("--pipeline must be >= 1, and > 1 only for http11 without --mixed")
    if args.mixed and args.proto != "http11":
        p.error("--mixed is for http11")
    if not args.plan_only and (args.port <= 0 or not args.workload):
        p.error("--port and --workload are required")
    return args


def split_plan(
    plan: list[PlannedRequest],
    proto: str,
    conns: int,
    warmup: int,
) -> tuple[list[list[PlannedRequest]], list[list[PlannedRequest]]]:
    """Round-robin by id over the lanes; the first warmup*lanes ids are the warm-up."""
    lanes = 1 if proto == "http10" else conns
    n_warm = min(len(plan), warmup * lanes)
    warm = [[r for r in plan[:n_warm] if r.id % lanes == k] for k in range(lanes)]
    main_ = [[r for r in plan[n_warm:] if r.id % lanes == k] for k in range(lanes)]
    return warm, main_


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args.exchanges, args.seed, args.proto, args.mixed, args.pipeline > 1)
    if args.plan_only:
        sys.stdout.write("".join(r.to_json() + "\n" for r in plan))
        return 0
    client = Client(args)
    warm, main_ = split_plan(plan, args.proto, args.connections, args.warmup)
    workers = [Worker(index=k) for k in range(len(warm))]
    try:
        if args.warmup > 0:
            client.run_phase(workers, warm, "warmup")
            print("WARM", flush=True)
            client.wait_go()
        client.run_phase(workers, main_, "main")
    except ExchangeFailed as e:
        print(f"http1_client: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        for w in workers:
            if w.conn is not None:
                w.conn.close()
            if w.raw is not None:
                w.raw.close()
    records = sorted((r for w in workers for r in w.records), key=lambda r: int(r["id"]))
    if len(records) != len(plan):
        print(f"http1_client: {len(records)} records for {len(plan)} exchanges", file=sys.stderr)
        return 1
    with open(args.workload, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    print(f"DONE {len(records)}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
