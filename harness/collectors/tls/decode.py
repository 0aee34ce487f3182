"""Raw TLS-collector events -> plaintext connections (no root, no BPF).

An OpenSSL connection is one SSL object of one process while it talks to one socket:
(tgid, SSL pointer, local port, remote port). A freed SSL object's address can be
reused by the next connection, so a changed address starts a new connection. Calls
whose socket the kernel could not name take the address a sock_diag note gave that
SSL object, or else stay on the SSL object's current connection (counted).

Lost calls (a jump in a direction's call numbers) split a connection as the kernel side
does: what follows is a connection seen mid-stream, so the stitchers start over (HPACK
from an empty table, HTTP/1 pairing from the next message) instead of joining bytes
across the gap, which would decode header indices against the wrong table.
"""

from __future__ import annotations

import ctypes
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.collectors.eventfile import KERNEL, read_event_file
from harness.collectors.tls.layout import FORMAT, header
from harness.errors import RunDirError
from harness.protocols.bytestream import ByteStream, Endpoint, ip_text
from harness.protocols.common import Segment


@dataclass
class TlsConnection(ByteStream):
    """An SSL object's plaintext; ``role`` stays unknown (the run's ports tell it)."""

    tgid: int
    ssl: int
    first_ns: int
    first_source: str  # syscall: its socket was established after attach (seen from byte 0)
    # per direction (send, recv): call seq -> [ts, orig_len, {offset: bytes}]
    calls: list[dict[int, list[Any]]] = field(default_factory=lambda: [{}, {}])
    last_seq: list[int] = field(default_factory=lambda: [0, 0])  # per direction
    # per direction: the lowest call number seen (a streamed replay takes calls out)
    min_seq: list[int | None] = field(default_factory=lambda: [None, None])
    replaced: bool = False  # a later part (a loss, a new address) took its SSL object

    @property
    def key(self) -> str:
        return f"{self.tgid}:ssl{self.ssl:x}@{self.first_ns}"

    def segments(self, d: int) -> list[Segment]:
        return self.take(d, None)

    def take(self, d: int, before_ns: int | None) -> list[Segment]:
        """Direction d's calls as segments, in call order, taken out of ``calls``: all of
        them (``before_ns`` None), else those whose chunks have all come: a later call
        follows them, or they began before ``before_ns``."""
        calls = self.calls[d]
        seqs = sorted(calls)
        if before_ns is not None and seqs:
            seqs = [q for q in seqs if q < seqs[-1] or calls[q][0] < before_ns]
        out = []
        for q in seqs:
            ts, orig, parts = calls.pop(q)
            data = b""
            for off in sorted(parts):
                if off != len(data):
                    break  # a lost chunk: the rest of the call is unseen (orig_len says so)
                data += parts[off]
            out.append(Segment(ts, data, orig))
        return out

    def head(self, d: int) -> bytes:
        """Direction d's first call's first bytes (none yet: empty)."""
        calls = self.calls[d]
        return calls[min(calls)][2].get(0, b"") if calls else b""

    def seen_from_start(self) -> bool:
        """The plaintext starts at byte 0: the socket was established after the probes were
        in (its address came from the kernel's own state change), and no first call is
        missing."""
        return (
            self.first_source == "syscall"
            and self.continues is None
            and all(m is None or m == 1 for m in self.min_seq)
        )


@dataclass
class TlsDecodeStats:
    events: int = 0
    dropped_before_attach: int = 0
    addr_sources: dict[str, int] = field(default_factory=dict)
    addr_from_note: int = 0
    without_address: int = 0  # calls no address could be given: kept on their SSL object
    connections: int = 0
    lost_calls: int = 0  # seq gaps: calls the ring buffer lost
    loss_splits: int = 0  # connections split at such a gap (the tail is seen mid-stream)
    truncated_calls: int = 0
    # HTTP/1 response calls left out before the first request seen on a connection found
    # mid-stream (bytestream.trim_to_first_request; as the kernel side's count)
    responses_before_request: int = 0
    collector: dict[str, Any] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    # streamed replay: exchanges handed over after a watermark said none would start before
    late_exchanges: int = 0


# Records between two steps of a streamed decode
STEP_RECORDS = 4096


def decode(
    path: Path, *, attach_at_ns: int | None = None
) -> tuple[list[TlsConnection], TlsDecodeStats]:
    steps = decode_steps(path, attach_at_ns=attach_at_ns, steps=False)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def decode_steps(
    path: Path, *, attach_at_ns: int | None = None, steps: bool = True
) -> Generator[tuple[list[TlsConnection], int], None,
               tuple[list[TlsConnection], TlsDecodeStats]]:  # fmt: skip
    """``decode`` a step at a time: every STEP_RECORDS records (``steps``), the connections
    so far (a caller may take their finished calls out) and the newest event time read."""
    step = STEP_RECORDS
    ef = read_event_file(path)
    if ef.header.get("format") != FORMAT:
        raise RunDirError(f"{path}: not a TLS collector recording ({ef.header.get('format')})")
    hdr = header()
    ev_t = hdr.structs["pb_tls_event"]
    data_off = hdr.offset("pb_tls_event", "data")
    sources = {0: "none", 1: "syscall", 2: "ssl", 3: "struct"}
    st = TlsDecodeStats()
    noted: dict[tuple[int, int], tuple[Endpoint, Endpoint]] = {}
    current: dict[tuple[int, int], TlsConnection] = {}
    conns: list[TlsConnection] = []
    for rtype, rec in ef.records():  # sock_diag answers first: they name earlier calls too
        if (
            rtype != KERNEL
            and isinstance(rec, dict)
            and rec.get("type") == "sockdiag"
            and rec.get("local_port")
        ):
            noted[(rec["tgid"], rec["ssl"])] = (
                Endpoint(rec["local_ip"], rec["local_port"]),
                Endpoint(rec["remote_ip"], rec["remote_port"]),
            )
    newest = -(1 << 63)
    for rtype, rec in ef.records():
        if rtype != KERNEL:
            assert isinstance(rec, dict)
            if rec.get("type") == "stats":
                st.collector = {k: v for k, v in rec.items() if k != "type"}
            elif rec.get("type") == "unsupported":
                st.unsupported.append(rec["what"])
            continue
        assert isinstance(rec, memoryview)
        raw = bytes(rec)
        ev = ev_t.from_buffer_copy(raw[:data_off].ljust(ctypes.sizeof(ev_t), b"\0"))
        st.events += 1
        if steps and not st.events % step:
            yield conns, newest
        newest = max(newest, ev.ts_ns)
        if attach_at_ns is not None and ev.ts_ns < attach_at_ns:
            st.dropped_before_attach += 1
            continue
        if ev.part == 0:
            src = sources.get(ev.addr_source, "none")
            st.addr_sources[src] = st.addr_sources.get(src, 0) + 1
        ident = (ev.tgid, ev.ssl)
        local = remote = None
        if ev.addr_source:
            local = Endpoint(ip_text(bytes(ev.laddr), ev.family), ev.lport)
            remote = Endpoint(ip_text(bytes(ev.raddr), ev.family), ev.rport)
        elif ident in noted:
            local, remote = noted[ident]
            st.addr_from_note += ev.part == 0
        conn = current.get(ident)
        if conn is None or (local is not None and (conn.local, conn.remote) != (local, remote)):
            if local is None and conn is None:
                st.without_address += ev.part == 0
            if conn is not None:
                conn.replaced = True
            conn = TlsConnection(tgid=ev.tgid, ssl=ev.ssl, local=local, remote=remote,
                                 first_ns=ev.ts_ns,
                                 first_source=sources.get(ev.addr_source, "none"))  # fmt: skip
            current[ident] = conn
            conns.append(conn)
        elif local is None:
            st.without_address += ev.part == 0
        d = ev.dir & 1
        last = conn.last_seq[d]
        if ev.seq > last + 1:
            st.lost_calls += ev.seq - last - 1
            if last:
                st.loss_splits += 1
                tail = TlsConnection(tgid=ev.tgid, ssl=ev.ssl, local=conn.local,
                                     remote=conn.remote, first_ns=ev.ts_ns,
                                     first_source=conn.first_source, continues=conn)  # fmt: skip
                tail.last_seq = list(conn.last_seq)
                conn.replaced = True
                conn = current[ident] = tail
                conns.append(conn)
        conn.last_seq[d] = max(last, ev.seq)
        low = conn.min_seq[d]
        conn.min_seq[d] = ev.seq if low is None else min(low, ev.seq)
        call = conn.calls[d].setdefault(ev.seq, [ev.ts_ns, ev.orig_len, {}])
        call[2][ev.offset] = raw[data_off : data_off + ev.cap_len]
        if (
            ev.part == 0
            and ev.orig_len > ev.cap_len
            and ev.offset == 0
            and ev.orig_len > hdr.defines["PB_TLS_CHUNK"] * hdr.defines["PB_TLS_MAX_CHUNKS"]
        ):
            st.truncated_calls += 1
    st.connections = len(conns)
    return conns, st
