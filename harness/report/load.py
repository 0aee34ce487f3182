"""Find run directories and read their run.json, metrics.json and attach-time sweeps."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.collectors import registry
from harness.errors import RunDirError
from harness.model import METRICS_JSON, METRICS_VERSION, RUN_JSON, RUN_VERSION, load_versioned

SWEEP_GLOB = "metrics.attach-at-*.json"


@dataclass
class RunData:
    """One run directory as the report sees it; metrics is None for runs that never finished."""

    run_dir: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any] | None = None
    sweep: dict[float, dict[str, Any]] = field(default_factory=dict)  # attach_at_s -> metrics
    problem: str | None = None  # why metrics are missing, when they are

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.run_dir.name)

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.manifest.get("params") or {})

    @property
    def machine(self) -> dict[str, Any]:
        return dict(self.manifest.get("machine") or {})

    @property
    def kernel_hooks(self) -> str:
        """How the kernel-side collector hooked the syscalls (runs before the option
        existed: tracepoints, the only mode then)."""
        recorded = self.manifest.get("collectors") or {}
        hooked = [recorded.get(c.name) for c in registry.collectors() if c.kernel_hooks]
        stats: dict[str, Any] = next((s for s in hooked if isinstance(s, dict)), {})
        opts = self.params.get("options") or {}
        return str(stats.get("kernel_hooks") or opts.get("kernel_hooks")
                   or self.params.get("kernel_hooks") or "tracepoints")

    @property
    def machine_label(self) -> str:
        """One machine, as the report names it: host and kernel (a guest is its own)."""
        m = self.machine
        return f"{m.get('hostname') or '?'}, kernel {m.get('kernel') or '?'}"

    @property
    def guest(self) -> bool:
        """Recorded in a kernel booted under QEMU (`probebench kernels`), not on a host."""
        return "QEMU" in str(self.machine.get("cpu_model") or "")

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list((self.metrics or {}).get("rows") or [])


@dataclass
class Loaded:
    runs: list[RunData]
    bench: list[tuple[Path, dict[str, Any]]]  # overhead results given beside the runs
    skipped: list[tuple[Path, str]]  # paths that were neither a run nor a bench file


def _is_run_dir(p: Path) -> bool:
    return (p / RUN_JSON).is_file()


def discover(paths: Iterable[Path]) -> tuple[list[Path], list[Path], list[tuple[Path, str]]]:
    """Run directories, bench JSON files and unusable paths among ``paths``.

    A path may be a run directory, a directory of run directories (one or two levels down,
    so `results/` and `results/runs/` both work; or a `probebench kernels` output, its runs
    in KERNEL/runs/ and host/runs/), or a bench results JSON file."""
    runs: list[Path] = []
    bench: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for p in paths:
        if p.is_file() and p.suffix == ".json":
            bench.append(p)
        elif _is_run_dir(p):
            runs.append(p)
        elif p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_dir() and _is_run_dir(c))
            for pattern in (f"*/*/{RUN_JSON}", f"*/runs/*/{RUN_JSON}"):
                found = found or sorted(g.parent for g in p.glob(pattern))
            for name in ("bench.json", "overhead.json"):
                if (p / name).is_file():
                    bench.append(p / name)
            if found:
                runs.extend(found)
            elif not any(b.parent == p for b in bench):
                skipped.append((p, "no run directories (no */run.json) found"))
        else:
            skipped.append((p, "does not exist" if not p.exists() else "not a directory"))
    # The same run given twice (as itself and through its parent) is reported once.
    unique = list(dict.fromkeys(r.resolve() for r in runs))
    return unique, bench, skipped


def _sweep_files(run_dir: Path) -> dict[float, dict[str, Any]]:
    out: dict[float, dict[str, Any]] = {}
    for f in sorted(run_dir.glob(SWEEP_GLOB)):
        try:
            m = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise RunDirError(f"{f} is not valid JSON ({e})") from e
        # written with a version since model.save_sweep; older ones without, read as today's
        if m.get("version", METRICS_VERSION) != METRICS_VERSION:
            raise RunDirError(f"{f} has version {m['version']!r}; this report reads "
                              f"version {METRICS_VERSION}")
        t = m.get("attach_at_s")
        if t is not None:  # the file name alone is not trusted
            out[float(t)] = m
    return dict(sorted(out.items()))


def load_run(run_dir: Path) -> RunData:
    manifest = load_versioned(run_dir / RUN_JSON, RUN_VERSION)
    run = RunData(run_dir=run_dir, manifest=manifest)
    if (run_dir / METRICS_JSON).is_file():
        run.metrics = load_versioned(run_dir / METRICS_JSON, METRICS_VERSION)
        run.sweep = _sweep_files(run_dir)
    elif run.status == "complete":
        run.problem = "recorded but never replayed (no metrics.json)"
    else:
        run.problem = manifest.get("error") or run.status
    return run


def load(paths: Iterable[Path]) -> Loaded:
    run_dirs, bench_files, skipped = discover(paths)
    runs: list[RunData] = []
    for d in run_dirs:
        try:
            runs.append(load_run(d))
        except RunDirError as e:
            skipped.append((d, str(e)))
    bench: list[tuple[Path, dict[str, Any]]] = []
    for f in bench_files:
        try:
            bench.append((f, json.loads(f.read_text())))
        except (OSError, json.JSONDecodeError) as e:
            skipped.append((f, f"unreadable bench results: {e}"))
    runs.sort(key=lambda r: r.run_id)
    return Loaded(runs=runs, bench=bench, skipped=skipped)
