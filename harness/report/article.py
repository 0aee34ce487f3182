"""The article's table transposed (criteria × approaches) and the key findings, from the data.

Each cell holds one measured value in one unit, the article's word, and whether they agree
by a rule the report states. Each finding is a sentence with its numbers; the numbers are
kept beside it (``values``) so a test can check them against the metrics they cite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness.collectors import registry
from harness.collectors.base import Collector
from harness.report import tables
from harness.report.bench import BenchView
from harness.report.ease import EaseView
from harness.report.load import RunData

# A share at least this high reads as the article's "strong"; below it as "weak".
STRONG = 0.9
# A late-attach gRPC degradation above this reads as "degrades"; at or below, "complete".
DEGRADES = 0.01
# The workload the overhead row and finding cite: both collectors measured on it.
OVERHEAD_PREFERRED = ("grpc-unary/go2go", "grpc-unary/go2py")

# Section anchors the cells and findings link to (build.py names its sections with them).
A_FINDINGS, A_ARTICLE, A_OVERHEAD = "findings", "article-table", "overhead"
A_COVERAGE, A_STABILITY, A_DEGRADATION = "coverage", "stability", "degradation"
A_EASE, A_TRUTH, A_SCENARIOS, A_PROVENANCE = "ease", "ground-truth", "scenarios", "provenance"
A_MACHINE, A_RECOVERY = "machine", "recovery"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def num(n: float) -> str:
    return f"{n:,.0f}"


@dataclass
class Cell:
    article: str  # the article's word, "—" where it says nothing
    measured: str  # one value, one unit
    agrees: bool | None  # None: no verdict to check, or not measured
    detail: str  # anchor of the section behind it
    value: float | None = None
    runs: list[str] = field(default_factory=list)

    def text(self) -> str:
        """`article word · **measured** · verdict · details`, short enough for one Markdown
        table row of both approaches to stay under 400 characters."""
        verdict = {True: "✓ agrees", False: "✗ disagrees", None: ""}[self.agrees]
        parts = [f"article: {self.article}", f"**{self.measured}**"]
        if verdict:
            parts.append(verdict)
        parts.append(f"[details](#{self.detail})")
        return " · ".join(parts)


@dataclass
class Criterion:
    name: str
    rule: str  # how "measured" is computed and when it agrees
    cells: dict[str, Cell]


@dataclass
class ArticleTable:
    criteria: list[Criterion]

    def frame(self) -> pd.DataFrame:
        rows = [{"criterion": c.name, **{tables.APPROACHES[k]: v.text()
                                         for k, v in c.cells.items()}}
                for c in self.criteria]  # fmt: skip
        return pd.DataFrame(rows)

    def to_json(self) -> dict[str, Any]:
        return {c.name: {"rule": c.rule, **{k: {"article": v.article, "measured": v.measured,
                                                  "agrees": v.agrees, "value": v.value,
                                                  "runs": v.runs}
                                              for k, v in c.cells.items()}}
                for c in self.criteria}  # fmt: skip


@dataclass
class Finding:
    text: str
    anchor: str
    values: dict[str, float | int | None]

    def line(self) -> str:
        return f"{self.text} [more](#{self.anchor})"


@dataclass
class Facts:
    """What both the table and the findings read, computed once."""

    runs: list[RunData]
    df: pd.DataFrame
    cov_early: pd.DataFrame
    cov_all: pd.DataFrame
    stab: pd.DataFrame
    langs: pd.DataFrame
    stacks: pd.DataFrame

    @classmethod
    def of(cls, runs: list[RunData], df: pd.DataFrame) -> Facts:
        early = tables.side_coverage(runs, df)
        every = tables.side_coverage(runs, df, ("early", "late"))
        grpc = early[early["protocol"].map(tables.family) == "gRPC"]
        return cls(runs, df, early, every, tables.stability(runs, early),
                   tables.coverage_table(grpc, ["side", "lang"]),
                   tables.coverage_table(early, ["protocol", "lang"]))  # fmt: skip

    def defaults(self, collector: str) -> pd.DataFrame:
        d = self.df
        return d[(d["variant"] == "default") & d["attach"].isin(["early", "late"])
                 & (d["collector"] == collector)]  # fmt: skip

    def late_grpc(self, collector: str, lang: str | None = None) -> pd.DataFrame:
        d = self.defaults(collector)
        # cleartext only: the HPACK question is about bytes a collector can read; over TLS
        # the grpc-go probes' losses are addresses (the TLS section says so)
        d = d[(d["attach"] == "late") & (d["protocol"].map(tables.family) == "gRPC")
              & ~d["protocol"].map(is_tls).astype(bool)]  # fmt: skip
        return d if lang is None else d[d["lang"] == lang]

    def collectors(self) -> list[str]:
        seen = {c for r in self.runs for c in (r.params.get("collectors") or [])}
        return [c for c in tables.APPROACHES if c in seen or c in set(self.df["collector"])]


def is_tls(protocol: str | None) -> bool:
    """TLS rows (tls-http/1.1, tls-h2-grpc): the kernel side is blind there by design."""
    return (protocol or "").startswith("tls-")


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _share_cell(t: pd.DataFrame, flag: str, what: str, verb: str, article: str,
                detail: str) -> Cell:
    if t.empty:
        return Cell(article, "not measured (no early-attach run)", None, detail)
    ok = int(t[flag].sum())
    runs = sorted({i for ids in t["runs"] for i in ids})
    v = ok / len(t)
    agrees = (v >= STRONG) == (article == "strong") if article in ("strong", "weak") else None
    return Cell(article, f"{ok}/{len(t)} {what} {verb} ({pct(v)})", agrees, detail, v, runs)


def article_table(f: Facts, bench: BenchView, ease: EaseView) -> ArticleTable:
    crit: list[Criterion] = []
    colls = list(tables.APPROACHES)

    def cells(fn: Any) -> dict[str, Cell]:
        return {c: fn(c) for c in colls}

    def stab(c: str) -> Cell:
        s = f.stab[f.stab["collector"] == c]
        return _share_cell(s, "works", "grpc-go targets", "work", tables.ARTICLE[c][
            "stability"], A_STABILITY)

    crit.append(Criterion(
        "stability",
        f"grpc-go targets (version, build) on which the probes attached and decoded, early "
        f"attach; 'strong' agrees at ≥ {STRONG:.0%}",
        cells(stab)))  # fmt: skip

    def lang(c: str) -> Cell:
        t = f.langs[f.langs["collector"] == c]
        return _share_cell(t, "covered", "gRPC language sides", "covered",
                           tables.ARTICLE[c]["multi-language"], A_COVERAGE)

    crit.append(Criterion(
        "multi-language",
        f"(language, side) pairs of gRPC runs with mean completeness ≥ {tables.COVERED:.0%}; "
        f"'strong' agrees at ≥ {STRONG:.0%}", cells(lang)))  # fmt: skip

    def compat(c: str) -> Cell:
        t = f.stacks[f.stacks["collector"] == c]
        return _share_cell(t, "covered", "language · protocol stacks", "covered",
                           tables.ARTICLE[c]["compatibility"], A_COVERAGE)

    crit.append(Criterion(
        "compatibility", "(language, protocol) stacks of all scenarios, covered as above",
        cells(compat)))  # fmt: skip

    loc = {c: ease.total_lines(c) for c in colls}

    def easy(c: str) -> Cell:
        art = tables.ARTICLE[c]["ease of building"]
        n = loc.get(c)
        if not n:
            return Cell(art, "not measured (source not found)", None, A_EASE)
        others = [v for k, v in loc.items() if k != c and v]
        agrees = None
        if others:
            more = n > max(others)
            agrees = more if art == "complex" else not more
        return Cell(art, f"{num(n)} lines of BPF C and decoding code", agrees, A_EASE, float(n))

    crit.append(Criterion(
        "ease of building",
        "non-blank, non-comment lines of the collector's BPF C and of the code that turns "
        "its records into exchanges; 'complex' agrees when it is the larger",
        cells(easy)))  # fmt: skip

    def complete(c: str) -> Cell:
        art = tables.ARTICLE[c]["data completeness"]
        d = f.late_grpc(c)
        # only sides the collector covers: a side it cannot see is the multi-language row
        d = d[d["matched"].fillna(0) > 0]
        p = tables.pooled(d, "degraded", "matched")
        if p.rate is None:
            return Cell(art, "not measured (no late-attach gRPC side matched)", None,
                        A_DEGRADATION)
        agrees = (p.rate > DEGRADES) == (art == "degrades")
        return Cell(art, f"{pct(p.rate)} of {num(p.den)} gRPC calls degraded after a late "
                    "attach", agrees, A_DEGRADATION, p.rate, p.runs)  # fmt: skip

    crit.append(Criterion(
        "data completeness",
        "matched gRPC calls with at least one required field missing or wrong, late attach, "
        f"sides the collector covers; 'degrades' agrees above {DEGRADES:.0%}",
        cells(complete)))  # fmt: skip

    def seen(c: str) -> Cell:
        d = f.defaults(c)
        d = d[d["matched"].fillna(0) > 0]
        p = tables.pooled(d, "matched", "observable")
        if p.rate is None:
            return Cell("—", "not measured", None, A_SCENARIOS)
        return Cell("—", f"{pct(p.rate)} of {num(p.den)} observable exchanges matched",
                    None, A_SCENARIOS, p.rate, p.runs)  # fmt: skip

    crit.append(Criterion(
        "exchanges seen", "matched / observable over the sides the collector covers, all "
        "scenarios and attach times (the article gives no verdict)", cells(seen)))  # fmt: skip

    wl = bench.common_workload(OVERHEAD_PREFERRED)

    def over(c: str) -> Cell:
        cmp = bench.comparison(wl, c) if wl else None
        if wl is None or cmp is None or cmp.get("throughput_ratio") is None:
            why = bench.not_measured_reason(wl, c) if wl else "no overhead results"
            return Cell("—", f"not measured ({why})", None, A_OVERHEAD)
        return Cell("—", f"{cmp['throughput_ratio']:.2f}× throughput of no collector on "
                    f"{bench.label(wl)}", None, A_OVERHEAD, cmp["throughput_ratio"])

    crit.append(Criterion(
        "overhead", "throughput with the collector / without, same workload and session "
        "(the article gives no verdict)", cells(over)))  # fmt: skip
    return ArticleTable(crit)


# -- key findings -----------------------------------------------------------------------------


def _http1_finding(f: Facts, kern: Collector, out: list[Finding]) -> None:
    """HTTP/1 on the kernel side, and what its sock_diag lookup is worth."""
    kn = kern.name
    d = f.defaults(kn)
    h1 = d[(d["protocol"].map(tables.family) == "HTTP/1") & ~d["protocol"].map(is_tls).astype(bool)]
    c, g = tables.pooled(h1, "matched", "observable"), tables.pooled(h1, "degraded", "matched")
    if c.rate is None:
        return
    text = (f"On HTTP/1.0 and HTTP/1.1 the {kern.called} matched {pct(c.rate)} of "
            f"{num(c.den)} exchanges, {pct(g.rate)} degraded, late attach included")
    vals: dict[str, float | int | None] = {
        f"{kn}_http1_completeness": c.rate, f"{kn}_http1_observable": c.den,
        f"{kn}_http1_degraded": g.rate}
    df = f.df
    ns = df[(df["collector"] == kn) & (df["variant"] == "no-sockdiag")
            & (df["scenario"] == "http11-keepalive") & (df["attach"] == "late")]
    n = tables.pooled(ns, "degraded", "matched")
    if n.rate is not None:
        text += (f"; replayed without the sock_diag address lookup, {pct(n.rate)} of late "
                 "keep-alive exchanges lack an address")
        vals[f"{kn}_http11_late_nosockdiag_degraded"] = n.rate
    out.append(Finding(text + ".", A_SCENARIOS, vals))


def findings(f: Facts, bench: BenchView) -> list[Finding]:
    out: list[Finding] = []
    colls = f.collectors()
    kern, upr = registry.approach(registry.KERNEL_SIDE), registry.approach(registry.UPROBE)
    vals: dict[str, float | int | None]
    # 1. late-attach gRPC on the kernel side against the uprobe
    k = tables.pooled(f.late_grpc(kern.name), "degraded", "matched") if kern else None
    if kern and k and k.rate is not None:
        kn = kern.name
        kw = int(f.late_grpc(kn)["wrong"].fillna(0).sum())
        text = (f"After a late attach the {kern.called} lost at least one gRPC header field in "
                f"{pct(k.rate)} of {num(k.den)} calls ({plural(kw, 'wrong value')})")
        vals = {f"{kn}_late_grpc_degraded": k.rate, f"{kn}_late_grpc_matched": k.den,
                f"{kn}_late_grpc_wrong": kw}
        if upr and upr.name in colls:
            un = upr.name
            ug = tables.pooled(f.late_grpc(un, "go"), "degraded", "matched")
            up = f.cov_all[(f.cov_all["collector"] == un) & (f.cov_all["lang"] == "py")
                           & (f.cov_all["protocol"].map(tables.family) == "gRPC")]
            if ug.rate is not None:
                text += f"; the {upr.called} lost {pct(ug.rate)} of {num(ug.den)} on Go sides"
                vals[f"{un}_late_grpc_go_degraded"] = ug.rate
            if len(up):
                py = float(up["completeness"].mean())
                text += f" and matched {pct(py)} of Python sides' calls"
                vals[f"{un}_python_completeness"] = py
        out.append(Finding(text + ".", A_DEGRADATION, vals))
    # 2. HTTP/1 on the kernel side, and what the sock_diag lookup is worth
    if kern:
        _http1_finding(f, kern, out)
    # 3. language coverage
    parts, vals = [], {}
    for coll in colls:
        t = f.langs[f.langs["collector"] == coll]
        if t.empty:
            continue
        ok = t[t["covered"]]
        miss = t[~t["covered"]]
        s = f"the {registry.get(coll).called} covered {len(ok)} of " \
            f"{len(t)} gRPC language sides"
        if len(miss):
            s += " (not " + ", ".join(f"{tables.lang_name(x.lang)} {x.side}"
                                      for x in miss.itertuples()) + ")"
        parts.append(s)
        vals[f"{coll}_grpc_sides_covered"] = len(ok)
        vals[f"{coll}_grpc_sides"] = len(t)
    if parts:
        text = "; ".join(parts)
        out.append(Finding(text[0].upper() + text[1:] + ".", A_COVERAGE, vals))
    # 4. stability across grpc-go targets
    s = f.stab[f.stab["collector"] == upr.name] if upr else f.stab.iloc[:0]
    if upr and len(s):
        ok = s[s["works"]]
        text = (f"The {upr.called}'s probes attached and decoded on {len(ok)} of {len(s)} "
                f"grpc-go targets ({', '.join(map(str, ok['grpc_go'])) or 'none'})")
        bad = s[~s["works"]]
        if len(bad):
            text += "; not on " + ", ".join(map(str, bad["grpc_go"]))
        out.append(Finding(text + ".", A_STABILITY, {f"{upr.name}_targets_working": len(ok),
                                                     f"{upr.name}_targets": len(s)}))
    # 5. overhead, same workload
    wl = bench.common_workload(OVERHEAD_PREFERRED)
    if wl:
        parts, vals, missing = [], {}, ""
        for coll, name in ((c.name, f"the {c.called}") for c in registry.compared()):
            cmp = bench.comparison(wl, coll)
            if cmp and cmp.get("throughput_ratio") is not None:
                ci = cmp.get("ci95") or [None, None]
                ci_s = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""
                if cmp.get("significant") is False:
                    ci_s += " (not significant)"
                parts.append(f"{cmp['throughput_ratio']:.2f}×{ci_s} with {name}")
                vals[f"{coll}_throughput_ratio"] = cmp["throughput_ratio"]
            elif coll in colls:
                missing = f"{name} was not measured ({bench.not_measured_reason(wl, coll)})"
        if parts:
            text = (f"On the same workload ({bench.label(wl)}, closed loop on loopback) "
                    f"throughput was {' and '.join(parts)}, as a share of no collector's")
            if missing:
                text += f"; {missing}"
            tc = bench.trap_added()
            if tc:
                text += (f"; an empty uprobe adds {num(tc[1])} ns per hit, an empty syscall "
                         f"tracepoint {num(tc[0])} ns")
                vals["tracepoint_added_ns"], vals["uprobe_added_ns"] = tc
            out.append(Finding(text + ".", A_OVERHEAD, vals))
    elif bench.missing_reason():
        out.append(Finding(f"Overhead was not measured for this report: "
                           f"{bench.missing_reason()}.", A_OVERHEAD, {}))
    # 6. the truth and the counters that must stay zero
    done = [r.metrics for r in f.runs if r.metrics is not None]
    if done:
        wl_n = sum(int((m.get("truth_vs_workload") or {}).get("workload") or 0) for m in done)
        found = sum(int((m.get("truth_vs_workload") or {}).get("matched") or 0) for m in done)
        wrong = int(f.df["wrong"].fillna(0).sum())
        phantoms = int(f.df[f.df["variant"] == "default"]["phantoms"].fillna(0).sum())
        d0 = f.df[f.df["variant"] == "default"]
        # a collector's lost events repeat on each side's row: count them once per run
        lost = int(d0.groupby(["run_id", "collector"])["lost_events"].max().fillna(0).sum())
        text = (f"Across {plural(len(done), 'run')}: {plural(wrong, 'wrong value')}, "
                f"{plural(phantoms, 'phantom exchange')} and {plural(lost, 'lost event')}")
        vals = {"runs": len(done), "wrong": wrong, "phantoms": phantoms, "lost_events": lost}
        if wl_n:
            text += (f"; Wireshark found {pct(found / wl_n)} of the {num(wl_n)} exchanges "
                     "the clients logged")
            vals["truth_found"] = found / wl_n
        failed = len(f.runs) - len(done)
        if failed:
            text += f" ({plural(failed, 'run')} without metrics)"
        out.append(Finding(text + ".", A_TRUTH, vals))
    return out
