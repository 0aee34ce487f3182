"""The headline numbers, without root: replay, matching and metrics over small recorded runs.

tests/fixtures/scoring holds four real recordings (kernel side and uprobe, xz-compressed):
HTTP/1.1 keep-alive early (go→go) and late (go→py), gRPC unary early and late (go→go,
grpc-go v1.85.0), 280 exchanges in all. Each count below is what replay scored when they
were checked in; a change to parsing, stitching, matching or scoring that moves one fails
here before it moves the report.
"""

from __future__ import annotations

import dataclasses
import lzma
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.analysis.match import match
from harness.analysis.metrics import Row, score
from harness.analysis.replay import replay
from harness.collectors import registry
from harness.collectors.base import ReplayInput
from harness.groundtruth.extract import extract_exchanges
from harness.model import EVENTS_DIR, RunManifest

FIXTURES = Path(__file__).parent / "fixtures" / "scoring"
HTTP1_EARLY = "20261128T210947-http11-keepalive-go2go-early"
HTTP1_LATE = "20261128T211039-http11-keepalive-go2py-late"
GRPC_EARLY = "20261128T211137-grpc-unary-go2go-early"
GRPC_LATE = "20261128T211322-grpc-unary-go2go-late"

# (run, collector, side, variant) -> (observable, matched, degraded, wrong, phantoms)
EXPECTED = {
    (HTTP1_EARLY, "kprobe", "client", "default"): (80, 80, 0, 0, 0),
    (HTTP1_EARLY, "kprobe", "server", "default"): (80, 80, 0, 0, 0),
    (HTTP1_EARLY, "uprobe", "client", "default"): (80, 0, 0, 0, 0),
    (HTTP1_EARLY, "uprobe", "server", "default"): (80, 0, 0, 0, 0),
    (HTTP1_LATE, "kprobe", "client", "default"): (68, 68, 0, 0, 0),
    (HTTP1_LATE, "kprobe", "server", "default"): (68, 68, 0, 0, 0),
    (HTTP1_LATE, "kprobe", "client", "no-sockdiag"): (68, 68, 68, 0, 0),
    (HTTP1_LATE, "kprobe", "server", "no-sockdiag"): (68, 68, 68, 0, 0),
    (HTTP1_LATE, "uprobe", "client", "default"): (68, 0, 0, 0, 0),
    (HTTP1_LATE, "uprobe", "server", "default"): (68, 0, 0, 0, 0),
    (GRPC_EARLY, "kprobe", "client", "default"): (60, 60, 0, 0, 0),
    (GRPC_EARLY, "kprobe", "server", "default"): (60, 60, 0, 0, 0),
    (GRPC_EARLY, "uprobe", "client", "default"): (60, 60, 0, 0, 0),
    (GRPC_EARLY, "uprobe", "server", "default"): (60, 60, 0, 0, 0),
    (GRPC_LATE, "kprobe", "client", "default"): (48, 48, 48, 0, 0),
    (GRPC_LATE, "kprobe", "server", "default"): (48, 48, 48, 0, 0),
    (GRPC_LATE, "kprobe", "client", "no-sockdiag"): (48, 0, 0, 0, 0),
    (GRPC_LATE, "kprobe", "server", "no-sockdiag"): (48, 0, 0, 0, 0),
    (GRPC_LATE, "kprobe", "client", "hpack-strict"): (48, 48, 48, 0, 0),
    (GRPC_LATE, "kprobe", "server", "hpack-strict"): (48, 48, 48, 0, 0),
    (GRPC_LATE, "uprobe", "client", "default"): (48, 48, 0, 0, 0),
    (GRPC_LATE, "uprobe", "server", "default"): (48, 48, 0, 0, 0),
}
RUNS = (HTTP1_EARLY, HTTP1_LATE, GRPC_EARLY, GRPC_LATE)


def unpack(name: str, dest: Path) -> Path:
    """The run directory as recorded: every .xz file decompressed beside the rest."""
    src, out = FIXTURES / name, dest / name
    for f in src.rglob("*"):
        if f.is_dir():
            continue
        target = out / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix == ".xz":
            target.with_suffix("").write_bytes(lzma.decompress(f.read_bytes()))
        else:
            shutil.copyfile(f, target)
    return out


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    work = tmp_path_factory.mktemp("scoring")
    return {name: replay(unpack(name, work)) for name in RUNS}


def test_fixtures_stay_small() -> None:
    assert sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file()) < 1 << 20


def test_every_headline_count(replayed: dict[str, dict[str, Any]]) -> None:
    got = {
        (name, r["collector"], r["side"], r["variant"]): (
            r["observable"], r["matched"], r["degraded"], r["wrong"], r["phantoms"])
        for name, m in replayed.items() for r in m["rows"]
    }  # fmt: skip
    assert got == EXPECTED


def test_truth_agrees_with_the_workload(replayed: dict[str, dict[str, Any]]) -> None:
    for name, m in replayed.items():
        tvw = m["truth_vs_workload"]
        assert (tvw["missing"], tvw["extra"]) == (0, 0), name
        assert tvw["matched"] == tvw["workload"] == {HTTP1_EARLY: 80, HTTP1_LATE: 80,
                                                     GRPC_EARLY: 60, GRPC_LATE: 60}[name]


def test_late_grpc_degrades_for_the_reasons_hpack_gives(
    replayed: dict[str, dict[str, Any]]
) -> None:
    """The kernel side attached late misses the header table: every call is degraded, and
    says which fields and why (the last calls' trailers also fall after the recording's
    end); the uprobe reads grpc-go's own fields and loses none."""
    rows = {(r["collector"], r["side"], r["variant"]): r for r in replayed[GRPC_LATE]["rows"]}
    k = rows[("kprobe", "server", "default")]
    assert k["degraded_by_reason"] == {"hpack_unknown_index": 228, "stream_incomplete": 12}
    assert k["degraded_by_field"] == {"authority": 48, "grpc_message": 48, "grpc_status": 48,
                                      "path": 48, "req_headers": 48}
    assert rows[("uprobe", "server", "default")]["degraded_by_reason"] == {}
    assert replayed[GRPC_LATE]["params"]["grpc_version"] == "v1.85.0"


def _side(name: str, tmp_path: Path, collector: str, side: str) -> tuple[list, list, int]:
    """(truth, what ``collector`` saw on ``side``, its attach time) of one fixture run."""
    run = unpack(name, tmp_path)
    manifest = RunManifest.load(run)
    ports = manifest.ports
    offset = int(manifest.capture["mono_offset_ns"])
    truth, _ = extract_exchanges(run / "capture.pcapng", http1_ports=[], h2c_ports=ports,
                                 mono_offset_ns=offset)  # fmt: skip
    seen, _ = registry.get(collector).exchanges(ReplayInput(
        run / EVENTS_DIR / f"{collector}.bin", ports, manifest.params["protocol"],
        target_pids={int(p["pid"]) for p in manifest.processes}))  # fmt: skip
    attach = int(manifest.collectors[collector]["attach_ns"])
    return truth, [x for x in seen if x.side == side], attach


def test_matching_and_scoring_count_what_they_are_given(tmp_path: Path) -> None:
    """Straight through match() and score(): a call taken away is one fewer matched, a
    status changed is one wrong (and so not exact), an extra call is one phantom."""
    truth, seen, attach = _side(GRPC_EARLY, tmp_path, "uprobe", "server")
    assert len(match(truth, seen).pairs) == 60

    def row() -> Row:
        return Row("grpc-unary", "h2c-grpc", "go", "go", "early", "uprobe", "server", "default")

    r = row()
    score(r, truth, seen, attach)
    assert (r.observable, r.matched, r.degraded, r.wrong, r.phantoms) == (60, 60, 0, 0, 0)
    r = row()
    score(r, truth, seen[1:], attach)
    assert (r.matched, r.wrong, r.phantoms) == (59, 0, 0)
    changed = [dataclasses.replace(seen[0], grpc_status=13), *seen[1:]]
    r = row()
    score(r, truth, changed, attach)
    assert (r.matched, r.degraded, r.wrong, r.wrong_by_field) == (60, 1, 1, {"grpc_status": 1})
    extra = dataclasses.replace(seen[0], path="/not/in/the/truth", stream_id=10_001,
                                t_start_ns=(seen[-1].t_end_ns or 0) + 10**9)
    r = row()
    score(r, truth, [*seen, extra], attach)
    assert (r.matched, r.phantoms) == (60, 1)
