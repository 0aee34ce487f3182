"""h2c-plain: the HTTP plan over prior-knowledge HTTP/2, Go net/http's own and Node's http2.

The plans of the three languages agree; every direction of the real targets interoperates;
a recorded run is scored by the kernel-side collector against Wireshark (early: complete
and exact; late: HPACK blindness degraded, never wrong) while the grpc-go uprobes measure
nothing on these programs and say why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import scenarios
from harness.analysis.match import judge
from harness.errors import ProbebenchError
from harness.model import Exchange, RunManifest, load_metrics, waited
from harness.runner.lifecycle import ProcessSet, read_line_until
from harness.runner.record import free_port

ROOT = Path(__file__).resolve().parent.parent
SCEN = scenarios.get("h2c-plain")


def _plan(lang: str, seed: int) -> str:
    argv = scenarios.client_command(SCEN, lang, 1, exchanges=300, seed=seed, warmup=0,
                                    workload=Path("/dev/null"), grpc_version=None,
                                    deadline=30)  # fmt: skip
    res = subprocess.run([*argv, "--plan-only"], capture_output=True, text=True, timeout=waited(60),
                         check=True)  # fmt: skip
    return res.stdout


def test_go_and_node_plans_identical_and_the_python_one() -> None:
    sys.path.insert(0, str(ROOT / "scenarios" / "py"))
    try:
        import workload  # the reference plan (scenarios/plan.md)
    finally:
        sys.path.pop(0)
    for seed in (1, 7, -3):
        go, node = _plan("go", seed), _plan("node", seed)
        assert go == node, f"plans differ for seed {seed}"
        rows = [json.loads(line) for line in go.splitlines()]
        ref = workload.make_plan(300, seed % 2**64, "h2c")
        assert [(r["method"], r["path"], r["req_chunked"]) for r in rows] == [
            (p.method, p.path, p.req_chunked) for p in ref]
    # bodies without a length (streamed DATA frames) are drawn as in HTTP/1.1
    assert any(r["req_chunked"] for r in rows) and any(r["resp_mode"] == "ch" for r in rows)


@pytest.mark.parametrize(("client", "server"), [("go", "node"), ("node", "go")])
def test_targets_interoperate(tmp_path: Path, client: str, server: str) -> None:
    port = free_port()
    out = tmp_path / "workload.jsonl"
    with ProcessSet() as procs:
        srv = procs.spawn("server", scenarios.server_command(SCEN, server, port, None),
                          stdin=subprocess.PIPE)  # fmt: skip
        read_line_until(srv, lambda s: s.startswith("READY"), 30, "READY")
        argv = scenarios.client_command(SCEN, client, port, exchanges=80, seed=5, warmup=2,
                                        workload=out, grpc_version=None, deadline=60)
        cli = procs.spawn("client", argv, stdin=subprocess.PIPE)
        read_line_until(cli, lambda s: s.startswith("WARM"), 30, "WARM")
        assert cli.proc.stdin is not None
        cli.proc.stdin.write("GO\n")
        cli.proc.stdin.flush()
        read_line_until(cli, lambda s: s.startswith("DONE"), 60, "DONE")
        assert cli.proc.wait(timeout=waited(30)) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(80))
    assert {r["protocol"] for r in rows} == {"h2c"}
    assert len({r["client_port"] for r in rows}) == SCEN.connections  # one connection a lane
    assert {r["phase"] for r in rows[:8]} == {"warmup"} and rows[8]["phase"] == "main"
    assert sum(r["resp_bytes"] for r in rows) > 0 and any(r["req_bytes"] for r in rows)


def test_no_tls_variant_and_no_python_target() -> None:
    with pytest.raises(ProbebenchError, match="no TLS variant"):
        scenarios.tls_arguments(SCEN, "go", Path("/tmp"), "1.3", None)
    with pytest.raises(ProbebenchError, match="do not run h2c-plain"):
        scenarios.server_command(SCEN, "py", 1, None)


def test_response_header_fields_are_scored() -> None:
    truth = Exchange(source="truth", side="wire", protocol="h2c", method="GET", path="/r",
                     status=200, resp_headers={"x-req-bytes": "0", "date": "x"})
    ok = Exchange(source="kprobe", side="client", protocol="h2c", method="GET", path="/r",
                  status=200, resp_headers={"x-req-bytes": "0"})
    assert not judge(truth, ok).degraded  # only the custom (x-) fields count
    bad = Exchange(source="kprobe", side="client", protocol="h2c", method="GET", path="/r",
                   status=200, resp_headers={"x-req-bytes": "7"})
    assert "resp_headers" in judge(truth, bad).wrong
    blind = Exchange(source="kprobe", side="client", protocol="h2c", method="GET", path="/r",
                     status=200)
    blind.degrade("resp_headers", "hpack_unknown_index")
    assert judge(truth, blind).missing == {"resp_headers": "hpack_unknown_index"}


def _run(tmp_path: Path, client: str, server: str, attach: str) -> Path:
    res = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "h2c-plain", "--client", client,
         "--server", server, "--attach", attach, "--collectors", "kprobe,uprobe",
         "--exchanges", "60", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=waited(600),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.strip().splitlines()[-1])


@pytest.mark.bpf
@pytest.mark.capture
@pytest.mark.parametrize(("lang", "attach"), [("go", "early"), ("node", "late")])
def test_recorded_run(tmp_path: Path, lang: str, attach: str) -> None:
    run_dir = _run(tmp_path, lang, lang, attach)
    m = load_metrics(run_dir)
    assert m["truth_vs_workload"]["matched"] == 60 and m["truth_vs_workload"]["extra"] == 0
    rows = {(r["collector"], r["side"]): r for r in m["rows"] if r["variant"] == "default"}
    for side in ("client", "server"):
        k = rows["kprobe", side]
        assert k["protocol"] == "h2c"
        assert k["completeness"] == 1.0 and k["wrong"] == 0 and k["phantoms"] == 0, k
        if attach == "early":
            assert k["degraded"] == 0, k["degraded_by_field"]
        else:  # the dynamic table was filled in the warm-up: unknown, never guessed
            assert k["degraded"] > 0 and k["degraded_by_reason"].get("hpack_unknown_index")
            assert "wrong_value" not in k["degraded_by_reason"]
        # grpc-go's probes have nothing to hook in these programs: measured as nothing seen
        assert rows["uprobe", side]["observable"] > 0 and rows["uprobe", side]["matched"] == 0
    manifest = RunManifest.load(run_dir)
    assert all(p["uprobe_gap"] for p in manifest.processes)
    binaries = manifest.collectors["uprobe"].get("binaries") or {}
    if lang == "go":  # the collector read both Go binaries and found no grpc-go in them
        assert len(binaries) == 2
        assert all("without grpc-go" in b["error"] for b in binaries.values())
