"""One record step: capture, targets, warm-up, collectors, workload, teardown -> a run directory."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from harness import scenarios
from harness.collectors import registry
from harness.collectors.base import CollectorOptions
from harness.collectors.kprobe.hooks import require as require_hooks
from harness.errors import PortInUseError, ProbebenchError, TargetError
from harness.groundtruth.capture import Dumpcap
from harness.model import (
    CAPTURE,
    EVENTS_DIR,
    TLS_DIR,
    WORKLOAD,
    RunManifest,
    machine_info,
    utc_now,
    waited,
)
from harness.runner.collectors import RunningCollector, start_collectors, stop_collectors
from harness.runner.lifecycle import (
    Child,
    Interrupted,
    ProcessSet,
    read_line_until,
    signals_as_exceptions,
)
from harness.runner.tlsfiles import TLS_VERSIONS, make_tls_files

Progress = Callable[[str], None]
READY_TIMEOUT_S = 30.0
CLIENT_DEADLINE_S = 300.0


@dataclass
class RunSpec:
    scenario: str
    client: str = "py"  # py | go
    server: str = "py"
    attach: str = "early"  # early | late
    collectors: list[str] = field(default_factory=lambda: list(registry.default_names()))
    exchanges: int | None = None
    seed: int = 1
    grpc_version: str | None = None
    port: int | None = None  # None: pick a free one
    # the client never runs longer; scaled like every start-up wait (waited()): a late
    # attach waits for the compile, which took 5+ min in a kernel guest under TCG, and a
    # warm client whose deadline passed meanwhile gave up waiting for GO
    deadline_s: float = field(default_factory=lambda: waited(CLIENT_DEADLINE_S))
    pipeline_depth: int | None = None  # None: the scenario's (http11-pipelined: 8)
    options: CollectorOptions = field(default_factory=CollectorOptions)
    tls: bool = False
    tls_version: str = "1.3"

    def run_id(self) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        ver = f"-{self.grpc_version}" if self.grpc_version else ""
        tls = ("-tls" + ("12" if self.tls_version == "1.2" else "")) if self.tls else ""
        hooks = "-kprobes" if self.options.kernel_hooks == "kprobes" else ""
        return (f"{stamp}-{self.scenario}{tls}-{self.client}2{self.server}-{self.attach}{ver}"
                f"{hooks}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise PortInUseError(f"port {port} on 127.0.0.1 is already in use") from e


def record(spec: RunSpec, out_dir: Path, progress: Progress = lambda _m: None) -> Path:
    """Record one run into a new directory under out_dir; returns it. Raises on failure,
    after marking run.json failed (never leaves a half-written run looking complete)."""
    scen = scenarios.get(spec.scenario)
    if spec.pipeline_depth is not None:
        if scen.proto != "http11" or scen.mixed or spec.pipeline_depth < 1:
            raise ProbebenchError(
                "--pipeline-depth must be >= 1 and is for http11-pipelined or http11-keepalive"
            )
        scen = replace(scen, pipeline=spec.pipeline_depth)
    for c in spec.collectors:
        registry.get(c)  # an unknown name is an error that lists the known ones
    if spec.attach not in ("early", "late"):
        raise ProbebenchError("--attach must be early or late")
    scenarios.check_pair(scen, spec.client, spec.server)
    if spec.tls:
        scenarios.check_tls(scen)
    if any(registry.get(c).kernel_hooks for c in spec.collectors):
        require_hooks(spec.options.kernel_hooks)  # here, not after the targets started
    if spec.tls_version not in TLS_VERSIONS:
        raise ProbebenchError(f"--tls-version must be one of {', '.join(TLS_VERSIONS)}")
    exchanges = spec.exchanges or scen.default_exchanges
    port = spec.port or free_port()
    check_port_free(port)
    run_dir = out_dir / spec.run_id()
    run_dir.mkdir(parents=True, exist_ok=False)
    params = asdict(spec)
    params.update(exchanges=exchanges, port=port, protocol=scen.protocol)
    if scen.is_grpc and "go" in (spec.client, spec.server) and not spec.grpc_version:
        # the build a Go side runs when none is asked for: recorded, never left to guess
        params["grpc_version"] = scenarios.CURRENT_GRPC_GO
    if spec.tls:
        params["keylogs"] = [f"{TLS_DIR}/{role}.keylog" for role, lang in
                             (("server", spec.server), ("client", spec.client))
                             if scenarios.keylog_writer(scen, lang)]  # fmt: skip
    manifest = RunManifest(
        run_id=run_dir.name,
        scenario=scen.name,
        params=params,
        started_utc=utc_now(),
        machine={**machine_info(), "targets": scenarios.target_versions()},
        ports=[port],
    )
    with recording(manifest, run_dir):
        _record(spec, scen, exchanges, port, run_dir, manifest, progress)
    return run_dir


@contextlib.contextmanager
def recording(manifest: RunManifest, run_dir: Path) -> Iterator[None]:
    """Mark run.json complete only if the body finished; interrupted or failed otherwise,
    so a half-written run never looks like a good one. SIGINT/SIGTERM become exceptions."""
    manifest.save(run_dir)
    try:
        with signals_as_exceptions():
            yield
        manifest.status = "complete"
    except Interrupted as e:
        manifest.status, manifest.error = "interrupted", str(e)
        raise
    except BaseException as e:
        manifest.status, manifest.error = "failed", str(e) or type(e).__name__
        raise
    finally:
        manifest.finished_utc = utc_now()
        manifest.save(run_dir)


def _spawn_target(procs: ProcessSet, role: str, argv: list[str], run_dir: Path) -> Child:
    """A target's stderr goes to <role>.log: a pipe nobody reads could fill and stall it."""
    with (run_dir / f"{role}.log").open("w") as log:  # the child keeps its own descriptor
        return procs.spawn(role, argv, stdin=subprocess.PIPE, stderr=log)


def _wait_for(child: Child, line: str, timeout: float, run_dir: Path) -> None:
    """Wait for the target's control line; on failure say what its stderr said last."""
    try:
        read_line_until(child, lambda s: s.startswith(line), timeout, line)
    except TargetError as e:
        said = (run_dir / f"{child.name}.log").read_text(errors="replace").strip().splitlines()
        raise TargetError(f"{e}" + (f": {said[-1]}" if said else "")) from e


def _record(
    spec: RunSpec,
    scen: scenarios.Scenario,
    exchanges: int,
    port: int,
    run_dir: Path,
    manifest: RunManifest,
    progress: Progress,
) -> None:
    events_dir = run_dir / EVENTS_DIR
    running: list[RunningCollector] = []
    warmup = scen.warmup if spec.attach == "late" else 0
    tls = make_tls_files(run_dir / TLS_DIR) if spec.tls else None

    def tls_args(role: str, lang: str) -> list[str]:
        return scenarios.tls_arguments(scen, lang, tls.dir if tls else None, spec.tls_version,
                                       tls.keylog(role) if tls else None)  # fmt: skip

    with ProcessSet() as procs, contextlib.ExitStack() as capture:
        server_cmd = scenarios.server_command(scen, spec.server, port, spec.grpc_version)
        server_cmd += tls_args("server", spec.server)
        # A server only listens until a client comes, so it starts while dumpcap does (each
        # takes tenths of a second); the capture is stopped first, the server after it.
        server = _spawn_target(procs, "server", server_cmd, run_dir)
        cap = capture.enter_context(Dumpcap(run_dir / CAPTURE, [port]))
        progress(f"capturing tcp port {port} on lo")
        _wait_for(server, "READY", waited(READY_TIMEOUT_S), run_dir)
        manifest.processes.append(
            {"role": "server", "lang": spec.server, "pid": server.pid, "argv": server_cmd,
             "uprobe_gap": scenarios.uprobe_gap(scen, spec.server)}
        )
        progress(f"{spec.server} server ready (pid {server.pid})")

        def attach(tgids: list[int]) -> None:
            progress(f"attaching {', '.join(spec.collectors)} collector"
                     + ("s side by side" if len(spec.collectors) > 1 else ""))  # fmt: skip
            running.extend(start_collectors(
                procs, spec.collectors, events_dir, tgids=tgids, ports=[port],
                options=spec.options, deadline_s=spec.deadline_s + 120, binaries=go_binaries,
            ))  # fmt: skip
            for rc in running:
                manifest.collectors[rc.name] = {"attach_ns": rc.attach_ns}
            manifest.attach_ns = max(r.attach_ns for r in running)
            manifest.save(run_dir)

        client_cmd = scenarios.client_command(
            scen, spec.client, port, exchanges=exchanges, seed=spec.seed, warmup=warmup,
            workload=run_dir / WORKLOAD, grpc_version=spec.grpc_version,
            deadline=spec.deadline_s,
        )  # fmt: skip
        client_cmd += tls_args("client", spec.client)
        # uprobes attach by binary: the client's too, before it has started
        go_binaries = [Path(cmd[0]) for cmd, lang in ((server_cmd, spec.server),
                       (client_cmd, spec.client)) if lang == "go"]  # fmt: skip
        if spec.attach == "early":
            # No client pid yet: the program filters by port, and sees every connection open.
            attach([])
        client = _spawn_target(procs, "client", client_cmd, run_dir)
        manifest.processes.append(
            {"role": "client", "lang": spec.client, "pid": client.pid, "argv": client_cmd,
             "uprobe_gap": scenarios.uprobe_gap(scen, spec.client)}
        )
        if spec.attach == "late":
            _wait_for(client, "WARM", waited(READY_TIMEOUT_S * 4), run_dir)
            progress("connections warm; attaching late")
            attach([server.pid, client.pid])
            assert client.proc.stdin is not None
            client.proc.stdin.write("GO\n")
            client.proc.stdin.flush()
        progress(f"{spec.client} client running {exchanges} exchanges")
        t0 = time.monotonic()
        _wait_for(client, "DONE", spec.deadline_s + 10, run_dir)
        code = client.proc.wait(timeout=30)
        if code != 0:
            err = (run_dir / "client.log").read_text(errors="replace").strip()
            raise TargetError(f"client exited with code {code}: {err.splitlines()[-1:]}")
        progress(f"workload done in {time.monotonic() - t0:.1f} s")
        if server.proc.poll() is not None:
            raise TargetError(f"server died during the run (exit code {server.proc.returncode})")
        time.sleep(0.2)  # let the last close() reach the collectors
        for rc, stats in zip(running, stop_collectors(procs, running), strict=True):
            manifest.collectors[rc.name].update(stats)
        for rc in running:
            if "error" in manifest.collectors[rc.name]:
                raise ProbebenchError(
                    f"{rc.name} collector failed: {manifest.collectors[rc.name]['error']}")
        progress("collectors stopped")
    manifest.capture = dict(cap.stats)
