"""--kernel-hooks: the kprobe attach mode of the kernel-side collector, and finding kernels.

The kprobe-mode programs are verified on any kernel (kprobe-type programs load where
uprobes work); attaching them needs CONFIG_KPROBES, which this host's kernel lacks, so
the real-workload test runs in the guests of `probebench kernels`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.collectors.bpfsource import BPF_DIR, compile_program, load_bcc
from harness.collectors.kprobe import hooks
from harness.collectors.kprobe.record import Recorder
from harness.errors import CapabilityError, ProbebenchError
from harness.runner.collectors import CollectorOptions
from harness.runner.kernels import newest_release
from harness.scenarios import GO_BIN

SOURCE = (BPF_DIR / "kprobe_collector.c").read_text()


def tracepoint_hooks() -> set[str]:
    """enter:NAME / exit:NAME of every syscall tracepoint the default mode attaches."""
    return {f"{m[0]}:{m[1]}" for m in
            re.findall(r"TRACEPOINT_PROBE\(syscalls, sys_(enter|exit)_(\w+)\)", SOURCE)}


def test_kprobe_mode_hooks_the_same_syscalls_as_the_tracepoints() -> None:
    kp = {f"{m[0]}:{m[1]}" for m in re.findall(r"int pb_sys(enter|exit)__(\w+)\(", SOURCE)}
    assert kp == tracepoint_hooks()
    assert len(kp) == 25


@pytest.mark.bpf
def test_kprobe_mode_programs_pass_the_verifier(tmp_path: Path) -> None:
    """Compiled with PB_KPROBES=1, every syscall hook and both walkers load as kprobe
    programs: the verifier accepts the shared logic behind a pt_regs context too."""
    rec = Recorder(tmp_path / "k.bin", [1], [9], kernel_hooks="tracepoints")
    rec.kernel_hooks = "kprobes"  # compile for kprobes without attaching (no kprobes here)
    rec.defines["PB_KPROBES"] = 1
    bpf = compile_program("kprobe_collector.c", rec.defines)
    try:
        # PB_KPROBES=1 leaves no syscall tracepoint attached
        assert not [n for n in bpf.tracepoint_fds if n.startswith(b"syscalls:")]
        rec._load_walkers(bpf)
        lib = load_bcc().lib
        names = [lib.bpf_function_name(bpf.module, i)
                 for i in range(lib.bpf_num_functions(bpf.module))]  # fmt: skip
        loaded = {n for n in names if n.startswith((hooks.ENTER, hooks.EXIT))
                  and bpf.load_func(n, bpf.KPROBE).fd > 0}  # fmt: skip
        # a receive's arguments are read at its exit (PB_EXIT_ARGS): no enter hook for it
        receives = {hooks.ENTER + n for n in hooks.RECEIVES}
        assert rec.defines.get("PB_EXIT_ARGS") == int(hooks.exit_args())
        assert hooks.exit_args()  # kernel BTF, 5.15+ and x86-64 here and in the guests
        assert not loaded & receives
        assert len(loaded) == 25 - len(receives)
        assert bpf.get_syscall_fnname(b"read") == b"__x64_sys_read"
    finally:
        bpf.cleanup()


def test_kprobes_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    from harness.runner.record import RunSpec, record

    monkeypatch.setattr(hooks, "hook_modes", lambda: {"tracepoints": None,
                                                       "kprobes": "no kprobes (test)"})
    spec = RunSpec("http11-keepalive", options=CollectorOptions(kernel_hooks="kprobes"))
    with pytest.raises(CapabilityError, match="--kernel-hooks kprobes is not possible"):
        record(spec, tmp_path)
    assert not list(tmp_path.iterdir())  # no run directory, no process started
    with pytest.raises(CapabilityError, match="one of tracepoints, kprobes"):
        hooks.require("fentry")


def test_newest_release_per_series() -> None:
    names = [f"linux-image-{v}-unsigned" for v in (
        "6.1.0-9-amd64", "6.1.0-57-amd64", "6.1.0-60-cloud-amd64", "6.12.117+deb12-amd64",
        "6.12.9+deb12-amd64", "6.1.0-61-rt-amd64")]  # fmt: skip
    assert newest_release("6.1", names) == "6.1.0-57-amd64"
    assert newest_release("6.12", names) == "6.12.117+deb12-amd64"
    assert newest_release("5.10", names) is None
    with pytest.raises(ProbebenchError, match=r"series like 6\.1"):
        newest_release("6.1.0-57", names)


@pytest.mark.bpf
@pytest.mark.capture
@pytest.mark.kprobes
@pytest.mark.parametrize("attach", ["early", "late"])
def test_kprobe_mode_on_a_real_workload(tmp_path: Path, attach: str) -> None:
    """kprobes on __x64_sys_* see a real HTTP/1.1 run whole, like the tracepoints do, and
    leave no probe behind."""
    from harness.analysis.replay import replay
    from harness.runner.record import RunSpec, record

    # (in a guest, PROBEBENCH_SLOWDOWN scales RunSpec's client deadline: the warm client
    # waits for GO through a slow compile)
    spec = RunSpec("http11-keepalive", client="py", server="go", attach=attach, exchanges=30,
                   collectors=["kprobe"], options=CollectorOptions(kernel_hooks="kprobes"))
    run_dir = record(spec, tmp_path)
    metrics = replay(run_dir)
    rows = [r for r in metrics["rows"] if r["collector"] == "kprobe" and r["variant"] == "default"]
    assert {r["side"] for r in rows} == {"client", "server"}
    for r in rows:
        assert r["completeness"] == 1.0, r
        assert r["degraded"] == 0 and r.get("wrong", 0) == 0 and r["phantoms"] == 0, r
    stats = json.loads((run_dir / "run.json").read_text())["collectors"]["kprobe"]
    assert stats["kernel_hooks"] == "kprobes"
    # an enter and an exit per data call, but no enter for receives read at their exit
    assert stats["kprobes_attached"] == 25 - len(hooks.RECEIVES) * hooks.exit_args()
    assert stats["lost_events"] == 0
    # every probe of the recorder went with it (other sessions' probes are not ours)
    events = Path("/sys/kernel/tracing/kprobe_events")
    left = events.read_text() if events.exists() else ""
    assert not [ln for ln in left.splitlines() if "__x64_sys_" in ln and "_bcc_" in ln
                and f"_bcc_{stats['pid']}" in ln]  # fmt: skip


def _run(host: str, kernel: str, hooks_: str, completeness: float, idx: int,
         protocol: str = "h2c-grpc", grpc_go: str = "v1.85.0") -> Any:
    from harness.report.load import RunData

    row = {"scenario": "grpc-unary", "protocol": protocol, "client": "go", "server": "go",
           "attach": "late", "collector": "kprobe", "side": "server", "variant": "default",
           "observable": 10, "matched": int(10 * completeness), "completeness": completeness,
           "degraded": 0, "wrong": 0, "phantoms": 0, "lost_events": 0, "grpc_go": grpc_go}
    cpu = "QEMU TCG CPU version 2.5+" if host.startswith("pb-") else "AMD EPYC"
    manifest = {"run_id": f"r{idx}", "params": {"client": "go", "server": "go"},
                "machine": {"hostname": host, "kernel": kernel, "cpu_model": cpu},
                "collectors": {"kprobe": {"kernel_hooks": hooks_}}}  # fmt: skip
    return RunData(Path(f"/nonexistent/r{idx}"), manifest, {"rows": [row]})


def test_report_keeps_kernels_apart_and_compares_hook_modes() -> None:
    from harness.report.tables import hook_agreement, kernels_frame, rows_frame

    runs = [_run("host", "6.18", "tracepoints", 1.0, 1),
            _run("pb-6.1", "6.1.0-57-amd64", "tracepoints", 1.0, 2),
            _run("pb-6.1", "6.1.0-57-amd64", "kprobes", 1.0, 3),
            _run("pb-6.12", "6.12.117+deb12-amd64", "tracepoints", 1.0, 4),
            _run("pb-6.12", "6.12.117+deb12-amd64", "kprobes", 0.5, 5)]  # fmt: skip
    kf = kernels_frame(rows_frame(runs))
    # one row per machine and mode: the 0.5 of one guest is not averaged into another's 1.0
    assert len(kf) == 5 and set(kf["runs"]) == {1}
    assert kf.set_index(["machine", "kernel_hooks"]).loc[
        ("pb-6.12, kernel 6.12.117+deb12-amd64", "kprobes"), "completeness"] == 0.5
    agree = hook_agreement(kf).set_index("machine")["same"].to_dict()
    assert agree == {"pb-6.1, kernel 6.1.0-57-amd64": "yes",
                     "pb-6.12, kernel 6.12.117+deb12-amd64": "NO"}  # the host has one mode


def test_kernel_cells_keep_tls_and_builds_apart_and_put_the_host_first() -> None:
    """A TLS run (0% on the kernel side by design) and another grpc-go build are cells of
    their own, not pooled into the plaintext cell; the wide table has one column per
    machine and mode, the host first and 6.1 before 6.12, and leaves out (but counts) the
    cells only one column ran."""
    from harness.report.tables import kernels_frame, kernels_wide, rows_frame

    runs = [_run("host", "6.18.44", "tracepoints", 1.0, 1),
            _run("host", "6.18.44", "tracepoints", 0.0, 2, protocol="tls-h2-grpc"),
            _run("host", "6.18.44", "tracepoints", 1.0, 3, grpc_go="v1.33.3"),
            _run("pb-6.12", "6.12.117+deb12-amd64", "kprobes", 1.0, 4),
            _run("pb-6.1", "6.1.0-57-amd64", "kprobes", 1.0, 5),
            _run("pb-6.1", "6.1.0-57-amd64", "tracepoints", 1.0, 6)]  # fmt: skip
    guests = {r.machine_label for r in runs if r.guest}
    assert guests == {"pb-6.1, kernel 6.1.0-57-amd64", "pb-6.12, kernel 6.12.117+deb12-amd64"}
    kf = kernels_frame(rows_frame(runs))
    host = kf[kf["machine"] == "host, kernel 6.18.44"]
    assert len(host) == 3 and set(host["runs"]) == {1}
    assert sorted(host["completeness"]) == [0.0, 1.0, 1.0]
    wide, alone = kernels_wide(kf, guests)
    assert list(wide.columns[-4:]) == ["host 6.18.44 · tracepoints",
                                       "guest 6.1.0-57-amd64 · tracepoints",
                                       "guest 6.1.0-57-amd64 · kprobes",
                                       "guest 6.12.117+deb12-amd64 · kprobes"]
    assert len(wide) == 1 and alone == 2  # the TLS and v1.33.3 cells: the host's only
    assert wide.iloc[0]["host 6.18.44 · tracepoints"] == "10/10 · 0 · 0 · 0"


def test_report_shows_guest_kernels_beside_the_host(tmp_path: Path) -> None:
    """A guest kernel's runs in both hook modes: the kernels section lists each machine and
    mode apart, and the kprobe-mode run stays out of the tracepoint headline tables."""
    from harness.report.build import build_report

    src = Path(__file__).parent / "fixtures" / "report" / "20261125T132126-http10-short-py2go-early"
    # laid out as `probebench kernels` leaves them: OUT/RELEASE/runs/RUN; the report is
    # given OUT itself
    kernels_out = tmp_path / "kernels"
    for mode in ("tracepoints", "kprobes"):
        d = kernels_out / "6.1.0-57-amd64" / "runs" / f"{src.name}-{mode}"
        shutil.copytree(src, d)
        m = json.loads((d / "run.json").read_text())
        m["run_id"] = d.name
        m["machine"].update(hostname="pb-6.1", kernel="6.1.0-57-amd64",
                            cpu_model="QEMU TCG CPU version 2.5+")  # fmt: skip
        m["collectors"]["kprobe"]["kernel_hooks"] = mode
        (d / "run.json").write_text(json.dumps(m))
    (kernels_out / "6.1.0-57-amd64" / "guest.json").write_text("{}")
    html = build_report([src, kernels_out], tmp_path / "report", draw=False)
    md = (html.parent / "report.md").read_text()
    assert "## Kernels and hook modes" in md
    section = md.split("## Kernels and hook modes")[1].split("\n## ")[0]
    assert "vm, kernel 6.18.44-fc-v669" in section and "pb-6.1, kernel 6.1.0-57-amd64" in section
    assert "2 cells agree, 0 differ" in section  # client and server side of the one cell
    guest = "| pb-6.1, kernel 6.1.0-57-amd64 | QEMU TCG guest | kprobes, tracepoints | 2 |"
    assert guest in section
    head = next(ln for ln in section.splitlines() if ln.startswith("| scenario |"))
    assert head.endswith("| host 6.18.44-fc-v669 · tracepoints | guest 6.1.0-57-amd64 · "
                         "tracepoints | guest 6.1.0-57-amd64 · kprobes |")
    assert "on 2 machines (pooled by cell" in md
    combined = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert len(combined["runs"]) == 3


def test_guest_test_sets_pick_only_the_files_that_need_a_kernel() -> None:
    """The guest collects only files with a bpf or kprobes test (imports cost 25-35x there);
    none of those is left out, and no file of pure tests comes in."""
    from harness.runner.kernels_guest import MARKERS, test_args

    full = test_args("full")
    assert full[:2] == ["-m", MARKERS]
    files = set(full[2:])
    assert {"tests/test_kernel_hooks.py", "tests/test_bpf_kprobe.py"} <= files
    assert "tests/test_report_build.py" not in files  # pure: the host runs it
    assert full[2] == "tests/test_kernel_hooks.py"  # kprobe-mode tests first: guests only
    quick = test_args("quick")
    assert quick[:2] == ["-m", "kprobes"] and "tests/test_kernel_hooks.py" in quick


def test_guests_read_the_host_s_answers_about_the_go_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before a full-set guest boots, the host works out what the uprobe and TLS collectors
    need of each Go target, into its cache; the guest is pointed at that cache whatever its
    HOME, so a collector there resolves nothing itself (a 6.12 guest took 47-53 min a pair)."""
    from harness.collectors.uprobe.resolve import resolve
    from harness.runner import kernels

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "GO_BIN", tmp_path / "bin")
    (tmp_path / "bin").mkdir()
    server = GO_BIN / "grpc-server-v1.50.1-stripped"  # quick to resolve: no DWARF
    (tmp_path / "bin" / server.name).symlink_to(server)
    (tmp_path / "bin" / ".stamp").write_text("")  # build stamps are not targets
    said: list[str] = []
    kernels.prepare_binaries(said.append)
    assert said and "1 Go targets resolved" in said[0]
    assert len(list((tmp_path / "cache" / "probebench" / "uprobe").iterdir())) == 1
    assert len(list((tmp_path / "cache" / "probebench" / "tls").iterdir())) == 1
    # the answer is read back, not worked out again: the DWARF reader is not called
    import harness.collectors.uprobe.resolve as res

    monkeypatch.setattr(res, "_resolve", lambda *_a: pytest.fail("resolved again"))
    assert resolve(tmp_path / "bin" / server.name).error is None
    cmd = kernels.guest_command(tmp_path / "out", True)
    assert f"XDG_CACHE_HOME={tmp_path / 'cache'} " in cmd


def test_shards_cut_the_full_set_into_contiguous_parts_that_cover_it_once() -> None:
    """--shard K/N: N sessions together run every test of the full set exactly once, in
    the set's order (kprobe-mode tests in the first part); a bad K/N is refused."""
    import argparse

    from harness.cli import _shard
    from harness.runner.kernels_guest import full_ids, shard, test_args

    whole = full_ids()
    parts = [shard(whole, k, 3) for k in (1, 2, 3)]
    assert [i for p in parts for i in p] == whole == shard(whole, 1, 1)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts[0][0].startswith("tests/test_kernel_hooks.py::")
    assert test_args("full", parts[1])[2:] == parts[1]
    assert _shard("2/3") == (2, 3)
    # --test names tests itself: with a shard or another set it is refused, before any boot
    from harness.cli import main

    for extra in (["--shard", "1/3"], ["--tests", "quick"], ["--no-tests"]):
        assert main(["kernels", "--test", "tests/test_x.py::test_y", *extra]) == 2
    assert main(["kernels", "--tests", "quick", "--shard", "1/3"]) == 2
    for bad in ("0/3", "4/3", "3", "a/b"):
        with pytest.raises(argparse.ArgumentTypeError):
            _shard(bad)


def test_a_guest_is_killed_when_the_caller_gives_up() -> None:
    """kernels runs the host's cells while a guest boots: an error or ^C there sets the
    event, and the guest's whole session (QEMU, virtiofsd) is killed, not waited for."""
    import subprocess
    import threading

    from harness.runner.kernels import _wait

    cancel = threading.Event()
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
    threading.Timer(0.3, cancel.set).start()
    assert _wait(proc, 600, cancel)[0] == "cancelled"
    assert proc.returncode == -9  # killed and reaped, not waited for
    quick = subprocess.Popen(["true"], start_new_session=True)
    assert _wait(quick, 60, threading.Event()) == (None, 0.0)
    # a busy grandchild (QEMU under vng) killed with the session: its CPU time is counted,
    # since nobody reaps it into this process's rusage
    stuck = subprocess.Popen(["sh", "-c", "sh -c 'while :; do :; done' & wait"],
                             start_new_session=True)  # fmt: skip
    why, cpu_s = _wait(stuck, 1.5, None)
    assert why == "no result within 2 s" and cpu_s > 0
    assert stuck.returncode == -9


def test_a_guest_killed_at_its_timeout_still_gives_its_runs(tmp_path: Path) -> None:
    from harness.runner.kernels import left_runs, run_dirs

    assert left_runs(tmp_path) == []  # not even a runs/ folder
    for name in ("b-late", "a-early", "c-no-manifest"):
        (tmp_path / "runs" / name).mkdir(parents=True)
    for name in ("b-late", "a-early"):
        (tmp_path / "runs" / name / "run.json").write_text("{}")
    found = left_runs(tmp_path)
    assert [Path(r["run_dir"]).name for r in found] == ["a-early", "b-late"]
    assert [p.name for p in run_dirs({"runs": found})] == ["a-early", "b-late"]


def test_kernel_version_gate_reads_uname(monkeypatch: pytest.MonkeyPatch) -> None:
    """PB_EXIT_ARGS needs bpf_task_pt_regs (5.15): the gate compares major.minor as numbers."""
    import os

    def release(r: str) -> None:
        u = os.uname()
        monkeypatch.setattr(os, "uname", lambda: os.uname_result(
            (u.sysname, u.nodename, r, u.version, u.machine)))

    for r, want in (("5.14.21", False), ("5.15.0-91-generic", True), ("6.1.0-57-amd64", True),
                    ("4.19.0", False), ("10.0", True), ("weird", False)):
        release(r)
        assert hooks.kernel_at_least(5, 15) is want, r


def test_the_ci_workflows_call_probebench_with_options_it_has() -> None:
    """The workflow files are not run here: at least their probebench commands parse, and
    the kernels workflow's shards cover the whole test set."""
    import re

    from harness.cli import build_parser
    from harness.model import repo_root

    flows = repo_root() / ".github" / "workflows"
    commands = []
    for f in sorted(flows.glob("*.yml")):
        text = re.sub(r"\$\([^)]*\)", "X", f.read_text())  # a command substitution: one arg
        for line in re.findall(r"\.venv/bin/probebench ([^\n|;]+)", text):
            # a matrix value or a shell expansion stands for one argument
            line = re.sub(r'"?\$\{\{ matrix\.shard \}\}/3"?', "2/3", line)
            line = re.sub(r'"[^"]*\$\{\{[^"]*"|\$\{\{ [\w.]+ \}\}|"?\$\w+"?', "X", line)
            commands.append(line.split())
    assert any(c[0] == "kernels" for c in commands) and any(c[0] == "matrix" for c in commands)
    for c in commands:
        build_parser().parse_args(c)  # SystemExit on an option probebench lacks
    kernels = (flows / "kernels.yml").read_text()
    shard = re.search(r"--shard \"\$\{\{ matrix\.shard \}\}/(\d+)\"", kernels)
    assert shard is not None
    n = int(shard.group(1))
    assert f"shard: [{', '.join(str(k) for k in range(1, n + 1))}]" in kernels


def test_a_run_s_client_deadline_is_scaled_for_a_slow_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a guest (PROBEBENCH_SLOWDOWN 30) a late attach's compile outlasted the client's
    300 s, and the warm client gave up before GO: the default deadline scales, an explicit
    one stays as given."""
    from harness.model import SLOWDOWN_ENV
    from harness.runner.record import CLIENT_DEADLINE_S, RunSpec

    monkeypatch.delenv(SLOWDOWN_ENV, raising=False)
    assert RunSpec("http11-keepalive").deadline_s == CLIENT_DEADLINE_S
    monkeypatch.setenv(SLOWDOWN_ENV, "30")
    assert RunSpec("http11-keepalive").deadline_s == 30 * CLIENT_DEADLINE_S
    assert RunSpec("http11-keepalive", deadline_s=10).deadline_s == 10
