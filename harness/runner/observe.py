"""`probebench observe`: capture and collect around any workload command a user brings."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from harness.collectors.uprobe.discover import Target, find_grpc_go_targets
from harness.errors import ProbebenchError, TargetError
from harness.groundtruth.capture import Dumpcap
from harness.model import CAPTURE, EVENTS_DIR, RunManifest, machine_info, utc_now
from harness.runner.collectors import CollectorOptions, start_collector, stop_collector
from harness.runner.lifecycle import ProcessSet
from harness.runner.record import Progress, recording
from harness.runner.scenarios import OBSERVE

# How long to watch the command's process tree for grpc-go processes it starts.
DISCOVER_S = 3.0
# after the first find, how long the rest of a script's services get to appear
SETTLE_S = 1.5


def _discover_late(child_pid: int, ports: list[int]) -> list[Target]:
    """Poll the command's tree for a bounded time: the Go services a command (say, a shell
    script) starts only exist after it runs, so the uprobe collector attaches late to them."""
    deadline = time.monotonic() + DISCOVER_S
    found: dict[int, Target] = {}
    while time.monotonic() < deadline:
        for t in find_grpc_go_targets([child_pid], ports):
            found.setdefault(t.pid, t)
        if found:  # let the rest of a script's services appear, briefly
            deadline = min(deadline, time.monotonic() + SETTLE_S)
        time.sleep(0.1)
    return list(found.values())


def observe(
    command: list[str],
    *,
    ports: list[int],
    h2c: bool,
    duration_s: float,
    collectors: list[str],
    out: Path,
    progress: Progress,
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
            running = []

            def attach(name: str, tgids: list[int], binaries: list[Path]) -> None:
                progress(f"attaching {name} collector")
                rc = start_collector(
                    procs, name, run_dir / EVENTS_DIR, tgids=tgids, ports=ports,
                    options=CollectorOptions(), deadline_s=duration_s + 120,
                    binaries=binaries,
                )  # fmt: skip
                running.append(rc)
                manifest.collectors[name] = {"attach_ns": rc.attach_ns}

            # grpc-go services already serving the ports are probed from the start
            early = find_grpc_go_targets([], ports)
            manifest.params["uprobe_targets"] = [t.exe for t in early]
            for name in collectors:
                if name != "uprobe" or early:
                    attach(name, [], sorted({Path(t.exe) for t in early}))
            progress(f"running: {' '.join(command)}")
            # to a file, not a pipe: a chatty workload must never block on its output
            with (run_dir / "workload.log").open("w") as log:
                child = procs.spawn("workload", command, stdout=log, stderr=log)
            manifest.processes.append({"role": "workload", "pid": child.pid, "argv": command})
            if "uprobe" in collectors and not early:
                late = _discover_late(child.pid, ports)
                manifest.params["uprobe_targets"] = [t.exe for t in late]
                if late:
                    # by binary, not pid: more processes of the same binaries may follow
                    attach("uprobe", [], sorted({Path(t.exe) for t in late}))
                else:
                    progress("uprobe collector: no grpc-go process found; not attached")
                    manifest.params["uprobe_skipped"] = (
                        f"no grpc-go process on ports {ports} or started by the command "
                        f"within {DISCOVER_S:g} s"
                    )
                    manifest.params["collectors"] = [c for c in collectors if c != "uprobe"]
            manifest.attach_ns = max((r.attach_ns for r in running), default=None)
            try:
                code = child.proc.wait(timeout=duration_s)
            except subprocess.TimeoutExpired:
                progress(f"still running after {duration_s:g} s: stopping it")
                code = procs.stop(child)
                manifest.params["stopped_at_duration"] = True
            if code not in (0, None) and not manifest.params.get("stopped_at_duration"):
                tail = (run_dir / "workload.log").read_text(errors="replace").strip()
                raise TargetError(f"the workload exited with code {code}: {tail[-300:]}")
            time.sleep(0.2)
            for rc in running:
                manifest.collectors[rc.name].update(stop_collector(procs, rc))
        manifest.capture = dict(cap.stats)
    from harness.analysis.replay import replay
    from harness.report.summary import summary_table

    progress("replaying: Wireshark decode, parsing, matching")
    print(summary_table(replay(run_dir)))
    return run_dir
