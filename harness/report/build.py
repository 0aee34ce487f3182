"""`probebench report`: run directories in; report.md, report.html, plots/, metrics.json out."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import ProbebenchError
from harness.model import utc_now, write_json_atomic
from harness.report import plots, tables
from harness.report.load import Loaded, load
from harness.report.render import Image, Section, Table, Text, to_html, to_markdown

REPORT_VERSION = 1
TITLE = "probebench: kernel-side vs uprobe observation of HTTP and gRPC"
COLLAPSE_ROWS = 24  # longer tables start folded in the HTML page


def default_out(run_dirs: list[Path]) -> Path:
    """`report/` in the deepest directory holding all the runs."""
    return Path(os.path.commonpath([d.parent for d in run_dirs])) / "report"


def regenerate_command(dirs: list[Path], out: Path) -> str:
    return shlex.join(["probebench", "report", *map(str, dirs), "--out", str(out)])


def build_report(dirs: list[Path], out: Path | None = None, *, command: str | None = None) -> Path:
    """Write the report of the runs under ``dirs`` into ``out``; returns report.html's path.

    ``command`` is printed as the way to regenerate it (default: the `probebench report`
    call with the same arguments)."""
    loaded = load(dirs)
    if not loaded.runs:
        why = "; ".join(f"{p}: {w}" for p, w in loaded.skipped) or "nothing given"
        raise ProbebenchError(f"no run directories to report on ({why})")
    out = out or default_out([r.run_dir for r in loaded.runs])
    out.mkdir(parents=True, exist_ok=True)
    cmd = command or regenerate_command(dirs, out)
    sections, combined = _assemble(loaded, out, cmd)
    (out / "report.md").write_text(to_markdown(TITLE, sections, out))
    (out / "report.html").write_text(to_html(TITLE, sections))
    write_json_atomic(out / "metrics.json", combined)
    return out / "report.html"


def _assemble(loaded: Loaded, out: Path, cmd: str) -> tuple[list[Section], dict[str, Any]]:
    runs = loaded.runs
    df = tables.rows_frame(runs)
    seed = tables.seed_table(runs, df, loaded.bench)
    rec = tables.recovery_frame(df)
    sweep = tables.sweep_frame(runs)
    pdir = out / "plots"
    sections = [
        _seed_section(seed, len(runs), loaded),
        _scenario_section(df, pdir),
        _degradation_section(df, pdir),
        _recovery_section(rec, runs, pdir),
        _sweep_section(sweep, pdir),
        _truth_section(runs),
        _machine_section(runs, loaded),
        _definitions_section(runs),
        Section("Regenerate this report", [
            Text(f"Generated {utc_now()} from {len(runs)} run directories. Command:"),
            Text(f"`{cmd}`"),
            Text("Every number above names the run it comes from (column `run`); each run "
                 "directory holds its `run.json` (parameters, machine) and `metrics.json`, "
                 "re-derivable with `probebench replay DIR`."),
        ]),
    ]  # fmt: skip
    combined = {
        "version": REPORT_VERSION,
        "kind": "probebench-report",
        "generated_utc": utc_now(),
        "command": cmd,
        "machines": _unique([r.machine for r in runs]),
        "seed_table": seed.to_json(),
        "recovery": rec.to_dict(orient="records"),
        "definitions": tables.definitions(runs),
        "runs": [
            {"run_id": r.run_id, "dir": str(r.run_dir), "status": r.status,
             "problem": r.problem, "params": r.params, "machine": r.machine,
             "truth_vs_workload": (r.metrics or {}).get("truth_vs_workload"),
             "collectors": (r.metrics or {}).get("collectors"), "rows": r.rows,
             "sweep": {f"{t:g}": m.get("rows") for t, m in r.sweep.items()}}
            for r in runs
        ],
        "bench": [{"file": str(p), "results": b} for p, b in loaded.bench],
    }  # fmt: skip
    return sections, combined


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def _table(df: pd.DataFrame, caption: str = "", css: str = "", *, fold: bool = False,
           percent: bool = False) -> Table:
    return Table(df, caption, collapsed=fold or len(df) > COLLAPSE_ROWS, css=css,
                 percent=percent)  # fmt: skip


def _seed_section(seed: tables.SeedTable, n_runs: int, loaded: Loaded) -> Section:
    s = Section("The article's table, measured")
    s.blocks.append(Text(
        "SEED.md's conclusion table: for each approach, the article's verdict and the value "
        f"measured on these {n_runs} runs. Stability: grpc-go versions whose probes attached "
        "and decoded (an early-attach run with a side at least "
        f"{tables.WORKS_COMPLETENESS:.0%} complete and at most {tables.WORKS_DEGRADATION:.0%} "
        "degraded) / versions tried. Multi-language: (language, side) pairs of the gRPC runs "
        f"the collector covered (mean completeness at least {tables.COVERED:.0%}, early "
        "attach). Compatibility: the same over (language, protocol) stacks of all scenarios. "
        "Data completeness and degradation: mean over default-variant rows, by attach time. "
        "Overhead comes from a bench results file when one is given; the recorder CPU is what "
        "the collector processes used during the runs."))  # fmt: skip
    s.blocks.append(_table(seed.frame(), css="seed"))
    src = pd.DataFrame(
        [{"approach": a, "column": c, "runs": r} for a, c, r in seed.sources()],
        columns=["approach", "column", "runs"])  # fmt: skip
    s.blocks.append(Table(src, "Runs behind each measured cell", collapsed=True))
    s.blocks.append(_table(seed.stability, "Stability: grpc-go versions per collector"))
    s.blocks.append(_table(seed.languages, "Multi-language: gRPC sides per collector"))
    s.blocks.append(_table(seed.stacks, "Compatibility: protocol stacks per collector"))
    s.blocks.append(_table(seed.overhead, "Recorder CPU per run (collector processes)"))
    if not loaded.bench:
        s.blocks.append(Text("Overhead (throughput, latency, BPF run time) was not measured "
                             "for this report: no bench results file was given."))
    return s


def _scenario_section(df: pd.DataFrame, pdir: Path) -> Section:
    s = Section("Per scenario")
    s.blocks.append(Text(
        "One row per run, collector, variant and observed side. `variant` default is the "
        "collector as shipped; no-sockdiag replays it without the netlink peer lookup; "
        "hpack-strict refuses to guess HPACK references it never saw. `lost` counts ring "
        "buffer drops. Rates are shares of the observable or matched exchanges (see the "
        "definitions)."))  # fmt: skip
    if (p := plots.overview(df, pdir / "overview.png")) is not None:
        s.blocks.append(Image(p, "completeness and degradation per scenario"))
    for scen, t in tables.scenario_tables(df).items():
        s.blocks.append(_table(t, scen))
    return s


def _degradation_section(df: pd.DataFrame, pdir: Path) -> Section:
    s = Section("Degradation by reason and by field")
    s.blocks.append(Text(tables.REASON_NOTE))
    totals = tables.reason_totals(df, "degraded_by_reason")
    if (p := plots.reasons(totals, pdir / "reasons.png")) is not None:
        s.blocks.append(Image(p, "degradation reasons"))
    s.blocks.append(_table(totals, "By reason, summed over sides and runs"))
    s.blocks.append(_table(tables.reason_totals(df, "degraded_by_field"),
                           "By field, summed over sides and runs"))
    s.blocks.append(_table(tables.breakdown(df, "degraded_by_reason"), "By reason, per run",
                           fold=True))
    s.blocks.append(_table(tables.breakdown(df, "degraded_by_field"), "By field, per run",
                           fold=True))
    return s


def _recovery_section(rec: pd.DataFrame, runs: list[Any], pdir: Path) -> Section:
    s = Section("Late-attach recovery (gRPC)")
    s.blocks.append(Text(
        "After a late attach the kernel-side collector has missed the HPACK dynamic table. "
        "Per call index on a connection (0 = the first call the collector saw), the share of "
        "required fields it got right against the truth: tolerant (guesses what it can) vs "
        "strict HPACK decoding, and the uprobe collector beside them. Sides and runs summed; "
        "the last index pools every later call."))  # fmt: skip
    late = [r for r in runs if r.params.get("attach") == "late"
            and r.params.get("protocol") == "h2c-grpc" and r.metrics is not None]  # fmt: skip
    if rec.empty:
        s.blocks.append(Text(
            f"No recovery data: {len(late)} late-attach gRPC runs, and none of their "
            "metrics.json rows carries `recovery`; replay them with the current probebench "
            "(`probebench replay DIR`) to add it."))
        return s
    if (p := plots.recovery(rec, pdir / "recovery.png")) is not None:
        s.blocks.append(Image(p, "late-attach recovery curve"))
    wide = rec.pivot_table(index="call_index", columns=["scenario", "series"], values="share")
    wide.columns = [f"{a} {b}" for a, b in wide.columns]
    s.blocks.append(_table(wide.reset_index().rename(columns={"call_index": "call index"}),
                           "Share of required fields correct", percent=True))
    runs_col = sorted({i for ids in rec["runs"] for i in ids})
    s.blocks.append(Text("From runs: " + ", ".join(f"`{r}`" for r in runs_col)))
    return s


def _sweep_section(sweep: pd.DataFrame, pdir: Path) -> Section:
    s = Section("Attach-time sweep")
    s.blocks.append(Text(
        "Early-attach recordings replayed as if the collectors had attached T seconds later "
        "(`probebench replay DIR --attach-at T`): what a collector started mid-traffic would "
        "have reported. T = 0 is the real attach; `started_before` is the share of the "
        "run's exchanges already begun at T, the plot's x axis. Default variant, mean of the "
        "two sides in the plot."))  # fmt: skip
    if sweep.empty:
        s.blocks.append(Text("No sweep: no run directory holds a metrics.attach-at-*.json."))
        return s
    if (p := plots.sweep(sweep, pdir / "sweep.png")) is not None:
        s.blocks.append(Image(p, "degradation vs attach time"))
    s.blocks.append(_table(sweep.rename(columns={"run_id": "run", "attach_at_s": "T (s)"}),
                           "Sweep points"))
    return s


def _truth_section(runs: list[Any]) -> Section:
    s = Section("Ground truth vs workload")
    s.blocks.append(Text(
        "What the clients logged doing (workload.jsonl) against what Wireshark decoded from "
        "the capture: missing or extra exchanges here would make every collector number "
        "above suspect for that run."))
    s.blocks.append(_table(tables.truth_frame(runs)))
    failed = tables.failed_frame(runs)
    if not failed.empty:
        s.blocks.append(_table(failed, "Runs without metrics (failed, interrupted, "
                                       "or not replayed)"))
    return s


def _machine_section(runs: list[Any], loaded: Loaded) -> Section:
    s = Section("Machine, kernel and tools")
    s.blocks.append(Text("From each run's run.json; one column per distinct combination."))
    s.blocks.append(_table(tables.machines_frame(runs), css="kv"))
    if loaded.skipped:
        skipped = pd.DataFrame([{"path": str(p), "why": w} for p, w in loaded.skipped])
        s.blocks.append(_table(skipped, "Paths given but not reported on"))
    return s


def _definitions_section(runs: list[Any]) -> Section:
    s = Section("Metric definitions")
    defs = tables.definitions(runs)
    s.blocks.append(_table(pd.DataFrame({"metric": list(defs), "definition": list(defs.values())}),
                           "As recorded in the runs' metrics.json"))
    s.blocks.append(Text(
        f"Seed-table thresholds: covered = mean completeness ≥ {tables.COVERED:.0%}; a grpc-go "
        f"version works = an early-attach run at least {tables.WORKS_COMPLETENESS:.0%} "
        f"complete and at most {tables.WORKS_DEGRADATION:.0%} degraded on one side."))
    return s
