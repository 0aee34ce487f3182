"""Per-binary answers cached by the binary's content hash: a large binary's DWARF takes
seconds to read (tens of seconds on a loaded machine), and the same build runs again and
again. Caching is an optimisation only: a stale, corrupt or unwritable entry is ignored."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_home() -> Path:
    """$XDG_CACHE_HOME, else ~/.cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"))


def cache_dir(kind: str) -> Path:
    """~/.cache/probebench/<kind> (or under $XDG_CACHE_HOME)."""
    return cache_home() / "probebench" / kind


def cached(
    entry: Path, compute: Callable[[], T], to_dict: Callable[[T], dict[str, Any]],
    from_dict: Callable[[dict[str, Any]], T], *, use_cache: bool = True,
) -> T:
    """The answer in ``entry`` when it reads back, else ``compute()``, written there
    atomically for next time."""
    if use_cache and entry.exists():
        try:
            return from_dict(json.loads(entry.read_text()))
        except (ValueError, TypeError, KeyError):
            pass  # a stale or corrupt cache entry: resolve again
    r = compute()
    if use_cache:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_suffix(".tmp")
            tmp.write_text(json.dumps(to_dict(r), sort_keys=True))
            os.replace(tmp, entry)
        except OSError:
            pass
    return r
