"""TLS runs: throwaway certificates, key logs, the truth decrypted by Wireshark, and the
kernel side's blindness counted under `encrypted` (issue 12, stages 1-3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import scenarios
from harness.errors import CaptureError
from harness.groundtruth.extract import parse_decrypted_dump
from harness.groundtruth.tlskeys import merge_keylogs
from harness.groundtruth.tshark import decode_as
from harness.model import load_metrics, waited
from harness.protocols.sniff import infer_proto, is_tls_record
from harness.runner.tlsfiles import make_tls_files

ROOT = Path(__file__).resolve().parent.parent
CLIENT_HELLO = bytes.fromhex("16030100f8010000f40303")
APP_DATA = bytes.fromhex("1703030045")


def test_tls_records_are_recognised_and_never_http() -> None:
    assert is_tls_record(CLIENT_HELLO) and is_tls_record(APP_DATA)
    assert infer_proto(CLIENT_HELLO, from_start=True) == "tls"
    assert infer_proto(APP_DATA, from_start=False) == "tls"
    assert not is_tls_record(b"GET / HTTP/1.1\r\n")
    assert not is_tls_record(bytes.fromhex("1703"))  # too short to say
    assert infer_proto(b"GET / HTTP/1.1\r\n", from_start=True) == "http1"


def test_decode_as_decrypts_tls_ports_with_the_key_log(tmp_path: Path) -> None:
    log = tmp_path / "keys.log"
    args = decode_as([8443], [9443], log)
    keylog = args.index(f"tls.keylog_file:{log}")
    assert args[keylog - 1] == "-o"
    assert "tcp.port==8443,tls" in args and "tls.port==8443,http" in args
    assert "tcp.port==9443,tls" in args  # HTTP/2 found by its ALPN
    assert "tcp.port==9443,http2" not in args
    with pytest.raises(CaptureError, match="must not contain"):
        decode_as([1], [], tmp_path / "a:b.log")


def test_key_logs_merge_once_and_count_sessions(tmp_path: Path) -> None:
    a, b = tmp_path / "server.keylog", tmp_path / "client.keylog"
    line13 = "CLIENT_TRAFFIC_SECRET_0 " + "ab" * 32 + " " + "cd" * 32
    a.write_text(f"# comment\n{line13}\nCLIENT_HANDSHAKE_TRAFFIC_SECRET {'ab' * 32} {'ef' * 32}\n")
    b.write_text(f"{line13}\nCLIENT_RANDOM {'01' * 32} {'02' * 48}\nnot a key line\n")
    st, randoms = merge_keylogs([a, b, tmp_path / "missing.keylog"], tmp_path / "keys.log")
    assert st.files == ["server.keylog", "client.keylog"]
    assert st.secrets == 3 and st.bad_lines == 1 and st.sessions == 2
    assert randoms == {"ab" * 32, "01" * 32}
    assert (tmp_path / "keys.log").read_text().count(line13) == 1


def test_grpcio_targets_get_no_key_log(tmp_path: Path) -> None:
    grpc, http = scenarios.get("grpc-unary"), scenarios.get("http11-keepalive")
    log = tmp_path / "k.log"
    assert "--keylog" not in scenarios.tls_arguments(grpc, "py", tmp_path, "1.3", log)
    assert "--keylog" in scenarios.tls_arguments(grpc, "go", tmp_path, "1.3", log)
    assert "--keylog" in scenarios.tls_arguments(http, "py", tmp_path, "1.2", log)
    assert scenarios.tls_arguments(http, "py", None, "1.3", log) == []


def test_throwaway_certificate_is_valid_for_loopback(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    assert (files.dir.stat().st_mode & 0o777) == 0o700
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(files.ca), "-verify_ip", "127.0.0.1",
         str(files.cert)], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def _run(tmp_path: Path, *args: str, collectors: str = "kprobe") -> Path:
    r = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", *args, "--tls", "--collectors", collectors,
         "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=waited(600), check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.mark.bpf
@pytest.mark.capture
@pytest.mark.parametrize(
    ("scenario", "client", "server", "version"),
    [
        ("http11-keepalive", "py", "go", "1.3"),
        pytest.param("grpc-unary", "py", "go", "1.2", marks=pytest.mark.slow),
    ],
)
def test_tls_run_truth_decrypted_and_kernel_side_blind(
    tmp_path: Path, scenario: str, client: str, server: str, version: str
) -> None:
    run_dir = _run(tmp_path, scenario, "--client", client, "--server", server,
                   "--exchanges", "40", "--tls-version", version,
                   collectors="kprobe,tls")  # fmt: skip
    m = load_metrics(run_dir)
    assert m["truth_vs_workload"]["matched"] == 40 == m["truth_vs_workload"]["workload"]
    assert m["tls"]["handshakes"] > 0 and m["tls"]["handshakes_without_secrets"] == 0
    rows = {(r["collector"], r["side"]): r for r in m["rows"] if r["variant"] == "default"}
    for r in rows.values():
        assert r["protocol"].startswith("tls-") and r["tls"] == version
        assert r["phantoms"] == 0 and r["wrong"] == 0 and r["observable"] == 40
    for side in ("client", "server"):
        k = rows["kprobe", side]
        assert k["matched"] == 0 and k["undecodable"] == {"encrypted": 40}
    # the TLS probes see Python's libssl and Go's crypto/tls; grpcio's BoringSSL is
    # uncoverable, and says so
    for side, lang in (("client", client), ("server", server)):
        if lang == "py" and scenario.startswith("grpc"):
            assert rows["tls", side]["matched"] == 0 and "grpcio" in rows["tls", side][
                "not_covered"]
            continue
        assert rows["tls", side]["completeness"] == 1.0, rows["tls", side]
        assert rows["tls", side]["degraded"] == 0 and rows["tls", side]["not_covered"] is None


@pytest.mark.bpf
@pytest.mark.capture
def test_tls_run_without_secrets_is_marked_not_scored(tmp_path: Path) -> None:
    # grpcio on both ends: no key log anywhere
    run_dir = _run(tmp_path, "grpc-unary", "--client", "py", "--server", "py",
                   "--exchanges", "10")  # fmt: skip
    m = load_metrics(run_dir)
    assert "no TLS secrets" in m["truth_unavailable"]
    assert m["rows"] == [] and m["tls"]["handshakes"] > 0


@pytest.mark.bpf
@pytest.mark.capture
def test_tls_late_attach_go_reads_cut_by_the_attach_are_seen_whole(tmp_path: Path) -> None:
    # Each warm connection's server goroutine is parked inside crypto/tls (*Conn).Read when
    # the probes go in. With a probe at Read's entry that call was never seen: its request
    # was missed and its response, alone, came out as an exchange with no start time that
    # no truth could take (4 phantoms, one per warm connection). Read's RETs now take the
    # buffer from its argument spill slots, so the call is seen whole; where a binary's
    # Read does not keep them there, the entry probe stays and replay leaves such a
    # response out, as the kernel side does on a connection found mid-stream.
    run_dir = _run(tmp_path, "http11-keepalive", "--client", "go", "--server", "go",
                   "--attach", "late", "--exchanges", "100", collectors="tls")  # fmt: skip
    m = load_metrics(run_dir)
    rows = {r["side"]: r for r in m["rows"] if r["variant"] == "default"}
    dec = m["collectors"]["tls"]["default"]["decode"]
    assert dec["collector"]["reads_unseen"] == 0 and dec["responses_before_request"] == 0
    assert set(rows) == {"client", "server"}
    for side, r in rows.items():
        assert r["phantoms"] == 0 and r["wrong"] == 0 and r["unmatched_no_address"] == 0, r
        assert r["lost_events"] == 0 and r["degraded"] == 0, (side, r)
        assert r["observable"] > 0 and r["completeness"] == 1.0, (side, r)


def test_decrypted_bytes_are_read_from_the_hex_dump() -> None:
    # tshark -P -x with the frame number as the only column: each frame's data sources
    dump = (
        "   30\n\nFrame (184 bytes):\n"
        "0000  00 00 17 03 03 00 71 5f e5 c9 73 5e ac c6 f8 c5   ......q_..s^....\n"
        "Decrypted TLS (20 bytes):\n"
        "0000  47 45 54 20 2f 69 6e 64 65 78 2e 68 74 6d 6c 20   GET /index.html \n"
        "0010  48 54 54 50                                       HTTP\n\n"
        "   31\n\nFrame (60 bytes):\n0000  00 01 02 03   ....\n"
        "Decrypted TLS (2 bytes):\n0000  4f 4b                                             OK\n"
        "Decrypted TLS (2 bytes):\n0000  21 21                                             !!\n"
        "   32\n\nFrame (66 bytes):\n0000  00 01 02 03   ....\n"
    )
    got = parse_decrypted_dump(dump)
    assert got == {30: b"GET /index.html HTTP", 31: b"OK!!"}  # 32: nothing decrypted
