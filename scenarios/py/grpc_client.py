"""gRPC scenario client in Python (grpcio).

Plays the seeded call plan of scenarios/plan-grpc.md over C long-lived
channels (one HTTP/2 connection each), a few calls in flight per channel,
checks every call's outcome against the plan and writes workload.jsonl.
Control protocol: scenarios/README.md. The Go client (scenarios/go/grpc/bench)
implements the very same plan; `--print-plan` prints it in both, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "gen"))

import bench_pb2  # generated into gen/ by scripts/build-grpc-targets
import bench_pb2_grpc
import grpc
import tlsopts
from workload import MASK64, SplitMix64  # the one PRNG both plans share, mirrored in Go

STARTED = time.monotonic()
MAX_MSG_SIZE = 8 << 20  # the plan sends messages of >= 1 MiB
DELAY_HEADER = "x-probebench-delay-ms"  # the servers wait this long when asked
CALL_TIMEOUT_S = 30.0  # per call; the overall --deadline is the real bound

# -- the plan (keep identical to scenarios/go/grpc/bench/plan.go) --------------

MODES = {
    "unary": "/probebench.Bench/Unary",
    "server-stream": "/probebench.Bench/ServerStream",
    "client-stream": "/probebench.Bench/ClientStream",
    "bidi": "/probebench.Bench/Bidi",
}
# Codes a client library may synthesise itself (CANCELLED, DEADLINE_EXCEEDED)
# are left out, so a mismatch always means a real failure.
ERR_CODES = (3, 5, 7, 9, 13, 14)
# Spaces, '%' and non-ASCII, so grpc-message percent-encoding shows.
ERR_MESSAGES = (
    "quota exceeded for tenant acme (100% used)",
    "ressource introuvable : élément demandé",
    "ungültige Anfrage \u2013 bitte erneut versuchen",  # en dash
    "権限がありません",
    "server busy; retry later ☕",
)
TRACE_EVERY = 16
BIG_SIZE = 1 << 20
CLIENT_VERSION = "probebench-grpc/0.1"
METADATA_KEYS = (
    "x-probebench-id",
    "x-tenant",
    "x-client-version",
    "x-trace-context",
    "x-request-nonce",
)
FILLER = bytes(ord("a") + i % 26 for i in range(26)) * ((MAX_MSG_SIZE // 26) + 1)



@dataclass(frozen=True)
class Call:
    id: int
    method: str
    req_count: int
    resp_count: int
    req_size: int
    resp_size: int
    status_code: int
    status_message: str
    expect_resp_messages: int
    metadata: dict[str, str]

    def to_json(self) -> str:
        """The line the Go client's --print-plan prints for the same call."""
        d = {
            "id": self.id,
            "method": self.method,
            "req_count": self.req_count,
            "resp_count": self.resp_count,
            "req_size": self.req_size,
            "resp_size": self.resp_size,
            "status_code": self.status_code,
            "status_message": self.status_message,
            "expect_resp_messages": self.expect_resp_messages,
            "metadata": dict(sorted(self.metadata.items())),  # Go sorts map keys
        }
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)


def _count(d: int, allow_zero: bool) -> int:
    b = d % 100
    if b < 10:
        return 100 + (d >> 8) % 41
    if allow_zero and b < 13:
        return 0
    return 1 + (d >> 8) % 8


def _size(d: int, n: int) -> int:
    b = d % 100
    if n <= 4 and b < 5:
        return BIG_SIZE + (d >> 8) % 65536
    if b < 15:
        return 0
    return (d >> 8) % 2048


def _trace_context(t1: int, t2: int, t3: int) -> str:
    parts = ",".join(f"k{j}={(t1 + j * t3) & MASK64:016x}" for j in range(7))
    return f"00-{t1:016x}{t2:016x}-{t3:016x}-01;" + parts


def make_plan(mode: str, n: int, seed: int) -> list[Call]:
    """The n calls of one run; draw order and rules are in scenarios/plan-grpc.md."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    rng = SplitMix64(seed)
    plan = []
    trace = ""
    for i in range(n):
        if i % TRACE_EVERY == 0:
            trace = _trace_context(rng.next(), rng.next(), rng.next())
        d = [rng.next() for _ in range(7)]
        code, message = 0, ""
        if d[0] % 100 < 10:
            code = ERR_CODES[d[1] % len(ERR_CODES)]
            message = ERR_MESSAGES[(d[1] >> 32) % len(ERR_MESSAGES)]
        req_count = _count(d[2], False) if mode in ("client-stream", "bidi") else 1
        resp_count = _count(d[3], True) if mode in ("server-stream", "bidi") else 1
        expect = resp_count
        if code and mode in ("unary", "client-stream"):
            expect = 0
        plan.append(
            Call(
                id=i,
                method=MODES[mode],
                req_count=req_count,
                resp_count=resp_count,
                req_size=_size(d[4], req_count),
                resp_size=_size(d[5], resp_count),
                status_code=code,
                status_message=message,
                expect_resp_messages=expect,
                metadata={
                    "x-probebench-id": str(i),
                    "x-tenant": "acme",
                    "x-client-version": CLIENT_VERSION,
                    "x-trace-context": trace,
                    "x-request-nonce": f"{d[6]:016x}",
                },
            )
        )
    return plan


def bidi_share(j: int, q: int, r: int) -> int:
    """Responses answering request j of q when r are wanted in all (as the Go client)."""
    return (j + 1) * r // q - j * r // q


# -- finding a channel's local port -------------------------------------------


def own_tcp_ports(server_port: int) -> set[int]:
    """Local ports of this process's established TCP connections to server_port.

    grpcio does not expose a channel's socket, so read the kernel's table and
    keep the sockets whose inodes are among our own file descriptors.
    """
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since listdir
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote, state, inode = f[1], f[2], f[3], f[9]
            remote_port = int(remote.rsplit(":", 1)[1], 16)
            if state == "01" and remote_port == server_port and inode in inodes:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


# -- the client ---------------------------------------------------------------


class CallFailed(Exception):
    """A call's outcome did not match the plan, or the run ran out of time."""


@dataclass
class Conn:
    """One channel: one HTTP/2 connection (see open_channel)."""

    idx: int
    channel: grpc.Channel
    stub: bench_pb2_grpc.BenchStub
    port: int | None
    seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> int:
        with self.lock:
            seq = self.seq
            self.seq += 1
            return seq


@dataclass
class Tally:
    """Messages and payload bytes of one call; the request iterator runs in a grpcio thread."""

    req_messages: int = 0
    req_bytes: int = 0
    resp_messages: int = 0
    resp_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, m: bench_pb2.Req) -> None:
        with self.lock:
            self.req_messages += 1
            self.req_bytes += m.ByteSize()  # == len(m.SerializeToString())

    def received(self, m: bench_pb2.Resp) -> None:
        with self.lock:
            self.resp_messages += 1
            self.resp_bytes += m.ByteSize()


class Client:
    def __init__(self, args: argparse.Namespace, plan: list[Call]) -> None:
        self.args = args
        self.mode: str = args.mode
        self.plan = plan
        # Keep a little of --deadline for grpcio's teardown, so the process as a
        # whole stays within it.
        self.deadline = STARTED + args.deadline - min(1.0, 0.1 * args.deadline)
        self.target = f"{args.host}:{args.port}"
        self.conns: list[Conn] = []
        self.lock = threading.Lock()  # guards next_id, out, errors
        self.next_id = 0
        self.errors: list[str] = []
        self.out: IO[str] | None = None

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CallFailed("deadline passed")
        return left

    def open_channel(self, idx: int) -> Conn:
        # A local subchannel pool gives each channel its own subchannel, hence
        # its own TCP connection; by default grpcio shares one between channels
        # to the same target.
        files = tlsopts.grpc_files(self.args)
        compression = grpc.Compression.Gzip if self.args.compress else None
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            # Loopback only: never route through an http_proxy from the environment.
            ("grpc.enable_http_proxy", 0),
            ("grpc.max_receive_message_length", MAX_MSG_SIZE),
            ("grpc.max_send_message_length", MAX_MSG_SIZE),
        ]
        channel = (
            grpc.secure_channel(
                self.target, grpc.ssl_channel_credentials(root_certificates=files[0]), options,
                compression=compression,
            )
            if files
            else grpc.insecure_channel(self.target, options=options, compression=compression)
        )
        before = own_tcp_ports(self.args.port)
        try:
            grpc.channel_ready_future(channel).result(timeout=min(10.0, self.remaining()))
        except grpc.FutureTimeoutError as e:
            channel.close()
            raise CallFailed(f"connection {idx} to {self.target} not ready") from e
        new = own_tcp_ports(self.args.port) - before
        # Exactly one new connection is this channel's; anything else is
        # ambiguous and recorded as unknown (null) rather than guessed.
        port = next(iter(new)) if len(new) == 1 else None
        return Conn(idx, channel, bench_pb2_grpc.BenchStub(channel), port)

    def request(self, call: Call, j: int) -> bench_pb2.Req:
        resp_count = call.resp_count
        if self.mode == "bidi":
            resp_count = bidi_share(j, call.req_count, call.resp_count)
        return bench_pb2.Req(
            id=call.id,
            payload=FILLER[: call.req_size],
            resp_count=resp_count,
            resp_size=call.resp_size,
            status_code=call.status_code,
            status_message=call.status_message,
        )

    def requests(self, call: Call, tally: Tally) -> Iterator[bench_pb2.Req]:
        for j in range(call.req_count):
            req = self.request(call, j)
            tally.sent(req)
            yield req

    def shape(self, call_id: int) -> str:
        """How --cancel-every ends this call early, as the Go client does ("" = it does not)."""
        k = self.args.cancel_every
        if k <= 0 or call_id % k != k - 1:
            return ""
        s = ("deadline", "cancel", "cancel-after-response")[(call_id // k) % 3]
        return "cancel" if s == "cancel-after-response" and self.mode == "unary" else s

    def exchange_early(self, conn: Conn, call: Call, tally: Tally, shape: str) -> tuple[int, str]:
        """A call the client gives up on: the server waits (after its first response when
        streaming) longer than the client does."""
        md = (*((k, call.metadata[k]) for k in METADATA_KEYS), (DELAY_HEADER, "3000"))
        timeout = 0.1 if shape == "deadline" else min(CALL_TIMEOUT_S, self.remaining())
        req = self.request(call, 0)
        tally.sent(req)
        try:
            if self.mode == "unary":
                fut = conn.stub.Unary.future(req, metadata=md, timeout=timeout)
                if shape != "deadline":
                    time.sleep(0.1)
                    fut.cancel()
                tally.received(fut.result())
            else:
                it = conn.stub.ServerStream(req, metadata=md, timeout=timeout)
                for resp in it:
                    tally.received(resp)
                    if shape != "deadline":
                        it.cancel()  # RST_STREAM after the response headers
        except grpc.FutureCancelledError:
            return grpc.StatusCode.CANCELLED.value[0], "cancelled"
        except grpc.RpcError as e:
            return e.code().value[0], e.details() or ""
        return 0, ""

    def exchange(self, conn: Conn, call: Call, tally: Tally) -> tuple[int, str]:
        """Run one call; returns its final (grpc status code, message)."""
        md = tuple((k, call.metadata[k]) for k in METADATA_KEYS)
        timeout = min(CALL_TIMEOUT_S, self.remaining())
        stub = conn.stub
        try:
            if self.mode == "unary":
                req = self.request(call, 0)
                tally.sent(req)
                resp, _ = stub.Unary.with_call(req, metadata=md, timeout=timeout)
                tally.received(resp)
            elif self.mode == "client-stream":
                resp, _ = stub.ClientStream.with_call(
                    self.requests(call, tally), metadata=md, timeout=timeout
                )
                tally.received(resp)
            else:
                if self.mode == "server-stream":
                    req = self.request(call, 0)
                    tally.sent(req)
                    it = stub.ServerStream(req, metadata=md, timeout=timeout)
                else:
                    it = stub.Bidi(self.requests(call, tally), metadata=md, timeout=timeout)
                for resp in it:
                    tally.received(resp)
                    if tally.resp_messages > call.resp_count:
                        it.cancel()
                        raise CallFailed(f"call {call.id}: more than {call.resp_count} responses")
        except grpc.RpcError as e:
            return e.code().value[0], e.details() or ""
        return 0, ""

    def call(self, conn: Conn, call_id: int, phase: str) -> None:
        call = self.plan[call_id]
        seq = conn.start()
        tally = Tally()
        t_start = time.monotonic_ns()
        shape = self.shape(call_id)
        if shape:
            code, message = self.exchange_early(conn, call, tally, shape)
        else:
            code, message = self.exchange(conn, call, tally)
        t_end = time.monotonic_ns()
        port = conn.port
        if len(self.conns) == 1:
            # the server may have sent GOAWAY and the channel reconnected: with one
            # channel, the one connection we hold now is the call's; two: unknown
            now = own_tcp_ports(self.args.port)
            port = next(iter(now)) if now == {conn.port} or len(now) == 1 else None
        if shape:
            # ended early by the client: its library's status, not one the server sent
            if code not in (grpc.StatusCode.CANCELLED.value[0],
                            grpc.StatusCode.DEADLINE_EXCEEDED.value[0]):
                raise CallFailed(f"call {call_id}: ended early, got status {code} {message!r}")
            phase += "-ended-early"
        elif (code, message) != (call.status_code, call.status_message):
            raise CallFailed(
                f"call {call_id}: got status {code} {message!r}, "
                f"planned {call.status_code} {call.status_message!r}"
            )
        if not shape and (tally.req_messages, tally.resp_messages) != (
            call.req_count,
            call.expect_resp_messages,
        ):
            raise CallFailed(
                f"call {call_id}: {tally.req_messages}/{tally.resp_messages} messages "
                f"sent/received, planned {call.req_count}/{call.expect_resp_messages}"
            )
        record: dict[str, Any] = {
            "id": call.id,
            "protocol": "h2c-grpc",
            "client_ip": self.args.host,
            "client_port": port,
            "server_ip": self.args.host,
            "server_port": self.args.port,
            "conn_seq": seq,
            "conn": conn.idx,
            "method": "POST",
            "path": call.method,
            # a unary call ended early gave up before its response headers
            "status": None if shape and self.mode == "unary" else 200,
            "grpc_status": code,
            "grpc_message": message,
            "req_bytes": tally.req_bytes,
            "resp_bytes": tally.resp_bytes,
            "req_messages": tally.req_messages,
            "resp_messages": tally.resp_messages,
            "req_headers": call.metadata,
            "t_start_ns": t_start,
            "t_end_ns": t_end,
            "phase": phase,
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.lock:
            assert self.out is not None
            self.out.write(line)

    def worker(self, conn: Conn) -> None:
        for _ in range(len(self.plan)):  # at most one turn per call
            with self.lock:
                call_id = self.next_id
                if call_id >= len(self.plan) or self.errors:
                    return
                self.next_id += 1
            try:
                self.call(conn, call_id, "main")
            except Exception as e:  # report any failure; the main thread exits non-zero
                with self.lock:
                    self.errors.append(str(e) or type(e).__name__)
                return

    def wait_go(self) -> None:
        # select bounds the wait by the deadline; readline alone could block forever.
        ready, _, _ = select.select([sys.stdin], [], [], self.remaining())
        if not ready:
            raise CallFailed("deadline passed waiting for GO")
        line = sys.stdin.readline()
        if line.strip() != "GO":
            raise CallFailed(f"expected GO on stdin, got {line!r}")

    def run(self) -> None:
        args = self.args
        with open(args.workload, "a", encoding="utf-8") as out:
            self.out = out
            try:
                for i in range(args.connections):
                    self.conns.append(self.open_channel(i))
                warm = min(args.warmup * args.connections, len(self.plan))
                for i in range(warm):
                    self.call(self.conns[i % args.connections], i, "warmup")
                self.next_id = warm
                if args.warmup > 0:
                    out.flush()
                    print("WARM", flush=True)
                    self.wait_go()
                threads = [
                    threading.Thread(target=self.worker, args=(c,), daemon=True)
                    for c in self.conns
                    for _ in range(args.inflight)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(max(0.0, self.deadline - time.monotonic()) + 1.0)
                if any(t.is_alive() for t in threads):
                    raise CallFailed("deadline passed with calls in flight")
                if self.errors:
                    raise CallFailed(self.errors[0])
            finally:
                for c in self.conns:
                    c.channel.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--proto", default="grpc", choices=["grpc"])
    ap.add_argument("--mode", default="unary", choices=list(MODES))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--exchanges", type=int, default=100, help="calls in all, warm-up included")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=0, help="calls per connection before WARM/GO")
    ap.add_argument("--inflight", type=int, default=3, help="concurrent calls per connection")
    ap.add_argument("--workload", help="workload.jsonl to append to")
    ap.add_argument("--deadline", type=float, default=120.0)
    ap.add_argument("--print-plan", action="store_true", help="print the plan and exit")
    tlsopts.add_arguments(ap)
    ap.add_argument(
        "--cancel-every", type=int, default=0,
        help="every Nth call ends early: deadline expiry, cancel before the response headers, "
        "cancel after the first response, in turn (0: none; unary and server-stream)",
    )
    ap.add_argument("--compress", choices=["gzip"], help="send messages compressed")
    args = ap.parse_args(argv)
    try:
        plan = make_plan(args.mode, args.exchanges, args.seed)
    except ValueError as e:
        print(f"grpc_client: {e}", file=sys.stderr)
        return 2
    if args.print_plan:
        sys.stdout.write("".join(c.to_json() + "\n" for c in plan))
        return 0
    if not args.workload or args.port <= 0 or args.connections < 1 or args.inflight < 1:
        print("grpc_client: need --workload, --port, --connections >= 1", file=sys.stderr)
        return 2
    if args.cancel_every > 0 and args.mode not in ("unary", "server-stream"):
        print("grpc_client: --cancel-every needs --mode unary or server-stream", file=sys.stderr)
        return 2
    try:
        Client(args, plan).run()
    except (CallFailed, OSError) as e:
        print(f"grpc_client: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"DONE {args.exchanges}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
