"""Versioned result files: round trips, and a clear error for versions we do not read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import RunDirError, UnknownVersionError
from harness.model import (
    RunManifest,
    load_metrics,
    machine_info,
    save_metrics,
)


def test_manifest_round_trip(tmp_path: Path) -> None:
    m = RunManifest("r1", "http11-keepalive", {"seed": 3}, "2026-01-01T00:00:00Z", machine_info())
    m.ports = [8080]
    m.save(tmp_path)
    back = RunManifest.load(tmp_path)
    assert back == m
    assert back.machine["kernel"] and back.machine["python"]


def test_unknown_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"version": 99, "run_id": "x"}))
    with pytest.raises(UnknownVersionError, match="version 99"):
        RunManifest.load(tmp_path)


def test_not_json_and_missing(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="does not exist"):
        load_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text("{oops")
    with pytest.raises(RunDirError, match="not valid JSON"):
        load_metrics(tmp_path)


def test_metrics_carry_version(tmp_path: Path) -> None:
    save_metrics(tmp_path, {"rows": []})
    assert load_metrics(tmp_path)["version"] == 1
