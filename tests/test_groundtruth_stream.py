"""The truth as a stream: batches in order of start time under a watermark that never lies,
the same exchanges however the spill is cut, and memory held to what is in flight.

Root-free: real tshark on recorded captures (a wrk slice against nginx, the HTTP/1 fixture
with HTTP/1.0, keep-alive, HEAD, chunked and pipelined requests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from streamed import drain

from harness.groundtruth import extract as extract_mod
from harness.groundtruth.extract import TruthBatch, TruthStats, extract_exchanges, stream_exchanges
from harness.groundtruth.pcapng import layout
from harness.model import Exchange

FIX = Path(__file__).parent / "fixtures"
WRK = FIX / "replay" / "wrk-keepalive-41341.pcapng"
HTTP1 = FIX / "groundtruth" / "http1.pcapng"
HTTP1_PORT = json.loads((FIX / "groundtruth" / "http1.meta.json").read_text())["server_port"]
# the first 150 packets of the matrix's http11-pipelined py->go run (port 54545): requests
# several to a frame, so its 4 streams are held whole and split by a second tshark pass
PIPELINED = FIX / "replay" / "pipelined-54545.pcapng"


def _all(pcap: Path, ports: list[int], batch: int) -> tuple[list[TruthBatch], TruthStats]:
    return drain(stream_exchanges(pcap, http1_ports=ports, h2c_ports=[], batch=batch))


def _key(x: Exchange) -> str:
    return json.dumps(x.to_dict(), sort_keys=True)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wrk slice with the pipelined one moved into its time span: streams paired as
    they come and streams held whole, interleaved in one capture."""
    if not (shutil.which("editcap") and shutil.which("mergecap")):
        pytest.skip("editcap/mergecap (wireshark-common) missing")
    d = tmp_path_factory.mktemp("mixed")
    # the pipelined slice starts 2026-11-29 01:40:41.035642, the wrk one 17:58:40.970861
    subprocess.run(["editcap", "-t", "-27720.054781", str(PIPELINED), str(d / "p.pcapng")],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["mergecap", "-w", str(d / "mixed.pcapng"), str(WRK), str(d / "p.pcapng")],
                   check=True, capture_output=True)  # fmt: skip
    return d / "mixed.pcapng"


@pytest.fixture(scope="module")
def one_pass() -> dict[str, tuple[list[Exchange], TruthStats]]:
    """Each case's truth from one tshark pass, decoded once for the tests of this file."""
    return {}


@pytest.mark.parametrize("case", ["wrk", "http1", "mixed"])
def test_any_spill_cut_gives_the_same_truth_in_start_order(
    case: str, mixed: Path, monkeypatch: pytest.MonkeyPatch, one_pass: dict
) -> None:
    pcap, ports = {"wrk": (WRK, [41341]), "http1": (HTTP1, [HTTP1_PORT]),
                   "mixed": (mixed, [41341, 54545])}[case]  # fmt: skip
    if case not in one_pass:
        one_pass[case] = extract_exchanges(pcap, http1_ports=ports, h2c_ports=[], part_packets=0)
    whole, whole_stats = one_pass[case]
    assert whole
    # one message per spill record: responses wait for requests across records, the
    # watermark moves after each
    monkeypatch.setattr(extract_mod, "_SPILL_BATCH", 1)
    batches, stats = _all(pcap, ports, batch=4)
    got = [x for b in batches for x in b.exchanges]
    assert sorted(map(_key, got)) == sorted(map(_key, whole))
    assert stats.exchanges == len(whole) == whole_stats.exchanges
    assert stats.warnings == whole_stats.warnings
    assert len(batches) > 1
    mark = None
    for b in batches:
        starts = [x.t_start_ns or 0 for x in b.exchanges]
        assert starts == sorted(starts)
        if mark is not None:  # nothing in a later batch starts before an earlier watermark
            assert all(s >= mark for s in starts), (mark, starts[:3])
        assert all(s < b.watermark_ns for s in starts)
        mark = b.watermark_ns
    assert batches[-1].watermark_ns == extract_mod._NEVER
    if case == "mixed":
        # as the whole-list pairing gave before the streaming (measured at 976e70e): the 4
        # pipelined streams held whole, 13 requests cut off by the slice's end with server
        # bytes after them
        assert (stats.exchanges, stats.streams_held_whole, stats.unpaired_requests) == \
            (369, 4, 25)
        assert stats.warnings == {"HTTP/1 requests whose responses Wireshark did not decode "
                                  "although the server sent data after them: marked "
                                  "truth_unreliable": 13}  # fmt: skip
    # within a connection, positions come in order of start time
    seqs: dict[str | None, list[int]] = {}
    for x in got:
        seqs.setdefault(x.conn_id, []).append(x.conn_seq or 0)
    assert all(s == sorted(s) for s in seqs.values())


def test_memory_holds_what_is_in_flight_not_the_recording(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """wrk's 4 keep-alive connections last the whole slice: with small spill records, the
    decode holds a few exchanges at a time, not the 289 of the slice."""
    monkeypatch.setattr(extract_mod, "_SPILL_BATCH", 8)
    batches, stats = _all(WRK, [41341], batch=1)
    n = sum(len(b.exchanges) for b in batches)
    assert n == stats.exchanges > 200
    assert stats.streams_held_whole == 0  # every report settled from its own fields
    assert 0 < stats.held_peak <= 8 + 4, stats.held_peak


def _stats(s: TruthStats) -> dict:
    d = s.to_dict()
    del d["tshark_parts"], d["parts_given_up"]
    return d


@pytest.mark.parametrize(
    ("case", "packets", "overlap", "parts"),
    # http1: 60 packets before a part are enough, 50 are not (an HTTP/1.0 close seen from
    # its middle); mixed: a pipelined connection idle through an overlap
    [("wrk", 250, 30, 3), ("http1", 80, 60, 3), ("mixed", 150, 60, 0)],
)
def test_the_capture_in_parts_gives_the_one_pass_truth(
    case: str, packets: int, overlap: int, parts: int, mixed: Path, one_pass: dict
) -> None:
    """tshark given the capture in small parts (each with an overlap before it): the same
    exchanges and statistics as one pass; where a part cannot be lined up with the one
    before (a connection idle through the overlap, a message begun before it), the parts
    are given up and the one pass is what comes out."""
    pcap, ports = {"wrk": (WRK, [41341]), "http1": (HTTP1, [HTTP1_PORT]),
                   "mixed": (mixed, [41341, 54545])}[case]  # fmt: skip
    if case not in one_pass:
        one_pass[case] = extract_exchanges(pcap, http1_ports=ports, h2c_ports=[], part_packets=0)
    whole, whole_stats = one_pass[case]
    got, stats = extract_exchanges(pcap, http1_ports=ports, h2c_ports=[], part_packets=packets,
                                   part_overlap=overlap)  # fmt: skip
    assert whole_stats.tshark_parts == 1
    assert list(map(_key, got)) == list(map(_key, whole))
    assert _stats(stats) == _stats(whole_stats)
    if parts:
        assert (stats.tshark_parts, stats.parts_given_up) == (parts, None)
    else:  # lined up wrongly, it would have lost or changed exchanges above
        assert stats.tshark_parts == 1
        assert stats.parts_given_up


def test_a_capture_tshark_can_be_given_in_parts(tmp_path: Path) -> None:
    lay = layout(HTTP1, 40, 10)
    assert lay is not None
    # every 40th frame from the first, and 10 before each
    assert lay.packets == 161 and lay.size == HTTP1.stat().st_size
    assert sorted(lay.offsets) == [1, 31, 41, 71, 81, 111, 121, 151, 161]
    assert lay.offsets[1] == lay.header_end < lay.offsets[31] < lay.offsets[41]
    (tmp_path / "x.pcap").write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(40))
    assert layout(tmp_path / "x.pcap", 40) is None  # pcap, not pcapng: decoded whole
