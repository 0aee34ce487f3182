"""One real matrix run end to end: record, replay, sweep replay, state, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.workflows import matrix
from harness.workflows.matrix import MatrixRun


@pytest.mark.bpf
@pytest.mark.capture
@pytest.mark.slow
def test_one_real_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = MatrixRun("http11-keepalive", "py", "py", "early", 40, ("kprobe",), sweep=(0.5,))
    # a second run, recorded while the first one's replay and sweep go on, with two
    # collectors attached side by side
    both = MatrixRun("http10-short", "py", "go", "late", 20, ("kprobe", "uprobe"))
    monkeypatch.setattr(matrix, "plan", lambda quick, full=False: [run, both])
    out, rep = tmp_path / "runs", tmp_path / "report"
    html = matrix.run_matrix(True, out, rep, lambda m: None)
    state = json.loads(matrix.state_path(out, True).read_text())
    first, later = state["runs"][run.key], state["runs"][both.key]
    assert first["status"] == later["status"] == "done"
    assert first["finished_utc"] <= later["finished_utc"]  # outcomes in the plan's order
    second = json.loads((Path(state["runs"][both.key]["run_dir"]) / "metrics.json").read_text())
    assert second["truth_vs_workload"]["matched"] == 20
    assert {(r["collector"], r["side"]) for r in second["rows"]} >= {
        ("kprobe", "client"), ("kprobe", "server"), ("uprobe", "client")}
    assert all(r["matched"] == r["observable"] for r in second["rows"]
               if r["collector"] == "kprobe" and r["variant"] == "default")  # fmt: skip
    entry = state["runs"][run.key]
    assert entry["status"] == "done", entry
    run_dir = Path(entry["run_dir"])
    [sweep] = entry["sweep"]
    swept = json.loads((run_dir / sweep).read_text())
    assert swept["attach_at_s"] > 0 and swept["version"] == 1
    truth = json.loads((run_dir / "metrics.json").read_text())["truth_vs_workload"]
    assert truth["workload"] == 40 and truth["missing"] == 0
    md = (rep / "report.md").read_text()
    assert run_dir.name in md and html.exists()
    assert (rep / "plots" / "sweep.png").stat().st_size > 5000
