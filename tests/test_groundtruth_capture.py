"""Dumpcap on loopback: a live capture of known traffic, its drop counters and its failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.errors import CaptureError
from harness.groundtruth import Dumpcap, bpf_filter, extract_exchanges, read_isb_stats
from harness.groundtruth.loopback import Connection, Request, drive, http_server

FIX = Path(__file__).parent / "fixtures" / "groundtruth"

needs_dumpcap = pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap missing")


@needs_dumpcap
@pytest.mark.capture
def test_live_capture_sees_every_exchange_and_drops_nothing(tmp_path):
    pcap = tmp_path / "live.pcapng"
    plan = [Connection("1.1", (Request("GET", "/bytes/1234"), Request("POST", "/echo", 777))),
            Connection("1.0", (Request("GET", "/chunked/10"),))]  # 1.0: plain body, no chunks
    with http_server() as port, Dumpcap(pcap, [port]) as cap:
        work = drive("127.0.0.1", port, plan, tmp_path / "workload.jsonl", first_id=40)
    stats = cap.stats
    assert stats["returncode"] == 0
    assert stats["sentinel_seen"] is True
    assert stats["packets_dropped"] == 0
    assert stats["drops"] == {"pcap": 0, "dumpcap": 0, "flushed": 0, "ps_ifdrop": 0}
    assert stats["packets_received"] == stats["packets_captured"] > 0
    assert stats["isb"] == [{"interface_id": 0, "ifrecv": stats["packets_received"],
                             "ifdrop": 0}]
    assert stats["filter"].startswith(f"(tcp and (port {port}))")

    xs, truth = extract_exchanges(pcap, http1_ports=[port], h2c_ports=[],
                                  mono_offset_ns=stats["mono_offset_ns"])
    assert [x.req_headers["x-probebench-id"] for x in xs] == ["40", "41", "42"]
    for x, w in zip(xs, work, strict=True):
        assert (x.method, x.path, x.status, x.client_port, x.conn_seq, x.protocol) == (
            w["method"], w["path"], w["status"], w["client_port"], w["conn_seq"], w["protocol"])
        assert (x.req_bytes, x.resp_bytes) == (w["req_bytes"], w["resp_bytes"])
        assert w["t_start_ns"] - 100_000 <= x.t_start_ns <= x.t_end_ns <= w["t_end_ns"] + 100_000
    assert truth.packets == stats["packets_captured"]  # the sentinel datagrams included
    assert truth.unpaired_requests == truth.unpaired_responses == 0


@needs_dumpcap
@pytest.mark.capture
def test_missing_interface_is_one_clear_error(tmp_path):
    cap = Dumpcap(tmp_path / "x.pcapng", [8080], interface="nosuchif0")
    with pytest.raises(CaptureError, match=r"dumpcap could not capture on 'nosuchif0': .+"), cap:
        pass


def test_missing_dumpcap_is_one_clear_error(tmp_path):
    with pytest.raises(CaptureError, match="not installed"):
        Dumpcap(tmp_path / "x.pcapng", [8080], dumpcap="no-such-dumpcap").start()


@needs_dumpcap
@pytest.mark.capture
def test_body_exception_wins_and_dumpcap_is_still_reaped(tmp_path):
    cap = Dumpcap(tmp_path / "x.pcapng", [9])
    with pytest.raises(RuntimeError, match="boom"), cap:
        raise RuntimeError("boom")
    assert cap.stats["returncode"] == 0
    assert cap.stats["packets_dropped"] == 0
    assert cap._proc is None


def test_bpf_filter():
    assert bpf_filter([]) == "tcp"
    assert bpf_filter([81, 80, 81]) == "tcp and (port 80 or port 81)"
    assert bpf_filter([80], 5000) == "(tcp and (port 80)) or (udp and dst host 127.0.0.1 " \
                                     "and dst port 5000)"
    with pytest.raises(CaptureError, match="not a TCP port"):
        bpf_filter([70000])


def test_isb_stats_of_the_committed_capture():
    (isb,) = read_isb_stats(FIX / "http1.pcapng")
    assert isb["ifdrop"] == 0
    meta = json.loads((FIX / "http1.meta.json").read_text())
    assert isb["ifrecv"] == meta["capture"]["packets_received"]
