"""Ground-truth exchanges from a pcap, decoded by Wireshark's http, http2 and grpc dissectors.

One ``-T fields`` scan of every frame: frame times, TCP 4-tuples, expert warnings, the
HTTP/1 messages (summarised per TCP stream, spilled to a temporary file, then paired in a
second pass over that file, not over the capture) and the HTTP/2 frames (each call
finished once it has ended and spilled to a file of its own, see _H2Calls). tshark runs
again only where the fields cannot say enough: a ``-T json`` pass over HTTP/2 frames
whose fields cannot be lined up with their streams, and over HTTP/1 frames that carry
several messages or that repeat an earlier report. The two spills are read back
together, in order of start time.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import marshal
import operator
import re
import sys
import tempfile
from array import array
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from harness.errors import CaptureError
from harness.groundtruth.pcapng import Layout, layout
from harness.groundtruth.tshark import (
    AGG,
    SEP,
    TsharkStream,
    column_format,
    decode_as,
    run_tshark,
    unescape,
)
from harness.model import TRUTH_HPACK_UNKNOWN, TRUTH_UNRELIABLE, Degradation, Exchange
from harness.protocols.http2.grpc import apply_reset_status
from harness.protocols.idset import IdSet

WARN_SEVERITY = 0x600000  # expert info: warning and error; chat and note are routine
NO_BODY_STATUS = frozenset({204, 304})

# The scan pass's columns, in order.
_FIELDS = (
    "frame.number", "frame.time_epoch", "tcp.stream",
    "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport",
    "tcp.segment",
    "http.request.method", "http.request.uri", "http.request.version",
    "http.response.code", "http.request_in",
    "http.content_length", "http.chunk_size", "http.transfer_encoding",
    "http.request.line", "http.response.line",
    "_ws.expert.severity", "_ws.expert.message",
    # only for bodies delimited by the connection's close: total minus header bytes
    "http.response.version", "http.response.phrase", "tcp.len", "tcp.reassembled.length",
    # over TLS, a message in several records: the frames of the records (tcp.segment then
    # names only the last record's segments, which made a request start too late)
    "tls.segment",
    # a capture begun mid-connection (observe): a response sent before the server had the
    # first captured request answers one the capture missed (absolute: relative numbers
    # of a stream whose start was not captured begin at whatever was seen first)
    "tcp.seq_raw", "tcp.ack_raw",
)
(_NUM, _TIME, _STREAM, _SRC4, _SRC6, _SPORT, _DST4, _DST6, _DPORT, _SEGS, _METHOD, _URI,
 _VERSION, _CODE, _REQ_IN, _CLEN, _CHUNKS, _TE, _REQ_LINES, _RESP_LINES, _SEV, _MSG,
 _RESP_VERSION, _PHRASE, _TCP_LEN, _REASM_LEN, _TLS_SEGS, _SEQ_RAW, _ACK_RAW) = range(len(_FIELDS))
# Added to the scan pass when there are h2c ports: every HTTP/2 frame's header, and the
# header fields and gRPC message lengths, each flattened over the packet (see _H2Fields).
_H2_FIELDS = (
    "http2.type", "http2.streamid", "http2.length", "http2.flags", "http2.header.count",
    "http2.header.name", "http2.header.value", "grpc.message_length",
    "http2.rst_stream.error",
)
(_H2_TYPE, _H2_SID, _H2_LEN, _H2_FLAGS, _H2_HCOUNT, _H2_NAMES, _H2_VALUES,
 _GRPC_LEN, _H2_RST) = range(len(_FIELDS), len(_FIELDS) + len(_H2_FIELDS))


@dataclass(slots=True)
class TruthStats:
    """What the decode saw and what it could not make sense of; stored beside the exchanges."""

    packets: int = 0
    tcp_streams: int = 0
    exchanges: int = 0
    unpaired_requests: int = 0  # requests or calls without a response
    unpaired_responses: int = 0  # responses whose request was not captured
    truncated: bool = False  # the file ended in the middle of a packet
    # TCP segments recorded out of order are reassembled (off when the capture dropped
    # packets: see tshark.decode_as)
    out_of_order: bool = True
    # how the HTTP/2 calls were decoded: "fields" (the scan pass), "json (why)", None: no h2c
    h2_decode: str | None = None
    # what the streamed decode held at most: exchanges decided but not yet past the
    # watermark plus requests waiting for their response (bounded, not the recording's size)
    held_peak: int = 0
    # HTTP/1 streams held whole for a repair (several messages in a frame, repeated reports)
    streams_held_whole: int = 0
    spill_bytes: int = 0  # HTTP/1 messages written to a temporary file between the passes
    # HTTP/2 calls are handed on (finished and spilled) once ended and _H2_GRACE_NS of capture
    # time later: the most held open at once, and the spill's bytes
    h2_held_peak: int = 0
    h2_spill_bytes: int = 0
    # frames of a call already handed on, counted and not applied (the whole decode, which
    # held every call to the end, would have applied them to it): 0 on every capture tried
    h2_late_frames: int = 0
    tshark_parts: int = 1  # tshark runs the scan took (a large HTTP/1 capture: one per part)
    parts_given_up: str | None = None  # why the parts were given up for one pass, if they were
    # how tshark printed the scan: "columns" (see _Columns), or "fields" from some frame on
    # (why; from the frame where the columns could not say the same), or "fields" (HTTP/2)
    tshark_output: str = "columns"
    warnings: dict[str, int] = field(default_factory=dict)  # message -> count

    def warn(self, message: str, n: int = 1) -> None:
        self.warnings[message] = self.warnings.get(message, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Frame:
    t_ns: int
    stream: int | None
    src: str | None
    sport: int | None
    dst: str | None
    dport: int | None


class _Frames:
    """What the JSON route of HTTP/2 looks up by frame number once the scan is done (what a
    _Frame per packet held: a busy h2c capture has millions): each frame's TCP stream and
    direction in arrays, each stream's two ends once, the times in the scan's ``times``."""

    def __init__(self, times: array[int]) -> None:
        self.times = times
        self.stream = array("i")  # frame number -> tcp.stream; -1: none, or not a frame
        self.back = bytearray()  # 1: sent from the end its stream's first frame went to
        self.ends: dict[int, tuple[str | None, int | None, str | None, int | None]] = {}
        self.odd: dict[int, _Frame] = {}  # frames whose ends are neither of their stream's

    def add(self, num: int, fr: _Frame) -> None:
        stream, back, s = self.stream, self.back, fr.stream
        if num == len(stream):  # the next frame (most)
            stream.append(-1 if s is None else s)
            back.append(0)
        else:
            if num > len(stream):
                stream.extend([-1] * (num + 1 - len(stream)))
                back.extend(bytes(num + 1 - len(back)))
            stream[num] = -1 if s is None else s
        if s is None:
            return
        ends = self.ends.get(s)
        if ends is None:
            ends = self.ends[s] = (fr.src, fr.sport, fr.dst, fr.dport)
        if fr.sport == ends[1] and fr.dport == ends[3] and fr.src == ends[0] and \
                fr.dst == ends[2]:
            return
        if fr.sport == ends[3] and fr.dport == ends[1] and fr.src == ends[2] and \
                fr.dst == ends[0]:
            back[num] = 1
        else:
            self.odd[num] = fr

    def get(self, num: int) -> _Frame | None:
        """Frame ``num`` of the scan, or None if it had no TCP stream (or is no frame)."""
        if not 0 <= num < len(self.stream) or (s := self.stream[num]) < 0:
            return None
        if (fr := self.odd.get(num)) is not None:
            return fr
        src, sport, dst, dport = self.ends[s]
        if self.back[num]:
            src, sport, dst, dport = dst, dport, src, sport
        return _Frame(self.times[num], s, src, sport, dst, dport)


def epoch_to_ns(text: str) -> int:
    """``frame.time_epoch`` ("1672043401.014584000") to integer ns, without float rounding."""
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def _int(text: str) -> int | None:
    return int(text) if text else None


def _first(text: str) -> str:
    return text if AGG not in text else text.split(AGG, 1)[0]  # most fields occur once


def _headers(lines: str) -> dict[str, str]:
    """HTTP/1 header lines ("Name: value\\r\\n", AGG-joined) to a dict with lower-case names."""
    out: dict[str, str] = {}
    for raw in lines.split(AGG) if lines else ():
        line = unescape(raw.removesuffix("\\r\\n"))  # the escaped CRLF every line ends in
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        value = value.strip()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _body_size(row: list[str], *, head_or_no_body: bool) -> int | None:
    """De-chunked body size from the dissector's framing fields."""
    if head_or_no_body:
        return 0
    if row[_CHUNKS]:
        return sum(int(c) for c in row[_CHUNKS].split(AGG))
    if row[_CLEN]:
        return int(row[_CLEN])
    if "chunked" in row[_TE].lower():
        return 0
    return None


def _head_size(
    row: list[str], *, request: bool, known: dict[tuple[str, ...], int] | None = None
) -> int | None:
    """Bytes of a message's start line and header block, rebuilt from its fields.
    ``known``: sizes already worked out, by their fields (a keep-alive load repeats them)."""
    if request:
        key = (row[_METHOD], row[_URI], row[_VERSION], row[_REQ_LINES])
    elif row[_RESP_VERSION]:
        key = (row[_RESP_VERSION], row[_CODE], row[_PHRASE], row[_RESP_LINES])
    else:
        return None
    if known is not None and (size := known.get(key)) is not None:
        return size
    a, b, c, raw = key
    start = f"{a} {unescape(b)} {c}\r\n" if request else f"{a} {b} {unescape(c)}\r\n"
    lines = [unescape(ln) for ln in raw.split(AGG)] if raw else []
    size = sum(len(t.encode("utf-8", "surrogateescape")) for t in (start, *lines)) + 2
    if known is not None:
        if len(known) >= _HEADER_SETS:
            known.clear()
        known[key] = size
    return size


def _close_delimited_size(row: list[str]) -> int | None:
    """Body of a response that ends with the connection: message bytes minus its header."""
    total = _int(_first(row[_REASM_LEN])) or _int(_first(row[_TCP_LEN]))
    head = _head_size(row, request=False)
    if total is None or head is None:
        return None
    return total - head if total >= head else None


def _wire_size(m: _H1Msg, known: dict[tuple[str, ...], int] | None = None) -> int | None:
    """A message's bytes on the wire, where its fields fix them (no chunking, no body
    delimited by the close); None otherwise."""
    row = m.row
    if m.unsplit or row[_TE] or row[_CHUNKS] or AGG in row[_CLEN]:
        return None
    if row[_CLEN]:
        body = int(row[_CLEN])
    elif m.is_request or row[_CODE] in ("204", "304"):
        body = 0
    else:
        return None
    head = _head_size(row, request=m.is_request, known=known)
    return None if head is None else head + body


def _holds_exactly(
    f: int, ms: list[_H1Msg], known: dict[tuple[str, ...], int] | None = None
) -> bool:
    """The frame's own TCP payload is these messages and nothing else: each lies wholly in
    it (no reassembly) and their sizes add up to its length, so their start lines are in
    it. Saves reading its bytes back from the capture (a second tshark pass over every
    HTTP frame of a soak, whose keep-alive requests each repeat the one before)."""
    row = ms[0].row
    if row[_SEGS] or row[_TLS_SEGS] or row[_REASM_LEN]:
        return False
    if len(ms) == 1:  # (most frames: without the generators below)
        n = _wire_size(ms[0], known) if ms[0].first_frame == f else None
        return n is not None and n == _int(_first(row[_TCP_LEN]))
    if any(m.first_frame != f for m in ms):
        return False
    sizes = [n for m in ms if (n := _wire_size(m, known)) is not None]
    return len(sizes) == len(ms) and sum(sizes) == _int(_first(row[_TCP_LEN]))


# -- the scan pass ------------------------------------------------------------------
#
# HTTP/1 pairing decides some flags per whole TCP stream ("more responses than requests:
# every pairing of the stream is doubtful"), and a soak's keep-alive connections last the
# whole recording. So the truth is made in two passes: the scan reads tshark's output once,
# keeps a small summary per TCP stream (_H1Stream) and writes each message to a spill file;
# the pairing then reads the spill in frame order knowing every stream's summary, and
# yields each exchange once nothing earlier can come. The result is the one a whole-list
# pairing gives; memory holds the requests in flight, not the recording.

_SPILL_BATCH = 4096  # messages per marshal record of the spill file
_SEVERITY_LISTS = 64  # distinct lists of a frame's expert severities remembered


class _Spill:
    """Items written to an unlinked temporary file in records of about ``batch`` (the writer
    appends to ``buf``, then says with ``added`` the earliest start of what it appended),
    read back one record at a time in the order written. Each record's earliest start
    (``mins``) gives the watermark while they are read (``later``). The scan's HTTP/1
    messages and the HTTP/2 calls handed on (see _dump_calls) go through one each."""

    def __init__(
        self, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any], batch: int
    ) -> None:
        self.dumps, self.loads, self.batch = dumps, loads, batch
        # closed by close(), after the merge has read it back
        self.file = tempfile.TemporaryFile(prefix="probebench-truth-")  # noqa: SIM115
        self.sizes: list[int] = []  # bytes of each record
        self.mins: list[int] = []  # earliest start in each record
        self.buf: list[Any] = []
        self.buf_min = _NEVER
        self.bytes = 0

    def added(self, start: int) -> None:
        """Items just appended to ``buf`` start no earlier than ``start``: the record is
        written once it holds ``batch`` items."""
        if start < self.buf_min:
            self.buf_min = start
        if len(self.buf) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            blob = self.dumps(self.buf)
            try:
                self.file.seek(0, 2)  # (after a read back)
                self.file.write(blob)
            except OSError as e:
                raise CaptureError(f"could not write the truth's spill file in "
                                   f"{tempfile.gettempdir()}: {e}") from e  # fmt: skip
            self.sizes.append(len(blob))
            self.bytes += len(blob)
            self.mins.append(self.buf_min)
            self.buf, self.buf_min = [], _NEVER

    def records(self) -> Iterator[list[Any]]:
        pos = 0
        for size in self.sizes:
            self.file.seek(pos)
            pos += size
            # loads of what was read: marshal.load on the file reads it a few bytes at a time
            yield self.loads(self.file.read(size))

    def later(self) -> list[int]:
        """Per record, the earliest start in it and every record after it; then _NEVER: the
        watermark of what is still to be read, once the records before it have been."""
        return [*list(accumulate(reversed(self.mins), min))[::-1], _NEVER]

    def close(self) -> None:
        self.file.close()


@dataclass(slots=True)
class _H1Stream:
    """What the pairing of one TCP stream must know before its first pairing: counts of
    requests and final responses, the leading responses that answer requests sent before the
    capture began, where a 101 switches protocols, how far a message's reassembly reaches
    back (``lag``, in frames). Fed each message in frame order (``add``)."""

    messages: int = 0
    requests: int = 0
    finals: int = 0  # final responses (interim 1xx other than 101 left out), leads included
    lead: int = 0
    lead_open: bool = True
    judged: int = 0  # finals whose lead-ness is decided
    first_req: _H1Msg | None = None
    waiting: list[_H1Msg] = field(default_factory=list)  # finals before the first request
    switch_at: int | None = None  # index of the first 101 among the finals after the lead
    lag: int = 0
    # streams whose messages need a repair that looks at other messages or at the capture
    # again (several in a frame, a reassembly over an earlier report, a repeated report):
    # held whole and repaired as before (none on a keep-alive load like wrk's)
    hard: bool = False
    last: tuple[list[_H1Msg] | None, list[_H1Msg] | None] = (None, None)  # last report (resp, req)

    def add(self, m: _H1Msg) -> None:
        self.messages += 1
        self.lag = max(self.lag, m.frame - m.first_frame)
        if m.is_request:
            self.requests += 1
            if self.first_req is None:
                self.first_req = m
                waiting, self.waiting = self.waiting, []
                for r in waiting:
                    self._final(r)
            return
        if _interim(m):
            return
        self.finals += 1
        if self.first_req is None:
            self.waiting.append(m)
        else:
            self._final(m)

    def _final(self, m: _H1Msg) -> None:
        self.judged += 1
        if self.lead_open:
            assert self.first_req is not None
            if _answers_earlier(m, self.first_req):
                self.lead += 1
                return
            self.lead_open = False
        if self.switch_at is None and _first(m.row[_CODE]) == "101":
            self.switch_at = self.judged - 1 - self.lead

    def finish(self) -> None:
        """No request at all: no response is a lead (pairing has nothing to pair them with)."""
        if self.first_req is None:
            self.lead_open = False
            for r in self.waiting:
                self._final(r)
            self.waiting = []
        self.first_req = None
        self.last = (None, None)


def _interim(m: _H1Msg) -> bool:
    code = _first(m.row[_CODE])
    return code.isdigit() and (100 <= int(code) < 200 and code != "101")


# -- the capture in parts ------------------------------------------------------------------
#
# tshark keeps state for every packet it has read (TCP sequence analysis mostly: about
# 600 B a packet on a wrk capture, 450 B of it the analysis that out-of-order reassembly
# needs), so one pass over a soak's capture grows with it. A large HTTP/1 capture is
# decoded in parts instead: each part's packets with the ``overlap`` packets before them
# in front, so that TCP reassembly and the HTTP dissector find their footing again. Each
# frame's row is taken from the part that owns it (frame numbers and tcp.stream indices
# mapped back to the whole file's); the rows the previous part owned are only compared.
# Where they differ on the last ``check`` frames of the overlap, or a connection cannot
# be told apart from one seen before (an idle connection waking after the overlap, or a
# port reused), the parts are given up and the capture decoded whole (``parts_given_up``).
# Only the overlap is compared: a response whose request lies before its part's overlap
# has no http.request_in there, so Wireshark's pairing is not cross-checked for it.

PART_PACKETS = 400_000  # tshark on a wrk capture: about 160 MB + 600 B a packet
PART_OVERLAP = 20_000
PART_CHECK = 10_000
# only with parts (never with HTTP/2, whose HPACK state cannot be picked up mid-connection):
# a segment held for reassembly and one read as the continuation of a message differ in it
_PART_FIELDS = ("frame.protocols",)
_FRAME_REFS = (_SEGS, _REQ_IN)  # fields holding frame numbers (TLS is never in parts)


class _OutOfSync(Exception):
    """A part's decode does not line up with the previous part's."""


@dataclass(slots=True)
class _Parts:
    """Where each part begins (its first own frame), and what one part hands the next."""

    layout: Layout
    starts: list[int]
    overlap: int
    check: int
    stream_at: dict[int, int] = field(default_factory=dict)  # frame -> tcp.stream, last frames
    sig_at: dict[int, tuple[str, ...]] = field(default_factory=dict)  # frame -> its row
    conns: set[tuple[Any, ...]] = field(default_factory=set)  # connections seen so far
    next_stream: int = 0

    @classmethod
    def plan(cls, pcap: Path, packets: int, overlap: int, check: int) -> _Parts | None:
        """Parts of ``packets`` frames, or None where one pass does (a small capture, or a
        file whose blocks are not simply laid out)."""
        overlap = min(overlap, packets - 1)  # the previous part's rows are all it compares
        lay = layout(pcap, packets, overlap)
        if lay is None or lay.packets <= packets:
            return None
        return cls(lay, list(range(1, lay.packets + 1, packets)), overlap, min(check, overlap))

    def first(self, p: int) -> int:
        """The first frame tshark reads for part ``p``."""
        return max(1, self.starts[p] - self.overlap) if p else 1

    def ranges(self, p: int) -> tuple[tuple[int, int], ...]:
        lay = self.layout
        end = lay.offsets[self.starts[p + 1]] if p + 1 < len(self.starts) else lay.size
        return (0, lay.header_end), (lay.offsets[self.first(p)], end)


def _conn(row: list[str]) -> tuple[Any, ...]:
    a = (_first(row[_SRC4]) or _first(row[_SRC6]), _first(row[_SPORT]))
    b = (_first(row[_DST4]) or _first(row[_DST6]), _first(row[_DPORT]))
    return (a, b) if a <= b else (b, a)


def _shift(text: str, base: int) -> str:
    return AGG.join(str(int(v) + base) for v in text.split(AGG))


class _Part:
    """One part's rows: its overlap checked against the previous part and dropped, its own
    rows given the whole file's frame numbers and tcp.stream indices (``own``)."""

    def __init__(self, parts: _Parts, p: int) -> None:
        self.parts, self.p = parts, p
        self.start = parts.starts[p]
        self.base = parts.first(p) - 1
        nxt = parts.starts[p + 1] if p + 1 < len(parts.starts) else None
        self.keep_from = _NEVER if nxt is None else nxt - parts.overlap
        self.sig_from = _NEVER if nxt is None else nxt - parts.check
        self.check_from = self.start - parts.check
        self.smap: dict[int, int] = {}  # this tshark's tcp.stream -> the whole file's
        self.stream_at: dict[int, int] = {}
        self.sig_at: dict[int, tuple[str, ...]] = {}
        self.checked = 0

    def own(self, row: list[str]) -> bool:
        """Whether the row is this part's; if so, rewritten to the whole file's numbers."""
        parts, base = self.parts, self.base
        num = int(row[_NUM]) + base
        s = _int(_first(row[_STREAM]))
        if base:
            row[_NUM] = str(num)
            for i in _FRAME_REFS:
                if row[i]:
                    row[i] = _shift(row[i], base)
        if num < self.start:  # the overlap: the previous part's rows
            g = parts.stream_at.get(num)
            if s is not None and g is not None:
                if self.smap.setdefault(s, g) != g:
                    raise _OutOfSync(f"frame {num}: connection differs")
                if num >= self.check_from:
                    row[_STREAM] = str(g)
            elif s is not None or g is not None:
                raise _OutOfSync(f"frame {num}: connection differs")
            if num >= self.check_from:
                if not _same_row(parts.sig_at.get(num), row):
                    raise _OutOfSync(f"frame {num} decoded differently")
                self.checked += 1
            return False
        if s is not None:
            g = self.smap.get(s)
            if g is None:
                conn = _conn(row)
                if self.p and conn in parts.conns:
                    raise _OutOfSync(f"frame {num}: a connection seen before comes back")
                parts.conns.add(conn)
                g = self.smap[s] = parts.next_stream
                parts.next_stream += 1
            if g != s:
                row[_STREAM] = str(g)
            if num >= self.keep_from:
                self.stream_at[num] = g
        if num >= self.sig_from:
            self.sig_at[num] = tuple(row)
        return True

    def done(self) -> None:
        if self.p and self.checked != self.start - max(self.check_from, self.parts.first(self.p)):
            raise _OutOfSync(f"part {self.p}: {self.checked} frames of its overlap decoded")
        self.parts.stream_at, self.parts.sig_at = self.stream_at, self.sig_at


def _same_row(before: tuple[str, ...] | None, row: list[str]) -> bool:
    """The previous part's row for a frame against this part's: equal, except that this
    part may not know a response's request (it came before the overlap)."""
    if before is None or len(before) != len(row):
        return False
    if row[_REQ_IN] or not before[_REQ_IN]:
        return tuple(row) == before
    return all(a == b for i, (a, b) in enumerate(zip(before, row, strict=True)) if i != _REQ_IN)


# -- the scan pass's output as columns ------------------------------------------------------
#
# ``-T fields`` makes tshark build the whole visible protocol tree (every item's label text)
# and walk it for each packet; a summary line of custom columns does not: 40% less tshark
# CPU on a wrk capture. The columns print what ``-T fields`` prints, except: a field's
# occurrences are joined with "," (not AGG), a value is cut at 2,047 bytes, expert
# severities are names, and control characters other than CR, LF and TAB are escaped
# (``-T fields`` writes them as they are). _Columns turns a line back into the row
# ``-T fields`` gives, or says it cannot be sure (None): a comma that may be a value's own,
# a value that may be cut, an escape ``-T fields`` would not have made. The scan then
# reads the rest of that tshark run's frames as fields (TruthStats.tshark_output).

_SEVERITY = {'"Comment"': "1048576", '"Chat"': "2097152", '"Note"': "4194304",
             '"Warning"': "6291456", '"Error"': "8388608"}  # (tshark -G values)
# fields whose values never hold a comma (numbers, addresses, methods: Wireshark takes a
# request only with one of its known methods): their commas are the joins
_JOINED = (_NUM, _TIME, _STREAM, _SRC4, _SRC6, _SPORT, _DST4, _DST6, _DPORT, _SEGS, _METHOD,
           _CODE, _REQ_IN, _CLEN, _CHUNKS, _TCP_LEN, _REASM_LEN, _TLS_SEGS, _SEQ_RAW, _ACK_RAW)
_JOINED_OF = operator.itemgetter(*_JOINED)
_REQ_STRINGS = (_URI, _VERSION)  # one per request
_RESP_STRINGS = (_RESP_VERSION, _PHRASE)  # one per response
_MSG_COLUMNS = 3  # expert messages printed one column each (a frame's severities count them)
_COLUMN_MAX = 2047  # bytes of a custom column; a value this long may have been cut
_NOT_FIELDS = re.compile(r"\\[0-7abfv]")  # escapes -T fields does not make
_CRLF = "\\r\\n"  # every header line item ends in it (escaped)


def _column_fields(columns: tuple[str, ...]) -> list[str]:
    """The custom columns for these ``-e`` fields: the same order, the first expert message
    in its place and the next ones at the end."""
    cols = [f"{f}:1" if f == "_ws.expert.message" else f for f in columns]
    return cols + [f"_ws.expert.message:{k}" for k in range(2, _MSG_COLUMNS + 1)]


class _Columns:
    """A ``-T tabs`` line of _column_fields back to the ``-T fields`` row (see above)."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.n = len(columns)
        self.width = self.n + _MSG_COLUMNS - 1
        self.severities: dict[str, str | None] = {}
        self.warns: set[str] = set()  # severity lists that hold a warning or worse
        self.why = ""

    def row(self, line: str) -> list[str] | None:
        row = line.split("\t")
        if len(row) != self.width:
            return row  # (the caller counts it as a row it could not read)
        if len(line) >= _COLUMN_MAX // 4 and any(
            len(v) >= _COLUMN_MAX // 4 and len(v.encode("utf-8", "surrogateescape")) >= _COLUMN_MAX
            for v in row
        ):  # fmt: skip
            return self._unsure("a column as long as tshark cuts them")
        if "," in "".join(_JOINED_OF(row)):  # (one test for the twenty: most have none)
            for i in _JOINED:
                if "," in row[i]:
                    row[i] = row[i].replace(",", AGG)
        strings: tuple[int, ...]
        if row[_METHOD]:
            n, strings = row[_METHOD].count(AGG) + 1, _REQ_STRINGS
        elif row[_CODE]:
            n, strings = row[_CODE].count(AGG) + 1, _RESP_STRINGS
        else:
            n, strings = 0, ()
        for i in strings:
            v = row[i]
            if "\\" in v and _NOT_FIELDS.search(v):
                return self._unsure("an escaped control character")
            if n > 1 and "," in v:
                if v.count(",") != n - 1:
                    return self._unsure("a comma in a pipelined message's field")
                row[i] = v.replace(",", AGG)
        if (te := row[_TE]) and ("," in te or "\\" in te):
            return self._unsure("a comma in Transfer-Encoding")
        for i in (_REQ_LINES, _RESP_LINES):
            if v := row[i]:
                if v.count("\\") != 2 * v.count(_CRLF):
                    return self._unsure("a header line with an escape other than its CRLF")
                if "," in v:
                    row[i] = v.replace(_CRLF + ",", _CRLF + AGG)
        if sev := row[_SEV]:
            got = self.severities.get(sev, "")
            if got == "":
                names = sev.split(",")
                got = None if any(s not in _SEVERITY for s in names) else AGG.join(
                    _SEVERITY[s] for s in names)
                if len(self.severities) >= _SEVERITY_LISTS:
                    self.severities.clear()
                self.severities[sev] = got
                if got is not None and any(int(v) >= WARN_SEVERITY for v in got.split(AGG)):
                    self.warns.add(got)
            if got is None:
                return self._unsure("an expert severity of no known name")
            row[_SEV] = got
            k = got.count(AGG) + 1
            if k > 1:
                if k > _MSG_COLUMNS:
                    return self._unsure("more expert messages than columns")
                row[_MSG] = AGG.join([row[_MSG], *row[self.n : self.n + k - 1]])
            # a message is read only with a warning (the HTTP chat ones hold the start line,
            # whose fields are checked above)
            if (msg := row[_MSG]) and "\\" in msg and got in self.warns and \
                    _NOT_FIELDS.search(msg):
                return self._unsure("an escaped control character")
        del row[self.n :]
        return row

    def _unsure(self, why: str) -> list[str] | None:
        self.why = why
        return None


class _Scan:
    """The scan pass: tshark's field output read as it comes; frame times, warnings, HTTP/2
    frames (to ``h2``), and HTTP/1 messages: summarised per TCP stream and spilled to an
    unlinked temporary file for the pairing pass (``spilled``)."""

    def __init__(
        self, pcap: Path, http1_ports: list[int], h2c_ports: list[int], mono_offset_ns: int,
        stats: TruthStats, h2: _H2Fields | None = None, tls_keylog: Path | None = None,
        parts: _Parts | None = None, columns: bool = True,
    ) -> None:
        self.pcap, self.http1_ports, self.h2c_ports = pcap, http1_ports, h2c_ports
        self.offset, self.stats, self.h2, self.tls_keylog = mono_offset_ns, stats, h2, tls_keylog
        self.parts, self.columns = parts, columns
        self._http1 = set(http1_ports)
        # HTTP/1 only needs the time of a request's first segment: 8 bytes a frame, not a
        # record (millions on a soak); the JSON route of HTTP/2 the rest of each frame
        self.times = array("q")
        self.frames = _Frames(self.times) if h2c_ports else None
        self.streams: dict[int | None, _H1Stream] = {}
        self.server_data: dict[int | None, int] = {}  # tcp.stream -> last frame with server bytes
        # tcp.stream -> the runs of client bytes since its last reported request (none
        # reported it: a request Wireshark never decoded, see _H1Pairer._lost)
        self.client_runs: dict[int | None, _Runs] = {}
        self._run_open: set[int | None] = set()  # streams whose latest bytes were the client's
        self.warnings: Counter[str] = Counter()
        # the HTTP/1 messages; a record's earliest start is its requests' (or of a response
        # that may answer a request Wireshark never decoded, see _messages)
        self.spill = _Spill(marshal.dumps, marshal.loads, _SPILL_BATCH)
        self.head_sizes: dict[tuple[str, ...], int] = {}
        self._severities: dict[str, bool] = {}  # a frame's expert severities -> a warning?

    def close(self) -> None:
        self.spill.close()

    def read(self) -> None:
        """One tshark pass over the capture, or one per part (``parts``): the same rows."""
        stats = self.stats
        base = decode_as(self.http1_ports, self.h2c_ports, self.tls_keylog,
                         out_of_order=stats.out_of_order)
        args = [*base, "-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={AGG}",
                "-E", f"separator={SEP}"]  # fmt: skip
        columns = _FIELDS + (_H2_FIELDS if self.h2 is not None else ())
        if self.parts is not None:
            columns += _PART_FIELDS  # never with HTTP/2: parts are HTTP/1 only
        for f in columns:
            args += ["-e", f]
        # HTTP/2 header values hold commas that nothing tells from the joins: fields
        cols = _Columns(columns) if self.h2 is None and self.columns else None
        if cols is None:
            stats.tshark_output = "fields"
        col_args = [*base, *column_format(_column_fields(columns))]
        self.packets = 0
        self.tcp_streams: set[int] = set()
        truncated = False
        parts = self.parts
        for p in range(len(parts.starts) if parts is not None else 1):
            # one pass is one part over the whole file, its numbers left as they are
            part = _Part(parts, p) if parts is not None else None
            ranges = parts.ranges(p) if parts is not None else None
            since = 0  # tshark's frame from which it prints fields, after columns that could not
            while True:
                run = [*args, "-Y", f"frame.number >= {since}"] if since else (
                    col_args if cols is not None else args)
                tshark = (TsharkStream(self.pcap, run) if ranges is None else
                          TsharkStream(self.pcap, run, ranges=ranges))  # fmt: skip
                lines = iter(tshark)
                assert isinstance(lines, Generator)
                try:
                    for line in lines:
                        row = line.split(SEP) if cols is None else cols.row(line)
                        if row is None:
                            since = int(line.split("\t", 1)[0])
                            break
                        if len(row) != len(columns):
                            self.warnings["tshark output row with an unexpected number of "
                                          "fields"] += 1  # fmt: skip
                            continue
                        if part is None or part.own(row):
                            self._row(row)
                    else:
                        break
                finally:
                    lines.close()  # (a run left for fields: tshark is stopped)
                assert cols is not None
                stats.tshark_output = f"fields from frame {self._frame(since, p)} ({cols.why})"
                cols = None
            if part is not None:
                part.done()
            truncated = truncated or tshark.truncated
        if parts is not None:
            stats.tshark_parts = len(parts.starts)
        self.spill.flush()
        stats.spill_bytes += self.spill.bytes
        if truncated:
            stats.truncated = True
            stats.warn("capture file cut short in the middle of a packet")
        stats.packets += self.packets
        stats.tcp_streams = len(self.tcp_streams)
        for st in self.streams.values():
            st.finish()

    def _frame(self, num: int, p: int) -> int:
        """The whole file's number of tshark's frame ``num`` of part ``p``."""
        return num if self.parts is None else num + self.parts.first(p) - 1

    def _row(self, row: list[str]) -> None:
        num = int(row[_NUM])
        intern = sys.intern
        # _int(_first(...)) inline, as a soak's millions of rows read them
        s, sport, dport = row[_STREAM], row[_SPORT], row[_DPORT]
        src, dst = row[_SRC4] or row[_SRC6], row[_DST4] or row[_DST6]
        if AGG in s + src + sport + dst + dport:  # a field occurring more than once (tunnels)
            s, sport, dport = _first(s), _first(sport), _first(dport)
            src = _first(row[_SRC4]) or _first(row[_SRC6])
            dst = _first(row[_DST4]) or _first(row[_DST6])
        stream = int(s) if s else None
        fr = _Frame(
            epoch_to_ns(row[_TIME]) - self.offset, stream,
            intern(src) if src else None, int(sport) if sport else None,
            intern(dst) if dst else None, int(dport) if dport else None,
        )  # fmt: skip
        self.packets += 1
        times = self.times
        if num == len(times):  # the next frame (a part's overlap rows are not given here)
            times.append(fr.t_ns)
        else:
            if num > len(times):
                times.extend([-1] * (num + 1 - len(times)))
            times[num] = fr.t_ns
        if self.frames is not None:
            self.frames.add(num, fr)
        if stream is not None:
            self.tcp_streams.add(stream)
        if self.h2 is not None and row[_H2_TYPE]:
            self.h2.packet(row, fr)
        if (sevs := row[_SEV]) and self._warns(sevs):
            for sev, msg in zip(sevs.split(AGG), row[_MSG].split(AGG), strict=False):
                if int(sev) >= WARN_SEVERITY:
                    self.warnings[unescape(msg)] += 1
        if http1 := self._http1:
            self._messages(num, fr, row, http1)
            if row[_TCP_LEN] not in ("", "0"):
                if fr.sport in http1:
                    self.server_data[stream] = num
                    self._run_open.discard(stream)
                elif fr.dport in http1 and not row[_METHOD] and stream not in self._run_open:
                    self._run_open.add(stream)
                    runs = self.client_runs.get(stream)
                    if runs is None:
                        runs = self.client_runs[stream] = _Runs()
                    runs.frames.append(num)
                    if len(runs.frames) > _RUNS_KEPT:  # (after a 101: the other protocol's)
                        del runs.frames[0]

    def _warns(self, sevs: str) -> bool:
        """Whether a frame's expert severities hold a warning or worse (every HTTP frame
        has a chat one: its few lists are judged once)."""
        got = self._severities.get(sevs)
        if got is None:
            if len(self._severities) >= _SEVERITY_LISTS:
                self._severities.clear()
            got = self._severities[sevs] = any(
                int(v) >= WARN_SEVERITY for v in sevs.split(AGG))
        return got

    def _messages(self, num: int, fr: _Frame, row: list[str], http1: set[int]) -> None:
        """The frame's HTTP/1 messages: into its stream's summary and the spill."""
        if row[_METHOD] and fr.dport in http1:
            n, is_request = len(row[_METHOD].split(AGG)), True
        elif row[_CODE] and fr.sport in http1:
            n, is_request = len(row[_CODE].split(AGG)), False
        else:
            return
        if row[_SEGS] or row[_TLS_SEGS]:
            segs = [s for s in (*row[_SEGS].split(AGG), *row[_TLS_SEGS].split(AGG)) if s]
            first_seg = min((int(s) for s in segs), default=num)
        else:
            first_seg = num  # in one segment (most messages)
        row = _slim(row)
        ms = [_H1Msg(num, i, first_seg if i == 0 else num, fr, row, is_request)
              for i in range(n)]  # fmt: skip
        st = self.streams.get(fr.stream)
        if st is None:
            st = self.streams[fr.stream] = _H1Stream()
        prev = st.last[is_request]
        if not st.hard and (n > 1 or self._redissects(row, num, prev)
                            or self._repeats(num, prev, ms)):  # fmt: skip
            st.hard = True
        st.last = (st.last[0], ms) if is_request else (ms, st.last[1])
        t_start = _NEVER
        spill = self.spill
        for m in ms:
            if not st.hard:
                st.add(m)
            if is_request:
                t_start = min(t_start, _request_start(m, self.times))
            spill.buf.append((num, m.index, m.first_frame, fr.t_ns, fr.stream, fr.src, fr.sport,
                              fr.dst, fr.dport, is_request, row))  # fmt: skip
        if is_request:
            self.client_runs.pop(fr.stream, None)  # those bytes were this request's
            self._run_open.discard(fr.stream)
        elif runs := self.client_runs.get(fr.stream):
            # the response may answer a request begun there (_H1Pairer._lost): no watermark
            # may pass that start before this record is paired
            t_start = self.times[runs.frames[0]]
            runs.answers += sum(not _interim(m) for m in ms)
        spill.added(t_start)

    @staticmethod
    def _redissects(row: list[str], num: int, prev: list[_H1Msg] | None) -> bool:
        """A reassembly reaching back to a frame that reported messages of this stream and
        direction: _drop_redissected may find them reported again."""
        if not row[_SEGS] or prev is None:
            return False
        return any(int(g) != num and int(g) <= prev[-1].frame for g in row[_SEGS].split(AGG))

    def _repeats(self, num: int, prev: list[_H1Msg] | None, ms: list[_H1Msg]) -> bool:
        """A report equal to the previous one of its stream and direction that its own bytes
        do not settle at once: _drop_repeated_reports must read the capture again."""
        if prev is None or len(ms) < len(prev):
            return False
        if len(prev) == 1:  # (most reports: without the generator below)
            if _IDENTITY(prev[0].row) != _IDENTITY(ms[0].row):
                return False
        elif not all(_identity(a) == _identity(b) for a, b in zip(prev, ms, strict=False)):
            return False
        return self.tls_keylog is not None or not _holds_exactly(num, ms, self.head_sizes)

    def spilled(self) -> Iterator[list[_H1Msg]]:
        """The spilled messages again, one record at a time, in frame order."""
        frames: dict[int, _Frame] = {}
        for record in self.spill.records():
            out = []
            for num, index, first, t_ns, stream, src, sport, dst, dport, is_req, row in record:
                fr = frames.get(num)
                if fr is None:
                    frames.clear()
                    fr = frames[num] = _Frame(t_ns, stream, src, sport, dst, dport)
                out.append(_H1Msg(num, index, first, fr, row, is_req))
            yield out


_NEVER = 1 << 63  # later than any start time: the watermark once nothing more can come
_RUNS_KEPT = 16  # runs of client bytes kept per stream since its last reported request


@dataclass(slots=True)
class _Runs:
    """A stream's runs of client bytes since its last reported request."""

    frames: list[int] = field(default_factory=list)  # each run's first frame
    answers: int = 0  # final responses reported since the first run began


def _request_start(m: _H1Msg, times: array[int]) -> int:
    """When a request began: its first segment's time (the reporting frame's, if unknown)."""
    f = m.first_frame
    return times[f] if 0 <= f < len(times) and times[f] != -1 else m.fr.t_ns


# -- HTTP/1 messages and their pairing ---------------------------------------------------
#
# Wireshark's ``http.request_in`` cannot be the pairing: TShark 4.0.17 leaves it empty
# for a response sent before its request's body was complete (an early answer to an
# ``Expect: 100-continue`` upload), and under pipelining points a response at the
# latest request frame before it, or at nothing. HTTP/1 answers requests in order on
# a connection, so the truth pairs the n-th final response of a TCP stream with the
# n-th request. request_in is a check where one request was outstanding: where it
# disagrees, Wireshark lost a message and the pairing (and every later one on the
# stream) is marked truth_unreliable.

_H1_RESPONSE_FIELDS = ("status", "resp_bytes")
_H1_REQUEST_FIELDS = ("method", "path", "req_bytes")


@dataclass(slots=True)
class _H1Msg:
    """One HTTP/1 message as the dissector reported it, with its own slice of the row."""

    frame: int  # the frame whose dissection reported it (its last segment)
    index: int  # position among the messages reported in that frame
    first_frame: int  # its first segment
    fr: _Frame
    row: list[str]  # _FIELDS layout; HTTP fields hold this message's values only
    is_request: bool
    unsplit: bool = False  # shares its frame's fields with others: headers and sizes unknown
    repeated: bool = False  # TShark reported it more than once: its body size is doubtful


# What a message keeps of its frame's row until the pairing: a soak holds millions of
# messages, so the rest goes, and what repeats from message to message (the same
# method, path, header lines) is one string for all.
_SHARED = frozenset({_METHOD, _URI, _VERSION, _CODE, _CLEN, _CHUNKS, _TE, _REQ_LINES,
                     _RESP_LINES, _RESP_VERSION, _PHRASE, _TCP_LEN})
_OWN = frozenset({_SEGS, _REQ_IN, _REASM_LEN, _TLS_SEGS, _SEQ_RAW, _ACK_RAW})


def _slim(row: list[str]) -> list[str]:
    intern = sys.intern
    out = [""] * len(_FIELDS)
    for i in _SHARED:
        if v := row[i]:
            out[i] = intern(v)
    for i in _OWN:
        if v := row[i]:
            out[i] = v
    return out


_ROW_INDEX = {name: i for i, name in enumerate(_FIELDS)}
_PER_MESSAGE = (_METHOD, _URI, _VERSION, _CODE, _REQ_IN, _CLEN, _CHUNKS, _TE, _REQ_LINES,
                _RESP_LINES, _RESP_VERSION, _PHRASE)
_ESCAPED = frozenset({_URI, _REQ_LINES, _RESP_LINES, _PHRASE})
_MULTI_BATCH = 400  # frames per display filter, so the filter text stays short
_MULTI_PASSES = 2  # batches beyond this: one pass over every HTTP frame instead


def _frame_passes(nums: list[int], *, batches_only: bool = False) -> list[str]:
    """Display filters returning at least these frames, one tshark pass over the whole
    capture each: a few batches of frame numbers, or, for many frames (a soak's identical
    keep-alive requests, heavy pipelining), every HTTP frame in one pass, the caller
    keeping those it asked for. Batches alone grew with the square of the capture."""
    if len(nums) > _MULTI_PASSES * _MULTI_BATCH and not batches_only:
        return ["http"]
    return [
        "frame.number in {" + ",".join(map(str, nums[k : k + _MULTI_BATCH])) + "}"
        for k in range(0, len(nums), _MULTI_BATCH)
    ]


def _escape(text: str) -> str:
    """What ``-T fields`` would have printed for a string JSON gives unescaped."""
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _flatten(node: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(node, list):
        for k, v in node:
            if isinstance(v, str):
                out.append((k, v))
            else:
                _flatten(v, out)


def _split_multi(
    pcap: Path, http1_ports: list[int], h2c_ports: list[int],
    multi: dict[int, list[_H1Msg]], warnings: Counter[str], tls_keylog: Path | None = None,
    *, out_of_order: bool = True,
) -> None:
    """Give each message of a frame that carries several (pipelining) its own fields.

    ``-T fields`` joins the messages' fields into one list per field, so header lines
    and body sizes cannot be told apart there; ``-T json`` keeps one ``http`` layer
    per message. Only those frames are dissected again.
    """
    # the scan pass's reassembly settings, or frames would not be dissected the same way
    args = [*decode_as(http1_ports, h2c_ports, tls_keylog, out_of_order=out_of_order),
            "-T", "json", "-J", "frame http"]
    for flt in _frame_passes(sorted(multi)):
        for pkt in _json_packets(pcap, [*args, "-Y", flt]):
            layers = _pairs_get(_pairs_get(pkt, "_source") or [], "layers") or []
            num = int(_pairs_get(_pairs_get(layers, "frame") or [], "frame.number") or 0)
            ms = multi.get(num)
            if ms is None:
                continue  # a frame of a pass over every HTTP frame that carries one message
            http_layers = [v for name, v in layers if name == "http" and isinstance(v, list)]
            if len(http_layers) != len(ms):
                warnings["HTTP/1 frame whose messages could not be split: sizes unknown"] += 1
                for m in ms:
                    m.row, m.unsplit = _one_message_row(m.row, [], m.index, whole=False), True
                continue
            for m, layer in zip(ms, http_layers, strict=True):
                pairs: list[tuple[str, str]] = []
                _flatten(layer, pairs)
                m.row = _one_message_row(m.row, pairs, m.index, whole=True)
    for ms in multi.values():
        for m in ms:
            if len(m.row[_METHOD if m.is_request else _CODE].split(AGG)) > 1:
                # the JSON pass did not return this frame
                warnings["HTTP/1 frame whose messages could not be split: sizes unknown"] += 1
                m.row, m.unsplit = _one_message_row(m.row, [], m.index, whole=False), True


def _one_message_row(
    row: list[str], pairs: list[tuple[str, str]], index: int, *, whole: bool
) -> list[str]:
    """The frame's row with its HTTP fields replaced by one message's."""
    new = list(row)
    if not whole:  # keep only what identifies the message; sizes and headers unknown
        for i in _PER_MESSAGE:
            parts = row[i].split(AGG) if row[i] else []
            keep = i in (_METHOD, _URI, _VERSION, _CODE)
            new[i] = parts[index] if keep and index < len(parts) else ""
        new[_CLEN] = new[_CHUNKS] = new[_TE] = ""
        return new
    got: dict[int, list[str]] = {}
    for key, value in pairs:
        j = _ROW_INDEX.get(key)
        if j is not None and j in _PER_MESSAGE:
            got.setdefault(j, []).append(_escape(value) if j in _ESCAPED else value)
    for i in _PER_MESSAGE:
        new[i] = AGG.join(got.get(i, []))
    return new


_IDENTITY = operator.itemgetter(*(i for i in _PER_MESSAGE if i != _REQ_IN))


def _identity(m: _H1Msg) -> tuple[str, ...]:
    return _IDENTITY(m.row)


def _drop_redissected(msgs: list[_H1Msg], warnings: Counter[str]) -> list[_H1Msg]:
    """Messages TShark 4.0.17 reports twice: when a message that began in a segment
    holding earlier complete messages is reassembled, it dissects that segment's
    earlier messages again in the reassembled frame. They lead its list, equal to
    the messages the earlier frame (one of its segments) reported."""
    by_frame: dict[int, list[_H1Msg]] = {}
    for m in msgs:
        by_frame.setdefault(m.frame, []).append(m)
    drop: set[int] = set()
    for f, ms in by_frame.items():
        segs = ms[0].row[_SEGS]
        if not segs:
            continue
        rest = ms
        for g in sorted({int(x) for x in segs.split(AGG)} - {f}):
            prev = [p for p in by_frame.get(g, []) if p.fr.stream == ms[0].fr.stream
                    and p.is_request == ms[0].is_request]
            n = len(prev)
            if n and len(rest) > n and all(
                _identity(a) == _identity(b) for a, b in zip(prev, rest, strict=False)
            ):
                drop.update(id(x) for x in rest[:n])
                rest = rest[n:]
                rest[0].first_frame = g  # the message that made the reassembly began there
    if drop:
        warnings["HTTP/1 messages Wireshark reported twice (a segment's messages "
                 "dissected again in a later reassembly): repeats dropped"] += len(drop)
    return [m for m in msgs if id(m) not in drop]


def _start_line(m: _H1Msg) -> bytes:
    if m.is_request:
        return f"{_first(m.row[_METHOD])} {unescape(_first(m.row[_URI]))} ".encode("latin-1")
    return f"{_first(m.row[_RESP_VERSION])} {_first(m.row[_CODE])}".encode("latin-1")


def _own_bytes(
    pcap: Path, args: list[str], nums: list[int], *, decrypted: bool
) -> dict[int, bytes]:
    """Each frame's own TCP payload; over TLS its plaintext: the records it decrypts to,
    which only tshark's hex dump of the "Decrypted TLS" data sources shows (no field holds
    them). A frame whose bytes could not be read is absent."""
    payloads: dict[int, bytes] = {}
    if not decrypted:
        wanted = set(nums)
        for flt in _frame_passes(nums):
            stream = TsharkStream(pcap, [*args, "-Y", flt, "-T", "fields", "-e", "frame.number",
                                         "-e", "tcp.payload"])  # fmt: skip
            for line in stream:
                num, _, hexdata = line.partition("\t")
                try:
                    if int(num) in wanted:
                        payloads[int(num)] = bytes.fromhex(hexdata.replace(":", ""))
                except ValueError:
                    continue
        return payloads
    # Decrypted: always by batch, since a pass over every frame's hex dump would hold the
    # whole plaintext at once (TLS runs are short; a TLS soak would need a streamed parse).
    for flt in _frame_passes(nums, batches_only=True):
        # the summary line reduced to the frame number, then each data source's hex dump
        out = run_tshark(pcap, [*args, "-Y", flt, "-o", 'gui.column.format:"No.","%m"', "-P",
                                "-x"])  # fmt: skip
        payloads.update(parse_decrypted_dump(out.stdout))
    return payloads


def parse_decrypted_dump(text: str) -> dict[int, bytes]:
    """Frame number -> the bytes of its "Decrypted TLS (N bytes):" blocks, from
    ``tshark -P -x`` with the number as the only column. A frame without one is absent
    (its bytes unknown: the check then keeps its messages)."""
    out: dict[int, bytes] = {}
    num: int | None = None
    take = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.isdigit():
            num, take = int(stripped), False
        elif stripped.endswith("bytes):"):
            take = num is not None and stripped.startswith("Decrypted TLS (")
            if take and num is not None:
                out.setdefault(num, b"")
        elif take and num is not None and len(line) > 6 and line[4:6] == "  ":
            # "0000  47 45 54 ...   GET ...": 16 bytes of hex in the 47 columns after the offset
            try:
                out[num] += bytes.fromhex(line[6:53])
            except ValueError:
                continue
    return out


def _drop_repeated_reports(
    pcap: Path, http1_ports: list[int], h2c_ports: list[int], msgs: list[_H1Msg],
    warnings: Counter[str], tls_keylog: Path | None = None, *, out_of_order: bool = True,
) -> list[_H1Msg]:
    """Messages TShark 4.0.17 reports again in the frames after theirs, while it waits
    for the rest of a chunked body that began in the same frame: the later frames hold
    only body bytes, yet repeat the earlier frame's messages. A frame whose messages
    repeat the previous report of its stream and direction is checked against its own
    bytes; if the first message's start line is not in them, the earlier report is the
    repeat's original and is dropped (the last report is the most complete), and the
    body size of what is kept is truth_unreliable."""
    last: dict[tuple[int | None, bool], list[_H1Msg]] = {}
    suspects: dict[int, tuple[list[_H1Msg], list[_H1Msg]]] = {}
    by_frame: dict[int, list[_H1Msg]] = {}
    for m in msgs:
        by_frame.setdefault(m.frame, []).append(m)
    for f in sorted(by_frame):
        ms = by_frame[f]
        key = (ms[0].fr.stream, ms[0].is_request)
        prev = last.get(key)
        if prev and len(ms) >= len(prev) and all(
            _identity(a) == _identity(b) for a, b in zip(prev, ms, strict=False)
        ):
            suspects[f] = (prev, ms)
        last[key] = ms
    if tls_keylog is None:  # over TLS a frame's length is its records', not the plaintext's
        suspects = {f: v for f, v in suspects.items() if not _holds_exactly(f, v[1])}
    if not suspects:
        return msgs
    nums = sorted(suspects)
    # Where the first message's start line must be. A message reassembled from segments
    # that all came after the previous report (a server writing headers and body apart:
    # http.server) begins in its own first segment, not in the frame reporting it, which
    # holds only the body's end. A repeat of an earlier report begins no later than it.
    # One begun in the very frame that ended the previous report, when that report began
    # in an earlier frame (two equal uploads back to back: the first's body ends and the
    # second begins in one segment), is new if its start line is there (the previous
    # one's is not: it is in that one's own first segment).
    where = {f: g if (g := ms[0].first_frame) > prev[-1].frame
             or (g == prev[-1].frame and prev[-1].first_frame < g) else f
             for f, (prev, ms) in suspects.items()}
    # as the scan pass reassembled: with out-of-order reassembly on a capture begun
    # mid-connection this pass ran 84+ CPU-s where the scan took a few
    args = decode_as(http1_ports, h2c_ports, tls_keylog, out_of_order=out_of_order)
    payloads = _own_bytes(pcap, args, sorted(set(where.values())),
                          decrypted=tls_keylog is not None)  # fmt: skip
    drop: set[int] = set()
    for f in reversed(nums):  # the last report of a run survives
        prev, ms = suspects[f]
        g = where[f]
        if g not in payloads or _start_line(ms[0]) in payloads[g]:
            continue  # its own bytes hold the message: a genuine repeat of the traffic
        drop.update(id(x) for x in prev)
        for x in ms[: len(prev)]:
            x.repeated = True  # its body size is not to be trusted
    if drop:
        warnings["HTTP/1 messages Wireshark reported again in later frames (a chunked "
                 "body being reassembled): earlier reports dropped"] += len(drop)
    return [m for m in msgs if id(m) not in drop]


_HEADER_SETS = 4096


class _HeaderDicts(dict[str, dict[str, str]]):
    """Header lines (one string, shared by the messages that repeat them) -> their dict,
    parsed once and shared by those exchanges (read only from here on)."""

    def __missing__(self, lines: str) -> dict[str, str]:
        if len(self) >= _HEADER_SETS:  # one per request (an id header): forget, not grow
            self.clear()
        d = self[lines] = _headers(lines)
        return d


def _h1_protocol(version: str) -> str:
    """An exchange's protocol from a start line's version (HTTP/1.1 if it says neither)."""
    return version.lower() if version.upper() in ("HTTP/1.0", "HTTP/1.1") else "http/1.1"


def _new_request(m: _H1Msg, times: array[int], seq: int, hd: _HeaderDicts) -> Exchange:
    row, fr = m.row, m.fr
    x = Exchange(
        source="truth", side="wire", protocol=_h1_protocol(_first(row[_VERSION])),
        client_ip=fr.src, client_port=fr.sport, server_ip=fr.dst, server_port=fr.dport,
        conn_seq=seq, method=_first(row[_METHOD]), path=unescape(_first(row[_URI])) or None,
        t_start_ns=_request_start(m, times),
        conn_id=f"tcp.stream={fr.stream}",
    )
    if not m.unsplit:
        x.req_headers = hd[row[_REQ_LINES]]
        x.authority = x.req_headers.get("host")
        x.req_bytes = _body_size(row, head_or_no_body=False) or 0
    return x


def _apply_response(
    x: Exchange, m: _H1Msg, warnings: Counter[str], hd: _HeaderDicts
) -> None:
    row = m.row
    x.status = int(_first(row[_CODE]))
    x.t_end_ns = m.fr.t_ns
    if m.unsplit or m.repeated:  # sizes shared with the frame's others, or doubtful
        if m.repeated:
            x.resp_headers = hd[row[_RESP_LINES]]
        x.degrade("resp_bytes", TRUTH_UNRELIABLE)
        return
    x.resp_headers = hd[row[_RESP_LINES]]
    try:
        x.resp_bytes = _body_size(
            row, head_or_no_body=x.method == "HEAD" or x.status in NO_BODY_STATUS
            or x.status == 101,
        )
    except ValueError:  # several lengths for one message: the dissector lost the framing
        warnings["HTTP/1 response with several Content-Length values: size unknown"] += 1
        x.degrade("resp_bytes", TRUTH_UNRELIABLE)
        return
    if x.resp_bytes is None and m.index == 0:
        x.resp_bytes = _close_delimited_size(row)
    if x.resp_bytes is None:
        warnings["HTTP/1 response without Content-Length or chunking: body size unknown"] += 1


def _answers_earlier(resp: _H1Msg, req: _H1Msg) -> bool:
    """Whether ``resp`` left the server before it had any byte of ``req`` (its ACK does not
    reach the request's first byte): it answers an earlier request, one sent before the
    capture began. Judged only for a request in one segment (an early answer to an upload
    may precede the request's last segment, never its first)."""
    if req.first_frame != req.frame:
        return False
    ack, seq = _int(_first(resp.row[_ACK_RAW])), _int(_first(req.row[_SEQ_RAW]))
    if ack is None or seq is None:
        return False
    return (seq - ack) % (1 << 32) < (1 << 31)  # seq at or after ack, modulo wrap-around


def _pair_http1(
    msgs: list[_H1Msg], times: array[int], server_data: dict[int | None, int],
    stats: TruthStats, warnings: Counter[str],
    client_runs: dict[int | None, _Runs] | None = None,
) -> list[tuple[Exchange, int, int]]:
    """The exchanges of whole streams' messages (already repaired), with their request's
    frame and index: each stream summarised, then paired."""
    msgs = sorted(msgs, key=lambda m: (m.frame, m.index))
    streams: dict[int | None, _H1Stream] = {}
    for m in msgs:
        st = streams.get(m.fr.stream)
        if st is None:
            st = streams[m.fr.stream] = _H1Stream()
        st.add(m)
    for st in streams.values():
        st.finish()
    pairer = _H1Pairer(streams, times, server_data, stats, warnings, client_runs)
    for m in msgs:
        pairer.feed(m)
    return pairer.take()


@dataclass(slots=True)
class _Pairing:
    """One TCP stream while it is paired: its requests waiting for their response, and
    the responses waiting until every request that could precede them has been read."""

    info: _H1Stream
    answered: int  # requests that get a response
    cut: int  # requests from here on follow a protocol switch (101): not HTTP
    broken: bool
    lost: int = 0  # final responses after the answered ones that answer requests never decoded
    fed: int = 0
    nreq: int = 0
    nresp: int = 0  # final responses read, leads included
    pending: deque[tuple[_H1Msg, Exchange]] = field(default_factory=deque)
    resps: deque[_H1Msg] = field(default_factory=deque)
    done: int = 0  # responses paired so far: the index of the next request to answer
    # first frame and HEAD-ness of each request from index ff_base on: the pipelined HEAD
    # check needs the latest request begun before a response's frame
    ffs: list[tuple[int, bool]] = field(default_factory=list)
    ff_base: int = 0
    latest: int = -1
    latest_head: bool = False


class _H1Pairer:
    """Requests become exchanges; each TCP stream's final responses answer them in order.

    Fed every message of the streams it was given, in frame order; ``take`` returns what is
    finished (exchange, its request's frame, its index in that frame). A response is paired
    once no request it might follow can come any more (``lag`` frames after its own), so
    the pairing is the whole-stream one, read once.

    A request left without a response although the server sent bytes after it is one
    whose response Wireshark did not decode: TShark 4.0.17 frames a pipelined HEAD
    response by the latest request's method, takes its Content-Length for a body and
    swallows the responses behind it. Those exchanges are truth_unreliable, not unanswered.

    More final responses than requests, with client bytes after the last reported request
    that no request was reported from (``client_runs``): Wireshark waits for a body that
    never comes (``Expect: 100-continue`` answered at once, e.g. 405, and the client
    closes). The server answers in order, so the responses after those of the decoded
    requests answer the requests begun there: exchanges of their own (``_lost``).
    """

    def __init__(
        self, streams: dict[int | None, _H1Stream], times: array[int],
        server_data: dict[int | None, int], stats: TruthStats, warnings: Counter[str],
        client_runs: dict[int | None, _Runs] | None = None,
    ) -> None:
        self.streams, self.times, self.server_data = streams, times, server_data
        self.client_runs = client_runs or {}
        self.stats, self.warnings = stats, warnings
        self.state: dict[int | None, _Pairing] = {}
        self.open: set[int | None] = set()  # streams with requests waiting for a response
        self.out: list[tuple[Exchange, int, int]] = []
        self.hd = _HeaderDicts()

    def take(self) -> list[tuple[Exchange, int, int]]:
        out, self.out = self.out, []
        return out

    def held(self) -> tuple[int, int]:
        """How many requests wait for their response, and the earliest start among them."""
        starts = [x.t_start_ns or 0 for s in self.open for _, x in self.state[s].pending]
        return len(starts), min(starts, default=_NEVER)

    def _start(self, stream: int | None) -> _Pairing:
        info = self.streams[stream]
        rs, nreq = info.finals - info.lead, info.requests
        warnings, stats = self.warnings, self.stats
        if info.lead:
            warnings["HTTP/1 responses to requests sent before the capture began: not "
                     "exchanges of the capture, dropped"] += info.lead
            stats.unpaired_responses += info.lead
        # once a pairing is doubtful, so is every later one on the stream; more responses
        # than requests means Wireshark lost a request somewhere: all of them are doubtful,
        # unless the lost ones began after the last decoded request (client bytes no request
        # was reported from) and the extra responses all came after those bytes began: then
        # they are the last ones answered
        runs = self.client_runs.get(stream)
        lost = rs - nreq if rs > nreq and info.switch_at is None and runs is not None and \
            runs.answers >= rs - nreq else 0
        broken = rs > nreq and not lost
        if broken:
            warnings["HTTP/1 connection with more responses than requests decoded: "
                     "marked truth_unreliable"] += 1
        if info.switch_at is not None and info.switch_at < nreq:
            # the rest of the stream is another protocol, whatever was dissected in it
            answered = cut = info.switch_at + 1
            stats.unpaired_responses += rs - cut
            if nreq > cut:
                warnings["HTTP/1 'requests' after a protocol switch (101): not HTTP, "
                         "dropped"] += nreq - cut
        else:
            answered, cut = min(rs, nreq), nreq
            stats.unpaired_responses += max(0, rs - nreq - lost)
        p = self.state[stream] = _Pairing(info, answered, cut, broken, lost)
        return p

    def feed(self, m: _H1Msg) -> None:
        stream = m.fr.stream
        p = self.state.get(stream) or self._start(stream)
        p.fed += 1
        if m.is_request:
            idx = p.nreq
            p.nreq += 1
            p.ffs.append((m.first_frame, m.row[_METHOD] == "HEAD"))
            if idx < p.cut:
                x = _new_request(m, self.times, idx, self.hd)
                if idx < p.answered:
                    p.pending.append((m, x))
                    self.open.add(stream)
                else:
                    self._unanswered(m, x)
        elif not _interim(m):
            k = p.nresp - p.info.lead
            p.nresp += 1
            if 0 <= k < p.answered:
                p.resps.append(m)
            elif p.lost and k >= p.answered:
                self._lost(p, m, k - p.answered)
        end = p.fed == p.info.messages
        while p.resps and p.nreq > p.done and (end or p.resps[0].frame + p.info.lag < m.frame):
            self._pair(p, p.resps.popleft())
        if not p.pending:
            self.open.discard(stream)
        if end:
            del self.state[stream]

    def _lost(self, p: _Pairing, m: _H1Msg, j: int) -> None:
        """Final response ``m``, the ``j``-th after those of the decoded requests: the
        exchange of a request Wireshark never reported, begun at the ``j``-th run of client
        bytes after the last decoded request (the last run before ``m`` if there are fewer:
        several requests in one write). Its request's fields are truth_unreliable."""
        stream = m.fr.stream
        runs = [f for f in self.client_runs[stream].frames if f < m.frame]
        if not runs:  # no client bytes before it: it answers nothing seen (a 408)
            self.stats.unpaired_responses += 1
            return
        f = runs[min(j, len(runs) - 1)]
        self.warnings["HTTP/1 responses to requests Wireshark did not decode (client bytes "
                      "after the last decoded request): the request's fields "
                      "truth_unreliable"] += 1
        x = Exchange(
            source="truth", side="wire", protocol=_h1_protocol(_first(m.row[_RESP_VERSION])),
            client_ip=m.fr.dst, client_port=m.fr.dport, server_ip=m.fr.src,
            server_port=m.fr.sport, conn_seq=p.cut + j, t_start_ns=self.times[f],
            conn_id=f"tcp.stream={stream}",
        )
        for name in _H1_REQUEST_FIELDS:
            x.degrade(name, TRUTH_UNRELIABLE)
        _apply_response(x, m, self.warnings, self.hd)
        # (frame, index): a frame no request was reported in, so no decoded exchange's key
        self.out.append((x, f, 1 + j))

    def _unanswered(self, req: _H1Msg, x: Exchange) -> None:
        if req.first_frame < self.server_data.get(req.fr.stream, 0):
            self.warnings["HTTP/1 requests whose responses Wireshark did not decode although "
                          "the server sent data after them: marked truth_unreliable"] += 1
            for f in _H1_RESPONSE_FIELDS:
                x.degrade(f, TRUTH_UNRELIABLE)
        self._emit(req, x)

    def _emit(self, req: _H1Msg, x: Exchange) -> None:
        if len(x.req_headers) == 0 and x.req_bytes is None:
            x.degrade("req_bytes", TRUTH_UNRELIABLE)
        if x.status is None:
            self.stats.unpaired_requests += 1
        self.out.append((x, req.frame, req.index))

    def _pair(self, p: _Pairing, m: _H1Msg) -> None:
        k = p.done
        p.done += 1
        req, x = p.pending.popleft()
        warnings = self.warnings
        # request_in is only worth checking when this request was the one outstanding:
        # under pipelining TShark 4.0.17 points responses at the latest request frame
        req_in = _int(_first(m.row[_REQ_IN]))
        nxt = k + 1 - p.ff_base
        # a request not read yet began after this response's frame (it is ``lag`` behind)
        alone = k + 1 >= p.info.requests or nxt >= len(p.ffs) or p.ffs[nxt][0] > m.frame
        # (frame order is no causality check: dumpcap on loopback can record a
        # later segment first, and TShark 4.0.17 dissects some retransmissions)
        if alone and req_in is not None and req_in != req.frame:
            if not p.broken:
                warnings["HTTP/1 response that in-order pairing and Wireshark's "
                         "request_in disagree on: marked truth_unreliable"] += 1
            p.broken = True
        # the latest request begun at or before the response's frame; later responses
        # only move it on, so the requests before it are not looked at again
        for j in range(len(p.ffs) - 1, p.latest - p.ff_base, -1):
            if p.ffs[j][0] <= m.frame:
                p.latest, p.latest_head = j + p.ff_base, p.ffs[j][1]
                break
        latest_head = p.latest_head if p.latest >= 0 else req.row[_METHOD] == "HEAD"
        if not alone and not p.broken and latest_head != (x.method == "HEAD"):
            # TShark 4.0.17 frames a response by the method of the latest request,
            # not of the one it answers: where one is HEAD and the other not, it
            # reads a body that is not there (or misses one) and loses the stream
            warnings["pipelined HEAD: Wireshark frames the responses by the wrong "
                     "request from here on; marked truth_unreliable"] += 1
            p.broken = True
        _apply_response(x, m, warnings, self.hd)
        if p.broken:
            for f in _H1_RESPONSE_FIELDS:
                x.degrade(f, TRUTH_UNRELIABLE)
        self._emit(req, x)
        drop = min(k + 2, p.latest + 1) - p.ff_base
        if drop > 256:  # what no later response looks at
            del p.ffs[:drop]
            p.ff_base += drop


# -- HTTP/2 --------------------------------------------------------------------


@dataclass(slots=True)
class _Call:
    """One HTTP/2 stream while its frames are being collected."""

    x: Exchange
    req_header_blocks: int = 0
    resp_header_blocks: int = 0
    data_bytes: list[int] = field(default_factory=lambda: [0, 0])  # client->server, server->client
    grpc_bytes: list[int] = field(default_factory=lambda: [0, 0])
    grpc_msgs: list[int] = field(default_factory=lambda: [0, 0])
    ended: list[bool] = field(default_factory=lambda: [False, False])
    # header blocks with fields Wireshark could not resolve (by direction: req, resp)
    hpack_unknown: list[bool] = field(default_factory=lambda: [False, False])
    # a header block's fields while its HEADERS + CONTINUATION frames come in, per direction:
    # Wireshark decodes each fragment apart (a block over 16 KiB spans several frames)
    open_block: list[list[tuple[str, str]] | None] = field(default_factory=lambda: [None, None])
    open_len: list[int] = field(default_factory=lambda: [0, 0])  # the open block's bytes
    undecoded: list[bool] = field(default_factory=lambda: [False, False])  # a block Wireshark
    # could not decode (e.g. its HPACK table out of step): that side's header fields unknown
    rst: tuple[int, int] | None = None  # the first RST_STREAM's (error code, time)
    # the server's header block came after the client's reset: the client discarded it,
    # so its grpc-status is the server's, not the one the client saw
    crossed_reset: bool = False
    rst_by_client: bool = False
    order: int = -1  # among the calls the client began (-1: an orphan, never a truth call)
    over: bool = False  # ended both ways or reset: handed on once the grace has passed


def _pairs_get(pairs: list[tuple[str, Any]], key: str) -> Any:
    for k, v in pairs:
        if k == key:
            return v
    return None


def _h2_headers(stream: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for k, v in stream:
        if k == "http2.header" and isinstance(v, list):
            name = _pairs_get(v, "http2.header.name")
            if name is not None:
                out.append((name, _pairs_get(v, "http2.header.value") or ""))
    return out


def _h2_streams(layer: Any) -> list[list[tuple[str, Any]]]:
    return [v for k, v in layer if k == "http2.stream" and isinstance(v, list)] \
        if isinstance(layer, list) else []


END_HEADERS = 0x4


def _joined(hdrs: list[tuple[str, str]]) -> dict[str, str]:
    """Fields of one name joined with ", " in order, as both collectors do (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    for n, v in hdrs:
        out[n] = f"{out[n]}, {v}" if n in out else v
    return out


def _apply_headers(call: _Call, to_server: bool, hdrs: list[tuple[str, str]]) -> None:
    x = call.x
    if any(n == "<unknown>" for n, _ in hdrs):
        # an HPACK index into a dynamic table filled before the capture began
        call.hpack_unknown[0 if to_server else 1] = True
    regular = _joined([(n, v) for n, v in hdrs if not n.startswith(":") and n != "<unknown>"])
    pseudo = _joined([(n, v) for n, v in hdrs if n.startswith(":")])
    if to_server:
        if call.req_header_blocks == 0:
            x.method = pseudo.get(":method")
            x.path = pseudo.get(":path")
            x.authority = pseudo.get(":authority")
            x.req_headers = regular
            if regular.get("content-type", "").startswith("application/grpc"):
                x.protocol = "h2c-grpc"
        else:
            x.trailers.update(regular)  # request trailers are rare; kept with the rest
        call.req_header_blocks += 1
        return
    if call.resp_header_blocks == 0 and ":status" in pseudo:
        x.status = int(pseudo[":status"])
        x.resp_headers = regular
        if "grpc-status" in regular:  # trailers-only response
            x.trailers = {k: v for k, v in regular.items() if k.startswith("grpc-")}
    else:
        x.trailers.update(regular)
    call.resp_header_blocks += 1
    status = x.trailers.get("grpc-status")
    if status is not None and status.isdigit():
        x.grpc_status = int(status)
    if "grpc-message" in x.trailers:
        x.grpc_message = unquote(x.trailers["grpc-message"])


# A call is handed on this long (of capture time) after it ended, so that what follows its
# end still finds it: a reset after both END_STREAMs, the server's header block crossing the
# client's reset. The kernel-side stitcher waits as long (HEAD_UNSEEN_GRACE_NS).
_H2_GRACE_NS = 1_000_000_000
_H2_SPILL_BATCH = 2048  # calls per marshal record of the spill


class _H2Calls:
    """The HTTP/2 calls of a capture while its packets' frames are applied, in frame order
    (``advance`` to each packet's time, then ``frame`` for each of its frames).

    A call is handed on, finished and spilled (``spill``: its start, its ``order`` and the
    Exchange), once it has ended, both ways or by a reset, and the capture's time has moved
    _H2_GRACE_NS past that; what is held is the calls open or within the grace, not the
    recording's. Its stream id is then remembered per TCP stream (``handed``), so that a
    later frame of it is not taken for a new call: such a frame is counted and warned
    about, not applied. ``finish`` hands on the calls still open at the end."""

    def __init__(self, h2c_ports: list[int], stats: TruthStats) -> None:
        self.servers = set(h2c_ports)
        self.stats = stats
        self.calls: dict[tuple[int, int], _Call] = {}
        self.created = 0  # calls the client began: their order breaks ties of start time
        self.ended: deque[tuple[int, tuple[int, int]]] = deque()  # (time it ended, call)
        self.handed: dict[int, IdSet] = {}  # tcp.stream -> stream ids handed on
        self.grace = _H2_GRACE_NS
        self.now = -1  # the capture's time: the latest packet's (frames can step back)
        self.spill = _Spill(_dump_calls, _CallLoader(), _H2_SPILL_BATCH)
        self.unended: list[tuple[int, int, Exchange]] = []  # (see finish)

    def close(self) -> None:
        self.spill.close()
        self.calls.clear()
        self.ended.clear()

    def advance(self, t_ns: int) -> None:
        """The next packet's time: the calls that ended a grace before it are handed on."""
        if t_ns > self.now:
            self.now = t_ns
        ended, limit = self.ended, self.now - self.grace
        while ended and ended[0][0] < limit:
            key = ended.popleft()[1]
            stream, sid = key
            ids = self.handed.get(stream)
            if ids is None:
                ids = self.handed[stream] = IdSet()
            ids.add(sid)
            self._spill(self.calls.pop(key))

    def frame(
        self, fr: _Frame, ftype: int | None, sid: int | None, end_stream: bool,
        headers: list[tuple[str, str]] | None, data_len: int,
        end_headers: bool = True, length: int = 0, rst_code: int | None = None,
    ) -> _Call | None:
        """One HTTP/2 frame of packet ``fr``; the call it belongs to (None: not a call's).

        ``data_len``: a DATA frame's length less its padding. ``end_headers`` and
        ``length``: a HEADERS or CONTINUATION frame's flag and payload length.
        ``rst_code``: a RST_STREAM frame's error code."""
        if not sid or ftype not in (0, 1, 3, 9):  # DATA, HEADERS, RST_STREAM, CONTINUATION
            return None
        to_server = fr.dport in self.servers
        d = 0 if to_server else 1
        assert fr.stream is not None
        key = (fr.stream, sid)
        call = self.calls.get(key)
        if call is None:
            if (ids := self.handed.get(fr.stream)) is not None and sid in ids:
                self.stats.h2_late_frames += 1
                self.stats.warn("HTTP/2 frame of a call handed on (a grace after it ended): "
                                "not applied")  # fmt: skip
                # the packet's gRPC messages that follow it go with it, to no call
                return _Call(Exchange(source="truth", side="wire", protocol="h2c"))
            if not to_server:
                self.stats.unpaired_responses += 1
                self.calls[key] = call = _Call(Exchange(source="truth", side="wire",
                                                        protocol="h2c"))
                call.x.conn_id = "orphan"
            else:
                x = Exchange(
                    source="truth", side="wire", protocol="h2c",
                    client_ip=fr.src, client_port=fr.sport, server_ip=fr.dst,
                    server_port=fr.dport, stream_id=sid, t_start_ns=fr.t_ns,
                    conn_id=f"tcp.stream={fr.stream}",
                )
                self.calls[key] = call = _Call(x, order=self.created)
                self.created += 1
            if len(self.calls) > self.stats.h2_held_peak:
                self.stats.h2_held_peak = len(self.calls)
        if end_stream:
            call.ended[d] = True
            if call.ended[1 - d] and not call.over:
                self._over(call, key)
        if ftype in (1, 9):
            if not to_server and call.rst is not None and call.rst_by_client:
                call.crossed_reset = True
            block = call.open_block[d]
            if ftype == 1 or block is None:
                block = call.open_block[d] = []
                call.open_len[d] = 0
            block += headers or []
            call.open_len[d] += length
            if end_headers:
                call.open_block[d] = None
                if block:
                    _apply_headers(call, to_server, block)
                elif call.open_len[d] > 9:  # more than padding and priority fields
                    call.undecoded[d] = True
        elif ftype == 0:
            call.data_bytes[d] += data_len
        elif ftype == 3 and call.rst is None and rst_code is not None:
            call.rst = (rst_code, fr.t_ns)
            call.rst_by_client = to_server
            if not call.over:
                self._over(call, key)
        if (not to_server and call.x.conn_id != "orphan") or ftype == 3:
            call.x.t_end_ns = fr.t_ns  # last server frame, or a reset from either side
        return call

    def _over(self, call: _Call, key: tuple[int, int]) -> None:
        """The call has ended (both ways, or reset): handed on once the grace has passed."""
        call.over = True
        self.ended.append((self.now, key))

    def grpc_message(self, fr: _Frame, call: _Call | None, length: int) -> None:
        if call is None:
            self.stats.warn("gRPC message not attributable to an HTTP/2 stream")
            return
        d = 0 if fr.dport in self.servers else 1
        call.grpc_msgs[d] += 1
        call.grpc_bytes[d] += length

    def _spill(self, call: _Call) -> None:
        if call.order < 0:
            return  # an orphan: its frames are absorbed, it is no call of the truth
        x = _finish_call(call, self.stats)
        start = x.t_start_ns or 0
        self.spill.buf.append((start, call.order, x))
        self.spill.added(start)

    def finish(self) -> _H2Calls:
        """The capture has ended: the calls that ended within the grace are spilled; those
        that never ended (a response Wireshark did not decode, a call the capture's end cut
        off) are finished into ``unended``, not spilled: the early start of one would hold
        the spill's watermark back until its last record, and the merge with it."""
        for call in self.calls.values():
            if call.over:
                self._spill(call)
            elif call.order >= 0:
                x = _finish_call(call, self.stats)
                self.unended.append((x.t_start_ns or 0, call.order, x))
        self.calls.clear()
        self.ended.clear()
        self.spill.flush()
        self.stats.h2_spill_bytes += self.spill.bytes
        return self


# The spill holds a call as (start, order, its Exchange's fields, its degradations as pairs):
# marshal, a third of pickle's time (which pickles each Degradation through its slots: a
# call on a connection begun before the capture has eight).
_EXCHANGE_FIELDS = tuple(f.name for f in dataclasses.fields(Exchange))
assert _EXCHANGE_FIELDS[-1] == "degraded"
_EXCHANGE_ROW = operator.attrgetter(*_EXCHANGE_FIELDS[:-1])
_DEGRADATIONS = 1024  # distinct lists of degradations shared on load


def _dump_calls(calls: list[tuple[int, int, Exchange]]) -> bytes:
    return marshal.dumps([
        (start, order, _EXCHANGE_ROW(x), tuple([(d.field, d.reason) for d in x.degraded]))
        for start, order, x in calls
    ])  # fmt: skip


class _CallLoader:
    """A spill record of calls back to (start, order, Exchange). Degradations are frozen:
    the calls with the same ones (most of a capture's: e.g. those of a connection begun
    before it) share them, made once."""

    def __init__(self) -> None:
        self.known: dict[tuple[tuple[str, str], ...], tuple[Degradation, ...]] = {}

    def __call__(self, blob: bytes) -> list[tuple[int, int, Exchange]]:
        known, out = self.known, []
        for start, order, row, pairs in marshal.loads(blob):
            x = Exchange(*row)
            if pairs:
                ds = known.get(pairs)
                if ds is None:
                    if len(known) >= _DEGRADATIONS:
                        known.clear()
                    ds = known[pairs] = tuple(Degradation(*p) for p in pairs)
                x.degraded = list(ds)
            out.append((start, order, x))
        return out


def _finish_call(call: _Call, stats: TruthStats) -> Exchange:
    """A call's Exchange once no frame of it is to come: what its frames left open or
    undecoded marked, its gRPC or body counts and reset status settled."""
    x = call.x
    for d, fields in ((0, ("method", "path", "authority", "req_headers")),
                      (1, ("status", "resp_headers", "grpc_status", "grpc_message"))):
        if call.undecoded[d]:
            stats.warn("HTTP/2 header block Wireshark decoded no field of")
            for f in fields:
                x.degrade(f, TRUTH_UNRELIABLE)
    for d, side in ((0, "req"), (1, "resp")):
        block = call.open_block[d]
        if block is not None:
            # a block whose END_HEADERS Wireshark never decoded: its fields are partial
            stats.warn("HTTP/2 header block without END_HEADERS")
            x.degrade(f"{side}_headers", TRUTH_UNRELIABLE)
            if block:
                _apply_headers(call, d == 0, block)
    if x.protocol == "h2c-grpc":
        x.req_messages, x.resp_messages = call.grpc_msgs
        x.req_bytes, x.resp_bytes = call.grpc_bytes
        for d, label in ((0, "request"), (1, "response")):
            if call.data_bytes[d] != call.grpc_bytes[d] + 5 * call.grpc_msgs[d]:
                stats.warn(f"gRPC {label} messages do not add up to the DATA bytes")
                # Wireshark lost part of this body (e.g. a segment it did not
                # reassemble): its counts are no truth to score a collector against
                side = "req" if d == 0 else "resp"
                x.degrade(f"{side}_messages", TRUTH_UNRELIABLE)
                x.degrade(f"{side}_bytes", TRUTH_UNRELIABLE)
    else:
        x.req_bytes, x.resp_bytes = call.data_bytes
    if call.crossed_reset and x.grpc_status is not None:
        for f in ("grpc_status", "grpc_message"):
            x.degrade(f, TRUTH_UNRELIABLE)
    elif x.protocol == "h2c-grpc" and x.grpc_status is None and call.rst is not None:
        code, t_ns = call.rst
        apply_reset_status(x, code, t_ns - (x.t_start_ns or t_ns),
                           TRUTH_HPACK_UNKNOWN if call.hpack_unknown[0] else
                           TRUTH_UNRELIABLE if call.undecoded[0] else None)
    _truth_blind(call)
    if x.status is None:
        stats.unpaired_requests += 1
        if x.conn_id != "orphan":
            # Wireshark decoded no response for it (it lost the stream, e.g. after a
            # segment it did not reassemble): the response's counts are unknown, not 0
            x.resp_bytes = x.resp_messages = None
            for f in ("resp_bytes", "resp_messages"):
                x.degrade(f, TRUTH_UNRELIABLE)
    return x


class _H2Fields:
    """HTTP/2 calls from the scan pass's flattened fields, while tshark still decodes.

    ``-T fields`` lists each field over all of a packet's frames. Frame type, stream id,
    length and flags occur once per frame, so they line up; header fields line up with
    ``http2.header.count`` (one per header block). Whatever cannot be lined up for sure
    (CONTINUATION or PUSH_PROMISE frames, padding, gRPC messages in a packet that carries
    DATA of several streams, counts that do not add up) sets ``unsure``: the caller then
    decodes the capture's HTTP/2 with the JSON pass instead. The JSON pass writes some
    10 KB per packet on a busy h2c capture (gigabytes), this one a few hundred bytes.
    """

    def __init__(self, calls: _H2Calls) -> None:
        self.h2 = calls
        self.unsure: str | None = None

    def packet(self, row: list[str], fr: _Frame) -> None:
        if self.unsure is None:
            self.unsure = self._packet(row, fr)
            if self.unsure is not None:
                self.h2.close()  # the JSON pass decodes every call again

    def _packet(self, row: list[str], fr: _Frame) -> str | None:
        """The packet's frames applied; or why they cannot be lined up."""
        types = row[_H2_TYPE].split(AGG)
        sids = row[_H2_SID].split(AGG)
        lens = row[_H2_LEN].split(AGG)
        flags = row[_H2_FLAGS].split(AGG)
        if not len(types) == len(sids) == len(lens) == len(flags) or fr.stream is None:
            return "HTTP/2 frame fields do not line up"
        counts = [int(c) for c in row[_H2_HCOUNT].split(AGG)] if row[_H2_HCOUNT] else []
        names = row[_H2_NAMES].split(AGG) if row[_H2_NAMES] else []
        values = row[_H2_VALUES].split(AGG) if row[_H2_NAMES] else []
        if len(names) != len(values) or sum(counts) != len(names):
            return "HTTP/2 header fields do not line up"
        ints = [(int(t), int(sid), int(n), int(f, 16)) for t, sid, n, f in
                zip(types, sids, lens, flags, strict=True)]
        blocks = sum(1 for t, *_ in ints if t in (1, 5, 9))
        if any(t in (5, 9) for t, *_ in ints) or blocks != len(counts):
            return "HTTP/2 header blocks do not line up with their frames"
        if any(t in (0, 1) and f & 0x08 for t, _, _, f in ints):
            return "padded HTTP/2 frames"
        grpc = [int(n) for n in row[_GRPC_LEN].split(AGG)] if row[_GRPC_LEN] else []
        if grpc and len({sid for t, sid, _, _ in ints if sid and t in (0, 1, 3, 9)}) > 1:
            return "gRPC messages in a packet with several streams' frames"
        rsts = [int(c) for c in row[_H2_RST].split(AGG)] if row[_H2_RST] else []
        if len(rsts) != sum(1 for t, *_ in ints if t == 3):
            return "RST_STREAM error codes do not line up with their frames"
        rsts.reverse()
        self.h2.advance(fr.t_ns)
        block = pos = 0
        last: _Call | None = None
        for ftype, sid, length, fl in ints:
            headers = None
            if ftype == 1:
                n = counts[block]
                block += 1
                headers = [(unescape(names[i]), unescape(values[i]))
                           for i in range(pos, pos + n)]
                pos += n
            call = self.h2.frame(fr, ftype, sid, ftype in (0, 1) and bool(fl & 0x01),
                                 headers, length, bool(fl & END_HEADERS), length,
                                 rsts.pop() if ftype == 3 else None)
            if call is not None:
                last = call
        for n in grpc:
            self.h2.grpc_message(fr, last, n)
        return None


def _json_packets(pcap: Path, args: list[str]) -> Iterator[list[tuple[str, Any]]]:
    """tshark's ``-T json`` output, one packet at a time (the whole array can be gigabytes)."""
    tshark = TsharkStream(pcap, args)
    buf: list[str] = []
    for line in tshark:
        if line == "  {":
            buf = [line]
        elif buf:
            if line in ("  }", "  },"):
                buf.append("  }")
                try:
                    yield json.loads("".join(buf), object_pairs_hook=list)
                except json.JSONDecodeError as e:
                    raise CaptureError(f"tshark's JSON for {pcap} does not parse: {e}") from e
                buf = []
            else:
                buf.append(line)


def _h2(
    pcap: Path, h2c_ports: list[int], frames: _Frames, stats: TruthStats,
    http1_ports: list[int], tls_keylog: Path | None = None,
) -> _H2Calls:
    """The HTTP/2 calls from a ``-T json`` pass over the HTTP/2 frames, handed on as the
    fields route hands them on (see _H2Calls)."""
    args = [*decode_as(http1_ports, h2c_ports, tls_keylog, out_of_order=stats.out_of_order),
            "-Y", "http2", "-T", "json",
            "-J", "frame http2 grpc"]
    h2 = _H2Calls(h2c_ports, stats)
    for pkt in _json_packets(pcap, args):
        layers = _pairs_get(_pairs_get(pkt, "_source") or [], "layers") or []
        frame_layer = _pairs_get(layers, "frame") or []
        num = int(_pairs_get(frame_layer, "frame.number") or 0)
        fr = frames.get(num)
        if fr is None or fr.stream is None:
            stats.warn("HTTP/2 frame missing from the scan pass")
            continue
        h2.advance(fr.t_ns)
        last: _Call | None = None
        for name, layer in layers:
            if name == "grpc" and isinstance(layer, list):
                length = _pairs_get(layer, "grpc.message_length")
                h2.grpc_message(fr, last, int(length or 0))
                continue
            if name != "http2":
                continue
            for st in _h2_streams(layer):
                ftype = _int(_pairs_get(st, "http2.type") or "")
                sid = _int(_pairs_get(st, "http2.streamid") or "")
                flags = _pairs_get(st, "http2.flags_tree") or []
                data_len = 0
                if ftype == 0:
                    length = int(_pairs_get(st, "http2.length") or 0)
                    pad = _pairs_get(st, "http2.pad_length")
                    padded = _pairs_get(flags, "http2.flags.padded") == "1"
                    data_len = length - ((int(pad or 0) + 1) if padded else 0)
                call = h2.frame(
                    fr, ftype, sid, _pairs_get(flags, "http2.flags.end_stream") == "1",
                    _h2_headers(st) if ftype in (1, 9) else None, data_len,
                    bool(int(_pairs_get(st, "http2.flags") or "0", 16) & END_HEADERS),
                    int(_pairs_get(st, "http2.length") or 0),
                    _int(_pairs_get(st, "http2.rst_stream.error") or "") if ftype == 3 else None,
                )  # fmt: skip
                if call is not None:
                    last = call
    return h2.finish()


def _truth_blind(call: _Call) -> None:
    """A stream on a connection whose start the capture missed (Wireshark's HPACK table is
    empty): what its header blocks could not name is unknown to the truth, not absent."""
    x = call.x
    if call.hpack_unknown[0]:
        for f in ("method", "path", "authority", "req_headers"):
            if f == "req_headers" or getattr(x, f) is None:
                x.degrade(f, TRUTH_HPACK_UNKNOWN)
    if call.hpack_unknown[1] and x.grpc_status is None:
        for f in ("grpc_status", "grpc_message"):
            x.degrade(f, TRUTH_HPACK_UNKNOWN)
    if any(call.hpack_unknown) and x.protocol != "h2c-grpc":
        # gRPC or not is unknown (content-type unresolved): so is what the body sizes count
        for f in ("req_bytes", "resp_bytes", "req_messages", "resp_messages"):
            x.degrade(f, TRUTH_HPACK_UNKNOWN)


@dataclass(slots=True)
class TruthBatch:
    """Truth exchanges in order of start time (ties in the order the requests were
    reported); ``watermark_ns``: no exchange of a later batch starts before it."""

    exchanges: list[Exchange]
    watermark_ns: int


def stream_exchanges(
    pcap: Path,
    *,
    http1_ports: list[int],
    h2c_ports: list[int],
    mono_offset_ns: int = 0,
    tls_keylog: Path | None = None,
    out_of_order: bool = True,
    batch: int = 5000,
    part_packets: int = PART_PACKETS,
    part_overlap: int = PART_OVERLAP,
    columns: bool = True,
) -> Generator[TruthBatch, None, TruthStats]:
    """Every HTTP/1 exchange and HTTP/2 call on the given server ports, in batches of about
    ``batch`` in order of start time; returns the decode statistics.

    With ``tls_keylog`` the ports carry TLS, decrypted with that NSS key log.
    Times are CLOCK_MONOTONIC when ``mono_offset_ns`` is CLOCK_REALTIME - CLOCK_MONOTONIC
    at capture time (the pcap holds wall-clock times). Memory holds the HTTP/1 requests in
    flight, the HTTP/2 calls open (or ended within _H2_GRACE_NS) and the exchanges not yet
    past the watermark, not the recording: both are spilled to temporary files between the
    scan and the merge. An HTTP/1 capture of more than ``part_packets`` packets is decoded in parts
    (0: never), so that tshark's memory stays bounded too (see _Parts): the same truth.
    ``columns=False``: tshark prints ``-T fields`` throughout (see _Columns): the same
    truth, slower. Raises CaptureError when tshark cannot read the file at all.
    """
    stats = TruthStats(out_of_order=out_of_order)
    # the fields route counts into its own stats: they only count if it sees it through
    h2 = _H2Fields(_H2Calls(h2c_ports, TruthStats())) if h2c_ports else None
    parts = None
    if part_packets and http1_ports and not h2c_ports and tls_keylog is None:
        parts = _Parts.plan(Path(pcap), part_packets, part_overlap, PART_CHECK)
    scan = _Scan(Path(pcap), http1_ports, h2c_ports, mono_offset_ns, stats, h2, tls_keylog,
                 parts, columns)  # fmt: skip
    n = 0
    calls: _H2Calls | None = None
    try:
        try:
            scan.read()
        except _OutOfSync as e:
            scan.close()
            stats = TruthStats(out_of_order=out_of_order, parts_given_up=str(e))
            scan = _Scan(Path(pcap), http1_ports, h2c_ports, mono_offset_ns, stats, h2,
                         tls_keylog, columns=columns)  # fmt: skip
            scan.read()
        if not stats.packets and stats.truncated:
            raise CaptureError(f"{pcap} is cut short before its first packet")
        calls = _h2_calls(scan, h2)  # (a JSON pass, if the fields route gave up)
        # (start, 0, frame, index, exchange) for HTTP/1, (start, 1, order, 0, call) for HTTP/2
        heap: list[tuple[int, int, int, int, Exchange]] = [
            (x.t_start_ns or 0, 0, f, i, x) for x, f, i in _hard_streams(scan)
        ]
        if calls is not None:
            heap += [(start, 1, order, 0, x) for start, order, x in calls.unended]
            calls.unended = []
        heapq.heapify(heap)
        pairer = _H1Pairer(scan.streams, scan.times, scan.server_data, stats, scan.warnings,
                           scan.client_runs)
        # Both spills are read a record at a time, each from the one whose watermark is
        # behind: the HTTP/1 messages (paired as they come) and the HTTP/2 calls handed on.
        # An exchange leaves the heap once nothing still to be read can start before it.
        msgs, h1_later, h1_left = scan.spilled(), scan.spill.later(), len(scan.spill.sizes)
        spill = calls.spill if calls is not None else None
        h2_records = spill.records() if spill is not None else iter(())
        h2_later = spill.later() if spill is not None else [_NEVER]
        h2_left = len(spill.sizes) if spill is not None else 0
        b1 = b2 = waiting = 0
        first = _NEVER  # the earliest start among the requests waiting for their response
        out: list[Exchange] = []
        while h1_left > b1 or h2_left > b2:
            if h1_left > b1 and (h2_left == b2 or min(first, h1_later[b1]) <= h2_later[b2]):
                for m in next(msgs):
                    if not scan.streams[m.fr.stream].hard:
                        pairer.feed(m)
                for x, f, i in pairer.take():
                    heapq.heappush(heap, (x.t_start_ns or 0, 0, f, i, x))
                b1 += 1
                waiting, first = pairer.held()
            else:
                for start, order, x in next(h2_records):
                    heapq.heappush(heap, (start, 1, order, 0, x))
                b2 += 1
            mark = min(first, h1_later[b1], h2_later[b2])
            stats.held_peak = max(stats.held_peak, len(heap) + waiting)
            while heap and heap[0][0] < mark:
                out.append(heapq.heappop(heap)[-1])
            if len(out) >= batch:
                n += len(out)
                yield TruthBatch(out, mark)
                out = []
        out += [heapq.heappop(heap)[-1] for _ in range(len(heap))]
        n += len(out)
        yield TruthBatch(out, _NEVER)
    finally:
        scan.close()
        if h2 is not None:
            h2.h2.close()
        if calls is not None:
            calls.close()
    for msg, count in scan.warnings.items():
        stats.warn(msg, count)
    stats.exchanges = n
    return stats


def _h2_calls(scan: _Scan, h2: _H2Fields | None) -> _H2Calls | None:
    """The HTTP/2 calls once the scan is done, handed on: from its fields, or a JSON pass
    if they could not be lined up (the fields route's spill dropped)."""
    stats = scan.stats
    if h2 is None:
        return None
    if h2.unsure is None:
        calls = h2.h2.finish()
        own = h2.h2.stats
        for f in ("unpaired_requests", "unpaired_responses", "h2_late_frames",
                  "h2_held_peak", "h2_spill_bytes"):  # fmt: skip
            setattr(stats, f, getattr(stats, f) + getattr(own, f))
        for msg, n in own.warnings.items():
            stats.warn(msg, n)
        stats.h2_decode = "fields"
        return calls
    stats.h2_decode = f"json ({h2.unsure})"  # (its spill was closed when it turned unsure)
    assert scan.frames is not None  # (kept whenever there are h2c ports)
    return _h2(scan.pcap, scan.h2c_ports, scan.frames, stats, scan.http1_ports, scan.tls_keylog)


def _hard_streams(scan: _Scan) -> list[tuple[Exchange, int, int]]:
    """The streams whose messages need repairs across messages or a second look at the
    capture: held whole, repaired, then paired like the rest."""
    hard = {s for s, st in scan.streams.items() if st.hard}
    scan.stats.streams_held_whole = len(hard)
    if not hard:
        return []
    msgs = [m for ms in scan.spilled() for m in ms if m.fr.stream in hard]
    per_frame: dict[int, list[_H1Msg]] = {}
    for m in msgs:
        per_frame.setdefault(m.frame, []).append(m)
    multi = {f: ms for f, ms in per_frame.items() if len(ms) > 1}
    args = (scan.pcap, scan.http1_ports, scan.h2c_ports)
    ooo = scan.stats.out_of_order
    if multi:
        _split_multi(*args, multi, scan.warnings, scan.tls_keylog, out_of_order=ooo)
    msgs = _drop_redissected(msgs, scan.warnings)
    msgs = _drop_repeated_reports(*args, msgs, scan.warnings, scan.tls_keylog, out_of_order=ooo)
    return _pair_http1(msgs, scan.times, scan.server_data, scan.stats, scan.warnings,
                       scan.client_runs)


def extract_exchanges(
    pcap: Path,
    *,
    http1_ports: list[int],
    h2c_ports: list[int],
    mono_offset_ns: int = 0,
    tls_keylog: Path | None = None,
    out_of_order: bool = True,
    part_packets: int = PART_PACKETS,
    part_overlap: int = PART_OVERLAP,
    columns: bool = True,
) -> tuple[list[Exchange], TruthStats]:
    """``stream_exchanges`` as one list, in order of start time, and the statistics."""
    gen = stream_exchanges(pcap, http1_ports=http1_ports, h2c_ports=h2c_ports,
                           mono_offset_ns=mono_offset_ns, tls_keylog=tls_keylog,
                           out_of_order=out_of_order, part_packets=part_packets,
                           part_overlap=part_overlap, columns=columns)  # fmt: skip
    out: list[Exchange] = []
    while True:
        try:
            out += next(gen).exchanges
        except StopIteration as stop:
            return out, stop.value
