"""Ease of building, measured by stated proxies (the article's "complex" vs "simple").

- lines of BPF C and of the code that turns a collector's records into exchanges,
  counted in this checkout (non-blank, non-comment lines);
- target facts resolved per binary (symbol addresses, DWARF struct offsets, argument
  registers): what must be known about each program before a probe can attach;
- version-specific code paths: the distinct probe shapes the resolver chose across the
  grpc-go binaries that ran;
- attach time (BPF compile + per-binary resolution) from each run's run.json;
- what failed to attach, and why, from run.json.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.collectors import registry
from harness.model import repo_root
from harness.report.load import RunData

COUNTED = ("BPF C", "decoding")  # what the article table's one number adds up


def code_lines(path: Path) -> int:
    """Non-blank lines that are not only a comment (#, //, or inside /* */)."""
    n, in_block = 0, False
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.strip()
        if in_block:
            if "*/" in line:
                in_block, line = False, line.split("*/", 1)[1].strip()
            else:
                continue
        if line.startswith("/*"):
            if "*/" not in line:
                in_block = True
            continue
        directive = line.startswith(("#include", "#define", "#if", "#endif", "#else"))
        if not line or (line.startswith(("#", "//")) and not directive):
            continue
        n += 1
    return n


@dataclass
class EaseView:
    lines: dict[str, dict[str, int]] = field(default_factory=dict)  # collector -> part -> n
    files: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    binaries: list[dict[str, Any]] = field(default_factory=list)
    attach: pd.DataFrame = field(default_factory=pd.DataFrame)
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    root: Path | None = None

    def total_lines(self, collector: str) -> int | None:
        parts = self.lines.get(collector) or {}
        n = sum(v for k, v in parts.items() if k in COUNTED)
        return n or None

    def lines_frame(self) -> pd.DataFrame:
        rows = []
        for coll, parts in self.lines.items():
            for part, n in parts.items():
                fs = self.files[coll][part]
                rows.append({"collector": coll, "part": part, "lines": n,
                             "in the table's total": "yes" if part in COUNTED else "no",
                             "files": f"{len(fs)}: " + ", ".join(
                                 f.removeprefix("harness/") for f in fs[:6])
                             + (" …" if len(fs) > 6 else "")})  # fmt: skip
        return pd.DataFrame(rows)

    def binaries_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.binaries)

    def code_paths(self) -> str:
        """How many distinct probe shapes the binaries that ran needed."""
        paths = {b["code path"] for b in self.binaries if b.get("probes") not in (None, "—")}
        vers = {b["grpc-go"] for b in self.binaries if b.get("grpc-go") not in (None, "—")}
        if not paths:
            return ""
        return (f"Version-specific code paths: the {len(vers)} grpc-go versions that ran needed "
                f"{len(paths)} distinct probe shapes, each chosen from the binary's DWARF.")


def _lines(root: Path) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, list[str]]]]:
    lines: dict[str, dict[str, int]] = {}
    files: dict[str, dict[str, list[str]]] = {}
    # per collector, the code each part of it needs (its registration says), as globs under
    # the repository root; a file shared by two (the HTTP/2 parser) counts for each
    for coll, parts in ((c.name, c.parts) for c in registry.collectors()):
        for part, globs in parts.items():
            found = sorted({p for g in globs for p in root.glob(g) if p.is_file()})
            if not found:
                continue
            lines.setdefault(coll, {})[part] = sum(code_lines(p) for p in found)
            files.setdefault(coll, {})[part] = [str(p.relative_to(root)) for p in found]
    return lines, files


def _binaries(runs: list[RunData]) -> list[dict[str, Any]]:
    """Per binary a collector probed, the facts it had to resolve (its registration says)."""
    out: list[dict[str, Any]] = []
    for c in registry.collectors():
        stats = [st for r in runs
                 if isinstance(st := (r.manifest.get("collectors") or {}).get(c.name), dict)]
        out += c.binary_facts(stats)
    return out


_PATH = re.compile(r"/\S+/")


def _attach_and_failures(runs: list[RunData]) -> tuple[pd.DataFrame, pd.DataFrame]:
    times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    why: Counter[tuple[str, str]] = Counter()
    for r in runs:
        for coll, st in (r.manifest.get("collectors") or {}).items():
            for k in ("compile_attach_s", "resolve_s", "attach_s"):
                if isinstance(st.get(k), int | float):
                    times[coll][k].append(float(st[k]))
            for u in st.get("unsupported") or []:
                why[(coll, _PATH.sub("", str(u)))] += 1
        err = r.manifest.get("error") or ""
        for coll in r.params.get("collectors") or []:
            if f"the {coll} collector" in err:
                why[(coll, "run failed: " + _PATH.sub("", err)[:160])] += 1
    rows = []
    for coll, ks in sorted(times.items()):
        for k, v in sorted(ks.items()):
            s = pd.Series(v)
            rows.append({"collector": coll, "step": k.removesuffix("_s").replace("_", " + "),
                         "median s": round(float(s.median()), 2),
                         "max s": round(float(s.max()), 2), "runs": len(v)})  # fmt: skip
    fails = [{"collector": c, "what could not attach, and why": w, "runs": n}
             for (c, w), n in sorted(why.items())]  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(fails)


def ease_view(runs: list[RunData], root: Path | None = None) -> EaseView:
    root = root or repo_root()
    lines, files = _lines(root)
    attach, fails = _attach_and_failures(runs)
    return EaseView(lines, files, _binaries(runs), attach, fails, root)
