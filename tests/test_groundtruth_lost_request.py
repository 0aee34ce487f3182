"""A request Wireshark never decodes whose response it does: curl's ``Expect: 100-continue``
upload answered at once (nginx: 405) and the connection closed with no body sent. The
dissector waits for the body, so only the response is reported. The truth still holds that
exchange (request fields unknown), so the collector's record of it is matched, not a
phantom; a collector exchange on a connection whose truth is complete still is one."""

from __future__ import annotations

import shutil
import socket
import threading
from array import array
from collections import Counter
from pathlib import Path

import pytest

from harness.analysis import replay as replay_mod
from harness.analysis.match import match
from harness.groundtruth import extract as ex
from harness.groundtruth.capture import Dumpcap
from harness.groundtruth.extract import (
    TruthStats,
    _Frame,
    _H1Msg,
    _pair_http1,
    _Runs,
    extract_exchanges,
)
from harness.model import TRUTH_UNRELIABLE, Exchange
from harness.runner.record import free_port

CLI, SRV = ("127.0.0.1", 40000), ("127.0.0.1", 8080)
MS = 1_000_000


def _frame(t_ms: int, to_server: bool) -> _Frame:
    a, b = (CLI, SRV) if to_server else (SRV, CLI)
    return _Frame(t_ms * MS, 7, a[0], a[1], b[0], b[1])


def _request(num: int, method: str, path: str) -> _H1Msg:
    row = [""] * len(ex._FIELDS)
    row[ex._METHOD], row[ex._URI], row[ex._VERSION] = method, path, "HTTP/1.1"
    row[ex._REQ_LINES] = "Host: h\\r\\n"
    return _H1Msg(num, 0, num, _frame(num, True), row, True)


def _response(num: int, code: str, clen: int) -> _H1Msg:
    row = [""] * len(ex._FIELDS)
    row[ex._CODE], row[ex._RESP_VERSION], row[ex._CLEN] = code, "HTTP/1.1", str(clen)
    row[ex._RESP_LINES] = f"Content-Length: {clen}\\r\\n"
    return _H1Msg(num, 0, num, _frame(num, False), row, False)


def _pair(msgs: list[_H1Msg], runs: dict[int | None, _Runs]):
    stats, warnings = TruthStats(), Counter[str]()
    times = array("q", [n * MS for n in range(20)])
    out = _pair_http1(msgs, times, {7: max(m.frame for m in msgs)}, stats, warnings, runs)
    return [x for x, _, _ in sorted(out, key=lambda o: o[0].t_start_ns or 0)], stats, warnings


# GET /a (frame 1) -> 200 (2); POST /p headers at frame 5, never reported -> 405 (6)
MSGS = [_request(1, "GET", "/a"), _response(2, "200", 10), _response(6, "405", 157)]


def test_a_response_to_a_request_never_decoded_is_an_exchange_with_the_request_unknown():
    xs, stats, _ = _pair(MSGS, {7: _Runs([5], answers=1)})
    assert [(x.method, x.path, x.status, x.resp_bytes) for x in xs] == [
        ("GET", "/a", 200, 10), (None, None, 405, 157)]  # fmt: skip
    assert xs[0].degraded == []  # the decoded pairing is judged in full
    lost = xs[1]
    assert {d.field: d.reason for d in lost.degraded} == {
        f: TRUTH_UNRELIABLE for f in ("method", "path", "req_bytes")}  # fmt: skip
    # begun where the client's bytes that no request was reported from begin
    assert (lost.t_start_ns, lost.t_end_ns, lost.conn_seq) == (5 * MS, 6 * MS, 1)
    assert (lost.client_port, lost.server_port, lost.conn_id) == (40000, 8080, "tcp.stream=7")
    assert stats.unpaired_responses == 0


def test_without_client_bytes_after_the_last_request_the_pairing_stays_doubtful():
    """No client bytes left unreported: the extra response answers nothing seen (a 408 on
    an idle connection), or a request was lost where in-order pairing cannot place it."""
    xs, stats, warnings = _pair(MSGS, {})
    assert [(x.path, x.status) for x in xs] == [("/a", 200)]
    assert {d.field for d in xs[0].degraded} == {"status", "resp_bytes"}
    assert stats.unpaired_responses == 1
    assert any("more responses than requests" in w for w in warnings)


def test_client_bytes_after_the_extra_response_leave_the_pairing_doubtful():
    """A request lost before a decoded one (its response then answered by the decoded
    one's) with the client sending after the last response: in-order pairing cannot be
    trusted, nor can the extra response be placed."""
    xs, stats, _ = _pair(MSGS, {7: _Runs([9], answers=0)})
    assert [(x.path, x.status) for x in xs] == [("/a", 200)]
    assert {d.field for d in xs[0].degraded} == {"status", "resp_bytes"}
    assert stats.unpaired_responses == 1


def _seen(side: str, t_ms: float, method: str, path: str, status: int, seq: int) -> Exchange:
    return Exchange(source="kprobe", side=side, protocol="http/1.1", client_ip=CLI[0],
                    client_port=CLI[1], server_ip=SRV[0], server_port=SRV[1],
                    conn_id="c1", conn_seq=seq, method=method, path=path, status=status,
                    t_start_ns=int(t_ms * MS), req_bytes=0)  # fmt: skip


def test_the_collectors_record_of_it_is_matched_on_both_sides_and_not_wrong():
    truth, _, _ = _pair(MSGS, {7: _Runs([5], answers=1)})
    truth[0].req_bytes = 0
    # the client writes before the wire, the server reads after it
    for side, dt in (("client", -0.01), ("server", 0.01)):
        seen = [_seen(side, 1 + dt, "GET", "/a", 200, 0), _seen(side, 5 + dt, "POST", "/p", 405, 1)]
        m = match(truth, seen)
        assert m.phantoms == [], side
        assert [(v.truth.status, v.observed.path, v.wrong) for v in m.pairs] == [
            (200, "/a", {}), (405, "/p", {})], side  # fmt: skip


def test_a_real_phantom_on_a_complete_connection_is_still_counted():
    truth, _, _ = _pair(MSGS[:2], {})
    truth[0].req_bytes = 0
    for side, dt in (("client", -0.01), ("server", 0.01)):
        seen = [_seen(side, 1 + dt, "GET", "/a", 200, 0), _seen(side, 5 + dt, "POST", "/p", 405, 1)]
        m = match(truth, seen)
        assert [x.path for x in m.phantoms] == ["/p"], side


# -- a recorded run: observe (kprobe) around curl against nginx (fixtures/lost_request) -----

RUN = next((Path(__file__).parent / "fixtures" / "lost_request").glob("*-observe-*"))


def test_a_recorded_curl_run_replays_with_no_phantom(tmp_path: Path) -> None:
    """Three times: GET then (--next) an upload answered 405 at once on one connection,
    and an upload alone on another. Before, the truth dropped the 405s whose requests
    Wireshark never decoded: 7 observable and 2 phantoms on each side."""
    work = tmp_path / RUN.name
    shutil.copytree(RUN, work)
    rows = [r for r in replay_mod.replay(work)["rows"] if r["variant"] == "default"]
    assert sorted(r["side"] for r in rows) == ["client", "server"]
    for r in rows:
        got = (r["observable"], r["matched"], r["phantoms"], r["wrong"], r["degraded"])
        assert got == (9, 9, 0, 0, 0), r["side"]
        assert r["unjudged"] == {f"{f}:truth_unreliable": 2 for f in ("method", "path",
                                                                      "req_bytes")}  # fmt: skip


# -- two equal uploads back to back: not one report repeated ------------------------------


@pytest.mark.capture
def test_equal_uploads_back_to_back_are_two_exchanges(tmp_path: Path) -> None:
    """The first upload's body ends and the second (equal) one begins in one segment, so
    Wireshark's reassembly of the second starts in the frame that reported the first: it
    was taken for TShark repeating that report, the first dropped, and the collector's
    record of it counted a phantom (curl -H 'Expect:' --data-binary @3MB URL URL)."""
    port = free_port()
    body = b"b" * 200_001
    req = (b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    resp = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    pcap = tmp_path / "c.pcapng"
    with socket.create_server(("127.0.0.1", port)) as srv, Dumpcap(pcap, [port]):
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        with cli, conn:
            sender = threading.Thread(target=cli.sendall, args=(req + req,))
            sender.start()
            for _ in range(2):
                got = 0
                while got < len(req):
                    got += len(conn.recv(min(65536, len(req) - got)))
                conn.sendall(resp)
            sender.join()
            n = 0
            while n < 2 * len(resp):
                n += len(cli.recv(4096))
    xs, stats = extract_exchanges(pcap, http1_ports=[port], h2c_ports=[])
    assert [(x.method, x.path, x.req_bytes) for x in xs] == [("POST", "/up", len(body))] * 2
    assert [x.status for x in xs] == [201, 201]
    assert stats.unpaired_responses == 0
