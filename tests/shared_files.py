"""The project's shared/ folder (third-party captures, never copied into the project), found
relative to the repository: beside the clone, or a level up from a worktree. A clone with no
such folder above it skips these tests, saying where it looked: the captures are a fixture
kept outside the repository, not a capability of the machine."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_captures(name: str) -> Path:
    """shared/captures/<name> in the nearest folder above the repository that has it (the
    first candidate's path when none does, so a message can name it)."""
    candidates = [d / "shared" / "captures" / name for d in ROOT.parents]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def needs(path: Path, what: str = "the shared captures") -> pytest.MarkDecorator:
    """Skip, naming the path, when ``path`` is missing."""
    return pytest.mark.skipif(
        not path.is_dir(), reason=f"{what} not found at {path} (no shared/ folder above the clone)"
    )
