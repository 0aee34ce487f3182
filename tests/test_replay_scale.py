"""Replay at scale: the faster routes give what the old ones gave, and the disk guard holds.

Root-free: recorded run directories (tests/fixtures/replay/*, with their metrics.json as
the replay before the rewrite scored them) and a slice of a busy h2c capture whose
connections were opened before the capture started (nghttpd + h2load -c 2 -m 2).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from harness.analysis import replay as replay_mod
from harness.analysis.replay import REPLAY_JSON, replay, write_parquet
from harness.groundtruth import extract as extract_mod
from harness.groundtruth.extract import extract_exchanges
from harness.model import Degradation, Exchange, RunManifest
from harness.workflows.observe import _wait_watching_disk

FIXTURES = Path(__file__).parent / "fixtures" / "replay"
RUNS = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
H2C_MID = next(FIXTURES.glob("h2c-mid-connection-*.pcapng"))
# the first 600 packets of `observe -- wrk -t1 -c4` against nginx (port 41341): every
# request the same bytes, each response 613 bytes after the same headers
WRK = FIXTURES / "wrk-keepalive-41341.pcapng"


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    truth = dict(metrics["truth"])
    truth.pop("h2_decode", None)  # added by the fields route
    truth.pop("out_of_order", None)
    return {"rows": metrics["rows"], "tvw": metrics["truth_vs_workload"], "truth": truth,
            "collectors": metrics["collectors"]}  # fmt: skip


def _as_before(after: Any, before: Any) -> Any:
    """``after`` cut to the keys ``before`` has: fields added to metrics.json since the
    fixture was scored (TLS, connection-tracking counters) are new, not changed scores."""
    if isinstance(before, dict) and isinstance(after, dict):
        return {k: _as_before(after.get(k), v) for k, v in before.items()}
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [_as_before(a, b) for a, b in zip(after, before, strict=True)]
    return after


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_recorded_runs_score_as_before(run: Path, tmp_path: Path) -> None:
    work = tmp_path / run.name
    shutil.copytree(run, work)
    before = json.loads((run / "metrics.json").read_text())
    after = replay(work)
    expected = _scores(before)
    assert _as_before(_scores(json.loads(json.dumps(after, default=str))), expected) == expected
    assert RunManifest.load(work).recording["bytes_per_1k_exchanges"] > 0
    assert json.loads((work / REPLAY_JSON).read_text())["exchanges"]["truth"] > 0
    table = pq.read_table(work / "exchanges" / "truth.parquet")
    assert table.num_rows == after["truth"]["exchanges"]


def test_parallel_truth_worker_scores_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The truth decoded in a worker process (big captures) equals the in-process one."""
    run = next(r for r in RUNS if "keepalive" in r.name)
    work = tmp_path / run.name
    shutil.copytree(run, work)
    monkeypatch.setattr(replay_mod, "PARALLEL_TRUTH_BYTES", 0)
    after = replay(work)
    expected = _scores(json.loads((run / "metrics.json").read_text()))
    assert _as_before(_scores(json.loads(json.dumps(after, default=str))), expected) == expected
    # the worker's own peak (it is no child of the replay's: the forkserver's)
    assert json.loads((work / REPLAY_JSON).read_text())["truth_peak_rss_kb"] > 0


def _port(pcap: Path) -> int:
    return int(pcap.stem.rsplit("-", 1)[1])


def test_h2c_fields_route_equals_the_json_route(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _port(H2C_MID)
    fast, fstats = extract_exchanges(H2C_MID, http1_ports=[], h2c_ports=[port])
    assert fstats.h2_decode == "fields"
    assert len(fast) > 500
    # headers Wireshark could not decode after a mid-connection start stay unknown, not guessed
    assert any(x.authority is None and x.method == "GET" for x in fast)

    def unsure(self: Any, row: list[str], fr: Any) -> None:
        self.unsure = "forced by the test"

    monkeypatch.setattr(extract_mod._H2Fields, "packet", unsure)
    slow, sstats = extract_exchanges(H2C_MID, http1_ports=[], h2c_ports=[port])
    assert sstats.h2_decode == "json (forced by the test)"
    assert [x.to_dict() for x in fast] == [x.to_dict() for x in slow]
    f, s = fstats.to_dict(), sstats.to_dict()
    f.pop("h2_decode"), s.pop("h2_decode")
    assert f == s


def test_keepalive_frames_holding_their_messages_are_not_read_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """wrk's requests each repeat the one before, so every HTTP frame is a suspected
    repeat report; those whose fields account for their bytes exactly need no second
    tshark pass over the capture to be checked, and the truth is the same."""
    passes: list[list[str]] = []
    real = extract_mod.TsharkStream

    def counting(pcap: Path, args: list[str]) -> Any:
        passes.append(args)
        return real(pcap, args)

    monkeypatch.setattr(extract_mod, "TsharkStream", counting)
    fast, fast_stats = extract_exchanges(WRK, http1_ports=[41341], h2c_ports=[])
    assert len(passes) == 1
    monkeypatch.setattr(extract_mod, "_holds_exactly", lambda *_args: False)
    slow, slow_stats = extract_exchanges(WRK, http1_ports=[41341], h2c_ports=[])
    assert len(passes) > 1  # the scan, then passes for the frames' own bytes
    assert len(fast) > 250
    # (the slice may end between a request and its response on each of the 4 connections)
    assert sum(x.status == 200 and x.resp_bytes == 613 for x in fast) >= len(fast) - 4
    assert [x.to_dict() for x in fast] == [x.to_dict() for x in slow]
    # read back, each connection is held whole (the streamed decode's own counters differ)
    assert (fast_stats.streams_held_whole, slow_stats.streams_held_whole) == (0, 4)
    held = ("streams_held_whole", "held_peak")
    assert {k: v for k, v in fast_stats.to_dict().items() if k not in held} == \
        {k: v for k, v in slow_stats.to_dict().items() if k not in held}


def test_parquet_keeps_integers_exact_and_writes_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay_mod, "ROW_GROUP", 2)
    big = 1_795_890_228_285_191_225  # a CLOCK_REALTIME ns value: a float64 would round it
    xs = [
        Exchange(source="truth", side="wire", protocol="http/1.1", t_start_ns=big + i,
                 req_headers={"b": "1", "a": "2"}, degraded=[Degradation("status", "x")])
        for i in range(5)
    ] + [Exchange(source="kprobe", side="client", protocol="http/1.1")]  # fmt: skip
    write_parquet(xs, tmp_path / "x.parquet")
    f = pq.ParquetFile(tmp_path / "x.parquet")
    assert f.metadata.num_row_groups == 3
    t = f.read()
    assert t.column("t_start_ns").to_pylist() == [big + i for i in range(5)] + [None]
    assert t.column("req_headers").to_pylist()[0] == '{"a": "2", "b": "1"}'
    assert t.column("degraded").to_pylist()[0] == '[["status", "x"]]'


def test_disk_guard_stops_below_the_threshold_and_not_above(tmp_path: Path) -> None:
    said: list[str] = []
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        free = shutil.disk_usage(tmp_path).free
        why, full = _wait_watching_disk(sleeper, 20, tmp_path, free * 4, said.append)
        assert why is not None and "below --min-free-mb" in why and full is None
        assert sleeper.poll() is None  # the caller stops the command, cleanly
    finally:
        sleeper.kill()
        sleeper.wait()
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    assert _wait_watching_disk(quick, 20, tmp_path, 1, said.append) == (None, None)
    assert quick.returncode == 0
    assert not any("warning" in s for s in said[1:])


def test_a_capture_bound_ends_the_observation_once_reached(tmp_path: Path) -> None:
    said: list[str] = []
    capture = tmp_path / "capture.pcapng"
    # a capture growing 64 KiB every 10 ms, bounded at 1 MiB
    grow = (f"import time\nwith open({str(capture)!r}, 'ab') as f:\n    for _ in range(3000):\n"
            "        f.write(b'x' * 65536); f.flush(); time.sleep(0.01)")
    writer = subprocess.Popen([sys.executable, "-c", grow])
    try:
        low, full = _wait_watching_disk(writer, 20, tmp_path, 1, said.append,
                                        capture=(capture, 1 << 20))  # fmt: skip
        assert low is None and full is not None and "--max-capture-mb 1" in full
        assert writer.poll() is None  # ended by the bound, not by the command
        assert 1 << 20 <= capture.stat().st_size < 64 << 20
    finally:
        writer.kill()
        writer.wait()


def test_an_interrupted_run_whose_collectors_attached_is_replayable() -> None:
    m = RunManifest(run_id="r", scenario="observe", params={"collectors": ["kprobe"]},
                    started_utc="", machine={}, status="interrupted",
                    collectors={"kprobe": {"attach_ns": 1}})  # fmt: skip
    assert replay_mod.replayable(m)
    m.collectors = {}
    assert not replay_mod.replayable(m)
    m.status = "failed"
    assert not replay_mod.replayable(m)


def test_a_capture_with_drops_is_decoded_without_waiting_for_missing_segments(
    tmp_path: Path,
) -> None:
    run = next(r for r in RUNS if "keepalive" in r.name)
    work = tmp_path / run.name
    shutil.copytree(run, work)
    m = RunManifest.load(work)
    m.capture["packets_dropped"] = 3
    m.save(work)
    after = replay(work, write=False)
    assert after["truth"]["out_of_order"] is False
    assert after["capture"]["packets_dropped"] == 3
    # this capture has no gap: the truth is the same either way
    before = json.loads((run / "metrics.json").read_text())
    rows = json.loads(json.dumps(after["rows"], default=str))
    assert _as_before(rows, before["rows"]) == before["rows"]
