"""A minimal gRPC health-check client (grpc.health.v1.Health/Check) for any health server.

Used to drive third-party or distribution-built grpc-go health servers (e.g. the Debian
GOPATH target) under `probebench observe`. Messages are raw protobuf bytes: an empty
HealthCheckRequest is b"", a SERVING response is b"\\x08\\x01", so no generated stubs
are needed.

Usage: python grpc_health_client.py PORT [CALLS] [HOST]
"""

from __future__ import annotations

import sys

import grpc

SERVING = b"\x08\x01"


def main(argv: list[str]) -> int:
    port = int(argv[0])
    calls = int(argv[1]) if len(argv) > 1 else 100
    host = argv[2] if len(argv) > 2 else "127.0.0.1"
    with grpc.insecure_channel(f"{host}:{port}") as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check")
        bad = sum(1 for _ in range(calls) if check(b"", timeout=10) != SERVING)
    if bad:
        print(f"{bad} of {calls} health checks were not SERVING", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
