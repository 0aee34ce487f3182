"""What the report's ease section says of the uprobe collector: per grpc-go binary it
probed, the target facts its resolver had to find and the probe shape it chose."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

# -D settings that pick one of several code paths by the binary's shape.
SHAPE_DEFINES: dict[str, dict[int, str]] = {
    "PB_WD_SHAPE": {1: "DATA written by x/net Framer.WriteDataPadded",
                    2: "DATA written by grpc framer.writeData"},
    "PB_RD_SHAPE": {1: "DATA read as http2.DataFrame", 2: "DATA read as parsedDataFrame"},
    "PB_WH_S0": {0: "headers: conn in loopyWriter", 1: "headers: conn via framer.writer"},
}  # fmt: skip


def binary_facts(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per grpc-go binary probed in the runs (``stats``: this collector's part of each
    run.json), the facts the resolver needs, re-resolved here (the resolver caches by the
    binary's hash) when the binary is still on disk."""
    from harness.collectors.uprobe.resolve import resolve  # ELF/DWARF readers: on demand

    paths: dict[str, set[str]] = defaultdict(set)
    for st in stats:
        for b, bst in (st.get("binaries") or {}).items():
            if bst.get("probes"):
                paths[os.path.basename(b)].add(b)
    out: list[dict[str, Any]] = []
    for name, ps in sorted(paths.items()):
        path = next((Path(p) for p in sorted(ps) if Path(p).is_file()), None)
        if path is None:
            out.append({"binary": name, "grpc-go": "—", "facts resolved": "—",
                        "probes": "—", "code path": "binary no longer on disk"})
            continue
        try:
            res = resolve(path)
        except Exception as e:  # a resolver failure is a finding here, not a crash
            out.append({"binary": name, "grpc-go": "—", "facts resolved": "—", "probes": "—",
                        "code path": f"resolver failed: {type(e).__name__}"})
            continue
        d = res.defines
        facts = sum(1 for k in d if not k.startswith("PB_HAVE_")) + len(res.probes)
        shape = "; ".join(names.get(d[k] if k != "PB_WH_S0" else int(d[k] >= 0), str(d[k]))
                          for k, names in SHAPE_DEFINES.items() if k in d)  # fmt: skip
        out.append({"binary": name, "grpc-go": res.grpc_version or "—",
                    "facts resolved": facts, "probes": len(res.probes),
                    "code path": shape or "—"})  # fmt: skip
    return out
