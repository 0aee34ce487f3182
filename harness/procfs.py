"""Reading processes from /proc: what the runner and the uprobe discovery both need."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str  # R, S, D, T (stopped), t, Z (zombie), X ...
    ppid: int
    pgrp: int


def processes() -> Iterator[ProcStat]:
    """Every process still listed, skipping those that vanish while read."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                # the command name may hold spaces and parentheses: fields follow the last ')'
                state, ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        yield ProcStat(int(d), state, int(ppid), int(pgrp))
