"""The guest side of `probebench kernels`: run inside a booted guest kernel (see kernels.py).

Runs the BPF tests and, beside them, records the smoke cells in every hook mode the kernel
has (record only: the Wireshark decode and the scoring run on the host afterwards), and
writes what happened to OUT/guest.json. Writes nothing outside OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.collectors import registry
from harness.collectors.kprobe.hooks import HOOKS, hook_modes
from harness.errors import ProbebenchError
from harness.model import SLOWDOWN_ENV, TRACEBACK_NOW_ENV, repo_root
from harness.runner.collectors import CollectorOptions
from harness.runner.kernels import GUEST_JSON, loop_seconds
from harness.runner.record import RunSpec, record

# One HTTP/1.1 and one gRPC cell per mode, early and late; the full set adds the other
# attach of each, with the languages swapped (other syscalls: sendto/recvfrom, sendmsg).
SMOKE = (("http11-keepalive", "py", "go", "early", 60), ("grpc-unary", "go", "go", "late", 40))
MORE = (("http11-keepalive", "go", "py", "late", 60), ("grpc-unary", "py", "go", "early", 40))
# Only the tests that need this kernel: the pure ones ran on the host. Under TCG a Python
# import costs 25-35x the host's, so collecting every test file (or loading hypothesis's
# plugin) would take minutes: the test files are picked by their markers first.
MARKERS = "bpf or kprobes"
# quick: the kprobe-mode test on a real workload (late; the cells add early). The verifier
# test runs on the host (kprobe-type programs load there) and the cells load the same code.
QUICK_TESTS = ["-m", "kprobes", "tests/test_kernel_hooks.py", "-k", "not early",
               "-p", "no:hypothesispytest"]  # fmt: skip


def test_args(which: str, ids: list[str] | None = None) -> list[str]:
    """pytest's arguments for test set `which` (quick: the kprobe-mode test; full: every
    test marked bpf or kprobes, or only the node `ids` of it given)."""
    if which == "quick":
        return QUICK_TESTS
    if ids:
        return ["-m", MARKERS, *ids]
    tests = repo_root() / "tests"
    marked = re.compile(r"pytest\.mark\.(bpf|kprobes)\b")
    texts = {str(f.relative_to(repo_root())): f.read_text() for f in tests.glob("test_*.py")}
    # kprobe-mode tests first: only a guest runs them (the host has no kprobes), so a guest
    # cut off at its timeout has still run what nothing else can
    files = sorted((n for n, t in texts.items() if marked.search(t)),
                   key=lambda n: ("pytest.mark.kprobes" not in texts[n], n))  # fmt: skip
    return ["-m", MARKERS, *files]


def full_ids() -> list[str]:
    """The full set's node ids in its order (kprobe-mode tests first), collected here, on
    the host: in a guest collecting takes minutes."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *test_args("full")],
                          cwd=repo_root(), capture_output=True, text=True, check=False)  # fmt: skip
    ids = [ln for ln in done.stdout.splitlines() if "::" in ln]
    if not ids:
        raise ProbebenchError(f"collecting the BPF tests failed: {done.stdout[-500:]}")
    return ids


def shard(ids: list[str], k: int, n: int) -> list[str]:
    """Part `k` of `n` of `ids`, cut into n contiguous parts of near-equal size. The whole
    set takes about 3 h of a quiet machine per guest under TCG; cut, it runs as n
    sessions, one after another or on n machines at once."""
    if not 1 <= k <= n:
        raise ProbebenchError(f"shard {k}/{n}: K must be between 1 and N")
    return ids[-(-len(ids) * (k - 1) // n) : -(-len(ids) * k // n)]


def cells(quick: bool) -> list[tuple[str, str, str, str, int]]:
    return list(SMOKE if quick else SMOKE + MORE)


def _mount_tracefs() -> None:
    """virtme-ng's init may leave tracefs unmounted; bcc needs it for tracepoints."""
    for fs, where in (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug")):
        if not os.path.ismount(where):
            subprocess.run(["mount", "-t", fs, "nodev", where], check=False)


def run_tests(out: Path, which: str, ids: list[str] | None = None) -> dict[str, Any]:
    t0 = time.monotonic()
    # --durations: where a guest's minutes go, per test (the profile of a slow run)
    # -v: one line per test as it ends, so a guest killed at its timeout leaves its results,
    # each with its time (console_output_style=times), which --durations would only print
    # at the end
    # --basetemp in OUT: a failed test's run directory comes back to the host
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o",
           "cache_dir=/tmp", "-o", "console_output_style=times", "--durations=15",
           "--basetemp", str(out / "pytest-tmp"), "--junitxml", str(out / "pytest.xml"),
           *test_args(which, ids)]  # fmt: skip
    # CI: a missing capability fails; unbuffered: the log shows progress while it runs;
    # each failure's traceback as it happens (tests/conftest.py)
    env = {**os.environ, "CI": "true", "TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1",
           TRACEBACK_NOW_ENV: "1"}  # fmt: skip
    with (out / "pytest.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=repo_root(), stdout=log, stderr=subprocess.STDOUT,
                            env=env, check=False).returncode  # fmt: skip
    lines = (out / "pytest.log").read_text().strip().splitlines()
    return {"command": " ".join(cmd[1:]), "exit_code": rc, "summary": lines[-1] if lines else "",
            "seconds": round(time.monotonic() - t0, 1)}


def record_cells(out: Path, quick: bool, modes: list[str]) -> list[dict[str, Any]]:
    done = []
    runs = out / "runs"
    # the collectors whose hooks --kernel-hooks picks: what the guest's cells compare
    hooked = [c.name for c in registry.collectors() if c.kernel_hooks]
    for mode in modes:
        for scenario, client, server, attach, n in cells(quick):
            # (RunSpec's client deadline is scaled by the guest's slowdown)
            spec = RunSpec(scenario=scenario, client=client, server=server, attach=attach,
                           exchanges=n, collectors=hooked,
                           options=CollectorOptions(kernel_hooks=mode))  # fmt: skip
            entry: dict[str, Any] = {"scenario": scenario, "client": client, "server": server,
                                     "attach": attach, "kernel_hooks": mode}  # fmt: skip
            t0 = time.monotonic()
            print(f"[{platform.node()}] {mode}: {scenario} {client}->{server} {attach}", flush=True)
            try:
                entry["run_dir"] = str(record(spec, runs))
            except ProbebenchError as e:
                entry["error"] = str(e)
                failed = sorted(runs.glob(f"*{scenario}*"), key=lambda p: p.stat().st_mtime)
                if failed:
                    entry["run_dir"] = str(failed[-1])
            entry["seconds"] = round(time.monotonic() - t0, 1)
            done.append(entry)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kernels_guest", description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tests", choices=["quick", "full", "none"], default="quick")
    ap.add_argument("--test-ids", type=Path, help="with --tests full: only these node ids, "
                    "one a line (a shard the host picked)")
    ap.add_argument("--host-loop-s", type=float, help="kernels.loop_seconds() on the host")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    ids = a.test_ids.read_text().splitlines() if a.test_ids else None
    # TCG runs 25-35x slower than the host on a quiet machine, far more on a loaded one:
    # start-up waits are scaled by twice what this guest measures now, 30x at least
    slower = loop_seconds() / a.host_loop_s if a.host_loop_s else 0.0
    os.environ.setdefault(SLOWDOWN_ENV, str(round(max(30.0, 2 * slower))))
    _mount_tracefs()
    modes = hook_modes()
    have = [m for m in HOOKS if modes[m] is None]
    # seconds from power-on to here: the boot and the Python start-up under TCG
    booted = float(Path("/proc/uptime").read_text().split()[0])
    res: dict[str, Any] = {"kernel": platform.release(), "hook_modes": modes, "quick": a.quick,
                           "tests_set": a.tests, "test_ids": ids,
                           "slower_than_host": round(slower, 1),
                           "slowdown": os.environ[SLOWDOWN_ENV],
                           "uptime_at_start_s": booted}
    print(f"[guest] kernel {res['kernel']}, hook modes {have}, {slower:.0f}x slower than "
          "the host", flush=True)
    # The tests and the cells side by side: under TCG a guest spends most of its time in
    # single-threaded bcc compiles, so one at a time leaves a vCPU idle (measured: QEMU used
    # 1.1 host CPUs on average over a quick session run in series).
    with ThreadPoolExecutor(1) as pool:
        tests = pool.submit(run_tests, a.out, a.tests, ids) if a.tests != "none" else None
        res["runs"] = record_cells(a.out, a.quick, have)
        if tests is not None:
            res["tests"] = tests.result()
            print(f"[guest] tests: {res['tests']['summary']}", flush=True)
    res["guest_seconds"] = round(time.monotonic() - t0, 1)
    print(f"[guest] done in {res['guest_seconds']} s after {booted:.0f} s of boot", flush=True)
    (a.out / GUEST_JSON).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
