"""The streamed replay scores what the whole-list scoring scores, and holds a window only.

Root-free, on the recorded runs of tests/fixtures/scoring: each row matched from truth and
collector exchanges fed in small batches with watermarks (analysis/streaming.RowStream)
must equal ``metrics.score`` over the whole lists, with an observation window cut too; the
kernel side's streamed decode must hand over the same exchanges as the whole decode.
"""

from __future__ import annotations

import copy
import heapq
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from streamed import assert_same_exchanges, drain
from test_replay_bounded import _pipelined
from test_scoring import RUNS, unpack

from harness.analysis import replay as replay_mod
from harness.analysis import streaming as streaming_mod
from harness.analysis.match import ID_HEADER
from harness.analysis.metrics import Row, score
from harness.analysis.replay import _window, run_protocol
from harness.analysis.streaming import RowStream, TruthFeed, _Pending
from harness.collectors import registry
from harness.collectors.base import STREAM_END_NS, VARIANTS, ReplayInput
from harness.collectors.kprobe import decode as decode_mod
from harness.collectors.kprobe.exchanges import kprobe_exchanges, kprobe_stream
from harness.groundtruth.extract import extract_exchanges
from harness.model import CAPTURE, EVENTS_DIR, WORKLOAD, Exchange, RunManifest, is_h2

REPLAY_RUNS = sorted(
    p for p in (Path(__file__).parent / "fixtures" / "replay").iterdir() if p.is_dir()
)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Per run: its truth (ids taken out, so no exchange is claimed by id: the streamed
    truth knows none before it is released), and each collector variant's exchanges."""
    work = tmp_path_factory.mktemp("streaming")
    out: dict[str, Any] = {}
    for name in RUNS:
        d = unpack(name, work)
        m = RunManifest.load(d)
        h2 = is_h2(run_protocol(m))
        truth, _ = extract_exchanges(
            d / CAPTURE, http1_ports=[] if h2 else m.ports, h2c_ports=m.ports if h2 else [],
            mono_offset_ns=int(m.capture.get("mono_offset_ns", 0)),
        )  # fmt: skip
        for t in truth:
            t.req_headers = {k: v for k, v in t.req_headers.items() if k != ID_HEADER}
        seen = {}
        for c in m.params["collectors"]:
            coll = registry.get(c)
            for v in coll.variants(m.params["attach"], run_protocol(m), False):
                xs, _ = coll.exchanges(ReplayInput(
                    d / EVENTS_DIR / f"{c}.bin", m.ports, run_protocol(m),
                    target_pids={int(p["pid"]) for p in m.processes},
                    variant=VARIANTS[v],
                ))  # fmt: skip
                seen[(c, v, int(m.collectors[c]["attach_ns"]))] = xs
        out[name] = (d, truth, seen)
    return out


def _row(side: str) -> Row:
    return Row("s", "p", "c", "s", "a", "k", side, "default")


def _streamed(
    truth: list[Exchange], seen: list[Exchange], attach: int, until: int | None, tb: int, ob: int
) -> dict[str, Any]:
    """One row scored from truth batches of ``tb`` and observation batches of ``ob``, each
    with the watermark the rest of its source allows."""
    feed = TruthFeed(lambda t: rs.count_truth(t))
    rs = RowStream(_row(seen[0].side if seen else "client"), attach, feed, until=until)
    order = sorted(range(len(truth)), key=lambda i: (truth[i].t_start_ns or 0, i))
    ts = [truth[i] for i in order]
    obs = list(seen)
    k = j = 0
    while k < len(ts) or j < len(obs):
        if k < len(ts):
            k += tb
            wm = (ts[k].t_start_ns or 0) if k < len(ts) else STREAM_END_NS
            feed.add(ts[k - tb : k], wm)
        if j < len(obs):
            j += ob
            rs.push(obs[j - ob : j])
        rest = obs[j:]
        owm = min(((x.t_start_ns or 0) for x in rest), default=STREAM_END_NS)
        rs.step(owm, feed.watermark)
    rs.step(STREAM_END_NS, feed.watermark)
    return rs.done().to_dict()


@pytest.mark.parametrize("name", RUNS)
def test_streamed_rows_equal_whole_rows(recorded: dict[str, Any], name: str) -> None:
    _d, truth, seen = recorded[name]
    starts = sorted(t.t_start_ns or 0 for t in truth)
    checked = 0
    for (_c, _v, attach), xs in seen.items():
        for side in ("client", "server"):
            mine = [x for x in xs if x.side == side]
            for until in (None, starts[len(starts) // 2]):
                t_in, s_in = _window(truth, copy.copy(mine), until)
                whole = score(_row(side), t_in, s_in, attach).to_dict()
                for tb, ob in ((1, 1), (7, 5), (1000, 3)):
                    got = _streamed(truth, mine, attach, until, tb, ob)
                    got["side"] = whole["side"]
                    assert got == whole, (name, side, until, tb, ob)
                    checked += 1
    assert checked >= 12


@pytest.mark.parametrize("name", RUNS)
def test_kernel_side_stream_hands_over_what_the_whole_decode_gives(
    recorded: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, _truth, _seen = recorded[name]
    m = RunManifest.load(d)
    events = d / EVENTS_DIR / "kprobe.bin"
    whole, wst = kprobe_exchanges(events, m.ports)
    monkeypatch.setattr(decode_mod, "HANDOVER_RECORDS", 8)  # hand over every few records
    batches, sst = drain(kprobe_stream(events, m.ports))
    got = [x for b in batches for x in b.exchanges]
    assert_same_exchanges(
        whole, got, lambda x: (x.side, x.conn_id, x.conn_seq or 0, x.stream_id or 0)
    )
    assert sst.decode["late_exchanges"] == 0
    assert sst.decode == wst.decode and sst.parse == wst.parse
    # watermarks only go up, and no exchange came after one that said it would not
    marks = [b.watermark_ns for b in batches]
    assert marks == sorted(marks) and marks[-1] == STREAM_END_NS
    for b, prev in zip(batches[1:], marks, strict=False):
        assert all((x.t_start_ns or 0) >= prev or x.t_start_ns is None for x in b.exchanges)
    if "keepalive" in name:  # seen from their open, or found mid-stream: handed over early
        assert sum(len(b.exchanges) for b in batches[:-1]) > len(whole) // 2


@pytest.mark.parametrize("answered_ms", [3_005, 2_600])
def test_late_pipelined_reads_stream_as_they_match_whole(answered_ms: int) -> None:
    """Truth held past the window for a server that reads a pipelined burst late: the
    streamed row (aged early, at each watermark) scores what the whole lists score."""
    truth, seen = _pipelined(late_ms=3_000, answered_ms=answered_ms)
    seen.sort(key=lambda x: (x.t_start_ns or 0, x.conn_seq or 0))
    whole = score(_row("server"), truth, seen, 0).to_dict()
    assert (whole["matched"], whole["phantoms"]) == ((108, 0) if answered_ms > 3_000 else (104, 4))
    for tb, ob in ((1, 1), (7, 5), (1000, 3)):
        assert _streamed(truth, seen, 0, None, tb, ob) == whole, (tb, ob)


def test_a_row_holds_the_window_not_the_recording() -> None:
    """Truth and observations 1 ms apart over 20 s, fed in batches: what the feed and the row
    hold stays within the matching window, however long the stream."""
    ms = 1_000_000

    def x(src: str, k: int) -> Exchange:
        return Exchange(
            source=src, side="server" if src != "truth" else "wire",  # type: ignore[arg-type]
            protocol="http/1.1", client_ip="127.0.0.1", client_port=1000 + k % 3,
            server_ip="127.0.0.1", server_port=80, conn_seq=k // 3, method="GET", path="/",
            status=200, t_start_ns=(k + 1) * ms + (50_000 if src != "truth" else 0),
            conn_id=f"c{k % 3}" if src != "truth" else None,
        )  # fmt: skip

    n = 20_000
    peak = {"items": 0, "held": 0, "list": 0}
    feed = TruthFeed(lambda t: rs.count_truth(t))
    rs = RowStream(_row("server"), 0, feed)
    for k0 in range(0, n, 500):
        feed.add([x("truth", k) for k in range(k0, k0 + 500)], (k0 + 501) * ms)
        rs.push(x("kprobe", k) for k in range(k0, k0 + 500))
        rs.step((k0 + 501) * ms, feed.watermark)
        feed.trim(rs.position())
        peak["items"] = max(peak["items"], feed.held)
        peak["list"] = max(peak["list"], len(feed.items))  # taken ones are None, cut later
        peak["held"] = max(peak["held"], rs.held)
    feed.add([], STREAM_END_NS)
    rs.step(STREAM_END_NS, STREAM_END_NS)
    row = rs.done()
    assert (row.observable, row.matched, row.degraded, row.phantoms) == (n, n, 0, 0)
    window = 2 * 2_020 + 1_000  # ms of truth behind and ahead of the matcher, plus a batch
    assert peak["items"] <= window and peak["held"] <= window
    assert peak["list"] <= 2 * window + streaming_mod._COMPACT


@pytest.mark.parametrize("run", REPLAY_RUNS, ids=[r.name for r in REPLAY_RUNS])
def test_a_run_without_workload_streams_its_truth_and_scores_as_before(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a workload (as an observe run has none) the truth is not needed whole: it
    comes from the worker process in batches (groundtruth.stream_exchanges) and each row is
    matched as it comes. Every row counts what the whole replay counted, the rows matched
    by the exchange id the kernel side decoded (no-sockdiag: no addresses) included."""
    work = tmp_path / run.name
    shutil.copytree(run, work)
    (work / WORKLOAD).unlink()
    monkeypatch.setattr(replay_mod, "PARALLEL_TRUTH_BYTES", 0)  # the worker, however small
    before = json.loads((run / "metrics.json").read_text())["rows"]
    after = replay_mod.replay(work)["rows"]
    counts = ("observable", "matched", "degraded", "wrong", "phantoms", "degraded_by_field",
              "recovery")  # fmt: skip
    assert [{k: r[k] for k in counts} for r in after] == [
        {k: r[k] for k in counts} for r in before
    ]
    used = json.loads((work / replay_mod.REPLAY_JSON).read_text())
    assert used["truth_cpu_s"] > 0 and used["truth_peak_rss_kb"] > 0


@pytest.mark.parametrize("side", ["client", "server"])
def test_one_matcher_scores_until_the_window_end_is_in_reach(side: str) -> None:
    """An observe row scores with one matcher while nothing it holds starts after the
    window's end, and splits in two only then: the row is what the whole lists cut by
    ``_window`` score, with misses, phantoms and exchanges straddling the end."""
    ms = 1_000_000
    lead = -50_000 if side == "client" else 50_000  # a client sends before the wire sees it

    def x(src: str, k: int) -> Exchange:
        return Exchange(
            source=src, side=side if src != "truth" else "wire",  # type: ignore[arg-type]
            protocol="http/1.1", client_ip="127.0.0.1", client_port=1000 + k % 3,
            server_ip="127.0.0.1", server_port=80, conn_seq=k // 3, method="GET", path="/",
            status=200 if k % 97 else 404,
            t_start_ns=(k + 1) * ms + (lead if src != "truth" else 0),
            t_end_ns=(k + 1) * ms + ms // 2, conn_id=f"c{k % 3}" if src != "truth" else None,
        )  # fmt: skip

    n = 6_000
    truth = [x("truth", k) for k in range(n)]
    seen = [x("kprobe", k) for k in range(n) if k % 173]  # missed by the collector
    for k in range(0, n, 211):  # on a connection the wire did not see: phantoms
        seen.append(x("kprobe", k))
        seen[-1].client_port, seen[-1].conn_id = 999, "c999"
    seen.sort(key=lambda o: (o.t_start_ns or 0, o.conn_seq or 0))
    until = 4_000 * ms + 20_000  # mid-burst: some exchanges straddle it
    t_in, s_in = _window(truth, copy.copy(seen), until)
    whole = score(_row(side), t_in, s_in, 0).to_dict()
    assert whole["phantoms"] and whole["matched"] < whole["observable"]
    for tb, ob in ((5, 3), (400, 300)):
        got = _streamed(truth, seen, 0, until, tb, ob)
        got["side"] = whole["side"]
        assert got == whole, (tb, ob)
    # and the split came late: one matcher scored most of the stream
    feed = TruthFeed(lambda t: None)
    rs = RowStream(_row(side), 0, feed, until=until)
    feed.add(truth, STREAM_END_NS)
    rs.push(seen)
    rs.step(until - 2_500 * ms, feed.watermark)
    assert rs.second is None and rs.scorer.row.matched > 1_450  # all but the missed
    rs.step(STREAM_END_NS, feed.watermark)
    assert rs.second is not None


def test_pending_gives_what_waits_in_key_order_as_a_heap_would() -> None:
    rng = random.Random(7)
    pending = _Pending()
    heap: list[tuple[int, int, int]] = []
    got: list[tuple[int, int, int]] = []
    want: list[tuple[int, int, int]] = []
    n = 0
    for _ in range(200):
        batch = []
        for _ in range(rng.randrange(0, 50)):
            batch.append((rng.randrange(1000), rng.randrange(3), n))
            n += 1
        pending.add(list(batch))
        for k in batch:
            heapq.heappush(heap, k)
        limit = rng.randrange(1000)
        while len(pending) and pending.items[pending.pos][0] < limit:
            got.append(pending.items[pending.pos])
            pending.pos += 1
        while heap and heap[0][0] < limit:
            want.append(heapq.heappop(heap))
        assert len(pending) == len(heap)
    assert got == want and len(got) > 1000
