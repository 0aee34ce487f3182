"""`probebench kernels`: Debian kernels booted as QEMU guests (virtme-ng), the BPF tests and a
smoke matrix run inside each, in both kernel hook modes; the run directories come back.

The guest shares this machine's root filesystem read-only (the repository, its venv, the
Go targets and the guest kernel's headers, installed here) and writes only to the output
directory, given with --rwdir. /dev/kvm here cannot run these kernels, so QEMU emulates
(TCG): a boot takes 20-30 s and a bcc compile 5-25 s, so overhead is never measured there.
The guest side is kernels_guest.py; replay and the report run on the host afterwards.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Any

from harness.collectors import registry
from harness.collectors.gobin.cache import cache_home
from harness.errors import CapabilityError, ProbebenchError
from harness.model import repo_root
from harness.procfs import processes
from harness.scenarios import GO_BIN

Progress = Callable[[str], None]
DEFAULT_SERIES = ("6.1", "6.12")
HOST_PACKAGES = ("qemu-system-x86", "busybox-static")
GUEST_CPUS = 2
GUEST_MEMORY = "3G"
# the whole guest session, boot to power-off; quick is the smoke set's budget with room
GUEST_TIMEOUT_S = {True: 420, False: 2400}
GUEST_JSON = "guest.json"


@dataclass(frozen=True)
class GuestKernel:
    series: str  # as asked: "6.1"
    release: str  # uname -r in the guest: "6.1.0-57-amd64"

    @property
    def image_package(self) -> str:
        return f"linux-image-{self.release}-unsigned"

    @property
    def headers_package(self) -> str:
        return f"linux-headers-{self.release}"

    @property
    def vmlinuz(self) -> Path:
        return Path("/boot") / f"vmlinuz-{self.release}"


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def newest_release(series: str, package_names: list[str]) -> str | None:
    """The newest amd64 release of kernel series `series` ("6.1") among Debian package
    names: linux-image-6.1.0-57-amd64-unsigned -> "6.1.0-57-amd64"; 6.12 never counts as 6.1."""
    if not re.fullmatch(r"\d+\.\d+", series):
        raise ProbebenchError(f"--kernel takes a series like 6.1 or 6.12, not {series!r}")
    # the generic flavour only: not -cloud-amd64 or -rt-amd64
    pat = re.compile(rf"linux-image-({re.escape(series)}\.\d+(?:-\d+|\+deb\d+)-amd64)-unsigned")
    found = [m.group(1) for n in package_names if (m := pat.fullmatch(n.strip()))]
    return max(found, key=_version_key) if found else None


def _run(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CapabilityError(f"{shlex.join(cmd)} failed: {e}") from e


def _apt_names(series: str) -> list[str]:
    pat = rf"^linux-image-{re.escape(series)}\.[0-9].*-amd64-unsigned$"
    out = _run(["apt-cache", "search", "--names-only", pat], timeout=120).stdout
    return [line.split(" - ", 1)[0] for line in out.splitlines()]


def find_kernel(series: str, progress: Progress) -> GuestKernel:
    """The newest Debian kernel of `series` apt knows (after an apt-get update if none)."""
    release = newest_release(series, _apt_names(series))
    if release is None:
        progress("apt-get update (no kernel of that series known yet)")
        _run(["apt-get", "update", "-qq"])
        release = newest_release(series, _apt_names(series))
    if release is None:
        raise CapabilityError(
            f"apt knows no linux-image-{series}.*-amd64-unsigned (Debian 12 has 6.1, and "
            "6.12 from bookworm-security)"
        )
    return GuestKernel(series, release)


def _installed(pkg: str) -> bool:
    out = _run(["dpkg-query", "-W", "-f=${Status}", pkg], timeout=60).stdout
    return "install ok installed" in out


def vng_path() -> Path | None:
    """virtme-ng's `vng`: beside this Python (the venv) or on PATH."""
    here = Path(sys.executable).parent / "vng"
    if here.exists():
        return here
    found = shutil.which("vng")
    return Path(found) if found else None


def ensure_installed(kernels: list[GuestKernel], progress: Progress) -> Path:
    """Install what is missing (check before act): QEMU, busybox, each kernel's image and
    headers, virtme-ng into this venv. Returns vng's path."""
    if os.geteuid() != 0:
        raise CapabilityError("probebench kernels needs root (packages, BPF in the guests)")
    want = [*HOST_PACKAGES]
    for k in kernels:
        want += [k.image_package, k.headers_package]
    missing = [p for p in want if not _installed(p)]
    if missing:
        progress(f"apt-get install {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800,
                           check=False)  # fmt: skip
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:]
            raise CapabilityError(f"apt-get install failed: {' '.join(tail)}")
    vng = vng_path()
    if vng is None:
        progress("pip install virtme-ng (into this venv)")
        r = _run([sys.executable, "-m", "pip", "install", "-q", "virtme-ng"])
        vng = vng_path()
        if r.returncode != 0 or vng is None:
            raise CapabilityError(f"pip install virtme-ng failed: {r.stderr.strip()[-300:]}")
    for k in kernels:
        if not k.vmlinuz.is_file():
            raise CapabilityError(f"{k.image_package} is installed but {k.vmlinuz} is missing")
    return vng


def loop_seconds() -> float:
    """Seconds a fixed bit of pure Python takes here (the best of three): the host's and a
    guest's, side by side, say how much slower the guest runs right now."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        sum(i * i for i in range(200_000))
        best = min(best, time.perf_counter() - t0)
    return best


def guest_command(out: Path, quick: bool, tests: str = "quick",
                  test_ids: Path | None = None) -> str:
    """What the guest runs: the project's venv Python (a symlink to Debian's, with bcc),
    from the read-only checkout, writing only under `out`."""
    args = [sys.executable, "-m", "harness.runner.kernels_guest", "--out", str(out),
            "--host-loop-s", f"{loop_seconds():.5f}"]  # fmt: skip
    if quick:
        args.append("--quick")
    args += ["--tests", tests]
    if test_ids is not None:
        args += ["--test-ids", str(test_ids)]
    # the guest's root is read-only: no byte-code caches; it reads the host's answers about
    # binaries (prepare_binaries) from the host's cache, whatever its own HOME
    return (f"cd {shlex.quote(str(repo_root()))} && PYTHONDONTWRITEBYTECODE=1 "
            f"XDG_CACHE_HOME={shlex.quote(str(cache_home()))} {shlex.join(args)}")


def vng_command(vng: Path, kernel: GuestKernel, out: Path, quick: bool,
                tests: str = "quick", test_ids: Path | None = None) -> list[str]:
    return [str(vng), "--run", str(kernel.vmlinuz), "--disable-kvm",
            "--cpus", str(GUEST_CPUS), "--memory", GUEST_MEMORY,
            "--rwdir", str(out), "--name", f"pb-{kernel.series}",
            "--exec", guest_command(out, quick, tests, test_ids)]  # fmt: skip


def _wait(proc: subprocess.Popen[bytes], timeout_s: float,
          cancel: Event | None) -> tuple[str | None, float]:
    """Wait for the guest to power off; why it failed, or None. QEMU (its whole session)
    is killed at the timeout or when `cancel` is set (the caller gave up). Also the CPU
    seconds of the session's processes killed then: nobody reaps them into our rusage."""
    deadline = time.monotonic() + timeout_s
    while (cancel is None or not cancel.is_set()) and time.monotonic() < deadline:
        try:
            rc = proc.wait(timeout=1)
            return (None if rc == 0 else f"vng exited with {rc}"), 0.0
        except subprocess.TimeoutExpired:
            continue
    # vng itself is our child: its own time comes with its rusage
    killed = sum(p.cpu_s for p in processes() if p.pgrp == proc.pid and p.pid != proc.pid)
    os.killpg(proc.pid, 9)
    proc.wait()
    return ("cancelled" if cancel is not None and cancel.is_set() else
            f"no result within {timeout_s:.0f} s"), killed  # fmt: skip


def boot(vng: Path, kernel: GuestKernel, out: Path, quick: bool, progress: Progress,
         timeout_s: float | None = None, tests: str = "quick",
         cancel: Event | None = None, test_ids: list[str] | None = None) -> dict[str, object]:
    """Boot one guest, run the guest side, return what it wrote to guest.json (or why not).
    The console goes to out/console.log; QEMU is killed at the timeout or on `cancel`.
    `test_ids`: only these tests of the set (a shard), passed in a file in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / GUEST_JSON).unlink(missing_ok=True)
    timeout_s = timeout_s or GUEST_TIMEOUT_S[quick]
    ids_file = None
    if test_ids:
        ids_file = out / "test-ids.txt"
        ids_file.write_text("\n".join(test_ids) + "\n")
    cmd = vng_command(vng, kernel, out, quick, tests, ids_file)
    progress(f"{kernel.release}: booting under TCG (timeout {timeout_s:.0f} s)")
    t0 = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with (out / "console.log").open("w") as log:
        # own session: at the timeout QEMU and vng's helpers (virtiofsd) go together
        # vng runs virtme-run, installed beside it
        env = {**os.environ, "PATH": f"{vng.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, env=env,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            why, killed_cpu_s = _wait(proc, timeout_s, cancel)
        except BaseException:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
    took = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        guest = json.loads((out / GUEST_JSON).read_text())
    except (OSError, json.JSONDecodeError) as e:
        guest = {"error": why or f"the guest wrote no {GUEST_JSON} ({e})"}
    if why and "error" not in guest:
        guest["error"] = why
    if "runs" not in guest:
        # killed before it wrote its summary: the runs it recorded are still worth a replay
        guest["runs"] = left_runs(out)
    guest["boot_to_poweroff_s"] = round(took, 1)
    # QEMU's CPU time: what the guest cost, less dependent on the machine's load than the
    # wall clock (with GUEST_CPUS vCPUs a quiet machine needs at least cpu / GUEST_CPUS)
    guest["host_cpu_s"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
                                + killed_cpu_s, 1)  # fmt: skip
    guest["command"] = shlex.join(cmd)
    (out / GUEST_JSON).write_text(json.dumps(guest, indent=1) + "\n")
    return guest


def left_runs(out: Path) -> list[dict[str, Any]]:
    """The runs a guest left in OUT/runs/ (for one that never wrote its guest.json); one
    cut short says so in its run.json, and its replay fails with that reason."""
    runs = out / "runs"
    found = sorted(d for d in runs.iterdir() if (d / "run.json").is_file()) if runs.is_dir() else []
    return [{"run_dir": str(d)} for d in found]


def run_guests(series: list[str], quick: bool, out: Path, progress: Progress,
               install_only: bool = False, timeout_s: float | None = None,
               tests: str = "quick", cancel: Event | None = None,
               test_ids: list[str] | None = None,
               ) -> list[tuple[GuestKernel, Path, dict[str, object]]]:
    """Find, install and boot each kernel series in turn; one output directory each."""
    kernels = [find_kernel(s, progress) for s in series]
    vng = ensure_installed(kernels, progress)
    if install_only:
        return []
    if tests == "full":
        prepare_binaries(progress)
    done = []
    for k in kernels:
        gdir = out / k.release
        if cancel is not None and cancel.is_set():
            break
        guest = boot(vng, k, gdir, quick, progress, timeout_s, tests, cancel, test_ids)
        done.append((k, gdir, guest))
        result = guest.get("tests") or {}
        progress(f"{k.release}: {guest.get('error') or 'done'}; tests: "
                 f"{result.get('summary', 'not run') if isinstance(result, dict) else result}; "
                 f"{guest['boot_to_poweroff_s']} s, QEMU used {guest['host_cpu_s']} CPU s")
    return done


def prepare_binaries(progress: Progress) -> None:
    """The full test set probes the Go targets: what the collectors need to know of them is
    worked out here, into the cache the guests read. A guest working them out itself spent
    most of each uprobe test on it: a server and client pair took 290-390 s in 6.1 and
    2,800-3,160 s in 6.12 (the uprobe collector's resolve_s; the host takes about 10 s)."""
    bins = sorted(p for p in GO_BIN.glob("*") if p.is_file() and not p.name.startswith("."))
    t0 = time.monotonic()
    for c in registry.collectors():
        c.prepare_binaries(bins)
    progress(f"{len(bins)} Go targets resolved for the guests ({time.monotonic() - t0:.0f} s; "
             f"cached under {cache_home()})")


def guest_runs(guest: dict[str, object]) -> list[dict[str, Any]]:
    """The runs a guest reported (its JSON's "runs"), whatever else it holds."""
    runs = guest.get("runs")
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def run_dirs(guest: dict[str, object]) -> list[Path]:
    return [Path(r["run_dir"]) for r in guest_runs(guest)
            if r.get("run_dir") and Path(r["run_dir"]).is_dir()]  # fmt: skip
