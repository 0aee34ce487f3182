"""`probebench observe` attached to a service that is already busy (issue 16): a keep-alive
connection opened before observe sends requests back to back the whole time.

The capture starts only once the collectors are attached and stops before they do, so it
holds nothing from before the attach; the truth's window is in run.json and metrics.json;
what the collector saw before the capture began is neither scored nor a phantom.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.model import EXCHANGES_DIR, RunManifest, load_metrics, waited
from harness.runner.record import free_port

pytestmark = [pytest.mark.bpf, pytest.mark.capture]

ROOT = Path(__file__).resolve().parent.parent

# a keep-alive HTTP/1.1 server and one client on one connection, requests back to back
# from before observe until stdin closes (bounded: argv[2] s, 1M requests; the bound is
# scaled like a start-up wait: a loaded machine's compile before the attach took > 60 s)
BUSY = r"""
import http.client, http.server, sys, threading, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):  # one write, as nginx does
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 700\r\n\r\n" + b"x" * 700)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
end, n = time.monotonic() + float(sys.argv[2]), 0
while not stop.is_set() and time.monotonic() < end and n < 1_000_000:
    c.request("GET", f"/{n}"); c.getresponse().read(); n += 1
    if n == 50: print("BUSY", flush=True)
"""


def test_a_busy_service_s_truth_starts_at_the_attach(tmp_path: Path) -> None:
    port = free_port()
    busy = subprocess.Popen([sys.executable, "-c", BUSY, str(port), str(waited(120))],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert busy.stdout is not None and busy.stdout.readline().strip() == "BUSY"
        r = subprocess.run(
            [sys.executable, "-m", "harness.cli", "observe", "--port", str(port),
             "--collectors", "kprobe", "--out", str(tmp_path), "--", "sleep", "1"],
            capture_output=True, text=True, cwd=ROOT, timeout=waited(600),
        )  # fmt: skip
    finally:
        busy.communicate("", timeout=waited(30))  # closes its stdin: it stops and exits
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.strip().splitlines()[-1])
    manifest = RunManifest.load(run_dir)
    p = manifest.params
    attach = manifest.collectors["kprobe"]["attach_ns"]
    assert (p["attach"], p["preexisting_connections"]) == ("late", 1)
    assert attach < p["truth_from_ns"] < p["observed_until_ns"]

    # the capture holds nothing from before the attach (it used to start seconds earlier)
    truth = pd.read_parquet(run_dir / EXCHANGES_DIR / "truth.parquet")
    assert len(truth) > 50
    assert truth["t_start_ns"].min() >= attach

    m = load_metrics(run_dir)
    w = m["truth_window"]
    assert (w["from_ns"], w["until_ns"]) == (p["truth_from_ns"], p["observed_until_ns"])
    assert 0 < w["seconds"] < 30 and w["exchanges"] > 50
    for row in (x for x in m["rows"] if x["variant"] == "default"):
        # the exchange in flight when the capture began is matched or out of the window,
        # never a phantom; every other one is complete and right
        assert row["phantoms"] == 0 and row["wrong"] == 0, row
        assert row["observable"] >= w["exchanges"] - 1, row
        assert row["completeness"] >= 0.99, row
