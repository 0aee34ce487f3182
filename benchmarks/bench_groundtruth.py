"""Ground-truth decode speed: raw tshark -T fields vs extract_exchanges vs pyshark.

    .venv/bin/pytest benchmarks/bench_groundtruth.py --benchmark-only -s

Records a ~100k-packet HTTP/1.1 keep-alive capture on loopback first (root and
dumpcap needed; about 10 s). pyshark runs on the first 10k packets only, beside
the default on the same slice, because it takes minutes on the whole file.
Set PROBEBENCH_BENCH_EXCHANGES to change the size (4 packets per exchange).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from harness.groundtruth import Dumpcap, extract_exchanges
from harness.groundtruth.extract import _FIELDS
from harness.groundtruth.loopback import drive, http_server, keepalive_plan
from harness.groundtruth.pyshark_extract import extract_http1_pyshark
from harness.groundtruth.tshark import AGG, SEP

EXCHANGES = int(os.environ.get("PROBEBENCH_BENCH_EXCHANGES", "25000"))
SLICE_PACKETS = 10_000

pytestmark = [
    pytest.mark.capture,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dumpcap") is None, reason="dumpcap missing"),
]


@dataclass(frozen=True)
class Capture:
    path: Path
    port: int
    packets: int
    exchanges: int


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    path = tmp_path_factory.mktemp("bench") / "keepalive.pcapng"
    with http_server() as port, Dumpcap(path, [port]) as cap:
        records = drive("127.0.0.1", port, keepalive_plan(EXCHANGES, connections=4))
    assert cap.stats["packets_dropped"] == 0, cap.stats
    assert cap.stats["sentinel_seen"], cap.stats
    return Capture(path, port, cap.stats["packets_captured"], len(records))


@pytest.fixture(scope="module")
def small(big: Capture) -> Capture:
    path = big.path.with_name("slice.pcapng")
    subprocess.run(["editcap", "-r", str(big.path), str(path), f"1-{SLICE_PACKETS}"], check=True,
                   capture_output=True)
    xs, stats = extract_exchanges(path, http1_ports=[big.port], h2c_ports=[])
    return Capture(path, big.port, stats.packets, len(xs))


def raw_tshark(cap: Capture, fields: tuple[str, ...] = _FIELDS) -> None:
    """What the default path asks of tshark, output thrown away: the floor for any decoder."""
    cmd = ["tshark", "-n", "-r", str(cap.path), "-d", f"tcp.port=={cap.port},http",
           "-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={AGG}",
           "-E", f"separator={SEP}"]
    for f in fields:
        cmd += ["-e", f]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def default(cap: Capture) -> int:
    xs, _ = extract_exchanges(cap.path, http1_ports=[cap.port], h2c_ports=[])
    return len(xs)


def test_raw_tshark_fields(benchmark: BenchmarkFixture, big: Capture) -> None:
    benchmark.extra_info.update(packets=big.packets)
    benchmark.pedantic(raw_tshark, args=(big,), rounds=3, iterations=1)


def test_raw_tshark_minimal_fields(benchmark: BenchmarkFixture, big: Capture) -> None:
    minimal = ("frame.number", "tcp.stream", "http.request.method", "http.response.code")
    benchmark.extra_info.update(packets=big.packets)
    benchmark.pedantic(raw_tshark, args=(big, minimal), rounds=3, iterations=1)


def test_extract_default(benchmark: BenchmarkFixture, big: Capture) -> None:
    benchmark.extra_info.update(packets=big.packets)
    n = benchmark.pedantic(default, args=(big,), rounds=3, iterations=1)
    assert n == big.exchanges


def test_extract_default_slice(benchmark: BenchmarkFixture, small: Capture) -> None:
    benchmark.extra_info.update(packets=small.packets)
    assert benchmark.pedantic(default, args=(small,), rounds=3, iterations=1) == small.exchanges


def test_pyshark_slice(benchmark: BenchmarkFixture, small: Capture) -> None:
    def run() -> int:
        xs, _ = extract_http1_pyshark(small.path, http1_ports=[small.port])
        return len(xs)

    benchmark.extra_info.update(packets=small.packets)
    assert benchmark.pedantic(run, rounds=1, iterations=1) == small.exchanges


def test_default_within_2x_of_raw_tshark(big: Capture) -> None:
    """Interleaved rounds (two cores: neighbours shift both alike); best of each compared."""
    raw, ours = [], []
    for _ in range(3):
        t = time.perf_counter()
        raw_tshark(big)
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        default(big)
        ours.append(time.perf_counter() - t)
    ratio = min(ours) / min(raw)
    print(f"\n{big.packets} packets, {big.exchanges} exchanges: raw tshark {min(raw):.2f} s "
          f"({big.packets / min(raw):,.0f} pkt/s), extract_exchanges {min(ours):.2f} s "
          f"({big.packets / min(ours):,.0f} pkt/s), ratio {ratio:.2f}")
    assert ratio < 2.0
