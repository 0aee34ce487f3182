"""`probebench observe` for real, on a user's kind of command: a shell script that starts
a grpc-go service and a grpc-go client itself.

Neither binary is named to probebench; the uprobe collector must find both in the
command's process tree and probe them before their first instruction (the exec
gate), so even the first call is seen. After the run, nothing the script started
may still run, nothing may be left stopped, and no probe may remain.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kernel_state import descendants, loaded_prog_ids, our_uprobe_events, prog_ids_held_by

from harness.model import RunManifest, load_metrics, waited
from harness.procfs import processes
from harness.runner.record import free_port

pytestmark = [pytest.mark.bpf, pytest.mark.capture]

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "scenarios" / "go" / "bin"
VERSION = "v1.85.0"


SERVER, CLIENT = BIN / f"grpc-server-{VERSION}", BIN / f"grpc-client-{VERSION}"


def observe_argv(tmp_path: Path, port: int, script: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "observe", "--port", str(port), "--h2c",
            "--out", str(tmp_path / "runs"), *options, "--", "bash", "-c", script]  # fmt: skip


# in the environment of every process a test's observe starts, so that a check of what
# was left stopped judges only those (other work on the machine stops its own)
MARK = "PB_TEST_OBSERVE_MARK"


def observe(
    tmp_path: Path, port: int, script: str, *options: str
) -> subprocess.CompletedProcess[str]:
    # the duration is a cap (observe ends with the script) and is scaled like the script's
    # own waits: in a 6.1 guest the gate held the server for the uprobe compile past a
    # fixed 120 s, and the run ended with 0 calls (7 packets: the client's dials)
    return subprocess.run(
        observe_argv(tmp_path, port, script, "--duration", f"{waited(120):.0f}", *options),
        capture_output=True, text=True, cwd=ROOT, timeout=waited(600),
        env={**os.environ, MARK: str(tmp_path)},
    )  # fmt: skip


def stopped_of(tmp_path: Path) -> list[int]:
    """Processes left stopped that the test's observe started (their environment says so)."""
    return [p.pid for p in processes() if p.state == "T" and marked(tmp_path, p.pid)]


def server_then_client(tmp_path: Path, port: int, *client_args: str) -> str:
    """A user's kind of script: a service in the background, then a client. The server quits
    when its stdin closes, so `sleep |` keeps it up; the script leaves it running. (The
    sleep is scaled: in a guest the gate releases it while the server is still held for
    minutes of probe compiles, and a fixed 120 s ran out before the client began. So is the
    client's deadline: released before the server, it dials until the server listens.)"""
    return (
        f"sleep {waited(120):.0f} | {SERVER} --proto grpc --host 127.0.0.1 --port {port} & "
        f"sleep 0.3; "
        f"{CLIENT} --proto grpc --host 127.0.0.1 --port {port} --warmup 0 "
        f"--deadline {waited(120):.0f} "
        f"--workload {tmp_path}/w.jsonl {' '.join(client_args)}"
    )


def marked(tmp_path: Path, pid: int) -> bool:
    """Did the test's observe start this process (its environment says so)?"""
    mark = f"{MARK}={tmp_path}".encode()
    try:
        return mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def running(binary: Path, below: int | None = None, of: Path | None = None) -> list[int]:
    """Processes running ``binary``; with ``below``, only that process's descendants; with
    ``of``, only those the test with that tmp_path started (a kernel guest records its
    smoke cells, grpc-go servers of the same build, beside the tests)."""
    mine = descendants(below) if below is not None else None
    out = []
    for p in processes():
        if mine is not None and p.pid not in mine:
            continue
        if of is not None and not marked(of, p.pid):
            continue
        try:
            if os.readlink(f"/proc/{p.pid}/exe") == str(binary):
                out.append(p.pid)
        except OSError:
            continue
    return out


def test_a_script_s_own_services_are_probed_from_their_first_call(tmp_path: Path) -> None:
    port = free_port()
    script = server_then_client(
        tmp_path, port, "--exchanges", "40", "--seed", "5", "--connections", "2", "--mode", "unary"
    )
    r = observe(tmp_path, port, script, "--collectors", "kprobe,uprobe")
    assert r.returncode == 0, r.stderr
    run_dir = Path(r.stdout.strip().splitlines()[-1])

    m = load_metrics(run_dir)
    assert m["truth"]["exchanges"] == 40
    rows = {(x["collector"], x["side"]): x for x in m["rows"] if x["variant"] == "default"}
    for side in ("client", "server"):
        u = rows[("uprobe", side)]
        # the client's first call too: it was probed before it ran
        assert (u["observable"], u["matched"], u["pre_attach"]) == (40, 40, 0), u
        assert u["degradation_rate"] == 0.0 and u["wrong"] == 0
        assert rows[("kprobe", side)]["matched"] == 40

    manifest = RunManifest.load(run_dir)
    # the script's services opened their connections after the attach
    assert (manifest.params["attach"], manifest.params["preexisting_connections"]) == ("early", 0)
    up = manifest.collectors["uprobe"]
    assert up["followed"][str(SERVER)].startswith("probed")
    assert up["followed"][str(CLIENT)].startswith("probed")
    gate = up["gate"]
    assert gate["execs"] == gate["held"] >= 4  # bash's sleeps, the server, the client
    assert (gate["lost"], gate["signal_failed"], gate["released_at_close"]) == (0, 0, 0)
    assert manifest.params["uprobe_targets"] == sorted([str(CLIENT), str(SERVER)])
    # the server and its `sleep` outlived the script: observe ended them
    assert manifest.params["leftover_processes_stopped"] == 2
    assert running(SERVER, of=tmp_path) == []
    assert stopped_of(tmp_path) == []
    assert str(SERVER) not in Path("/sys/kernel/tracing/uprobe_events").read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_nothing_is_left_when_observe_is_stopped_mid_run(tmp_path: Path, sig: int) -> None:
    port = free_port()
    script = server_then_client(
        tmp_path, port, "--exchanges", "1000000", "--connections", "1", "--mode", "bidi"
    )
    proc = subprocess.Popen(
        observe_argv(tmp_path, port, script, "--duration", f"{waited(300):.0f}"),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + waited(120)
        while not running(CLIENT, below=proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running(CLIENT, below=proc.pid), "the workload never got to its client"
        time.sleep(1.0)  # mid-run: calls flowing through both collectors
        ours = descendants(proc.pid)
        targets = running(SERVER, below=proc.pid) + running(CLIENT, below=proc.pid)
        assert len(targets) == 2
        progs = prog_ids_held_by(ours)
        assert progs, "no collector holds a BPF program"
        proc.send_signal(sig)
        proc.wait(timeout=waited(120))
        # everything dies with the runner, the command's own children included (the
        # keeper gets SIGTERM from the kernel even when the runner is SIGKILLed)
        deadline = time.monotonic() + waited(60)
        while time.monotonic() < deadline and (
            progs & loaded_prog_ids() or any(Path(f"/proc/{p}").exists() for p in ours)
        ):
            time.sleep(0.2)
        left = [p for p in ours if Path(f"/proc/{p}").exists()]
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes() for p in left]
        assert progs & loaded_prog_ids() == set(), "BPF programs of the run are still loaded"
        assert our_uprobe_events() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_collector_killed_while_holding_strands_nothing(tmp_path: Path) -> None:
    port = free_port()
    script = f"sleep 60 | {SERVER} --proto grpc --host 127.0.0.1 --port {port}"
    proc = subprocess.Popen(
        observe_argv(tmp_path, port, script, "--collectors", "uprobe", "--duration", "8"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # the gate holds the server while its probes compile: kill the collector then
        held: list[int] = []
        deadline = time.monotonic() + waited(60)
        while not held and time.monotonic() < deadline:
            below = descendants(proc.pid)
            held = [p.pid for p in processes() if p.pid in below and p.state == "T"]
            time.sleep(0.02)
        assert held, "the gate never held the server"
        (collector,) = [
            p for p in descendants(proc.pid)
            if b"harness.collectors.uprobe.record" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]  # fmt: skip
        ours = descendants(proc.pid)
        os.kill(collector, signal.SIGKILL)
        out, err = proc.communicate(timeout=waited(120))
        # the stranded server waited for the duration, then the keeper ended it
        assert proc.returncode == 0, err
        assert "still running after 8 s" in err
        assert not [p for p in ours if Path(f"/proc/{p}").exists()]
        manifest = RunManifest.load(Path(out.strip().splitlines()[-1]))
        assert manifest.collectors["uprobe"]["exit_code"] == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_failing_command_is_a_clear_error(tmp_path: Path) -> None:
    script = "echo 'no such service' >&2; exit 3"
    r = observe(tmp_path, free_port(), script, "--collectors", "uprobe")
    assert r.returncode != 0
    assert "the workload exited with code 3: no such service" in r.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    manifest = RunManifest.load(run_dir)
    assert manifest.status == "failed"
