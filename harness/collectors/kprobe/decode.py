"""Replay side of the kernel-side collector: raw records -> connections of Segments.

Pure function of the event file, so it runs without root. ``attach_at_ns``
replays a recording as if the collector had attached later: records before it
are dropped, and connections whose start was missed are found the way the
kernel program finds them (the same inference on each call's first bytes).

Loss: every data event carries its call's number on its connection and
direction (``seq``) and its index among the call's events (``part``). A jump in
``seq`` means whole calls went missing (ring buffer full): the connection's
stream ends there and goes on as a new Connection seen mid-stream, so parsers
resynchronise instead of splicing bytes that were never adjacent. A jump in
``part`` ends that call's captured bytes there; its length still passes by.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import struct
from collections import namedtuple
from collections.abc import Callable, Container, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.collectors.eventfile import NOTE, read_event_file
from harness.collectors.kprobe.layout import FORMAT, header, protos, roles
from harness.errors import RunDirError
from harness.model import Exchange
from harness.protocols.bytestream import ByteStream, Endpoint, ip_text, trim_to_first_request
from harness.protocols.common import Segment
from harness.protocols.http1.stitch import Http1Stats, Http1Stream, unpair_after
from harness.protocols.http2.stitch import Http2Stats, Http2Stream
from harness.protocols.sniff import HTTP1_STARTS, infer_proto


@dataclass
class Connection(ByteStream):
    """One connection as one process saw it, between its open (or first sight) and close
    (or lost calls: ``continues``)."""

    tgid: int
    fd: int
    comm: str
    proto: str  # http1 | http2 | tls (encrypted: replay cannot decode it)
    from_start: bool  # connect/accept seen
    opened_ns: int
    addr_source: str | None = None  # connect | accept | socket | sockdiag
    closed_ns: int | None = None
    send: list[Segment] = field(default_factory=list)
    recv: list[Segment] = field(default_factory=list)
    truncated_bytes: int = 0
    after_loss: bool = False  # begins after lost events (a split, or its open was lost)
    # seq of the last call seen, by direction (send, recv); None: not known yet
    last_seq: list[int | None] = field(default_factory=lambda: [0, 0], repr=False)
    # when the last call seen was, by direction: lost calls came after it
    last_ts: list[int] = field(default_factory=lambda: [0, 0], repr=False)
    # by direction (send, recv): calls were lost at some time after this one, found only
    # later (the gap showed once this part had ended): what came after it is unproven
    lost_after: list[int | None] = field(default_factory=lambda: [None, None], repr=False)
    # decode(stitch=...): an HTTP/1 connection seen from its open is stitched while it is
    # read, its bytes let go; ``stitched`` holds what that gave once it ended
    http1: Http1Stream | None = field(default=None, repr=False)
    stitched: tuple[list[Exchange], Http1Stats | Http2Stats] | None = field(
        default=None, repr=False)
    # streamed replay: an HTTP/2 connection whose role and addresses are known from its
    # first bytes is stitched while read, each call handed over as its stream ends
    http2: Http2Stream | None = field(default=None, repr=False)
    h2_streams: Container[int] | None = field(default=None, repr=False)  # the stream ids it gave
    # HTTP/1 found mid-stream, streamed: its first request's start (responses up to it go)
    h1_since: int | None = field(default=None, repr=False)
    # streamed replay (decode(handover=...)): its exchanges are handed over as they become
    # final; ``held`` are stitched ones that a loss found later could still change
    handed: bool = field(default=False, repr=False)
    held: list[Exchange] = field(default_factory=list, repr=False)
    hold_to_end: bool = field(default=False, repr=False)  # split at a loss: held to the end

    @property
    def key(self) -> str:
        return f"{self.tgid}:{self.fd}@{self.opened_ns}"


@dataclass
class DecodeStats:
    kernel_records: int = 0
    data_events: int = 0
    conn_events: int = 0
    connections: int = 0
    inferred_connections: int = 0
    sockdiag_found: int = 0
    sockdiag_missing: int = 0
    orphan_data_events: int = 0  # data for a connection we never opened (cannot happen live)
    # bytes moved but not captured: the capture limit, and the bodies the kernel left out
    # (HTTP/2 message bodies, framed HTTP/1 bodies; the recorder's stats count those apart)
    truncated_bytes: int = 0
    truncated_tail_bytes: int = 0
    dropped_before_attach: int = 0
    loss_gaps: int = 0  # jumps in a connection's call numbers: its stream was split there
    lost_chunks: int = 0  # calls whose captured bytes end early because an event was lost
    lost_call_starts: int = 0  # events of calls whose first event was lost (dropped)
    opened_unseen: int = 0  # connections known only from data: their open event was lost
    # HTTP/1 segments left out after a loss or before the first request of a connection
    # found mid-stream (see bytestream.trim_to_first_request)
    responses_before_request: int = 0
    seq_reordered: int = 0  # a call numbered before one already seen (threads racing)
    lost_tails: int = 0  # a close numbered more calls than were seen: lost at the end
    legacy_layout: bool = False  # recorded before seq/part: losses cannot be located
    # connections found by the kernel's fd -> socket walk (opened before the attach, in a
    # forked child, through dup), with their addresses from the socket itself
    socket_addresses: int = 0
    # connections with data whose addresses stayed unknown, by reason (never dropped silently)
    addresses_unknown: dict[str, int] = field(default_factory=dict)
    collector: dict[str, Any] = field(default_factory=dict)  # the recorder's final stats
    # streamed replay: exchanges handed over after a watermark that said none would start
    # before them (a send blocked longer than WATERMARK_SLACK_NS); scored all the same
    late_exchanges: int = 0


def _norm_ip(text: str) -> str:
    ip = ipaddress.ip_address(text)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)




# How long a send may have been under way (its event carries its start) before its event
# is read: the streamed decode's watermark stays this far behind the newest event.
WATERMARK_SLACK_NS = 1_000_000_000
# Kernel records read between two hand-overs of a streamed decode.
HANDOVER_RECORDS = 16384


@dataclass
class Handover:
    """A streamed decode's output so far (decode_steps): what the caller takes at each step."""

    ready: list[tuple[Connection, list[Exchange]]] = field(default_factory=list)
    finished: list[Connection] = field(default_factory=list)  # yield nothing more
    # no exchange handed over later starts before it (but for a late send: late_exchanges)
    watermark: int = -(1 << 63)
    # the run's server ports: an HTTP/2 connection whose role the kernel did not know is
    # streamed when they say it (None: only those it knew)
    ports: set[int] | None = None
    hpack_mode: str = "tolerant"


def _final(x: Exchange, seen_until: int) -> bool:
    """Whether no loss found from now on can change ``x`` (``unpair_after`` leaves alone
    what started and ended by the last request-direction call seen: a gap found later
    dates its loss after that call)."""
    start = x.t_start_ns if x.t_start_ns is not None else x.t_end_ns
    return start is not None and start <= seen_until and (
        x.t_end_ns is None or x.t_end_ns <= seen_until)


@dataclass(slots=True)
class _Call:
    """A syscall's events gathered so far (a call's events can interleave with others')."""

    conn: Connection
    direction: str
    ts: int
    orig: int
    parts: list[tuple[int, bytes]]
    next_part: int = 1
    broken: bool = False  # an event of it was lost: what follows it is not used


def _fixed_part(de: type[ctypes.Structure]) -> tuple[struct.Struct, Any]:
    """A data event's fields before ``data`` (from the header's layout): a struct that
    unpacks them in one call and a named tuple to read them by name; arrays (padding) are
    skipped."""
    fmt, names, pos = "<", [], 0
    for name, ctype in de._fields_:  # type: ignore[misc]
        if name == "data":
            break
        off, size = getattr(de, name).offset, ctypes.sizeof(ctype)
        fmt += f"{off - pos}x" if off > pos else ""
        if issubclass(ctype, ctypes.Array):
            fmt += f"{size}x"
        else:
            signed = ctype(-1).value < 0  # type: ignore[union-attr]
            code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
            fmt += code if signed else code.upper()
            names.append(name)
        pos = off + size
    return struct.Struct(fmt), namedtuple("DataEvent", names)


def _legacy_data_event(de: type[ctypes.Structure]) -> type[ctypes.Structure]:
    """pb_data_event as recorded before seq and part: three pad bytes after syscall."""
    fields = [(n, t) for n, t in de._fields_ if n not in ("packed", "part", "seq")]  # type: ignore[misc]
    fields.insert([n for n, _ in fields].index("syscall") + 1, ("pad", ctypes.c_uint8 * 3))
    return type("pb_data_event_v0", (ctypes.Structure,), {"_fields_": fields})


def decode(
    path: Path,
    *,
    attach_at_ns: int | None = None,
    use_sockdiag: bool = True,
    stitch: Callable[[list[Exchange]], None] | None = None,
) -> tuple[list[Connection], DecodeStats]:
    """``stitch``: HTTP/1 connections seen from their open are stitched as they are read
    (``Connection.stitched``), so their bytes are not all held until the end; the others
    (found mid-stream, after a loss, of a protocol known only at the end) keep theirs.
    ``stitch`` is called on each batch of finished exchanges (to share equal headers
    before many pile up)."""
    steps = decode_steps(path, attach_at_ns=attach_at_ns, use_sockdiag=use_sockdiag,
                         stitch=stitch)  # fmt: skip
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def decode_steps(
    path: Path,
    *,
    attach_at_ns: int | None = None,
    use_sockdiag: bool = True,
    stitch: Callable[[list[Exchange]], None] | None = None,
    handover: Handover | None = None,
) -> Generator[None, None, tuple[list[Connection], DecodeStats]]:
    """``decode``, a step at a time (a yield every HANDOVER_RECORDS records). With
    ``handover``, HTTP/1 connections stitched while read whose addresses came with their
    open hand their exchanges over (``handover.ready``) once nothing later can change
    them, so a replay need not hold them; the connections returned then hold none."""
    ef = read_event_file(path, check=False)  # checked as read: one pass, not two
    if ef.header.get("format", FORMAT) != FORMAT:
        raise RunDirError(f"{path} is not a {FORMAT} recording (header says "
                          f"{ef.header.get('format')!r})")  # fmt: skip
    defines = ef.header.get("defines", {})
    if defines.get("PB_FLOOR"):
        raise RunDirError(f"{path} was recorded by a floor build of the overhead bench "
                          "(PB_FLOOR): it holds no framing to replay")  # fmt: skip
    hdr = header(int(defines.get("PB_CHUNK", 16384)))
    d = hdr.defines
    CE, DE = hdr.structs["pb_conn_event"], hdr.structs["pb_data_event"]
    recorded = ef.header.get("sizes", {}).get("pb_data_event", ctypes.sizeof(DE))
    legacy = recorded != ctypes.sizeof(DE)
    if legacy:
        DE = _legacy_data_event(DE)
    data_off = int(DE.data.offset)
    unpack_data, as_event = _fixed_part(DE)
    data_min = unpack_data.size
    data_kind = d["PB_EV_DATA"]
    kind_off = hdr.offset("pb_conn_event", "kind")
    ce_size = ctypes.sizeof(CE)
    st = DecodeStats(legacy_layout=legacy)  # truncated_tail_bytes: once read to the end
    live: dict[tuple[int, int], Connection] = {}
    answers: dict[tuple[int, int, int], dict[str, Any]] = {}
    # simulated late attach: what sock_diag would have answered for sockets opened before it
    before_attach: dict[tuple[int, int], tuple[Endpoint | None, Endpoint | None]] = {}
    done: list[Connection] = []
    counts: list[list[int]] = []  # [tgid, fd, send calls, recv calls] numbered by the kernel
    # A syscall's chunks are emitted back to back, but another thread's call on the same
    # socket (Go reads and writes one fd from two goroutines) can land between them.
    CallKey = tuple[int, int, str, int, int]  # tgid, fd, direction, tid, ts
    pending: dict[CallKey, _Call] = {}
    # the pending calls of each (tgid, fd, direction), in arrival order: a scan of all of
    # `pending` per event was a tenth of a big replay
    pending_of: dict[tuple[int, int, str], dict[CallKey, None]] = {}

    def flush_call(key: CallKey) -> None:
        call = pending.pop(key)
        del pending_of[key[:3]][key]
        segs = call_segments(call.ts, call.orig, call.parts)
        conn = call.conn
        unseen = 0
        for s in segs:
            unseen += s.orig_len - len(s.data)
        if unseen:
            conn.truncated_bytes += unseen
            st.truncated_bytes += unseen
        if conn.http1 is not None and conn.h1_since is None:  # take's common case, inline
            for s in segs:
                conn.http1.add(call.direction == "send", s)
        else:
            take(conn, call.direction == "send", segs)

    def take(conn: Connection, sent: bool, segs: list[Segment]) -> None:
        """A call's segments, in its direction's order, to its connection."""
        first_sent = sent and not conn.send
        if conn.http1 is not None:
            since = conn.h1_since
            for seg in segs:
                if since is not None and sent != (conn.role == "client") and seg.ts_ns <= since:
                    st.responses_before_request += 1  # as the trim after the pass would
                    continue
                conn.http1.add(sent, seg)
            return
        if conn.http2 is not None:
            for seg in segs:
                conn.http2.add(sent, seg)
            return
        (conn.send if sent else conn.recv).extend(segs)
        if stitch is not None and first_sent and _stitch_live(conn):
            # what the pass after the loop would decide from its first sent bytes, now
            conn.proto = "http1"
            # its addresses came with its open: nothing after the pass changes them
            conn.handed = handover is not None and None not in (conn.local, conn.remote)
            on_ready = (lambda xs, c=conn: got(c, xs)) if conn.handed else stitch
            conn.http1 = Http1Stream(conn.role, source="kprobe", from_start=True,  # type: ignore[arg-type]
                                     on_ready=on_ready, hand_over=conn.handed)  # fmt: skip
            for seg in conn.recv:
                conn.http1.add(False, seg)
            for seg in conn.send:
                conn.http1.add(True, seg)
            conn.send, conn.recv = [], []
        elif handover is not None and (first_sent or conn.proto == "http2") and _stream_h2(
                conn, handover):
            assert conn.http2 is not None
            for seg in conn.recv:
                conn.http2.add(False, seg)
            for seg in conn.send:
                conn.http2.add(True, seg)
            conn.send, conn.recv = [], []
        elif handover is not None and (piped := _midstream_h1(conn, sent, segs)) is not None:
            # found mid-stream: its framing is known from its first request on, so it is
            # stitched from there as the pass would (responses before it left out)
            st.responses_before_request += trim_to_first_request(conn.role, conn.send, conn.recv)
            conn.h1_since = next(s.ts_ns for s in (conn.send if sent else conn.recv)
                                 if s.data.startswith(HTTP1_STARTS[:-1]))  # fmt: skip
            conn.handed = True
            conn.http1 = Http1Stream(conn.role, source="kprobe", hand_over=True,  # type: ignore[arg-type]
                                     after_loss=conn.after_loss, pipelining=piped,
                                     on_ready=functools.partial(got, conn))  # fmt: skip
            for seg in conn.recv:
                conn.http1.add(False, seg)
            for seg in conn.send:
                conn.http1.add(True, seg)
            conn.send, conn.recv = [], []

    holding: dict[int, Connection] = {}  # id -> handed connection with held exchanges
    # closed handed connections whose held exchanges wait for their fd's next connection
    # (the end's call counts apply to the last one on an fd) or the end
    closed_on: dict[tuple[int, int], Connection] = {}
    stuck = [1 << 63]  # earliest open of a closed connection whose exchanges come at the end

    def got(conn: Connection, xs: list[Exchange]) -> None:
        # (the caller shares equal headers over each hand-over batch, not per exchange)
        conn.held.extend(xs)
        holding[id(conn)] = conn

    def settle(conn: Connection, everything: bool = False) -> None:
        """Hand over what no later loss can change (all of it: ``everything``)."""
        seen = conn.last_ts[0 if conn.role == "client" else 1]
        out, keep = conn.held, list[Exchange]()
        if not everything:
            out = []
            for x in conn.held:
                (out if _final(x, seen) else keep).append(x)
        if out:
            assert handover is not None
            handover.ready.append((conn, out))
            conn.held = keep
        if not conn.held:
            holding.pop(id(conn), None)

    def opened(key: tuple[int, int]) -> None:
        """A new connection on this fd: the closed one before it is final."""
        old = closed_on.pop(key, None)
        if old is not None:
            settle(old, everything=True)
            assert handover is not None
            handover.finished.append(old)

    def close(conn: Connection, ts: int | None) -> None:
        for direction in ("send", "recv"):
            for k in list(pending_of.get((conn.tgid, conn.fd, direction), ())):
                flush_call(k)
        conn.closed_ns = ts
        if conn.http1 is not None:
            conn.stitched, conn.http1 = conn.http1.finish(ts), None
        done.append(conn)
        if handover is None:
            return
        if conn.http2 is not None:  # every call handed over: nothing is held
            _end_h2(conn)
            handover.finished.append(conn)
            return
        if not conn.handed:
            if conn.send or conn.recv or conn.stitched is not None:
                stuck[0] = min(stuck[0], conn.opened_ns)
        elif ts is None:
            conn.hold_to_end = True  # split at a loss: the part after it may date it earlier
        else:
            settle(conn)
            if conn.held:
                closed_on[(conn.tgid, conn.fd)] = conn
            else:
                handover.finished.append(conn)

    def reopen(conn: Connection, ts: int, continues: bool) -> Connection:
        """End conn's stream at lost events; what follows is a connection seen mid-stream.

        ``continues``: the same connection after lost calls (addresses carry over); else
        a new connection on the same fd whose open (and the old one's close) were lost.
        """
        close(conn, None)  # not a close: close-delimited bodies must not end here
        new = Connection(
            tgid=conn.tgid, fd=conn.fd, comm=conn.comm, role=conn.role, proto=conn.proto,
            from_start=False, opened_ns=ts, after_loss=True,
        )  # fmt: skip
        if continues:
            new.continues = conn
            new.last_seq = list(conn.last_seq)
            new.last_ts = list(conn.last_ts)
        else:
            new.last_seq = [None, None]
        live[(conn.tgid, conn.fd)] = new
        st.connections += 1
        if handover is not None and not continues:
            opened((conn.tgid, conn.fd))
        return new

    def lost_since(part: Connection | None, nxt: int, since: int, i: int) -> None:
        """Calls of direction i were lost somewhere after ``since``: the parts of the stream
        (from ``part`` back, the one after it opened at ``nxt``) that lasted past it (split
        at the other direction's gaps meanwhile) may hold the hole. Requests queued before
        ``since`` still pair in order there: the counts are exact up to them."""
        while part is not None and nxt > since:
            had = part.lost_after[i]
            part.lost_after[i] = since if had is None else min(had, since)
            nxt, part = part.opened_ns, part.continues

    def check_seq(conn: Connection, ev: Any, i: int) -> Connection:
        """The connection a data event belongs to, once its seq is checked."""
        seq, last = ev.seq, conn.last_seq[i]
        if last is None or (seq == last + 1 and ev.part == 0):
            conn.last_seq[i] = seq
        elif seq > last:  # calls (or this call's first events) were lost
            st.loss_gaps += 1
            lost_since(conn, ev.ts_ns, conn.last_ts[i], i)
            conn = reopen(conn, ev.ts_ns, continues=True)
            conn.last_seq[i] = seq
        elif seq == 1 and ev.part == 0 and last > 1:
            # numbering restarted: the kernel saw a new connection on this fd
            st.opened_unseen += 1
            conn = reopen(conn, ev.ts_ns, continues=False)
            conn.role = roles().get(ev.role, "unknown")
            conn.proto = protos().get(ev.proto) or "unknown"
            conn.last_seq[i] = seq
        elif seq < last:
            st.seq_reordered += 1
        conn.last_ts[i] = max(conn.last_ts[i], ev.ts_ns)
        return conn

    newest = 0  # the latest event time read
    dir_send = d["PB_DIR_SEND"]
    # the named tuple's _make without its Python frame (15 M events in a soak's replay)
    new_event = tuple.__new__
    for rtype, rec in ef.records():
        if rtype == NOTE:
            assert isinstance(rec, dict)
            if rec.get("type") == "stats":
                st.collector = {k: v for k, v in rec.items() if k != "type"}
            elif rec.get("type") == "call_counts":
                counts.extend(rec["conns"])
            elif rec.get("type") == "sockdiag" and use_sockdiag:
                # answers arrive on their own thread's clock: applied after the pass
                answers[(rec["tgid"], rec["fd"], rec["ts_ns"])] = rec
            continue
        assert isinstance(rec, memoryview)
        st.kernel_records += 1
        if handover is not None and not st.kernel_records % HANDOVER_RECORDS:
            for hc in list(holding.values()):
                if hc.closed_ns is None and not hc.hold_to_end:
                    settle(hc)
            for c in live.values():
                if c.http2 is not None:
                    c.http2.advance(newest - WATERMARK_SLACK_NS)
            handover.watermark = max(handover.watermark, min(
                newest - WATERMARK_SLACK_NS, stuck[0],
                min((c.ts for c in pending.values()), default=1 << 63),
                min((b for c in live.values() if (b := _bound(c)) is not None), default=1 << 63),
                min((x.t_start_ns or 0 for c in holding.values() for x in c.held),
                    default=1 << 63),
            ))  # fmt: skip
            yield
        kind = rec[kind_off]
        if kind == data_kind:
            st.data_events += 1
            # the fixed part read in place (a ctypes copy padded to the whole struct cost
            # a 16 KiB allocation per event)
            fixed = rec if len(rec) >= data_min else bytes(rec).ljust(data_min, b"\0")
            ev = new_event(as_event, unpack_data.unpack_from(fixed))
            payload = bytes(rec[data_off : data_off + ev.cap_len])
            if ev.ts_ns > newest:
                newest = ev.ts_ns
            if attach_at_ns is not None and ev.ts_ns < attach_at_ns:
                st.dropped_before_attach += 1
                continue
            key = (ev.tgid, ev.fd)
            conn = live.get(key)
            if ev.dir == dir_send:
                direction, i = "send", 0
            else:
                direction, i = "recv", 1
            if conn is None and attach_at_ns is None:
                if legacy or ev.part != 0 or not protos().get(ev.proto):
                    st.orphan_data_events += 1
                    continue
                # its open event was lost: known from here on, like a connection found late
                conn = Connection(
                    tgid=ev.tgid, fd=ev.fd, comm="", role=roles().get(ev.role, "unknown"),
                    proto=protos()[ev.proto] or "unknown", from_start=False, opened_ns=ev.ts_ns,
                    last_seq=[None, None], after_loss=True,
                )  # fmt: skip
                live[key] = conn
                st.connections += 1
                st.opened_unseen += 1
                if handover is not None:
                    opened(key)
            if conn is None:
                # simulated late attach: the kernel would infer from this call's first bytes
                if ev.offset != 0:
                    continue
                proto = infer_proto(payload[:16], from_start=False)
                if proto is None:
                    continue
                conn = _inferred(ev, proto, payload, direction)
                conn.last_seq = [None, None]  # numbering began before the simulated attach
                if use_sockdiag and key in before_attach:
                    conn.local, conn.remote = before_attach[key]
                    conn.addr_source = "sockdiag"
                    st.sockdiag_found += 1
                live[key] = conn
                st.connections += 1
                st.inferred_connections += 1
                if handover is not None:
                    opened(key)
            if legacy:
                pass
            elif ev.part == 0 and (last := conn.last_seq[i]) is not None and ev.seq == last + 1:
                # check_seq's common case, inline: the next call, from its first event
                conn.last_seq[i] = ev.seq
                if ev.ts_ns > conn.last_ts[i]:
                    conn.last_ts[i] = ev.ts_ns
            else:
                conn = check_seq(conn, ev, i)
            first = ev.offset == 0 if legacy else ev.part == 0
            if first:
                same = pending_of.get(key3 := (ev.tgid, ev.fd, direction))
                if same is None:
                    same = pending_of[key3] = {}
                elif same:
                    for k in list(same):
                        flush_call(k)
                if not legacy and ev.cap_len == ev.orig_len:
                    # captured whole in its first event, so it has no other (the kernel
                    # emits a call's pieces only for bytes not yet emitted): placed now
                    seg = Segment(ev.ts_ns, payload, ev.orig_len)
                    if conn.http1 is not None and conn.h1_since is None:
                        conn.http1.add(i == 0, seg)  # take's common case, inline
                    else:
                        take(conn, i == 0, [seg])
                else:
                    pkey = (ev.tgid, ev.fd, direction, ev.tid, ev.ts_ns)
                    pending[pkey] = _Call(conn, direction, ev.ts_ns, ev.orig_len, [(0, payload)])
                    same[pkey] = None
            elif (call := pending.get((ev.tgid, ev.fd, direction, ev.tid, ev.ts_ns))) is None:
                st.lost_call_starts += 1
            elif legacy:
                call.parts.append((ev.offset, payload))
            elif not call.broken:
                if ev.part == call.next_part:
                    call.parts.append((ev.offset, payload))
                    call.next_part += 1
                else:  # the call's captured bytes end at the lost event; its length stays
                    call.broken = True
                    st.lost_chunks += 1
            continue
        ev = CE.from_buffer_copy(bytes(rec[:ce_size]).ljust(ce_size, b"\0"))
        st.conn_events += 1
        key = (ev.tgid, ev.fd)
        if kind == d["PB_EV_EXIT"]:
            for gone in [k for k in live if k[0] == ev.tgid]:
                close(live.pop(gone), ev.ts_ns)
            continue
        if attach_at_ns is not None and ev.ts_ns < attach_at_ns:
            st.dropped_before_attach += 1
            if kind == d["PB_EV_CONN"]:
                before_attach[key] = (
                    Endpoint(ip_text(bytes(ev.laddr), ev.family), ev.lport) if ev.lport else None,
                    Endpoint(ip_text(bytes(ev.raddr), ev.family), ev.rport) if ev.rport else None,
                )
            elif kind == d["PB_EV_CLOSE"]:
                before_attach.pop(key, None)
            continue
        if kind == d["PB_EV_CLOSE"]:
            if key in live:
                conn = live.pop(key)
                for i in (0, 1):  # calls numbered after the last one seen: a lost tail
                    last = conn.last_seq[i]
                    if last is not None and ev.seq[i] > last:
                        st.lost_tails += 1
                        lost_since(conn, ev.ts_ns + 1, conn.last_ts[i], i)
                close(conn, ev.ts_ns)
            continue
        if key in live:  # fd reused without a close we saw
            close(live.pop(key), ev.ts_ns)
        conn = Connection(
            tgid=ev.tgid,
            fd=ev.fd,
            comm=ev.comm.decode(errors="replace"),
            role=roles().get(ev.role, "unknown"),
            proto=protos().get(ev.proto) or "unknown",
            from_start=kind == d["PB_EV_CONN"],
            opened_ns=ev.ts_ns,
        )
        if kind == d["PB_EV_CONN"] and ev.family in (2, 10):
            if ev.rport:
                conn.remote = Endpoint(ip_text(bytes(ev.raddr), ev.family), ev.rport)
            if ev.lport:
                conn.local = Endpoint(ip_text(bytes(ev.laddr), ev.family), ev.lport)
            conn.addr_source = "connect" if conn.role == "client" else "accept"
        else:
            st.inferred_connections += 1
            # the kernel read these from the socket: the in-kernel twin of the sock_diag
            # step, so the no-sockdiag variant leaves them out as well
            if ev.lport and ev.rport and ev.family in (2, 10) and use_sockdiag:
                conn.local = Endpoint(ip_text(bytes(ev.laddr), ev.family), ev.lport)
                conn.remote = Endpoint(ip_text(bytes(ev.raddr), ev.family), ev.rport)
                conn.addr_source = "socket"
                st.socket_addresses += 1
        live[key] = conn
        st.connections += 1
        if handover is not None:
            opened(key)
    st.truncated_tail_bytes = ef.truncated_tail_bytes
    for pkey in list(pending):
        flush_call(pkey)
    for conn in live.values():
        if conn.http1 is not None:
            conn.stitched, conn.http1 = conn.http1.finish(None), None
        if conn.http2 is not None:
            _end_h2(conn)
        done.append(conn)
    # calls numbered past the last one seen on a stream that ended (process exit, end of
    # observation): its tail was lost
    latest: dict[tuple[int, int], Connection] = {}
    for conn in done:
        had = latest.get((conn.tgid, conn.fd))
        if had is None or conn.opened_ns >= had.opened_ns:
            latest[(conn.tgid, conn.fd)] = conn
    for tgid, fd, *numbered in counts:
        tail = latest.get((tgid, fd))
        for i in (0, 1):
            last = tail.last_seq[i] if tail is not None else None
            if tail is not None and last is not None and numbered[i] > last:
                st.lost_tails += 1
                lost_since(tail, 1 << 63, tail.last_ts[i], i)
    # a stream stitched while read had its loss found only later (a gap at a later part, its
    # close's or the exit's call counts): what it paired after the loss began is unproven
    for conn in done:
        lost = conn.lost_after[0 if conn.role == "client" else 1]
        # (HTTP/2 pairs by stream id, not by order: nothing to undo)
        if conn.stitched is not None and lost is not None and isinstance(
                conn.stitched[1], Http1Stats):
            unpair_after(conn.stitched[0] + conn.held, conn.stitched[1], lost)
    for conn in list(holding.values()):  # streamed: the rest is final now
        settle(conn, everything=True)
    for conn in done:
        answer = answers.get((conn.tgid, conn.fd, conn.opened_ns))
        if answer is None:
            continue
        if answer.get("found"):
            conn.local = Endpoint(_norm_ip(answer["local_ip"]), answer["local_port"])
            conn.remote = Endpoint(_norm_ip(answer["remote_ip"]), answer["remote_port"])
            conn.addr_source = "sockdiag"
            st.sockdiag_found += 1
        else:
            st.sockdiag_missing += 1
    # protocol of from-start connections is fixed by their first data
    for conn in done:
        if conn.proto == "unknown":
            first = conn.send[0] if conn.send else (conn.recv[0] if conn.recv else None)
            if first is not None:
                conn.proto = infer_proto(first.data[:16], from_start=True) or "unknown"
    # a stream split at lost events is still the one connection: its address and protocol
    # (done is in order: the part before a split is settled before the part after it)
    for conn in done:
        prev = conn.continues
        if prev is not None:
            if conn.local is None and conn.remote is None:
                conn.local, conn.remote = prev.local, prev.remote
                conn.addr_source = prev.addr_source
            if conn.proto == "unknown":
                conn.proto = prev.proto
    for conn in done:
        # found mid-stream (after a loss, or opened before the attach): responses before the
        # first request seen answer requests no one saw
        if (conn.after_loss or not conn.from_start) and conn.proto == "http1":
            st.responses_before_request += trim_to_first_request(conn.role, conn.send, conn.recv)
    kept = [c for c in done if c.send or c.recv or c.stitched is not None]
    for conn in kept:
        if conn.local is None or conn.remote is None:
            reason = _why_no_address(conn, answers, use_sockdiag)
            st.addresses_unknown[reason] = st.addresses_unknown.get(reason, 0) + 1
    return kept, st


def _bound(conn: Connection) -> int | None:
    """The earliest start an exchange a live connection yields later can have, from what
    it holds (None: nothing; its next calls are bounded by the newest event)."""
    if conn.http2 is not None:
        return conn.http2.earliest_start()
    if conn.handed:
        assert conn.http1 is not None
        return conn.http1.earliest_start()
    if conn.send or conn.recv or conn.http1 is not None:
        return conn.opened_ns  # its exchanges come at the end
    return None


def _midstream_h1(conn: Connection, sent: bool, segs: list[Segment]) -> bool | None:
    """Whether an HTTP/1 connection found mid-stream (or the part after a loss) can be
    stitched while read from these segments on: the first request start it has seen, with
    its role and both addresses known (a part after a loss: its connection's, and every
    part before it stitched while read, so the pipelining it carries is known). Returns
    None for no, else the pipelining seen before it."""
    if conn.from_start or conn.proto != "http1" or conn.role not in ("client", "server"):
        return None
    if sent != (conn.role == "client"):
        return None
    piped = _piped(conn)
    if piped is None:
        return None
    ends = conn if conn.local is not None or conn.remote is not None else None
    for part in conn.before():
        if ends is None and (part.local is not None or part.remote is not None):
            ends = part
    if ends is None or None in (ends.local, ends.remote):
        return None
    if not any(s.data.startswith(HTTP1_STARTS[:-1]) for s in segs):
        return None
    conn.local, conn.remote, conn.addr_source = ends.local, ends.remote, ends.addr_source
    return piped


def _piped(conn: Connection) -> bool | None:
    """The pipelining a part after a loss carries from the part before it, as the pass
    after the loop gives it (a part it keeps that pipelined, or carried it); None: not
    known yet (a part before it was not stitched while read)."""
    prev = conn.continues
    if prev is None or not (prev.send or prev.recv or prev.stitched is not None):
        return False  # the pass keeps no empty part: it carries nothing
    if prev.stitched is None or not isinstance(prev.stitched[1], Http1Stats):
        return None
    return True if prev.stitched[1].pipelining else _piped(prev)


def _stream_h2(conn: Connection, ho: Handover) -> bool:
    """Whether to stitch an HTTP/2 connection while it is read (``conn.http2``, set up
    here), from a segment just taken on: nothing after the pass can change how it is
    stitched, as its protocol (the kernel's, or the pass's inference from the first sent
    bytes), its role and both addresses are known now (the pass only fills in what is
    unknown), and it is a whole connection (not the part after a loss: which of its
    streams the part before gave is settled at the end)."""
    proto = conn.proto
    if proto == "unknown" and conn.from_start and conn.send:
        proto = infer_proto(conn.send[0].data[:16], from_start=True) or "unknown"
    if proto != "http2" or conn.continues is not None or None in (conn.local, conn.remote):
        return False
    role = conn.role_by_ports(ho.ports) if ho.ports is not None else (
        conn.role if conn.role in ("client", "server") else None)
    if role is None:
        return False

    def ready(xs: list[Exchange], c: Connection = conn) -> None:
        ho.ready.append((c, xs))

    conn.role, conn.proto = role, proto
    conn.http2 = Http2Stream(role, ready, hpack_mode=ho.hpack_mode,  # type: ignore[arg-type]
                             source="kprobe", conn_id=conn.key)
    return True


def _end_h2(conn: Connection) -> None:
    """A streamed HTTP/2 connection ends: the rest handed over, its stats kept for the pass."""
    assert conn.http2 is not None
    conn.stitched = conn.http2.finish()
    conn.h2_streams, conn.http2 = conn.http2.stream_ids, None


def _stitch_live(conn: Connection) -> bool:
    """Whether a connection whose first sent segment just arrived can be stitched from here
    on: HTTP/1 seen from its open with a known role, so nothing after the pass (trimming
    after a loss, a protocol inferred from its bytes) can change how it is stitched."""
    if not conn.from_start or conn.after_loss or conn.role not in ("client", "server"):
        return False
    proto = conn.proto
    if proto == "unknown":
        proto = infer_proto(conn.send[0].data[:16], from_start=True) or "unknown"
    return proto == "http1"


def _why_no_address(
    conn: Connection, answers: dict[tuple[int, int, int], dict[str, Any]], use_sockdiag: bool
) -> str:
    """Why a connection has no address: the reasons are what the report counts."""
    if conn.after_loss:
        return "open_event_lost"  # its open (or the part before a loss) was never seen
    if not use_sockdiag and not conn.from_start:
        return "lookup_disabled"  # the no-sockdiag variant
    rec = answers.get((conn.tgid, conn.fd, conn.opened_ns))
    if rec is not None:
        return "socket_gone"  # sock_diag asked, the socket was already closed
    if conn.from_start:
        return "accept_unreadable"  # neither the socket nor the caller's sockaddr could be read
    return "not_looked_up"


def call_segments(ts: int, orig: int, parts: list[tuple[int, bytes]]) -> list[Segment]:
    """One syscall's captured pieces (offset in the call, bytes) -> Segments in order.

    The frame-aware capture leaves gaps between pieces (kprobe_events.h): each run of
    contiguous pieces becomes ``Segment(ts, run, len(run) + following gap)``, so parsers
    that skip unseen bytes by length stay in sync unchanged. Pieces that overlap what is
    already placed (cannot happen live) are dropped rather than guessed at.
    """
    if len(parts) == 1 and parts[0][0] == 0:  # the common case: one piece from the start
        data = parts[0][1]
        if len(data) <= orig:
            return [Segment(ts, bytes(data), orig)]
    elif parts[0][0] == 0:  # the next: pieces in order with no gap (a read's chunks)
        end = 0
        for off, data in parts:
            if off != end:
                break
            end += len(data)
        else:
            if end <= orig:
                return [Segment(ts, b"".join([data for _off, data in parts]), orig)]
    segs: list[Segment] = []
    runs: list[tuple[int, bytearray]] = []
    for off, data in sorted(parts, key=lambda p: p[0]):
        end = runs[-1][0] + len(runs[-1][1]) if runs else 0
        if runs and off == end:
            runs[-1][1].extend(data)
        elif off >= end and off + len(data) <= orig:
            runs.append((off, bytearray(data)))
    if not runs or runs[0][0] > 0:
        # the call's start went unseen: its length still has to pass by
        runs.insert(0, (0, bytearray()))
    for i, (off, run) in enumerate(runs):
        nxt = runs[i + 1][0] if i + 1 < len(runs) else max(orig, off + len(run))
        segs.append(Segment(ts, bytes(run), nxt - off))
    return segs


def _inferred(ev: Any, proto: str, payload: bytes, direction: str) -> Connection:
    if proto == "http2":
        is_request = payload.startswith(b"PRI ")
        role = ("client" if direction == "send" else "server") if is_request else "unknown"
    elif proto == "tls":
        role = "unknown"  # application data either way: the port says which end this is
    else:
        is_request = not payload.startswith(b"HTTP/1.")
        role = "client" if is_request == (direction == "send") else "server"
    return Connection(
        tgid=ev.tgid,
        fd=ev.fd,
        comm="",
        role=role,
        proto=proto,
        from_start=False,
        opened_ns=ev.ts_ns,
    )
