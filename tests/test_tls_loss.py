"""TLS-collector loss: calls the ring buffer lost split a connection, as on the kernel side.

Joined across the gap, an HTTP/2 connection's HPACK indices decode against a table that
misses the lost insertions: a header reads as another one's value (seen in a loaded run:
14-15 wrong values per 1000 calls). Split, the tail starts from an empty table and what
it cannot know is degraded. Hand-made event files, real HPACK bytes.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hpack import Encoder

from harness.collectors.eventfile import EventWriter
from harness.collectors.tls.decode import decode
from harness.collectors.tls.exchanges import tls_exchanges
from harness.collectors.tls.layout import FORMAT, header

PORT = 50051
SSL = 0x5000
HDR = header()
EV = HDR.structs["pb_tls_event"]
DATA_OFF = HDR.offset("pb_tls_event", "data")
SEND, RECV = 0, 1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", sid)
        + payload
    )


def event(seq: int, d: int, data: bytes, ts: int) -> bytes:
    e = EV()
    e.ts_ns, e.ssl, e.tgid, e.tid, e.fd, e.dir = ts, SSL, 100, 100, 7, d
    e.addr_source, e.family, e.lport, e.rport = 1, 2, 40000, PORT
    e.laddr[:4], e.raddr[:4] = [127, 0, 0, 1], [127, 0, 0, 1]
    e.orig_len = e.cap_len = len(data)
    e.seq = seq
    return bytes(e)[:DATA_OFF] + data


def write(path: Path, records: list[bytes]) -> None:
    w = EventWriter(path, {"collector": "tls", "format": FORMAT})
    for r in records:
        w.kernel(r)
    w.close()


def client_calls() -> list[bytes]:
    """A client's writes: three requests. The first inserts x-h1..x-h4 into the dynamic
    table, the second x-tag, and the third sends x-h3 again, by index: 64 counting the
    second's insertion, which is x-h2 in a table that missed it."""
    enc = Encoder()
    calls = [PREFACE + frame(4, 0, 0, b"")]
    extra = {
        1: [(b"x-h1", b"v1"), (b"x-h2", b"v2"), (b"x-h3", b"v3"), (b"x-h4", b"v4")],
        3: [(b"x-tag", b"two")],
        5: [(b"x-h3", b"v3")],
    }
    for sid, fields in extra.items():
        # all in the static table: only the x- fields touch the dynamic one
        pseudo = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
        calls.append(frame(1, 0x5, sid, enc.encode(pseudo + fields)))
    return calls


def test_gap_splits_the_connection_and_counts_the_lost_calls(tmp_path: Path) -> None:
    calls = client_calls()
    records = [event(i + 1, SEND, c, 1000 + i) for i, c in enumerate(calls) if i != 2]
    write(tmp_path / "ev", records)
    conns, st = decode(tmp_path / "ev")
    assert (st.lost_calls, st.loss_splits, len(conns)) == (1, 1, 2)
    head, tail = conns
    assert tail.continues is head and not tail.seen_from_start()
    assert sorted(head.calls[SEND]) == [1, 2] and sorted(tail.calls[SEND]) == [4]


def test_no_header_value_is_decoded_across_lost_calls(tmp_path: Path) -> None:
    """Joined across the lost call, stream 5 reads x-h2: v2 where it sent x-h3: v3; split,
    what stream 5 refers to is unknown (degraded), never another field's value."""
    calls = client_calls()
    write(tmp_path / "ev", [event(i + 1, SEND, c, 1000 + i) for i, c in enumerate(calls)
                            if i != 2])  # fmt: skip
    xs, _ = tls_exchanges(tmp_path / "ev", [PORT])
    by_sid = {x.stream_id: x for x in xs}
    assert set(by_sid) == {1, 5}
    assert by_sid[1].req_headers["x-h3"] == "v3"
    five = by_sid[5]
    assert "x-h2" not in five.req_headers and five.req_headers.get("x-h3") in (None, "v3")
    assert any(d.reason == "hpack_unknown_index" for d in five.degraded)
    # control: with nothing lost, stream 5 decodes whole
    write(tmp_path / "all", [event(i + 1, SEND, c, 1000 + i) for i, c in enumerate(calls)])
    xs, _ = tls_exchanges(tmp_path / "all", [PORT])
    assert {x.stream_id: dict(x.req_headers) for x in xs}[5] == {"x-h3": "v3"}
