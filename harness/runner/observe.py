"""`probebench observe`: capture and collect around any workload command a user brings."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from harness.errors import ProbebenchError, TargetError
from harness.groundtruth.capture import Dumpcap
from harness.model import CAPTURE, EVENTS_DIR, RunManifest, machine_info, utc_now
from harness.runner.collectors import CollectorOptions, start_collector, stop_collector
from harness.runner.lifecycle import ProcessSet
from harness.runner.record import Progress, recording
from harness.runner.scenarios import OBSERVE


def _port_owner_binaries(ports: list[int]) -> list[Path]:
    """Executables of the processes listening on the ports (e.g. a Go gRPC server)."""
    from harness.collectors import sockdiag

    listening = {
        inode
        for inode, a in sockdiag.tcp_sockets_by_inode().items()
        if a.state == 10 and a.local_port in ports  # TCP_LISTEN
    }
    found: set[Path] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            for fd in fds:
                if sockdiag.socket_inode(int(pid), int(fd)) in listening:
                    found.add(Path(os.readlink(f"/proc/{pid}/exe")))
                    break
        except OSError:
            continue
    return sorted(found)


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
            binaries = [*_port_owner_binaries(ports), Path(exe)]
            running = []
            for name in collectors:
                progress(f"attaching {name} collector")
                rc = start_collector(
                    procs, name, run_dir / EVENTS_DIR, tgids=[], ports=ports,
                    options=CollectorOptions(), deadline_s=duration_s + 120,
                    binaries=binaries,
                )  # fmt: skip
                running.append(rc)
                manifest.collectors[name] = {"attach_ns": rc.attach_ns}
            manifest.attach_ns = max((r.attach_ns for r in running), default=None)
            progress(f"running: {' '.join(command)}")
            # to a file, not a pipe: a chatty workload must never block on its output
            with (run_dir / "workload.log").open("w") as log:
                child = procs.spawn("workload", command, stdout=log, stderr=log)
            manifest.processes.append({"role": "workload", "pid": child.pid, "argv": command})
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
