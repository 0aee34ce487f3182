"""The report's PNG plots (matplotlib, Agg): one function per figure, None when no data.

Every plot is drawn at the size it is shown (at most 1250 px wide, 100 dpi), with a
title saying what is plotted and which way is better, units on the axes and sample sizes.
"Not applicable" (no run put that case in front of that collector) is drawn as a grey
hatched "n/a", never as an empty place a reader could take for zero.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here, and a report must not depend on one

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, PercentFormatter

from harness.collectors import registry

DPI = 100
WIDTH = 12.4  # inches: 1240 px, the page's content width at 1400 px
COLORS = {**{c.name: c.color for c in registry.collectors()}, "both": "#7b4fa0",
          "kprobe-record": "#6aa8dc", "kprobe-filter": "#a9cdea"}  # the kernel side's floors
LANG_SHADE = {"go": 1.0, "py": 0.55}
NA = "#c9ced6"
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 13}  # fmt: skip


def _fig(w: float, h: float, *args: int, **kw: object) -> tuple[plt.Figure, np.ndarray]:
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(*(args or (1, 1)), figsize=(w, h), squeeze=False, **kw)
    return fig, axes


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(STYLE):
        fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path


def _na(ax: plt.Axes, x: float, width: float, top: float) -> None:
    """A short hatched stub labelled n/a: visibly not a bar, and not a zero either."""
    ax.bar(x, top * 0.12, width, color="white", edgecolor=NA, hatch="///", linewidth=0.8)
    ax.text(x, top * 0.14, "n/a", ha="center", va="bottom", fontsize=8, color="#6b7280",
            rotation=90)


def per_language(df: pd.DataFrame, path: Path) -> Path | None:
    """Completeness and degradation per protocol family and attach time, one bar per
    collector and language of the observed side (pooled over sides and runs)."""
    from harness.report.tables import family, lang_name

    d = df[(df["variant"] == "default") & df["attach"].isin(["early", "late"])].copy()
    if d.empty:
        return None
    d["group"] = d["protocol"].map(family) + "\n" + d["attach"] + " attach"
    groups = sorted(d["group"].unique(), key=lambda g: (not g.startswith("HTTP"), g))
    series = sorted({(c, lg) for c, lg in zip(d["collector"], d["lang"], strict=True)
                     if lg is not None}, key=lambda s: (s[0], s[1] != "go", s[1]))  # fmt: skip
    fig, axes = _fig(WIDTH, 4.6, 1, 2)
    width = 0.8 / max(len(series), 1)
    for ax, (num, den, title) in zip(axes[0], (
            ("matched", "observable", "Completeness: matched / observable (higher is better)"),
            ("degraded", "matched", "Degraded: a field missing or wrong / matched "
                                    "(lower is better)")), strict=True):  # fmt: skip
        for i, (coll, lang) in enumerate(series):
            s = d[(d["collector"] == coll) & (d["lang"] == lang)]
            for j, g in enumerate(groups):
                x = j + (i - (len(series) - 1) / 2) * width
                gg = s[(s["group"] == g) & s[den].notna()]
                tot = float(gg[den].sum())
                if not len(gg) or tot == 0:
                    _na(ax, x, width * 0.9, 1.0)
                    continue
                y = float(gg[num].fillna(0).sum()) / tot
                ax.bar(x, max(y, 0.006), width * 0.9, color=COLORS.get(coll, "grey"),
                       alpha=LANG_SHADE.get(lang, 0.8), edgecolor="white")  # fmt: skip
                ax.text(x, max(y, 0) + 0.015, f"{100 * y:.0f}", ha="center", va="bottom",
                        fontsize=8, rotation=90)  # fmt: skip
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylim(0, 1.16)
        ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("share of exchanges (%)")
    n = {(c, lg): len(d[(d["collector"] == c) & (d["lang"] == lg)]) for c, lg in series}
    handles = [Patch(color=COLORS.get(c, "grey"), alpha=LANG_SHADE.get(lg, 0.8),
                     label=f"{c}, {lang_name(lg)} side (n={n[(c, lg)]} sides)")
               for c, lg in series]  # fmt: skip
    handles.append(Patch(facecolor="white", edgecolor=NA, hatch="///",
                         label="n/a: nothing to measure (no run, or none matched)"))  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), 3),
               bbox_to_anchor=(0.5, -0.12), frameon=False)  # fmt: skip
    fig.suptitle("Per collector and language of the observed side (default variant; "
                 "numbers on bars in %)")
    return _save(fig, path)


def coverage(matrix: pd.DataFrame, path: Path) -> Path | None:
    """Collector × (language · protocol): mean completeness, early attach; n/a hatched."""
    if matrix.empty:
        return None
    comp, n = matrix["completeness"], matrix["n"]
    cols = list(comp.columns)
    fig, axes = _fig(min(WIDTH, 1.6 + 1.25 * len(cols)), 0.8 + 0.75 * len(comp), 1, 1)
    ax = axes[0][0]
    cmap = plt.get_cmap("RdYlGn")
    for i, coll in enumerate(comp.index):
        for j, c in enumerate(cols):
            v = comp.loc[coll, c]
            if pd.isna(v):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white",
                                           edgecolor=NA, hatch="///"))  # fmt: skip
                ax.text(j, i, "n/a", ha="center", va="center", color="#6b7280")
                continue
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=cmap(float(v)),
                                       edgecolor="white"))  # fmt: skip
            ax.text(j, i, f"{100 * v:.0f}%\nn={int(n.loc[coll, c])}", ha="center",
                    va="center", fontsize=10, color="white" if v > 0.8 or v < 0.2 else "black")
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(len(comp) - 0.5, -0.5)
    ax.set_xticks(range(len(cols)), [c.replace(" · ", "\n") for c in cols])
    ax.set_yticks(range(len(comp)), list(comp.index))
    ax.set_title("Coverage: mean completeness of early-attach sides, collector × language × "
                 "protocol (higher is better; n = sides)", fontsize=11)
    return _save(fig, path)


def field_heatmap(h: pd.DataFrame, path: Path) -> Path | None:
    """Share of matched exchanges with each required field degraded."""
    if h.empty:
        return None
    fig, axes = _fig(min(WIDTH, 2.8 + 1.15 * h.shape[1]), 1.2 + 0.36 * h.shape[0], 1, 1)
    ax = axes[0][0]
    im = ax.imshow(h.to_numpy(dtype=float), cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            v = float(h.iat[i, j])
            txt = "·" if not v else ("<1%" if v < 0.005 else f"{100 * v:.0f}%")
            ax.text(j, i, txt, ha="center", va="center",
                    fontsize=9, color="white" if v > 0.6 else "black")  # fmt: skip
    ax.set_xticks(range(h.shape[1]), [str(c).replace(" ", "\n", 1) for c in h.columns],
                  fontsize=9)  # fmt: skip
    ax.set_yticks(range(h.shape[0]), list(h.index))
    cb = fig.colorbar(im, ax=ax, fraction=0.03, format=PercentFormatter(1.0))
    cb.set_label("matched exchanges with the field degraded")
    ax.set_title("Degradation per field (lower is better; · = never degraded)", fontsize=11)
    return _save(fig, path)


def reasons(per100: pd.DataFrame, path: Path) -> Path | None:
    """Degradation reasons per 100 matched exchanges."""
    keys = ["scenario", "attach", "collector", "variant", "matched"]
    cols = [c for c in per100.columns if c not in keys]
    if per100.empty or not cols:
        return None
    labels = [f"{r.scenario} · {r.attach} · {r.collector} {r.variant} (n={r.matched})"
              for r in per100.itertuples()]  # fmt: skip
    fig, axes = _fig(WIDTH - 3, 0.34 * len(labels) + 2.2, 1, 1)
    ax = axes[0][0]
    left = np.zeros(len(labels))
    for c in cols:
        vals = per100[c].to_numpy(dtype=float)
        ax.barh(range(len(labels)), vals, left=left, label=c)
        left += vals
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("degraded field occurrences per 100 matched exchanges")
    ax.set_title("Why fields degrade (lower is better; n = matched exchanges)", fontsize=11)
    # below the axes: beside them the figure grows wider than the page
    ax.legend(loc="upper center", bbox_to_anchor=(0.35, -0.16), ncols=4, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def recovery(rec: pd.DataFrame, path: Path) -> Path | None:
    """Share of required fields correct by call index after a late attach, per series."""
    d = rec.dropna(subset=["share"])
    if d.empty:
        return None
    scens = sorted(d["scenario"].unique())
    ncol = 2 if len(scens) > 1 else 1
    nrow = (len(scens) + ncol - 1) // ncol
    # each series' line and colour, as its collector registered the curve
    curves = {c.series(v.variant): (v.style, v.color or c.color)
              for c in registry.collectors() for v in c.curves}  # fmt: skip
    lo = max(0.0, float(d["share"].min()) - 0.05)
    hi = min(1.0, float(d["share"].max())) + 0.03
    fig, axes = _fig(WIDTH if ncol == 2 else 7.5, 3.9 * nrow + 0.4, nrow, ncol, sharey=True,
                     layout="constrained")  # fmt: skip
    handles: dict[str, object] = {}  # one legend entry per series across every panel
    for k, scen in enumerate(scens):
        ax = axes[k // ncol][k % ncol]
        ds = d[d["scenario"] == scen]
        for series, s in ds.groupby("series"):
            s = s.sort_values("call_index")
            style, color = curves.get(str(series), ("-", None))
            (line,) = ax.plot(s["call_index"], s["share"], style, markersize=4,
                              label=str(series), color=color)  # fmt: skip
            handles.setdefault(str(series), line)
        n = int(ds["total"].sum())
        ax.set_title(f"{scen} (n={n:,} fields)" if len(scens) > 1 else
                     f"{scen}: required fields correct per call after a late attach "
                     f"(higher is better; n={n:,} fields)", fontsize=11)  # fmt: skip
        ax.set_xlabel("call index on the connection after the attach (0 = first seen)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(lo, hi)
        ax.grid(alpha=0.3)
    for k in range(len(scens), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    for row in axes:
        row[0].set_ylabel("required fields correct")
    if len(scens) > 1:
        fig.suptitle("Late-attach recovery: required fields correct per call (higher is "
                     f"better; y axis from {100 * lo:.0f}%)")  # fmt: skip
    # below the axes: inside, the legend hid the curve it explains
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=3,
               frameon=False)  # fmt: skip
    return _save(fig, path)


def sweep(sw: pd.DataFrame, path: Path) -> Path | None:
    """Degradation and completeness vs how far into the traffic the replayed attach fell, as
    steps: a rate holds until the next attach point, it does not slope between them."""
    d = sw.dropna(subset=["started_before"])
    if d.empty:
        return None
    g = (d.groupby(["scenario", "pair", "collector", "attach_at_s"])
         [["started_before", "degradation_rate", "completeness"]].mean().reset_index())  # fmt: skip
    fig, axes = _fig(WIDTH, 4.4, 1, 2)
    dashes = dict(zip(sorted(g["scenario"].unique()), ["-", "--", ":", "-."] * 4, strict=False))
    for (scen, pr, coll), s in g.groupby(["scenario", "pair", "collector"]):
        s = s.sort_values("started_before")
        if not (s["completeness"].fillna(0) > 0).any():
            continue  # the collector sees none of this traffic: not applicable, not a zero
        label = f"{scen} {pr} ({coll}, {len(s)} points)"
        for ax, col in ((axes[0][0], "degradation_rate"), (axes[0][1], "completeness")):
            ax.step(100 * s["started_before"], s[col], where="post", label=label,
                    color=COLORS.get(str(coll)), linestyle=dashes[scen])
            ax.plot(100 * s["started_before"], s[col], "o", markersize=4,
                    color=COLORS.get(str(coll)))  # fmt: skip
    for ax, title in ((axes[0][0], "Degraded / matched (lower is better)"),
                      (axes[0][1], "Completeness: matched / observable (higher is better)")):
        ax.set_xlabel("exchanges already started when the collector attached (%)")
        ax.set_title(title, fontsize=11)
        ax.set_xlim(-2, 100)
        ax.set_ylim(-0.03, 1.05)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncols=3,
               bbox_to_anchor=(0.5, -0.16), frameon=False, fontsize=9)  # fmt: skip
    fig.suptitle("Attach-time sweep: early recordings replayed as if attached later")
    return _save(fig, path)


def overhead(pf: pd.DataFrame, path: Path) -> Path | None:
    """Throughput ratio to no collector with 95% CI whiskers, per workload and collector
    (BenchView.plot_frame: `label` names the collector as the tables do)."""
    if pf.empty:
        return None
    pf = pf.sort_values(["workload", "config"]).reset_index(drop=True)
    fig, axes = _fig(9.5, 0.42 * len(pf) + 1.6, 1, 1)
    ax = axes[0][0]
    ys = np.arange(len(pf))
    for i, r in pf.iterrows():
        lo = r["ratio"] - r["lo"] if pd.notna(r["lo"]) else 0
        hi = r["hi"] - r["ratio"] if pd.notna(r["hi"]) else 0
        ax.errorbar(r["ratio"], i, xerr=[[lo], [hi]], fmt="o", capsize=4,
                    color=COLORS.get(str(r["config"]), "grey"),
                    mfc="white" if r["unstable"] else None)  # fmt: skip
    ax.axvline(1.0, color="black", linewidth=1)
    ax.text(1.0, 1.005, "no collector", fontsize=9, ha="center", va="bottom",
            transform=ax.get_xaxis_transform())  # fmt: skip
    ax.set_yticks(ys, [f"{r.workload} · {r.label} (n={r.rounds} rounds)"
                       for r in pf.itertuples()])  # fmt: skip
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.1, float(pf["hi"].max(skipna=True) or 0) + 0.05))
    ax.set_xlabel("throughput with the collector / without (×), 95% CI")
    ax.set_title("Overhead: throughput ratio per workload (higher is better; hollow = "
                 "unstable series)", fontsize=11, pad=16)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
