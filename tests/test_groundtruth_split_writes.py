"""Truth of a real Python http.server whose responses go out as two writes (headers, then
body) on a keep-alive connection: each response is reassembled from two segments, and
consecutive ones are equal, which must not pass for TShark repeating a report."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.groundtruth.capture import Dumpcap
from harness.groundtruth.extract import extract_exchanges

BODY = b"y" * 700
N = 6


class _Split(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:  # http.server calls it by this name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.flush()  # the headers in one write...
        self.wfile.write(BODY)  # ...the body in another

    def date_time_string(self, timestamp: float | None = None) -> str:
        return "Sun, 29 Nov 2026 00:00:00 GMT"  # equal responses, whatever the second

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.capture
@pytest.mark.parametrize("out_of_order", [False, True])
def test_responses_written_as_headers_then_body_are_all_kept(
    tmp_path: Path, out_of_order: bool
) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Split)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    pcap = tmp_path / "c.pcapng"
    try:
        with Dumpcap(pcap, [port]):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for i in range(N):
                c.request("GET", f"/{i}")
                r = c.getresponse()
                assert r.read() == BODY
            c.close()
    finally:
        srv.shutdown()
        srv.server_close()
    xs, stats = extract_exchanges(pcap, http1_ports=[port], h2c_ports=[],
                                   out_of_order=out_of_order)
    assert [(x.path, x.status, x.resp_bytes, x.degraded) for x in xs] == [
        (f"/{i}", 200, len(BODY), []) for i in range(N)
    ]
    assert not any("reported again" in w for w in stats.warnings)
