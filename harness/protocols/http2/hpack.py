"""An HPACK decoder (RFC 7541) that reports what it cannot know instead of guessing.

Why it can be tolerant. A collector that attaches late has missed the insertions that
filled the dynamic table, but it sees every insertion made after it attached. Each
insertion becomes index 62 and shifts the older ones, and eviction only ever removes
the oldest entries. So for a peer encoder that works (its own peer decodes it), the
entry at dynamic position j is always the j-th newest insertion that is still in its
table, and an encoder only references entries it holds: a reference to position j, where
j is smaller than the number of insertions seen since attach, resolves to exactly that
insertion. A reference past them is to an entry inserted before the attach, and is
reported as unknown (reason ``hpack_unknown_index``), never guessed.

The table is kept as the known entries (newest first) followed by a placeholder for the
unknown older ones, of unknown count and size. Sizes are accounted as RFC 7541 says
(32 + len(name) + len(value)); when the known entries alone no longer fit in the table's
maximum size, the older ones are dropped. If that maximum is known exactly (seen from
the connection start or from a dynamic table size update) those entries and every
unknown one behind them are certainly gone, so the table becomes fully known again;
otherwise (the maximum is only assumed, 4096 by default) they turn into unknown
placeholders, which is always safe. An insertion whose name came from an unknown entry
is still tracked (name unknown, value known; its size only bounded below).

``strict`` mode is what a decoder without this model does (Beyla): it resolves
references as long as it can, and after the first unknown reference it stops using the
dynamic table for the rest of the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.model import HPACK_UNKNOWN_INDEX
from harness.protocols.http2.errors import HpackDecodeError
from harness.protocols.http2.huffman import huffman_decode

HpackMode = Literal["tolerant", "strict"]

OK = "ok"
UNKNOWN_INDEX = HPACK_UNKNOWN_INDEX
DEFAULT_TABLE_SIZE = 4096
ENTRY_OVERHEAD = 32
_MAX_INT = 1 << 32  # bigger integers only come from garbage; refuse them early

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
STATIC_LEN = len(STATIC_TABLE)  # 61; dynamic indexes start at 62


@dataclass(frozen=True, slots=True)
class DecodedField:
    """One header field as decoded: ``status`` is ``ok`` or the reason a part is unknown.

    With a non-ok status, ``name`` and/or ``value`` is None; whatever is not None is exact.
    """

    name: bytes | None
    value: bytes | None
    status: str = OK
    never_indexed: bool = False

    @property
    def known(self) -> bool:
        return self.status == OK


@dataclass(slots=True)
class HpackStats:
    """What one decoder did; unknowns are counted here, never only logged."""

    blocks: int = 0
    blocks_truncated: int = 0
    fields_decoded: int = 0
    fields_unknown: int = 0
    unknown_by_reason: dict[str, int] = field(default_factory=dict)
    unknown_names: int = 0  # fields whose value is known but whose name is not
    insertions: int = 0
    insertions_name_unknown: int = 0
    evictions: int = 0
    size_updates: int = 0
    sync_losses: int = 0  # times unseen bytes may have changed the table
    table_abandoned: bool = False  # strict mode gave the dynamic table up

    def _unknown(self, reason: str) -> None:
        self.fields_unknown += 1
        self.unknown_by_reason[reason] = self.unknown_by_reason.get(reason, 0) + 1


@dataclass(slots=True)
class _Entry:
    name: bytes | None  # None: the name came from an unknown entry
    value: bytes

    @property
    def min_size(self) -> int:
        """Exact size when the name is known; a lower bound otherwise."""
        return ENTRY_OVERHEAD + len(self.name or b"") + len(self.value)


class _Truncated(Exception):
    """The block ended inside a field (only legal when it was cut by capture)."""


class HpackDecoder:
    """Decoder for the header blocks one endpoint sends on one connection."""

    def __init__(
        self,
        *,
        mode: HpackMode = "tolerant",
        from_start: bool = False,
        max_table_size: int = DEFAULT_TABLE_SIZE,
    ) -> None:
        if mode not in ("tolerant", "strict"):
            raise ValueError(f"unknown HPACK mode {mode!r}")
        self.mode: HpackMode = mode
        self.stats = HpackStats()
        self._entries: list[_Entry] = []  # known entries, newest first
        self._unknown_older = not from_start  # placeholders for pre-attach entries
        self._max_size = max_table_size
        self._max_exact = from_start  # False: max_size is an assumption
        self._allowed_max: int | None = max_table_size if from_start else None
        self._abandoned = False

    # -- table state, for callers and tests -------------------------------------------

    @property
    def known_entries(self) -> list[tuple[bytes | None, bytes]]:
        return [(e.name, e.value) for e in self._entries]

    @property
    def has_unknown_entries(self) -> bool:
        return self._unknown_older

    @property
    def max_table_size(self) -> int:
        return self._max_size

    def set_allowed_max(self, size: int) -> None:
        """The decoding peer's SETTINGS_HEADER_TABLE_SIZE: a limit for size updates.

        The encoder announces the size it really uses with a size update, so the table is
        not resized here (doing it early could drop entries still legitimately referenced).
        """
        self._allowed_max = size

    def lose_sync(self) -> None:
        """Unseen bytes (lost or truncated header blocks) may have changed the table."""
        self.stats.sync_losses += 1
        self._entries.clear()
        self._unknown_older = True
        self._max_exact = False  # a size update may have been among the unseen bytes

    # -- decoding -----------------------------------------------------------------------

    def decode(self, block: bytes, *, complete: bool = True) -> list[DecodedField]:
        """Decode one header block.

        ``complete=False`` says the block was cut (capture limit, lost CONTINUATION): the
        fields wholly inside it are returned and the table is then marked unknown, since
        the unseen rest may have inserted entries.
        """
        self.stats.blocks += 1
        fields: list[DecodedField] = []
        pos = 0
        try:
            while pos < len(block):
                pos = self._one(block, pos, fields)
        except _Truncated as e:
            if complete:
                raise HpackDecodeError("header block ends inside a field") from e
        if not complete:
            self.stats.blocks_truncated += 1
            self.lose_sync()
        return fields

    def _one(self, block: bytes, pos: int, out: list[DecodedField]) -> int:
        b = block[pos]
        if b & 0x80:  # indexed header field
            index, pos = _decode_int(block, pos, 7)
            if index == 0:
                raise HpackDecodeError("indexed header field with index 0")
            out.append(self._emit(*self._lookup(index), False))
            return pos
        if b & 0xC0 == 0x40:  # literal with incremental indexing
            name, pos = self._name(block, pos, 6)
            value, pos = _decode_str(block, pos)
            self._insert(_Entry(name, value))
            out.append(self._emit(name, value, False))
            return pos
        if b & 0xE0 == 0x20:  # dynamic table size update
            size, pos = _decode_int(block, pos, 5)
            self._size_update(size)
            return pos
        # literal without indexing (0000) or never indexed (0001)
        never = bool(b & 0x10)
        name, pos = self._name(block, pos, 4)
        value, pos = _decode_str(block, pos)
        out.append(self._emit(name, value, never))
        return pos

    def _emit(self, name: bytes | None, value: bytes | None, never: bool) -> DecodedField:
        if name is not None and value is not None:
            self.stats.fields_decoded += 1
            return DecodedField(name, value, OK, never)
        self.stats._unknown(UNKNOWN_INDEX)
        if value is not None:
            self.stats.unknown_names += 1
        return DecodedField(name, value, UNKNOWN_INDEX, never)

    def _name(self, block: bytes, pos: int, prefix: int) -> tuple[bytes | None, int]:
        index, pos = _decode_int(block, pos, prefix)
        if index == 0:
            return _decode_str(block, pos)
        return self._lookup(index)[0], pos

    def _lookup(self, index: int) -> tuple[bytes | None, bytes | None]:
        if index <= STATIC_LEN:
            return STATIC_TABLE[index - 1]
        j = index - STATIC_LEN - 1
        if self._abandoned:
            return None, None
        if j < len(self._entries):
            e = self._entries[j]
            return e.name, e.value
        if not self._unknown_older:
            raise HpackDecodeError(f"index {index} is beyond a fully known dynamic table")
        if self.mode == "strict":
            self._abandoned = True
            self.stats.table_abandoned = True
            self._entries.clear()
        return None, None

    def _insert(self, entry: _Entry) -> None:
        self.stats.insertions += 1
        if entry.name is None:
            self.stats.insertions_name_unknown += 1
        if self._abandoned:
            return
        self._entries.insert(0, entry)
        self._evict()

    def _size_update(self, size: int) -> None:
        self.stats.size_updates += 1
        if self._allowed_max is not None and size > self._allowed_max:
            raise HpackDecodeError(
                f"table size update to {size} exceeds the peer's limit {self._allowed_max}"
            )
        self._max_size = size
        self._max_exact = True
        self._evict()

    def _evict(self) -> None:
        # Lower bounds only: entries whose lower-bound sum overflows certainly left the table.
        total = 0
        for i, e in enumerate(self._entries):
            total += e.min_size
            if total > self._max_size:
                self.stats.evictions += len(self._entries) - i
                del self._entries[i:]
                # Unknown older entries go before known ones: with an exact maximum they are
                # gone too; with an assumed one we cannot tell, so they stay unknown.
                self._unknown_older = not self._max_exact
                return


def _decode_int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """RFC 7541 5.1 integer with an N-bit prefix starting at data[pos]."""
    if pos >= len(data):
        raise _Truncated
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise _Truncated
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if value >= _MAX_INT:
            raise HpackDecodeError("HPACK integer too large")
        if not b & 0x80:
            return value, pos


def _decode_str(data: bytes, pos: int) -> tuple[bytes, int]:
    """RFC 7541 5.2 string literal (length-prefixed, optionally Huffman-coded)."""
    if pos >= len(data):
        raise _Truncated
    huff = bool(data[pos] & 0x80)
    length, pos = _decode_int(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise _Truncated
    raw = data[pos:end]
    return (huffman_decode(bytes(raw)) if huff else raw), end
