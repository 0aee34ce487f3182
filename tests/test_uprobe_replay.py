"""Uprobe replay without root: hand-built event records -> Exchanges, case by case.

The records are built with the ctypes layout parsed from bpf/uprobe_events.h, exactly
as the BPF program lays them out, and written with the shared event-file framing.
"""

from __future__ import annotations

import ctypes
import ipaddress
from pathlib import Path

import pytest

from harness.collectors.eventfile import EventWriter
from harness.collectors.uprobe.decode import decode
from harness.collectors.uprobe.exchanges import uprobe_exchanges
from harness.collectors.uprobe.layout import FORMAT, header, hfield_struct
from harness.errors import RunDirError

H = header()
D = H.defines
HE, DE = H.structs["pb_header_event"], H.structs["pb_data_event"]
BLOB = H.offset("pb_header_event", "blob")
HF = hfield_struct()
SERVER_PORT, CLIENT_PORT = 50051, 40000
CLIENT_PID, SERVER_PID = 100, 200
PROBE = {"write_header": 1, "client_headers": 2, "server_headers": 3, "write_data": 4,
         "client_data": 5, "server_data": 6, "write_rst": 7, "client_rst": 8,
         "server_rst": 9}  # fmt: skip
RE = H.structs["pb_rst_event"]


class Rec:
    """Builds one process's view of one connection."""

    def __init__(self, side: str, conn: int = 0xC0FFEE) -> None:
        self.side, self.conn, self.ts = side, conn, 1000
        self.tgid = CLIENT_PID if side == "client" else SERVER_PID
        self.ports = (CLIENT_PORT, SERVER_PORT) if side == "client" else (SERVER_PORT, CLIENT_PORT)
        self.addr_status = 0

    def _prefix(self, e: ctypes.Structure, kind: int, probe: str, sid: int, end: bool) -> None:
        self.ts += 10
        e.ts_ns, e.conn, e.tgid, e.tid, e.stream_id = self.ts, self.conn, self.tgid, self.tgid, sid  # type: ignore[attr-defined]
        e.kind, e.probe = kind, PROBE[probe]  # type: ignore[attr-defined]
        recv = not probe.startswith("write")
        e.dir = 1 if recv else 0  # type: ignore[attr-defined]
        e.role = (1 if self.side == "client" else 2) if recv else 0  # type: ignore[attr-defined]
        e.flags = 1 if end else 0  # type: ignore[attr-defined]
        e.addr_status, e.ip_len, e.fd = self.addr_status, 16, 7  # type: ignore[attr-defined]
        e.lport, e.rport = self.ports  # type: ignore[attr-defined]
        lo = ipaddress.IPv6Address("::ffff:127.0.0.1").packed
        e.laddr[:] = list(lo)  # type: ignore[attr-defined]
        e.raddr[:] = list(lo)  # type: ignore[attr-defined]

    def headers(self, sid: int, fields: list[tuple[str, str]], *, end: bool = False,
                cut: int | None = None,
                ro: dict[str, tuple[int, bool]] | None = None) -> bytes:  # fmt: skip
        (one,) = self.header_parts(sid, fields, end=end, cut=cut, ro=ro)
        return one

    def header_parts(self, sid: int, fields: list[tuple[str, str]], *, end: bool = False,
                     cut: int | None = None, per_part: int | None = None,
                     nfields: int | None = None,
                     ro: dict[str, tuple[int, bool]] | None = None) -> list[bytes]:  # fmt: skip
        """One header block as the program sends it: parts of per_part fields sharing
        ts_ns and tid, the last flagged. `ro` names the read-only strings: text ->
        (address, by reference alone)."""
        probe = "write_header" if self._sends_headers(fields) else f"{self.side}_headers"
        step = per_part or max(1, len(fields))
        chunks = [fields[i : i + step] for i in range(0, len(fields), step)] or [[]]
        out = []
        e0 = HE()
        self._prefix(e0, D["PB_UEV_HEADERS"], probe, sid, end)
        for k, chunk in enumerate(chunks):
            e = HE.from_buffer_copy(bytes(e0))
            blob = b""
            e.nfields = len(fields) if nfields is None else nfields
            e.first, e.count, e.part = k * step, len(chunk), k
            if k == len(chunks) - 1:
                e.flags |= D["PB_FLAG_LAST_PART"]
            for n, v in chunk:
                nb, vb = n.encode(), v.encode()
                vc = vb if cut is None else vb[:cut]
                how, parts = 0, []
                for text, data, bits in ((n, nb, ("NAME_ADDR", "NAME_REF")),
                                         (v, vc, ("VALUE_ADDR", "VALUE_REF"))):  # fmt: skip
                    addr, ref = (ro or {}).get(text, (0, False))
                    if addr:
                        how |= D[f"PB_HOW_{bits[0]}"] | (D[f"PB_HOW_{bits[1]}"] if ref else 0)
                        data = addr.to_bytes(8, "little") + (b"" if ref else data)
                    parts.append(data)
                ncap = 0 if how & D["PB_HOW_NAME_REF"] else len(nb)
                vcap = 0 if how & D["PB_HOW_VALUE_REF"] else len(vc)
                blob += HF.pack(len(nb), len(vb), ncap, vcap, how) + parts[0] + parts[1]
            e.blob_len = len(blob)
            raw = bytearray(bytes(e)[: BLOB + len(blob)])
            raw[BLOB:] = blob
            out.append(bytes(raw))
        return out

    def _sends_headers(self, fields: list[tuple[str, str]]) -> bool:
        names = {n for n, _ in fields}
        if self.side == "client":
            return ":method" in names
        return ":method" not in names

    def data(self, sid: int, payload: bytes, *, send: bool, end: bool = False) -> bytes:
        e = DE()
        self._prefix(e, D["PB_UEV_DATA"], "write_data" if send else f"{self.side}_data", sid, end)
        e.frame_len = len(payload)
        head = payload[: D["PB_DATA_CAP"]]
        e.cap_len = len(head)
        e.data[: len(head)] = list(head)
        return bytes(e)


    def rst(self, sid: int, code: int, *, send: bool, after_ns: int = 0) -> bytes:
        e = RE()
        self.ts += after_ns
        self._prefix(e, D["PB_UEV_RST"], "write_rst" if send else f"{self.side}_rst", sid, False)
        e.err_code = code
        return bytes(e)


def msg(n: int) -> bytes:
    return b"\0" + n.to_bytes(4, "big") + b"x" * n


REQ = [(":method", "POST"), (":scheme", "http"), (":path", "/probebench.Bench/Unary"),
       (":authority", "127.0.0.1:50051"), ("content-type", "application/grpc"),
       ("x-probebench-id", "7"), ("x-tenant", "acme")]  # fmt: skip
RESP = [(":status", "200"), ("content-type", "application/grpc")]


def write(path: Path, records: list[bytes]) -> Path:
    w = EventWriter(path, {"collector": "uprobe", "format": FORMAT})
    for r in records:
        w.kernel(r)
    w.close()
    return path


def test_unary_call_seen_by_both_sides(tmp_path: Path) -> None:
    c, s = Rec("client"), Rec("server")
    trailers = [("grpc-status", "5"), ("grpc-message", "not%20found%20%E2%9C%93")]
    recs = [
        c.headers(1, REQ), c.data(1, msg(300), send=True, end=True),
        s.headers(1, REQ), s.data(1, msg(300), send=False, end=True),
        s.headers(1, RESP), s.data(1, msg(20), send=True), s.headers(1, trailers, end=True),
        c.headers(1, RESP), c.data(1, msg(20), send=False), c.headers(1, trailers, end=True),
    ]  # fmt: skip
    xs, st = uprobe_exchanges(write(tmp_path / "u.bin", recs), [SERVER_PORT])
    assert sorted(x.side for x in xs) == ["client", "server"]
    for x in xs:
        assert x.degraded == []
        assert (x.client_ip, x.client_port, x.server_ip, x.server_port) == (
            "127.0.0.1", CLIENT_PORT, "127.0.0.1", SERVER_PORT)  # fmt: skip
        assert (x.stream_id, x.method, x.path, x.status) == (1, "POST", "/probebench.Bench/Unary",
                                                             200)  # fmt: skip
        assert (x.grpc_status, x.grpc_message) == (5, "not found \u2713")
        assert (x.req_messages, x.req_bytes, x.resp_messages, x.resp_bytes) == (1, 300, 1, 20)
        assert x.req_headers == {"content-type": "application/grpc", "x-probebench-id": "7",
                                 "x-tenant": "acme"}  # fmt: skip
        assert x.trailers["grpc-status"] == "5"
        assert x.protocol == "h2c-grpc"
    assert st.connections == 2


def test_streamed_messages_spanning_frames_are_counted(tmp_path: Path) -> None:
    """A 40000-byte message in three DATA frames, then two small ones in one frame each."""
    c = Rec("client")
    big = msg(40000)
    recs = [c.headers(3, [*REQ[:2], (":path", "/probebench.Bench/ServerStream"), *REQ[3:]]),
            c.data(3, msg(1), send=True, end=True), c.headers(3, RESP)]  # fmt: skip
    recs += [c.data(3, big[i : i + 16384], send=False) for i in range(0, len(big), 16384)]
    recs += [c.data(3, msg(0), send=False), c.data(3, msg(7), send=False)]
    recs += [c.headers(3, [("grpc-status", "0")], end=True)]
    (x,), _ = uprobe_exchanges(write(tmp_path / "u.bin", recs), [SERVER_PORT])
    assert (x.resp_messages, x.resp_bytes) == (3, 40007)
    assert (x.req_messages, x.req_bytes) == (1, 1)
    assert x.path == "/probebench.Bench/ServerStream"
    assert x.degraded == []


def test_trailers_only_response(tmp_path: Path) -> None:
    c = Rec("client")
    only = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "3"),
            ("grpc-message", "bad")]  # fmt: skip
    recs = [c.headers(1, REQ), c.data(1, msg(5), send=True, end=True),
            c.headers(1, only, end=True)]  # fmt: skip
    (x,), _ = uprobe_exchanges(write(tmp_path / "u.bin", recs), [SERVER_PORT])
    assert (x.status, x.grpc_status, x.grpc_message) == (200, 3, "bad")
    assert (x.resp_messages, x.resp_bytes) == (0, 0)
    assert x.degraded == []


def test_missing_address_and_cut_values_degrade(tmp_path: Path) -> None:
    c = Rec("client")
    c.addr_status = D["PB_ADDR_NOT_TCP"]
    recs = [c.headers(1, REQ, cut=3), c.data(1, msg(5), send=True, end=True),
            c.headers(1, RESP), c.headers(1, [("grpc-status", "0")], end=True)]  # fmt: skip
    (x,), st = uprobe_exchanges(write(tmp_path / "u.bin", recs), [SERVER_PORT])
    reasons = {g.field: g.reason for g in x.degraded}
    assert reasons["client_port"] == "no_peer_address"
    assert reasons["path"] == "truncated_value"  # the value was cut to fit
    assert reasons["req_headers"] == "truncated_value"
    # a cut value is never given as a value; "7" fitted
    assert x.path is None and x.req_headers == {"x-probebench-id": "7"}
    assert x.client_port is None
    assert st.decode["addr_problems"] == {"not_tcp": 4}


def test_stream_whose_start_was_missed_is_degraded_not_invented(tmp_path: Path) -> None:
    c = Rec("client")
    recs = [c.headers(1, RESP), c.data(1, msg(5), send=False),
            c.headers(1, [("grpc-status", "0")], end=True)]  # fmt: skip
    (x,), st = uprobe_exchanges(write(tmp_path / "u.bin", recs), [SERVER_PORT])
    reasons = {g.field: g.reason for g in x.degraded}
    assert reasons["path"] == "headers_missed_stream"
    assert reasons["resp_messages"] == "headers_missed_stream"
    assert x.path is None and x.grpc_status == 0
    assert st.parse["orphan_frames"] == 1


def test_other_ports_are_skipped_and_attach_time_applies(tmp_path: Path) -> None:
    c = Rec("client")
    recs = [c.headers(1, REQ), c.data(1, msg(5), send=True, end=True), c.headers(1, RESP),
            c.headers(1, [("grpc-status", "0")], end=True)]  # fmt: skip
    path = write(tmp_path / "u.bin", recs)
    xs, st = uprobe_exchanges(path, [SERVER_PORT + 1])
    assert xs == [] and st.skipped_other_ports == 4
    _, dst = decode(path, attach_at_ns=1025)
    assert dst.dropped_before_attach == 2


def test_a_kernel_side_recording_is_refused(tmp_path: Path) -> None:
    w = EventWriter(tmp_path / "k.bin", {"collector": "kprobe"})
    w.close()
    with pytest.raises(RunDirError, match="not a uprobe"):
        decode(tmp_path / "k.bin")


def _many(n: int) -> list[tuple[str, str]]:
    return [(f"x-m{i:03d}", f"v{i}" * (1 + i % 7)) for i in range(n)]


def test_a_block_in_several_parts_is_one_block(tmp_path: Path) -> None:
    c = Rec("client")
    fields = REQ + _many(200)
    parts = c.header_parts(1, fields, per_part=64)
    o = Rec("client", conn=0xBEEF)
    o.ts += 5  # another thread's block, recorded between the parts
    other = o.headers(3, REQ)
    recs = [parts[0], other, *parts[1:], c.data(1, msg(5), send=True, end=True),
            c.headers(1, RESP), c.headers(1, [("grpc-status", "0")], end=True)]  # fmt: skip
    _, st = decode(write(tmp_path / "u.bin", recs))
    assert st.header_blocks == 4 and st.header_parts == 7
    xs, _ = uprobe_exchanges(tmp_path / "u.bin", [SERVER_PORT])
    x = next(x for x in xs if x.stream_id == 1)
    assert x.req_headers == {k: v for k, v in fields if not k.startswith(":")}
    assert x.degraded == []


@pytest.mark.parametrize("lose", ["middle", "last"])
def test_a_lost_part_leaves_headers_unknown_never_wrong(tmp_path: Path, lose: str) -> None:
    c = Rec("client")
    fields = REQ + _many(150)
    parts = c.header_parts(1, fields, per_part=64)
    del parts[1 if lose == "middle" else -1]
    recs = [*parts, c.data(1, msg(5), send=True, end=True),
            c.headers(1, RESP), c.headers(1, [("grpc-status", "0")], end=True)]  # fmt: skip
    (x,), st = uprobe_exchanges(write(tmp_path / "u.bin", recs), [SERVER_PORT])
    assert st.decode["incomplete_blocks"] == 1
    assert x.req_headers == {}  # an unread field may share any name read
    assert {g.field: g.reason for g in x.degraded}["req_headers"] == "truncated_headers"
    assert x.path == "/probebench.Bench/Unary"  # pseudo-headers read are still certain


def test_fields_beyond_the_block_limit_are_unknown(tmp_path: Path) -> None:
    c = Rec("client")
    recs = [*c.header_parts(1, REQ, nfields=len(REQ) + 5),
            c.data(1, msg(5), send=True, end=True),
            c.headers(1, RESP), c.headers(1, [("grpc-status", "0")], end=True)]  # fmt: skip
    (x,), _ = uprobe_exchanges(write(tmp_path / "u.bin", recs), [SERVER_PORT])
    assert x.req_headers == {}
    assert {g.field: g.reason for g in x.degraded}["req_headers"] == "truncated_headers"


def test_headers_level_leaves_message_counts_out_of_scope(tmp_path: Path) -> None:
    c = Rec("client")
    recs = [c.headers(1, REQ), c.headers(1, RESP), c.headers(1, [("grpc-status", "0")], end=True)]
    w = EventWriter(tmp_path / "u.bin", {"collector": "uprobe", "format": FORMAT,
                                         "level": "headers"})  # fmt: skip
    for r in recs:
        w.kernel(r)
    w.close()
    (x,), _ = uprobe_exchanges(tmp_path / "u.bin", [SERVER_PORT])
    assert (x.status, x.grpc_status, x.req_headers["x-tenant"]) == (200, 0, "acme")
    reasons = {g.field: g.reason for g in x.degraded}
    assert reasons == {f: "not_collected" for f in
                       ("req_bytes", "req_messages", "resp_bytes", "resp_messages")}  # fmt: skip


MS = 1_000_000


def test_reset_calls_have_their_clients_status(tmp_path: Path) -> None:
    """A cancel (sent by the client, received by the server), a deadline, a refused stream,
    a reset after the trailers (ignored) and a reset as the stream's first event."""
    c, s = Rec("client"), Rec("server")
    timed = [*REQ, ("grpc-timeout", "100m")]
    recs = [
        c.headers(1, REQ), c.data(1, msg(3), send=True, end=True), c.rst(1, 8, send=True),
        s.headers(1, REQ), s.data(1, msg(3), send=False, end=True), s.rst(1, 8, send=False),
        c.headers(3, timed), c.data(3, msg(3), send=True, end=True),
        c.rst(3, 8, send=True, after_ns=101 * MS),
        c.headers(5, REQ), c.rst(5, 7, send=False),
        s.headers(7, REQ), s.data(7, msg(3), send=False, end=True), s.headers(7, RESP),
        s.headers(7, [("grpc-status", "0")], end=True), s.rst(7, 0, send=True),
        s.rst(9, 7, send=True),
        c.headers(11, timed), c.rst(11, 8, send=True, after_ns=90 * MS),
    ]  # fmt: skip
    xs, st = uprobe_exchanges(write(tmp_path / "u.bin", recs), [SERVER_PORT])
    got = {(x.side, x.stream_id): x for x in xs}
    assert len(xs) == 7 and st.parse["after_end"] == 1
    assert got["client", 1].grpc_status == 1 and got["server", 1].grpc_status == 1
    assert got["client", 1].req_messages == 1 and got["client", 1].resp_messages == 0
    assert got["client", 3].grpc_status == 4  # CANCEL past its deadline
    assert got["client", 5].grpc_status == 14  # REFUSED_STREAM: UNAVAILABLE
    assert got["server", 7].grpc_status == 0  # the trailers' status stands
    x9 = got["server", 9]  # a reset alone: a call, its request unknown
    assert x9.grpc_status == 14 and x9.path is None
    x11 = got["client", 11]  # near its deadline: unknown, with the reason
    assert x11.grpc_status is None
    assert ("grpc_status", "rst_cancel_or_deadline") in [(g.field, g.reason)
                                                         for g in x11.degraded]


def test_a_field_whose_strings_were_unreadable_is_cut_not_empty(tmp_path: Path) -> None:
    """The program sends a field whose string headers it could not read with lengths of
    2^32-1 and nothing captured: replay counts it truncated, never an empty value."""
    c = Rec("client")
    raw = bytearray(c.headers(1, REQ[:1])) + HF.pack(0xFFFFFFFF, 0xFFFFFFFF, 0, 0, 0)
    for name, v in (("count", 2), ("nfields", 2), ("blob_len", len(raw) - BLOB)):
        at = H.offset("pb_header_event", name)
        raw[at : at + 4] = v.to_bytes(4, "little")
    (block,), st = decode(write(tmp_path / "u.bin", [bytes(raw)]))
    assert block.fields == [(":method", "POST"), ("", "")]
    assert block.cut == {1} and st.truncated_fields == 1


# read-only strings of the binary, by the address the program would name them by
RO = {":method": 0x91A000, "POST": 0x91A010, ":path": 0x91A020,
      "/probebench.Bench/Unary": 0x91A030, "content-type": 0x91A050,
      "application/grpc": 0x91A060, ":status": 0x91A070, "200": 0x91A080,
      "grpc-status": 0x91A090, "0": 0x91A0A0}  # fmt: skip


def _unary(c: Rec, s: Rec, sid: int, ro: dict[str, tuple[int, bool]] | None) -> list[bytes]:
    req = [(n, "7" if n == "x-probebench-id" else v) for n, v in REQ]
    return [
        c.headers(sid, req, ro=ro), c.data(sid, msg(3), send=True, end=True),
        s.headers(sid, req, ro=ro), s.data(sid, msg(3), send=False, end=True),
        s.headers(sid, RESP, ro=ro), c.headers(sid, RESP, ro=ro),
        s.headers(sid, [("grpc-status", "0")], end=True, ro=ro),
        c.headers(sid, [("grpc-status", "0")], end=True, ro=ro),
    ]  # fmt: skip


def test_read_only_strings_named_by_address_are_resolved(tmp_path: Path) -> None:
    """The program sends a read-only string with its address once, then the address alone
    (uprobe-grpc/5): replay gives the same call either way, and an attach time after the
    first call does not lose the strings it carried."""
    c, s = Rec("client"), Rec("server")
    first = _unary(c, s, 1, {t: (a, False) for t, a in RO.items()})
    attach = max(c.ts, s.ts) + 5  # after the first call's records, before the second's
    later = _unary(c, s, 3, {t: (a, True) for t, a in RO.items()})
    path = write(tmp_path / "u.bin", first + later)
    full, st = uprobe_exchanges(path, [SERVER_PORT])
    late, _ = uprobe_exchanges(path, [SERVER_PORT], attach_at_ns=attach)
    assert len(full) == 4 and st.decode["unresolved_strings"] == 0
    for x in full + late:
        assert x.degraded == []
        assert (x.method, x.path, x.status, x.grpc_status) == (
            "POST", "/probebench.Bench/Unary", 200, 0)  # fmt: skip
        assert x.req_headers["content-type"] == "application/grpc"
    assert {x.stream_id for x in late} == {3}


def test_a_reference_without_its_bytes_is_unknown_never_guessed(tmp_path: Path) -> None:
    """A reference whose bytes no record carried (that record lost), or whose address two
    records gave different bytes for, is unknown: a value is marked cut, a name leaves its
    field out (the block's headers unknown), and nothing is filled in."""
    c = Rec("client")
    recs = [
        # two records give 0x91A030 different bytes: neither is trusted for a reference
        c.headers(1, [("x-a", "/one")], ro={"/one": (0x91A030, False)}),
        c.headers(1, [("x-a", "/two")], ro={"/two": (0x91A030, False)}),
        c.headers(5, REQ, ro={"/probebench.Bench/Unary": (0x91A030, True),
                              "x-tenant": (0x91B000, True)}),
        c.data(5, msg(3), send=True, end=True), c.headers(5, RESP),
        c.headers(5, [("grpc-status", "0")], end=True),
    ]  # fmt: skip
    xs, st = uprobe_exchanges(write(tmp_path / "u.bin", recs), [SERVER_PORT])
    (x,) = [x for x in xs if x.stream_id == 5]
    reasons = {g.field: g.reason for g in x.degraded}
    assert x.path is None and reasons["path"] == "truncated_value"
    assert "x-tenant" not in x.req_headers and reasons["req_headers"] == "truncated_headers"
    assert x.method == "POST"
    assert st.decode["unresolved_strings"] == 2
