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
from harness.report.article import (
    A_ARTICLE,
    A_COVERAGE,
    A_DEGRADATION,
    A_EASE,
    A_FINDINGS,
    A_MACHINE,
    A_OVERHEAD,
    A_PROVENANCE,
    A_RECOVERY,
    A_SCENARIOS,
    A_STABILITY,
    A_TRUTH,
    ArticleTable,
    Facts,
    article_table,
    findings,
)
from harness.report.bench import BenchView
from harness.report.ease import EaseView, ease_view
from harness.report.load import Loaded, load
from harness.report.render import (
    Bullets,
    Image,
    Note,
    Section,
    Table,
    Text,
    to_html,
    to_markdown,
)

REPORT_VERSION = 1
TITLE = "probebench: kernel-side vs uprobe observation of HTTP and gRPC"
COLLAPSE_ROWS = 24  # longer tables start folded in the HTML page


def default_out(run_dirs: list[Path]) -> Path:
    """`report/` in the deepest directory holding all the runs."""
    return Path(os.path.commonpath([d.parent for d in run_dirs])) / "report"


def regenerate_command(dirs: list[Path], out: Path) -> str:
    return shlex.join(["probebench", "report", *map(str, dirs), "--out", str(out)])


def build_report(dirs: list[Path], out: Path | None = None, *, command: str | None = None,
                 bench_origin: str = "", bench_absent: str = "", draw: bool = True) -> Path:
    """Write the report of the runs under ``dirs`` into ``out``; returns report.html's path.

    ``command`` is printed as the way to regenerate it (default: the `probebench report`
    call with the same arguments). ``bench_origin`` says where the overhead results came
    from (default: given on the command line); ``bench_absent`` why there are none.
    ``draw=False`` leaves the plots out (tests of the tables need none)."""
    loaded = load(dirs)
    if not loaded.runs:
        why = "; ".join(f"{p}: {w}" for p, w in loaded.skipped) or "nothing given"
        raise ProbebenchError(f"no run directories to report on ({why})")
    out = out or default_out([r.run_dir for r in loaded.runs])
    out.mkdir(parents=True, exist_ok=True)
    cmd = command or regenerate_command(dirs, out)
    bench = BenchView.pick(loaded.bench, bench_origin)
    if not bench.present:
        bench.absent = bench_absent or ("no overhead results were given (run `nox -s bench` "
                                        "or `probebench matrix`, which ends with a short pass)")
    lead, sections, combined = _assemble(loaded, bench, out, cmd, draw)
    (out / "report.md").write_text(to_markdown(TITLE, sections, out, lead))
    (out / "report.html").write_text(to_html(TITLE, sections, lead))
    write_json_atomic(out / "metrics.json", combined)
    return out / "report.html"


def _assemble(loaded: Loaded, bench: BenchView, out: Path, cmd: str,
              draw: bool = True) -> tuple[str, list[Section], dict[str, Any]]:
    every = loaded.runs
    df_all = tables.rows_frame(every)
    # The headline tables are the kernel side as it ships (syscall tracepoints): runs in
    # kprobe mode go to the kernels section, beside the tracepoint runs of their machine.
    runs = [r for r in every if r.kernel_hooks != "kprobes"] or every
    ids = {r.run_id for r in runs}
    df = df_all[df_all["run_id"].isin(ids)]
    facts = Facts.of(runs, df)
    ease = ease_view(runs)
    table = article_table(facts, bench, ease)
    found = findings(facts, bench)
    rec = tables.recovery_frame(df)
    sweep = tables.sweep_frame(runs)
    for old in (out / "plots").glob("*.png"):
        old.unlink()  # a plot with no data this time must not linger from the last report
    pdir = out / "plots" if draw else None
    scen = sorted({str(r.params.get("scenario") or r.manifest.get("scenario")) for r in every})
    # a machine is its host, kernel and CPU: the target versions in run.json vary by run
    machines = _unique([{k: r.machine.get(k) for k in MACHINE_KEYS} for r in every])
    mixed = (" (pooled by cell in the tables above the kernel section, which keeps each "
             "machine and kernel apart)") if len(machines) > 1 else ""
    lead = (f"{len(every)} runs of {len(scen)} scenarios ({', '.join(scen)}) on "
            f"{len(machines)} machine{'s' if len(machines) != 1 else ''}{mixed}; overhead from "
            + (bench.origin if bench.present else "nowhere (" + bench.absent + ")") + ". "
            "Ground truth: Wireshark's decode of a packet capture of the same traffic.")
    sections = [
        # the words explained right under their first use
        Section("Key findings", [Bullets([f.line() for f in found], css="findings"),
                                 Note(GLOSSARY)], A_FINDINGS),
        _article_section(table),
        _overhead_section(bench, runs, pdir),
        _coverage_section(facts, pdir),
        _stability_section(facts),
        _degradation_section(df, pdir),
        _recovery_section(rec, runs, pdir),
        _sweep_section(sweep, pdir),
        _ease_section(ease),
        _scenario_section(df_all),
        _truth_section(every),
        *_kernels_section(df_all, every),
        _machine_section(every, loaded, bench),
        _provenance_section(table, runs, loaded),
        _definitions_section(runs),
        Section("Regenerate this report", [
            Text(f"Generated {utc_now()} from {len(every)} run directories. Command:"),
            Text(f"`{cmd}`"),
            Text("Each run directory holds its `run.json` (parameters, machine) and "
                 "`metrics.json`, re-derivable with `probebench replay DIR`; this report's "
                 "`metrics.json` lists every run id behind every cell."),
        ], "regenerate"),
    ]  # fmt: skip
    combined = {
        "version": REPORT_VERSION,
        "kind": "probebench-report",
        "generated_utc": utc_now(),
        "command": cmd,
        "machines": machines,
        "findings": [{"text": f.text, "anchor": f.anchor, "values": f.values} for f in found],
        "article_table": table.to_json(),
        "overhead": {"origin": bench.origin, "file": str(bench.path) if bench.path else None,
                     "absent": None if bench.present else bench.absent},
        "ease_of_building": {"lines": ease.lines, "files": ease.files,
                             "binaries": ease.binaries},
        "recovery": rec.to_dict(orient="records"),
        "definitions": tables.definitions(runs),
        "runs": [
            {"run_id": r.run_id, "dir": str(r.run_dir), "status": r.status,
             "problem": r.problem, "params": r.params, "machine": r.machine,
             "truth_vs_workload": (r.metrics or {}).get("truth_vs_workload"),
             "collectors": (r.metrics or {}).get("collectors"), "rows": r.rows,
             "sweep": {f"{t:g}": m.get("rows") for t, m in r.sweep.items()}}
            for r in every
        ],
        "bench": [{"file": str(p), "results": b} for p, b in loaded.bench],
    }  # fmt: skip
    return lead, sections, combined


def _draw(fn: Any, data: Any, pdir: Path | None, name: str) -> Path | None:
    """One plot, or none when the report is built without plots (``draw=False``)."""
    return None if pdir is None else fn(data, pdir / name)


MACHINE_KEYS = ("hostname", "kernel", "cpu_model", "cpu_id")


def _unique(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def _table(df: pd.DataFrame, caption: str = "", css: str = "", *, fold: bool = False,
           percent: bool = False, note: str = "") -> Table:
    return Table(df, caption, collapsed=fold or len(df) > COLLAPSE_ROWS, css=css,
                 percent=percent, note=note)  # fmt: skip


GLOSSARY = (
    "Words used throughout: a **side** is the client or the server process of a run, each "
    "observed on its own; **observable** exchanges started after the collector attached; "
    "**late attach** means the collector started after the connections were open; "
    "**degraded** means matched but with a required field missing or wrong; **h2c** is "
    "HTTP/2 without TLS (how gRPC runs here; h2c-plain is plain HTTP/2 requests from Go "
    "net/http and Node's http2); the kernel side is the syscall-tracepoint "
    "collector (the article's kprobe approach)."
)


def _article_section(t: ArticleTable) -> Section:
    s = Section("The article's table, measured", anchor_name=A_ARTICLE)
    rules = " ".join(f"{c.name.capitalize()}: {c.rule}." for c in t.criteria)
    s.blocks.append(Table(t.frame(), css="article", markup=True))
    s.blocks.append(Text("How each value is measured and when it agrees with the article. "
                         + rules))
    return s


def _overhead_section(b: BenchView, runs: list[Any], pdir: Path | None) -> Section:
    s = Section("Overhead", anchor_name=A_OVERHEAD)
    if not b.present:
        s.blocks.append(Text(f"Not measured for this report: {b.absent}."))
        return s
    commits = {str(r.machine.get("git_commit")) for r in runs if r.machine.get("git_commit")}
    hosts = {f"{r.machine.get('hostname')} kernel {r.machine.get('kernel')}" for r in runs}
    s.blocks.append(Text("Methodology first. Every ratio compares a collector with no "
                         "collector on the same workload in the same session; numbers of "
                         "different workloads are never set against each other."))
    s.blocks.append(Bullets(b.methodology(commits, hosts)))
    if (p := _draw(plots.overhead, b.plot_frame(), pdir, "overhead.png")) is not None:
        s.blocks.append(Image(p, "throughput ratio per workload with 95% CI",
                              "A ratio of 0.5× means half the exchanges per second of the "
                              "same workload without a collector. These are closed-loop "
                              "loopback workloads where each syscall is most of the work; a "
                              "service that does more per request pays proportionally less."))
    s.blocks.append(_table(b.ratio_frame(), "Same-workload ratios to no collector"))
    warn = b.warnings()
    if warn:
        s.blocks.append(Text(f"Instability warnings ({len(warn)}; a series whose standard "
                             "deviation exceeds 10% of its mean, or with few rounds):"))
        s.blocks.append(Bullets(warn[:12] + ([f"… and {len(warn) - 12} more in the "
                                              "results file"] if len(warn) > 12 else [])))
    else:
        s.blocks.append(Text("No instability warnings: every series varied by less than 10% "
                             "of its mean."))
    hits = b.per_hit_frame()
    if not hits.empty:
        s.blocks.append(_table(hits, "Cost per probe hit, ns (bare traps on this machine, "
                                     "then each collector's programs with BPF stats on)"))
    dec = b.decomposition_frame()
    if not dec.empty:
        s.blocks.append(_table(dec, "Against the floor: what any collector at the same probe "
                                    "points pays (hits × bare trap), and what is ours on top",
                               note="The floor is hits per exchange × the bare trap cost "
                                    "measured in the same session; everything above it (BPF "
                                    "program time, copies, wake-ups, user-space draining) is "
                                    "the collector's own."))  # fmt: skip
    floor = b.floor_frame()
    if not floor.empty:
        s.blocks.append(_table(floor, "The kernel side against its floor builds: what any "
                                      "collector on these hooks pays, and what recording "
                                      "each call pays before framing it",
                               note="Floor builds of the same program (recorder `--floor`, "
                                    "`PB_FLOOR_*` in bpf/kprobe_events.h), measured in the "
                                    "same session with BPF stats on; the collector's figure "
                                    "less the record build's is what its framing costs."))
    for caption, frame in b.extra_frames():
        s.blocks.append(_table(frame, caption))
    cpu = tables.recorder_cpu(runs)
    if not cpu.empty:
        s.blocks.append(_table(
            cpu.rename(columns={"run_id": "run", "cpu_s": "CPU s (start-up included)",
                                "cpu_s_per_1k": "CPU s per 1k exchanges"}),
            "Collector process CPU in the matrix runs (bcc compile and attach included, so "
            "not an overhead figure)", fold=True))  # fmt: skip
    return s


def _coverage_section(f: Facts, pdir: Path | None) -> Section:
    s = Section("Coverage: languages and protocols", anchor_name=A_COVERAGE)
    s.blocks.append(Text(
        f"A side counts as covered when the collector matched at least {tables.COVERED:.0%} "
        "of its observable exchanges (early attach). n/a: no run put that stack in front of "
        "that collector, which is not the same as 0%."))  # fmt: skip
    cm = tables.coverage_matrix(f.cov_early, set(f.collectors()))
    if (p := _draw(plots.coverage, cm, pdir, "coverage.png")) is not None:
        s.blocks.append(Image(p, "coverage matrix"))
    if (p := _draw(plots.per_language, f.df, pdir, "per_language.png")) is not None:
        s.blocks.append(Image(p, "completeness and degradation per language"))
    cols = {"mean_completeness": "mean completeness", "why_not": "why not covered",
            "runs": "runs"}
    for t, cap in ((f.langs, "gRPC sides per collector (multi-language)"),
                   (f.stacks, "Protocol stacks per collector (compatibility)")):
        s.blocks.append(_table(t.assign(runs=t["runs"].map(len)).rename(columns=cols), cap))
    return s


def _stability_section(f: Facts) -> Section:
    s = Section("Stability across grpc-go targets", anchor_name=A_STABILITY)
    s.blocks.append(Text(
        f"A target (grpc-go version, and build variant where runs name one) works for a "
        f"collector when an early-attach run had a side at least "
        f"{tables.WORKS_COMPLETENESS:.0%} complete and at most "
        f"{tables.WORKS_DEGRADATION:.0%} degraded. `unsupported` is what the collector said "
        "it could not probe."))  # fmt: skip
    t = f.stab.assign(runs=f.stab["runs"].map(len))
    s.blocks.append(_table(t.rename(columns={"grpc_go": "grpc-go target"})))
    return s


def _scenario_section(df: pd.DataFrame) -> Section:
    s = Section("Per scenario", anchor_name=A_SCENARIOS)
    s.blocks.append(Text(
        "One row per run, collector, variant and observed side, folded. `variant` default "
        "is the collector as shipped; no-sockdiag replays it without the netlink peer "
        "lookup; hpack-strict refuses to guess HPACK references it never saw. `lost` counts "
        "ring buffer drops."))  # fmt: skip
    for scen, t in tables.scenario_tables(df).items():
        s.blocks.append(_table(t, scen, fold=True))
    return s


def _degradation_section(df: pd.DataFrame, pdir: Path | None) -> Section:
    s = Section("Degradation by field and by reason", anchor_name=A_DEGRADATION)
    s.blocks.append(Text(tables.REASON_NOTE + " Rates are per matched exchange, so runs of "
                         "different sizes compare."))
    heat = tables.field_heatmap(df)
    if (p := _draw(plots.field_heatmap, heat, pdir, "fields.png")) is not None:
        s.blocks.append(Image(p, "per-field degradation heatmap"))
    per100 = tables.reasons_per_100(df)
    if (p := _draw(plots.reasons, per100, pdir, "reasons.png")) is not None:
        s.blocks.append(Image(p, "degradation reasons per 100 exchanges"))
    s.blocks.append(_table(per100.round(1), "Reasons per 100 matched exchanges"))
    if not heat.empty:
        # fields as rows: one column per case stays narrow however many fields there are
        wide = heat.rename(columns=lambda c: str(c).replace("\n", " ")).rename_axis("field")
        s.blocks.append(_table(wide.reset_index(), "By field: share of matched exchanges with "
                                                   "the field degraded", percent=True,
                               fold=True))  # fmt: skip
    s.blocks.append(_table(tables.breakdown(df, "degraded_by_reason"), "By reason, per run",
                           fold=True))
    for col in tables.extra_count_columns(df):
        s.blocks.append(_table(tables.breakdown_long(df, col), f"`{col}` per run",
                               fold=True))  # fmt: skip
    return s


def _recovery_section(rec: pd.DataFrame, runs: list[Any], pdir: Path | None) -> Section:
    s = Section("Late-attach recovery (gRPC)", anchor_name=A_RECOVERY)
    s.blocks.append(Text(
        "After a late attach the kernel-side collector has missed the HPACK dynamic table. "
        "Per call index on a connection (0 = the first call the collector saw), the share of "
        "required fields it got right against the truth: tolerant (guesses what it can) vs "
        "strict HPACK decoding, and the uprobe collector beside them. Sides and runs summed; "
        "the last index pools every later call."))  # fmt: skip
    late = [r for r in runs if r.params.get("attach") == "late" and r.metrics is not None
            and tables.family(r.params.get("protocol")) == "gRPC"]  # fmt: skip
    if rec.empty:
        s.blocks.append(Text(
            f"No recovery data: {len(late)} late-attach gRPC runs, and none of their "
            "metrics.json rows carries `recovery`; replay them with the current probebench "
            "(`probebench replay DIR`) to add it."))
        return s
    if (p := _draw(plots.recovery, rec, pdir, "recovery.png")) is not None:
        s.blocks.append(Image(p, "late-attach recovery curve"))
    # one row per series, one column per call index: as many scenarios as the matrix has
    # must not widen a row past what a page (or a Markdown line) holds
    wide = rec.pivot_table(index=["scenario", "series"], columns="call_index", values="share")
    wide.columns = [f"call {c}" for c in wide.columns]
    s.blocks.append(_table(wide.reset_index(), "Share of required fields correct, by call index",
                           percent=True, fold=True))
    ids = sorted({i for ids in rec["runs"] for i in ids})
    s.blocks.append(Text("From " + tables.run_pattern(runs, ids) + "."))
    return s


def _sweep_section(sweep: pd.DataFrame, pdir: Path | None) -> Section:
    s = Section("Attach-time sweep", anchor_name="sweep")
    s.blocks.append(Text(
        "Early-attach recordings replayed as if the collectors had attached T seconds later "
        "(`probebench replay DIR --attach-at T`): what a collector started mid-traffic would "
        "have reported. `started_before` is the share of the run's exchanges already begun "
        "at T, the plot's x axis. Default variant, mean of the two sides. A collector that "
        "matched nothing of a run's traffic (the uprobe on HTTP/1) is left out of the plot: "
        "not applicable, not zero."))  # fmt: skip
    if sweep.empty:
        s.blocks.append(Text("No sweep: no run directory holds a metrics.attach-at-*.json."))
        return s
    if (p := _draw(plots.sweep, sweep, pdir, "sweep.png")) is not None:
        s.blocks.append(Image(p, "degradation vs attach time"))
    s.blocks.append(_table(sweep.rename(columns={"run_id": "run", "attach_at_s": "T (s)"}),
                           "Sweep points", fold=True))
    return s


def _ease_section(e: EaseView) -> Section:
    s = Section("Ease of building, measured", anchor_name=A_EASE)
    s.blocks.append(Text(
        "The article calls the kernel side complex and the uprobe simple. Proxies, stated: "
        "lines of code (non-blank, non-comment) in this checkout; facts the collector must "
        "resolve in each target binary before it can attach (symbol addresses, DWARF struct "
        "offsets, argument registers); the code paths chosen by binary shape; attach time; "
        "what failed to attach, and why. The kernel side resolves nothing per binary: its "
        "tracepoints are the syscall ABI, and their argument layouts are read from tracefs "
        "once per kernel."))  # fmt: skip
    s.blocks.append(_table(e.lines_frame(), "Lines of code per collector and part"))
    if e.binaries:
        s.blocks.append(_table(e.binaries_frame(), "uprobe: facts resolved per grpc-go binary "
                                                   "and the code path chosen"))
        if paths := e.code_paths():
            s.blocks.append(Text(paths))
    if not e.attach.empty:
        s.blocks.append(_table(e.attach, "Attach time from run.json (seconds)",
                               note="Steps a collector does not record are absent."))
    if not e.failures.empty:
        s.blocks.append(_table(e.failures, "What could not attach, and why"))
    else:
        s.blocks.append(Text("Nothing failed to attach in these runs."))
    return s


def _truth_section(runs: list[Any]) -> Section:
    s = Section("Ground truth vs workload", anchor_name=A_TRUTH)
    s.blocks.append(Text(
        "What the clients logged doing (workload.jsonl) against what Wireshark decoded from "
        "the capture: missing or extra exchanges here would make every collector number "
        "above suspect for that run."))
    s.blocks.append(_table(tables.truth_frame(runs), fold=True))
    failed = tables.failed_frame(runs)
    if not failed.empty:
        s.blocks.append(_table(failed, "Runs without metrics (failed, interrupted, "
                                       "or not replayed)"))
    return s


def _kernels_section(df: pd.DataFrame, runs: list[Any]) -> list[Section]:
    """The kernel dimension: the kernel side per machine (host beside guest kernels) and
    hook mode; only when the runs have more than one kernel or any kprobe-mode run."""
    kf = tables.kernels_frame(df)
    if kf.empty or (kf["machine"].nunique() < 2 and set(kf["kernel_hooks"]) == {"tracepoints"}):
        return []
    guests = {r.machine_label for r in runs if r.guest}
    s = Section("Kernels and hook modes", anchor_name="kernels")
    s.blocks.append(Text(
        "The kernel-side collector on each machine (a guest kernel booted by `probebench "
        "kernels` under QEMU's emulation, TCG, is its own machine) and each way it hooks the "
        "syscalls: `tracepoints` (syscalls:sys_enter/exit_*) or `kprobes` (on the syscall "
        "functions __x64_sys_*, entry and return; the same in-kernel logic behind both). "
        "Each column is one machine and hook mode, the host first; values are summed over "
        "that column's runs only, never across machines. No overhead is measured in a guest "
        "(emulated CPU)."))
    modes = kf.groupby("machine")["kernel_hooks"].agg(lambda h: ", ".join(sorted(set(h.dropna()))))
    order = sorted(modes.index, key=lambda m: tables.machine_order(m, guests))
    who = pd.DataFrame({"machine": order,
                        "role": ["QEMU TCG guest" if m in guests else "host" for m in order],
                        "hook modes": [modes[m] for m in order],
                        "runs": [sum(r.machine_label == m for r in runs) for m in order]})
    s.blocks.append(_table(who, "Machines", css="kv"))
    wide, alone = tables.kernels_wide(kf, guests)
    note = (f"{alone} more cells (per side) ran on one machine and hook mode only (the host's "
            "matrix); they are in the tables above." if alone else "")
    wide, agree = (t.rename(columns={"grpc_go": "grpc-go"})
                   for t in (wide, tables.hook_agreement(kf)))  # fmt: skip
    s.blocks.append(_table(wide, "Kernel side per cell: matched/observable · degraded · "
                                 "wrong · phantoms, per machine and hook mode", note=note))
    if not agree.empty:
        n_diff = int((agree["same"] != "yes").sum())
        s.blocks.append(_table(agree, f"tracepoints vs kprobes on the same machine: "
                                      f"{len(agree) - n_diff} cells agree, {n_diff} differ"))
    return [s]


def _machine_section(runs: list[Any], loaded: Loaded, bench: BenchView) -> Section:
    s = Section("Machine, kernel, tools and target versions", anchor_name=A_MACHINE)
    s.blocks.append(Text("From each run's run.json; one column per distinct combination."))
    s.blocks.append(_table(tables.machines_frame(runs), css="kv"))
    s.blocks.append(_table(tables.targets_frame(runs), "Every target that ran"))
    if loaded.skipped:
        skipped = pd.DataFrame([{"path": str(p), "why": w} for p, w in loaded.skipped])
        s.blocks.append(_table(skipped, "Paths given but not reported on"))
    return s


def _provenance_section(t: ArticleTable, runs: list[Any], loaded: Loaded) -> Section:
    s = Section("Appendix: the runs behind each cell", anchor_name=A_PROVENANCE)
    rows = []
    for c in t.criteria:
        for coll, cell in c.cells.items():
            if cell.runs:
                rows.append({"criterion": c.name, "approach": tables.APPROACHES[coll],
                             "runs": tables.run_pattern(runs, cell.runs)})
    s.blocks.append(Text("Counts and patterns of scenarios, client→server pairs, attach times "
                         "and grpc-go targets; the full run ids are in this report's "
                         "`metrics.json` (`article_table`)."))
    s.blocks.append(_table(pd.DataFrame(rows)))
    all_ids = [r.run_id for r in runs]
    s.blocks.append(Text("All runs: " + tables.run_pattern(runs, all_ids) + "."))
    return s


def _definitions_section(runs: list[Any]) -> Section:
    s = Section("Metric definitions", anchor_name="definitions")
    defs = tables.definitions(runs)
    s.blocks.append(_table(pd.DataFrame({"metric": list(defs), "definition": list(defs.values())}),
                           "As recorded in the runs' metrics.json"))
    return s
