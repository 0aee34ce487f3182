"""`probebench observe`: capture and collect around any workload command a user brings."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.collectors import registry, sockdiag
from harness.collectors.base import CollectorOptions
from harness.collectors.kprobe.hooks import require as require_hooks
from harness.errors import ProbebenchError, TargetError
from harness.groundtruth.capture import Dumpcap
from harness.model import (
    CAPTURE,
    EVENTS_DIR,
    H2_FAMILY,
    TLS_DIR,
    RunManifest,
    machine_info,
    utc_now,
    waited,
)
from harness.runner.collectors import start_collector, stop_collector
from harness.runner.keeper import GRACE_S
from harness.runner.lifecycle import ProcessSet
from harness.runner.record import Progress, recording
from harness.scenarios import OBSERVE


def _connections_on(ports: list[int]) -> int:
    """Connected TCP sockets whose local port is one of ``ports`` (each connection's
    server end), as sock_diag lists them now."""
    wanted = set(ports)
    return sum(1 for a in sockdiag.tcp_sockets_by_inode().values() if a.local_port in wanted)


# observe stops the command when the disk holding the run has less than this left
DEFAULT_MIN_FREE = 1 << 30
DISK_POLL_S = 0.5
# how long the capture goes on after the observation's end, for exchanges in flight then
CAPTURE_GRACE_S = 0.3
CAPTURE_POLL_S = 0.05  # with --max-capture-mb
CAPTURE_LEAD_S = 0.05  # from the capture's start to the truth's (exchanges in flight settle)


def observe(
    command: list[str],
    *,
    ports: list[int],
    h2c: bool,
    duration_s: float,
    collectors: list[str],
    out: Path,
    progress: Progress,
    tls: bool = False,
    keylog: Path | None = None,
    options: CollectorOptions | None = None,
    min_free_bytes: int = DEFAULT_MIN_FREE,
    replay_after: bool = True,
    client: str = "user",
    server: str = "user",
    max_capture_bytes: int | None = None,
) -> Path:
    exe = shutil.which(command[0])
    if exe is None:
        raise ProbebenchError(f"command not found: {command[0]}")
    if keylog is not None and not tls:
        raise ProbebenchError("--keylog needs --tls")
    options = options or CollectorOptions()
    if any(registry.get(c).kernel_hooks for c in collectors):
        require_hooks(options.kernel_hooks)
    out.mkdir(parents=True, exist_ok=True)
    if (free := shutil.disk_usage(out).free) < min_free_bytes:
        raise ProbebenchError(
            f"only {free >> 20} MiB free under {out}, below --min-free-mb "
            f"{min_free_bytes >> 20}: a recording takes about 1 MB per 1,000 exchanges"
        )
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_dir = out / f"{stamp}-observe-{Path(command[0]).name}"
    run_dir.mkdir(parents=True, exist_ok=False)
    params = {
        "command": command, "h2c": h2c, "duration_s": duration_s, "collectors": collectors,
        "attach": "early", "client": client, "server": server,
        "kernel_hooks": options.kernel_hooks,
        "protocol": H2_FAMILY if h2c else "http/1.x",
    }  # fmt: skip
    if tls:
        # the ports carry TLS; the user's client writes the secrets (e.g. SSLKEYLOGFILE)
        params.update(tls=True, tls_version="any", keylogs=[f"{TLS_DIR}/user.keylog"])
    manifest = RunManifest(
        run_id=run_dir.name, scenario=OBSERVE, params=params, started_utc=utc_now(),
        machine=machine_info(), ports=sorted(set(ports)),
    )  # fmt: skip
    with recording(manifest, run_dir), ProcessSet() as procs:
        # binaries already serving the ports (grpc-go services), probed from the start
        early = sorted({b for c in collectors for b in registry.get(c).observe_binaries(ports)})
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
                # a safety net from the collector's own start, so its compile and attach
                # are in it: scaled like every start-up wait (a 6.12 guest's took 224 s)
                options=options, deadline_s=duration_s + waited(120),
                binaries=early, follow=child.pid,
            )  # fmt: skip
            running.append(rc)
            manifest.collectors[name] = {"attach_ns": rc.attach_ns}
        manifest.attach_ns = max((r.attach_ns for r in running), default=None)
        # The capture starts only now: compiling and attaching take seconds (tens under
        # load), and services already running on the ports fill them with traffic no
        # collector saw: a busy one wrote 0.5-1.5 GB nobody scores, and its decode never
        # came back in bounded time. The command is still held, so none of its traffic
        # is missed; the truth covers [truth_from_ns, observed_until_ns].
        with Dumpcap(run_dir / CAPTURE, ports) as cap:
            # connections the services already held at the attach (the command is still
            # held): for them this is a late attach, and the report says so
            held = _connections_on(ports)
            manifest.params.update(preexisting_connections=held,
                                   attach="late" if held else "early")  # fmt: skip
            # the truth begins a moment after the capture did, so that whatever a collector
            # saw start from here has its packets in the capture; the command starts after
            time.sleep(CAPTURE_LEAD_S)
            manifest.params["truth_from_ns"] = time.monotonic_ns()
            progress(f"running: {' '.join(command)}")
            assert child.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # a dead keeper: its exit code says why
                child.proc.stdin.write("go\n")
                child.proc.stdin.close()
            low_disk, full = _wait_watching_disk(
                child.proc, duration_s, run_dir, min_free_bytes, progress,
                capture=(run_dir / CAPTURE, max_capture_bytes) if max_capture_bytes else None,
            )  # fmt: skip
            if low_disk is not None or full is not None or child.proc.poll() is None:
                if low_disk is None and full is None:
                    progress(f"still running after {duration_s:g} s: stopping it")
                code = procs.stop(child)
                manifest.params["stopped_at_duration"] = low_disk is None and full is None
                manifest.params["stopped_low_disk"] = low_disk
                # asked for: the run is complete, over a shorter window (truth_window says)
                manifest.params["stopped_capture_bytes"] = full
            else:
                code = child.proc.returncode
            kept = json.loads(keeper_report.read_text()) if keeper_report.exists() else {}
            manifest.processes[-1]["command_pid"] = kept.get("pid")
            manifest.params["leftover_processes_stopped"] = kept.get("stopped")
            if kept.get("stopped"):
                progress(f"stopped {kept['stopped']} process(es) the command left running")
            stopped = manifest.params.get("stopped_at_duration") or low_disk or full
            if code != 0 and not stopped:
                tail = (run_dir / "workload.log").read_text(errors="replace").strip()
                raise TargetError(f"the workload exited with code {code}: {tail[-300:]}")
            time.sleep(0.2)
            # the end of the observation: services outside the command keep talking while
            # the collectors stop and the capture closes; replay scores up to here
            manifest.params["observed_until_ns"] = time.monotonic_ns()
            # the capture closes before the collectors stop, once exchanges in flight at the
            # end had time to finish: stopping collectors takes seconds, and busy services
            # outside the command would fill them with traffic nobody scores (a request
            # whose answer came later still has its request in the truth, status unknown)
            time.sleep(CAPTURE_GRACE_S)
            cap.stop()
            for rc in running:
                manifest.collectors[rc.name].update(stop_collector(procs, rc))
                if "error" in manifest.collectors[rc.name]:
                    progress(f"warning: {rc.name} collector: "
                             f"{manifest.collectors[rc.name]['error']}")
            for name in collectors:
                params, lines = registry.get(name).observe_summary(manifest.collectors[name])
                manifest.params.update(params)
                for line in lines:
                    progress(line)
        manifest.capture = dict(cap.stats)
        if tls:
            _take_keylog(keylog, run_dir / TLS_DIR, progress)
    if manifest.params.get("stopped_low_disk"):
        # stopped cleanly: collectors drained and detached, the capture closed; all of it
        # replays, but the run did not last as long as asked
        manifest.status, manifest.error = "interrupted", manifest.params["stopped_low_disk"]
        manifest.save(run_dir)
    if not replay_after:
        return run_dir
    from harness.workflows.run import replay_and_summarize

    replay_and_summarize(run_dir, progress)
    return run_dir


def _take_keylog(keylog: Path | None, tls_dir: Path, progress: Progress) -> None:
    """Copy the user's key log into the run directory (the only place secrets are kept), so
    the run replays later without it. None: say the truth will have no secrets."""
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    if keylog is None or not keylog.is_file():
        progress(f"no TLS key log {'at ' + str(keylog) if keylog else 'given (--keylog)'}: "
                 "the truth cannot be decrypted")  # fmt: skip
        return
    dest = tls_dir / "user.keylog"
    shutil.copyfile(keylog, dest)
    dest.chmod(0o600)


def _wait_watching_disk(
    proc: subprocess.Popen[Any], duration_s: float, run_dir: Path, min_free: int,
    progress: Progress, capture: tuple[Path, int] | None = None,
) -> tuple[str | None, str | None]:
    """Wait for the command to exit or ``duration_s`` to pass, watching the free space of the
    run's disk (capture and events grow by megabytes a second on a busy port) and, with
    ``capture`` (its path and a size), the capture's size. Warns once at twice ``min_free``;
    returns why it stopped early: (low disk, capture full), each None when not."""
    deadline = time.monotonic() + duration_s
    warned = False
    # a busy port fills a capture at up to hundreds of MB/s: look at its size often
    poll = DISK_POLL_S if capture is None else CAPTURE_POLL_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            proc.wait(timeout=min(poll, left))
            return None, None
        except subprocess.TimeoutExpired:
            pass
        if capture is not None:
            with contextlib.suppress(OSError):  # not written yet
                if (size := capture[0].stat().st_size) >= capture[1]:
                    why = (f"stopped after {duration_s - left:.1f} s: the capture reached "
                           f"{size >> 20} MiB, --max-capture-mb "
                           f"{capture[1] / (1 << 20):g}")  # fmt: skip
                    progress(why)
                    return None, why
        free = shutil.disk_usage(run_dir).free
        if free < min_free:
            why = (f"stopped after {duration_s - left:.1f} s: {free >> 20} MiB left on the "
                   f"run's disk, below --min-free-mb {min_free >> 20}")  # fmt: skip
            progress(why)
            return why, None
        if free < 2 * min_free and not warned:
            warned = True
            progress(f"warning: {free >> 20} MiB left on the run's disk; observe stops at "
                     f"{min_free >> 20} MiB")  # fmt: skip
    return None, None
