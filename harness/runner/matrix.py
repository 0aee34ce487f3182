"""`probebench matrix`: plan the default (or quick) set of runs, record them resumably, report."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ProbebenchError, RunDirError
from harness.model import METRICS_VERSION, RunManifest, utc_now, write_json_atomic
from harness.runner.lifecycle import Interrupted, signals_as_exceptions
from harness.runner.scenarios import CURRENT_GRPC_GO, GRPC_GO_VERSIONS, SCENARIOS

Progress = Callable[[str], None]
STATE_VERSION = 1
PAIRS = (("go", "go"), ("py", "go"), ("go", "py"), ("py", "py"))
ATTACHES = ("early", "late")
# Exchanges per run, sized so fixed costs (bcc compile, capture start/stop, tshark decode;
# about 5-10 s a run) still dominate and the default matrix fits in 15 minutes on 2 cores.
DEFAULT_EXCHANGES = {
    "http10-short": 400, "http11-keepalive": 400, "grpc-unary": 200,
    "grpc-server-stream": 100, "grpc-client-stream": 100, "grpc-bidi": 100,
    "grpc-unary-shapes": 300, "grpc-stream-shapes": 100,
}  # fmt: skip
# The stream-shape scenarios run against the Go server only (its GOAWAY option), from
# both client languages.
SHAPE_PAIRS = (("go", "go"), ("py", "go"))
# Where in the workload (share of its time span) the sweep replays an attach.
SWEEP_FRACTIONS = (0.1, 0.25, 0.5, 0.75)
QUICK_SWEEP_FRACTIONS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class MatrixRun:
    scenario: str
    client: str
    server: str
    attach: str
    exchanges: int
    collectors: tuple[str, ...]
    grpc_version: str | None = None  # None: no Go gRPC code in the run
    sweep: tuple[float, ...] = ()  # attach-at replays, as shares of the workload's span

    @property
    def key(self) -> str:
        ver = self.grpc_version or "-"
        return (f"{self.scenario}/{self.client}2{self.server}/{self.attach}/{ver}/"
                f"{'+'.join(self.collectors)}/n{self.exchanges}")  # fmt: skip

    def spec(self) -> Any:
        from harness.runner.record import RunSpec

        return RunSpec(scenario=self.scenario, client=self.client, server=self.server,
                       attach=self.attach, collectors=list(self.collectors),
                       exchanges=self.exchanges, grpc_version=self.grpc_version)  # fmt: skip


UPROBE_MODULES = ("harness.collectors.uprobe.record", "harness.analysis.uprobe_observed")


def available_collectors() -> tuple[str, ...]:
    """Both collectors, unless the uprobe recorder or its replay side is not in this checkout
    yet (every run would then fail on it, kprobe data included)."""
    if any(importlib.util.find_spec(m) is None for m in UPROBE_MODULES):
        return ("kprobe",)
    return ("kprobe", "uprobe")


def _grpc_version(scenario: str, client: str, server: str, version: str) -> str | None:
    has_go = "go" in (client, server)
    return version if SCENARIOS[scenario].is_grpc and has_go else None


def plan(quick: bool, collectors: tuple[str, ...] = ("kprobe", "uprobe")) -> list[MatrixRun]:
    """The runs of the quick or the default matrix, in the order they are recorded."""
    if quick:
        return _quick_plan(collectors)
    runs = []
    for name, scen in SCENARIOS.items():
        n = DEFAULT_EXCHANGES[name]
        shapes = name.endswith("-shapes")
        for client, server in SHAPE_PAIRS if shapes else PAIRS:
            for attach in ATTACHES:
                runs.append(MatrixRun(
                    name, client, server, attach, n, collectors,
                    _grpc_version(name, client, server, CURRENT_GRPC_GO),
                    SWEEP_FRACTIONS if attach == "early" and (client, server) == ("go", "go")
                    and name in ("http11-keepalive", "grpc-unary", "grpc-bidi") else (),
                ))  # fmt: skip
        if scen.is_grpc and not shapes:
            # Old grpc-go only where both sides are Go: the stability column needs the
            # versions, not every language pair again.
            for ver in GRPC_GO_VERSIONS:
                if ver == CURRENT_GRPC_GO:
                    continue
                for attach in ATTACHES:
                    runs.append(MatrixRun(name, "go", "go", attach, n, collectors, ver))
    return runs


def _quick_plan(collectors: tuple[str, ...]) -> list[MatrixRun]:
    old = GRPC_GO_VERSIONS[0]
    cur = CURRENT_GRPC_GO
    return [
        MatrixRun("http10-short", "py", "go", "early", 100, collectors),
        MatrixRun("http11-keepalive", "go", "py", "late", 100, collectors),
        MatrixRun("grpc-unary", "go", "go", "early", 60, collectors, cur, QUICK_SWEEP_FRACTIONS),
        MatrixRun("grpc-unary", "go", "go", "late", 60, collectors, cur),
        MatrixRun("grpc-unary", "go", "go", "early", 60, collectors, old),
        MatrixRun("grpc-bidi", "py", "go", "late", 30, collectors, cur),
        MatrixRun("grpc-server-stream", "go", "py", "early", 30, collectors, cur),
    ]


# -- state --------------------------------------------------------------------------------------


@dataclass
class State:
    """The state file: matrix key -> outcome. Written atomically after every change, so an
    interrupt at any moment leaves the previous or the next version, never half of one."""

    path: Path
    runs: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls(path, {})
        try:
            obj = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise RunDirError(f"matrix state {path} is not valid JSON ({e}); move it away to "
                              "start over") from e  # fmt: skip
        if obj.get("version") != STATE_VERSION:
            raise RunDirError(f"matrix state {path} has version {obj.get('version')!r}; "
                              f"this probebench reads version {STATE_VERSION}")  # fmt: skip
        return cls(path, dict(obj.get("runs") or {}))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"version": STATE_VERSION, "runs": self.runs})

    def done(self, key: str) -> bool:
        """Finished and still on disk; failed runs are tried again on the next start."""
        e = self.runs.get(key)
        return bool(e and e.get("status") == "done" and Path(e["run_dir"]).is_dir())

    def record(self, key: str, **entry: Any) -> None:
        self.runs[key] = {**entry, "finished_utc": utc_now()}
        self.save()


def state_path(out: Path, quick: bool) -> Path:
    return out / f"matrix-{'quick' if quick else 'default'}.state.json"


# -- running --------------------------------------------------------------------------------------


def sweep_times(run_dir: Path, fractions: tuple[float, ...]) -> list[float]:
    """Attach-at offsets (s after the real attach) at the given shares of the workload's span,
    from the first to the last exchange the client started."""
    from harness.groundtruth.match import read_workload
    from harness.model import WORKLOAD

    manifest = RunManifest.load(run_dir)
    starts = [r["t_start_ns"] for r in read_workload(run_dir / WORKLOAD) if r.get("t_start_ns")]
    # Replay adds T to each collector's own attach; counting from the earliest keeps every
    # point inside the workload for that one (a later collector's points fall later still).
    attached = [int(c["attach_ns"]) for c in manifest.collectors.values() if "attach_ns" in c]
    if not starts or not attached:
        return []
    first, last = min(starts) - min(attached), max(starts) - min(attached)
    # 0.1 ms resolution: the file name carries T, and a workload lasts tenths of a second.
    return sorted({round((first + f * (last - first)) / 1e9, 4) for f in fractions})


def sweep_file(run_dir: Path, t: float) -> Path:
    return run_dir / f"metrics.attach-at-{t:g}s.json"  # the name `probebench replay` uses


def run_sweep(run_dir: Path, fractions: tuple[float, ...], progress: Progress) -> list[str]:
    from harness.analysis.replay import replay

    files = []
    for t in sweep_times(run_dir, fractions):
        path = sweep_file(run_dir, t)
        if not path.exists():
            progress(f"sweep: replaying {run_dir.name} as if attached {t:g} s later")
            metrics = replay(run_dir, attach_at_s=t, write=False)
            write_json_atomic(path, {"version": METRICS_VERSION, **metrics})
        files.append(path.name)
    return files


def _fmt_s(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def _new_dirs(out: Path, before: set[Path]) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and p not in before)


def execute(
    runs: list[MatrixRun],
    state: State,
    out: Path,
    progress: Progress,
    record_fn: Callable[[Any, Path, Progress], Path] | None = None,
    replay_fn: Callable[[Path], Any] | None = None,
) -> Iterator[tuple[MatrixRun, dict[str, Any]]]:
    """Record and replay each run not yet done, recording each outcome in ``state``; yields
    (run, state entry) as each one ends. Interrupts propagate after the state is saved."""
    if record_fn is None:
        from harness.runner.record import record as record_fn
    if replay_fn is None:
        from harness.analysis.replay import replay as replay_fn
    todo = [r for r in runs if not state.done(r.key)]
    if len(todo) < len(runs):
        progress(f"resuming: {len(runs) - len(todo)} of {len(runs)} runs already done")
    spent: list[float] = []
    for i, run in enumerate(todo, 1):
        eta = f", ETA {_fmt_s(sum(spent) / len(spent) * (len(todo) - i + 1))}" if spent else ""
        progress(f"run {i}/{len(todo)}: {run.key}{eta}")
        t0 = time.monotonic()
        before = set(out.iterdir()) if out.is_dir() else set()
        run_dir: Path | None = None
        try:
            run_dir = record_fn(run.spec(), out, lambda m, i=i: progress(f"  [{i}] {m}"))
            replay_fn(run_dir)
            sweep = run_sweep(run_dir, run.sweep, progress) if run.sweep else []
        except (Interrupted, KeyboardInterrupt):
            progress(f"interrupted during {run.key}; it will be redone on the next start")
            raise
        except Exception as e:  # one failed run must not stop the matrix; it is recorded
            new = _new_dirs(out, before)
            run_dir = run_dir or (new[0] if len(new) == 1 else None)
            entry = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                     "run_dir": str(run_dir) if run_dir else None,
                     "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
            progress(f"run {i}/{len(todo)} FAILED: {entry['error']}")
        else:
            entry = {"status": "done", "run_dir": str(run_dir), "sweep": sweep,
                     "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
        spent.append(time.monotonic() - t0)
        state.record(run.key, **entry)
        yield run, state.runs[run.key]


def run_matrix(quick: bool, out: Path, report_dir: Path, progress: Progress) -> Path:
    """Record the quick or default matrix under ``out`` (resuming from its state file), then
    build the report of its runs into ``report_dir``; returns the report's path."""
    from harness.report.build import build_report

    collectors = available_collectors()
    if "uprobe" not in collectors:
        progress("uprobe collector not available in this checkout: recording kprobe only")
    runs = plan(quick, collectors)
    out.mkdir(parents=True, exist_ok=True)
    state = State.load(state_path(out, quick))
    t0 = time.monotonic()
    with signals_as_exceptions():
        for _ in execute(runs, state, out, progress):
            pass
    status = [state.runs.get(r.key, {}).get("status") for r in runs]
    progress(f"matrix: {status.count('done')} runs done, {status.count('failed')} failed, "
             f"{_fmt_s(time.monotonic() - t0)} this session")  # fmt: skip
    # Failed runs that left a directory go into the report too: the stability column counts
    # a collector that failed to attach as a version that does not work.
    dirs = [Path(e["run_dir"]) for r in runs if (e := state.runs.get(r.key))
            and e.get("run_dir") and Path(e["run_dir"]).is_dir()]  # fmt: skip
    if not dirs:
        raise ProbebenchError("the matrix produced no run directories to report on")
    # Finished runs are kept on a restart, so the same command only rebuilds the report
    # (and retries failed runs).
    cmd = f"probebench matrix{' --quick' if quick else ''} --out {out} --report {report_dir}"
    # The overhead bench writes results/overhead.json beside results/runs.
    bench = [b for b in (out.parent / "overhead.json",) if b.is_file()]
    return build_report([*dirs, *bench], report_dir, command=cmd)
