"""The project's shared/ folder (third-party captures), found relative to the repository: it
sits beside the clone (CI) or a level up from a worktree. Missing, its tests skip locally and
fail under CI, where it is always laid out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_captures(name: str) -> Path:
    """shared/captures/<name> in the nearest folder above the repository that has it (the
    first candidate's path when none does, so a message can name it)."""
    candidates = [d / "shared" / "captures" / name for d in ROOT.parents]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def needs(path: Path, what: str = "the shared captures") -> pytest.MarkDecorator:
    """Skip when ``path`` is missing, except under CI, where the test runs and fails."""
    return pytest.mark.skipif(
        not path.is_dir() and not os.environ.get("CI"), reason=f"{what} not found at {path}"
    )
