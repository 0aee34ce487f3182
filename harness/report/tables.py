"""The report's pandas tables, computed from loaded runs; every row keeps its run ids."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.collectors import registry
from harness.report.load import RunData

# The approaches the article compares (their collectors say so when they register), with
# its verdicts quoted beside the measured values (SEED.md).
APPROACHES = {c.name: c.label for c in registry.compared()}
ARTICLE = {c.name: c.article for c in registry.compared()}
# collectors whose attach points --kernel-hooks chooses: their rows say which they used
HOOKED = tuple(c.name for c in registry.collectors() if c.kernel_hooks)
# A side counts as covered by a collector when it matched at least this share of the
# observable exchanges; below it the collector does not really see that side.
COVERED = 0.5
# A grpc-go version counts as working for a collector when an early-attach run of it had
# a side at least this complete and at most this degraded.
WORKS_COMPLETENESS = 0.5
WORKS_DEGRADATION = 0.5
REASON_NOTE = (
    "Counts are field occurrences: one degraded exchange with three unknown fields counts "
    "three times."
)


def pair(client: str | None, server: str | None) -> str:
    return f"{client}→{server}"


def grpc_go_of(protocol: str | None, params: dict[str, Any], row: dict[str, Any]) -> str | None:
    """The grpc-go version a row's Go side ran; None when no Go gRPC code was involved."""
    if "grpc" not in (protocol or "") or "go" not in (params.get("client"),
                                                               params.get("server")):
        return None
    return row.get("grpc_go") or params.get("grpc_version")  # what the run recorded, or None


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
            d["grpc_go"] = target_of(p, grpc_go_of(row.get("protocol"), p, row))
            d["lang"] = row.get(row.get("side", ""), None)  # the language of the observed side
            d["machine"], d["kernel"] = r.machine_label, r.machine.get("kernel")
            d["kernel_hooks"] = r.kernel_hooks if row.get("collector") in HOOKED else None
            out.append(d)
    cols = ["run_id", "scenario", "protocol", "pair", "client", "server", "attach", "grpc_go",
            "collector", "side", "lang", "variant", "observable", "matched", "completeness",
            "degraded", "degradation_rate", "exact_rate", "wrong", "phantoms", "pre_attach",
            "unmatched_no_address", "lost_events", "truncated_payloads", "degraded_by_field",
            "degraded_by_reason", "recovery", "machine", "kernel", "kernel_hooks"]  # fmt: skip
    df = pd.DataFrame(out)
    for c in cols:
        if c not in df:
            df[c] = None
    # keys newer metrics rows carry (e.g. failures by reason) stay, after the known ones
    return df[cols + [c for c in df.columns if c not in cols]]


def _defaults(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of the collectors as they ship (variant default) and of real attaches only."""
    return df[(df["variant"] == "default") & df["attach"].isin(["early", "late"])]


# -- coverage and stability ------------------------------------------------------------------

# Run parameters that make a build of the same target version a different target (a
# stripped binary, another build mode); they join the version in the stability column.
BUILD_PARAMS = ("build", "binary", "stripped", "strip")


def target_of(params: dict[str, Any], version: str | None) -> str | None:
    """The stability column's target: the grpc-go version plus any build variant."""
    if version is None:
        return None
    extra = []
    for k in BUILD_PARAMS:
        v = params.get(k)
        if v in (None, False, "", "default"):
            continue
        extra.append(k if v is True else str(v))
    return " ".join([version, *extra])


def side_coverage(runs: list[RunData], df: pd.DataFrame,
                  attaches: tuple[str, ...] = ("early",)) -> pd.DataFrame:
    """Per run (of the given attach times), side and collector: the completeness (0 when the
    collector was asked for but reported nothing for that side)."""
    out = []
    d = _defaults(df)
    for r in runs:
        if r.metrics is None or r.params.get("attach") not in attaches:
            continue
        p = r.params
        mine = d[d["run_id"] == r.run_id]
        procs = r.manifest.get("processes") or []
        for coll in p.get("collectors") or []:
            # what the runner knew this collector could not see of each side's stack
            known = registry.known(coll)
            key = known.process_gap if known else None
            gaps = {pr.get("role"): pr.get(key) for pr in procs} if key else {}
            for side in ("client", "server"):
                hit = mine[(mine["collector"] == coll) & (mine["side"] == side)]
                if len(hit) and hit["completeness"].isna().all():
                    continue  # nothing observable on this side: says nothing either way
                comp = float(hit["completeness"].fillna(0).mean()) if len(hit) else 0.0
                deg = hit["degradation_rate"].dropna()
                out.append({"run_id": r.run_id, "collector": coll, "side": side,
                            "lang": p.get(side), "protocol": p.get("protocol"),
                            "grpc_go": target_of(p, grpc_go_of(p.get("protocol"), p, {})),
                            "completeness": comp, "attach": p.get("attach"),
                            "scenario": p.get("scenario"),
                            "degradation_rate": float(deg.mean()) if len(deg) else None,
                            "gap": gaps.get(side),
                            })  # fmt: skip
    return pd.DataFrame(out, columns=["run_id", "collector", "side", "lang", "protocol",
                                      "grpc_go", "completeness", "attach", "scenario",
                                      "degradation_rate", "gap"])


def coverage_table(cov: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean completeness per collector and keys; where not covered, the stated reason (the
    stack's uprobe gap, e.g. no grpc-go linked), so the report never gives a bare 0%."""
    rows = []
    for k, g in cov.groupby(["collector", *keys], dropna=False):
        mean = float(g["completeness"].mean())
        gaps = sorted({str(x) for x in g.get("gap", pd.Series(dtype=object)).dropna()})
        rows.append({"collector": k[0], **dict(zip(keys, k[1:], strict=True)),
                     "mean_completeness": mean, "covered": mean >= COVERED,
                     "why_not": "; ".join(gaps) if gaps and mean < COVERED else None,
                     "runs": sorted(set(g["run_id"]))})  # fmt: skip
    return pd.DataFrame(rows, columns=["collector", *keys, "mean_completeness", "covered",
                                       "why_not", "runs"])


def stability(runs: list[RunData], cov: pd.DataFrame) -> pd.DataFrame:
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
        ver = target_of(p, grpc_go_of(p.get("protocol"), p, {}))
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


def family(protocol: str | None) -> str:
    """gRPC, HTTP/2 (plain h2/h2c) or HTTP/1, TLS or not."""
    p = (protocol or "").lower()
    return "gRPC" if "grpc" in p else "HTTP/2" if "h2" in p else "HTTP/1"


def recorder_cpu(runs: list[RunData]) -> pd.DataFrame:
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


# -- per scenario, degradation, truth, machines --------------------------------------------

SCENARIO_COLUMNS = {"run_id": "run", "pair": "client→server", "attach": "attach",
                    "grpc_go": "grpc-go", "collector": "collector", "side": "side",
                    "variant": "variant", "kernel_hooks": "kernel hooks",
                    "observable": "observable", "matched": "matched",
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


KNOWN_DICT_COLUMNS = ("degraded_by_field", "degraded_by_reason")


def extra_count_columns(df: pd.DataFrame) -> list[str]:
    """Dict-of-counts columns newer metrics rows add (shown per run, without code changes)."""
    return [c for c in df.columns if c not in KNOWN_DICT_COLUMNS
            and df[c].map(lambda v: isinstance(v, dict) and bool(v)).any()]  # fmt: skip


def breakdown_long(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """A dict-of-counts column as one row per run, side and key: however many keys a
    newer row adds (e.g. field:reason pairs), the table stays narrow."""
    keys = ["run_id", "pair", "collector", "variant", "side"]
    rows = [{**{k: x[k] for k in keys}, "what": what, "count": int(n)}
            for _, x in df.iterrows() if isinstance(x[column], dict)
            for what, n in sorted(x[column].items()) if n]  # fmt: skip
    return pd.DataFrame(rows, columns=[*keys, "what", "count"])


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
    """The recovery curve a row belongs to (its collector's registration names them); None
    for variants the curves leave out. A collector no longer registered: its default."""
    c = registry.known(collector)
    if c is None:
        return collector if variant == "default" else None
    return c.series(variant)


def recovery_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Late-attach gRPC rows: share of required fields correct by call index on a connection
    (0 = the first call the collector saw), from each row's `recovery`
    ([index, required fields correct, required fields the truth has]); sides and runs summed."""
    acc: dict[tuple[str, str, int], list[Any]] = {}
    late = df[(df["attach"] == "late") & df["protocol"].map(family).isin(["gRPC", "HTTP/2"])]
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


# a cell on one machine: TLS and each grpc-go build are cells of their own (pooling a TLS
# run, 0% by design on the kernel side, into its plaintext twin made 85.7% of 100%)
KERNEL_KEYS = ["machine", "kernel", "kernel_hooks", "scenario", "protocol", "pair", "grpc_go",
               "attach", "side"]  # fmt: skip
CELL_KEYS = KERNEL_KEYS[3:]


def kernels_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The kernel side's fidelity per machine (host or guest kernel) and hook mode: one row
    per cell and side, summed over its runs on that machine only, never across machines."""
    k = df[df["collector"].isin(HOOKED) & (df["variant"] == "default")]
    out = []
    for key, g in k.groupby(KERNEL_KEYS, sort=True, dropna=False):
        obs, matched = int(g["observable"].sum()), int(g["matched"].sum())
        out.append({**dict(zip(KERNEL_KEYS, key, strict=True)), "runs": len(g),
                    "observable": obs, "matched": matched,
                    "completeness": matched / obs if obs else None,
                    "degraded": int(g["degraded"].fillna(0).sum()),
                    "wrong": int(g["wrong"].fillna(0).sum()),
                    "phantoms": int(g["phantoms"].fillna(0).sum()),
                    "lost": int(g["lost_events"].fillna(0).sum())})  # fmt: skip
    return pd.DataFrame(out)


def machine_order(label: str, guests: set[str]) -> tuple[bool, tuple[int, ...], str]:
    """Hosts first, then guests by kernel version (6.1 before 6.12)."""
    kernel = label.rsplit("kernel ", 1)[-1]
    return (label in guests, tuple(int(n) for n in re.findall(r"\d+", kernel)[:3]), label)


def kernels_wide(kf: pd.DataFrame, guests: set[str]) -> tuple[pd.DataFrame, int]:
    """The cells that ran on more than one machine or hook mode, one row each (per side),
    one column per machine and hook mode, hosts first: `matched/observable · degraded ·
    wrong · phantoms` (lost events and the number of runs when any). Nothing is pooled
    across columns. Also how many cells ran in one column only (a host's own matrix):
    those are left out."""
    if kf.empty:
        return pd.DataFrame(), 0
    # a column: role, kernel (the whole machine label if two machines share a kernel), mode
    kernels = kf.groupby("kernel")["machine"].nunique()
    name = {m: ("guest " if m in guests else "host ") + (
                str(k) if kernels.get(k, 0) == 1 else m)
            for m, k in zip(kf["machine"], kf["kernel"], strict=True)}  # fmt: skip
    kf = kf.assign(column=kf["machine"].map(name) + " · " + kf["kernel_hooks"].fillna("?"))
    keys = _present(kf, CELL_KEYS)
    groups = list(kf.groupby(keys, sort=True, dropna=False))
    # with no cell in two columns (one machine, one mode), every cell is shown
    alone = sum(g["column"].nunique() < 2 for _, g in groups)
    shown = [(k, g) for k, g in groups if g["column"].nunique() > 1] or groups
    order = sorted(kf["machine"].unique(), key=lambda m: machine_order(m, guests))
    columns = [f"{name[m]} · {h}" for m in order for h in ("tracepoints", "kprobes", "?")
               if f"{name[m]} · {h}" in set(kf["column"])]  # fmt: skip
    out = []
    for key, g in shown:
        row: dict[str, Any] = {k: ("—" if pd.isna(v) else v)
                               for k, v in zip(keys, key, strict=True)}  # fmt: skip
        by_col = {x.column: x for x in g.itertuples()}
        for c in columns:
            x = by_col.get(c)
            row[c] = "not run" if x is None else (
                f"{x.matched}/{x.observable} · {x.degraded} · {x.wrong} · {x.phantoms}"
                + (f" · {x.lost} lost" if x.lost else "")
                + (f" ({x.runs} runs)" if x.runs > 1 else ""))
        out.append(row)
    return pd.DataFrame(out), alone if len(shown) < len(groups) else 0


def _present(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys with a value somewhere (grpc-go is empty on every HTTP/1-only table)."""
    return [k for k in keys if df[k].notna().any()]


def hook_agreement(kf: pd.DataFrame) -> pd.DataFrame:
    """Per machine and cell, whether kprobes gave what the tracepoints gave (completeness,
    degraded, wrong, phantoms); only where both modes ran on that machine."""
    if kf.empty:
        return pd.DataFrame()
    cell = ["machine", *_present(kf, CELL_KEYS)]
    vals = ["completeness", "degraded", "wrong", "phantoms"]
    out: list[dict[str, Any]] = []
    for key, g in kf.groupby(cell, sort=True, dropna=False):
        modes = {m: x.iloc[0] for m, x in g.groupby("kernel_hooks")}
        if {"tracepoints", "kprobes"} <= modes.keys():
            tp, kp = modes["tracepoints"], modes["kprobes"]
            same = all(tp[v] == kp[v] for v in vals)
            out.append({**{k: ("—" if pd.isna(v) else v) for k, v in zip(cell, key, strict=True)},
                        **{f"{v} tp/kp": f"{_fmt(tp[v])} / {_fmt(kp[v])}" for v in vals},
                        "same": "yes" if same else "NO"})  # fmt: skip
    return pd.DataFrame(out)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def machines_frame(runs: list[RunData]) -> pd.DataFrame:
    """One column per distinct machine/tool/commit combination, with the runs made on it."""
    groups: dict[str, list[RunData]] = defaultdict(list)
    for r in runs:
        groups[json.dumps(r.machine, sort_keys=True)].append(r)
    cols = {}
    for i, (key, rs) in enumerate(groups.items(), 1):
        m = json.loads(key)
        if m.get("grpc_go") is None:
            m.pop("grpc_go", None)  # the versions that ran are in the targets table
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


# -- pooled rates, run patterns, plot frames ------------------------------------------------


@dataclass
class Pooled:
    """A rate pooled over rows (sum of numerators / sum of denominators), with its base."""

    num: int
    den: int
    sides: int
    runs: list[str]

    @property
    def rate(self) -> float | None:
        return self.num / self.den if self.den else None


def pooled(d: pd.DataFrame, num: str, den: str) -> Pooled:
    d = d[d[den].notna()]
    return Pooled(int(d[num].fillna(0).sum()), int(d[den].sum()), len(d),
                  sorted(set(d["run_id"])))  # fmt: skip


def _short_list(items: list[str], limit: int = 6) -> str:
    items = sorted(set(items))
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def run_pattern(runs: list[RunData], ids: list[str]) -> str:
    """A run set in one short line: count, then the scenarios, pairs, attach times and
    grpc-go targets it spans (instead of listing the ids)."""
    chosen = [r for r in runs if r.run_id in set(ids)]
    if not chosen:
        return "no runs"
    ps = [r.params for r in chosen]
    parts = [_short_list([str(p.get("scenario") or r.manifest.get("scenario"))
                          for p, r in zip(ps, chosen, strict=True)]),
             _short_list([pair(p.get("client"), p.get("server")) for p in ps]),
             _short_list([str(p.get("attach")) for p in ps])]  # fmt: skip
    vers = [t for p in ps if (t := target_of(p, grpc_go_of(p.get("protocol"), p, {})))]
    if vers:
        parts.append("grpc-go " + _short_list(vers))
    return f"{len(chosen)} runs: " + "; ".join(parts)


def lang_name(code: str | None) -> str:
    return {"py": "Python", "go": "Go", "node": "Node", "java": "Java", "rust": "Rust",
            "go-nethttp": "Go net/http"}.get(str(code), str(code))  # fmt: skip


def coverage_matrix(cov: pd.DataFrame, runs_collectors: set[str]) -> pd.DataFrame:
    """Collector × (language, protocol): mean completeness over early-attach sides; NaN where
    no run put that stack in front of that collector (not applicable, not zero)."""
    if cov.empty:
        return pd.DataFrame()
    cov = cov.assign(stack=cov["lang"].map(lang_name) + " · " + cov["protocol"].astype(str))
    m = cov.pivot_table(index="collector", columns="stack", values="completeness",
                        aggfunc="mean")  # fmt: skip
    n = cov.pivot_table(index="collector", columns="stack", values="run_id", aggfunc="count")
    m = m.reindex(sorted(runs_collectors | set(m.index)))
    return pd.concat({"completeness": m, "n": n.reindex(m.index)}, axis=1)


def field_heatmap(df: pd.DataFrame) -> pd.DataFrame:
    """Share of matched exchanges with each field degraded, per collector, variant, protocol
    family and attach (columns) and field (rows); only groups with degraded fields."""
    acc: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    matched: dict[str, int] = defaultdict(int)
    for _, x in df.iterrows():
        if not x["matched"]:
            continue
        variant = "" if x["variant"] == "default" else f" {x['variant']}"  # the usual one unsaid
        col = f"{x['collector']}{variant}\n{family(x['protocol'])} {x['attach']}"
        matched[col] += int(x["matched"])
        for f, n in (x["degraded_by_field"] or {}).items():
            acc[col][f] += int(n)
    cols = sorted(c for c in acc if any(acc[c].values()))
    if not cols:
        return pd.DataFrame()
    fields = sorted({f for c in cols for f, n in acc[c].items() if n})
    return pd.DataFrame({f"{c} (n={matched[c]:,})": [acc[c].get(f, 0) / matched[c]
                                                     for f in fields] for c in cols},
                        index=fields)  # fmt: skip


def reasons_per_100(df: pd.DataFrame) -> pd.DataFrame:
    """Degradation reasons per 100 matched exchanges, per scenario, attach, collector and
    variant (runs of different sizes become comparable)."""
    keys = ["scenario", "attach", "collector", "variant"]
    acc: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    matched: dict[tuple[Any, ...], int] = defaultdict(int)
    for _, x in df.iterrows():
        k = tuple(x[c] for c in keys)
        matched[k] += int(x["matched"] or 0)
        for name, n in (x["degraded_by_reason"] or {}).items():
            acc[k][name] += int(n)
    rows = [{**dict(zip(keys, k, strict=True)), "matched": matched[k],
             **{r: 100 * n / matched[k] for r, n in v.items()}}
            for k, v in acc.items() if any(v.values()) and matched[k]]  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=[*keys, "matched"])
    out = pd.DataFrame(rows)
    extra = sorted(c for c in out.columns if c not in (*keys, "matched"))
    out[extra] = out[extra].fillna(0.0)
    return out[[*keys, "matched", *extra]].sort_values(keys)


def targets_frame(runs: list[RunData]) -> pd.DataFrame:
    """Every target that ran: language, role, version (grpc-go, Go, Python), and runs."""
    acc: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for r in runs:
        p = r.params
        for role in ("client", "server"):
            lang = p.get(role)
            if not lang:
                continue
            ver = "—"
            if lang == "go":
                g = grpc_go_of(p.get("protocol"), p, {})
                ver = f"grpc-go {target_of(p, g)}" if g else "net/http"
                ver += f", {r.machine.get('go') or 'go ?'}"
            elif lang == "py":
                ver = f"Python {r.machine.get('python') or '?'}"
            acc[(lang_name(lang), role, ver)].add(r.run_id)
        for _b, st in _binaries_read(r):
            if st.get("grpc_version"):
                acc[("Go (read from binary)", "probed", f"grpc-go {st['grpc_version']}, "
                     f"{st.get('go_version') or '?'}")].add(r.run_id)
    rows = [{"language": k[0], "role": k[1], "version": k[2], "runs": len(v)}
            for k, v in sorted(acc.items())]  # fmt: skip
    return pd.DataFrame(rows, columns=["language", "role", "version", "runs"])


def _binaries_read(r: RunData) -> list[tuple[str, dict[str, Any]]]:
    """The binaries a collector read its target's versions from (its stats' ``binaries``)."""
    out = []
    for st in (r.manifest.get("collectors") or {}).values():
        bins = st.get("binaries") if isinstance(st, dict) else None
        if isinstance(bins, dict):
            out += [(b, v) for b, v in bins.items() if isinstance(v, dict)]
    return out
