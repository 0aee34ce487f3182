"""Where the BPF sources live, and compiling them with bcc (settings as -D cflags)."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from harness.errors import CapabilityError, CollectorError

BPF_DIR = Path(__file__).resolve().parent.parent.parent / "bpf"


def load_bcc() -> Any:
    try:
        import bcc
    except ImportError as e:
        raise CapabilityError(
            "bcc is not importable: install python3-bpfcc (scripts/setup links it into the venv)"
        ) from e
    return bcc


def compile_program(source: str | Path, defines: dict[str, int | str]) -> Any:
    """Compile and auto-attach a bcc program (a name in bpf/, or a path); headers come from
    bpf/. Raises CollectorError with bcc's reason."""
    bcc = load_bcc()
    cflags = [f"-I{BPF_DIR}", "-Wno-macro-redefined", "-Wno-pass-failed"] + [
        f"-D{k}={v}" for k, v in defines.items()
    ]
    try:
        return bcc.BPF(src_file=str(BPF_DIR / source).encode(), cflags=cflags)
    except Exception as e:  # bcc raises bare Exception for compile and load failures
        raise CollectorError(f"bcc could not compile or load {source}: {e}") from e


def percpu_totals(table: Any, n: int) -> list[int]:
    """Slots 0..n-1 of a BPF_PERCPU_ARRAY of counters, each summed over the CPUs."""
    return [int(sum(table.getvalue(ctypes.c_int(i)))) for i in range(n)]
