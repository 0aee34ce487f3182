"""HTTP/2 replay state per connection: what a long-lived connection holds once its streams
ended, and what the matcher holds for h2 truth (by stream id) as a recording gets longer."""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived
from streamed import matcher_peak

from harness.analysis.match import HORIZON_NS
from harness.model import Exchange
from harness.protocols.common import Segment
from harness.protocols.http2.stitch import Http2Stream

MS = 1_000_000


def _held_after(n: int) -> dict[str, int]:
    """The most an Http2Stream held while n request/response streams went by on one
    connection (one every ms, each ended both ways), sampled as it went."""
    cli = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    srv = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
    cli.initiate_connection()
    srv.initiate_connection()
    handed: list[Exchange] = []
    s = Http2Stream("client", handed.extend, source="kprobe", conn_id="c1")
    peak = {"calls": 0, "heap": 0}
    t = 0

    def send(sent: bool, data: bytes) -> None:
        nonlocal t
        if data:
            t += 100_000
            s.add(sent, Segment(t, data, len(data)))

    send(True, cli.data_to_send())
    srv.receive_data(b"".join(seg.data for _, _, _, seg in s._heap))
    send(False, srv.data_to_send())
    for k in range(n):
        sid = cli.get_next_available_stream_id()
        cli.send_headers(sid, [(":method", "GET"), (":path", f"/{k}"), (":scheme", "http"),
                               (":authority", "x")], end_stream=True)  # fmt: skip
        req = cli.data_to_send()
        send(True, req)
        srv.receive_data(req)
        srv.send_headers(sid, [(":status", "200")])
        srv.send_data(sid, b"x" * 100, end_stream=True)
        resp = srv.data_to_send()
        send(False, resp)
        for ev in cli.receive_data(resp):
            if isinstance(ev, DataReceived):
                cli.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        upd = cli.data_to_send()  # window updates
        send(True, upd)
        srv.receive_data(upd)
        s.advance(t - 5 * MS)  # the decode's watermark: a little behind the newest
        peak["calls"] = max(peak["calls"], len(s._st.calls))
        peak["heap"] = max(peak["heap"], len(s._heap))
    s.finish()
    assert len(handed) == n and all(x.status == 200 for x in handed)
    peak["closed_ids"] = len(s._st.closed_ids)
    peak["closed_runs"] = s._st.closed_ids.runs()
    return peak


def test_ended_streams_leave_no_open_call_or_segment_behind() -> None:
    short, long = _held_after(500), _held_after(2_000)
    for k in ("calls", "heap"):
        assert long[k] <= short[k] + 2, (k, short[k], long[k])
    # every stream is remembered as closed, in runs that do not grow with their number
    assert long["closed_ids"] == 2_000 and short["closed_ids"] == 500
    assert long["closed_runs"] <= short["closed_runs"] + 2, (short, long)


def _h2(source: str, t: int, port: int, sid: int) -> Exchange:
    return Exchange(
        source=source, side="client" if source != "truth" else "wire",  # type: ignore[arg-type]
        protocol="h2c", client_ip="127.0.0.1", client_port=port, server_ip="127.0.0.1",
        server_port=80, stream_id=sid, conn_seq=sid // 2, method="GET", path="/",
        status=200, t_start_ns=t, t_end_ns=t + MS // 2,
        conn_id=f"c{port}" if source != "truth" else None,
    )  # fmt: skip


def _matcher_peak(n: int) -> dict[str, int]:
    """n h2 streams 0.1 ms apart on two long-lived connections, matched by stream id."""
    step = MS // 10
    truth = ((k, _h2("truth", k * step, 1000 + k % 2, 2 * (k // 2) + 1)) for k in range(n))
    seen = (_h2("kprobe", k * step + 50_000, 1000 + k % 2, 2 * (k // 2) + 1) for k in range(n))
    return matcher_peak(truth, seen)


def test_h2_matching_state_is_the_window_not_the_recording() -> None:
    """Truth is held HORIZON_NS behind and ahead of the observations, per stream id too:
    a recording shorter than that window is held whole (3 s of h2c at ~45k calls/s),
    a longer one is not."""
    window = 2 * HORIZON_NS // (MS // 10) + 20
    short, long = _matcher_peak(window), _matcher_peak(3 * window)
    assert (short["pairs"], long["pairs"]) == (window, 3 * window)
    for k in ("truth", "candidates", "streams", "taken"):
        assert long[k] <= window, (k, long[k])
        assert long[k] <= short[k] + 50, (k, short[k], long[k])
