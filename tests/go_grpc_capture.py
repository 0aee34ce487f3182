"""The Go gRPC bench server and client of one grpc-go version on a free port, under a packet
capture: the truth tests' real traffic (no BPF)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.groundtruth import Dumpcap
from harness.model import waited
from harness.runner.record import free_port

BIN = Path(__file__).resolve().parent.parent / "scenarios" / "go" / "bin"
VERSION = "v1.85.0"


def capture_go_grpc(pcap: Path, client_args: list[str]) -> int:
    """Serve, run the client with ``client_args`` to its end, stop; returns the port."""
    port = free_port()
    with Dumpcap(pcap, [port]):
        srv = subprocess.Popen(
            [str(BIN / f"grpc-server-{VERSION}"), "--proto", "grpc", "--port", str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert srv.stdout is not None and srv.stdout.readline().startswith("READY")
            subprocess.run(
                [str(BIN / f"grpc-client-{VERSION}"), "--proto", "grpc", "--port", str(port),
                 "--connections", "1", *client_args],
                check=True, capture_output=True, timeout=waited(60),
            )  # fmt: skip
        finally:
            srv.terminate()
            srv.wait(timeout=waited(10))
    return port
