"""Replay holds a window, not the recording: matcher and stitcher state stay flat with length."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamed import matcher_peak

from harness.analysis.match import HORIZON_NS, StreamMatcher, Verdict, match
from harness.collectors.kprobe.decode import decode
from harness.model import Exchange
from harness.protocols.common import Segment
from harness.protocols.http1.stitch import Http1Stitcher, Http1Stream, stitch_http1

MS = 1_000_000
RUNS = sorted(p for p in (Path(__file__).parent / "fixtures" / "replay").iterdir() if p.is_dir())


def _x(
    source: str, t: int, port: int, seq: int, *, path: str = "/", end: int | None = None
) -> Exchange:
    return Exchange(
        source=source, side="server" if source != "truth" else "wire",  # type: ignore[arg-type]
        protocol="http/1.1", client_ip="127.0.0.1", client_port=port,
        server_ip="127.0.0.1", server_port=80, conn_seq=seq, method="GET", path=path,
        status=200, t_start_ns=t, t_end_ns=end,
        conn_id=f"c{port}" if source != "truth" else None,
    )  # fmt: skip


def _soak(n: int) -> tuple[Iterator[tuple[int, Exchange]], Iterator[Exchange], dict[str, int]]:
    """n exchanges 1 ms apart: half on two keep-alive connections, half one per connection
    (HTTP/1.0: a new port each); the server reads each 50 us after it is on the wire."""

    def port(k: int) -> int:
        return 1000 + k % 4 if k % 2 else 10_000 + k

    def seq(k: int) -> int:
        return k // 4 if k % 2 else 0

    truth = ((k, _x("truth", k * MS, port(k), seq(k))) for k in range(n))
    seen = (_x("kprobe", k * MS + 50_000, port(k), seq(k)) for k in range(n))
    ends = {f"c{port(k)}": 1 for k in range(0, n, 2)}
    ends.update({f"c{1000 + j}": len(range(j, n, 4)) for j in (1, 3)})
    return truth, seen, ends


def _peak(n: int) -> dict[str, int]:
    """The most state the matcher held while matching n exchanges, sampled as it went."""
    return matcher_peak(*_soak(n))


def test_matching_state_does_not_grow_with_the_recording() -> None:
    short, long = _peak(6_000), _peak(18_000)
    assert (short["pairs"], long["pairs"]) == (6_000, 18_000)
    window = 2 * HORIZON_NS // MS + 10  # behind and ahead of the observation, 1 per ms
    assert long["truth"] <= window and long["candidates"] <= window
    # closed HTTP/1.0 connections are forgotten: only the keep-alive ones stay
    assert long["last"] <= 4
    for k in ("truth", "candidates", "connections", "taken", "last"):
        assert long[k] <= short[k] + 10, (k, short[k], long[k])


def test_truth_aged_out_still_decides_the_next_in_sequence() -> None:
    """A free truth exchange after the previous pair that is already too old was what the
    in-sequence rule looked at first: the match falls back to the nearest one, as it did
    when all the truth was held."""
    s = 1_000 * MS
    truth = [
        _x("truth", 0, 5, 0), _x("truth", 100 * MS, 5, 1),  # the second one nobody reads
        _x("truth", 1_500 * MS, 5, 2), _x("truth", 2_500 * MS, 5, 3),
        _x("truth", 2_900 * MS, 6, 0),  # another connection moves time on
    ]  # fmt: skip
    seen = [_x("kprobe", 50_000, 5, 0), _x("kprobe", 2_900 * MS + 50_000, 6, 0),
            _x("kprobe", 3 * s, 5, 1)]  # fmt: skip
    got = {id(v.observed): v.truth for v in match(truth, seen).pairs}
    assert got[id(seen[2])] is truth[3]
    assert got[id(seen[0])] is truth[0]


def test_http1_stitcher_hands_exchanges_out_as_they_finish() -> None:
    """A long keep-alive connection, pipelined in bursts of 4: only the exchanges still
    open are held, whatever the connection's length."""
    n, peak, got = 4_000, 0, 0
    st = Http1Stitcher("server", "kprobe", from_start=True, pipelined=True)
    for k in range(0, n, 4):
        t = k * MS
        burst = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % (k + j) for j in range(4))
        st.feed(True, Segment(t, burst, len(burst)))
        for j in range(4):
            resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            st.feed(False, Segment(t + (j + 1) * 1000, resp, len(resp)))
            peak = max(peak, len(st.open))
        xs = st.ready()
        assert [x.path for x in xs] == [f"/{i}" for i in range(got, got + len(xs))]
        got += len(xs)
    stats = st.finish(None)
    got += len(st.ready())
    assert got == stats.exchanges == stats.complete == n
    assert peak <= 4


def test_http1_stream_holds_only_what_it_has_not_placed() -> None:
    """Segments arrive direction by direction; a request waits only for the response side
    to show where it goes in time, so a long connection holds a handful of segments."""
    st = Http1Stream("client", from_start=True)
    peak = 0
    for k in range(2_000):
        req = b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % k
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        st.add(True, Segment(k * MS, req, len(req)))
        st.add(False, Segment(k * MS + 500, resp, len(resp)))
        peak = max(peak, st.held_segments, len(st.stitcher.open))
    xs, stats = st.finish(None)
    assert len(xs) == stats.complete == 2_000
    assert [x.conn_seq for x in xs] == list(range(2_000))
    assert peak <= 2


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_stitched_while_decoded_equals_stitched_after(run: Path) -> None:
    """Connections seen from their open are stitched during the decode, their bytes let go;
    each gives the exchanges and counters stitching its kept bytes afterwards gives."""
    events = run / "events" / "kprobe.bin"
    live, _ = decode(events, stitch=lambda _xs: None)
    kept, _ = decode(events)
    by_key = {c.key: c for c in kept}
    streamed = [c for c in live if c.stitched is not None]
    # a late attach sees HTTP/1.0's new connections open, not keep-alive's old ones
    assert bool(streamed) == ("http10" in run.name)
    for c in streamed:
        assert not c.send and not c.recv
        old = by_key[c.key]
        lost = old.lost_after[0 if old.role == "client" else 1]
        xs, st = stitch_http1(old.send, old.recv, side=old.role, closed_ns=old.closed_ns,  # type: ignore[arg-type]
                              from_start=old.from_start, source="kprobe",
                              requests_lost_after=lost)  # fmt: skip
        if lost is None:
            assert c.stitched == (xs, st)
        else:
            # w16: a loss found after the stream was stitched (its close's call counts)
            # re-marks it, at least as cautiously as a stitch told up front: it knows no
            # status the other does not
            after = {x.conn_seq: x.status for x in xs}
            assert all(x.status in (None, after.get(x.conn_seq)) for x in c.stitched[0])
    others = [c for c in live if c.stitched is None]
    assert [(c.key, c.send, c.recv) for c in others] == [
        (by_key[c.key].key, by_key[c.key].send, by_key[c.key].recv) for c in others
    ]


def _pipelined(late_ms: int, answered_ms: int) -> tuple[list[Exchange], list[Exchange]]:
    """Connection 5 pipelines 8 requests in one write at 0; the server reads the first 4 at
    0.5 s and the last 4 (a second read, answered from ``answered_ms`` on) at ``late_ms``;
    connection 6 moves time on, one exchange per 100 ms over 10 s."""
    truth = [
        _x("truth", 0, 5, k, path=f"/{k}",
           end=(600 + 10 * k if k < 4 else answered_ms + 10 * k) * MS)
        for k in range(8)
    ] + [_x("truth", k * 100 * MS, 6, k, end=k * 100 * MS + MS) for k in range(100)]  # fmt: skip
    seen = [_x("kprobe", 500 * MS, 5, k, path=f"/{k}") for k in range(4)]
    seen += [_x("kprobe", late_ms * MS, 5, k, path=f"/{k}") for k in range(4, 8)]
    seen += [_x("kprobe", k * 100 * MS + 50_000, 6, k) for k in range(100)]
    return truth, seen


def test_a_pipelined_request_read_long_after_it_was_sent_is_still_its_partner() -> None:
    """The server reads requests 4-7 3 s after they were on the wire (busy with the first
    ones, as a slow QEMU guest was): the sequence it follows gives their partners, however
    late, so no phantom and no miss."""
    truth, seen = _pipelined(late_ms=3_000, answered_ms=3_005)
    m = match(truth, seen)
    assert not m.phantoms
    assert len(m.pairs) == len(seen)
    assert all(v.truth.path == v.observed.path for v in m.pairs if v.truth.client_port == 5)
    assert all(not v.degraded for v in m.pairs)


def test_a_request_read_after_its_answer_went_out_is_not_its_partner() -> None:
    """The server cannot read a request after answering it: truth answered before the late
    read (here at 2.6 s, the read at 3 s) is not taken in sequence, nor after the window."""
    truth, seen = _pipelined(late_ms=3_000, answered_ms=2_600)
    m = match(truth, seen)
    assert len(m.phantoms) == 4
    assert {v.truth.path for v in m.pairs if v.truth.client_port == 5} == {"/0", "/1", "/2", "/3"}


@pytest.mark.parametrize("closed", [True, False])
def test_truth_held_for_a_lost_connection_goes(closed: bool) -> None:
    """The collector sees the first 4 of a pipelined burst and then loses the connection:
    the 4 it never saw are held (the server may read them late) only until the collector
    closes the connection or, if it never says so, until their answers are on the wire
    (60 s here); then they go, missed, and the matcher holds the window again."""
    truth, seen = _pipelined(late_ms=0, answered_ms=60_000)
    seen = [x for x in seen if not (x.client_port == 5 and (x.conn_seq or 0) >= 4)]
    truth += [_x("truth", k * 100 * MS, 6, k, end=k * 100 * MS + MS) for k in range(100, 700)]
    seen += [_x("kprobe", k * 100 * MS + 50_000, 6, k) for k in range(100, 700)]
    seen.sort(key=lambda x: x.t_start_ns or 0)
    pairs: list[Verdict] = []
    phantoms: list[Exchange] = []
    m = StreamMatcher(pairs.append, phantoms.append)
    order = sorted(range(len(truth)), key=lambda i: (truth[i].t_start_ns or 0, i))
    held = []
    k = 0
    for obs in seen:
        ahead = (obs.t_start_ns or 0) + HORIZON_NS
        while k < len(order) and (truth[order[k]].t_start_ns or 0) <= ahead:
            m.add_truth(truth[order[k]], order[k])
            k += 1
        m.add_observed(obs)
        if closed and obs.client_port == 5 and obs.conn_seq == 3:
            m.close_connection("c5")
        m.advance((obs.t_start_ns or 0) + 1)  # as the streamed replay ages: early
        held.append((obs.t_start_ns or 0, m.retained()["held"]))
    m.finish()
    assert not phantoms and len(pairs) == len(seen)
    assert {v.truth.path for v in pairs if v.truth.client_port == 5} == {"/0", "/1", "/2", "/3"}
    if closed:
        assert not any(h for _t, h in held)  # nothing to hold for a closed connection
    else:
        assert any(h for t, h in held if 2_100 * MS < t < 60_000 * MS)
        assert not any(h for t, h in held if t > 60_100 * MS)
    assert m.retained()["truth"] <= 2 * HORIZON_NS // (100 * MS) + 10


class _NeverNone(dict):  # type: ignore[type-arg]
    """A free count that always says there may be some: _find then looks every time."""

    def get(self, key: object, default: object = None) -> object:
        return 1


@pytest.mark.parametrize("seed", range(2))
def test_a_connection_with_nothing_free_skips_the_search_and_decides_alike(seed: int) -> None:
    """Truth the collector missed, observations the truth missed (a collector that outlives
    the capture), ids that outlive the window, a port reused: the count of free candidates
    that lets _find return at once never says none while one is free (the same verdicts
    as searching every time), and the observations after the capture's end are phantoms."""
    import random

    from harness.analysis.match import ID_HEADER

    rnd = random.Random(seed)
    truth: list[Exchange] = []
    seen: list[Exchange] = []
    for k in range(3_000):
        port, t = 1000 + k % 3, k * MS // 2
        seq = k // 3 + (100_000 if k > 2_000 else 0)  # the port reused on a new connection
        x = _x("truth", t, port, seq, path=f"/{k}", end=t + MS // 4)
        if k < 2_400 and rnd.random() < 0.9:  # the capture ends at 2,400
            if rnd.random() < 0.05:
                x.req_headers[ID_HEADER] = f"id{k}"
            truth.append(x)
        if ID_HEADER in x.req_headers and x in truth and rnd.random() < 0.5:
            # no address: claimed by its id, after the truth aged out of the window
            o = _x("kprobe", t + 3 * HORIZON_NS, port, seq, path=f"/{k}")
            o.client_port = o.server_port = o.conn_id = None
            o.req_headers[ID_HEADER] = x.req_headers[ID_HEADER]
            seen.append(o)
        elif rnd.random() < 0.9:
            o = _x("kprobe", t + rnd.randrange(0, 80_000), port, seq, path=f"/{k}")
            o.side = "server" if rnd.random() < 0.7 else "client"  # type: ignore[assignment]
            o.conn_id = f"c{port}-{k > 2_000}"
            seen.append(o)

    def verdicts(search_always: bool) -> tuple[list[tuple[int, int]], list[int]]:
        pairs: list[Verdict] = []
        phantoms: list[Exchange] = []
        real = StreamMatcher.__init__

        def init(self: StreamMatcher, *a: object, **kw: object) -> None:
            real(self, *a, **kw)  # type: ignore[arg-type]
            if search_always:
                self._free = _NeverNone()

        StreamMatcher.__init__ = init  # type: ignore[method-assign]
        try:
            from harness.analysis.match import match_into

            match_into(truth, seen, pairs.append, phantoms.append)
        finally:
            StreamMatcher.__init__ = real  # type: ignore[method-assign]
        return (sorted((id(v.truth), id(v.observed)) for v in pairs),
                sorted(id(x) for x in phantoms))  # fmt: skip

    fast, slow = verdicts(False), verdicts(True)
    assert fast == slow
    assert len(fast[0]) > 1_500 and len(fast[1]) > 400


def test_truth_an_id_keeps_past_the_window_still_counts_as_free_until_taken() -> None:
    """Truth with an id ages out of its connection's list while free, yet stays claimable
    by that id: it leaves the free count only when taken, so the connection's other free
    truth is still found (a count that dropped it twice would call that one a phantom)."""
    from harness.analysis.match import ID_HEADER

    a = _x("truth", 0, 5, 0)
    a.req_headers[ID_HEADER] = "a"
    b, c = _x("truth", 2_900 * MS, 5, 1), _x("truth", 2_500 * MS, 6, 0)
    by_id = _x("kprobe", 3_000 * MS, 5, 0)
    by_id.client_port = by_id.server_port = by_id.conn_id = None
    by_id.req_headers[ID_HEADER] = "a"
    seen = [_x("kprobe", 2_500 * MS + 50_000, 6, 0),  # ages a out: another connection
            by_id, _x("kprobe", 3_000 * MS + 50_000, 5, 1)]  # fmt: skip
    got = match([a, b, c], seen)
    assert not got.phantoms
    assert {id(v.observed): v.truth for v in got.pairs} == {
        id(seen[0]): c, id(seen[1]): a, id(seen[2]): b}
