"""Merge the DWARF of unstripped grpc-go binaries into the offsets table (see offsets.py):
the functions, structs and types every registered collector reads from Go binaries.

Called by scripts/gen-grpc-offsets with the binaries it built; writes grpc_offsets.json.
Two binaries of one version that disagree (they should not: the same sources and Go)
stop the generation rather than pick one.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from harness.collectors import registry
from harness.collectors.base import GoLayouts
from harness.collectors.gobin.offsets import TABLE_FILE, TABLE_FORMAT, extract, go_minor


def wanted() -> GoLayouts:
    """What every registered collector reads from Go binaries, in registry order."""
    got = [c.go_layouts() for c in registry.collectors() if c.go_layouts]
    return GoLayouts(*(tuple(dict.fromkeys(x for g in got for x in getattr(g, f)))
                       for f in ("functions", "structs", "types")))  # fmt: skip


def merge_into(table: dict[str, Any], ex: dict[str, Any], source: str) -> None:
    keys = {"grpc": ex["grpc"], "xnet": ex["xnet"], "go": go_minor(ex["go"])}
    for part, key in keys.items():
        if key is None:
            continue
        new = ex["parts"][part]
        old = table[part].get(key)
        if old is None:
            table[part][key] = {**new, "from": [source]}
            continue
        for k, v in new.items():
            have = old.setdefault(k, {})
            for name, val in v.items():
                if name in have and have[name] != val:
                    raise SystemExit(
                        f"{source}: {part} {key} {k} {name} differs from {old['from']}"
                    )
                have[name] = val
        old["from"] = sorted(set(old["from"]) | {source})


def _override(ex: dict[str, Any], spec: str) -> None:
    """PATH=grpc@VER,xnet@VER: the versions of a GOPATH build (its build info has none),
    e.g. Debian's packaged sources."""
    for kv in spec.split(","):
        part, _, ver = kv.partition("@")
        if part not in ("grpc", "xnet") or not ver:
            raise SystemExit(f"bad version override {kv!r} (want grpc@VER or xnet@VER)")
        ex[part] = ver


def _extract(arg: str) -> dict[str, Any]:
    w = wanted()
    return extract(Path(arg.partition("=")[0]), w.functions, w.structs, w.types)


def main(argv: list[str]) -> int:
    table: dict[str, Any] = {
        "format": TABLE_FORMAT,
        "generated_by": "scripts/gen-grpc-offsets",
        "grpc": {},
        "xnet": {},
        "go": {},
    }
    # the DWARF walk takes about a minute a binary here: a few at once
    with ProcessPoolExecutor(max_workers=3) as pool:
        exs = list(pool.map(_extract, argv))
    for arg, ex in zip(argv, exs, strict=True):
        b, _, spec = arg.partition("=")
        p = Path(b)
        if spec:
            _override(ex, spec)
        if ex["grpc"] is None:
            print(f"[gen] {b}: no grpc-go version in its build info: skipped", file=sys.stderr)
            continue
        merge_into(table, ex, p.name)
        say = f"[gen] {p.name}: grpc-go {ex['grpc']}, x/net {ex['xnet']}, {ex['go']}"
        print(say, file=sys.stderr)
    TABLE_FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"[gen] wrote {TABLE_FILE}: {len(table['grpc'])} grpc-go versions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
