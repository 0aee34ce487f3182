"""The report's PNG plots (matplotlib, Agg): one function per figure, None when no data."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here, and a report must not depend on one

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

DPI = 110
COLORS = {"kprobe": "#1f77b4", "uprobe": "#d62728"}


def _save(fig: plt.Figure, path: Path, *, layout: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def overview(df: pd.DataFrame, path: Path) -> Path | None:
    """Mean completeness and degradation per scenario, collector and attach (default variant)."""
    d = df[(df["variant"] == "default") & df["attach"].isin(["early", "late"])]
    if d.empty:
        return None
    g = (d.groupby(["scenario", "collector", "attach"])[["completeness", "degradation_rate"]]
         .mean().reset_index())  # fmt: skip
    labels = sorted(g["scenario"].unique())
    series = sorted({(c, a) for c, a in zip(g["collector"], g["attach"], strict=True)})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    width = 0.8 / max(len(series), 1)
    for ax, metric, title in ((axes[0], "completeness", "completeness"),
                              (axes[1], "degradation_rate", "degradation rate")):
        for i, (coll, attach) in enumerate(series):
            s = g[(g["collector"] == coll) & (g["attach"] == attach)].set_index("scenario")
            ys = [s[metric].get(lab, float("nan")) for lab in labels]
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
            ax.bar(xs, ys, width, label=f"{coll}, {attach} attach",
                   color=COLORS.get(coll, "grey"), alpha=1.0 if attach == "early" else 0.5,
                   hatch="" if attach == "early" else "//", edgecolor="white")  # fmt: skip
        ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{title} (mean over runs and sides)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("share of exchanges")
    # Below the axes: inside, the legend hides the bars it explains.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncols=len(series),
               fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path, layout=False)


def recovery(rec: pd.DataFrame, path: Path) -> Path | None:
    """Share of required fields correct by call index after a late attach, per series
    (kprobe tolerant / strict HPACK, uprobe)."""
    d = rec.dropna(subset=["share"])
    if d.empty:
        return None
    scens = sorted(d["scenario"].unique())
    styles = {"kprobe tolerant": "-o", "kprobe strict": "--s", "uprobe": ":^"}
    colors = {"kprobe tolerant": COLORS["kprobe"], "kprobe strict": "#8fbce6",
              "uprobe": COLORS["uprobe"]}  # fmt: skip
    fig, axes = plt.subplots(1, len(scens), figsize=(4.2 * len(scens) + 1, 3.8), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, scen in zip(axes[0], scens, strict=True):
        for series, s in d[d["scenario"] == scen].groupby("series"):
            s = s.sort_values("call_index")
            ax.plot(s["call_index"], s["share"], styles.get(str(series), "-"), markersize=3,
                    label=series, color=colors.get(str(series)))  # fmt: skip
        ax.set_title(scen)
        ax.set_xlabel("call index on the connection after attach")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("required fields correct (share)")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def sweep(sw: pd.DataFrame, path: Path) -> Path | None:
    """Degradation and completeness vs how far into the traffic the replayed attach fell,
    per scenario (mean of sides)."""
    d = sw.dropna(subset=["started_before"])
    if d.empty:
        return None
    g = (d.groupby(["scenario", "pair", "collector", "attach_at_s"])
         [["started_before", "degradation_rate", "completeness"]].mean().reset_index())  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for (scen, pr, coll), s in g.groupby(["scenario", "pair", "collector"]):
        s = s.sort_values("started_before")
        label = f"{scen} {pr} ({coll})"
        for ax, col in ((axes[0], "degradation_rate"), (axes[1], "completeness")):
            ax.plot(100 * s["started_before"], s[col], "-o", markersize=4, label=label)
    for ax, title in ((axes[0], "degradation rate"), (axes[1], "completeness")):
        ax.set_xlabel("exchanges already started when the collector attached (%)")
        ax.set_title(title)
        ax.set_xlim(-2, 100)
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def reasons(totals: pd.DataFrame, path: Path) -> Path | None:
    """Degradation reasons (field occurrences) per scenario, attach, collector and variant."""
    keys = ["scenario", "attach", "collector", "variant", "runs"]
    cols = [c for c in totals.columns if c not in keys]
    if totals.empty or not cols:
        return None
    labels = [f"{r.scenario} {r.attach} {r.collector} {r.variant}" for r in totals.itertuples()]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(labels) + 1.6))
    left = pd.Series(0.0, index=range(len(labels)))
    for c in cols:
        vals = totals[c].to_numpy(dtype=float)
        ax.barh(range(len(labels)), vals, left=left, label=c)
        left += vals
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("degraded field occurrences (all sides and runs)")
    # Outside on the right: inside, it covers the longest bars.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
