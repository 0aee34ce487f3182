"""Our Huffman table and decoder against the hpack package's encoder (RFC 7541 Appendix B)."""

from __future__ import annotations

import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ProtocolError
from harness.protocols.http2.errors import HpackDecodeError
from harness.protocols.http2.huffman import CODES, EOS, huffman_decode, huffman_encode

THEIRS = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def test_code_table_matches_the_reference_encoder_for_every_symbol():
    assert len(CODES) == 257
    for sym in range(257):
        assert CODES[sym] == (REQUEST_CODES[sym], REQUEST_CODES_LENGTH[sym]), sym


@pytest.mark.parametrize(
    "text",
    [b"", b"www.example.com", b"no-cache", b"custom-key", b"/greet.GreetService/Greet",
     b"application/grpc", b"Mon, 21 Oct 2013 20:13:21 GMT", bytes(range(256))],
)
def test_known_strings_round_trip(text):
    encoded = THEIRS.encode(text)
    assert huffman_encode(text) == encoded
    assert huffman_decode(encoded) == text


def test_rfc7541_c4_example_bytes():
    # RFC 7541 C.4.1: "www.example.com" Huffman-coded.
    assert huffman_decode(bytes.fromhex("f1e3c2e5f23a6ba0ab90f4ff")) == b"www.example.com"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_round_trip_through_the_reference_encoder(data):
    assert huffman_decode(THEIRS.encode(data)) == data


def test_padding_longer_than_seven_bits_is_rejected():
    # 'a' is 00011 (5 bits) + 3 ones of padding; a whole extra 0xff byte is 11 bits of padding.
    assert huffman_decode(b"\x1f") == b"a"
    with pytest.raises(HpackDecodeError):
        huffman_decode(b"\x1f\xff")


def test_padding_that_is_not_ones_is_rejected():
    with pytest.raises(HpackDecodeError):
        huffman_decode(b"\x18")  # 'a' then padding 000


def test_eos_inside_a_string_is_rejected():
    code, length = CODES[EOS]
    bits = (code << 2) | 0b11  # EOS (30 bits) + 2 padding bits = 4 bytes
    assert length == 30
    with pytest.raises(HpackDecodeError):
        huffman_decode(bits.to_bytes(4, "big"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_raises_only_typed_errors(data):
    try:
        decoded = huffman_decode(data)
    except ProtocolError:
        return
    assert huffman_encode(decoded) == data  # a valid code string has exactly one decoding
