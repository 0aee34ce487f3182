"""The TLS uprobe collector's event layout, read from bpf/tls_events.h."""

from __future__ import annotations

from functools import cache

from harness.collectors.bpfsource import BPF_DIR
from harness.collectors.cstruct import Header

HEADER_FILE = BPF_DIR / "tls_events.h"
PROGRAM = "tls_openssl.c"
GO_PROGRAM = "tls_go.c"  # compiled once per Go binary layout (offsets as -D cflags)
FORMAT = "tls-openssl/1"  # event file format version (header "format")
DEFAULT_RINGBUF_PAGES = 4096  # 16 MiB
# OpenSSL's plaintext calls: (symbol, probe function); each also gets the return probe.
OPENSSL_PROBES = (
    ("SSL_write", "probe_ssl_write"),
    ("SSL_write_ex", "probe_ssl_write_ex"),
    ("SSL_read", "probe_ssl_read"),
    ("SSL_read_ex", "probe_ssl_read_ex"),
)
RETURN_PROBE = "probe_ssl_return"
FREE_PROBE = ("SSL_free", "probe_ssl_free")  # entry only: forgets the SSL object
# (symbol, entry probe, return probe): the handshake's socket becomes the SSL object's
HANDSHAKE_PROBE = ("SSL_do_handshake", "probe_ssl_handshake", "probe_ssl_handshake_return")
ADDR_SOURCES = {0: "none", 1: "syscall", 2: "ssl", 3: "sockdiag"}


@cache
def header() -> Header:
    return Header(HEADER_FILE)
