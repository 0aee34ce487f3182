"""Replay side of the uprobe collector: raw records -> header blocks and DATA frames.

A pure function of the event file (no bcc, no root). Each record becomes one
``HeaderBlock`` or ``DataFrame`` carrying who saw it (process, connection, its
addresses) and the stream it belongs to; stitching them into calls is
``harness.collectors.uprobe.exchanges``'s job.
"""

from __future__ import annotations

import ctypes
import struct
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.collectors.base import STREAM_END_NS as END_NS
from harness.collectors.eventfile import NOTE, read_event_file
from harness.collectors.uprobe.layout import (
    FORMAT,
    HFIELD_V4,
    PROBE_NAMES,
    READABLE_FORMATS,
    header,
    hfield_struct,
    roles,
)
from harness.errors import RunDirError
from harness.protocols.bytestream import AF_INET, AF_INET6, Endpoint, ip_text

ADDR_STATUS = {0: "ok", 1: "not_tcp", 2: "unreadable", 3: "not_tcpaddr"}


@dataclass(slots=True)
class Seen:
    """What every event says about who saw it and on which connection."""

    ts_ns: int
    tgid: int
    tid: int
    conn: int  # the *net.netFD address: a connection's name within its process
    fd: int
    probe: str
    role: str  # client | server | unknown (send probes do not know)
    direction: str  # send | recv
    stream_id: int
    end_stream: bool
    addr_status: str
    local: Endpoint | None
    remote: Endpoint | None


@dataclass(slots=True)
class HeaderBlock:
    seen: Seen
    fields: list[tuple[str, str]]  # in order, names as sent (grpc-go sends lowercase)
    truncated: list[str]  # names of fields whose name or value was cut to fit
    missing_fields: int  # fields not read: beyond the per-block limit, or in a lost part
    cut: set[int] = field(default_factory=set)  # indexes in fields of those cut short


@dataclass(slots=True)
class DataFrame:
    seen: Seen
    length: int  # payload bytes, padding excluded
    head: bytes  # the payload's first bytes
    length_partial: bool  # the program could not sum every piece of the write
    unread: bool  # the payload's buffer type was unknown: head is empty


@dataclass(slots=True)
class ResetFrame:
    """A RST_STREAM frame sent or received: the end of its stream, and why."""

    seen: Seen
    error_code: int


@dataclass
class DecodeStats:
    kernel_records: int = 0
    header_blocks: int = 0
    data_frames: int = 0
    reset_frames: int = 0
    truncated_fields: int = 0
    missing_fields: int = 0
    # read-only strings named by address whose bytes no record carried (lost with a
    # record) or two records gave differently: their field or value is unknown
    unresolved_strings: int = 0
    header_parts: int = 0
    incomplete_blocks: int = 0  # blocks with a part lost (ring buffer full)
    level: str = "messages"  # recordings made before levels existed probed DATA frames too
    addr_problems: dict[str, int] = field(default_factory=dict)
    truncated_tail_bytes: int = 0
    dropped_before_attach: int = 0
    unsupported: list[str] = field(default_factory=list)
    attached_probes: int = 0
    # streamed replay: strings a later record gave otherwise than a built block took them
    strings_changed_after_use: int = 0
    # streamed replay: calls handed over after a watermark said none would start before them
    late_exchanges: int = 0
    collector: dict[str, Any] = field(default_factory=dict)  # the recorder's final stats


def _family(ip_len: int) -> int:
    # Go keeps IPv4 addresses in 16-byte form: ip_text reads those as IPv4 too
    return AF_INET if ip_len == 4 else AF_INET6


Event = HeaderBlock | DataFrame | ResetFrame

# A string of a header field as its record carried it: its bytes, or (a reference to a
# read-only string sent before) its (tgid, address, length).
Str = bytes | tuple[int, int, int]
# one field: name length, value length, name, value (original lengths: a shorter bytes
# value was cut)
RawField = tuple[int, int, Str, Str]
# (tgid, address, length) -> the bytes some record carried with that address, or None when
# two records disagree (the address meant different bytes: never trusted)
Strings = dict[tuple[int, int, int], bytes | None]
@dataclass(slots=True, frozen=True)
class PartHead:
    """What a block's build reads of one header record's fixed part (the record's ctypes
    copy is 32 KiB: held for every part until the end, a 120k-call recording's needed
    23 GB)."""

    part: int
    first: int
    count: int
    nfields: int
    flags: int


Part = tuple[PartHead, list[RawField], bool]  # one header record: head, its fields, all there


def blob_fields(
    blob: bytes, count: int, tgid: int, hf: struct.Struct, strings: Strings | None = None
) -> tuple[list[RawField], bool]:
    """The fields of one header record's blob, and whether all `count` were there. Strings
    sent with their address are added to `strings`."""
    d = header().defines
    out: list[RawField] = []
    pos = 0
    for _ in range(count):
        if pos + hf.size > len(blob):
            return out, False  # the part ended early: its other fields are unknown
        name_len, value_len, nc, vc, *rest = hf.unpack_from(blob, pos)
        how = rest[0] if rest else 0
        pos += hf.size
        if not how:  # bytes only: most fields of a heap-built block
            name, value = blob[pos : pos + nc], blob[pos + nc : pos + nc + vc]
            pos += nc + vc
            if pos > len(blob):
                return out, False
            out.append((name_len, value_len, name, value))
            continue
        strs: list[Str] = []
        for length, cap, addr_bit, ref_bit in (
            (name_len, nc, d["PB_HOW_NAME_ADDR"], d["PB_HOW_NAME_REF"]),
            (value_len, vc, d["PB_HOW_VALUE_ADDR"], d["PB_HOW_VALUE_REF"]),
        ):
            addr = None
            if how & addr_bit:
                addr = int.from_bytes(blob[pos : pos + 8], "little")
                pos += 8
            if addr is not None and how & ref_bit:
                strs.append((tgid, addr, length))
                continue
            data = blob[pos : pos + cap]
            pos += cap
            strs.append(data)
            if addr is not None and strings is not None and len(data) == length:
                key = (tgid, addr, length)
                if strings.setdefault(key, data) != data:
                    strings[key] = None
        if pos > len(blob):
            return out, False
        out.append((name_len, value_len, strs[0], strs[1]))
    return out, True


@dataclass(slots=True)
class _Slot:
    """A header block's place among the events until it is built: its parts so far."""

    key: tuple[int, int, int, int]  # (tgid, tid, ts_ns, probe): what its parts share
    seen: Seen
    parts: list[Part]
    last: bool = False  # its last part came


# Records between two steps of a streamed decode
STEP_RECORDS = 4096


def decode(
    path: Path, *, attach_at_ns: int | None = None
) -> tuple[list[Event], DecodeStats]:
    """Every event of the recording, in its order (each header block in its first part's
    place), built once the whole file is read."""
    steps = decode_steps(path, attach_at_ns=attach_at_ns)
    out: list[Event] = []
    while True:
        try:
            out.extend(next(steps)[0])
        except StopIteration as stop:
            return out, stop.value


def decode_steps(
    path: Path, *, attach_at_ns: int | None = None, lag_ns: int | None = None,
    st: DecodeStats | None = None,
) -> Generator[tuple[list[Event], int], None, DecodeStats]:
    """``decode`` as the file is read: the events in the file's order, in steps of
    STEP_RECORDS records, each with a watermark (no event of a later step is older). An
    event is given out once the newest record read is ``lag_ns`` later: a header block's
    parts and the read-only strings it names by address have come by then (the ring buffer
    orders records by reservation, not by time, within microseconds). ``lag_ns`` None:
    everything at the end (the strings as the whole file gives them). A string that a later
    record gives differently than when a block used it is counted
    (``strings_changed_after_use``), never silently taken back. ``st``: the stats to fill
    (the file header's ``level`` is in them from the first step on)."""
    ef = read_event_file(path)
    if ef.header.get("collector") != "uprobe" or ef.header.get("format") not in READABLE_FORMATS:
        raise RunDirError(
            f"{path} is not a {FORMAT} recording (header says "
            f"{ef.header.get('collector')!r} {ef.header.get('format')!r})"
        )
    hdr = header()
    d = hdr.defines
    HE, DE = hdr.structs["pb_header_event"], hdr.structs["pb_data_event"]
    RE = hdr.structs["pb_rst_event"]
    re_size = ctypes.sizeof(RE)
    blob_off = hdr.offset("pb_header_event", "blob")
    kind_off = hdr.offset("pb_header_event", "kind")
    he_size, de_size = ctypes.sizeof(HE), ctypes.sizeof(DE)
    fmt = ef.header.get("format")
    table = fmt in ("uprobe-grpc/2", "uprobe-grpc/3")  # header records with a per-field table
    hf = hfield_struct() if fmt == FORMAT else HFIELD_V4
    st = DecodeStats() if st is None else st
    st.truncated_tail_bytes = ef.truncated_tail_bytes
    st.level = str(ef.header.get("level", "messages"))
    strings: Strings = {}
    used: Strings = {}  # streamed: what each string meant when a block was built with it
    # Events in the file's order; a header block's place holds its _Slot until it is built.
    # A block's parts share (tgid, tid, ts_ns, probe); parts of other blocks (other CPUs)
    # may come between them.
    fifo: deque[Event | _Slot] = deque()
    pending: dict[tuple[int, int, int, int], _Slot] = {}
    last_flag = d["PB_FLAG_LAST_PART"]
    newest = -(1 << 63)

    def release(upto: int | None) -> list[Event]:
        """Give out the events from the front that are older than ``upto`` (all: None)."""
        out: list[Event] = []
        while fifo:
            ev = fifo[0]
            if upto is not None and ev.seen.ts_ns > upto:
                break
            fifo.popleft()
            if isinstance(ev, _Slot):
                if not ev.last:  # its last part was lost: what came is kept
                    del pending[ev.key]
                ev = _block(ev.parts, ev.seen, st, strings, used if lag_ns is not None else None)
                st.header_blocks += 1
            out.append(ev)
        return out

    for rtype, rec in ef.records():
        if rtype == NOTE:
            assert isinstance(rec, dict)
            if rec.get("type") == "stats":
                st.collector = {k: v for k, v in rec.items() if k != "type"}
            elif rec.get("type") == "unsupported":
                st.unsupported.append(str(rec.get("what")))
            elif rec.get("type") == "attached":
                st.attached_probes += len(rec.get("probes") or [])  # late binaries add theirs
            continue
        assert isinstance(rec, memoryview)
        st.kernel_records += 1
        if lag_ns is not None and not st.kernel_records % STEP_RECORDS:
            upto = newest - lag_ns
            out = release(upto)
            yield out, min(upto, min((e.seen.ts_ns for e in fifo), default=upto))
        raw = bytes(rec)
        kind = raw[kind_off]
        if kind == d["PB_UEV_HEADERS"]:
            ev: Any = HE.from_buffer_copy(raw[:he_size].ljust(he_size, b"\0"))
        elif kind == d["PB_UEV_DATA"]:
            ev = DE.from_buffer_copy(raw[:de_size].ljust(de_size, b"\0"))
        elif kind == d["PB_UEV_RST"]:
            ev = RE.from_buffer_copy(raw[:re_size].ljust(re_size, b"\0"))
        else:
            raise RunDirError(f"{path}: record {st.kernel_records} has unknown kind {kind}")
        newest = max(newest, ev.ts_ns)
        if kind == d["PB_UEV_HEADERS"]:
            # read-only strings are the same bytes before and after any attach time
            blob = (_table_blob(raw, ev, blob_off, d["PB_EV_FIELDS"]) if table
                    else raw[blob_off : blob_off + ev.blob_len])  # fmt: skip
            fields, whole = blob_fields(blob, ev.count, ev.tgid, hf, strings)
        if attach_at_ns is not None and ev.ts_ns < attach_at_ns:
            st.dropped_before_attach += 1
            continue
        seen = _seen(ev)
        if seen.addr_status != "ok":
            st.addr_problems[seen.addr_status] = st.addr_problems.get(seen.addr_status, 0) + 1
        if kind == d["PB_UEV_HEADERS"]:
            st.header_parts += 1
            bkey = (ev.tgid, ev.tid, ev.ts_ns, ev.probe)
            slot = pending.get(bkey)
            if slot is None:
                slot = pending[bkey] = _Slot(bkey, seen, [])
                fifo.append(slot)  # the block takes its first part's place
            slot.parts.append(
                (PartHead(ev.part, ev.first, ev.count, ev.nfields, ev.flags), fields, whole))
            if ev.flags & last_flag:
                slot.seen, slot.last = seen, True
                del pending[bkey]
        elif kind == d["PB_UEV_RST"]:
            fifo.append(ResetFrame(seen=seen, error_code=ev.err_code))
            st.reset_frames += 1
        else:
            fifo.append(
                DataFrame(
                    seen=seen,
                    length=ev.frame_len,
                    head=bytes(ev.data[: ev.cap_len]),
                    length_partial=bool(ev.flags & d["PB_FLAG_LEN_PARTIAL"]),
                    unread=bool(ev.flags & d["PB_FLAG_DATA_UNREAD"]),
                )
            )
            st.data_frames += 1
    out = release(None)
    st.strings_changed_after_use = sum(strings.get(k) != v for k, v in used.items())
    yield out, END_NS
    return st


def _seen(ev: Any) -> Seen:
    ok = ev.addr_status == 0 and ev.ip_len in (4, 16)
    return Seen(
        ts_ns=ev.ts_ns,
        tgid=ev.tgid,
        tid=ev.tid,
        conn=ev.conn,
        fd=ev.fd,
        probe=PROBE_NAMES.get(ev.probe, str(ev.probe)),
        role=roles().get(ev.role, "unknown"),
        direction="send" if ev.dir == 0 else "recv",
        stream_id=ev.stream_id,
        end_stream=bool(ev.flags & 1),
        addr_status="ok" if ok else ADDR_STATUS.get(ev.addr_status or 2, str(ev.addr_status)),
        local=Endpoint(ip_text(bytes(ev.laddr), _family(ev.ip_len)), ev.lport) if ok else None,
        remote=Endpoint(ip_text(bytes(ev.raddr), _family(ev.ip_len)), ev.rport) if ok else None,
    )


def _table_blob(raw: bytes, ev: Any, blob_off: int, ev_fields: int) -> bytes:
    """A header record of uprobe-grpc/2 or /3 in today's blob layout: those records held
    four u32[PB_EV_FIELDS] tables (name_len, value_len, name_cap, value_cap) after the
    prefix, then the names and values packed."""
    hf = HFIELD_V4
    table = struct.unpack_from(f"={4 * ev_fields}I", raw, blob_off)
    name_len, value_len, name_cap, value_cap = (
        table[k * ev_fields : (k + 1) * ev_fields] for k in range(4)
    )
    start = blob_off + 4 * 4 * ev_fields  # past the four tables
    packed = raw[start : start + ev.blob_len]
    out, pos = bytearray(), 0
    for i in range(min(ev.count, ev_fields)):
        take = name_cap[i] + value_cap[i]
        out += hf.pack(name_len[i], value_len[i], name_cap[i], value_cap[i])
        out += packed[pos : pos + take]
        pos += take
    return bytes(out)


def _text(s: Str, strings: Strings, encoding: str, used: Strings | None) -> str | None:
    """A field's string as text; None for a reference whose bytes no record carried."""
    if isinstance(s, tuple):
        data = strings.get(s)
        if used is not None:
            used.setdefault(s, data)
        if data is None:
            return None
        s = data
    return s.decode(encoding) if encoding == "latin-1" else s.decode(encoding, errors="replace")


def _block(
    parts: list[Part], seen: Seen, st: DecodeStats, strings: Strings, used: Strings | None
) -> HeaderBlock:
    """One header block from its parts. A field cut short keeps its name (so the exchange
    can say which field) but is flagged: its value is not the value. A field whose name is
    an unresolved reference is not known at all: it counts as missing."""
    fields: list[tuple[str, str]] = []
    truncated: list[str] = []
    cut: set[int] = set()
    nfields = parts[0][0].nfields
    complete = any(ev.flags & header().defines["PB_FLAG_LAST_PART"] for ev, _, _ in parts)
    expect = 0
    for ev, raw_fields, whole in sorted(parts, key=lambda p: p[0].part):
        if ev.first != expect:
            complete = False  # a part in the middle was lost
        expect = ev.first + ev.count
        complete = complete and whole
        for name_len, value_len, n, v in raw_fields:
            name = _text(n, strings, "latin-1", used)
            value = _text(v, strings, "utf-8", used)
            if name is None:  # the field is unknown: counted missing below
                st.unresolved_strings += 1
                continue
            if value is None:
                st.unresolved_strings += 1
            if value is None or (isinstance(n, bytes) and len(n) != name_len) or (
                    isinstance(v, bytes) and len(v) != value_len):  # fmt: skip
                truncated.append(name)
                cut.add(len(fields))
                st.truncated_fields += 1
            fields.append((name, value or ""))
    missing = max(0, nfields - len(fields))
    if not complete:
        st.incomplete_blocks += 1
        missing = max(missing, 1)  # the lost part's fields are unknown, and so is their count
    st.missing_fields += missing
    return HeaderBlock(
        seen=seen, fields=fields, truncated=truncated, missing_fields=missing, cut=cut
    )
