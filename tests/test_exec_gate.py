"""The exec gate for real: sched tracepoints, SIGSTOP from BPF, SIGCONT from us.

Each test follows a shell that waits on its stdin until the gate is in place (as
`observe` holds its command), then lets it exec, and watches the processes' states
in /proc. The promise under test: an exec in the tree waits, stopped before its
first instruction, until released; nothing outside the tree is touched; and nothing
stays stopped, whether the gate closes with processes held or its ring is full.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.collectors.rings import RingSet
from harness.collectors.uprobe.gate import Exec, ExecGate
from harness.model import waited

pytestmark = pytest.mark.bpf


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def settled(pid: int, states: tuple[str, ...], timeout: float = 5) -> str:
    """The process's state once it is one of ``states`` (or at the deadline): the exec
    event can reach us before the SIGSTOP sent with it has stopped the task, and a
    loaded machine widens that gap."""
    deadline = time.monotonic() + timeout
    while state(pid) not in states and time.monotonic() < deadline:
        time.sleep(0.01)
    return state(pid)


def held_shell(script: str) -> subprocess.Popen[bytes]:
    """A shell that runs ``script`` once a line arrives on its stdin."""
    return subprocess.Popen(
        ["/bin/sh", "-c", f"read -r _; {script}"], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def end(shell: subprocess.Popen[bytes]) -> None:
    """Kill the shell and whatever it left, in its process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(shell.pid, signal.SIGKILL)
    shell.wait()


def go(shell: subprocess.Popen[bytes]) -> None:
    assert shell.stdin is not None
    shell.stdin.write(b"go\n")
    shell.stdin.close()


def wait_execs(gate: ExecGate, rings: RingSet, n: int, timeout: float = 20) -> list[Exec]:
    got: list[Exec] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        rings.poll(50)
        got += gate.take()
    return got


@contextlib.contextmanager
def gated(
    script: str, ringbuf_pages: int = 16
) -> Iterator[tuple[subprocess.Popen[bytes], ExecGate, RingSet]]:
    """A held shell running ``script``, with a gate following it; all undone on exit."""
    sh = held_shell(script)
    rings = RingSet()
    gate = ExecGate(sh.pid, ringbuf_pages=ringbuf_pages)
    try:
        gate.open(rings)
        yield sh, gate, rings
    finally:
        gate.close(rings)
        rings.close()
        gate.cleanup()
        end(sh)


def test_an_exec_waits_stopped_until_released() -> None:
    with gated("exec sleep 30") as (sh, gate, rings):
        go(sh)
        (ex,) = wait_execs(gate, rings, 1)
        assert (ex.tgid, ex.held) == (sh.pid, True)
        # stopped at the first instruction of the new image: already sleep, not yet running
        assert os.path.basename(os.readlink(f"/proc/{sh.pid}/exe")) == "sleep"
        time.sleep(0.3)
        assert state(sh.pid) == "T"
        held_ns = gate.release(sh.pid)
        assert held_ns is not None and held_ns >= 300_000_000
        deadline = time.monotonic() + waited(5)
        while state(sh.pid) == "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state(sh.pid) in ("R", "S")
        assert gate.stats()["held"] == 1
        assert gate.release(sh.pid) is None  # once only


def test_the_whole_tree_is_followed_and_nothing_else() -> None:
    # a grandchild (sh -> sh -> true) and a stranger started meanwhile
    with gated("sh -c '/bin/true; /bin/true'; /bin/true") as (sh, gate, rings):
        go(sh)
        stranger = subprocess.Popen(["/bin/true"])
        assert stranger.wait(timeout=waited(10)) == 0  # it was not held, or this would hang
        seen: list[Exec] = []
        deadline = time.monotonic() + waited(20)
        while sh.poll() is None and time.monotonic() < deadline:
            rings.poll(50)
            for ex in gate.take():
                seen.append(ex)
                gate.release(ex.tgid)
        assert sh.returncode == 0
        # sh -c forks a shell that execs true twice; the outer shell execs the last true
        assert len(seen) == 4 and all(ex.held for ex in seen)
        assert stranger.pid not in {ex.tgid for ex in seen}
        st = gate.stats()
        assert (st["execs"], st["held"], st["lost"]) == (4, 4, 0)


def test_closing_lets_held_processes_go_and_stops_holding() -> None:
    # a second line on stdin lets the shell exec once more, after the close
    with gated("sleep 30 & sleep 30 & read -r _; exec /bin/true") as (sh, gate, rings):
        assert sh.stdin is not None
        sh.stdin.write(b"go\n")
        sh.stdin.flush()
        held = wait_execs(gate, rings, 2)
        assert len(held) == 2
        pids = [ex.tgid for ex in held]
        assert all(settled(p, ("T",)) == "T" for p in pids)
        gate.close(rings)
        assert gate.released_at_close == 2
        assert all(settled(p, ("R", "S")) in ("R", "S") for p in pids)
        # detached: the shell's own exec runs freely now
        go(sh)
        assert sh.wait(timeout=waited(10)) == 0
        assert gate.stats()["execs"] == 2


def test_a_full_ring_loses_execs_but_never_strands_one() -> None:
    # one page holds some 170 events: 400 execs at once overflow it while nobody reads
    # no seq: the loop must not wait on an exec of its own
    script = "i=0; while [ $i -lt 400 ]; do /bin/true & i=$((i+1)); done; wait"
    with gated(script, ringbuf_pages=1) as (sh, gate, rings):
        go(sh)
        # not reading: the ring fills, later execs are lost, not held (until all 400 came:
        # seconds here, minutes in a kernel guest under an emulated CPU)
        deadline = time.monotonic() + waited(30)
        while (st := gate.stats())["execs"] < 400 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert st["lost"] > 0 and st["held"] > 0
        assert st["held"] + st["lost"] == st["execs"] == 400
        released = 0
        deadline = time.monotonic() + waited(60)
        while sh.poll() is None and time.monotonic() < deadline:
            rings.poll(50)
            for ex in gate.take():
                released += gate.release(ex.tgid) is not None
        assert sh.returncode == 0  # every /bin/true ran to its end
        assert released + gate.gone == st["held"]
