"""Whole recorded runs through the CLI: teardown on interruption, lost events, replay, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kernel_state import descendants, loaded_prog_ids, our_uprobe_events, prog_ids_held_by

from harness.analysis.replay import replay
from harness.model import RunManifest, load_metrics, waited

pytestmark = [pytest.mark.bpf, pytest.mark.capture]
ROOT = Path(__file__).resolve().parent.parent


def probebench(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=waited(600), **kw,
    )  # fmt: skip


def small_run(
    tmp_path: Path, *extra: str, scenario: str = "http11-keepalive", exchanges: int = 60
) -> Path:
    r = probebench(
        "run", scenario, "--exchanges", str(exchanges), "--out", str(tmp_path), *extra
    )
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("scenario", ["http10-short", "http11-keepalive"])
def test_run_then_replay_gives_identical_metrics(tmp_path: Path, scenario: str) -> None:
    run_dir = small_run(tmp_path, "--client", "go", "--server", "py", scenario=scenario)
    recorded = load_metrics(run_dir)
    assert recorded["truth_vs_workload"]["matched"] == 60
    rows = {(r["collector"], r["side"]): r for r in recorded["rows"]}
    assert rows["kprobe", "client"]["completeness"] == 1.0
    assert rows["kprobe", "server"]["degradation_rate"] == 0.0
    again = replay(run_dir, write=False)
    assert json.dumps(again, sort_keys=True, default=str) == json.dumps(
        {k: v for k, v in recorded.items() if k != "version"}, sort_keys=True, default=str
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_nothing_behind(tmp_path: Path, sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "http11-keepalive", "--exchanges", "200000",
         "--out", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "client running" in line:
            break
    else:
        pytest.fail(f"the run never started its workload (exit {proc.wait()})")
    time.sleep(1.0)
    run_dir = next(tmp_path.iterdir())
    # the run's processes: targets, collectors (they hold the BPF programs), capture
    pids = sorted(descendants(proc.pid))
    ours = prog_ids_held_by(set(pids))
    assert ours, "the run's collector holds no BPF program"
    proc.send_signal(sig)
    code = proc.wait(timeout=waited(120))
    # children die with their parent (PR_SET_PDEATHSIG), even after SIGKILL
    deadline = time.monotonic() + waited(60)
    def ours_loaded() -> bool:
        return bool(ours & loaded_prog_ids())

    while time.monotonic() < deadline and (
        ours_loaded() or any(Path(f"/proc/{p}").exists() for p in pids)
    ):
        time.sleep(0.5)
    assert not ours_loaded(), "BPF programs of the run are still loaded"
    assert not [p for p in pids if Path(f"/proc/{p}").exists()], "children outlived the run"
    assert our_uprobe_events() == []
    if sig != signal.SIGKILL:
        assert code == 130
        assert RunManifest.load(run_dir).status == "interrupted"
    else:
        assert RunManifest.load(run_dir).status == "recording"  # never claims to be complete


def test_tiny_ring_buffer_loses_events_and_says_so(tmp_path: Path) -> None:
    # enough exchanges that some body outgrows the one-page ring, whatever the timing
    run_dir = small_run(
        tmp_path, "--client", "go", "--server", "go", "--ringbuf-pages", "1",
        "--max-capture", "65536", exchanges=300,
    )  # fmt: skip
    rows = [r for r in load_metrics(run_dir)["rows"] if r["collector"] == "kprobe"]
    assert all(r["lost_events"] > 0 for r in rows)
    assert min(r["completeness"] for r in rows) < 1.0
    # streams split at the loss: nothing made up (a request cut by a lost event left its
    # response framed by Content-Length: a HEAD's swallowed the next response)
    assert [(r["side"], r["wrong_by_field"]) for r in rows if r["wrong"]] == []


def test_a_256_byte_budget_degrades_http1_and_guesses_nothing(tmp_path: Path) -> None:
    run_dir = small_run(
        tmp_path, "--client", "go", "--server", "go", "--max-capture", "256", exchanges=200
    )
    rows = [r for r in load_metrics(run_dir)["rows"] if r["collector"] == "kprobe"]
    assert {r["side"] for r in rows} == {"client", "server"}
    for r in rows:
        # cut heads and bodies cost fields (HEAD responses once swallowed the next one)
        assert r["degraded_by_reason"].get("truncated_payload", 0) > 0
        assert (r["side"], r["wrong"], r["wrong_by_field"], r["phantoms"]) == (
            r["side"], 0, {}, 0
        )
        assert r["completeness"] == 1.0


def test_port_in_use_is_one_clear_sentence(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = probebench("run", "http11-keepalive", "--port", str(port), "--out", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip() == f"probebench: port {port} on 127.0.0.1 is already in use"
    assert not list(tmp_path.iterdir())


def test_replay_refuses_an_incomplete_run(tmp_path: Path) -> None:
    run_dir = small_run(tmp_path)
    m = RunManifest.load(run_dir)
    m.status = "failed"
    m.save(run_dir)
    r = probebench("replay", str(run_dir))
    assert r.returncode == 2 and "failed recording" in r.stderr


def test_doctor_json_is_machine_readable() -> None:
    r = probebench("doctor", "--json")
    doc = json.loads(r.stdout)
    assert doc["version"] == 1 and r.returncode == (0 if doc["can_record"] else 1)
    names = {c["name"] for c in doc["checks"]}
    assert {"root", "syscall tracepoints", "kprobes", "uprobes", "bcc", "capture on lo"} <= names
    for c in doc["checks"]:
        assert c["status"] in {"ok", "warn", "fail", "unavailable"}
        assert c["status"] == "ok" or c["fix"], c
    assert os.geteuid() != 0 or doc["can_record"], [c for c in doc["checks"]
                                                    if c["status"] == "fail"]  # fmt: skip


@pytest.mark.bpf
def test_a_collector_that_reached_its_deadline_is_an_error(tmp_path: Path) -> None:
    """A collector stops itself at --deadline: stopped later, its recording is cut short,
    and the runner says so (in a slow guest a kprobe collector ended before the TLS one
    beside it had attached, and its run scored 0 of 40 with no word why)."""
    from harness.runner.collectors import CollectorOptions, start_collectors, stop_collectors
    from harness.runner.lifecycle import ProcessSet

    procs = ProcessSet()
    try:
        running = start_collectors(procs, ["kprobe"], tmp_path, tgids=[os.getpid()],
                                   ports=[1], options=CollectorOptions(), deadline_s=1)  # fmt: skip
        deadline = time.monotonic() + waited(30)
        while running[0].child.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        (stats,) = stop_collectors(procs, running)
    finally:
        procs.close()
    assert stats["stopped_by"] == "deadline" and "deadline" in stats["error"]
