"""How the kernel-side collector hooks the syscalls: their tracepoints, or kprobes.

``tracepoints`` attaches the program's TRACEPOINT_PROBEs to ``syscalls:sys_{enter,exit}_*``.
``kprobes`` compiles the same program with PB_KPROBES=1: its ``pb_sysenter__NAME`` and
``pb_sysexit__NAME`` entry points (thin wrappers around the same in-kernel logic) go on the
syscall functions (``__x64_sys_NAME``) as a kprobe and a return probe. Which modes a kernel
supports is what `doctor` reports and what the recorder checks before compiling.
"""

from __future__ import annotations

import os
import re
from typing import Any

from harness.collectors.base import KERNEL_HOOKS as HOOKS
from harness.collectors.btf import VMLINUX
from harness.collectors.tracing import TRACEFS, kprobes_supported
from harness.errors import CapabilityError, CollectorError

ENTER, EXIT = b"pb_sysenter__", b"pb_sysexit__"
# Return-probe instances per probe: one is held by every thread blocked inside the call
# (a threaded server's readers). The kernel's default, max(10, 2 * CPUs), would miss
# returns, and so lose data calls, with more blocked threads than that.
KRETPROBE_MAXACTIVE = 512


def _syscall_function(name: str) -> str | None:
    """The kernel's function for syscall `name` (__x64_sys_NAME, or sys_NAME before 4.17)."""
    want = {f"__x64_sys_{name}", f"sys_{name}"}
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                sym = line.rsplit(None, 1)[-1]
                if sym in want:
                    return sym
    except OSError:
        return None
    return None


def kernel_at_least(major: int, minor: int) -> bool:
    """The running kernel is version major.minor or later (uname's release, "6.1.0-57-amd64")."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return m is not None and (int(m[1]), int(m[2])) >= (major, minor)


# the receives, whose arguments exit_args() lets the exit read: no enter hook for them
RECEIVES = (b"read", b"recvfrom", b"readv", b"recvmsg")


def exit_args() -> bool:
    """Whether a receive's arguments can be read at its exit (PB_EXIT_ARGS): from the user
    registers saved at entry (bpf_task_pt_regs: 5.15+, kernel BTF), on x86-64, where a
    syscall's return value leaves the argument registers in place (not so arm64's x0)."""
    return VMLINUX.exists() and kernel_at_least(5, 15) and os.uname().machine == "x86_64"


def hook_modes() -> dict[str, str | None]:
    """Each mode -> None if this kernel supports it, else why not (one sentence)."""
    tp = None if (TRACEFS / "events/syscalls").is_dir() else (
        "no syscall tracepoints (CONFIG_FTRACE_SYSCALLS, tracefs mounted)")
    kp: str | None = None
    if not kprobes_supported():
        kp = "the kernel has no kprobes (CONFIG_KPROBES is not set)"
    elif os.uname().machine != "x86_64":
        kp = "kprobe mode reads the x86-64 syscall wrappers' registers"
    elif _syscall_function("read") is None:
        kp = "no __x64_sys_read in /proc/kallsyms"
    return {"tracepoints": tp, "kprobes": kp}


def require(mode: str) -> None:
    """CapabilityError unless this kernel supports hook mode `mode`."""
    if mode not in HOOKS:
        raise CapabilityError(f"--kernel-hooks is one of {', '.join(HOOKS)}, not {mode!r}")
    why = hook_modes()[mode]
    if why:
        raise CapabilityError(f"--kernel-hooks {mode} is not possible on this kernel: {why}")


def attach_syscall_kprobes(bpf: Any, lib: Any) -> list[str]:
    """Attach every pb_sysenter__/pb_sysexit__ function of a PB_KPROBES=1 program to its
    syscall function; returns the probes attached ("+__x64_sys_read", "-__x64_sys_read")."""
    attached = []
    names = [lib.bpf_function_name(bpf.module, i) for i in range(lib.bpf_num_functions(bpf.module))]
    for fn in names:
        for prefix, ret in ((ENTER, False), (EXIT, True)):
            if not fn.startswith(prefix):
                continue
            event = bpf.get_syscall_fnname(fn[len(prefix):])
            try:
                if ret:
                    bpf.attach_kretprobe(event=event, fn_name=fn, maxactive=KRETPROBE_MAXACTIVE)
                else:
                    bpf.attach_kprobe(event=event, fn_name=fn)
            except Exception as e:  # bcc raises bare Exception with the kernel's reason
                raise CollectorError(f"could not attach a kprobe on {event.decode()}: {e}") from e
            attached.append(("-" if ret else "+") + event.decode())
    if not attached:
        raise CollectorError("the program has no pb_sysenter__/pb_sysexit__ functions")
    return attached


def kprobe_misses(attached: list[str]) -> int:
    """Hits the kernel dropped on our probes (kprobe_profile's last column), where it keeps
    them: return probes past KRETPROBE_MAXACTIVE, or probes recursing. 0 if it does not say."""
    events = {a[1:] for a in attached}
    total = 0
    try:
        text = (TRACEFS / "kprobe_profile").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        parts = line.split()
        # bcc names its events like p___x64_sys_read_bcc_PID / r___x64_sys_read_bcc_PID
        if len(parts) == 3 and parts[0].endswith(f"_bcc_{os.getpid()}") and any(
            e in parts[0] for e in events
        ):
            total += int(parts[2])
    return total

