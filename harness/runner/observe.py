"""`probebench observe`: capture and collect around any workload command a user brings."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.collectors.uprobe.discover import find_grpc_go_targets
from harness.errors import ProbebenchError, TargetError
from harness.groundtruth.capture import Dumpcap
from harness.model import CAPTURE, EVENTS_DIR, RunManifest, machine_info, utc_now
from harness.runner.collectors import CollectorOptions, start_collector, stop_collector
from harness.runner.keeper import GRACE_S
from harness.runner.lifecycle import ProcessSet
from harness.runner.record import Progress, recording
from harness.runner.scenarios import OBSERVE


def observe(
    command: list[str],
    *,
    ports: list[int],
    h2c: bool,
    duration_s: float,
    collectors: list[str],
    out: Path,
    progress: Progress,
    options: CollectorOptions | None = None,
) -> Path:
    exe = shutil.which(command[0])
    if exe is None:
        raise ProbebenchError(f"command not found: {command[0]}")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_dir = out / f"{stamp}-observe-{Path(command[0]).name}"
    run_dir.mkdir(parents=True, exist_ok=False)
    params = {
        "command": command, "h2c": h2c, "duration_s": duration_s, "collectors": collectors,
        "attach": "early", "client": "user", "server": "user",
    }  # fmt: skip
    manifest = RunManifest(
        run_id=run_dir.name, scenario=OBSERVE, params=params, started_utc=utc_now(),
        machine=machine_info(), ports=sorted(set(ports)),
    )  # fmt: skip
    with recording(manifest, run_dir), ProcessSet() as procs:
        with Dumpcap(run_dir / CAPTURE, ports) as cap:
            # grpc-go services already serving the ports are probed from the start
            early = sorted({Path(t.exe) for t in find_grpc_go_targets(ports)})
            keeper_report = run_dir / "keeper.json"
            # the keeper holds the command until every collector (and the exec gate, which
            # follows the keeper's tree) is attached; it cleans up after the command
            keeper = [sys.executable, "-m", "harness.runner.keeper", "--report",
                      str(keeper_report), "--", *command]  # fmt: skip
            # output to a file, not a pipe: a chatty workload must never block on it
            with (run_dir / "workload.log").open("w") as log:
                child = procs.spawn("workload", keeper, stdin=subprocess.PIPE, stdout=log,
                                    stderr=log, stop_timeout=GRACE_S + 5)  # fmt: skip
            manifest.processes.append({"role": "workload", "pid": child.pid, "argv": command})
            running = []
            for name in collectors:
                progress(f"attaching {name} collector")
                rc = start_collector(
                    procs, name, run_dir / EVENTS_DIR, tgids=[], ports=ports,
                    options=options or CollectorOptions(), deadline_s=duration_s + 120,
                    binaries=early, follow=child.pid,
                )  # fmt: skip
                running.append(rc)
                manifest.collectors[name] = {"attach_ns": rc.attach_ns}
            manifest.attach_ns = max((r.attach_ns for r in running), default=None)
            progress(f"running: {' '.join(command)}")
            assert child.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # a dead keeper: its exit code says why
                child.proc.stdin.write("go\n")
                child.proc.stdin.close()
            try:
                code = child.proc.wait(timeout=duration_s)
            except subprocess.TimeoutExpired:
                progress(f"still running after {duration_s:g} s: stopping it")
                code = procs.stop(child)
                manifest.params["stopped_at_duration"] = True
            kept = json.loads(keeper_report.read_text()) if keeper_report.exists() else {}
            manifest.processes[-1]["command_pid"] = kept.get("pid")
            manifest.params["leftover_processes_stopped"] = kept.get("stopped")
            if kept.get("stopped"):
                progress(f"stopped {kept['stopped']} process(es) the command left running")
            if code != 0 and not manifest.params.get("stopped_at_duration"):
                tail = (run_dir / "workload.log").read_text(errors="replace").strip()
                raise TargetError(f"the workload exited with code {code}: {tail[-300:]}")
            time.sleep(0.2)
            for rc in running:
                manifest.collectors[rc.name].update(stop_collector(procs, rc))
            uprobe = manifest.collectors.get("uprobe", {})
            probed = sorted(
                b for b, v in (uprobe.get("binaries") or {}).items() if v.get("probes")
            )
            manifest.params["uprobe_targets"] = probed
            if "uprobe" in collectors:
                others = len(set(uprobe.get("followed") or {}) - set(probed))
                progress(
                    f"uprobe probed: {', '.join(probed) or 'nothing'}; {others} other "
                    "binaries of the command were not grpc-go (run.json: collectors.uprobe)"
                )
                for problem in uprobe.get("unsupported") or []:
                    progress(f"uprobe: {problem}")
        manifest.capture = dict(cap.stats)
    from harness.analysis.replay import replay
    from harness.report.summary import summary_table

    progress("replaying: Wireshark decode, parsing, matching")
    print(summary_table(replay(run_dir)))
    return run_dir
