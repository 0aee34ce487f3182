"""HPACK's static Huffman code (RFC 7541 Appendix B), decoded canonically."""

from __future__ import annotations

import functools

from harness.protocols.http2.errors import HpackDecodeError

# RFC 7541 Appendix B is a canonical Huffman code: codes are handed out in order of
# (bit length, symbol), so the lengths alone define it. Symbols per code length,
# transcribed from the RFC's table (256 = EOS).
SYMBOLS_BY_LENGTH: dict[int, tuple[int, ...]] = {
    5: (48, 49, 50, 97, 99, 101, 105, 111, 115, 116),
    6: (32, 37, 45, 46, 47, 51, 52, 53, 54, 55, 56, 57, 61, 65, 95, 98, 100, 102, 103, 104,
        108, 109, 110, 112, 114, 117),
    7: (58, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85,
        86, 87, 89, 106, 107, 113, 118, 119, 120, 121, 122),
    8: (38, 42, 44, 59, 88, 90),
    10: (33, 34, 40, 41, 63),
    11: (39, 43, 124),
    12: (35, 62),
    13: (0, 36, 64, 91, 93, 126),
    14: (94, 125),
    15: (60, 96, 123),
    19: (92, 195, 208),
    20: (128, 130, 131, 162, 184, 194, 224, 226),
    21: (153, 161, 167, 172, 176, 177, 179, 209, 216, 217, 227, 229, 230),
    22: (129, 132, 133, 134, 136, 146, 154, 156, 160, 163, 164, 169, 170, 173, 178, 181, 185,
         186, 187, 189, 190, 196, 198, 228, 232, 233),
    23: (1, 135, 137, 138, 139, 140, 141, 143, 147, 149, 150, 151, 152, 155, 157, 158, 165,
         166, 168, 174, 175, 180, 182, 183, 188, 191, 197, 231, 239),
    24: (9, 142, 144, 145, 148, 159, 171, 206, 215, 225, 236, 237),
    25: (199, 207, 234, 235),
    26: (192, 193, 200, 201, 202, 205, 210, 213, 218, 219, 238, 240, 242, 243, 255),
    27: (203, 204, 211, 212, 214, 221, 222, 223, 241, 244, 245, 246, 247, 248, 250, 251, 252,
         253, 254),
    28: (2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28,
         29, 30, 31, 127, 220, 249),
    30: (10, 13, 22, 256),
}

EOS = 256
MAX_LENGTH = max(SYMBOLS_BY_LENGTH)


def _canonical() -> tuple[dict[int, tuple[int, int]], dict[int, int]]:
    """Code and length per symbol, and the first code of each length."""
    codes: dict[int, tuple[int, int]] = {}
    first: dict[int, int] = {}
    code = 0
    prev_len = min(SYMBOLS_BY_LENGTH)
    for length in range(prev_len, MAX_LENGTH + 1):
        code <<= length - prev_len
        prev_len = length
        first[length] = code
        for sym in SYMBOLS_BY_LENGTH.get(length, ()):
            codes[sym] = (code, length)
            code += 1
    return codes, first


CODES, _FIRST_CODE = _canonical()
_COUNT = {length: len(syms) for length, syms in SYMBOLS_BY_LENGTH.items()}


@functools.lru_cache(maxsize=4096)
def huffman_decode(data: bytes) -> bytes:
    """Decode one Huffman-coded string literal; raise HpackDecodeError when it is not valid.
    Memoized: a connection's literals recur (a date, the same path on every stream)."""
    out = bytearray()
    code = 0
    length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            count = _COUNT.get(length)
            if count is not None and 0 <= code - _FIRST_CODE[length] < count:
                sym = SYMBOLS_BY_LENGTH[length][code - _FIRST_CODE[length]]
                if sym == EOS:
                    raise HpackDecodeError("Huffman string contains EOS")
                out.append(sym)
                code = 0
                length = 0
            elif length > MAX_LENGTH:
                raise HpackDecodeError("invalid Huffman code")
    # RFC 7541 5.2: padding is the most significant bits of EOS (all ones), at most 7 bits.
    if length > 7:
        raise HpackDecodeError("Huffman padding longer than 7 bits")
    if code != (1 << length) - 1:
        raise HpackDecodeError("Huffman padding is not a prefix of EOS")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """Encode bytes with the HPACK code (used by tests and to build fixtures)."""
    acc = 0
    nbits = 0
    for b in data:
        code, length = CODES[b]
        acc = (acc << length) | code
        nbits += length
    pad = (8 - nbits % 8) % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return acc.to_bytes((nbits + pad) // 8, "big")
