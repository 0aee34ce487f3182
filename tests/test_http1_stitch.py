"""Hand-checked stitching cases: pairing, degradations, header dicts, timing, conn_seq."""

from __future__ import annotations

import pytest

from harness.errors import ProtocolError
from harness.protocols.common import Segment
from harness.protocols.http1 import stitch_http1


def seg(ts: int, data: bytes, orig_len: int | None = None) -> Segment:
    return Segment(ts, data, len(data) if orig_len is None else orig_len)


def reasons(x: object) -> dict[str, str]:
    return {d.field: d.reason for d in x.degraded}  # type: ignore[attr-defined]


GET = b"GET /a?q=1 HTTP/1.1\r\nHost: svc:8080\r\nAccept: a\r\naccept: b\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: x=1\r\nset-cookie: y=2\r\n\r\nhi"


def test_headers_are_lowercased_and_duplicates_joined() -> None:
    (x,), stats = stitch_http1([seg(1, GET)], [seg(2, OK)], side="client", closed_ns=3)
    assert x.req_headers == {"host": "svc:8080", "accept": "a, b"}
    assert x.resp_headers["set-cookie"] == "x=1, y=2"
    assert (x.authority, x.path, x.protocol, x.status, x.resp_bytes) == (
        "svc:8080",
        "/a?q=1",
        "http/1.1",
        200,
        2,
    )
    assert (x.t_start_ns, x.t_end_ns, x.conn_seq, x.source, x.side) == (1, 2, 0, "", "client")
    assert stats.complete == 1


def test_server_side_reads_requests_from_recv_and_source_is_settable() -> None:
    (x,), _ = stitch_http1(
        [seg(5, OK[:20]), seg(6, OK[20:])],
        [seg(1, GET[:10]), seg(2, GET[10:])],
        side="server",
        closed_ns=None,
        source="uprobe",
    )
    assert (x.method, x.status, x.t_start_ns, x.t_end_ns, x.source) == ("GET", 200, 1, 6, "uprobe")


def test_request_without_response_is_no_response() -> None:
    xs, stats = stitch_http1([seg(1, GET), seg(3, GET)], [seg(2, OK)], side="client", closed_ns=4)
    assert [x.status for x in xs] == [200, None]
    assert reasons(xs[1]) == {"status": "no_response"}
    assert stats.no_response == 1 and stats.complete == 1


def test_absolute_form_target_gives_authority_without_host() -> None:
    req = b"GET http://proxy.example:81/p HTTP/1.0\r\n\r\n"
    (x,), _ = stitch_http1([seg(1, req)], [], side="client", closed_ns=None)
    assert x.authority == "proxy.example:81" and x.protocol == "http/1.0"


def test_late_attach_mid_request_gives_request_missed_then_exact() -> None:
    tail_of_body = b"y" * 50
    xs, stats = stitch_http1(
        [seg(20, OK), seg(40, OK)],
        [seg(10, tail_of_body), seg(30, GET)],
        side="server",
        closed_ns=None,
    )
    assert [x.conn_seq for x in xs] == [0, 1]
    assert reasons(xs[0]) == dict.fromkeys(
        ("method", "path", "authority", "req_bytes", "t_start_ns"), "request_missed"
    )
    assert xs[0].status == 200 and xs[0].t_start_ns is None and xs[0].t_end_ns == 20
    assert not xs[1].degraded and xs[1].method == "GET"
    assert stats.started_mid_stream and stats.request_missed == 1
    assert stats.requests.skipped_bytes == 50 and stats.requests.invalid == 0


def test_chunk_framing_lost_to_truncation_degrades_resp_bytes() -> None:
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab"
    xs, stats = stitch_http1(
        [seg(1, GET), seg(4, GET)],
        [seg(2, resp, len(resp) + 12), seg(5, OK)],
        side="client",
        closed_ns=None,
    )
    assert [x.status for x in xs] == [200, 200]
    assert xs[0].resp_bytes is None and reasons(xs[0]) == {"resp_bytes": "truncated_payload"}
    assert xs[0].t_end_ns == 2
    assert not xs[1].degraded and xs[1].resp_bytes == 2
    assert stats.degraded_payload == 1 and stats.responses.lost_messages == 1


def test_truncated_request_head_keeps_its_place() -> None:
    post = b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + b"b" * 100
    xs, stats = stitch_http1(
        [seg(1, GET), seg(3, post[:16], len(post)), seg(5, GET)],
        [seg(2, OK), seg(4, OK), seg(6, OK)],
        side="client",
        closed_ns=None,
        from_start=True,
    )
    # its hidden bytes may have held more requests: the next one's position is not known
    assert [x.conn_seq for x in xs] == [0, 1, 3]
    assert [x.method for x in xs] == ["GET", None, "GET"]
    assert reasons(xs[1]) == dict.fromkeys(
        ("method", "path", "authority", "req_bytes"), "truncated_payload"
    )
    assert [x.status for x in xs] == [200, 200, 200]
    assert xs[1].t_start_ns == 3 and xs[1].resp_bytes == 2
    assert stats.lost_requests == 1 and stats.no_response == 0


def test_head_method_reaches_the_response_parser() -> None:
    head = b"HEAD /f HTTP/1.1\r\nHost: h\r\n\r\n"
    head_ok = b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"
    xs, _ = stitch_http1(
        [seg(1, head), seg(3, GET)], [seg(2, head_ok), seg(4, OK)], side="client", closed_ns=None
    )
    assert [(x.method, x.status, x.resp_bytes) for x in xs] == [("HEAD", 200, 0), ("GET", 200, 2)]
    assert not any(x.degraded for x in xs)


def test_close_delimited_response_needs_the_close() -> None:
    resp = b"HTTP/1.0 200 OK\r\n\r\nbody until close"
    (x,), _ = stitch_http1(
        [seg(1, b"GET / HTTP/1.0\r\n\r\n")], [seg(2, resp)], side="client", closed_ns=9
    )
    assert x.resp_bytes == len(b"body until close") and x.t_end_ns == 2 and not x.degraded


def test_bad_side_is_a_typed_error() -> None:
    with pytest.raises(ProtocolError):
        stitch_http1([], [], side="wire", closed_ns=None)  # type: ignore[arg-type]


# -- a small capture budget cuts heads and bodies: what it costs is unknown, never wrong --

HEAD_REQ = b"HEAD /f?n=1 HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"
HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"


def budget(ts: int, data: bytes, limit: int = 64) -> Segment:
    """What a kernel-side collector with a per-call capture limit records of one call."""
    return Segment(ts, data[:limit], len(data))


def test_a_cut_request_head_keeps_its_method_so_a_head_response_has_no_body() -> None:
    xs, _ = stitch_http1(
        [budget(1, HEAD_REQ), seg(3, GET)], [budget(2, HEAD_OK), seg(4, OK)],
        side="client", closed_ns=None, from_start=True,
    )  # fmt: skip
    assert [(x.method, x.path, x.status) for x in xs] == [
        ("HEAD", "/f?n=1", 200), ("GET", "/a?q=1", 200)
    ]
    assert xs[0].resp_bytes == 0 and reasons(xs[0]) == dict.fromkeys(
        ("authority", "req_bytes"), "truncated_payload"
    )
    assert xs[1].resp_bytes == 2


@pytest.mark.parametrize("request_seen", [False, True])
def test_a_response_whose_request_method_is_unknown_is_not_framed_by_its_headers(
    request_seen: bool,
) -> None:
    """The request's first bytes are cut away (or never seen): a 999-byte Content-Length
    may be a HEAD's. Taken as a body it would swallow the next response."""
    first = [budget(1, HEAD_REQ, 3)] if request_seen else []
    xs, _ = stitch_http1(
        [budget(1, HEAD_REQ[3:], 3), *first, seg(3, GET)],
        [budget(2, HEAD_OK), seg(4, OK)],
        side="client", closed_ns=None, from_start=False,
    )  # fmt: skip
    head, get = xs[-2], xs[-1]
    assert head.status == 200 and head.resp_bytes is None
    assert reasons(head)["resp_bytes"] == "method_unknown"
    assert (get.method, get.status, get.resp_bytes) == ("GET", 200, 2) and not get.degraded


def test_body_bytes_after_the_headers_prove_the_body_when_the_method_is_unknown() -> None:
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 600\r\n\r\n" + b"b" * 600
    xs, _ = stitch_http1(
        [seg(1, b"xx"), seg(3, GET)], [budget(2, resp), seg(4, OK)],
        side="client", closed_ns=None,
    )  # fmt: skip
    assert (xs[0].status, xs[0].resp_bytes) == (200, 600)
    assert "resp_bytes" not in reasons(xs[0])
    assert (xs[1].method, xs[1].resp_bytes) == ("GET", 2) and not xs[1].degraded


def test_after_a_loss_a_pipelining_connection_degrades_rather_than_guesses() -> None:
    """Four requests in one write, then a response cut before its status line (its hidden
    bytes may hold the next one too): the 404 answers /3 or /4, and which is not provable."""
    reqs = b"".join(GET.replace(b"/a?q=1", b"/%d" % i) for i in range(1, 5))
    r404 = b"HTTP/1.1 404 NF\r\nContent-Length: 1\r\n\r\n!"
    xs, stats = stitch_http1(
        [seg(1, reqs)], [seg(2, OK), Segment(3, b"HT", 40), seg(4, r404)],
        side="client", closed_ns=None, from_start=True,
    )  # fmt: skip
    assert [x.path for x in xs] == ["/1", "/2", "/3", "/4"]
    assert (xs[0].status, xs[0].resp_bytes) == (200, 2) and not xs[0].degraded
    assert reasons(xs[1])["status"] == "truncated_payload"
    assert reasons(xs[2]) == dict.fromkeys(("status", "resp_bytes"), "pairing_unknown")
    assert all(x.status is None for x in xs[1:])  # the 404 is no one's for sure
    assert stats.unpaired == 1


def test_after_a_loss_one_candidate_is_a_proof_even_when_pipelining() -> None:
    reqs = b"".join(GET.replace(b"/a?q=1", b"/%d" % i) for i in range(1, 4))
    r404 = b"HTTP/1.1 404 NF\r\nContent-Length: 1\r\n\r\n!"
    xs, _ = stitch_http1(
        [seg(1, reqs)], [seg(2, OK), Segment(3, b"HT", 40), seg(4, r404)],
        side="client", closed_ns=None, from_start=True,
    )  # fmt: skip
    assert (xs[2].path, xs[2].status, xs[2].resp_bytes) == ("/3", 404, 1)
    assert not xs[2].degraded


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_stream_split_at_lost_events_pairs_as_after_a_loss(pipelining: bool) -> None:
    """The part of a connection after lost events: /1 was read before a 404 that may
    answer a request from before the loss (a pipelining client) or /1 (one at a time)."""
    r404 = b"HTTP/1.1 404 NF\r\nContent-Length: 1\r\n\r\n!"
    xs, _ = stitch_http1(
        [seg(2, r404)], [seg(1, GET.replace(b"/a?q=1", b"/1"))], side="server", closed_ns=None,
        after_loss=True, pipelining=pipelining,
    )  # fmt: skip
    (x,) = xs
    if pipelining:
        assert x.status is None and reasons(x)["status"] == "pairing_unknown"
    else:
        assert (x.path, x.status, x.resp_bytes) == ("/1", 404, 1) and not x.degraded


def _req(path: str) -> bytes:
    return GET.replace(b"/a?q=1", path.encode())


def _resp(path: str) -> bytes:
    """A response that names the request it answers, so a wrong pairing shows."""
    return b"HTTP/1.1 200 OK\r\nX-Path: %s\r\nContent-Length: 2\r\n\r\nhi" % path.encode()


def _wrongly_paired(xs: list) -> list[tuple[str | None, str]]:  # type: ignore[type-arg]
    return [(x.path, x.resp_headers["x-path"]) for x in xs
            if x.status is not None and x.path is not None
            and x.resp_headers.get("x-path") != x.path]  # fmt: skip


def test_a_connection_found_mid_stream_with_its_first_answer_missed_is_not_pipelining() -> None:
    """nginx under a late attach: its first response went unnumbered (the send hook reached
    the walkers after the receive hook), so two requests came before any answer. That is
    no proof of pipelining, and the answer is not paired in order with /1 (it answers /2,
    or /1 if the client pipelines: the calls cannot tell). While a request read before
    the first answer is queued, answers stay unknown; then they pair by time as after a
    loss, right from /4 on, and no pipelining is carried to a part after a later loss."""
    paths = [f"/{i}" for i in range(1, 7)]
    recv = [seg(10 * i, _req(p)) for i, p in enumerate(paths)]
    send = [seg(10 * i + 5, _resp(p)) for i, p in enumerate(paths) if i]  # /1's missed
    xs, stats = stitch_http1(send, recv, side="server", closed_ns=None)
    assert [x.path for x in xs] == paths
    assert _wrongly_paired(xs) == []
    assert not stats.pipelining
    assert [x.status for x in xs] == [None, None, None, 200, 200, 200]
    assert [reasons(x)["status"] for x in xs[:2]] == ["pairing_unknown"] * 2
    assert all(not x.degraded for x in xs[3:])


def test_a_client_found_mid_stream_with_a_request_missed_is_not_pipelining() -> None:
    """wrk's side of the same: two responses read before any request seen (the write of
    one went unnumbered): each is a response whose request was missed, and no pipelining."""
    send = [seg(30, _req("/3")), seg(50, _req("/4"))]
    recv = [seg(10, _resp("/1")), seg(20, _resp("/2")), seg(40, _resp("/3")), seg(60, _resp("/4"))]
    xs, stats = stitch_http1(send, recv, side="client", closed_ns=None)
    assert not stats.pipelining
    assert [(x.path, x.status) for x in xs][-2:] == [("/3", 200), ("/4", 200)]
    assert _wrongly_paired(xs) == [] and all(not x.degraded for x in xs[-2:])


def test_pipelining_found_mid_stream_is_proven_by_two_answers_in_a_row() -> None:
    """A pipelining client found mid-stream: its first answer (to /1 or to /2 after a missed
    one, the calls cannot tell) is paired with neither; two answers with no request between
    them, once requests are seen, prove pipelining."""
    recv = [seg(10, _req("/1")), seg(20, _req("/2")), seg(50, _req("/3"))]
    send = [seg(30, _resp("/1")), seg(40, _resp("/2")), seg(60, _resp("/3"))]
    xs, stats = stitch_http1(send, recv, side="server", closed_ns=None)
    assert stats.pipelining
    assert _wrongly_paired(xs) == []
    assert xs[0].status is None and reasons(xs[0])["status"] == "pairing_unknown"


def test_pipelining_seen_from_the_start_pairs_in_order() -> None:
    """The same calls on a connection seen from its open: the counts are exact, so the
    first answer is /1's, in order, and two requests before it are pipelining."""
    recv = [seg(10, _req("/1")), seg(20, _req("/2"))]
    send = [seg(30, _resp("/1")), seg(40, _resp("/2"))]
    xs, stats = stitch_http1(send, recv, side="server", closed_ns=None, from_start=True)
    assert stats.pipelining
    assert [(x.path, x.status) for x in xs] == [("/1", 200), ("/2", 200)]
    assert _wrongly_paired(xs) == [] and all(not x.degraded for x in xs)


def test_a_part_after_lost_calls_still_pairs_by_time() -> None:
    """A part after lost events is not a start found mid-stream: its gap was numbered, so two
    requests read before its first answer pair as after any loss (the latest), as before."""
    recv = [seg(10, _req("/1")), seg(20, _req("/2"))]
    xs, stats = stitch_http1([seg(30, _resp("/2"))], recv, side="server", closed_ns=None,
                             after_loss=True)  # fmt: skip
    assert [(x.path, x.status) for x in xs] == [("/1", None), ("/2", 200)]
    assert reasons(xs[0]) == {"status": "no_response"} and not xs[1].degraded
    assert not stats.pipelining and _wrongly_paired(xs) == []
