"""The report's pandas tables, computed from loaded runs; every row keeps its run ids."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.report.load import RunData
from harness.runner.scenarios import CURRENT_GRPC_GO

APPROACHES = {"kprobe": "kprobe / tracepoint", "uprobe": "uprobe"}
# The article's verdicts, quoted beside the measured values (SEED.md).
ARTICLE = {
    "kprobe": {"stability": "strong", "multi-language": "strong", "compatibility": "strong",
               "ease of building": "complex", "data completeness": "degrades"},
    "uprobe": {"stability": "weak", "multi-language": "weak", "compatibility": "weak",
               "ease of building": "simple", "data completeness": "complete"},
}  # fmt: skip
SEED_COLUMNS = ("stability", "multi-language", "compatibility", "ease of building",
                "data completeness", "degradation", "overhead")  # fmt: skip
# A side counts as covered by a collector when it matched at least this share of the
# observable exchanges; below it the collector does not really see that side.
COVERED = 0.5
# A grpc-go version counts as working for a collector when an early-attach run of it had
# a side at least this complete and at most this degraded.
WORKS_COMPLETENESS = 0.5
WORKS_DEGRADATION = 0.5
HPACK_VARIANTS = {"default": "tolerant", "hpack-strict": "strict"}
REASON_NOTE = (
    "Counts are field occurrences: one degraded exchange with three unknown fields counts "
    "three times."
)


def pair(client: str | None, server: str | None) -> str:
    return f"{client}→{server}"


def grpc_go_of(protocol: str | None, params: dict[str, Any], row: dict[str, Any]) -> str | None:
    """The grpc-go version a row's Go side ran; None when no Go gRPC code was involved."""
    if not (protocol or "").startswith("h2c") or "go" not in (params.get("client"),
                                                               params.get("server")):
        return None
    return row.get("grpc_go") or params.get("grpc_version") or CURRENT_GRPC_GO


# -- all rows ------------------------------------------------------------------------------


def rows_frame(runs: list[RunData]) -> pd.DataFrame:
    """Every metrics row of every run, one per (run, collector, variant, side)."""
    out = []
    for r in runs:
        p = r.params
        for row in r.rows:
            d = dict(row)
            d["run_id"] = r.run_id
            d["pair"] = pair(row.get("client"), row.get("server"))
            d["grpc_go"] = grpc_go_of(row.get("protocol"), p, row)
            d["lang"] = row.get(row.get("side", ""), None)  # the language of the observed side
            out.append(d)
    cols = ["run_id", "scenario", "protocol", "pair", "client", "server", "attach", "grpc_go",
            "collector", "side", "lang", "variant", "observable", "matched", "completeness",
            "degraded", "degradation_rate", "exact_rate", "wrong", "phantoms", "pre_attach",
            "unmatched_no_address", "lost_events", "truncated_payloads", "degraded_by_field",
            "degraded_by_reason", "recovery"]  # fmt: skip
    df = pd.DataFrame(out)
    for c in cols:
        if c not in df:
            df[c] = None
    return df[cols]


def _defaults(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the collectors as they ship (variant default) and of real attaches only."""
    return df[(df["variant"] == "default") & df["attach"].isin(["early", "late"])]


# -- the seed's comparison table -----------------------------------------------------------


@dataclass
class Cell:
    text: str
    runs: list[str] = field(default_factory=list)
    value: float | None = None


@dataclass
class SeedTable:
    cells: dict[tuple[str, str], Cell]  # (collector, column) -> measured cell
    stability: pd.DataFrame
    languages: pd.DataFrame
    stacks: pd.DataFrame
    overhead: pd.DataFrame

    def frame(self) -> pd.DataFrame:
        """Article and measured lines per approach, in the seed's column order."""
        lines = []
        for coll, name in APPROACHES.items():
            lines.append({"approach": f"{name} — article",
                          **{c: ARTICLE[coll].get(c, "—") for c in SEED_COLUMNS}})
            lines.append({"approach": f"{name} — measured",
                          **{c: self.cells[(coll, c)].text for c in SEED_COLUMNS}})
        return pd.DataFrame(lines)

    def sources(self) -> list[tuple[str, str, list[str]]]:
        return [(APPROACHES[k[0]], k[1], c.runs) for k, c in self.cells.items() if c.runs]

    def to_json(self) -> dict[str, Any]:
        return {f"{k[0]}/{k[1]}": {"text": c.text, "value": c.value, "runs": c.runs}
                for k, c in self.cells.items()}


def _side_coverage(runs: list[RunData], df: pd.DataFrame) -> pd.DataFrame:
    """Per early-attach run, side and collector: the completeness (0 when the collector was
    asked for but reported nothing for that side)."""
    out = []
    d = _defaults(df)
    for r in runs:
        if r.metrics is None or r.params.get("attach") != "early":
            continue
        p = r.params
        mine = d[d["run_id"] == r.run_id]
        for coll in p.get("collectors") or []:
            for side in ("client", "server"):
                hit = mine[(mine["collector"] == coll) & (mine["side"] == side)]
                if len(hit) and hit["completeness"].isna().all():
                    continue  # nothing observable on this side: says nothing either way
                comp = float(hit["completeness"].fillna(0).mean()) if len(hit) else 0.0
                deg = hit["degradation_rate"].dropna()
                out.append({"run_id": r.run_id, "collector": coll, "side": side,
                            "lang": p.get(side), "protocol": p.get("protocol"),
                            "grpc_go": grpc_go_of(p.get("protocol"), p, {}),
                            "completeness": comp,
                            "degradation_rate": float(deg.mean()) if len(deg) else None,
                            })  # fmt: skip
    return pd.DataFrame(out, columns=["run_id", "collector", "side", "lang", "protocol",
                                      "grpc_go", "completeness", "degradation_rate"])


def _coverage_table(cov: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    rows = []
    for k, g in cov.groupby(["collector", *keys], dropna=False):
        mean = float(g["completeness"].mean())
        rows.append({"collector": k[0], **dict(zip(keys, k[1:], strict=True)),
                     "mean_completeness": mean, "covered": mean >= COVERED,
                     "runs": sorted(set(g["run_id"]))})  # fmt: skip
    return pd.DataFrame(rows, columns=["collector", *keys, "mean_completeness", "covered", "runs"])


def _stability(runs: list[RunData], cov: pd.DataFrame) -> pd.DataFrame:
    """Per collector and grpc-go version: early-attach gRPC runs with a Go side tried, and
    whether the collector attached and decoded in at least one of them. A run that failed
    because a collector failed to attach counts against that collector only."""
    tried: dict[tuple[str, str], set[str]] = defaultdict(set)
    works: dict[tuple[str, str], set[str]] = defaultdict(set)
    failed: dict[tuple[str, str], set[str]] = defaultdict(set)
    grpc = cov[cov["grpc_go"].notna()]
    for _, x in grpc.iterrows():
        key = (x["collector"], x["grpc_go"])
        tried[key].add(x["run_id"])
        deg = x["degradation_rate"]
        if x["completeness"] >= WORKS_COMPLETENESS and deg is not None and (
            deg <= WORKS_DEGRADATION
        ):
            works[key].add(x["run_id"])
    for r in runs:
        p = r.params
        if r.metrics is not None or r.status != "failed" or p.get("attach") != "early":
            continue
        ver = grpc_go_of(p.get("protocol"), p, {})
        for coll in p.get("collectors") or []:
            if ver and f"the {coll} collector" in (r.manifest.get("error") or ""):
                tried[(coll, ver)].add(r.run_id)
                failed[(coll, ver)].add(r.run_id)
    # What the collector itself said about binaries it could not probe (the uprobe
    # collector attaches what it can and lists the rest as unsupported).
    by_id = {r.run_id: r for r in runs}
    notes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for (c, v), ids in tried.items():
        for i in ids:
            st = (by_id[i].manifest.get("collectors") or {}).get(c) or {}
            notes[(c, v)].update(str(u) for u in st.get("unsupported") or [])
    rows = [{"collector": c, "grpc_go": v, "runs_tried": len(ids), "works": bool(works[(c, v)]),
             "failed_to_attach": len(failed[(c, v)]),
             "unsupported": "; ".join(sorted(notes[(c, v)])) or None, "runs": sorted(ids)}
            for (c, v), ids in sorted(tried.items())]  # fmt: skip
    return pd.DataFrame(rows, columns=["collector", "grpc_go", "runs_tried", "works",
                                       "failed_to_attach", "unsupported", "runs"])


def _fraction_cell(t: pd.DataFrame, flag: str, label: str, what: str) -> Cell:
    if t.empty:
        return Cell(f"no {what} measured")
    ok = t[t[flag]]
    names = ", ".join(str(x) for x in ok[label]) or "none"
    runs = sorted({i for ids in t["runs"] for i in ids})
    value = len(ok) / len(t)
    return Cell(f"{len(ok)}/{len(t)} {what} ({names})", runs, value)


def family(protocol: str | None) -> str:
    return "gRPC" if (protocol or "").startswith("h2c") else "HTTP/1"


def _mean_cell(d: pd.DataFrame, col: str) -> Cell:
    """Mean of a rate per protocol family and attach time, e.g. `gRPC late 93.1% (8 sides)`."""
    parts, runs = [], []
    for fam in ("HTTP/1", "gRPC"):
        for attach in ("early", "late"):
            g = d[(d["protocol"].map(family) == fam) & (d["attach"] == attach) & d[col].notna()]
            if g.empty:
                continue
            parts.append(f"{fam} {attach} {100 * float(g[col].mean()):.1f}% ({len(g)} sides)")
            runs.extend(g["run_id"])
    if not parts:
        return Cell("no runs")
    return Cell(" · ".join(parts), sorted(set(runs)), float(d[col].dropna().mean()))


def _bench_text(bench: list[tuple[Any, dict[str, Any]]], coll: str) -> str | None:
    """An overhead summary for one collector from a bench results file, when one was given.
    Reads `collectors.<name>` or `results.<name>` (a flat dict of numbers)."""
    for _path, b in bench:
        # `summary` is what benchmarks/bench_overhead.py writes for this table
        for key in ("summary", "collectors", "results"):
            entry = (b.get(key) or {}).get(coll) if isinstance(b.get(key), dict) else None
            if isinstance(entry, dict):
                nums = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in entry.items() if isinstance(v, int | float)]  # fmt: skip
                if nums:
                    return "; ".join(nums[:6])
    return None


def _recorder_cpu(runs: list[RunData]) -> pd.DataFrame:
    """Collector process CPU seconds (user + system) per 1,000 truth exchanges, per run."""
    out = []
    for r in runs:
        if r.metrics is None:
            continue
        n = (r.metrics.get("truth") or {}).get("exchanges") or 0
        for coll, st in (r.manifest.get("collectors") or {}).items():
            cpu = (st.get("cpu_user_s") or 0) + (st.get("cpu_system_s") or 0)
            if n and cpu:
                out.append({"run_id": r.run_id, "collector": coll, "exchanges": n,
                            "cpu_s": cpu, "cpu_s_per_1k": 1000 * cpu / n})  # fmt: skip
    return pd.DataFrame(out, columns=["run_id", "collector", "exchanges", "cpu_s", "cpu_s_per_1k"])


def seed_table(
    runs: list[RunData], df: pd.DataFrame, bench: list[tuple[Any, dict[str, Any]]]
) -> SeedTable:
    cov = _side_coverage(runs, df)
    stab = _stability(runs, cov)
    langs = _coverage_table(cov[cov["protocol"] == "h2c-grpc"], ["side", "lang"])
    stacks = _coverage_table(cov, ["protocol", "lang"])
    cpu = _recorder_cpu(runs)
    d = _defaults(df)
    cells: dict[tuple[str, str], Cell] = {}
    for coll in APPROACHES:
        s = stab[stab["collector"] == coll]
        cells[(coll, "stability")] = _fraction_cell(
            s.assign(label=s["grpc_go"]), "works", "label", "grpc-go versions")
        lg = langs[langs["collector"] == coll]
        cells[(coll, "multi-language")] = _fraction_cell(
            lg.assign(label=lg["lang"] + " " + lg["side"]), "covered", "label", "gRPC sides")
        st = stacks[stacks["collector"] == coll]
        cells[(coll, "compatibility")] = _fraction_cell(
            st.assign(label=st["lang"] + " " + st["protocol"]), "covered", "label",
            "protocol stacks")  # fmt: skip
        cells[(coll, "ease of building")] = Cell("not measured (no run measures it)")
        mine = d[d["collector"] == coll]
        cells[(coll, "data completeness")] = _mean_cell(mine, "completeness")
        cells[(coll, "degradation")] = _mean_cell(mine, "degradation_rate")
        bench_text = _bench_text(bench, coll)
        c = cpu[cpu["collector"] == coll]
        # Start-up (bcc compile, attach) dominates a short run's CPU, so per run, not per
        # exchange, and never in place of a bench measurement.
        cpu_text = (f"recorder CPU per run, start-up included: median {c['cpu_s'].median():.1f} s "
                    f"({len(c)} runs)") if len(c) else ""  # fmt: skip
        text = bench_text or "not measured: no bench results given"
        text += f"; {cpu_text}" if cpu_text else ""
        cells[(coll, "overhead")] = Cell(text, sorted(set(c["run_id"])))
    return SeedTable(cells, stab, langs, stacks, cpu)


# -- per scenario, degradation, truth, machines --------------------------------------------

SCENARIO_COLUMNS = {"run_id": "run", "pair": "client→server", "attach": "attach",
                    "grpc_go": "grpc-go", "collector": "collector", "side": "side",
                    "variant": "variant", "observable": "observable", "matched": "matched",
                    "completeness": "completeness", "degradation_rate": "degradation",
                    "exact_rate": "exact", "wrong": "wrong", "phantoms": "phantoms",
                    "unmatched_no_address": "no address", "lost_events": "lost"}  # fmt: skip


def scenario_tables(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    out = {}
    for scen, g in df.groupby("scenario", sort=False):
        g = g.assign(grpc_go=g["grpc_go"].fillna("—")).sort_values(
            ["pair", "attach", "grpc_go", "collector", "variant", "side", "run_id"])
        out[str(scen)] = g[list(SCENARIO_COLUMNS)].rename(columns=SCENARIO_COLUMNS)
    return dict(sorted(out.items()))


def breakdown(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows with any degradation, one count column per reason (or field)."""
    keys = ["run_id", "scenario", "pair", "attach", "collector", "variant", "side"]
    rows = []
    for _, x in df.iterrows():
        counts = x[column] or {}
        if any(counts.values()):
            rows.append({**{k: x[k] for k in keys}, "degraded": x["degraded"], **counts})
    if not rows:
        return pd.DataFrame(columns=[*keys, "degraded"])
    out = pd.DataFrame(rows)
    extra = sorted(c for c in out.columns if c not in keys and c != "degraded")
    out[extra] = out[extra].fillna(0).astype(int)
    return out[[*keys, "degraded", *extra]].sort_values(keys)


def reason_totals(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Counts summed per scenario, attach, collector and variant over sides and runs."""
    keys = ["scenario", "attach", "collector", "variant"]
    acc: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    runs: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for _, x in df.iterrows():
        k = tuple(x[c] for c in keys)
        for name, n in (x[column] or {}).items():
            acc[k][name] += int(n)
        runs[k].add(x["run_id"])
    rows = [{**dict(zip(keys, k, strict=True)), **v, "runs": len(runs[k])}
            for k, v in acc.items() if any(v.values())]  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=[*keys, "runs"])
    out = pd.DataFrame(rows)
    extra = sorted(c for c in out.columns if c not in (*keys, "runs"))
    out[extra] = out[extra].fillna(0).astype(int)
    return out[[*keys, "runs", *extra]].sort_values(keys)


def recovery_series(collector: str, variant: str) -> str | None:
    """The recovery curve a row belongs to; None for variants the curve leaves out."""
    if variant not in HPACK_VARIANTS:
        return None
    return f"{collector} {HPACK_VARIANTS[variant]}" if collector == "kprobe" else collector


def recovery_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Late-attach gRPC rows: share of required fields correct by call index on a connection
    (0 = the first call the collector saw), from each row's `recovery`
    ([index, required fields correct, required fields the truth has]); sides and runs summed."""
    acc: dict[tuple[str, str, int], list[Any]] = {}
    late = df[(df["attach"] == "late") & (df["protocol"] == "h2c-grpc")]
    for _, x in late.iterrows():
        series = recovery_series(x["collector"], x["variant"])
        if series is None or not isinstance(x["recovery"], list):
            continue
        for idx, correct, total in x["recovery"]:
            a = acc.setdefault((x["scenario"], series, int(idx)), [0, 0, set()])
            a[0] += int(correct)
            a[1] += int(total)
            a[2].add(x["run_id"])
    rows = [{"scenario": s, "series": v, "call_index": i, "correct": a[0], "total": a[1],
             "share": a[0] / a[1] if a[1] else None, "runs": sorted(a[2])}
            for (s, v, i), a in sorted(acc.items())]  # fmt: skip
    return pd.DataFrame(rows, columns=["scenario", "series", "call_index", "correct", "total",
                                       "share", "runs"])


def sweep_frame(runs: list[RunData]) -> pd.DataFrame:
    """Default-variant rows of each early-attach run replayed as if attached T s later
    (T = 0 is the real attach)."""
    out = []
    for r in runs:
        if not r.sweep or r.metrics is None:
            continue
        for t, m in [(0.0, r.metrics), *r.sweep.items()]:
            for row in m.get("rows") or []:
                if row.get("variant") != "default":
                    continue
                out.append({"run_id": r.run_id, "scenario": row["scenario"],
                            "pair": pair(row.get("client"), row.get("server")),
                            "collector": row["collector"], "side": row["side"],
                            "attach_at_s": t, "observable": row["observable"],
                            "matched": row["matched"], "completeness": row["completeness"],
                            "degradation_rate": row["degradation_rate"]})  # fmt: skip
    df = pd.DataFrame(out, columns=["run_id", "scenario", "pair", "collector", "side",
                                    "attach_at_s", "observable", "matched", "completeness",
                                    "degradation_rate"])  # fmt: skip
    # How far into the traffic the attach fell, comparable across runs whose clients start
    # at different offsets: the share of the run's exchanges already begun at attach.
    first = df.groupby(["run_id", "collector", "side"])["observable"].transform("max")
    df.insert(6, "started_before", (1 - df["observable"] / first).where(first > 0))
    return df


def truth_frame(runs: list[RunData]) -> pd.DataFrame:
    out = []
    for r in runs:
        if r.metrics is None:
            continue
        tvw = r.metrics.get("truth_vs_workload") or {}
        truth = r.metrics.get("truth") or {}
        cap = r.metrics.get("capture") or {}
        p = r.params
        out.append({"run": r.run_id, "scenario": r.manifest.get("scenario"),
                    "client→server": pair(p.get("client"), p.get("server")),
                    "attach": p.get("attach"), "workload": tvw.get("workload"),
                    "found in capture": tvw.get("matched"), "missing": tvw.get("missing"),
                    "extra": tvw.get("extra"), "truth exchanges": truth.get("exchanges"),
                    "packets": cap.get("packets_captured"),
                    "packets dropped": cap.get("packets_dropped"),
                    "tshark warnings": sum((truth.get("warnings") or {}).values())})  # fmt: skip
    return pd.DataFrame(out)


def machines_frame(runs: list[RunData]) -> pd.DataFrame:
    """One column per distinct machine/tool/commit combination, with the runs made on it."""
    groups: dict[str, list[RunData]] = defaultdict(list)
    for r in runs:
        groups[json.dumps(r.machine, sort_keys=True)].append(r)
    cols = {}
    for i, (key, rs) in enumerate(groups.items(), 1):
        m = json.loads(key)
        m["runs"] = f"{len(rs)} ({rs[0].run_id} … {rs[-1].run_id})" if len(rs) > 1 else rs[0].run_id
        cols[f"machine {i}"] = {k: ("—" if v is None else str(v)) for k, v in m.items()}
    return pd.DataFrame(cols).rename_axis("field").reset_index() if cols else pd.DataFrame()


def failed_frame(runs: list[RunData]) -> pd.DataFrame:
    out = []
    for r in runs:
        if r.metrics is None:
            p = r.params
            out.append({"run": r.run_id, "status": r.status, "scenario": r.manifest.get("scenario"),
                        "client→server": pair(p.get("client"), p.get("server")),
                        "attach": p.get("attach"), "grpc-go": p.get("grpc_version") or "—",
                        "why": r.problem or "—"})  # fmt: skip
    return pd.DataFrame(out)


def definitions(runs: list[RunData]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in runs:
        out.update((r.metrics or {}).get("definitions") or {})
    return dict(sorted(out.items()))
