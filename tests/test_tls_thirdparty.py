"""Third-party peers over TLS under `probebench observe`: curl against nginx (nginx-light,
libssl linked dynamically), TLS 1.3. nginx peeks at one byte of each new TLS connection
before its handshake; the kernel side used to settle the connection's protocol on that
byte and ignore the connection, so nginx's side showed 0 `encrypted` exchanges (issue 12).
With TLS 1.3 nginx's first SSL_read may return a request its handshake already read: no
socket I/O in the call, so its address comes from the handshake's socket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.model import SLOWDOWN_ENV, load_metrics, waited
from harness.runner.record import free_port
from harness.runner.tlsfiles import make_tls_files

pytestmark = [pytest.mark.bpf, pytest.mark.capture]

ROOT = Path(__file__).resolve().parent.parent
N = 30

NGINX_CONF = """daemon off;
user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate {d}/tls/server.pem;
    ssl_certificate_key {d}/tls/server.key;
    root {d}/www;
  }}
}}
"""

# nginx (it writes its pid file once it listens), then N requests on one keep-alive
# connection
SCRIPT = """#!/bin/sh
nginx -c {d}/nginx.conf & NG=$!
i=0
while [ $i -lt 100 ] && ! [ -s {d}/nginx.pid ]; do sleep 0.1; i=$((i+1)); done
curl -s --http1.1 --cacert {d}/tls/ca.pem {urls} > /dev/null
kill $NG; wait $NG
"""


def test_curl_to_nginx_over_https_both_sides(tmp_path: Path) -> None:
    d, port = tmp_path / "nginx", free_port()
    make_tls_files(d / "tls")
    (d / "www").mkdir()
    (d / "www" / "index.html").write_text("x" * 612)
    (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=port))
    script = d / "run.sh"
    urls = " ".join([f"https://127.0.0.1:{port}/index.html"] * N)
    script.write_text(SCRIPT.format(d=d, port=port, urls=urls))
    script.chmod(0o755)
    keylog = tmp_path / "keys.log"
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "observe", "--port", str(port), "--tls",
         "--keylog", str(keylog), "--collectors", "kprobe,tls", "--duration", "120",
         "--out", str(tmp_path / "runs"), "--", str(script)],
        capture_output=True, text=True, cwd=ROOT, timeout=waited(600), check=False,
        # a clean environment but for curl's key log, and a guest's slowdown (the collectors'
        # attach waits scale with it: without it the TLS collector's 120 s ran out in 6.1)
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SSLKEYLOGFILE": str(keylog),
             **{k: v for k, v in os.environ.items() if k == SLOWDOWN_ENV}},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = load_metrics(Path(r.stdout.strip().splitlines()[-1]))
    assert m["tls"]["handshakes"] == 1 and m["tls"]["handshakes_without_secrets"] == 0
    rows = {(x["collector"], x["side"]): x for x in m["rows"] if x["variant"] == "default"}
    for side in ("client", "server"):
        k, t = rows["kprobe", side], rows["tls", side]
        assert k["observable"] == N and k["phantoms"] == 0 and k["wrong"] == 0
        # nginx's side too: every exchange counted as encrypted, none decoded
        assert k["matched"] == 0 and k["undecodable"] == {"encrypted": N}, (side, k)
        # curl's and nginx's libssl are probed: their plaintext, whole
        assert t["completeness"] == 1.0 and t["degraded"] == 0 and t["phantoms"] == 0, t
