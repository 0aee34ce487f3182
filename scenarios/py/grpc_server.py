"""gRPC scenario server in Python (grpcio, sync server on a thread pool).

Serves probebench.Bench (scenarios/proto/bench.proto): every request says how
many responses of what size to send and which status to end with. Control
protocol: scenarios/README.md. Stubs come from scripts/build-grpc-targets.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent / "gen"))

import bench_pb2  # generated into gen/ by scripts/build-grpc-targets
import bench_pb2_grpc
import grpc
import tlsopts

MAX_MSG_SIZE = 8 << 20  # the plan sends messages of >= 1 MiB
STOP_GRACE_S = 2.0
CODES = {c.value[0]: c for c in grpc.StatusCode}
FILLER = bytes(ord("a") + i % 26 for i in range(26)) * ((MAX_MSG_SIZE // 26) + 1)


def payload(n: int) -> bytes:
    """n filler bytes; the same pattern as the Go targets' bench.Payload."""
    return FILLER[:n]


def resp(req_id: int, seq: int, size: int) -> bench_pb2.Resp:
    return bench_pb2.Resp(id=req_id, seq=seq, payload=payload(size))


def end_with(req: bench_pb2.Req | None, context: grpc.ServicerContext) -> None:
    """Abort with the status the request asked for; return normally for OK."""
    if req is not None and req.status_code != 0:
        context.abort(CODES[req.status_code], req.status_message)


DELAY_HEADER = "x-probebench-delay-ms"  # as the Go server: wait, so a client can give up


def delay(context: grpc.ServicerContext) -> None:
    """Wait as the call's metadata asks, or until the call ends (cancel, deadline)."""
    ms = dict(context.invocation_metadata()).get(DELAY_HEADER)
    if not ms or not str(ms).isdigit():
        return
    end = time.monotonic() + int(ms) / 1000
    while context.is_active() and time.monotonic() < end:
        time.sleep(0.01)


class Bench(bench_pb2_grpc.BenchServicer):
    def Unary(self, request: bench_pb2.Req, context: grpc.ServicerContext) -> bench_pb2.Resp:
        delay(context)
        end_with(request, context)
        return resp(request.id, 0, request.resp_size)

    def ServerStream(
        self, request: bench_pb2.Req, context: grpc.ServicerContext
    ) -> Iterator[bench_pb2.Resp]:
        for seq in range(request.resp_count):
            yield resp(request.id, seq, request.resp_size)
            if seq == 0:
                delay(context)  # after the response headers and a first message
        if request.resp_count == 0:
            delay(context)
        end_with(request, context)

    def ClientStream(
        self, request_iterator: Iterator[bench_pb2.Req], context: grpc.ServicerContext
    ) -> bench_pb2.Resp:
        first = None
        for req in request_iterator:
            if first is None:
                first = req
        if first is None:
            return resp(0, 0, 0)
        end_with(first, context)
        return resp(first.id, 0, first.resp_size)

    def Bidi(
        self, request_iterator: Iterator[bench_pb2.Req], context: grpc.ServicerContext
    ) -> Iterator[bench_pb2.Resp]:
        first = None
        seq = 0
        for req in request_iterator:
            if first is None:
                first = req
            for _ in range(req.resp_count):
                yield resp(req.id, seq, req.resp_size)
                seq += 1
        end_with(first, context)


def fail(code: int, message: str) -> NoReturn:
    print(f"grpc_server: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def check_bindable(host: str, port: int) -> None:
    """Fail (exit 3, one line) before grpcio does: its C core would add log lines."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As grpcio does: TIME_WAIT leftovers must not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            fail(3, f"cannot bind {host}:{port}: {e.strerror}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--proto", default="grpc", choices=["grpc"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", help="ignored: the server serves every mode")
    ap.add_argument("--workers", type=int, default=16, help="thread pool size")
    tlsopts.add_arguments(ap)
    ap.add_argument(
        "--max-lifetime",
        type=float,
        default=3600.0,
        help="exit 0 after this many seconds regardless",
    )
    ap.add_argument(
        "--max-connection-age", type=float, default=0.0,
        help="send GOAWAY to each connection after this many seconds (0: never)",
    )
    args = ap.parse_args(argv)

    check_bindable(args.host, args.port)
    age = [("grpc.max_connection_age_ms", int(args.max_connection_age * 1000)),
           ("grpc.max_connection_age_grace_ms", 5000)] if args.max_connection_age > 0 else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MSG_SIZE),
            ("grpc.max_send_message_length", MAX_MSG_SIZE),
            # grpcio sets SO_REUSEPORT by default, which would let a second
            # server bind a port already in use instead of failing.
            ("grpc.so_reuseport", 0),
            *age,
        ],
    )
    bench_pb2_grpc.add_BenchServicer_to_server(Bench(), server)
    address = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        files = tlsopts.grpc_files(args)
        bound = (
            server.add_secure_port(address, grpc.ssl_server_credentials([(files[2], files[1])]))
            if files
            else server.add_insecure_port(address)
        )
    except RuntimeError as e:  # recent grpcio raises instead of returning 0
        fail(3, f"cannot bind {address}: {e}")
    if bound == 0 or (args.port and bound != args.port):
        fail(3, f"cannot bind {address}")
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # Before READY: a runner may send SIGTERM as soon as it reads that line.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"READY {bound}", flush=True)

    def watch_stdin() -> None:
        for _ in sys.stdin:  # ends at EOF: the runner closed our stdin
            pass
        stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    if not stop.wait(args.max_lifetime):
        print("grpc_server: --max-lifetime reached, exiting", file=sys.stderr, flush=True)
    server.stop(STOP_GRACE_S).wait(STOP_GRACE_S + 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
