"""Dumpcap on loopback: a live capture of known traffic, its drop counters and its failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
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


@needs_dumpcap
@pytest.mark.capture
def test_dumpcap_stopped_by_somebody_else_is_an_error(tmp_path):
    cap = Dumpcap(tmp_path / "x.pcapng", [9])
    cap.start()
    pid = cap.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # our own child, standing in for an outside kill
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    with pytest.raises(CaptureError, match="stopped before the capture was over"):
        cap.stop()
    assert cap.stats["exited_early"] is True
    assert cap.pid is None


@needs_dumpcap
@pytest.mark.capture
def test_interim_100_continue_does_not_take_the_final_response(tmp_path):
    pcap = tmp_path / "continue.pcapng"
    body = b"e" * 300
    with (
        http_server() as port,
        Dumpcap(pcap, [port]) as cap,
        socket.create_connection(("127.0.0.1", port), timeout=10) as s,
    ):
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nx-probebench-id: 7\r\n"
                  b"Expect: 100-continue\r\nContent-Length: 300\r\n\r\n")
        interim = s.recv(1024)
        s.sendall(body)
        final = b""
        while b"\r\n\r\n300" not in final:
            final += s.recv(1024)
    assert interim.startswith(b"HTTP/1.1 100")
    xs, stats = extract_exchanges(pcap, http1_ports=[port], h2c_ports=[],
                                  mono_offset_ns=cap.stats["mono_offset_ns"])
    assert len(xs) == 1
    assert (xs[0].method, xs[0].status, xs[0].req_bytes, xs[0].resp_bytes) == ("POST", 201, 300, 3)
    assert xs[0].req_headers["expect"] == "100-continue"
    assert (stats.unpaired_requests, stats.unpaired_responses) == (0, 0)


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
