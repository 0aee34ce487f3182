"""Processes from /proc, and a child tied to its parent: what the runner, the capture and the
uprobe discovery all need."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when its parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str  # R, S, D, T (stopped), t, Z (zombie), X ...
    ppid: int
    pgrp: int
    cpu_s: float = 0.0  # its own user + system time, without its children's


def processes() -> Iterator[ProcStat]:
    """Every process still listed, skipping those that vanish while read."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                # the command name may hold spaces and parentheses: fields follow the last ')'
                fields = f.read().rsplit(")", 1)[1].split()
                state, ppid, pgrp, utime, stime = *fields[:3], *fields[11:13]
        except (OSError, ValueError):
            continue
        ticks = os.sysconf("SC_CLK_TCK")
        yield ProcStat(int(d), state, int(ppid), int(pgrp), (int(utime) + int(stime)) / ticks)


def descendants(root: int, *, live_only: bool = True) -> set[int]:
    """The processes below ``root`` (not root itself); zombies only if not ``live_only``."""
    kids: dict[int, list[int]] = {}
    for p in processes():
        if not (live_only and p.state in ("Z", "X")):
            kids.setdefault(p.ppid, []).append(p.pid)
    out: set[int] = set()
    todo = list(kids.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += kids.get(pid, [])
    return out


def memory_kb(pid: int) -> tuple[str, int, int] | None:
    """(command name, resident KiB now, peak resident KiB) of a process; None once gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return (fields["Name"].strip(), int(fields["VmRSS"].split()[0]),
                int(fields["VmHWM"].split()[0]))  # fmt: skip
    except (OSError, KeyError, ValueError):  # gone, or a kernel thread / zombie (no Vm lines)
        return None
