"""build_report on run.json/metrics.json fixtures copied from real runs (no captures, no BPF)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from harness.errors import ProbebenchError
from harness.report.build import build_report, default_out
from harness.report.render import cell

FIXTURES = Path(__file__).parent / "fixtures" / "report"
EARLY = "20261125T132142-grpc-unary-go2go-early-v1.85.0"
EARLY_OLD = "20261125T132205-grpc-unary-go2go-early-v1.33.3"
LATE = "20261125T132155-grpc-unary-go2go-late-v1.85.0"
LATE_BOTH = "20261125T134841-grpc-unary-go2go-late-v1.85.0"  # kprobe + uprobe, with recovery
FAILED = "20261125T131435-grpc-unary-go2go-late"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    html = build_report([FIXTURES], out)
    assert html == out / "report.html"
    return out


def md_rows(md: str, first_cell: str) -> list[dict[str, str]]:
    """Rows of every Markdown table whose first cell is ``first_cell``, keyed by header."""
    rows, header = [], None
    for line in md.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = cells
        elif not line.startswith("|---") and cells[0] == first_cell:
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def fixture_metrics(run: str) -> dict:
    return json.loads((FIXTURES / run / "metrics.json").read_text())


def test_outputs_written(report: Path) -> None:
    for name in ("report.md", "report.html", "metrics.json"):
        assert (report / name).stat().st_size > 1000
    pngs = sorted(p.name for p in (report / "plots").glob("*.png"))
    assert pngs == ["overview.png", "reasons.png", "recovery.png", "sweep.png"]
    for p in (report / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_scenario_tables_carry_every_fixture_row(report: Path) -> None:
    md = (report / "report.md").read_text()
    checked = 0
    for run_dir in FIXTURES.iterdir():
        if not (run_dir / "metrics.json").exists():
            continue
        table = [t for t in md_rows(md, run_dir.name) if "client→server" in t and "variant" in t]
        for r in fixture_metrics(run_dir.name)["rows"]:
            key = (r["collector"], r["side"], r["variant"])
            hits = [t for t in table if (t["collector"], t["side"], t["variant"]) == key]
            assert len(hits) == 1, (run_dir.name, r["variant"], r["side"])
            h = hits[0]
            assert h["observable"] == str(r["observable"])
            assert h["matched"] == str(r["matched"])
            assert h["completeness"] == cell(r["completeness"], "completeness")
            assert h["degradation"] == cell(r["degradation_rate"], "degradation")
            assert h["phantoms"] == str(r["phantoms"])
            checked += 1
    assert checked >= 20


def test_seed_table_measured_cells(report: Path) -> None:
    md = (report / "report.md").read_text()
    [kp] = md_rows(md, "kprobe / tracepoint — measured")
    # Two grpc-go versions ran early with a Go side; both decoded at 100 % in the fixtures.
    assert kp["stability"] == "2/2 grpc-go versions (v1.33.3, v1.85.0)"
    assert kp["multi-language"].startswith("3/3 gRPC sides")
    assert "gRPC late 100.0% (6 sides)" in kp["degradation"]
    assert "HTTP/1 early 0.0% (2 sides)" in kp["degradation"]
    assert kp["overhead"].startswith("not measured: no bench results given")
    [up] = md_rows(md, "uprobe — measured")
    assert up["stability"] == "no grpc-go versions measured"  # its only run attached late
    assert up["data completeness"] == "gRPC late 100.0% (2 sides)"
    assert up["degradation"] == "gRPC late 0.0% (2 sides)"
    [art] = md_rows(md, "uprobe — article")
    assert art["stability"] == "weak"


def test_sweep_and_failed_runs_listed(report: Path) -> None:
    md = (report / "report.md").read_text()
    sweep = [r for r in md_rows(md, EARLY) if "T (s)" in r]
    sweep_fixture = json.loads((FIXTURES / EARLY / "metrics.attach-at-0.0327s.json").read_text())
    client = next(r for r in sweep_fixture["rows"]
                  if r["variant"] == "default" and r["side"] == "client")  # fmt: skip
    [row] = [r for r in sweep if r["T (s)"] == "0.0327" and r["side"] == "client"]
    assert row["observable"] == str(client["observable"])
    assert row["started_before"] == cell(1 - client["observable"] / 60, "share")
    [failed] = md_rows(md, FAILED)
    assert failed["status"] == "failed" and "uprobe collector failed to attach" in failed["why"]


def test_html_is_self_contained(report: Path) -> None:
    page = (report / "report.html").read_text()
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    hrefs = re.findall(r'\bhref="([^"]*)"', page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert "<link" not in page and "<script" not in page and "url(" not in page


def test_combined_metrics(report: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    assert m["version"] == 1 and m["kind"] == "probebench-report"
    assert len(m["runs"]) == 9
    assert m["machines"] and m["machines"][0]["kernel"] == "6.18.44-fc-v669"
    assert m["seed_table"]["kprobe/stability"]["value"] == 1.0
    assert EARLY_OLD in m["seed_table"]["kprobe/stability"]["runs"]
    by_id = {r["run_id"]: r for r in m["runs"]}
    assert by_id[LATE]["rows"] == fixture_metrics(LATE)["rows"]
    assert sorted(by_id[EARLY]["sweep"]) == ["0.0327", "0.0367", "0.0408"]
    assert "completeness" in m["definitions"]
    assert m["command"].startswith("probebench report ")


def _copy(runs: list[str], dest: Path) -> Path:
    for r in runs:
        shutil.copytree(FIXTURES / r, dest / r)
    return dest


def test_recovery_curve_from_rows(report: Path) -> None:
    rows = fixture_metrics(LATE_BOTH)["rows"]

    def share(collector: str, variant: str, idx: int) -> str:
        pts = [p for r in rows if (r["collector"], r["variant"]) == (collector, variant)
               for p in r["recovery"] if p[0] == idx]  # fmt: skip
        return cell(sum(p[1] for p in pts) / sum(p[2] for p in pts), "share")

    md = (report / "report.md").read_text()
    table = {r["call index"]: r for i in ("0", "5", "19") for r in md_rows(md, i)
             if "call index" in r}  # fmt: skip
    for i in (0, 5, 19):
        assert table[str(i)]["grpc-unary kprobe tolerant"] == share("kprobe", "default", i)
        assert table[str(i)]["grpc-unary kprobe strict"] == share("kprobe", "hpack-strict", i)
    assert table["0"]["grpc-unary uprobe"] == share("uprobe", "default", 0) == "100.0%"
    assert LATE_BOTH in md.split("## Late-attach recovery")[1].split("## ")[0]


def test_no_recovery_data_is_said(tmp_path: Path) -> None:
    runs = _copy([LATE], tmp_path / "runs")  # replayed before rows carried `recovery`
    build_report([runs], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "No recovery data: 1 late-attach gRPC runs" in md
    assert not (tmp_path / "out" / "plots" / "recovery.png").exists()


def test_failed_attach_counts_against_that_collector_only(tmp_path: Path) -> None:
    runs = _copy([EARLY, EARLY_OLD], tmp_path / "runs")
    # The old version's run as it would end had its uprobe collector failed to attach.
    man = json.loads((runs / EARLY_OLD / "run.json").read_text())
    man.update(status="failed", error="the uprobe collector failed to attach: no symbol")
    man["params"]["collectors"] = ["kprobe", "uprobe"]
    (runs / EARLY_OLD / "run.json").write_text(json.dumps(man))
    (runs / EARLY_OLD / "metrics.json").unlink()
    out = tmp_path / "out"
    build_report([runs], out)
    md = (out / "report.md").read_text()
    [up] = md_rows(md, "uprobe — measured")
    assert up["stability"] == "0/1 grpc-go versions (none)"
    [kp] = md_rows(md, "kprobe / tracepoint — measured")
    assert kp["stability"] == "1/1 grpc-go versions (v1.85.0)"


def test_bench_results_fill_overhead(tmp_path: Path) -> None:
    runs = _copy([EARLY], tmp_path / "runs")
    bench = tmp_path / "bench.json"
    # the shape benchmarks/bench_overhead.py writes
    bench.write_text(json.dumps({"kind": "probebench-overhead",
                                 "summary": {"kprobe": {"throughput_ratio_min": 0.5381}}}))
    out = tmp_path / "out"
    build_report([runs, bench], out)
    [kp] = md_rows((out / "report.md").read_text(), "kprobe / tracepoint — measured")
    assert kp["overhead"].startswith("throughput_ratio_min=0.5381")


def test_default_out_and_single_run_dir(tmp_path: Path) -> None:
    runs = _copy([EARLY, LATE], tmp_path / "runs")
    assert default_out([runs / EARLY, runs / LATE]) == runs / "report"
    html = build_report([runs / EARLY, runs / LATE])
    assert html == runs / "report" / "report.html" and html.exists()


def test_nothing_to_report(tmp_path: Path) -> None:
    with pytest.raises(ProbebenchError, match="no run directories"):
        build_report([tmp_path], tmp_path / "out")


def test_cell_formatting() -> None:
    assert cell(0.12345, "completeness") == "12.3%"
    assert cell(None) == "—" and cell(float("nan"), "share") == "—"
    assert cell(True) == "yes" and cell(["a", "b"]) == "a, b"
    assert cell(3) == "3"
