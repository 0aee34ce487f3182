"""Which kernel hook tells the OpenSSL program the socket an SSL call moves bytes on.

Linux 6.3 added the sock:sock_send_length/sock_recv_length tracepoints. Before them,
kprobes at the entry of tcp_sendmsg/tcp_recvmsg reach the same sock (their first
argument) on the same thread. A kernel with neither cannot name the socket while the
call is open, and the collector says so rather than record connections it cannot place.
"""

from __future__ import annotations

from pathlib import Path

from harness.collectors.tracing import TRACEFS, kprobes_supported
from harness.errors import CapabilityError

TRACEPOINTS = ("sock_send_length", "sock_recv_length")
TCP_IO = ("tcp_sendmsg", "tcp_recvmsg")
KPROBE_FN = "pb_tcp_io"  # tls_openssl.c's entry point for both, with PB_SK_KPROBES


def sock_hook(tracefs: Path = TRACEFS, kprobes: bool | None = None) -> str:
    """"tracepoints" where the kernel has both sock tracepoints, else "kprobes" where it
    has kprobes; CapabilityError for neither."""
    if all((tracefs / "events" / "sock" / t).is_dir() for t in TRACEPOINTS):
        return "tracepoints"
    if kprobes if kprobes is not None else kprobes_supported(tracefs):
        return "kprobes"
    raise CapabilityError(
        "the OpenSSL TLS collector finds an SSL call's socket with the sock:sock_send_length"
        " and sock_recv_length tracepoints (Linux 6.3+) or kprobes on tcp_sendmsg and"
        " tcp_recvmsg; this kernel has neither"
    )
