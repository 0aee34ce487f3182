"""`probebench doctor`: can this machine record? One row per capability, with the fix."""

from __future__ import annotations

import ctypes
import gzip
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.collectors.tracing import TRACEFS
from harness.model import repo_root, waited

# Every syscall tracepoint the kernel-side collector attaches to.
SYSCALLS = (
    "connect", "accept", "accept4", "close", "read", "write", "sendto", "recvfrom",
    "sendmsg", "recvmsg", "readv", "writev",
)  # fmt: skip
OK, WARN, FAIL, UNAVAILABLE = "ok", "warn", "fail", "unavailable"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | unavailable (a feature this kernel lacks, not an error)
    detail: str
    fix: str = ""
    required: bool = True  # needed by the kernel-side or the uprobe collector


def _run(args: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str] | None:
    # scaled like every start-up wait: under an emulated CPU (a kernel guest under TCG,
    # 10-30x slower) `tshark --version` alone takes tens of seconds
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=waited(timeout))
    except (OSError, subprocess.SubprocessError):
        return None


def _kernel_config() -> dict[str, str]:
    for p in (Path("/proc/config.gz"), Path(f"/boot/config-{platform.release()}")):
        try:
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        except OSError:
            continue
        out = {}
        for line in raw.decode(errors="replace").splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
        return out
    return {}


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check("root", OK, "running as root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)")
    capeff = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            capeff = int(line.split()[1], 16)
    cap_bpf, cap_perfmon = 1 << 39, 1 << 38
    if capeff & cap_bpf and capeff & cap_perfmon:
        return Check("root", OK, "not root, but CAP_BPF and CAP_PERFMON are effective")
    return Check("root", FAIL, "neither root nor CAP_BPF+CAP_PERFMON", "run as root (sudo)")


def check_bpf_syscall() -> Check:
    libc = ctypes.CDLL(None, use_errno=True)
    # BPF_PROG_GET_NEXT_ID with an empty attr: EPERM means no rights, ENOENT/0 means it works.
    attr = ctypes.create_string_buffer(128)
    ret = libc.syscall(321, 11, attr, 128)
    err = ctypes.get_errno()
    if ret == 0 or err == 2:
        return Check("bpf syscall", OK, "bpf(2) answers")
    return Check(
        "bpf syscall",
        FAIL,
        f"bpf(2) failed: {os.strerror(err)}",
        "run as root; check kernel.unprivileged_bpf_disabled and seccomp",
    )


def check_tracefs() -> Check:
    if (TRACEFS / "events").is_dir():
        return Check("tracefs", OK, f"mounted at {TRACEFS}")
    return Check("tracefs", FAIL, "not mounted", "mount -t tracefs tracefs /sys/kernel/tracing")


def check_syscall_tracepoints() -> Check:
    base = TRACEFS / "events" / "syscalls"
    missing = [
        f"sys_{d}_{s}"
        for s in SYSCALLS
        for d in ("enter", "exit")
        if not (base / f"sys_{d}_{s}").is_dir()
    ]
    extra = [
        TRACEFS / "events/sock/inet_sock_set_state",
        TRACEFS / "events/sched/sched_process_exit",
    ]
    missing += [p.relative_to(TRACEFS / "events").as_posix() for p in extra if not p.is_dir()]
    if not missing:
        return Check("syscall tracepoints", OK, f"all {2 * len(SYSCALLS) + 2} tracepoints present")
    return Check(
        "syscall tracepoints",
        FAIL,
        "missing: " + ", ".join(missing),
        "a kernel with CONFIG_FTRACE_SYSCALLS=y, and tracefs mounted",
    )


def check_kernel_hooks() -> Check:
    """Which --kernel-hooks modes this kernel supports (tracepoints are checked above)."""
    from harness.collectors.kprobe.hooks import hook_modes

    modes = hook_modes()
    have = [m for m, why in modes.items() if why is None]
    detail = "--kernel-hooks " + ("|".join(have) if have else "(none)")
    if modes["kprobes"] is None:
        return Check("kprobes", OK, detail + " (kprobes on __x64_sys_*)", required=False)
    return Check(
        "kprobes",
        UNAVAILABLE,
        f"{detail}; kprobes: {modes['kprobes']}",
        "none needed; kprobe attach mode needs a kernel built with CONFIG_KPROBES=y "
        "(`probebench kernels` tries it in Debian kernels booted as guests)",
        required=False,
    )


def check_tls_sockets() -> Check:
    """How the OpenSSL TLS collector finds an SSL call's socket on this kernel."""
    from harness.collectors.tls.sockhook import TCP_IO, TRACEPOINTS, sock_hook
    from harness.errors import CapabilityError

    try:
        hook = sock_hook()
    except CapabilityError as e:
        return Check("TLS sockets", UNAVAILABLE, str(e),
                     "a kernel with CONFIG_KPROBES=y, or Linux 6.3+", required=False)  # fmt: skip
    names = TRACEPOINTS if hook == "tracepoints" else TCP_IO
    return Check("TLS sockets", OK, f"an SSL call's socket from {hook} on "
                 + " and ".join(names), required=False)  # fmt: skip


def check_uprobes(cfg: dict[str, str]) -> Check:
    if (TRACEFS / "uprobe_events").exists() or Path(
        "/sys/bus/event_source/devices/uprobe"
    ).exists():
        return Check("uprobes", OK, "uprobe PMU / uprobe_events present")
    return Check("uprobes", FAIL, "no uprobe support", "a kernel with CONFIG_UPROBE_EVENTS=y")


def check_btf() -> Check:
    if Path("/sys/kernel/btf/vmlinux").exists():
        return Check("BTF", OK, "/sys/kernel/btf/vmlinux present", required=False)
    return Check("BTF", WARN, "no kernel BTF", "not needed by bcc programs here", required=False)


def check_headers() -> Check:
    build = Path(f"/lib/modules/{platform.release()}/build")
    if not build.exists():
        return Check(
            "kernel headers", FAIL, f"{build} missing", "scripts/setup (installs or links headers)"
        )
    target = build.resolve()
    exact = platform.release() in target.name
    if exact:
        return Check("kernel headers", OK, f"exact headers at {target}")
    return Check(
        "kernel headers",
        OK,
        f"fallback: {target.name} linked for kernel {platform.release()} (no exact package)",
    )


def check_bcc() -> Check:
    t0 = time.monotonic()
    try:
        import bcc

        prog = bcc.BPF(
            text="TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return 0; }",
            cflags=["-Wno-macro-redefined"],
        )
        prog.cleanup()
    except ImportError as e:
        return Check("bcc", FAIL, f"not importable ({e})", "scripts/setup (python3-bpfcc)")
    except Exception as e:  # bcc raises plain Exception on compile/load errors
        return Check("bcc", FAIL, f"cannot compile/load: {e}", "scripts/setup (headers, bcc)")
    ver = getattr(bcc, "__version__", "?")
    return Check(
        "bcc",
        OK,
        f"bcc {ver} compiled and attached a tracepoint program in {time.monotonic() - t0:.1f} s",
    )


def check_tshark() -> Check:
    for tool in ("tshark", "dumpcap"):
        if shutil.which(tool) is None:
            return Check("tshark/dumpcap", FAIL, f"{tool} not found", "apt-get install tshark")
    r = _run(["tshark", "--version"])
    ver = r.stdout.splitlines()[0] if r and r.stdout else "?"
    r = _run(["dumpcap", "-D"])
    if r is None or r.returncode != 0 or "lo" not in r.stdout:
        return Check("tshark/dumpcap", FAIL, f"{ver}; dumpcap cannot list lo", "run as root")
    return Check("tshark/dumpcap", OK, f"{ver}; dumpcap sees lo")


def check_capture_lo() -> Check:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "t.pcapng"
        r = _run(["dumpcap", "-q", "-i", "lo", "-a", "duration:1", "-w", str(out)], timeout=15)
        if r is None or r.returncode != 0 or not out.exists():
            err = (r.stderr.strip().splitlines() or ["?"])[-1] if r else "did not run"
            return Check("capture on lo", FAIL, err, "run as root; apt-get install tshark")
    return Check("capture on lo", OK, "dumpcap wrote a capture of lo")


GO_TARGETS = ("http1-server", "http1-client", "grpc-server", "grpc-client")


def _missing_targets() -> list[str]:
    bindir = repo_root() / "scenarios" / "go" / "bin"
    return [w for w in GO_TARGETS if not (bindir / w).exists()]


def check_go() -> Check:
    r = _run(["go", "version"])
    if r is None or r.returncode != 0:
        # recording runs the built targets: the toolchain only builds them (a kernel guest
        # shares the host's built checkout without Go on its PATH)
        if not _missing_targets():
            return Check("Go toolchain", WARN, "go not found; the Go targets are built "
                         "already (needed only to rebuild them)", "install Go >= 1.21 (on PATH)",
                         required=False)  # fmt: skip
        return Check("Go toolchain", FAIL, "go not found", "install Go >= 1.21 (on PATH)")
    return Check("Go toolchain", OK, r.stdout.strip())


def check_targets() -> Check:
    bindir = repo_root() / "scenarios" / "go" / "bin"
    missing = _missing_targets()
    if not missing:
        n = len(list(bindir.iterdir()))
        return Check("Go targets", OK, f"{n} binaries in {bindir.relative_to(repo_root())}")
    return Check("Go targets", FAIL, "missing: " + ", ".join(missing), "scripts/build-targets")


def run_checks(progress: Callable[[str], None] | None = None) -> list[Check]:
    cfg = _kernel_config()
    steps: list[Callable[[], Check]] = [
        check_root,
        check_bpf_syscall,
        check_tracefs,
        check_syscall_tracepoints,
        check_kernel_hooks,
        lambda: check_uprobes(cfg),
        check_tls_sockets,
        check_btf,
        check_headers,
        check_bcc,
        check_tshark,
        check_capture_lo,
        check_go,
        check_targets,
    ]
    out = []
    for step in steps:
        c = step()
        if progress:
            progress(c.name)
        out.append(c)
    return out


def can_record(checks: list[Check]) -> bool:
    return all(c.status in (OK, WARN) for c in checks if c.required)


def as_json(checks: list[Check]) -> dict[str, object]:
    return {
        "version": 1,
        "kernel": platform.release(),
        "can_record": can_record(checks),
        "checks": [asdict(c) for c in checks],
    }


def missing_for(need: str) -> str | None:
    """Why tests marked ``need`` ("bpf": root, syscall tracepoints, bcc; "capture": root,
    dumpcap) cannot run here, or None. The quick form of the checks above, for pytest."""
    if os.geteuid() != 0:
        return "needs root"
    if need == "capture":
        return None if shutil.which("dumpcap") else "dumpcap is not installed"
    if not (TRACEFS / "events" / "syscalls").is_dir():
        return "syscall tracepoints not available (tracefs not mounted?)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc is not importable (run scripts/setup)"
    return None
