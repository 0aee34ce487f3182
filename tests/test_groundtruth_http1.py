"""HTTP/1 ground truth on a committed capture of known traffic (tests/fixtures/groundtruth)."""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path

import pytest

from harness.errors import CaptureError
from harness.groundtruth import extract_exchanges, match_workload
from harness.groundtruth.pyshark_extract import extract_http1_pyshark
from harness.groundtruth.tshark import unescape

FIX = Path(__file__).parent / "fixtures" / "groundtruth"
PCAP = FIX / "http1.pcapng"
WORKLOAD = FIX / "http1.workload.jsonl"
META = json.loads((FIX / "http1.meta.json").read_text())
PORT = META["server_port"]
OFFSET = META["capture"]["mono_offset_ns"]
WORK = [json.loads(line) for line in WORKLOAD.read_text().splitlines()]


@pytest.fixture(scope="module")
def truth():
    return extract_exchanges(PCAP, http1_ports=[PORT], h2c_ports=[], mono_offset_ns=OFFSET)


def test_every_exchange_decoded_with_the_clients_fields(truth):
    xs, stats = truth
    assert [x.req_headers["x-probebench-id"] for x in xs] == [str(i) for i in range(21)]
    for x, w in zip(xs, WORK, strict=True):
        assert (x.source, x.side) == ("truth", "wire")
        got = (x.protocol, x.method, x.path, x.status, x.client_port, x.server_port, x.conn_seq,
               x.req_bytes, x.resp_bytes)
        want = (w["protocol"], w["method"], w["path"], w["status"], w["client_port"],
                w["server_port"], w["conn_seq"], w["req_bytes"], w["resp_bytes"])
        assert got == want, w["id"]
        assert (x.client_ip, x.server_ip) == ("127.0.0.1", "127.0.0.1")
        assert x.authority == f"127.0.0.1:{PORT}"
        assert x.resp_headers["x-probebench-id"] == str(w["id"])
    assert stats.exchanges == 21
    assert stats.tcp_streams == 8
    assert (stats.unpaired_requests, stats.unpaired_responses) == (0, 0)
    assert stats.warnings == {}
    assert not stats.truncated
    assert stats.packets == META["capture"]["packets_captured"]


def test_body_sizes_follow_http_framing(truth):
    by_id = {int(x.req_headers["x-probebench-id"]): x for x in truth[0]}
    # HEAD announces Content-Length 4096 but carries no body
    assert by_id[2].method == "HEAD"
    assert by_id[2].resp_headers["content-length"] == "4096"
    assert by_id[2].resp_bytes == 0
    # 204 has no body; chunked bodies are counted de-chunked
    assert (by_id[3].status, by_id[3].resp_bytes) == (204, 0)
    assert by_id[8].resp_headers["transfer-encoding"] == "chunked"
    assert by_id[8].resp_bytes == 3500
    assert by_id[16].resp_bytes == 1
    # HTTP/1.0 body ended by the close: no Content-Length, no chunks
    assert by_id[5].protocol == "http/1.0"
    assert "content-length" not in by_id[5].resp_headers
    assert by_id[5].resp_bytes == 2500
    assert (by_id[7].method, by_id[7].req_bytes) == ("POST", 5000)
    assert by_id[11].path == "/bytes/4000?x=y&z=1"


def test_http10_is_one_exchange_per_connection_and_keepalive_counts_positions(truth):
    xs = truth[0]
    short = [x for x in xs if x.protocol == "http/1.0"]
    assert len(short) == 6
    assert len({x.client_port for x in short}) == 6
    assert {x.conn_seq for x in short} == {0}
    for first, n in ((6, 7), (13, 8)):
        conn = xs[first:first + n]
        assert {x.client_port for x in conn} == {conn[0].client_port}
        assert [x.conn_seq for x in conn] == list(range(n))
        assert {x.conn_id for x in conn} == {conn[0].conn_id}


def test_wire_times_fall_inside_the_clients_monotonic_window(truth):
    slack = 100_000  # ns: the realtime/monotonic offset was read once, bracketed to < 1 us
    for x, w in zip(truth[0], WORK, strict=True):
        assert x.t_start_ns is not None and x.t_end_ns is not None
        assert w["t_start_ns"] - slack <= x.t_start_ns <= x.t_end_ns <= w["t_end_ns"] + slack


def test_pyshark_path_gives_the_same_exchanges(truth):
    xs, stats = extract_http1_pyshark(PCAP, http1_ports=[PORT], mono_offset_ns=OFFSET)
    assert [x.to_dict() for x in xs] == [x.to_dict() for x in truth[0]]
    assert (stats.packets, stats.tcp_streams, stats.exchanges) == (
        truth[1].packets, truth[1].tcp_streams, truth[1].exchanges)
    # pyshark's own loop would leave a SIGCHLD handler whose wake-up socket, never read,
    # fills once the test process has spawned enough children (a later test then fails)
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1


def test_match_workload_all_matched(truth):
    m = match_workload(truth[0], WORKLOAD)
    assert m == {"workload": 21, "matched": 21, "missing": 0, "extra": 0, "missing_ids": [],
                 "missing_reasons": {}}


def test_match_workload_counts_disagreements_as_missing(truth, tmp_path):
    work = [dict(w) for w in WORK]
    work[3]["status"] = 200  # truth says 204
    work[8]["client_port"] = 1  # wrong connection
    del work[12]  # truth has id 12, workload does not: extra
    work.append({**work[0], "id": 99})  # never on the wire: missing
    path = tmp_path / "workload.jsonl"
    path.write_text("".join(json.dumps(w) + "\n" for w in work))
    m = match_workload(truth[0], path)
    assert m["workload"] == 21
    assert m["matched"] == 18
    assert m["missing"] == 3
    assert m["missing_ids"] == [3, 8, 99]
    assert m["missing_reasons"] == {"status_differs": 1, "client_port_differs": 1,
                                    "not_captured": 1}
    assert m["extra"] == 1


def _cut_inside_packet(src: Path, dst: Path, fraction: float) -> None:
    """Copy ``src`` up to the middle of the pcapng block holding ``fraction`` of its bytes."""
    data = src.read_bytes()
    target = int(len(data) * fraction)
    off = 0
    while off < len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        if off + blen > target and btype == 6:  # an Enhanced Packet Block
            dst.write_bytes(data[: off + blen // 2])
            return
        off += blen
    raise AssertionError("no packet block found past the cut point")


def test_truncated_capture_yields_what_it_can_and_says_so(tmp_path, truth):
    cut = tmp_path / "cut.pcapng"
    _cut_inside_packet(PCAP, cut, 0.5)
    xs, stats = extract_exchanges(cut, http1_ports=[PORT], h2c_ports=[])
    assert stats.truncated
    assert "capture file cut short in the middle of a packet" in stats.warnings
    assert 0 < stats.packets < truth[1].packets
    assert 0 < len(xs) < 21
    assert [x.req_headers["x-probebench-id"] for x in xs] == [str(i) for i in range(len(xs))]


def test_capture_cut_before_its_first_packet_is_an_error(tmp_path):
    cut = tmp_path / "cut.pcapng"
    _cut_inside_packet(PCAP, cut, 0.0)
    with pytest.raises(CaptureError, match="cut short before its first packet"):
        extract_exchanges(cut, http1_ports=[PORT], h2c_ports=[])


def test_random_bytes_are_not_a_capture(tmp_path):
    junk = tmp_path / "junk.pcapng"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CaptureError, match="isn't a capture file"):
        extract_exchanges(junk, http1_ports=[PORT], h2c_ports=[])


@pytest.mark.parametrize("content", [None, b""])
def test_missing_or_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "x.pcapng"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CaptureError, match=r"does not exist|is empty"):
        extract_exchanges(path, http1_ports=[PORT], h2c_ports=[])


def test_a_port_cannot_be_both_protocols():
    with pytest.raises(CaptureError, match="both HTTP/1 and h2c"):
        extract_exchanges(PCAP, http1_ports=[PORT], h2c_ports=[PORT])


def test_unescape_undoes_tshark_field_escapes():
    assert unescape(r"Host: a\r\n") == "Host: a\r\n"
    assert unescape(r"q\"\\z\x01") == 'q"\\z\x01'
    assert unescape("plain") == "plain"
