"""HTTP/2 truth handed on as calls end: the same truth as holding every call to the end of
the capture, in the same order, while what is held is the calls in flight, not the recording.

Root-free: real tshark on recorded captures (a busy h2c slice begun mid-connection, the
scoring fixtures' gRPC runs, which take the JSON route, and that h2c slice merged with a wrk
slice: HTTP/1 and HTTP/2 in one capture), and _H2Calls fed a long synthetic connection.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from streamed import drain

from harness.groundtruth import extract as extract_mod
from harness.groundtruth.extract import TruthStats, stream_exchanges

FIX = Path(__file__).parent / "fixtures"
H2C_MID = FIX / "replay" / "h2c-mid-connection-55117.pcapng"  # nghttpd + h2load, 1,502 calls
WRK = FIX / "replay" / "wrk-keepalive-41341.pcapng"
GRPC = {"grpc-early": ("20261128T211137-grpc-unary-go2go-early", 42493),
        "grpc-late": ("20261128T211322-grpc-unary-go2go-late", 47019)}  # fmt: skip
WHOLE = 1 << 62  # a grace no capture reaches: every call held to the end, as before
# what only says how the decode held things, not what the truth is
HELD = ("held_peak", "spill_bytes", "h2_held_peak", "h2_spill_bytes")


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list, list]]:
    """case -> (pcap, HTTP/1 ports, h2c ports)."""
    d = tmp_path_factory.mktemp("h2streamed")
    out: dict[str, tuple[Path, list, list]] = {"h2c-mid": (H2C_MID, [], [55117])}
    for case, (run, port) in GRPC.items():
        pcap = d / f"{case}.pcapng"
        pcap.write_bytes(lzma.decompress((FIX / "scoring" / run / "capture.pcapng.xz")
                                         .read_bytes()))  # fmt: skip
        out[case] = (pcap, [], [port])
    if shutil.which("editcap") and shutil.which("mergecap"):
        # the h2c slice (0.39 s) moved to begin 10 ms before the wrk slice (50 ms)
        subprocess.run(["editcap", "-t", "-1507.324330597", str(H2C_MID), str(d / "h.pcapng")],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run(["mergecap", "-w", str(d / "both.pcapng"), str(WRK), str(d / "h.pcapng")],
                       check=True, capture_output=True)  # fmt: skip
        out["both"] = (d / "both.pcapng", [41341], [55117])
    return out


def _decode(
    mp: pytest.MonkeyPatch, case: tuple[Path, list, list], *, grace: int, records: int,
    batch: int = 5000, json_route: bool = False,
) -> tuple[list[Any], TruthStats]:
    pcap, http1, h2c = case
    mp.setattr(extract_mod, "_H2_GRACE_NS", grace)
    mp.setattr(extract_mod, "_H2_SPILL_BATCH", records)
    mp.setattr(extract_mod, "_SPILL_BATCH", records)
    if json_route:
        def unsure(self: Any, row: list[str], fr: Any) -> None:
            self.unsure = "forced by the test"

        mp.setattr(extract_mod._H2Fields, "packet", unsure)
    batches, stats = drain(stream_exchanges(pcap, http1_ports=http1, h2c_ports=h2c,
                                            batch=batch))  # fmt: skip
    mark = None
    for b in batches:  # each batch in start order, nothing before an earlier watermark
        starts = [x.t_start_ns or 0 for x in b.exchanges]
        assert starts == sorted(starts)
        assert all(s < b.watermark_ns for s in starts)
        assert mark is None or all(s >= mark for s in starts)
        mark = b.watermark_ns
    return [x for b in batches for x in b.exchanges], stats


@pytest.mark.parametrize(("case", "json_route"), [
    ("h2c-mid", False), ("h2c-mid", True), ("grpc-early", False), ("grpc-late", False),
    ("both", False), ("both", True),
])  # fmt: skip
def test_calls_handed_on_at_once_give_the_truth_of_calls_held_to_the_end(
    case: str, json_route: bool, captures: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No grace at all (a call is handed on at the first packet after it ended), spill
    records of 3 calls, batches of 16: every exchange, field for field, in the same order,
    and the same statistics as every call held to the end."""
    if case not in captures:
        pytest.skip("editcap/mergecap (wireshark-common) missing")
    with monkeypatch.context() as mp:
        whole, wstats = _decode(mp, captures[case], grace=WHOLE, records=1 << 30,
                                json_route=json_route)  # fmt: skip
    with monkeypatch.context() as mp:
        got, stats = _decode(mp, captures[case], grace=0, records=3, batch=16,
                             json_route=json_route)  # fmt: skip
    assert len(whole) > 40
    assert [x.to_dict() for x in got] == [x.to_dict() for x in whole]
    a, b = stats.to_dict(), wstats.to_dict()
    for k in HELD:
        del a[k], b[k]
    assert a == b
    assert stats.h2_late_frames == 0 and "warnings" in a
    assert (stats.h2_decode == "fields") == (case in ("h2c-mid", "both") and not json_route)
    # handed on while the capture was read, not held to its end
    calls = sum(x.protocol.startswith("h2c") for x in got)
    assert wstats.h2_held_peak >= calls - 4  # (4 that began before the capture: orphans)
    assert stats.h2_held_peak < calls // 3, (stats.h2_held_peak, calls)
    if case in ("h2c-mid", "both"):  # 1,502 calls and wrk's 289 exchanges
        assert stats.held_peak < 40, stats.held_peak


MS = 1_000_000


def _long_connection(n: int, late: bool = False) -> tuple[extract_mod._H2Calls, TruthStats]:
    """n calls on one connection, one every 0.1 ms (request, then response in the next
    packet), the first of them never answered; ``late``: a DATA frame of call 3 comes again
    after the end."""
    stats = TruthStats()
    h2 = extract_mod._H2Calls([80], stats)
    cli = ("10.0.0.1", 5000, "10.0.0.2", 80)
    srv = ("10.0.0.2", 80, "10.0.0.1", 5000)
    t = 0
    for k in range(n):
        sid = 2 * k + 1
        t += MS // 10
        h2.advance(t)
        h2.frame(extract_mod._Frame(t, 0, *cli), 1, sid, True, [(":method", "GET"),
                 (":path", f"/{k}")], 0, True, 20)  # fmt: skip
        if k == 0:
            continue  # no response: a call that never ends
        h2.advance(t + MS // 20)
        fr = extract_mod._Frame(t + MS // 20, 0, *srv)
        h2.frame(fr, 1, sid, False, [(":status", "200")], 0, True, 5)
        h2.frame(fr, 0, sid, True, None, 100)
    if late:
        h2.advance(t + 2 * h2.grace)
        h2.frame(extract_mod._Frame(t + 2 * h2.grace, 0, *srv), 0, 7, True, None, 100)
    h2.finish()
    return h2, stats


def test_a_long_connection_holds_the_calls_of_one_grace_not_the_recording() -> None:
    """10,000 calls a second through a 1 s grace: about 10,000 held whichever the length;
    the handed-on ids of the connection kept as a few runs; the call that never ended kept
    apart, so the spill's watermark is not held back to its start."""
    per_grace = extract_mod._H2_GRACE_NS // (MS // 10)
    peaks, runs = [], []
    for n in (3 * per_grace, 6 * per_grace):
        h2, stats = _long_connection(n)
        calls = [x for rec in h2.spill.records() for _, _, x in rec]
        assert len(calls) == n - 1 and all(x.status == 200 for x in calls)
        assert [x.path for _, _, x in h2.unended] == ["/0"]
        assert min(h2.spill.mins) > h2.unended[0][0]
        assert stats.unpaired_requests == 1 and stats.h2_late_frames == 0
        peaks.append(stats.h2_held_peak)
        runs.append(h2.handed[0].runs())
        h2.close()
    assert per_grace <= peaks[0] <= per_grace + 20, peaks
    assert peaks[1] == peaks[0], peaks
    assert runs[1] <= 2, runs


def test_a_frame_after_its_call_was_handed_on_is_counted_not_a_new_call() -> None:
    h2, stats = _long_connection(50, late=True)
    calls = [x for rec in h2.spill.records() for _, _, x in rec]
    # the whole decode would have added 100 bytes to /3's response; no orphan, no phantom
    assert len(calls) == 49 and stats.unpaired_responses == 0
    assert next(x for x in calls if x.path == "/3").resp_bytes == 100
    assert stats.h2_late_frames == 1
    assert any("handed on" in w for w in stats.warnings)
    h2.close()
