"""The overhead results file (benchmarks/bench_overhead.py's overhead.json), read defensively.

Only same-workload comparisons are shown: every ratio is against the baseline (no
collector) measured in the same session on the same workload, and names that workload.
Keys this module does not know (newer bench versions: the decomposition against the
floor, fixed-rate CPU, capture-budget sweeps) are shown generically, never dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.collectors import registry

CONFIG_LABEL = {**{c.name: c.called for c in registry.collectors()}, "both": "both",
                "kprobe-record": "kernel side's floor: one record per call",
                "kprobe-filter": "kernel side's floor: filter only"}  # fmt: skip
# Per-config keys shown in the ratio table or deliberately left out (raw samples, the
# per-metric comparison objects the table already summarises).
KNOWN_CONFIG_KEYS = re.compile(
    r"^(throughput|p50_ms|p99_ms)(_samples)?$|_ratio$|_ci95$|_p$|_comparison$|^ci95$|^p$|"
    r"^significant$|^rounds$|^not_measured$|^collectors$|^collector_cpu_user_s_per_1k$|"
    r"^lost_events_all_workloads$"
)
KNOWN_TOP = {"version", "kind", "started_utc", "finished_utc", "machine", "settings", "summary",
             "workloads", "bpf_run_time", "collectors", "trap_cost", "warnings",
             "origin", "decomposition", "fixed_rate", "floor_builds"}  # fmt: skip
KNOWN_WORKLOAD = {"scenario", "client", "server", "exchanges", "rounds", "order",
                  "uprobe_probed_binaries", "configs", "bpf_run_time", "fixed_rate"}  # fmt: skip
# The decomposition against the floor (bench schema 2), column by column: key, header, format.
DECOMPOSITION = (
    ("hits_per_exchange", "hits per exchange", "{:.1f}"),
    ("bare_trap_ns", "bare trap, ns/hit", "{:,.0f}"),
    ("floor_ns_per_exchange", "floor: hits × trap, ns/exchange", "{:,.0f}"),
    ("bpf_ns_per_exchange", "our BPF, ns/exchange", "{:,.0f}"),
    ("bpf_ns_per_exchange_per_side", "our BPF, ns/exchange per side", "{:,.0f}"),
    ("bpf_per_hit_over_trap", "BPF per hit / trap", "{:.1f}×"),
    ("cpu_ms_per_1k", "collector CPU, ms per 1k", "{:,.0f}"),
    ("event_bytes_per_exchange", "bytes recorded/exchange", "{:,.0f}"),
    ("context_switches_per_1k", "wake-ups per 1k", "{:,.0f}"),
    ("predicted_ratio_floor", "ratio the floor predicts", "{:.2f}×"),
    ("predicted_ratio_all", "ratio floor+BPF+CPU predict", "{:.2f}×"),
    ("throughput_ratio", "ratio measured", "{:.2f}×"),
    ("fixed_rate_core_pct", "% of a core at fixed rate", "{:.1f}%"),
    ("fixed_rate_process_pct", "of which the recorder process", "{:.2f}%"),
    ("fixed_rate_idle_process_pct", "recorder attached, idle", "{:.2f}%"),
)


# The kernel side's floor builds as configurations of the bench's rounds
FLOOR_CONFIGS = {"kprobe-record", "kprobe-filter"}
# ... and as the floor table names them (recorder --floor)
FLOOR_BUILD_LABEL = {
    "filter": "hooks + target filter only",
    "record": "+ one record of ≤ 255 B per call",
    "collector": "the collector (+ framing)",
}
FLOOR_COLUMNS = (
    ("p99_ratio", "p99 ratio", "{:.2f}×"),
    ("bpf_ns_per_exchange_per_side", "BPF, ns/exchange per side", "{:,.0f}"),
    ("bpf_ns_per_hit", "BPF, ns/hit", "{:,.0f}"),
    ("fixed_rate_core_pct", "% of a core at fixed rate", "{:.2f}%"),
    ("fixed_rate_bpf_pct", "of which BPF", "{:.2f}%"),
)


def workload_label(key: str) -> str:
    """`grpc-unary/go2py` -> `grpc-unary go→py`."""
    scen, _, pair = key.partition("/")
    return f"{scen} {pair.replace('2', '→', 1)}" if pair else key


def unit_of(key: str) -> str:
    """A unit from a key's name, for keys this report does not know yet."""
    for suffix, unit in (("_ns", "ns"), ("_us", "µs"), ("_ms", "ms"), ("_s", "s"),
                         ("_pct", "%"), ("_percent", "%"), ("_ratio", "×"),
                         ("_per_1k", "per 1k exchanges"), ("_per_exchange", "per exchange"),
                         ("_bytes", "bytes")):  # fmt: skip
        if suffix in key:
            return unit
    return ""


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts of scalars as `a.b.c` -> value (lists of scalars joined)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and all(not isinstance(x, dict | list) for x in d):
        out[prefix.rstrip(".")] = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x)
                                            for x in d)  # fmt: skip
    elif isinstance(d, list):
        for i, x in enumerate(d):
            out.update(flatten(x, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = d
    return out


@dataclass
class BenchView:
    """One overhead results file (or none), and where it came from."""

    path: Path | None = None
    data: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # how the report got it (given, the matrix's closing pass, reused)
    absent: str = "no overhead results were given"  # why there are none

    @classmethod
    def pick(cls, bench: list[tuple[Path, dict[str, Any]]], origin: str = "") -> BenchView:
        """Of the overhead results files given, the one with the most rounds (the most
        precise), then the newest."""
        files = [(p, b) for p, b in bench if isinstance(b, dict)
                 and (b.get("kind") == "probebench-overhead" or "workloads" in b)]  # fmt: skip
        if not files:
            return cls()
        def weight(pb: tuple[Path, dict[str, Any]]) -> tuple[float, str]:
            st = pb[1].get("settings") or {}
            r, s = st.get("rounds"), st.get("scale")
            rounds = r if isinstance(r, int | float) else 0
            scale = s if isinstance(s, int | float) else 0
            return (rounds * scale, str(pb[1].get("finished_utc") or ""))

        p, b = max(files, key=weight)
        # `origin` is what the matrix's closing pass writes into the file it made
        said = f"{b['origin']}, file `{p.name}`" if isinstance(b.get("origin"), str) else ""
        text = origin or said or f"the results file `{p.name}` given to the report"
        others = [q.name for q, _ in files if q != p]
        if others:
            text += f" (the one with the most rounds × scale; not used: {', '.join(others)})"
        return cls(p, b, text)

    @property
    def present(self) -> bool:
        return bool(self.data.get("workloads"))

    def missing_reason(self) -> str:
        return "" if self.present else self.absent

    def workloads(self) -> dict[str, Any]:
        w = self.data.get("workloads")
        return w if isinstance(w, dict) else {}

    def configs(self, wl: str) -> dict[str, Any]:
        c = (self.workloads().get(wl) or {}).get("configs")
        return c if isinstance(c, dict) else {}

    def comparison(self, wl: str, config: str) -> dict[str, Any] | None:
        c = self.configs(wl).get(config)
        return c if isinstance(c, dict) and "throughput_ratio" in c else None

    def not_measured_reason(self, wl: str, config: str) -> str:
        c = self.configs(wl).get(config) or {}
        why = str(c.get("not_measured") or "not in the results file")
        why = why.removeprefix("not measured: ")
        if "no probe points" in why:
            return "no probe points in this workload's binaries"
        # "the uprobe collector failed: the uprobe collector failed to attach: ..." once
        why = re.sub(r"^the (\w+) collector failed: (?=the \1 collector)", "", why)
        return why if len(why) < 130 else why[:127] + "…"

    def label(self, wl: str) -> str:
        return workload_label(wl)

    def common_workload(self, preferred: tuple[str, ...]) -> str | None:
        """A workload on which the approaches the article compares (kernel side, uprobe)
        were all measured; else one the first of them was measured on."""
        names = [c.name for c in registry.compared()]
        both = [w for w in self.workloads() if all(self.comparison(w, n) for n in names)]
        for w in preferred:
            if w in both:
                return w
        if both:
            return sorted(both)[0]
        some = [w for w in self.workloads() if names and self.comparison(w, names[0])]
        return sorted(some)[0] if some else None

    def trap_added(self) -> tuple[float, float] | None:
        t = self.data.get("trap_cost") or {}
        a, b = t.get("tracepoint_added_ns"), t.get("uprobe_added_ns")
        return (float(a), float(b)) if isinstance(a, int | float) and isinstance(
            b, int | float) else None  # fmt: skip

    def warnings(self) -> list[str]:
        return [str(w) for w in self.data.get("warnings") or []]

    def unstable(self, wl: str, config: str) -> str:
        """The instability warnings of one series, in short ("cv 12%", "3 rounds")."""
        out = []
        prefix = f"{wl} {config} "
        for w in self.warnings():
            if not w.startswith(prefix):
                continue
            if m := re.search(r"standard deviation is (\d+)%", w):
                out.append(f"unstable: sd {m.group(1)}% of mean")
            elif m := re.search(r"only (\d+) rounds", w):
                out.append(f"only {m.group(1)} rounds")
            elif "from the median" in w:
                out.append("outlier round")
        return "; ".join(out)

    # -- tables -------------------------------------------------------------------------

    def methodology(self, run_commits: set[str], run_hosts: set[str]) -> list[str]:
        s = self.data.get("settings") or {}
        m = self.data.get("machine") or {}
        place = s.get("cpu_placement") or {}
        commit = str(m.get("git_commit") or "?")
        same = ("the same commit as the runs" if run_commits == {commit}
                else f"commit `{commit[:10]}`; the runs: "
                + ", ".join(f"`{c[:10]}`" for c in sorted(run_commits)))  # fmt: skip
        me = f"{m.get('hostname')} kernel {m.get('kernel')}"
        host = ("the same machine and kernel as the runs" if run_hosts == {me}
                else f"{me} (the runs: {', '.join(sorted(run_hosts))})")
        load0, load1 = s.get("loadavg_start") or [], s.get("loadavg_end") or []
        lines = [
            f"Source: {self.origin}, {same}, {host}; "
            f"{self.data.get('started_utc', '?')} to {self.data.get('finished_utc', '?')}.",
            f"Hardware: {m.get('cpu_model') or '?'}"
            + (f" ({m['cpu_id']})" if m.get("cpu_id") else "")
            + f", {m.get('cpu_count', '?')} CPUs, kernel {m.get('kernel', '?')}; load average "
            f"{load0[0]:.2f} at the start, {load1[0]:.2f} at the end (a busy machine inflates "
            "every number)." if load0 and load1 else
            f"Hardware: {m.get('cpu_model') or '?'}, {m.get('cpu_count', '?')} CPUs.",
            f"Pinning: server on CPU {place.get('server', '?')}, client on CPU "
            f"{place.get('client', '?')}, collectors {place.get('collectors', '?')}.",
            f"Rounds: {s.get('rounds', '?')} interleaved rounds ({s.get('order', '?')}) of no "
            f"collector, each collector and both{self._floor_configs()}, scale "
            f"{s.get('scale', '?')} of the "
            f"standard exchange counts, {s.get('client', '?')} client, closed loop on "
            f"loopback; BPF statistics off during the rounds.",
            f"Statistics: {s.get('ci', '?')}; {s.get('test', '?')}.",
        ]  # fmt: skip
        if fr := self.fixed_rate_line():
            lines.append(fr)
        return lines

    def ratio_frame(self) -> pd.DataFrame:
        """Per workload and collector config: ratios to no collector with 95% CIs."""
        rows = []
        for wl in sorted(self.workloads()):
            w = self.workloads()[wl]
            for config, c in self.configs(wl).items():
                if config == "none" or not isinstance(c, dict):
                    continue
                row: dict[str, Any] = {"workload": workload_label(wl),
                                       "collector": CONFIG_LABEL.get(config, config)}
                if "throughput_ratio" not in c:
                    row["throughput ratio [95% CI]"] = "not measured: " + \
                        self.not_measured_reason(wl, config)
                    rows.append(row)
                    continue
                ci = c.get("ci95") or c.get("throughput_ci95")
                row["throughput ratio [95% CI]"] = _ratio(c["throughput_ratio"], ci)
                row["p"] = _p(c.get("p"))
                sig = c.get("significant")
                row["significant"] = "yes" if sig is True else "no" if sig is False else "—"
                row["p99 latency ratio [95% CI]"] = _ratio(c.get("p99_ratio"), c.get("p99_ci95"))
                cpu = c.get("collector_cpu_user_s_per_1k")
                row["collector CPU, ms per 1k"] = (
                    f"{1000 * cpu:.0f}" if isinstance(cpu, int | float) else "—")
                row["rounds"] = c.get("rounds") or w.get("rounds")
                base = self.unstable(wl, "none")
                own = self.unstable(wl, config)
                row["stability"] = "; ".join(
                    [own] * bool(own) + [f"baseline: {base}"] * bool(base)) or "stable"
                rows.append(row)
        return pd.DataFrame(rows).astype(object).fillna("—")

    def plot_frame(self) -> pd.DataFrame:
        rows = []
        for wl in sorted(self.workloads()):
            for config, c in self.configs(wl).items():
                if not isinstance(c, dict) or c.get("throughput_ratio") is None:
                    continue
                ci = c.get("ci95") or c.get("throughput_ci95") or [None, None]
                rows.append({"workload": workload_label(wl), "config": config,
                             "label": CONFIG_LABEL.get(config, config),
                             "ratio": c["throughput_ratio"], "lo": ci[0], "hi": ci[1],
                             "rounds": c.get("rounds"),
                             "unstable": bool(self.unstable(wl, config))})  # fmt: skip
        return pd.DataFrame(rows)

    def per_hit_frame(self) -> pd.DataFrame:
        """Per-hit costs in ns: the bare traps, then each collector's programs per workload."""
        rows = []
        t = self.data.get("trap_cost") or {}
        low, med = t.get("min_ns") or {}, t.get("median_ns") or {}
        n = t.get("rounds")
        for what, key, base in (
            ("write() to /dev/null, no probe", "write", None),
            ("write() with an empty syscall tracepoint", "write_tracepoint", "write"),
            ("call of an empty C function, no probe", "call", None),
            ("the same call with an empty uprobe", "call_uprobe", "call"),
        ):  # fmt: skip
            if key not in low:
                continue
            rows.append({"what": what, "workload": "C loop on one CPU",
                         "ns per hit (min)": f"{low[key]:,.1f}",
                         "ns per hit (median)": f"{med.get(key, float('nan')):,.1f}",
                         "added by the probe, ns": (f"{low[key] - low[base]:,.0f}" if base
                                                    else "—"),
                         "hits per exchange": "—", "ns per exchange": "—",
                         "n": f"{n} rounds"})  # fmt: skip
        for wl, b in sorted((self.data.get("bpf_run_time") or {}).items()):
            if not isinstance(b, dict):
                continue
            for kind, k in sorted((b.get("by_kind") or {}).items()):
                hit = k.get("ns_per_hit")
                what = f"{kind} programs ({k.get('programs', '?')})"
                owner = next((c.family for c in registry.collectors() if c.bpf and (
                    kind in c.bpf.kinds or kind == c.bpf.helper_kind)), None)  # fmt: skip
                rows.append({"what": f"{what} of the {owner} collector" if owner else what,
                             "workload": workload_label(wl),
                             "ns per hit (min)": "—",
                             "ns per hit (median)": f"{hit:,.0f} (mean)" if hit else "—",
                             "added by the probe, ns": "—",
                             "hits per exchange": f"{k.get('hits_per_exchange', 0):.1f}",
                             "ns per exchange": f"{k.get('ns_per_exchange', 0):,.0f}",
                             "n": f"{k.get('run_cnt', '?'):,} hits"})  # fmt: skip
        return pd.DataFrame(rows)

    def decomposition_frame(self) -> pd.DataFrame:
        """Per workload and collector: the floor any collector at the same points pays, then
        what is ours on top (BPF time, user-space CPU, wake-ups), and the fixed-rate CPU."""
        dec = self.data.get("decomposition")
        if not isinstance(dec, dict):
            return pd.DataFrame()
        rows = []
        for wl in sorted(dec):
            for coll, d in sorted((dec[wl] or {}).items()):
                if not isinstance(d, dict):
                    continue
                d = dict(d)
                u, sy = d.get("cpu_user_s_per_1k"), d.get("cpu_system_s_per_1k")
                if isinstance(u, int | float):
                    d["cpu_ms_per_1k"] = 1000 * (u + (sy if isinstance(sy, int | float) else 0))
                if isinstance(d.get("recorder_ns_per_exchange"), int | float):
                    d["cpu_ms_per_1k"] = d["recorder_ns_per_exchange"] / 1000  # exact, if read
                rows.append({"workload": workload_label(wl),
                             "collector": CONFIG_LABEL.get(coll, coll),
                             **_cells(d, DECOMPOSITION)})  # fmt: skip
        return pd.DataFrame(rows)

    def _floor_configs(self) -> str:
        """`, and the kernel side's floor builds` when the rounds ran them."""
        named = {c for wl in self.workloads() for c in self.configs(wl)}
        return ", and the kernel side's floor builds" if named & FLOOR_CONFIGS else ""

    def floor_frame(self) -> pd.DataFrame:
        """The kernel side beside its floor builds (bench schema 4), per workload: what any
        collector on these hooks pays (the target filter), what one recording each call
        pays before framing it, and the collector; at saturation and at the fixed rate."""
        dec = self.data.get("decomposition")
        rows = []
        for wl, per_coll in sorted(dec.items() if isinstance(dec, dict) else ()):
            for d in (per_coll or {}).values():
                builds = d.get("floor_builds") if isinstance(d, dict) else None
                if not isinstance(builds, dict):
                    continue
                for build, f in builds.items():
                    if not isinstance(f, dict):
                        continue
                    ratio = _ratio(f.get("throughput_ratio"), f.get("throughput_ci95"))
                    rows.append({"workload": workload_label(wl),
                                 "build": FLOOR_BUILD_LABEL.get(build, build),
                                 "throughput ratio [95% CI]": ratio,
                                 **_cells(f, FLOOR_COLUMNS)})  # fmt: skip
        return pd.DataFrame(rows)

    def fixed_rate_line(self) -> str:
        fr = (self.data.get("settings") or {}).get("fixed_rate")
        if not isinstance(fr, dict):
            return ""
        return (f"Fixed rate: {fr.get('exchanges_per_s', '?')} exchanges per second "
                f"({fr.get('loop', 'open loop')}), where the collector's CPU is given as a share "
                "of one core, as production agents publish it.")

    def extra_frames(self) -> list[tuple[str, pd.DataFrame]]:
        """Whatever the file holds beyond what this report knows, one table per kind:
        per-config keys (e.g. a decomposition against the floor), per-workload keys and
        top-level sections (e.g. a fixed-rate or capture-budget pass)."""
        out: list[tuple[str, pd.DataFrame]] = []
        rows = []
        for wl in sorted(self.workloads()):
            for config, c in self.configs(wl).items():
                if not isinstance(c, dict):
                    continue
                extra = {k: v for k, v in c.items() if not KNOWN_CONFIG_KEYS.search(k)}
                for k, v in flatten(extra).items():
                    rows.append({"workload": workload_label(wl), "collector": config,
                                 "measure": k, "value": _val(v), "unit": unit_of(k)})
            w = self.workloads()[wl]
            extra = {k: v for k, v in w.items() if k not in KNOWN_WORKLOAD}
            for k, v in flatten(extra).items():
                rows.append({"workload": workload_label(wl), "collector": "—", "measure": k,
                             "value": _val(v), "unit": unit_of(k)})  # fmt: skip
        if rows:
            out.append(("Further measurements per workload (newer bench keys)",
                        pd.DataFrame(rows)))
        for top, v in self.data.items():
            if top in KNOWN_TOP:
                continue
            # one row per nested record and one table per list of records: a flattened
            # dump of a section's program list ran to 200 rows nobody reads
            scalars: list[dict[str, Any]] = []
            lists: dict[str, list[dict[str, Any]]] = {}
            _records(v, (), scalars, lists)
            if scalars:
                out.append((f"`{top}`", pd.DataFrame(scalars).fillna("")))
            for key, recs in lists.items():
                out.append((f"`{top}`: {key}", pd.DataFrame(recs).fillna("")))
        return out


def _records(
    d: Any, path: tuple[str, ...], scalars: list[dict[str, Any]],
    lists: dict[str, list[dict[str, Any]]],
) -> None:
    """A section's scalars as one row per dict (its path in `where`), its lists of dicts
    as rows of a table per list key (BPF programs: ns per run added)."""
    if not isinstance(d, dict):
        if path:
            scalars.append({"where": " / ".join(path[:-1]) or "—", path[-1]: _val(d)})
        return
    where = " / ".join(path) or "—"
    row = {k: _val(x) for k, x in d.items() if not isinstance(x, dict | list)}
    row.update({k: ", ".join(map(str, x)) for k, x in d.items()
                if isinstance(x, list) and all(not isinstance(y, dict | list) for y in x)})
    if row:
        scalars.append({"where": where, **row})
    for k, x in d.items():
        if isinstance(x, dict):
            _records(x, (*path, k), scalars, lists)
        elif isinstance(x, list) and x and all(isinstance(y, dict) for y in x):
            for rec in x:
                r = {"where": where, **{f: _val(y) for f, y in rec.items()
                                         if not isinstance(y, dict | list)}}
                n, t = rec.get("run_cnt"), rec.get("run_time_ns")
                if isinstance(n, int) and n and isinstance(t, int | float):
                    r["ns per run"] = _val(t / n)
                lists.setdefault(k, []).append(r)


def _cells(d: dict[str, Any], columns: tuple[tuple[str, str, str], ...]) -> dict[str, str]:
    """A table row's numeric cells: each (key, header, format) of `columns` from `d`, "—"
    where `d` has no number."""
    return {head: fmt.format(d[key]) if isinstance(d.get(key), int | float) else "—"
            for key, head, fmt in columns}  # fmt: skip


def _val(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:,.4g}"
    s = str(v)
    return s if len(s) <= 120 else s[:117] + "…"


def _ratio(r: Any, ci: Any) -> str:
    if not isinstance(r, int | float):
        return "—"
    if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci:
        return f"{r:.2f}× [{ci[0]:.2f}, {ci[1]:.2f}]"
    return f"{r:.2f}×"


def _p(p: Any) -> str:
    if not isinstance(p, int | float):
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"
