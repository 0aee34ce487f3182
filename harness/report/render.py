"""Report sections rendered twice: Markdown (plots linked) and self-contained HTML (inlined)."""

from __future__ import annotations

import base64
import html
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

PERCENT_COLUMNS = {"completeness", "degradation", "degradation_rate", "exact", "exact_rate",
                   "share", "mean_completeness", "mean completeness", "started_before"}  # fmt: skip


@dataclass
class Text:
    body: str  # plain text; `code` spans and [label](#anchor) links are the only markup


@dataclass
class Note(Text):
    """A small-print paragraph (glossary, caveats)."""


@dataclass
class Bullets:
    items: list[str]  # each with the same markup as Text
    css: str = ""  # an HTML class for the list ("findings")


@dataclass
class Table:
    frame: pd.DataFrame
    caption: str = ""
    collapsed: bool = False  # long tables start folded in HTML
    css: str = ""  # an HTML class: "seed" (the article's table), "kv" (no numeric alignment)
    percent: bool = False  # every float is a share, whatever its column is called
    markup: bool = False  # cells may hold `code` and [label](#anchor) links
    note: str = ""  # a line under the table (same markup as Text)


@dataclass
class Image:
    path: Path
    alt: str
    caption: str = ""  # what to read off the plot, under it


@dataclass
class Section:
    title: str
    blocks: list[Text | Bullets | Table | Image] = field(default_factory=list)  # Note is a Text
    anchor_name: str = ""  # a short stable anchor; default from the title

    @property
    def anchor(self) -> str:
        if self.anchor_name:
            return self.anchor_name
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


def _wrap(text: str, indent: str = "") -> str:
    """A paragraph as lines of at most 100 characters (Markdown joins them again)."""
    return textwrap.fill(text, width=100, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)  # fmt: skip


def to_markdown(title: str, sections: list[Section], base: Path, lead: str = "") -> str:
    out = [f"# {title}", ""]
    if lead:
        out += [_wrap(lead), ""]
    for s in sections:
        out += ["", f'<a id="{s.anchor}"></a>', "", f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Text):
                out += [_wrap(b.body), ""]
            elif isinstance(b, Bullets):
                out += [_wrap(f"- {i}", "  ") for i in b.items] + [""]
            elif isinstance(b, Table):
                if b.caption:
                    out += [f"**{b.caption}**", ""]
                out += [md_table(b), ""]
                if b.note:
                    out += [_wrap(b.note), ""]
            else:
                out += [f"![{b.alt}]({b.path.relative_to(base).as_posix()})", ""]
                if b.caption:
                    out += [_wrap(f"_{b.caption}_"), ""]
    return "\n".join(out).rstrip() + "\n"


# -- HTML ----------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2430;
     background:#fff}
main{max-width:1320px;margin:0 auto;padding:.8em 1.5em 4em}
h1{font-size:1.45em;margin:.2em 0 .2em}
.lead{color:#4a5568;margin:0 0 .5em;max-width:none}
h2{font-size:1.25em;margin:1.8em 0 .5em;padding-bottom:.2em;border-bottom:2px solid #e3e7ee}
nav{font-size:12.5px;color:#4a5568;margin:.2em 0 .6em}
nav a,main a{color:#2456a6;text-decoration:none}
p{margin:.45em 0;max-width:95ch}
ul.findings{margin:.3em 0 .8em;padding-left:1.3em;font-size:14.5px}
ul.findings li{margin:.2em 0}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f2f4f8;
     padding:.05em .3em;border-radius:3px}
.tw{overflow-x:auto;margin:.5em 0 1em;max-width:100%}
table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid #d9dee7;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eef2f8}
tr:nth-child(even) td{background:#fafbfd}
td.id{font:11px ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all;
      min-width:14em}
td.k{white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
details>summary{cursor:pointer;color:#2456a6;margin:.4em 0}
figure{margin:.5em 0 1.2em}
figcaption{font-size:12.5px;color:#4a5568;max-width:95ch}
img{max-width:100%;height:auto;border:1px solid #e3e7ee}
.note{font-size:12.5px;color:#4a5568;max-width:none}
table.article{table-layout:fixed;width:100%;font-size:13.5px}
table.article td,table.article th{padding:.3em .6em;overflow-wrap:anywhere}
table.article th:first-child,table.article td:first-child{width:10em;font-weight:600}
.agree{color:#1e7b34;font-weight:600}.disagree{color:#b3261e;font-weight:600}
.na{color:#6b7280}
@media (max-width:700px){main{padding:.5em .6em 3em}table{font-size:11.5px}
  table.article th:first-child,table.article td:first-child{width:8.6em}}
"""

_NUMERIC = re.compile(r"^[-+]?[\d.,]+[%×]?$|^—$")
_LINK = re.compile(r"\[([^\]]+)\]\((#[A-Za-z0-9_-]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_MARKS = {"✓ agrees": "agree", "✗ disagrees": "disagree"}


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code> and [label](#anchor) into links."""
    parts = html.escape(text, quote=False).split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    out = _LINK.sub(r'<a href="\2">\1</a>', out)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    for word, cls in _MARKS.items():
        out = out.replace(word, f'<span class="{cls}">{word}</span>')
    return out


def _td_class(t: Table, column: str, value: str) -> str:
    if column in ("run", "run_id"):
        return "id"
    if t.css == "article":
        return "t"  # may wrap anywhere: the table must fit a phone
    if t.css not in ("kv", "article") and _NUMERIC.match(value):
        return "n"
    # Single tokens (grpc-server-stream, hpack-strict) break badly at their hyphens.
    return "t" if " " in value or len(value) > 28 else "k"


def html_table(t: Table) -> str:
    df = t.frame
    if df.empty:
        return "<p><em>(no rows)</em></p>"
    # long snake_case headers (reason names) may break after an underscore
    head = "".join(f"<th>{html.escape(str(c)).replace('_', '_<wbr>')}</th>" for c in df.columns)
    body = []
    for row in display(df, t.percent):
        tds = "".join(
            f'<td class="{_td_class(t, str(c), v)}">'
            f"{_inline(v) if t.markup else html.escape(v)}</td>"
            for c, v in zip(df.columns, row, strict=True))  # fmt: skip
        body.append(f"<tr>{tds}</tr>")
    cap = f"<caption>{_inline(t.caption)}</caption>" if t.caption else ""
    cls = f' class="{t.css}"' if t.css else ""
    table = (f'<div class="tw"><table{cls}>{cap}<thead><tr>{head}</tr></thead>'
             f"<tbody>{''.join(body)}</tbody></table></div>")  # fmt: skip
    if t.note:
        table += f'<p class="note">{_inline(t.note)}</p>'
    if t.collapsed:
        label = html.escape(t.caption or "table")
        return f"<details><summary>{label} ({len(df)} rows)</summary>{table}</details>"
    return table


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # IHDR width


def to_html(title: str, sections: list[Section], lead: str = "") -> str:
    nav = " · ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if lead:
        parts.append(f'<p class="lead">{_inline(lead)}</p>')
    parts.append(f"<nav>{nav}</nav>")
    for s in sections:
        parts.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
        for b in s.blocks:
            if isinstance(b, Note):
                parts.append(f'<p class="note">{_inline(b.body)}</p>')
            elif isinstance(b, Text):
                parts.append(f"<p>{_inline(b.body)}</p>")
            elif isinstance(b, Bullets):
                cls = f' class="{b.css}"' if b.css else ""
                parts.append(f"<ul{cls}>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items)
                             + "</ul>")  # fmt: skip
            elif isinstance(b, Table):
                parts.append(html_table(b))
            else:
                # never wider than drawn: an upscaled plot blurs its tick labels
                w = _png_width(b.path)
                cap = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
                parts.append(f'<figure><img alt="{html.escape(b.alt)}" width="{w}" '
                             f'src="{_data_uri(b.path)}">{cap}</figure>')  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )
