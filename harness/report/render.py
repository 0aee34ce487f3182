"""Report sections rendered twice: Markdown (plots linked) and self-contained HTML (inlined)."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

PERCENT_COLUMNS = {"completeness", "degradation", "degradation_rate", "exact", "exact_rate",
                   "share", "mean_completeness", "started_before"}  # fmt: skip


@dataclass
class Text:
    body: str  # plain text; `code` spans are the only markup


@dataclass
class Table:
    frame: pd.DataFrame
    caption: str = ""
    collapsed: bool = False  # long tables start folded in HTML
    css: str = ""  # an HTML class: "seed" (the article's table), "kv" (no numeric alignment)
    percent: bool = False  # every float is a share, whatever its column is called


@dataclass
class Image:
    path: Path
    alt: str


@dataclass
class Section:
    title: str
    blocks: list[Text | Table | Image] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def cell(value: Any, column: str = "") -> str:
    """One table cell as text: rates as percentages, missing values as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and column in PERCENT_COLUMNS:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple | set):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def display(df: pd.DataFrame, percent: bool = False) -> list[list[str]]:
    return [[cell(v, "share" if percent else str(c)) for c, v in zip(df.columns, row, strict=True)]
            for row in df.itertuples(index=False, name=None)]  # fmt: skip


# -- Markdown ----------------------------------------------------------------------------------


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def md_table(t: Table) -> str:
    df = t.frame
    if df.empty:
        return "_(no rows)_"
    head = [_md_escape(str(c)) for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in display(df, t.percent):
        lines.append("| " + " | ".join(_md_escape(v) for v in row) + " |")
    return "\n".join(lines)


def to_markdown(title: str, sections: list[Section], base: Path) -> str:
    out = [f"# {title}", ""]
    out += [f"- [{s.title}](#{s.anchor})" for s in sections]
    for s in sections:
        out += ["", f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Text):
                out += [b.body, ""]
            elif isinstance(b, Table):
                if b.caption:
                    out += [f"**{b.caption}**", ""]
                out += [md_table(b), ""]
            else:
                out += [f"![{b.alt}]({b.path.relative_to(base).as_posix()})", ""]
    return "\n".join(out).rstrip() + "\n"


# -- HTML ----------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;
     background:#fff}
main{max-width:1500px;margin:0 auto;padding:1.5em 2em 4em}
h1{font-size:1.7em;margin:.2em 0 .6em}
h2{font-size:1.3em;margin:2em 0 .6em;padding-bottom:.2em;border-bottom:2px solid #e3e7ee}
nav ol{columns:2;margin:.4em 0 1em;padding-left:1.4em}
nav a{color:#2456a6;text-decoration:none}
p{margin:.5em 0;max-width:85ch}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f2f4f8;
     padding:.05em .3em;border-radius:3px}
.tw{overflow-x:auto;margin:.6em 0 1.2em}
table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid #d9dee7;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#eef2f8;position:sticky;top:0}
tr:nth-child(even) td{background:#fafbfd}
td.id{white-space:nowrap;font:11.5px ui-monospace,SFMono-Regular,Menlo,monospace}
td.k{white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
details>summary{cursor:pointer;color:#2456a6;margin:.4em 0}
img{max-width:100%;height:auto;border:1px solid #e3e7ee;margin:.5em 0 1em}
.seed td{font-size:13px}
.seed tr.measured td{background:#f3f8f1}
"""

_NUMERIC = re.compile(r"^[-+]?[\d.,]+%?$|^—$")


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _td_class(t: Table, column: str, value: str) -> str:
    if column in ("run", "run_id"):
        return "id"  # run ids are long; wrapped they triple every row's height
    if t.css != "kv" and _NUMERIC.match(value):
        return "n"
    # Single tokens (grpc-server-stream, hpack-strict) break badly at their hyphens.
    return "t" if " " in value else "k"


def html_table(t: Table) -> str:
    df = t.frame
    if df.empty:
        return "<p><em>(no rows)</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in display(df, t.percent):
        tds = "".join(f'<td class="{_td_class(t, str(c), v)}">{html.escape(v)}</td>'
                      for c, v in zip(df.columns, row, strict=True))  # fmt: skip
        cls = ' class="measured"' if t.css == "seed" and row[0].endswith("measured") else ""
        body.append(f"<tr{cls}>{tds}</tr>")
    cap = f"<caption>{_inline(t.caption)}</caption>" if t.caption else ""
    cls = f' class="{t.css}"' if t.css else ""
    table = (f'<div class="tw"><table{cls}>{cap}<thead><tr>{head}</tr></thead>'
             f"<tbody>{''.join(body)}</tbody></table></div>")  # fmt: skip
    if t.collapsed:
        label = html.escape(t.caption or "table")
        return f"<details><summary>{label} ({len(df)} rows)</summary>{table}</details>"
    return table


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(title: str, sections: list[Section]) -> str:
    nav = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in sections)
    parts = [f"<h1>{html.escape(title)}</h1>", f"<nav><ol>{nav}</ol></nav>"]
    for s in sections:
        parts.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
        for b in s.blocks:
            if isinstance(b, Text):
                parts.append(f"<p>{_inline(b.body)}</p>")
            elif isinstance(b, Table):
                parts.append(html_table(b))
            else:
                parts.append(f'<img alt="{html.escape(b.alt)}" src="{_data_uri(b.path)}">')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )
