"""Our HPACK decoder: exact from the start, never wrong after a late attach (vs hpack's Encoder)."""

from __future__ import annotations

import random

import pytest
from hpack import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import ProtocolError
from harness.protocols.http2.errors import HpackDecodeError
from harness.protocols.http2.hpack import OK, UNKNOWN_INDEX, DecodedField, HpackDecoder

Header = tuple[bytes, bytes]

NAMES = [b":path", b":authority", b"content-type", b"x-probebench-id", b"x-user", b"user-agent",
         b"x-trace", b"grpc-timeout", b"accept"]


def make_blocks(
    seed: int, n: int, table_sizes: list[int]
) -> tuple[list[list[Header]], list[bytes]]:
    """n header lists mixing repeated and fresh values, and the blocks hpack encodes them to.

    ``table_sizes`` are applied to the encoder along the way (each emits a size update)."""
    rng = random.Random(seed)
    enc = Encoder()
    pool = {name: [f"{name.decode()}-{i}".encode() * rng.randint(1, 4) for i in range(4)]
            for name in NAMES}
    lists, blocks = [], []
    resize_at = {rng.randrange(n): s for s in table_sizes}
    for i in range(n):
        if i in resize_at:
            enc.header_table_size = resize_at[i]
        headers: list[Header] = [(b":method", b"POST"), (b":scheme", b"http")]
        for name in rng.sample(NAMES, rng.randint(1, len(NAMES))):
            if rng.random() < 0.6:
                value = rng.choice(pool[name])
            else:
                value = f"fresh-{i}-{rng.random()}".encode() * rng.randint(1, 3)
            headers.append((name, value))
        lists.append(headers)
        blocks.append(enc.encode(headers))
    return lists, blocks


def check_never_wrong(sent: list[Header], got: list[DecodedField]) -> tuple[int, int]:
    """Every reported part equals what was sent; returns (known, unknown)."""
    assert len(got) == len(sent)
    known = 0
    for (name, value), f in zip(sent, got, strict=True):
        if f.name is not None:
            assert f.name == name
        if f.value is not None:
            assert f.value == value
        if f.status == OK:
            known += 1
            assert (f.name, f.value) == (name, value)
        else:
            assert f.status == UNKNOWN_INDEX
    return known, len(got) - known


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.lists(st.sampled_from([0, 64, 128, 256, 1024, 4096]),
                                       max_size=3))
def test_from_the_start_decodes_everything_exactly(seed, sizes):
    lists, blocks = make_blocks(seed, 30, sizes)
    dec = HpackDecoder(from_start=True)
    for sent, block in zip(lists, blocks, strict=True):
        got = dec.decode(block)
        assert [(f.name, f.value) for f in got] == sent
        assert all(f.status == OK for f in got)
    assert dec.stats.fields_unknown == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**9), st.lists(st.sampled_from([0, 64, 128, 256, 1024, 8192]),
                                       max_size=3), st.integers(1, 29))
def test_late_attach_is_never_wrong_and_tolerant_beats_strict(seed, sizes, attach):
    lists, blocks = make_blocks(seed, 30, sizes)
    tolerant = HpackDecoder(mode="tolerant")
    strict = HpackDecoder(mode="strict")
    totals = {"tolerant": 0, "strict": 0}
    for sent, block in zip(lists[attach:], blocks[attach:], strict=True):
        for name, dec in (("tolerant", tolerant), ("strict", strict)):
            known, _ = check_never_wrong(sent, dec.decode(block))
            totals[name] += known
    assert totals["tolerant"] >= totals["strict"]
    assert tolerant.stats.fields_decoded == totals["tolerant"]


def test_tolerant_recovers_where_strict_gives_up():
    enc = Encoder()
    first = [(b":path", b"/a"), (b"x-old", b"before-attach")]
    later = [(b":path", b"/a"), (b"x-new", b"after-attach"), (b"x-old", b"before-attach")]
    enc.encode(first)  # inserts :path=/a and x-old, unseen by the decoders
    b1 = enc.encode(later)  # references both, inserts x-new
    b2 = enc.encode(later)  # all three now indexed, x-new at 62
    tolerant, strict = HpackDecoder(), HpackDecoder(mode="strict")
    for dec in (tolerant, strict):
        got = dec.decode(b1)
        assert [f.status for f in got] == [UNKNOWN_INDEX, OK, UNKNOWN_INDEX]
        assert got[1] == DecodedField(b"x-new", b"after-attach")
    t2, s2 = tolerant.decode(b2), strict.decode(b2)
    check_never_wrong(later, t2)
    check_never_wrong(later, s2)
    assert t2[1].known and not s2[1].known  # strict abandoned the dynamic table
    assert strict.stats.table_abandoned and not tolerant.stats.table_abandoned
    assert tolerant.stats.fields_decoded > strict.stats.fields_decoded


def test_insertion_with_an_unknown_name_is_tracked():
    dec = HpackDecoder()
    # 0x40|0x3e: literal with incremental indexing, name = dynamic index 62 (pre-attach).
    block = bytes([0x7E]) + b"\x01v" + bytes([0x80 | 62])
    got = dec.decode(block)
    assert got[0] == DecodedField(None, b"v", UNKNOWN_INDEX)
    assert got[1] == DecodedField(None, b"v", UNKNOWN_INDEX)  # the new entry, by index
    assert dec.stats.insertions_name_unknown == 1
    assert dec.stats.unknown_names == 2


def test_exact_size_update_evicts_known_and_unknown_entries():
    dec = HpackDecoder()
    assert dec.has_unknown_entries
    enc = Encoder()
    enc.header_table_size = 100  # size update: the maximum becomes known exactly
    dec.decode(enc.encode([(b"x-a", b"1" * 30), (b"x-b", b"2" * 30)]))
    # 32+3+30 = 65 each: only the newest fits in 100, and every older entry is gone.
    assert dec.known_entries == [(b"x-b", b"2" * 30)]
    assert not dec.has_unknown_entries
    with pytest.raises(HpackDecodeError):
        dec.decode(bytes([0x80 | 63]))


def test_assumed_maximum_turns_overflow_into_unknown():
    dec = HpackDecoder()  # late attach: 4096 is only an assumption
    enc = Encoder()
    values = [(f"x-{i}".encode(), b"v" * 1000) for i in range(6)]
    dec.decode(enc.encode(values))
    assert len(dec.known_entries) == 3  # 3 * 1035 <= 4096 < 4 * 1035
    assert dec.has_unknown_entries
    assert dec.decode(bytes([0x80 | 65]))[0].status == UNKNOWN_INDEX


def test_cut_block_returns_whole_fields_then_forgets_the_table():
    enc = Encoder()
    headers = [(b":path", b"/x"), (b"x-a", b"aaaa"), (b"x-b", b"bbbb")]
    block = enc.encode(headers)
    dec = HpackDecoder(from_start=True)
    got = dec.decode(block[: len(block) - 2], complete=False)
    assert [(f.name, f.value) for f in got] == headers[:2]
    assert dec.known_entries == [] and dec.has_unknown_entries
    assert dec.stats.blocks_truncated == 1
    with pytest.raises(HpackDecodeError):
        HpackDecoder(from_start=True).decode(block[: len(block) - 2])


def test_integer_with_continuation_bytes():
    # RFC 7541 C.1.2: 1337 with a 5-bit prefix is 1f 9a 0a; as a size update: 0x20|0x1f.
    dec = HpackDecoder()
    dec.decode(bytes([0x3F, 0x9A, 0x0A]))
    assert dec.max_table_size == 1337
    assert dec.stats.size_updates == 1


@pytest.mark.parametrize("block", [b"\x80", b"\xff\xff\xff\xff\xff\xff\x7f", b"\x40\x85\xff",
                                   b"\x00\x03ab"])
def test_malformed_blocks_raise_the_typed_error(block):
    with pytest.raises(HpackDecodeError):
        HpackDecoder(from_start=True).decode(block)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.booleans(), st.sampled_from(["tolerant", "strict"]))
def test_garbage_raises_only_typed_errors(data, from_start, mode):
    dec = HpackDecoder(mode=mode, from_start=from_start)
    try:
        fields = dec.decode(data)
    except ProtocolError:
        return
    assert all(f.status in (OK, UNKNOWN_INDEX) for f in fields)
    assert dec.stats.fields_decoded + dec.stats.fields_unknown == len(fields)
