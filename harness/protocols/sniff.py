"""Which protocol a connection's first bytes start: the Python twin of the kernel program's
infer(), shared by every collector that sees plaintext bytes."""

from __future__ import annotations

HTTP1_STARTS = (
    b"GET ", b"PUT ", b"POST ", b"HEAD ", b"PATCH ", b"TRACE ", b"DELETE ", b"OPTIONS ",
    b"CONNECT ", b"HTTP/1.",
)  # fmt: skip


def infer_proto(first: bytes, from_start: bool) -> str | None:
    """Python twin of the kernel's infer(): which protocol a call's first bytes start."""
    if first.startswith(b"PRI "):
        return "http2"
    if is_tls_record(first):
        return "tls"
    if first.startswith(HTTP1_STARTS):
        return "http1"
    if not from_start and plausible_h2_frame(first):
        return "http2"
    if from_start and is_settings(first):
        return "http2"  # the server's connection preface, sent before the client's arrives
    return None


def is_tls_record(b: bytes) -> bool:
    """A TLS record header (handshake or application data): the kernel's is_tls_record."""
    return len(b) >= 5 and b[0] in (0x16, 0x17) and b[1] == 3 and b[2] <= 4


def is_settings(b: bytes) -> bool:
    return (
        len(b) >= 9
        and b[3] == 4
        and b[4] == 0
        and b[5:9] == b"\0\0\0\0"
        and int.from_bytes(b[0:3], "big") % 6 == 0
        and int.from_bytes(b[0:3], "big") <= 16384
    )


def plausible_h2_frame(b: bytes) -> bool:
    if len(b) < 9:
        return False
    flen = int.from_bytes(b[0:3], "big")
    ftype, flags = b[3], b[4]
    sid = int.from_bytes(b[5:9], "big")
    if sid & 0x80000000 or flen > 16384:
        return False
    rules = {
        0: lambda: not flags & ~0x09 and sid != 0,
        1: lambda: not flags & ~0x2D and sid != 0,
        3: lambda: flags == 0 and flen == 4 and sid != 0,
        4: lambda: not flags & ~0x01 and sid == 0 and flen % 6 == 0,
        6: lambda: not flags & ~0x01 and sid == 0 and flen == 8,
        7: lambda: flags == 0 and sid == 0 and flen >= 8,
        8: lambda: flags == 0 and flen == 4,
    }
    rule = rules.get(ftype)
    return bool(rule and rule())
