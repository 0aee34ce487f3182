"""The matrix planner, its state file and resume logic, with recording faked (no BPF)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness.model import RunManifest
from harness.scenarios import CURRENT_GRPC_GO, GRPC_GO_VERSIONS, SCENARIOS, STRIPPED
from harness.workflows import matrix
from harness.workflows.matrix import MatrixRun, State, execute, plan, state_path, sweep_times

FIXTURES = Path(__file__).parent / "fixtures" / "report"
EARLY = "20261125T132142-grpc-unary-go2go-early-v1.85.0"
BOTH = ("kprobe", "uprobe")


def test_full_plan_covers_the_matrix_once() -> None:
    runs = plan(quick=False, full=True)
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys))
    runs = [r for r in runs if not r.tls]  # TLS cells: test_tls_cells below
    current = [r for r in runs if r.grpc_version in (None, CURRENT_GRPC_GO)
               and {r.client, r.server} <= {"py", "go"} and r.scenario != "h2c-plain"]  # fmt: skip
    combos = Counter((r.scenario, r.client, r.server, r.attach) for r in current)
    # every scenario x language pair x attach, exactly once at the current grpc-go; the
    # stream-shape scenarios go→go and py→go only
    assert set(combos.values()) == {1}
    shapes = [s for s in SCENARIOS if s.endswith("-shapes")]
    assert len(shapes) == 2
    assert len(combos) == (len(SCENARIOS) - len(shapes) - 1) * 4 * 2 + len(shapes) * 2 * 2
    # plain HTTP/2: Go net/http and Node's http2 in every direction, early and late
    h2c = Counter((r.client, r.server, r.attach) for r in runs if r.scenario == "h2c-plain")
    assert set(h2c.values()) == {1}
    assert set(h2c) == {(c, s, a) for c, s in matrix.H2C_PAIRS for a in ("early", "late")}
    assert {(c, s) for (n, c, s, _a) in combos if n in shapes} == {("go", "go"), ("py", "go")}
    # every further stack crossed with Go both ways, in every gRPC mode, early and late
    grpc_scens = [n for n, s in SCENARIOS.items() if s.is_grpc and n not in shapes]
    for lang in matrix.MORE_STACKS:
        mine = Counter((r.scenario, r.client, r.server, r.attach) for r in runs
                       if lang in (r.client, r.server)
                       and SCENARIOS[r.scenario].is_grpc)  # fmt: skip
        assert set(mine.values()) == {1}
        assert set(mine) == {(n, c, s, a) for n in grpc_scens for c, s in ((lang, "go"),
                             ("go", lang)) for a in ("early", "late")}  # fmt: skip
    old = [r for r in runs if r.grpc_version not in (None, CURRENT_GRPC_GO)]
    assert {(r.client, r.server) for r in old} == {("go", "go")}
    assert all(SCENARIOS[r.scenario].is_grpc for r in old)
    stripped = [r for r in old if r.grpc_version.endswith(STRIPPED)]  # type: ignore[union-attr]
    assert len(old) - len(stripped) == len(grpc_scens) * (len(GRPC_GO_VERSIONS) - 1) * 2
    # stripped builds of every version, both attaches, in a few scenarios
    assert {r.grpc_version for r in stripped} == {v + STRIPPED for v in GRPC_GO_VERSIONS}
    assert len(stripped) == len(matrix.STRIPPED_SCENARIOS) * len(GRPC_GO_VERSIONS) * 2
    assert all(r.collectors == BOTH for r in runs)


def test_tls_cells_cover_every_scenario_and_language() -> None:
    tls = [r for r in plan(quick=False, full=True) if r.tls]
    assert all("tls" in r.collectors and r.spec().tls for r in tls)
    assert {r.scenario for r in tls} == set(SCENARIOS) - {"h2c-plain"}  # cleartext by name
    for name, scen in SCENARIOS.items():
        if scen.proto == "h2c":
            continue
        pairs = {(r.client, r.server) for r in tls if r.scenario == name}
        # grpcio to grpcio has no key log on either end: no truth, so no cell
        assert ("py", "py") in pairs or scen.is_grpc
        assert {("go", "go"), ("py", "go"), ("go", "py")} <= pairs
    assert {r.attach for r in tls if r.scenario == "grpc-unary"} == {"early", "late"}


def test_default_plan_versions_and_sizes() -> None:
    for r in plan(quick=False, full=True):
        has_go_grpc = SCENARIOS[r.scenario].is_grpc and "go" in (r.client, r.server)
        assert (r.grpc_version is not None) == has_go_grpc, r.key
        assert r.exchanges == matrix.DEFAULT_EXCHANGES[r.scenario]
        assert 100 <= r.exchanges <= 500
        if r.sweep:
            assert r.attach == "early"
    assert sum(1 for r in plan(quick=False) if r.sweep) >= 3


def test_default_plan_samples_every_dimension_of_the_full_one() -> None:
    full, default = plan(quick=False, full=True), plan(quick=False)
    assert {r.key for r in default} < {r.key for r in full}
    assert len(default) <= 100  # scripts/bootstrap matrix: minutes, not an hour
    # the original six scenarios: every py/go pair early (py->py where grpcio alone is
    # shown: HTTP/1 and unary), each scenario late with a Go side
    core = {(r.scenario, r.client, r.server, r.attach) for r in default
            if not r.tls and r.grpc_version in (None, CURRENT_GRPC_GO)}  # fmt: skip
    for name in ("http10-short", "http11-keepalive", "grpc-unary", "grpc-server-stream",
                 "grpc-client-stream", "grpc-bidi"):
        pairs = {(c, s) for c in ("py", "go") for s in ("py", "go")}
        if name not in ("http10-short", "http11-keepalive", "grpc-unary"):
            pairs.discard(("py", "py"))
        assert {(c, s) for n, c, s, a in core if n == name and a == "early"} >= pairs, name
        assert any(n == name and a == "late" and "go" in (c, s) for n, c, s, a in core), name
    # each further dimension is sampled: stacks, grpc-go builds, TLS, the new HTTP/1 scenarios
    assert {lang for r in default for lang in (r.client, r.server)} >= set(matrix.MORE_STACKS)
    assert {r.grpc_version for r in default if r.grpc_version} >= {
        *GRPC_GO_VERSIONS, *(v + STRIPPED for v in GRPC_GO_VERSIONS)}
    assert any(r.tls for r in default) and {r.scenario for r in default} == set(SCENARIOS)
    # every grpc-go build early (the stability column counts early runs), and late too
    for v in (*GRPC_GO_VERSIONS, *(v + STRIPPED for v in GRPC_GO_VERSIONS)):
        assert any(r.grpc_version == v and r.attach == "early" for r in default), v
    for v in GRPC_GO_VERSIONS:
        assert any(r.grpc_version == v and r.attach == "late" for r in default), v
    # plain HTTP/2: each language on each side, at both attach times
    h2c = {(r.client, r.server, r.attach) for r in default if r.scenario == "h2c-plain"}
    for lang in ("go", "node"):
        for attach in ("early", "late"):
            assert any(c == lang and a == attach for c, _s, a in h2c)
            assert any(s == lang and a == attach for _c, s, a in h2c)


def test_quick_plan_is_a_handful() -> None:
    runs = [r for r in plan(quick=True, collectors=("kprobe",)) if not r.tls]
    assert 4 <= len(runs) <= 10
    assert {r.attach for r in runs} == {"early", "late"}
    assert {r.grpc_version for r in runs} >= {GRPC_GO_VERSIONS[0], CURRENT_GRPC_GO}
    assert any(r.sweep for r in runs)
    assert all(r.exchanges <= 100 and r.collectors == ("kprobe",) for r in runs)
    assert not {r.key for r in runs} & {r.key for r in plan(quick=False, collectors=("kprobe",))}


def test_key_and_spec() -> None:
    r = MatrixRun("grpc-bidi", "py", "go", "late", 100, BOTH, "v1.50.1")
    assert r.key == "grpc-bidi/py2go/late/v1.50.1/kprobe+uprobe/n100"
    spec = r.spec()
    assert (spec.scenario, spec.client, spec.server, spec.attach) == ("grpc-bidi", "py", "go",
                                                                      "late")  # fmt: skip
    assert spec.collectors == ["kprobe", "uprobe"] and spec.exchanges == 100
    assert spec.grpc_version == "v1.50.1"


# -- state and resume ---------------------------------------------------------------------------


class FakeRecorder:
    """Stands in for record(): makes a run directory, or fails/interrupts on chosen keys."""

    def __init__(self, fail: set[str] = frozenset(), interrupt: set[str] = frozenset()) -> None:
        self.fail, self.interrupt = fail, interrupt
        self.calls: list[str] = []

    def record(self, spec: Any, out: Path, progress: Any) -> Path:
        key = f"{spec.scenario}/{spec.client}2{spec.server}/{spec.attach}"
        self.calls.append(key)
        d = out / f"run-{len(self.calls)}-{spec.scenario}-{spec.client}2{spec.server}-{spec.attach}"
        d.mkdir(parents=True)
        if key in self.interrupt:
            raise KeyboardInterrupt
        if key in self.fail:
            raise RuntimeError("collector exploded")
        return d


def _runs() -> list[MatrixRun]:
    return [MatrixRun("http10-short", "py", "py", a, 10, ("kprobe",)) for a in ("early", "late")]


def test_execute_records_done_and_failed(tmp_path: Path) -> None:
    rec = FakeRecorder(fail={"http10-short/py2py/late"})
    state = State.load(state_path(tmp_path, quick=True))
    msgs: list[str] = []
    ended = list(execute(_runs(), state, tmp_path, msgs.append, rec.record, lambda d: None))
    assert [e["status"] for _, e in ended] == ["done", "failed"]
    saved = json.loads(state_path(tmp_path, True).read_text())
    assert saved["version"] == 1
    early, late = (saved["runs"][r.key] for r in _runs())
    assert early["status"] == "done" and Path(early["run_dir"]).is_dir()
    assert late["status"] == "failed" and late["error"] == "RuntimeError: collector exploded"
    # the failed run's partial directory is kept for the report
    assert late["run_dir"] and Path(late["run_dir"]).name.endswith("py2py-late")
    assert any("FAILED" in m for m in msgs) and any("run 2/2" in m for m in msgs)
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_skips_done_and_retries_failed(tmp_path: Path) -> None:
    first = FakeRecorder(fail={"http10-short/py2py/late"})
    list(execute(_runs(), State.load(state_path(tmp_path, True)), tmp_path, lambda m: None,
                 first.record, lambda d: None))  # fmt: skip
    again = FakeRecorder()
    msgs: list[str] = []
    state = State.load(state_path(tmp_path, True))
    list(execute(_runs(), state, tmp_path, msgs.append, again.record, lambda d: None))
    assert again.calls == ["http10-short/py2py/late"]
    assert "resuming: 1 of 2 runs already done" in msgs
    assert all(e["status"] == "done" for e in state.runs.values())


def test_done_run_whose_directory_vanished_is_redone(tmp_path: Path) -> None:
    rec = FakeRecorder()
    state = State.load(state_path(tmp_path, True))
    list(execute(_runs()[:1], state, tmp_path, lambda m: None, rec.record, lambda d: None))
    shutil.rmtree(state.runs[_runs()[0].key]["run_dir"])
    assert not State.load(state_path(tmp_path, True)).done(_runs()[0].key)


def test_interrupt_leaves_a_whole_state_file(tmp_path: Path) -> None:
    rec = FakeRecorder(interrupt={"http10-short/py2py/late"})
    state = State.load(state_path(tmp_path, True))
    with pytest.raises(KeyboardInterrupt):
        list(execute(_runs(), state, tmp_path, lambda m: None, rec.record, lambda d: None))
    saved = json.loads(state_path(tmp_path, True).read_text())
    assert list(saved["runs"]) == [_runs()[0].key]  # the interrupted run will be redone
    assert not list(tmp_path.glob("*.tmp"))


def test_state_of_unknown_version_is_refused(tmp_path: Path) -> None:
    p = state_path(tmp_path, False)
    p.write_text(json.dumps({"version": 99, "runs": {}}))
    with pytest.raises(Exception, match="version 99"):
        State.load(p)


# -- sweep and the whole loop with recording faked --------------------------------------------


def test_sweep_times_span_the_workload(tmp_path: Path) -> None:
    # T counts from the earliest collector's attach: replay adds it to each one's own
    m = RunManifest(run_id="r", scenario="grpc-unary", params={}, started_utc="", machine={},
                    attach_ns=1_100_000_000,
                    collectors={"kprobe": {"attach_ns": 1_000_000_000},
                                "uprobe": {"attach_ns": 1_100_000_000}})  # fmt: skip
    m.save(tmp_path)
    # exchanges start 0.2 s .. 0.6 s after the attach
    with (tmp_path / "workload.jsonl").open("w") as f:
        for i, t in enumerate((1_200_000_000, 1_400_000_000, 1_600_000_000)):
            f.write(json.dumps({"id": i, "t_start_ns": t}) + "\n")
    assert sweep_times(tmp_path, (0.25, 0.5)) == [0.3, 0.4]


def test_run_matrix_reports_on_its_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_record(spec: Any, out: Path, progress: Any) -> Path:
        calls.append(spec.scenario)
        d = out / f"{EARLY}-{len(calls)}"
        shutil.copytree(FIXTURES / EARLY, d)
        return d

    runs = [MatrixRun("grpc-unary", "go", "go", "early", 60, ("kprobe",), CURRENT_GRPC_GO)]
    monkeypatch.setattr(matrix, "plan", lambda quick, full=False: runs)
    monkeypatch.setattr("harness.runner.record.record", fake_record)
    monkeypatch.setattr("harness.analysis.replay.replay", lambda d: None)
    out, rep = tmp_path / "runs", tmp_path / "report"
    html = matrix.run_matrix(True, out, rep, lambda m: None)
    assert html == rep / "report.html" and html.exists()
    m = json.loads((rep / "metrics.json").read_text())
    assert [r["run_id"] for r in m["runs"]] == [EARLY]
    assert m["command"] == f"probebench matrix --quick --out {out} --report {rep}"
    # a second start finds the run done: nothing is recorded again
    matrix.run_matrix(True, out, rep, lambda m: None)
    assert calls == ["grpc-unary"]


# -- cells as CI jobs ---------------------------------------------------------------------------


def test_cells_have_unique_stable_ids() -> None:
    listed = matrix.cells()
    ids = [c["id"] for c in listed]
    assert len(ids) == len(set(ids))
    assert all("/" not in i and " " not in i for i in ids)
    default = [c for c in listed if c["matrix"] == "default"]
    assert len(default) == len(plan(quick=False))
    # the id is the key, spelled for job names: the same cell gets the same id tomorrow
    r = MatrixRun("grpc-bidi", "py", "go", "late", 100, BOTH, "v1.50.1")
    assert r.cell_id == "grpc-bidi_py2go_late_v1.50.1_kprobe+uprobe_n100"
    assert matrix.find_cell(listed[0]["id"]).cell_id == listed[0]["id"]


def test_unknown_cell_is_a_clear_error(tmp_path: Path) -> None:
    from harness.errors import ProbebenchError

    with pytest.raises(ProbebenchError, match="matrix --list"):
        matrix.run_cell("no-such-cell", tmp_path, lambda m: None)


def test_cli_lists_cells_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    assert main(["matrix", "--list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in listed] == [c["id"] for c in matrix.cells()]
    assert {"id", "scenario", "client", "server", "attach", "collectors"} <= set(listed[0])


def test_run_cell_records_one_run_and_fails_loudly(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.errors import ProbebenchError

    cell = matrix.cells()[0]["id"]
    ok = FakeRecorder()
    monkeypatch.setattr(matrix, "execute", _execute_with(ok.record))
    run_dir = matrix.run_cell(cell, tmp_path, lambda m: None)
    assert run_dir.is_dir() and len(ok.calls) == 1
    bad = FakeRecorder(fail={ok.calls[0]})
    monkeypatch.setattr(matrix, "execute", _execute_with(bad.record))
    with pytest.raises(ProbebenchError, match="failed: RuntimeError"):
        matrix.run_cell(cell, tmp_path / "other", lambda m: None)


def _execute_with(record: Any) -> Any:
    real = execute

    def fake(runs: Any, state: Any, out: Any, progress: Any) -> Any:
        return real(runs, state, out, progress, record, lambda d: None)

    return fake


def test_a_replay_overlaps_the_next_recording(tmp_path: Path) -> None:
    """Run 1's replay is still going when run 2 is recorded, and outcomes stay in order."""
    second_recorded = threading.Event()
    overlapped: list[bool] = []
    nice: list[int] = []
    rec = FakeRecorder()

    def record(spec: Any, out: Path, progress: Any) -> Path:
        d = rec.record(spec, out, progress)
        if len(rec.calls) == 2:
            second_recorded.set()
        return d

    def replay(run_dir: Path) -> None:
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        if run_dir.name.startswith("run-1-"):  # waits for run 2: a serial loop never gets there
            overlapped.append(second_recorded.wait(timeout=60))

    state = State.load(state_path(tmp_path, True))
    ended = list(execute(_runs(), state, tmp_path, lambda m: None, record, replay))
    assert overlapped == [True]
    # the recording gets the cores first: the replays run niced
    assert nice == [matrix.REPLAY_NICE] * 2 or os.geteuid() != 0
    assert [r.key for r, _ in ended] == [r.key for r in _runs()]
    assert [e["status"] for _, e in ended] == ["done", "done"]


def test_recorded_run_interrupted_before_its_replay_is_replayed_not_recorded_again(
    tmp_path: Path,
) -> None:
    state = State.load(state_path(tmp_path, True))
    first = _runs()[0]
    run_dir = tmp_path / "recorded-first"
    run_dir.mkdir()
    state.record(first.key, status="recorded", run_dir=str(run_dir))
    rec, replayed = FakeRecorder(), []
    list(execute(_runs(), State.load(state_path(tmp_path, True)), tmp_path, lambda m: None,
                 rec.record, replayed.append))  # fmt: skip
    assert first.key not in rec.calls and len(rec.calls) == len(_runs()) - 1
    assert replayed[0] == run_dir
    saved = State.load(state_path(tmp_path, True))
    assert all(saved.done(r.key) for r in _runs())
