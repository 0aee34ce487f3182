"""Truth against workload.jsonl: did the wire carry exactly what the clients say they did?"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from harness.errors import RunDirError
from harness.model import Exchange

ID_HEADER = "x-probebench-id"
_CHECKED = ("method", "path", "status", "client_port")
MAX_IDS = 20


def read_workload(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        with Path(path).open() as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RunDirError(f"{path}:{lineno}: not JSON ({e})") from e
                if not isinstance(rec, dict) or not isinstance(rec.get("id"), int):
                    raise RunDirError(f"{path}:{lineno}: workload record without an integer id")
                records.append(rec)
    except OSError as e:
        raise RunDirError(f"cannot read workload {path}: {e}") from e
    return records


def truth_id(x: Exchange) -> int | None:
    value = x.req_headers.get(ID_HEADER)
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def match_workload(truth: list[Exchange], workload_jsonl: Path) -> dict[str, Any]:
    """Match truth to workload by ``x-probebench-id``; a field disagreement counts as missing.

    Returns ``{"workload", "matched", "missing", "extra", "missing_ids", "missing_reasons"}``:
    ``missing_ids`` lists the first 20 ids; ``missing_reasons`` counts ``not_captured`` and
    ``<field>_differs`` (method, path, status, client_port; a field the workload left null
    is not checked). ``extra`` counts truth exchanges without an id, with an id the workload
    lacks, or repeating an id already matched.
    """
    work = read_workload(workload_jsonl)
    by_id: dict[int, Exchange] = {}
    extra = 0
    for x in truth:
        xid = truth_id(x)
        if xid is None or xid in by_id:
            extra += 1
        else:
            by_id[xid] = x
    matched = 0
    missing_ids: list[int] = []
    reasons: Counter[str] = Counter()
    seen: set[int] = set()
    for rec in work:
        xid = rec["id"]
        seen.add(xid)
        got = by_id.get(xid)
        why = None
        if got is None:
            why = "not_captured"
        else:
            for name in _CHECKED:
                want = rec.get(name)
                if want is not None and getattr(got, name) != want:
                    why = f"{name}_differs"
                    break
        if why is None:
            matched += 1
        else:
            reasons[why] += 1
            missing_ids.append(xid)
    extra += sum(1 for xid in by_id if xid not in seen)
    return {
        "workload": len(work),
        "matched": matched,
        "missing": len(missing_ids),
        "extra": extra,
        "missing_ids": missing_ids[:MAX_IDS],
        "missing_reasons": dict(reasons),
    }
