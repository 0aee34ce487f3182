"""Soak: a bounded `probebench observe` of wrk against nginx, then its replay.

    PROBEBENCH_SOAK_S=60 .venv/bin/pytest benchmarks/bench_soak.py --benchmark-only -s

Sets up nginx itself (a temporary config on a free loopback port, 612-byte pages,
sendfile off so the kernel side sees the bodies), records `wrk` (PROBEBENCH_SOAK_WRK,
default "-t1 -c4") for PROBEBENCH_SOAK_S seconds (default 60) with the kernel-side
collector, then times `probebench replay` of the run in a child process. Reports in
`extra_info` of the bench results (results/bench.json under `nox -s bench`) and prints:

- exchanges per source and ``exchanges_all`` (truth plus the kernel side's client and
  server exchanges, 3 per request on a clean run); issue 14 counts the kernel side's alone,
  so the rates are ``kernel_exchanges_per_*``: per second of wall time, per CPU second of
  the replay's three processes, per second per core;
- replay wall time, and CPU seconds and peak RSS per process: the main process, the
  truth worker and tshark (replay.json; tshark's peak is sampled: its VmHWM);
- ``peak_rss_sum_mb``: those three peaks added up, an upper bound of what the replay
  held at once (they need not peak together), beside the sampled sum of the whole process
  tree's resident sets (``tree_peak_rss_mb``);
- the truth's tshark parts; the soak fails if wrk saw any answer that was not 2xx/3xx.

Root, BPF, nginx and wrk needed; the run directory goes under a temporary folder, or
under PROBEBENCH_SOAK_OUT, where it is kept (a 60 s soak takes 2-4 GB: the bench skips
when less than 10 GB are free there).

    PROBEBENCH_REPLAY_RUN=DIR .venv/bin/pytest benchmarks/bench_soak.py -k recording \
        --benchmark-only -s

replays a copy of an existing recording DIR (e.g. the 138k wrk one) the same way and
reports the same figures; no root needed. ``-k truth`` instead decodes only its truth, in
this process, consuming the batches as the replay's worker does: CPU seconds of Python and
of tshark, peak RSS of each, the most exchanges held at once.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from harness.analysis.replay import REPLAY_JSON, run_protocol
from harness.groundtruth.extract import stream_exchanges
from harness.model import CAPTURE, RunManifest, is_h2, load_metrics
from harness.procfs import descendants, memory_kb

ROOT = Path(__file__).resolve().parent.parent
SOAK_S = float(os.environ.get("PROBEBENCH_SOAK_S", "60"))
REPLAY_RUN = os.environ.get("PROBEBENCH_REPLAY_RUN")
SOAK_WRK = os.environ.get("PROBEBENCH_SOAK_WRK", "-t1 -c4").split()
SOAK_OUT = os.environ.get("PROBEBENCH_SOAK_OUT")
MIN_FREE = 10 << 30
PROBEBENCH = str(Path(sys.executable).with_name("probebench"))

pytestmark = pytest.mark.slow



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("nginx")
    (root / "html").mkdir()
    (root / "html" / "index.html").write_text("x" * 611 + "\n")
    port = _free_port()
    (root / "nginx.conf").write_text(
        # workers as root: pytest's temporary folders are 0700, so nginx's default worker
        # user (nobody) would answer every request with a 308-byte 403
        f"user root; worker_processes 1; daemon off; pid {root}/nginx.pid; "
        f"error_log {root}/error.log;\n"
        "events { worker_connections 256; }\n"
        "http { access_log off; sendfile off;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}/html; "
        "keepalive_requests 100000000; } }\n"
    )
    proc = subprocess.Popen(
        ["nginx", "-c", str(root / "nginx.conf"), "-p", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (root / "error.log").read_text()
                    raise RuntimeError(f"nginx did not start: {log}") from e
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.bpf
@pytest.mark.skipif(
    not (shutil.which("nginx") and shutil.which("wrk")), reason="nginx or wrk missing"
)
def test_soak_replay(
    benchmark: BenchmarkFixture, nginx: int, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{nginx}/index.html"
    out = Path(SOAK_OUT) if SOAK_OUT else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out).free
    if free < MIN_FREE:
        pytest.skip(f"{free / 2**30:.1f} GB free in {out}: a soak needs up to 10 GB")
    rec = subprocess.run(
        ["timeout", str(int(SOAK_S) + 240), PROBEBENCH, "observe", "--port", str(nginx),
         "--collectors", "kprobe", "--duration", str(SOAK_S + 60), "--no-replay",
         "--out", str(out), "--", "wrk", *SOAK_WRK, f"-d{SOAK_S:g}s", url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert rec.returncode == 0, rec.stderr[-2000:]
    run_dir = Path(rec.stdout.strip().splitlines()[-1])
    # wrk prints this line only when some answers were not 2xx/3xx (a 403 soak is not the workload)
    assert "Non-2xx" not in (run_dir / "workload.log").read_text()
    info = _timed_replay(benchmark, run_dir)
    assert info["truth_exchanges"] > 0
    assert info["wrong"] == 0


@pytest.mark.skipif(REPLAY_RUN is None, reason="PROBEBENCH_REPLAY_RUN not set")
def test_replay_of_a_recording(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    assert REPLAY_RUN is not None
    src = Path(REPLAY_RUN)
    run_dir = tmp_path / src.name
    # a copy: the replay rewrites its exchanges, metrics and run.json
    shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("exchanges"))
    info = _timed_replay(benchmark, run_dir)
    assert info["truth_exchanges"] > 0


@pytest.mark.skipif(REPLAY_RUN is None, reason="PROBEBENCH_REPLAY_RUN not set")
def test_truth_of_a_recording(benchmark: BenchmarkFixture) -> None:
    assert REPLAY_RUN is not None
    run_dir = Path(REPLAY_RUN)  # only read
    m = RunManifest.load(run_dir)
    h2c = is_h2(run_protocol(m))
    clean = not int(m.capture.get("packets_dropped") or 0) and not m.params.get(
        "preexisting_connections")  # fmt: skip
    got: dict = {}

    def truth() -> None:
        gen = stream_exchanges(
            run_dir / CAPTURE, http1_ports=[] if h2c else m.ports,
            h2c_ports=m.ports if h2c else [],
            mono_offset_ns=int(m.capture.get("mono_offset_ns", 0)), out_of_order=clean,
        )  # fmt: skip
        n = 0
        while True:
            try:
                n += len(next(gen).exchanges)
            except StopIteration as stop:
                got["stats"], got["n"] = stop.value, n
                return

    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    benchmark.pedantic(truth, rounds=1, iterations=1)
    wall = time.monotonic() - t0
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    st = got["stats"]
    py = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    ts = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    info = {
        "run": run_dir.name, "truth_exchanges": got["n"], "wall_s": round(wall, 2),
        "python_cpu_s": round(py, 2), "tshark_cpu_s": round(ts, 2),
        "exchanges_per_cpu_s": round(got["n"] / (py + ts)) if py + ts else None,
        # this process's peak includes pytest's own; tshark's is its child's peak
        "python_peak_rss_mb": r1.ru_maxrss // 1024, "tshark_peak_rss_mb": c1.ru_maxrss // 1024,
        "held_peak": st.held_peak, "streams_held_whole": st.streams_held_whole,
        "spill_mb": round(st.spill_bytes / 2**20, 1),
    }  # fmt: skip
    benchmark.extra_info.update(info)
    print(json.dumps(info, indent=2))
    assert got["n"] == st.exchanges > 0


def _timed_replay(benchmark: BenchmarkFixture, run_dir: Path) -> dict:
    """``probebench replay`` of ``run_dir`` in a child process, its process tree watched;
    the figures go to the bench results and are printed."""
    tree = {"sum_kb": 0, "peak_kb": {}}

    def replay() -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(
            ["timeout", "3600", PROBEBENCH, "replay", str(run_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        watch = threading.Thread(target=_watch_tree, args=(proc, tree), daemon=True)
        watch.start()
        out, err = proc.communicate()
        watch.join()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    t0 = time.monotonic()
    done = benchmark.pedantic(replay, rounds=1, iterations=1)
    wall = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads((run_dir / REPLAY_JSON).read_text())
    metrics = load_metrics(run_dir)
    truth = int(metrics["truth"]["exchanges"])
    rows = [r for r in metrics["rows"] if r["variant"] == "default"]
    by_source = {k: v for k, v in stats["exchanges"].items() if v}
    # tshark's own high-water mark, sampled (its rusage would count the worker's RSS at fork)
    tshark_kb = tree["peak_kb"].get("tshark", 0)
    peaks = {"main": stats["peak_rss_kb"], "truth_worker": stats["truth_peak_rss_kb"],
             "tshark": tshark_kb}  # fmt: skip
    cpu_s = {"main": stats.get("cpu_s"), "truth_worker": stats.get("truth_cpu_s"),
             "tshark": stats.get("tshark_cpu_s")}  # fmt: skip
    # the replay's own processes (os.times would miss the worker's tshark children)
    cpu = sum(v for v in cpu_s.values() if v)
    # counted as issue 14 counts them: the kernel side's client and server exchanges
    kernel = by_source.get("kprobe", 0)
    cores = os.cpu_count() or 1
    info = {
        "run": run_dir.name,
        "truth_exchanges": truth,
        "exchanges": by_source,
        "exchanges_all": sum(by_source.values()),
        "cpu_s": cpu_s,
        "peak_rss_mb": {k: round(v / 1024) for k, v in peaks.items()},
        "peak_rss_sum_mb": round(sum(peaks.values()) / 1024),
        "tshark_parts": metrics["truth"].get("tshark_parts"),
        "tshark_parts_given_up": metrics["truth"].get("parts_given_up"),
        "replay_wall_s": round(wall, 2),
        "replay_cpu_s": round(cpu, 2),
        "kernel_exchanges_per_s": round(kernel / wall) if wall else None,
        "kernel_exchanges_per_cpu_s": round(kernel / cpu) if cpu else None,
        "kernel_exchanges_per_s_per_core": round(kernel / wall / cores) if wall else None,
        "all_exchanges_per_cpu_s": round(sum(by_source.values()) / cpu) if cpu else None,
        # sampled: what the replay's processes held at once, and each program's own peak
        "tree_peak_rss_mb": round(tree["sum_kb"] / 1024),
        "peak_rss_by_program_mb": {k: round(v / 1024) for k, v in tree["peak_kb"].items()},
        "recording": RunManifest.load(run_dir).recording,
        # per collector and side: completeness, degraded, wrong, phantoms, lost events
        "scores": {f'{r["collector"]}/{r["side"]}': [
            r["completeness"], r["degraded"], r["wrong"], r["phantoms"], r["lost_events"]]
            for r in rows},
        "wrong": sum(r["wrong"] for r in metrics["rows"]),
    }  # fmt: skip
    benchmark.extra_info.update(info)
    print(json.dumps(info, indent=2))
    return info


def _watch_tree(proc: subprocess.Popen[str], tree: dict) -> None:
    """Until ``proc`` ends: the largest sum of resident sets over it and its descendants
    (the forkserver's truth worker and its tshark among them), and each program's peak."""
    while proc.poll() is None:
        total = 0
        for pid in {proc.pid} | descendants(proc.pid):
            mem = memory_kb(pid)
            if mem is None:
                continue
            name, rss, hwm = mem
            total += rss
            tree["peak_kb"][name] = max(tree["peak_kb"].get(name, 0), hwm)
        tree["sum_kb"] = max(tree["sum_kb"], total)
        time.sleep(0.2)
