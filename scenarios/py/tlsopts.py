"""TLS options shared by the Python targets (scenarios/README.md, "TLS").

The runner makes a throwaway CA and server certificate per run: DIR/ca.pem,
DIR/server.pem, DIR/server.key. Every target that can writes its session
secrets to --keylog (NSS key log format) so Wireshark can decrypt the capture.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-dir", help="speak TLS with the files in this directory")
    p.add_argument("--tls-version", choices=sorted(VERSIONS), default="1.3")
    p.add_argument("--keylog", help="append TLS secrets here (NSS key log format)")


def context(args: argparse.Namespace, *, server: bool, alpn: str) -> ssl.SSLContext | None:
    """The ssl context for a server or client, or None when TLS is off."""
    if not args.tls_dir:
        return None
    d = Path(args.tls_dir)
    if server:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / "server.pem", d / "server.key")
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(d / "ca.pem")
    ctx.minimum_version = ctx.maximum_version = VERSIONS[args.tls_version]
    ctx.set_alpn_protocols([alpn])
    if args.keylog:
        ctx.keylog_filename = args.keylog
    return ctx


def grpc_files(args: argparse.Namespace) -> tuple[bytes, bytes, bytes] | None:
    """(ca, server cert, server key) for grpcio's credentials, or None when TLS is off.
    grpcio's TLS stack (BoringSSL inside its C core) takes no version pin and writes
    no key log: its peer's key log is the truth's key."""
    if not args.tls_dir:
        return None
    d = Path(args.tls_dir)
    return (d / "ca.pem").read_bytes(), (d / "server.pem").read_bytes(), \
        (d / "server.key").read_bytes()
