"""`probebench matrix`: plan the default (or quick) set of runs, record them resumably, report."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.collectors import registry
from harness.errors import ProbebenchError, RunDirError
from harness.model import (
    RunManifest,
    repo_root,
    save_sweep,
    sweep_path,
    utc_now,
    write_json_atomic,
)
from harness.runner.lifecycle import Interrupted, signals_as_exceptions
from harness.scenarios import CURRENT_GRPC_GO, GRPC_GO_VERSIONS, SCENARIOS, STRIPPED

Progress = Callable[[str], None]
STATE_VERSION = 1
PAIRS = (("go", "go"), ("py", "go"), ("go", "py"), ("py", "py"))
# Stacks beyond Python and Go, each crossed with Go both ways in every gRPC mode.
MORE_STACKS = ("node", "java", "rust")
ATTACHES = ("early", "late")
# Exchanges per run, sized so fixed costs (bcc compiles, capture start/stop, detach, tshark
# decode; about 7-8 s a run on a quiet machine) still dominate.
DEFAULT_EXCHANGES = {
    "http10-short": 400, "http11-keepalive": 400, "http11-pipelined": 400, "http11-mixed": 200,
    "grpc-unary": 200,
    "grpc-server-stream": 100, "grpc-client-stream": 100, "grpc-bidi": 100,
    "grpc-unary-shapes": 300, "grpc-stream-shapes": 100, "h2c-plain": 300,
}  # fmt: skip
# gRPC scenarios also run against stripped Go builds (-ldflags="-s -w").
STRIPPED_SCENARIOS = ("grpc-unary", "grpc-bidi")
# The stream-shape scenarios run against the Go server only (its GOAWAY option), from
# both client languages.
SHAPE_PAIRS = (("go", "go"), ("py", "go"))
# Plain HTTP/2 (h2c-plain): Go net/http and Node's http2, every direction.
H2C_PAIRS = (("go", "go"), ("go", "node"), ("node", "go"), ("node", "node"))
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
    tls: bool = False

    @property
    def key(self) -> str:
        ver = self.grpc_version or "-"
        return (f"{self.scenario}/{self.client}2{self.server}/{self.attach}/{ver}/"
                f"{'+'.join(self.collectors)}/n{self.exchanges}"
                + ("/tls" if self.tls else ""))  # fmt: skip

    @property
    def cell_id(self) -> str:
        """The key as a job name: stable across releases for the same cell, safe in file
        names and CI job ids (`/` is the only character of a key that is not)."""
        return self.key.replace("/", "_")

    def cell(self, matrix_name: str) -> dict[str, Any]:
        """What `probebench matrix --list --json` prints for this run."""
        return {"id": self.cell_id, "matrix": matrix_name, "scenario": self.scenario,
                "client": self.client, "server": self.server, "attach": self.attach,
                "grpc_version": self.grpc_version, "collectors": list(self.collectors),
                "exchanges": self.exchanges, "sweep": list(self.sweep),
                "tls": self.tls}  # fmt: skip

    def spec(self) -> Any:
        from harness.runner.record import RunSpec

        return RunSpec(scenario=self.scenario, client=self.client, server=self.server,
                       attach=self.attach, collectors=list(self.collectors),
                       exchanges=self.exchanges, grpc_version=self.grpc_version,
                       tls=self.tls)  # fmt: skip


def _grpc_version(scenario: str, client: str, server: str, version: str) -> str | None:
    has_go = "go" in (client, server)
    return version if SCENARIOS[scenario].is_grpc and has_go else None


def plan(
    quick: bool, collectors: tuple[str, ...] | None = None, *, full: bool = False
) -> list[MatrixRun]:
    """The runs of the quick, the default or the full matrix, in the order they are recorded.
    The default is the full matrix less the cells that only repeat a dimension it already
    measures (see _in_default), so `scripts/bootstrap matrix` stays within minutes."""
    collectors = collectors or registry.default_names()
    if quick:
        return _quick_plan(collectors)
    runs = _full_plan(collectors)
    return runs if full else [r for r in runs if _in_default(r)]


# The default matrix keeps every scenario, every stack on each side, both attaches, both
# collectors and TLS, and samples the rest (a late attach is sampled where it repeats the
# same HPACK loss), so that `scripts/bootstrap matrix` (setup, matrix, closing overhead
# pass, report) stays within 18 minutes on 2 cores: a fresh clone took 20 min 49 s with
# 94 runs (17 min of them the matrix, about 10.8 s a run). --full runs all 200.
DEFAULT_TLS = {("http11-keepalive", "py", "go", "early"), ("grpc-unary", "go", "go", "early"),
               ("grpc-unary", "go", "go", "late")}  # fmt: skip
NEW_HTTP1 = ("http11-pipelined", "http11-mixed")


def _in_default(r: MatrixRun) -> bool:
    ver = r.grpc_version or ""
    if r.tls:
        return (r.scenario, r.client, r.server, r.attach) in DEFAULT_TLS
    if SCENARIOS[r.scenario].proto == "h2c":  # crossed pairs: each stack on each side, 2 attaches
        return r.client != r.server
    if {r.client, r.server} - {"py", "go"}:  # further stacks: unary both ways early, and late
        # with the new stack as the client (the Go server's uprobes after a late attach)
        return r.scenario == "grpc-unary" and (r.attach == "early" or r.server == "go")
    if ver.endswith(STRIPPED):  # every version stripped, unary early (what is resolved from
        # a binary does not depend on when the probes attach)
        return r.scenario == "grpc-unary" and r.attach == "early"
    if ver and ver != CURRENT_GRPC_GO:  # old grpc-go versions: unary at both attach times,
        # bidi early (the stability column counts early runs; a late one adds only the
        # kernel side's HPACK loss, which unary shows)
        return r.scenario == "grpc-unary" or (r.scenario == "grpc-bidi" and r.attach == "early")
    if r.scenario in NEW_HTTP1:  # the crossed pairs early, one of them late
        return r.client != r.server and (r.attach == "early" or r.client == "py")
    if r.scenario.endswith("-shapes"):  # both pairs early, one late
        return r.attach == "early" or r.client == "py"
    if r.scenario == "http10-short":  # a connection per request: late is early, one shows it
        return r.attach == "early" or (r.client, r.server) == ("go", "go")
    if SCENARIOS[r.scenario].is_grpc and r.scenario != "grpc-unary":  # streaming modes: the
        # Python side against Go covers grpcio (unary has the grpcio-only pair), late once
        return (r.client, r.server) != ("py", "py") and (r.attach == "early"
                                                        or r.server == "go")  # fmt: skip
    if r.scenario == "http11-keepalive":  # every pair early, late where a Go side is
        return r.attach == "early" or "go" in (r.client, r.server)
    return True


def _full_plan(collectors: tuple[str, ...]) -> list[MatrixRun]:
    runs = []
    for name, scen in SCENARIOS.items():
        n = DEFAULT_EXCHANGES[name]
        shapes = name.endswith("-shapes")
        pairs = SHAPE_PAIRS if shapes else H2C_PAIRS if scen.proto == "h2c" else PAIRS
        for client, server in pairs:
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
        if name in STRIPPED_SCENARIOS:
            # Stripped builds of every version (stability on binaries as shipped): two
            # call modes are enough, the probes are the same for all four.
            for ver in GRPC_GO_VERSIONS:
                for attach in ATTACHES:
                    runs.append(MatrixRun(name, "go", "go", attach, n, collectors, ver + STRIPPED))
    runs += _more_stacks(collectors)
    return runs + tls_plan(collectors)


TLS_LATE = ("http11-keepalive", "grpc-unary", "grpc-bidi")  # where late attach tells something


def tls_plan(collectors: tuple[str, ...], quick: bool = False) -> list[MatrixRun]:
    """TLS cells: every scenario and language pair, early attach (late where it matters),
    with the TLS collector added. grpcio to grpcio is left out: neither end writes a key
    log, so such a run has no truth (it says so when run by hand)."""
    cols = (*collectors, *(c for c in registry.tls_names() if c not in collectors))
    if quick:
        return [MatrixRun("http11-keepalive", "py", "go", "early", 100, cols, tls=True),
                MatrixRun("grpc-unary", "py", "go", "late", 60, cols, CURRENT_GRPC_GO,
                          tls=True)]  # fmt: skip
    runs = []
    for name, scen in SCENARIOS.items():
        n = DEFAULT_EXCHANGES[name]
        if scen.proto == "h2c":  # prior-knowledge cleartext: no TLS variant
            continue
        for client, server in PAIRS:
            if scen.is_grpc and (client, server) == ("py", "py"):
                continue
            ver = _grpc_version(name, client, server, CURRENT_GRPC_GO)
            for attach in ATTACHES if name in TLS_LATE else ("early",):
                runs.append(MatrixRun(name, client, server, attach, n, cols, ver, tls=True))
    return runs


def _more_stacks(collectors: tuple[str, ...]) -> list[MatrixRun]:
    """New client -> Go server and Go client -> new server, every gRPC mode, early and late."""
    runs = []
    for lang in MORE_STACKS:
        for name, scen in SCENARIOS.items():
            if not scen.is_grpc or name.endswith("-shapes"):  # their options: Go and Python
                continue
            for client, server in ((lang, "go"), ("go", lang)):
                for attach in ATTACHES:
                    runs.append(MatrixRun(name, client, server, attach, DEFAULT_EXCHANGES[name],
                                          collectors, CURRENT_GRPC_GO))  # fmt: skip
    return runs


def _quick_plan(collectors: tuple[str, ...]) -> list[MatrixRun]:
    old = GRPC_GO_VERSIONS[0]
    cur = CURRENT_GRPC_GO
    return [
        MatrixRun("http10-short", "py", "go", "early", 100, collectors),
        MatrixRun("http11-keepalive", "go", "py", "late", 100, collectors),
        MatrixRun("http11-pipelined", "py", "go", "late", 96, collectors),
        MatrixRun("grpc-unary", "go", "go", "early", 60, collectors, cur, QUICK_SWEEP_FRACTIONS),
        MatrixRun("grpc-unary", "go", "go", "late", 60, collectors, cur),
        MatrixRun("grpc-unary", "go", "go", "early", 60, collectors, old),
        MatrixRun("grpc-unary", "go", "go", "late", 60, collectors, old + STRIPPED),
        MatrixRun("grpc-bidi", "py", "go", "late", 30, collectors, cur),
        MatrixRun("grpc-server-stream", "go", "py", "early", 30, collectors, cur),
        MatrixRun("h2c-plain", "node", "go", "late", 60, collectors),
        *tls_plan(collectors, quick=True),
    ]


MATRICES = (("default", False, False), ("full", False, True), ("quick", True, False))


def cells() -> list[dict[str, Any]]:
    """Every cell of the default, full and quick matrix, each once, labelled with the first of
    them that has it, for CI engines that fan the matrix out as jobs."""
    seen: set[str] = set()
    out = []
    for name, quick, full in MATRICES:
        for run in plan(quick, full=full):
            if run.cell_id not in seen:
                seen.add(run.cell_id)
                out.append(run.cell(name))
    return out


def find_cell(cell_id: str) -> MatrixRun:
    """The run a cell id names; an unknown id is an error that says where ids come from."""
    for _, quick, full in MATRICES:
        for run in plan(quick, full=full):
            if run.cell_id == cell_id:
                return run
    raise ProbebenchError(f"no matrix cell {cell_id!r}; `probebench matrix --list` prints them")


def run_cell(cell_id: str, out: Path, progress: Progress) -> Path:
    """Record and replay one cell under ``out`` (resumable, like the matrix); returns its run
    directory. A failed cell is an error: a CI job must fail, not report an empty cell."""
    run = find_cell(cell_id)
    out.mkdir(parents=True, exist_ok=True)
    state = State.load(out / "matrix-cells.state.json")
    with signals_as_exceptions():
        for _ in execute([run], state, out, progress):
            pass
    entry = state.runs[run.key]
    if entry["status"] != "done":
        raise ProbebenchError(f"matrix cell {cell_id} failed: {entry.get('error')}")
    return Path(entry["run_dir"])


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

    def _on_disk(self, key: str, status: str) -> Path | None:
        """The run directory of a run in this state, if it is still on disk."""
        e = self.runs.get(key)
        if e and e.get("status") == status and Path(e["run_dir"]).is_dir():
            return Path(e["run_dir"])
        return None

    def done(self, key: str) -> bool:
        """Finished and still on disk; failed runs are tried again on the next start."""
        return self._on_disk(key, "done") is not None

    def recorded(self, key: str) -> Path | None:
        """The run directory of a run recorded but not yet replayed (an interrupt came
        first), if still on disk."""
        return self._on_disk(key, "recorded")

    def record(self, key: str, **entry: Any) -> None:
        self.runs[key] = {**entry, "finished_utc": utc_now()}
        self.save()


def state_path(out: Path, quick: bool, full: bool = False) -> Path:
    return out / f"matrix-{'quick' if quick else 'full' if full else 'default'}.state.json"


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


def run_sweep(run_dir: Path, fractions: tuple[float, ...], progress: Progress) -> list[str]:
    from harness.analysis.replay import replay

    files = []
    for t in sweep_times(run_dir, fractions):
        path = sweep_path(run_dir, t)
        if not path.exists():
            progress(f"sweep: replaying {run_dir.name} as if attached {t:g} s later")
            save_sweep(run_dir, t, replay(run_dir, attach_at_s=t, write=False))
        files.append(path.name)
    return files


def _tagged(progress: Progress, i: int, msg: str) -> None:
    progress(f"  [{i}] {msg}")


def _fmt_s(s: float) -> str:
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def _new_dirs(out: Path, before: set[Path]) -> list[Path]:
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if p.is_dir() and p not in before)


REPLAY_NICE = 10


def _yield_cpu() -> None:
    """Lower the calling thread's priority (Linux nices threads one by one; tshark and the
    truth's worker started from it inherit it): the recording beside it, whose collectors
    compile and whose workload runs, gets the cores first, and the replay the rest."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REPLAY_NICE)


def execute(
    runs: list[MatrixRun],
    state: State,
    out: Path,
    progress: Progress,
    record_fn: Callable[[Any, Path, Progress], Path] | None = None,
    replay_fn: Callable[[Path], Any] | None = None,
) -> Iterator[tuple[MatrixRun, dict[str, Any]]]:
    """Record and replay each run not yet done, recording each outcome in ``state``; yields
    (run, state entry) as each one ends, in order. Interrupts propagate after the state is
    saved.

    A run's replay (Wireshark's decode, parsing, matching: CPU-bound, no root) overlaps the
    next run's recording, which mostly waits on its collectors' compiles and the workload,
    so on 2 cores the two mostly fit side by side. Recordings stay one at a time
    (their ports, captures and probes never meet); the replay that overlaps reads only
    its own finished run directory."""
    from harness.analysis.replay import replay
    from harness.runner.record import record

    record_fn, replay_fn = record_fn or record, replay_fn or replay
    todo = [r for r in runs if not state.done(r.key)]
    if len(todo) < len(runs):
        progress(f"resuming: {len(runs) - len(todo)} of {len(runs)} runs already done")
    started = time.monotonic()

    def analyse(run_dir: Path, sweep: tuple[float, ...]) -> list[str]:
        replay_fn(run_dir)
        return run_sweep(run_dir, sweep, progress) if sweep else []

    def failed(i: int, e: BaseException, run_dir: Path | None, t0: float) -> dict[str, Any]:
        entry = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                 "run_dir": str(run_dir) if run_dir else None,
                 "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
        progress(f"run {i}/{len(todo)} FAILED: {entry['error']}")
        return entry

    def finish(i: int, run: MatrixRun, run_dir: Path, t0: float, job: Future[list[str]]
               ) -> tuple[MatrixRun, dict[str, Any]]:  # fmt: skip
        """Wait for a run's replay and record its outcome."""
        try:
            sweep = job.result()
        except Exception as e:  # one failed run must not stop the matrix; it is recorded
            entry = failed(i, e, run_dir, t0)
        else:
            entry = {"status": "done", "run_dir": str(run_dir), "sweep": sweep,
                     "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
        state.record(run.key, **entry)
        return run, state.runs[run.key]

    # one worker: replays run in order and never compete with each other for the 2nd core;
    # a slow one (a sweep replays its run four more times) delays no recording, it queues
    pending: deque[tuple[int, MatrixRun, Path, float, Future[list[str]]]] = deque()

    def finished(wait: bool) -> Iterator[tuple[MatrixRun, dict[str, Any]]]:
        """Outcomes of the queued replays that are over (all of them with ``wait``), in
        order; each leaves the queue only once recorded."""
        while pending and (wait or pending[0][4].done()):
            out = finish(*pending[0])
            pending.popleft()
            yield out

    with ThreadPoolExecutor(1, thread_name_prefix="replay", initializer=_yield_cpu) as pool:
        try:
            for i, run in enumerate(todo, 1):
                per_run = (time.monotonic() - started) / max(i - 1, 1)
                eta = f", ETA {_fmt_s(per_run * (len(todo) - i + 1))}" if i > 1 else ""
                progress(f"run {i}/{len(todo)}: {run.key}{eta}")
                t0 = time.monotonic()
                before = set(out.iterdir()) if out.is_dir() else set()
                if recorded := state.recorded(run.key):  # interrupted before its replay
                    job = pool.submit(analyse, recorded, run.sweep)
                    pending.append((i, run, recorded, t0, job))
                    continue
                try:
                    run_dir = record_fn(run.spec(), out, functools.partial(_tagged, progress, i))
                except (Interrupted, KeyboardInterrupt):
                    progress(f"interrupted during {run.key}; it will be redone on the next "
                             "start")  # fmt: skip
                    raise
                except Exception as e:
                    new = _new_dirs(out, before)
                    entry = failed(i, e, new[0] if len(new) == 1 else None, t0)
                    yield from finished(wait=True)  # outcomes stay in the plan's order
                    state.record(run.key, **entry)
                    yield run, state.runs[run.key]
                    continue
                pending.append((i, run, run_dir, t0, pool.submit(analyse, run_dir, run.sweep)))
                yield from finished(wait=False)
            yield from finished(wait=True)
        finally:
            # interrupted: a replay not begun is left for the next start (its recording is
            # kept and marked so), the one going on is waited for (a thread cannot be stopped)
            kept = []
            for queued in pending:
                _, run, run_dir, _, fut = queued
                if fut.cancel():
                    state.record(run.key, status="recorded", run_dir=str(run_dir))
                else:
                    kept.append(queued)
            pending.clear()
            pending.extend(kept)
            with contextlib.suppress(Interrupted, KeyboardInterrupt):
                for _ in finished(wait=True):
                    pass


# -- the closing overhead pass --------------------------------------------------------------

# (rounds, scale) of benchmarks/bench_overhead.py at the end of the matrix: about 2 minutes
# for the default matrix; a quick matrix gets a quicker pass still.
OVERHEAD_PASS = {False: (3, 0.2), True: (2, 0.1)}
OVERHEAD_PASS_TIMEOUT_S = 600


@dataclass
class OverheadSource:
    files: list[Path]
    origin: str  # how the report got them
    absent: str = ""  # why there are none


def _same_commit_and_machine(path: Path) -> bool:
    try:
        m = json.loads(path.read_text()).get("machine") or {}
    except (OSError, json.JSONDecodeError):
        return False
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True,
                          text=True, check=False).stdout.strip()  # fmt: skip
    return bool(head) and m.get("git_commit") == head and not m.get("git_dirty") and (
        m.get("hostname") == platform.node() and m.get("kernel") == platform.release())


def closing_overhead_pass(out: Path, quick: bool, progress: Progress) -> OverheadSource:
    """Bench results for this commit and machine: reused when at hand (beside the runs, or
    where `nox -s bench` writes them), else measured now by a short interleaved pass of
    benchmarks/bench_overhead.py, the same bench code with fewer rounds."""
    for p in (out / "overhead.json", out.parent / "overhead.json"):
        if p.is_file() and _same_commit_and_machine(p):
            progress(f"overhead: reusing {p} (same commit and machine)")
            return OverheadSource([p], f"the bench results `{p}` of the same commit and "
                                       "machine (reused, not re-measured)")  # fmt: skip
    rounds, scale = OVERHEAD_PASS[quick]
    dest = out / "overhead.json"
    bench = repo_root() / "benchmarks" / "bench_overhead.py"
    env = {**os.environ, "PROBEBENCH_OVERHEAD_ROUNDS": str(rounds),
           "PROBEBENCH_OVERHEAD_SCALE": str(scale), "PROBEBENCH_OVERHEAD_OUT": str(dest)}
    # the TLS collector's bench (HTTPS workloads) is `nox -s bench`'s alone: the matrix's
    # pass stays within its time
    cmd = [sys.executable, "-m", "pytest", str(bench), "--benchmark-only", "-q",
           "-p", "no:cacheprovider", "--rootdir", str(repo_root()),
           "-k", "not test_tls_overhead"]  # fmt: skip
    progress(f"overhead: closing pass, {rounds} interleaved rounds at scale {scale} "
             "(benchmarks/bench_overhead.py)")  # fmt: skip
    dest.unlink(missing_ok=True)
    # its own session, so a timeout can stop the bench and everything it started
    proc = subprocess.Popen(cmd, cwd=repo_root(), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=OVERHEAD_PASS_TIMEOUT_S)
        lines = output.strip().splitlines()
        # pytest's last "E   SomeError: ..." line says why; its summary line only counts
        errs = [x[1:].strip() for x in lines if x.startswith("E ")]
        said = errs[-1] if errs else (lines[-1] if lines else "no output")
        failed = not dest.is_file()  # a pass that measured part of it still says so below
        why = f"exit code {proc.returncode}: {said[:240]}"
    except subprocess.TimeoutExpired:
        # SIGINT first: the bench's process sets detach probes and stop children on it
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        failed, why = True, f"no result within {OVERHEAD_PASS_TIMEOUT_S} s"
    except BaseException:
        proc.send_signal(signal.SIGINT)  # interrupted matrix: the bench cleans up as well
        proc.wait(timeout=60)
        raise
    if failed:
        progress(f"overhead: the closing pass failed ({why}); the report says so")
        return OverheadSource([], "", f"the matrix's closing overhead pass failed ({why})")
    partial = f"; it ended with {why}" if proc.returncode else ""
    origin = (f"the matrix's closing overhead pass ({rounds} interleaved rounds at scale "
              f"{scale}: short, so intervals are wide and instability likely; `nox -s bench` "
              f"measures longer{partial})")  # fmt: skip
    # kept in the file, so a later `probebench report` of these runs says it too
    try:
        data = json.loads(dest.read_text())
        data["origin"] = origin
        write_json_atomic(dest, data)
    except (OSError, json.JSONDecodeError) as e:
        return OverheadSource([], "", f"the closing overhead pass wrote no readable file ({e})")
    return OverheadSource([dest], origin)


def run_matrix(quick: bool, out: Path, report_dir: Path, progress: Progress, *,
               overhead: bool = False, full: bool = False) -> Path:
    """Record the quick, default or full matrix under ``out`` (resuming from its state file), then
    (with ``overhead``) the closing overhead pass, then build the report of its runs into
    ``report_dir``; returns the report's path."""
    from harness.report.build import build_report

    runs = plan(quick, full=full)
    out.mkdir(parents=True, exist_ok=True)
    state = State.load(state_path(out, quick, full))
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
    size = " --quick" if quick else " --full" if full else ""
    cmd = f"probebench matrix{size} --out {out} --report {report_dir}"
    if overhead:
        with signals_as_exceptions():  # SIGTERM stops the pass's bench too, cleanly
            src = closing_overhead_pass(out, quick, progress)
    else:
        # The overhead bench writes results/overhead.json beside results/runs.
        given = [b for b in (out.parent / "overhead.json",) if b.is_file()]
        src = OverheadSource(given, "", "" if given else "the matrix ran without its "
                                                         "overhead pass (--no-overhead)")
    return build_report([*dirs, *src.files], report_dir, command=cmd, bench_origin=src.origin,
                        bench_absent=src.absent)  # fmt: skip
