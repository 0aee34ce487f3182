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
    assert pngs == ["coverage.png", "fields.png", "overhead.png", "per_language.png",
                    "reasons.png", "recovery.png", "sweep.png"]
    for p in (report / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        # drawn no wider than the page's content at 1400 px, so never scaled up or squeezed
        assert int.from_bytes(p.read_bytes()[16:20], "big") <= 1320


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


KP, UP = "kernel side (syscall tracepoints)", "uprobe (grpc-go)"


def article(md: str, criterion: str) -> dict[str, str]:
    [row] = [r for r in md_rows(md, criterion) if KP in r]
    return row


def measured(cell: str) -> str:
    """The one bold measured value of an article-table cell."""
    [value] = re.findall(r"\*\*(.+?)\*\*", cell)
    return value


def test_article_table_transposed(report: Path) -> None:
    md = (report / "report.md").read_text()
    stab = article(md, "stability")
    # Two grpc-go versions ran early with a Go side; both decoded at 100 % in the fixtures.
    assert measured(stab[KP]) == "2/2 grpc-go targets work (100.0%)"
    assert stab[KP].startswith("article: strong") and "✓ agrees" in stab[KP]
    assert stab[UP].startswith("article: weak")
    assert measured(stab[UP]) == "not measured (no early-attach run)"  # it only ran late
    assert "agrees" not in stab[UP]
    assert measured(article(md, "multi-language")[KP]).startswith("3/3 gRPC language sides")
    comp = article(md, "data completeness")
    late = [r for run in FIXTURES.iterdir() if (run / "metrics.json").exists()
            for r in fixture_metrics(run.name)["rows"]
            if r["attach"] == "late" and r["protocol"] == "h2c-grpc"
            and r["variant"] == "default" and r["collector"] == "kprobe"]  # fmt: skip
    rate = sum(r["degraded"] for r in late) / sum(r["matched"] for r in late)
    assert measured(comp[KP]) == (f"{100 * rate:.1f}% of {sum(r['matched'] for r in late):,} "
                                  "gRPC calls degraded after a late attach")
    assert "✓ agrees" in comp[KP] and "[details](#degradation)" in comp[KP]
    over = article(md, "overhead")
    assert measured(over[KP]) == "0.66× throughput of no collector on grpc-unary go→go"
    assert measured(over[UP]) == "0.52× throughput of no collector on grpc-unary go→go"
    ease = article(md, "ease of building")
    assert re.fullmatch(r"[\d,]+ lines of BPF C and decoding code", measured(ease[KP]))


def test_article_cells_one_value_one_unit(report: Path) -> None:
    md = (report / "report.md").read_text()
    rows = [r for r in md_rows(md, "stability") if KP in r]
    table = md.split("## The article's table, measured")[1].split("\n\n")[1]
    cells = [c for line in table.splitlines()[2:] for c in line.strip("|").split(" | ")[1:]]
    assert rows and len(cells) == 14  # 7 criteria × 2 approaches
    for c in cells:
        value = measured(c)
        units = {u for u in ("%", "×", " lines", " ns", " s ") if u in value}
        assert len(units) <= 1, value


def test_findings_cite_the_metrics(report: Path) -> None:
    """Each finding's numbers, recomputed here from the fixture files they come from."""
    m = json.loads((report / "metrics.json").read_text())
    md = (report / "report.md").read_text()
    found = {f["anchor"]: f for f in m["findings"]}
    assert 4 <= len(found) <= 6
    rows = [r for run in FIXTURES.iterdir() if (run / "metrics.json").exists()
            for r in fixture_metrics(run.name)["rows"]]  # fmt: skip

    def rate(num: str, den: str, variant: str = "default", **match: object) -> float:
        sel = [r for r in rows if r["variant"] == variant
               and all(str(r[k]).startswith(str(v)) for k, v in match.items())]  # fmt: skip
        return sum(r[num] for r in sel) / sum(r[den] for r in sel)

    v = found["degradation"]["values"]
    assert v["kprobe_late_grpc_degraded"] == rate("degraded", "matched", collector="kprobe",
                                                  attach="late", protocol="h2c")
    assert v["uprobe_late_grpc_go_degraded"] == rate("degraded", "matched",
                                                     collector="uprobe", attach="late")
    v = found["scenarios"]["values"]
    assert v["kprobe_http1_completeness"] == rate("matched", "observable", collector="kprobe",
                                                  protocol="http/")
    assert v["kprobe_http11_late_nosockdiag_degraded"] == rate(
        "degraded", "matched", variant="no-sockdiag", scenario="http11", attach="late")
    bench = json.loads((FIXTURES / "overhead.json").read_text())
    cfg = bench["workloads"]["grpc-unary/go2go"]["configs"]
    v = found["overhead"]["values"]
    assert v["kprobe_throughput_ratio"] == cfg["kprobe"]["throughput_ratio"]
    assert v["uprobe_throughput_ratio"] == cfg["uprobe"]["throughput_ratio"]
    assert v["uprobe_added_ns"] == bench["trap_cost"]["uprobe_added_ns"]
    v = found["ground-truth"]["values"]
    done = [run for run in FIXTURES.iterdir() if (run / "metrics.json").exists()]
    tvw = [fixture_metrics(r.name)["truth_vs_workload"] for r in done]
    assert v["runs"] == len(done)
    assert v["truth_found"] == sum(t["matched"] for t in tvw) / sum(t["workload"] for t in tvw)
    assert v["wrong"] == sum(r["wrong"] for r in rows)
    # and the sentences print those numbers
    findings = md.split("## Key findings")[1].split("## ")[0]
    flat = " ".join(findings.split())
    for f in m["findings"]:
        assert " ".join(f["text"].split()) in flat
    d = found["degradation"]
    assert f"{100 * d['values']['kprobe_late_grpc_degraded']:.1f}% of " in d["text"]
    o = found["overhead"]
    assert f"{o['values']['kprobe_throughput_ratio']:.2f}×" in o["text"]
    assert f"{o['values']['uprobe_throughput_ratio']:.2f}×" in o["text"]


def test_markdown_lines_short(report: Path) -> None:
    md = (report / "report.md").read_text()
    in_code = False
    for line in md.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        assert in_code or len(line) <= 400, line[:120]


def test_overhead_names_its_workload(report: Path) -> None:
    md = (report / "report.md").read_text()
    sec = md.split("## Overhead")[1].split("\n## ")[0]
    ratios = [r for r in md_rows(md, "grpc-unary go→go") + md_rows(md, "grpc-unary go→py")
              + md_rows(md, "http11-keepalive go→go") if "throughput ratio [95% CI]" in r]
    assert len(ratios) == 9  # 3 configs × 3 workloads in the fixture file, not-measured kept
    assert any(r["throughput ratio [95% CI]"] == "0.66× [0.59, 0.73]" for r in ratios)
    assert "unstable: sd 13% of mean" in sec  # the file's warnings are on the page
    assert "Methodology first" in sec and "CPU [1]" in sec
    hits = [r for r in md_rows(md, "the same call with an empty uprobe") if "workload" in r]
    assert hits[0]["added by the probe, ns"] == "9,126" and hits[0]["workload"]


def test_newer_bench_keys_are_shown(tmp_path: Path) -> None:
    runs = _copy([EARLY], tmp_path / "runs")
    bench = json.loads((FIXTURES / "overhead.json").read_text())
    # bench schema 2 (the decomposition against the floor), and a key no report knows yet
    bench["decomposition"] = {"grpc-unary/go2go": {"kprobe": {
        "hits_per_exchange": 43.9, "bare_trap_ns": 166.0, "floor_ns_per_exchange": 7287.4,
        "bpf_ns_per_exchange": 92489.0, "cpu_user_s_per_1k": 0.1, "cpu_system_s_per_1k": 0.02,
        "context_switches_per_1k": 812.0, "throughput_ratio": 0.66,
        "fixed_rate_core_pct": 4.2, "fixed_rate_process_pct": 0.41,
        "fixed_rate_idle_process_pct": 0.135}}}
    bench["settings"]["fixed_rate"] = {"exchanges_per_s": 1000, "loop": "open"}
    bench["h2_walk"] = {"budget_bytes": 4096, "w/l": {"mode": {
        "skipped_ns": 12.5, "programs": [{"name": "p", "run_time_ns": 1000, "run_cnt": 4}]}}}
    (tmp_path / "overhead.json").write_text(json.dumps(bench))
    out = tmp_path / "out"
    build_report([runs, tmp_path / "overhead.json"], out, draw=False)
    md = (out / "report.md").read_text()
    [dec] = [r for r in md_rows(md, "grpc-unary go→go") if "hits per exchange" in r]
    assert dec["collector"] == "kernel side"
    assert dec["floor: hits × trap, ns/exchange"] == "7,287"
    assert dec["collector CPU, ms per 1k"] == "120"
    assert dec["% of a core at fixed rate"] == "4.2%"
    assert dec["of which the recorder process"] == "0.41%"
    assert dec["recorder attached, idle"] == "0.14%"
    assert "Fixed rate: 1000 exchanges per second" in " ".join(md.split())
    # a section's records: one row each (its path in `where`), a list of records its own table
    assert [r["budget_bytes"] for r in md_rows(md, "—") if "budget_bytes" in r] == ["4096"]
    [walk] = [r for r in md_rows(md, "w/l / mode") if "skipped_ns" in r]
    assert walk["skipped_ns"] == "12.5"
    [prog] = [r for r in md_rows(md, "w/l / mode") if "ns per run" in r]
    assert prog["name"] == "p" and prog["ns per run"] == "250"


def test_the_kernel_side_is_shown_beside_its_floor_builds(tmp_path: Path) -> None:
    runs = _copy([EARLY], tmp_path / "runs")
    bench = json.loads((FIXTURES / "overhead.json").read_text())
    figures = {"collector": (3660.0, 2.3), "record": (2348.0, 1.6), "filter": (587.0, 0.5)}
    bench["decomposition"] = {"http11-keepalive/go2go": {"kprobe": {
        "hits_per_exchange": 12.2, "floor_builds": {
            b: {"bpf_ns_per_exchange_per_side": ns, "bpf_ns_per_hit": ns / 6.1,
                "throughput_ratio": 0.9, "throughput_ci95": [0.85, 0.95], "p99_ratio": None,
                "fixed_rate_core_pct": pct, "fixed_rate_bpf_pct": None}
            for b, (ns, pct) in figures.items()}}}}  # fmt: skip
    bench["floor_builds"] = {"http11-keepalive/go2go": {"filter": {"raw": 1}}}
    (tmp_path / "overhead.json").write_text(json.dumps(bench))
    out = tmp_path / "out"
    build_report([runs, tmp_path / "overhead.json"], out, draw=False)
    md = (out / "report.md").read_text()
    rows = [r for r in md_rows(md, "http11-keepalive go→go") if "build" in r]
    assert [r["build"] for r in rows] == ["the collector (+ framing)",
                                          "+ one record of ≤ 255 B per call",
                                          "hooks + target filter only"]  # fmt: skip
    assert [r["BPF, ns/exchange per side"] for r in rows] == ["3,660", "2,348", "587"]
    assert rows[1]["% of a core at fixed rate"] == "1.60%" and rows[0]["of which BPF"] == "—"
    assert rows[2]["throughput ratio [95% CI]"] == "0.90× [0.85, 0.95]"
    assert "what recording each call pays before framing it" in md
    assert "`floor_builds`" not in md  # the raw pass is not dumped as an unknown section


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
    assert len(srcs) == 7 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    ids = set(re.findall(r'\bid="([^"]*)"', page))
    assert {h[1:] for h in hrefs} <= ids  # every "details" and "more" link lands somewhere
    assert "<link" not in page and "<script" not in page and "url(" not in page


def test_combined_metrics(report: Path) -> None:
    m = json.loads((report / "metrics.json").read_text())
    assert m["version"] == 1 and m["kind"] == "probebench-report"
    assert len(m["runs"]) == 9
    assert m["machines"] and m["machines"][0]["kernel"] == "6.18.44-fc-v669"
    assert m["article_table"]["stability"]["kprobe"]["value"] == 1.0
    assert EARLY_OLD in m["article_table"]["stability"]["kprobe"]["runs"]
    assert m["overhead"]["file"].endswith("overhead.json")
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
    # one row per scenario and series, one column per call index
    table = {r["series"]: r for r in md_rows(md, "grpc-unary") if "call 0" in r}
    for i in (0, 5, 19):
        assert table["kprobe tolerant"][f"call {i}"] == share("kprobe", "default", i)
        assert table["kprobe strict"][f"call {i}"] == share("kprobe", "hpack-strict", i)
    assert table["uprobe"]["call 0"] == share("uprobe", "default", 0) == "100.0%"
    m = json.loads((report / "metrics.json").read_text())
    assert {LATE_BOTH} <= {i for r in m["recovery"] for i in r["runs"]}


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
    build_report([runs], out, draw=False)
    stab = article((out / "report.md").read_text(), "stability")
    assert measured(stab[UP]) == "0/1 grpc-go targets work (0.0%)"
    assert measured(stab[KP]) == "1/1 grpc-go targets work (100.0%)"


def test_no_bench_results_is_said(tmp_path: Path) -> None:
    runs = _copy([EARLY], tmp_path / "runs")
    out = tmp_path / "out"
    build_report([runs], out)
    md = (out / "report.md").read_text()
    assert measured(article(md, "overhead")[KP]) == "not measured (no overhead results)"
    assert "Overhead was not measured for this report: no overhead results were given" in md
    assert not (out / "plots" / "overhead.png").exists()


def test_default_out_and_single_run_dir(tmp_path: Path) -> None:
    runs = _copy([EARLY, LATE], tmp_path / "runs")
    assert default_out([runs / EARLY, runs / LATE]) == runs / "report"
    html = build_report([runs / EARLY, runs / LATE], draw=False)
    assert html == runs / "report" / "report.html" and html.exists()


def test_nothing_to_report(tmp_path: Path) -> None:
    with pytest.raises(ProbebenchError, match="no run directories"):
        build_report([tmp_path], tmp_path / "out")


def test_cell_formatting() -> None:
    assert cell(0.12345, "completeness") == "12.3%"
    assert cell(None) == "—" and cell(float("nan"), "share") == "—"
    assert cell(True) == "yes" and cell(["a", "b"]) == "a, b"
    assert cell(3) == "3"


def test_matrix_reuses_bench_results_of_the_same_commit(tmp_path: Path) -> None:
    import platform
    import subprocess

    from harness.model import repo_root
    from harness.workflows import matrix

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    bench = json.loads((FIXTURES / "overhead.json").read_text())
    out = tmp_path / "runs"
    out.mkdir()
    bench["machine"].update(git_commit="0" * 40, git_dirty=False, hostname=platform.node(),
                            kernel=platform.release())  # fmt: skip
    (out / "overhead.json").write_text(json.dumps(bench))
    assert not matrix._same_commit_and_machine(out / "overhead.json")  # another commit
    bench["machine"]["git_commit"] = head
    (out / "overhead.json").write_text(json.dumps(bench))
    said: list[str] = []
    src = matrix.closing_overhead_pass(out, True, said.append)  # reused: no pass is run
    assert src.files == [out / "overhead.json"] and "reused" in src.origin
    assert said and "reusing" in said[0]
    _copy([EARLY], out)
    build_report([out / EARLY, *src.files], tmp_path / "rep", bench_origin=src.origin,
                 draw=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "reused, not re-measured" in " ".join(md.split())


def test_ease_of_building_proxies(tmp_path: Path) -> None:
    from harness.report.ease import code_lines, ease_view

    c = tmp_path / "x.c"
    c.write_text("#include <a.h>\n/* one\n two */\n\n// note\nint x; /* tail */\n")
    py = tmp_path / "x.py"
    py.write_text("# comment\n\nimport os\nx = 1  # trailing\n")
    assert code_lines(c) == 2 and code_lines(py) == 2
    e = ease_view([])
    for coll in ("kprobe", "uprobe"):
        assert e.lines[coll]["BPF C"] > 100 and e.total_lines(coll)
    assert e.attach.empty and e.failures.empty and e.binaries == []


def test_extra_count_column_is_one_row_per_key_and_older_rows_count_nothing() -> None:
    import pandas as pd

    from harness.report import tables

    base = {"run_id": "r", "pair": "go→go", "collector": "kprobe", "variant": "default"}
    counts = {"path:truth_hpack_unknown": 3, "authority:truth_hpack_unknown": 0}
    df = pd.DataFrame([{**base, "side": "client", "unjudged": counts},
                       {**base, "side": "server", "unjudged": float("nan")}])  # fmt: skip
    long = tables.breakdown_long(df, "unjudged")
    want = {**base, "side": "client", "what": "path:truth_hpack_unknown", "count": 3}
    assert long.to_dict("records") == [want]
