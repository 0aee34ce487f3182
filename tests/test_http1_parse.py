"""Hand-checked HTTP/1 parser cases: framings, interim responses, truncation, resync, limits."""

from __future__ import annotations

import pytest

from harness.errors import ProtocolError
from harness.protocols.common import Segment
from harness.protocols.http1 import (
    BodyDataReceived,
    Event,
    Http1Parser,
    Http1UsageError,
    InformationalResponseParsed,
    MessageCompleted,
    MessageLost,
    RequestHeadersParsed,
    ResponseHeadersParsed,
    Resynchronised,
)
from harness.protocols.http1.parse import MAX_HEADER_BLOCK, METHODS


def feed_all(p: Http1Parser, data: bytes, step: int | None = None, ts0: int = 0) -> list[Event]:
    """Feed ``data`` in pieces of ``step`` bytes (all at once if None), then nothing else."""
    step = step or max(len(data), 1)
    out: list[Event] = []
    for i in range(0, len(data), step):
        out += p.feed(Segment(ts0 + i, data[i : i + step], len(data[i : i + step])))
    return out


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
    b"5;name=value;flag\r\nhello\r\n"
    b"A ; spaced-ext = 1\r\n0123456789\r\n"
    b"0;last\r\nX-Sum: 15\r\nX-Other: two\r\n\r\n"
)


@pytest.mark.parametrize("step", [None, 1, 2, 7])
def test_chunked_with_extensions_and_trailers(step: int | None) -> None:
    p = Http1Parser("response", emit_body=True)
    p.expect_response_to("GET")
    events = feed_all(p, CHUNKED_RESPONSE, step)
    body = b"".join(e.data for e in events if isinstance(e, BodyDataReceived))
    assert body == b"hello0123456789"
    done = [e for e in events if isinstance(e, MessageCompleted)]
    assert len(done) == 1
    assert done[0].body_bytes == 15 and done[0].truncated_bytes == 0
    assert done[0].trailers == [("X-Sum", "15"), ("X-Other", "two")]
    last_seg_start = (len(CHUNKED_RESPONSE) - 1) // (step or len(CHUNKED_RESPONSE)) * (step or 1)
    assert done[0].ts_ns == last_seg_start
    assert p.stats.messages == 1 and p.stats.invalid == 0 and p.state == "scan"


def test_head_response_has_no_body_despite_content_length() -> None:
    p = Http1Parser("response")
    p.expect_response_to("HEAD", 0)
    events = p.feed(Segment(1, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", 41))
    p.expect_response_to("GET", 2)
    events += feed_all(p, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", ts0=3)
    heads = [e for e in events if isinstance(e, ResponseHeadersParsed)]
    assert [h.request_method for h in heads] == ["HEAD", "GET"]
    assert [e.body_bytes for e in events if isinstance(e, MessageCompleted)] == [0, 3]


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status: int) -> None:
    p = Http1Parser("response")
    data = (
        b'HTTP/1.1 %d X\r\nContent-Length: 10\r\nETag: "a"\r\n\r\n' % status
        + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    events = feed_all(p, data, step=3)
    assert [e.status for e in events if isinstance(e, ResponseHeadersParsed)] == [status, 200]
    assert [e.body_bytes for e in events if isinstance(e, MessageCompleted)] == [0, 2]


def test_100_continue_is_interim_and_does_not_consume_the_queue() -> None:
    p = Http1Parser("response")
    p.expect_response_to("POST", 0)
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    )
    events = feed_all(p, data, step=1, ts0=10)
    assert kinds(events) == [
        "InformationalResponseParsed",
        "InformationalResponseParsed",
        "ResponseHeadersParsed",
        "MessageCompleted",
    ]
    assert isinstance(events[0], InformationalResponseParsed) and events[0].status == 100
    final = events[2]
    assert isinstance(final, ResponseHeadersParsed)
    assert final.matched and final.request_method == "POST" and final.unanswered == 0
    assert p.stats.informational == 2 and p.stats.messages == 1


def test_close_delimited_body_ends_at_end() -> None:
    p = Http1Parser("response")
    events = feed_all(p, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nsome body", step=4)
    events += p.feed(Segment(99, b" more", 5))
    assert not any(isinstance(e, MessageCompleted) for e in events)
    assert p.state == "body_close"
    done = p.end(123)
    assert len(done) == 1 and isinstance(done[0], MessageCompleted)
    assert done[0].body_bytes == len(b"some body more") and done[0].ts_ns == 99
    with pytest.raises(Http1UsageError):
        p.feed(Segment(200, b"x", 1))
    assert issubclass(Http1UsageError, ProtocolError)


def test_unknown_transfer_coding_on_response_is_close_delimited() -> None:
    p = Http1Parser("response")
    feed_all(p, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabcdef")
    done = p.end()
    assert [e.body_bytes for e in done if isinstance(e, MessageCompleted)] == [6]


def test_unknown_transfer_coding_on_request_is_invalid() -> None:
    p = Http1Parser("request")
    events = feed_all(
        p, b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nGET /b HTTP/1.1\r\n\r\n"
    )
    assert [e.target for e in events if isinstance(e, RequestHeadersParsed)] == ["/b"]
    assert p.stats.invalid == 1 and p.stats.resyncs == 1 and p.stats.messages == 1


def test_many_messages_in_one_segment_and_every_method() -> None:
    p = Http1Parser("request")
    data = b"".join(
        b"%s /%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (m.encode(), i, i, b"z" * i)
        for i, m in enumerate(METHODS)
    )
    events = feed_all(p, data)
    heads = [e for e in events if isinstance(e, RequestHeadersParsed)]
    assert [h.method for h in heads] == list(METHODS)
    assert [e.body_bytes for e in events if isinstance(e, MessageCompleted)] == list(
        range(len(METHODS))
    )


def test_lf_only_line_endings_and_obs_fold() -> None:
    p = Http1Parser("request")
    events = feed_all(p, b"GET /x HTTP/1.0\nX-Long: a\n  b\n\tc\nHost: h\n\n")
    (head,) = [e for e in events if isinstance(e, RequestHeadersParsed)]
    assert head.headers == [("X-Long", "a b c"), ("Host", "h")]
    assert head.version == "HTTP/1.0"


def test_truncated_content_length_body_is_skipped_by_length() -> None:
    p = Http1Parser("request", emit_body=True)
    head = b"POST /up HTTP/1.1\r\nContent-Length: 1000\r\n\r\n"
    events = p.feed(Segment(1, head + b"abcd", len(head) + 600))  # 596 body bytes unseen
    events += p.feed(Segment(2, b"e" * 400, 400))
    done = [e for e in events if isinstance(e, MessageCompleted)]
    assert done == [MessageCompleted(1000, 596, 2, [])]
    seen = b"".join(e.data for e in events if isinstance(e, BodyDataReceived))
    assert seen == b"abcd" + b"e" * 400
    assert p.stats.truncated_bytes == 596 and p.stats.lost_messages == 0


def test_truncation_past_body_end_loses_the_next_message_head() -> None:
    p = Http1Parser("request")
    first = b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123"
    # The syscall also carried the rest of the body and a whole second request.
    second = b"GET /b HTTP/1.1\r\n\r\n"
    events = p.feed(Segment(1, first, len(first) + 6 + len(second)))
    assert kinds(events) == ["RequestHeadersParsed", "MessageCompleted", "MessageLost"]
    lost = events[2]
    assert isinstance(lost, MessageLost) and not lost.headers_seen
    assert lost.reason == "truncated_payload"
    events = p.feed(Segment(2, b"GET /c HTTP/1.1\r\n\r\n", 19))
    assert [e.target for e in events if isinstance(e, RequestHeadersParsed)] == ["/c"]
    assert p.stats.lost_messages == 1 and p.stats.skipped_bytes == len(second)


def test_truncation_inside_chunk_data_stays_in_sync() -> None:
    p = Http1Parser("response")
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nab"
    events = p.feed(Segment(1, head, len(head) + 254))  # rest of the 256-byte chunk unseen
    events += p.feed(Segment(2, b"\r\n3\r\nxyz\r\n0\r\n\r\n", 15))
    done = [e for e in events if isinstance(e, MessageCompleted)]
    assert done == [MessageCompleted(259, 254, 2, [])]


def test_truncation_hitting_chunk_framing_loses_the_body_then_resyncs() -> None:
    p = Http1Parser("response")
    p.expect_response_to("GET", 0)
    p.expect_response_to("GET", 5)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab"
    # The gap covers "cd\r\n" and the next size line: the framing is gone.
    events = p.feed(Segment(1, head, len(head) + 10))
    assert kinds(events) == ["ResponseHeadersParsed", "MessageLost"]
    lost = events[1]
    assert isinstance(lost, MessageLost) and lost.headers_seen and lost.body_bytes == 4
    rest = b"zzzz\r\n0\r\n\r\nHTTP/1.1 404 NF\r\nContent-Length: 1\r\n\r\n!"
    events = p.feed(Segment(6, rest, len(rest)))
    assert kinds(events) == ["Resynchronised", "ResponseHeadersParsed", "MessageCompleted"]
    resync, second = events[0], events[1]
    assert isinstance(resync, Resynchronised) and resync.reason == "after_loss"
    assert resync.skipped_bytes == len(b"zzzz\r\n0\r\n\r\n") + 10 - 2
    assert isinstance(second, ResponseHeadersParsed) and second.status == 404
    assert second.matched and second.unanswered == 0
    assert p.stats.lost_messages == 1 and p.stats.resyncs == 1


def test_truncated_header_block_is_a_lost_message_when_in_sync() -> None:
    p = Http1Parser("response", from_start=True)
    p.expect_response_to("GET", 0)
    p.expect_response_to("GET", 10)
    events = p.feed(Segment(1, b"HTTP/1.1 200 OK\r\nConte", 500))
    assert kinds(events) == ["MessageLost"]
    lost = events[0]
    assert isinstance(lost, MessageLost) and not lost.headers_seen and lost.matched
    # After a loss the next response pairs with the latest request before it, not FIFO.
    p.expect_response_to("HEAD", 20)
    events = p.feed(Segment(30, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", 38))
    (head,) = [e for e in events if isinstance(e, ResponseHeadersParsed)]
    assert head.request_method == "HEAD" and head.unanswered == 1


def test_late_start_mid_body_resynchronises() -> None:
    p = Http1Parser("request")
    data = b"dy of an earlier request\r\n" + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    events = feed_all(p, data, step=5)
    assert kinds(events) == ["Resynchronised", "RequestHeadersParsed", "MessageCompleted"]
    assert isinstance(events[0], Resynchronised)
    assert events[0].reason == "mid_stream_start" and events[0].skipped_bytes == 26
    assert p.stats.invalid == 0  # not being in sync at the start is not an error


def test_garbage_between_messages_is_invalid_and_skipped() -> None:
    p = Http1Parser("request")
    data = b"GET /a HTTP/1.1\r\n\r\n\r\n\x00\x01junk\r\nGET /b HTTP/1.1\r\n\r\n"
    events = feed_all(p, data, step=3)
    assert [e.target for e in events if isinstance(e, RequestHeadersParsed)] == ["/a", "/b"]
    (resync,) = [e for e in events if isinstance(e, Resynchronised)]
    assert resync.reason == "garbage" and resync.skipped_bytes == len(b"\x00\x01junk\r\n")
    assert p.stats.invalid == 1


@pytest.mark.parametrize(
    "bad",
    [
        b"Content-Length: 12x\r\n",
        b"Content-Length: 3\r\nContent-Length: 4\r\n",
        b"No colon here\r\n",
        b" leading-fold: x\r\n",
        b"Bad Name: x\r\n",
    ],
)
def test_malformed_header_blocks_are_invalid(bad: bytes) -> None:
    p = Http1Parser("request")
    data = b"POST /a HTTP/1.1\r\n" + bad + b"\r\nGET /ok HTTP/1.1\r\n\r\n"
    events = feed_all(p, data)
    assert [e.target for e in events if isinstance(e, RequestHeadersParsed)] == ["/ok"]
    assert p.stats.invalid == 1


def test_oversized_header_block_is_invalid_and_buffering_stays_bounded() -> None:
    p = Http1Parser("request")
    p.feed(Segment(0, b"GET /huge HTTP/1.1\r\n", 20))
    most = 0
    for i in range(300):
        p.feed(Segment(i + 1, b"X-Filler: " + b"f" * 1014 + b"\r\n", 1026))
        most = max(most, p.buffered)
    assert p.stats.invalid == 1
    assert most <= MAX_HEADER_BLOCK + 1026
    events = p.feed(Segment(999, b"\r\nGET /after HTTP/1.1\r\n\r\n", 25))
    assert [e.target for e in events if isinstance(e, RequestHeadersParsed)] == ["/after"]


def test_switching_protocols_turns_the_rest_into_tunnel_bytes() -> None:
    p = Http1Parser("response")
    p.expect_response_to("GET")
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n\x00\x00\x12\x04"
    events = feed_all(p, data)
    assert kinds(events) == ["ResponseHeadersParsed", "MessageCompleted"]
    events = p.feed(Segment(5, b"HTTP/1.1 200 OK\r\n\r\n", 19))
    assert events == [] and p.stats.tunnel_bytes == 4 + 19 and p.state == "tunnel"


def test_end_mid_message_reports_it_lost() -> None:
    p = Http1Parser("request")
    feed_all(p, b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123")
    (lost,) = p.end(50)
    assert isinstance(lost, MessageLost)
    assert lost.reason == "stream_ended" and lost.headers_seen and lost.body_bytes == 4
    assert lost.ts_ns == 50


def test_usage_errors_are_typed() -> None:
    with pytest.raises(Http1UsageError):
        Http1Parser("request").expect_response_to("GET")
    with pytest.raises(Http1UsageError):
        Http1Parser("both")  # type: ignore[arg-type]


def test_pipelined_parser_pairs_fifo_within_one_segment() -> None:
    p = Http1Parser("response", from_start=True, pipelined=True)
    p.expect_response_to("HEAD", 0)
    p.expect_response_to("GET", 1)
    data = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    )
    events = feed_all(p, data, ts0=5)
    heads = [e for e in events if isinstance(e, ResponseHeadersParsed)]
    assert [(h.request_method, h.unanswered) for h in heads] == [("HEAD", 0), ("GET", 0)]
    assert [e.body_bytes for e in events if isinstance(e, MessageCompleted)] == [0, 3]


def test_whole_segments_repeating_a_head_read_each_message_afresh() -> None:
    """Keep-alive calls that each hold one message (the parser's fast path, which keeps the
    last head it read): a repeated head, then heads of the same length that differ in the
    target, a header value or the framing (a cut capture's bodies on the wire), and one
    that is the last head with a body behind it."""
    heads = [
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: i\r\n\r\n",
        b"PUT /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        b"PUT /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd",
        b"PUT /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",  # the capture kept 2 of 4
    ]
    p = Http1Parser("request", from_start=True)
    got = []
    for i, raw in enumerate(heads):
        orig = len(raw) + 2 if i == len(heads) - 1 else len(raw)
        got += p.feed(Segment(i, raw, orig))
    assert [(e.target, e.headers) for e in got if isinstance(e, RequestHeadersParsed)] == [
        ("/a", [("Host", "h")]), ("/a", [("Host", "h")]), ("/b", [("Host", "h")]),
        ("/b", [("Host", "i")]), ("/b", [("Content-Length", "3")]),
        ("/b", [("Content-Length", "4")]), ("/b", [("Content-Length", "4")]),
    ]  # fmt: skip
    done = [(e.body_bytes, e.truncated_bytes) for e in got if isinstance(e, MessageCompleted)]
    assert done == [(0, 0)] * 4 + [(3, 0), (4, 0), (4, 2)]
    assert p.stats.messages == 7 and p.stats.invalid == 0
