"""Collector overhead, side by side in one session, with interleaved rounds (DESIGN: overhead).

    .venv/bin/pytest benchmarks/bench_overhead.py --benchmark-only -s
    PROBEBENCH_OVERHEAD_ROUNDS=8 PROBEBENCH_OVERHEAD_SCALE=1 .venv/bin/nox --no-venv -s bench
    PROBEBENCH_OVERHEAD_FIXED_RATE_ONLY=1 .venv/bin/pytest benchmarks/bench_overhead.py \
        --benchmark-only -s   # the fixed-rate pass alone (results/overhead-fixed-rate.json)

Needs root and bcc. Settings: benchmarks/conftest.py. Writes results/overhead.json
(schema: `harness.analysis.overhead`, SCHEMA_VERSION) besides pytest-benchmark's JSON.

Per workload (http11-keepalive and grpc-unary; Go and Python servers; Go client) and per
round: the server starts once (pinned to CPU 1), then every configuration (none, kprobe,
uprobe, both, and the kernel side's floor builds kprobe-record and kprobe-filter, below), in
an order rotated by one per round, runs the Go client (pinned to CPU 0):
it warms its connections, the collectors attach (not timed), GO, the main phase runs a
fixed number of exchanges, the collectors detach. Throughput and latency come from the
client's workload.jsonl (main phase only), so attach and compile time never count.
pytest-benchmark times whole rounds (attach included, so its own statistics are not the
overhead); the per-round samples, ratios, intervals and warnings are in `extra_info`.

After the rounds one more run with every available collector and
`kernel.bpf_stats_enabled=1` (restored after) reads each collector program's run time
and run count from /proc/<collector>/fdinfo (the fds it owns, so nobody else's programs
are counted; names from bpftool). Stats stay off during the rounds because they add two
clock reads per program run. test_trap_cost measures the bare cost of the traps on this
machine with a small C loop built by gcc: write() to /dev/null with and without an empty
sys_enter_write program, and a call to an empty function with and without a uprobe.

The fixed-rate pass (`_rate_pass`; alone with PROBEBENCH_OVERHEAD_FIXED_RATE_ONLY=1): each
collector alone, the clients paced open loop to 2,000 exchanges/s for 10 s at scale 1 (4 s
at least), BPF stats on; the collector's exact on-CPU time per thread (schedstat) + its
BPF run time as % of one core, after an idle span (attached, no traffic) read apart.

The floor pass (`_floor_pass`): the kernel-side collector alone and its two floor builds
(recorder --floor, PB_FLOOR_* in bpf/kprobe_events.h), each at saturation and at the fixed
rate, BPF stats on. `filter`: the data programs return after the target filter, what any
collector on these hooks pays; `record`: one record of at most 255 bytes per call (the call
stashed, its connection looked up and numbered), what one that records each call pays
before any framing. Their difference from the collector is the framing's cost. The rounds
run both builds too (kprobe-filter, kprobe-record): their saturation ratios.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from harness import scenarios
from harness.analysis import overhead as oh
from harness.collectors import registry
from harness.errors import CollectorError, TargetError
from harness.model import machine_info
from harness.runner.collectors import (
    CollectorOptions,
    RunningCollector,
    start_collector,
    start_collectors,
    stop_collector,
    stop_collectors,
)
from harness.runner.lifecycle import Child, ProcessSet, read_line_until
from harness.runner.record import free_port
from harness.runner.tlsfiles import make_tls_files

if TYPE_CHECKING:  # the fixture comes from benchmarks/conftest.py; no import at run time
    from conftest import OverheadSettings

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

CONFIGS: dict[str, tuple[str, ...]] = {
    "none": (),
    "kprobe": ("kprobe",),
    "uprobe": ("uprobe",),
    "both": ("kprobe", "uprobe"),
    "tls": ("tls",),  # the HTTPS workloads only (test_tls_overhead)
    # the kernel side's floor builds (recorder --floor, FLOOR_BUILDS), in the rounds too:
    # their saturation ratios are what any collector recording each call pays here
    "kprobe-record": ("kprobe",),
    "kprobe-filter": ("kprobe",),
}
CONFIG_OPTIONS = {"kprobe-record": CollectorOptions(kprobe_floor="record"),
                  "kprobe-filter": CollectorOptions(kprobe_floor="filter")}  # fmt: skip
PLAIN_CONFIGS = ("none", "kprobe", "uprobe", "both", "kprobe-record", "kprobe-filter")
TLS_CONFIGS = ("none", "tls")
TLS_VERSION = "1.3"
# Exchanges per run at scale 1: about 1.5-2 s of client main phase each, measured here.
EXCHANGES = {
    ("http11-keepalive", "go"): 20_000,
    ("http11-keepalive", "py"): 8_000,
    ("grpc-unary", "go"): 4_000,
    ("grpc-unary", "py"): 4_000,
}
MIN_EXCHANGES = 200
WARMUP_PER_CONN = 10  # exchanges per connection before the attach
CLIENT = "go"
CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPU = CPUS[1] if len(CPUS) > 1 else CPUS[0]
CLIENT_CPU = CPUS[0]
CLIENT_DEADLINE_S = 120.0
COLLECTOR_DEADLINE_S = 300.0  # the collector stops itself even if we never signal it
READY_TIMEOUT_S = 30.0
SETTLE_S = 0.2  # lets the last close() reach the collectors before they drain and stop
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
BPF_ENABLE_STATS = 32
FIXED_RATE = 2000.0  # exchanges/s of the open-loop pass
FIXED_RATE_S = 10.0  # its length at scale 1
FIXED_RATE_MIN_S = 4.0  # and at least this, at any scale
# The rate pass's idle span: collectors attached, connections warm, no traffic. The
# collector's own cost with nothing to record (timers, liveness checks) shows apart.
FIXED_IDLE_S = 2.0
# the kernel side's floor pass: the collector, then its floor builds (recorder --floor)
FLOOR_BUILDS = ("collector", "record", "filter")
TRAP_ROUNDS = 7
# With BPF stats on, the programs' counters are read over this idle span before GO: every
# hit then is another process's (or an idle target's), which gives what a hit the filter
# turns away costs, to take the other processes' share out of the workload's BPF time.
IDLE_S = 0.3
TRAP_N = {"write": 300_000, "call": 20_000_000, "call_uprobe": 20_000}


# -- one client run under one configuration ---------------------------------------------


@dataclass(frozen=True)
class Workload:
    scenario: str
    server: str
    exchanges: int
    tls: bool = False

    @property
    def key(self) -> str:
        return f"{self.scenario}{'+tls' if self.tls else ''}/{CLIENT}2{self.server}"


@dataclass
class RunResult:
    config: str
    throughput: float
    p50_ms: float
    p99_ms: float
    exchanges: int
    collectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    programs: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0  # main phase span
    idle_programs: list[dict[str, Any]] = field(default_factory=list)  # IDLE_S before GO
    idle_s: float = 0.0
    traced_hits: int | None = None  # data-syscall hits of this workload's processes (kprobe)


def pinned(cpu: int, argv: list[str]) -> list[str]:
    # taskset execs the target, so the pid we hold is the target's own
    return ["taskset", "-c", str(cpu), *argv]


def proc_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a live process, all threads, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


def thread_cpu(pid: int) -> dict[int, tuple[str, int, int]]:
    """Per thread of a live process: (name, on-CPU ns, context switches). The ns are the
    scheduler's exact run time (/proc/PID/task/TID/schedstat, first field), where
    /proc/PID/stat counts in clock ticks (10 ms): at a few % of a core over seconds, the
    ticks are too coarse to judge. A thread that ends between two reads loses its share."""
    out: dict[int, tuple[str, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            name = (task / "comm").read_text().strip()
            cs = sum(int(line.split()[1]) for line in (task / "status").read_text().splitlines()
                     if line.startswith(("voluntary_ctxt_switches",
                                         "nonvoluntary_ctxt_switches")))  # fmt: skip
        except OSError:
            continue  # a thread ended while we looked
        out[int(task.name)] = ("main" if int(task.name) == pid else name, ns, cs)
    return out


@dataclass(frozen=True)
class CpuSample:
    """One read of a collector process's CPU counters (see `cpu_delta`)."""

    t: float  # monotonic s
    ticks: tuple[float, float]  # (user, system) s, clock ticks
    threads: dict[int, tuple[str, int, int]]


def cpu_sample(pid: int) -> CpuSample:
    return CpuSample(time.monotonic(), proc_cpu_s(pid), thread_cpu(pid))


def cpu_delta(a: CpuSample, b: CpuSample) -> dict[str, Any]:
    """What a process used between two samples: exact on-CPU ns (all threads, and per
    thread by name), context switches, and the tick-based user and system seconds."""
    threads: dict[str, dict[str, int]] = {}
    for tid, (name, ns, cs) in b.threads.items():
        _, ns0, cs0 = a.threads.get(tid, (name, 0, 0))
        t = threads.setdefault(name, {"cpu_ns": 0, "context_switches": 0})
        t["cpu_ns"] += ns - ns0
        t["context_switches"] += cs - cs0
    return {"cpu_ns": sum(t["cpu_ns"] for t in threads.values()),
            "context_switches": sum(t["context_switches"] for t in threads.values()),
            "cpu_user_s": b.ticks[0] - a.ticks[0], "cpu_system_s": b.ticks[1] - a.ticks[1],
            "wall_s": b.t - a.t, "threads": threads}  # fmt: skip


def prog_fdinfo(pid: int) -> Iterator[dict[str, str]]:
    """The fdinfo fields of each BPF program a process holds open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue  # closed while we looked
        yield dict(line.split(":", 1) for line in info.splitlines() if ":" in line)


def bpf_programs(pid: int) -> dict[int, dict[str, int]]:
    """The BPF programs a process holds open, with the kernel's run counters (fdinfo)."""
    out: dict[int, dict[str, int]] = {}
    for kv in prog_fdinfo(pid):
        prog = {k: int(kv[k]) for k in ("prog_id", "prog_type", "run_time_ns", "run_cnt")}
        out[prog["prog_id"]] = prog
    return out


def bpftool_names() -> dict[int, str]:
    try:
        out = subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, text=True,
                             timeout=30, check=True).stdout  # fmt: skip
        return {p["id"]: p.get("name", "") for p in json.loads(out)}
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return {}


def stop_and_forget(procs: ProcessSet, child: Child) -> int:
    """Stop a child and drop it from the set, so close() never signals its old pid again."""
    code = procs.stop(child)
    procs.children.remove(child)
    return code


@dataclass
class Target:
    """One workload's server, up for the whole round, and what its client needs."""

    wl: Workload
    port: int
    server: Child
    server_exe: str
    client_tls: list[str] = field(default_factory=list)  # the client's TLS options, if any


@dataclass
class ConfigRun:
    """One configuration in one round: every workload's client run under one attach."""

    results: dict[str, RunResult] = field(default_factory=dict)
    collector_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    client_exes: dict[str, str] = field(default_factory=dict)


def _exe(pid: int) -> str:
    return os.path.realpath(f"/proc/{pid}/exe")


def run_config(
    config: str,
    targets: list[Target],
    work_dir: Path,
    *,
    seed: int,
    with_bpf_stats: bool = False,
    rate: float | None = None,
    options: CollectorOptions | None = None,
    servers_only: bool = False,
    early: bool = False,
    idle_span: float = IDLE_S,
) -> ConfigRun:
    """Warm every client, attach the configuration's collectors once (not timed), then run
    the clients one after another; CPU and BPF counters are read around each client.
    ``servers_only``: the collectors trace the servers only; ``early`` (servers only): they
    attach before the clients start, so they see every connection from its first byte
    (HTTP/2 frame-aware capture). With BPF stats, an idle span of ``idle_span`` s (clients
    warm, no traffic) is read before each client's GO."""
    if early and not servers_only:
        raise ValueError("early attach traces the servers only (no client pid yet)")
    out = ConfigRun()
    with ProcessSet() as procs:
        clients: dict[str, Child] = {}
        running: list[RunningCollector] = []

        def attach(tgids: list[int]) -> None:
            running.extend(start_collectors(
                procs, list(CONFIGS[config]), work_dir / "events", tgids=tgids,
                ports=[t.port for t in targets],
                options=options or CONFIG_OPTIONS.get(config) or CollectorOptions(),
                deadline_s=COLLECTOR_DEADLINE_S, binaries=[],
            ))  # fmt: skip

        if early:
            attach([t.server.pid for t in targets])
        for t in targets:
            scen = scenarios.get(t.wl.scenario)
            workload = work_dir / f"{t.wl.key.replace('/', '_')}-{config}.jsonl"
            workload.unlink(missing_ok=True)
            cmd = scenarios.client_command(
                scen, CLIENT, t.port, exchanges=t.wl.exchanges + WARMUP_PER_CONN * scen.connections,
                seed=seed, warmup=WARMUP_PER_CONN, workload=workload, grpc_version=None,
                deadline=CLIENT_DEADLINE_S, rate=rate,
            ) + t.client_tls  # fmt: skip
            c = procs.spawn(f"client {t.wl.key}", pinned(CLIENT_CPU, cmd), stdin=subprocess.PIPE)
            read_line_until(c, lambda s: s == "WARM", READY_TIMEOUT_S, "WARM")
            clients[t.wl.key] = c
            out.client_exes[t.wl.key] = _exe(c.pid)
        if not early:
            attach([t.server.pid for t in targets]
                   + ([] if servers_only else [c.pid for c in clients.values()]))  # fmt: skip
        for t in targets:
            out.results[t.wl.key] = _drive(t, config, clients[t.wl.key], running, work_dir,
                                           with_bpf_stats, idle_span)  # fmt: skip
            stop_and_forget(procs, clients[t.wl.key])
        for rc, stats in zip(running, stop_collectors(procs, running), strict=True):
            procs.children.remove(rc.child)
            if "error" in stats:
                raise CollectorError(f"the {rc.name} collector failed: {stats['error']}")
            out.collector_stats[rc.name] = stats
    # the kprobe program counts each target's data-syscall hits: the hits of this workload
    by_tgid = out.collector_stats.get("kprobe", {}).get("traced_hits_by_tgid") or {}
    for t in targets:
        pids = (t.server.pid,) if servers_only else (t.server.pid, clients[t.wl.key].pid)
        if by_tgid and all(str(p) in by_tgid for p in pids):
            out.results[t.wl.key].traced_hits = sum(by_tgid[str(p)] for p in pids)
    for f in (work_dir / "events").glob("*.bin"):
        f.unlink()  # event files are not looked at; keep the temp dir small
    return out


def _drive(
    t: Target,
    config: str,
    client: Child,
    running: list[RunningCollector],
    work_dir: Path,
    with_bpf_stats: bool,
    idle_span: float = IDLE_S,
) -> RunResult:
    idle0: dict[str, dict[int, dict[str, int]]] = {}
    idle_cpu: dict[str, dict[str, Any]] = {}
    idle_s = 0.0
    if with_bpf_stats and running:
        idle0 = {rc.name: bpf_programs(rc.child.pid) for rc in running}
        cpu_idle0 = {rc.name: cpu_sample(rc.child.pid) for rc in running}
        t0 = time.monotonic()
        time.sleep(idle_span)
        idle_s = time.monotonic() - t0
        idle_cpu = {rc.name: cpu_delta(cpu_idle0[rc.name], cpu_sample(rc.child.pid))
                    for rc in running}  # fmt: skip
    cpu0 = {rc.name: cpu_sample(rc.child.pid) for rc in running}
    size0 = {rc.name: _size(rc.events) for rc in running}
    bpf0 = {rc.name: bpf_programs(rc.child.pid) for rc in running} if with_bpf_stats else {}
    assert client.proc.stdin is not None
    client.proc.stdin.write("GO\n")
    client.proc.stdin.flush()
    read_line_until(client, lambda s: s.startswith("DONE"), CLIENT_DEADLINE_S + 10, "DONE")
    code = client.proc.wait(timeout=30)
    if code != 0:
        raise TargetError(f"{t.wl.key} {config}: client exited with code {code}")
    if t.server.proc.poll() is not None:
        raise TargetError(f"{t.wl.key}: server died (exit code {t.server.proc.returncode})")
    # the collectors' share of this client: what they did until they caught up with it
    time.sleep(SETTLE_S if running else 0)
    res = RunResult(config, 0.0, 0.0, 0.0, 0)
    for rc in running:
        # cpu_ns, context_switches, tick-based cpu_user_s/cpu_system_s, per thread
        res.collectors[rc.name] = cpu_delta(cpu0[rc.name], cpu_sample(rc.child.pid))
        # the recorder flushes after every poll: what it wrote
        res.collectors[rc.name]["event_bytes"] = _size(rc.events) - size0[rc.name]
        if rc.name in idle_cpu:
            res.collectors[rc.name]["idle"] = idle_cpu[rc.name]
    if with_bpf_stats:
        res.programs = _program_deltas(bpf0, {rc.name: bpf_programs(rc.child.pid)
                                              for rc in running})  # fmt: skip
        if idle0:
            res.idle_programs, res.idle_s = _program_deltas(idle0, bpf0), idle_s
    workload = work_dir / f"{t.wl.key.replace('/', '_')}-{config}.jsonl"
    records = [json.loads(line) for line in workload.read_text().splitlines() if line.strip()]
    main = [r for r in records if r.get("phase") == "main"]
    tput, lat = oh.throughput(main), oh.latency_percentiles(main)
    if tput is None or lat is None:
        raise TargetError(f"{t.wl.key} {config}: the workload record has no main-phase exchanges")
    res.throughput, res.exchanges = tput, len(main)
    res.wall_s = (max(r["t_end_ns"] for r in main) - min(r["t_start_ns"] for r in main)) / 1e9
    res.p50_ms, res.p99_ms = lat["p50_ms"], lat["p99_ms"]
    return res


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _program_deltas(
    before: dict[str, dict[int, dict[str, int]]], after: dict[str, dict[int, dict[str, int]]]
) -> list[dict[str, Any]]:
    names = bpftool_names()
    out = []
    for coll, progs in after.items():
        for pid_, p in sorted(progs.items()):
            b = before.get(coll, {}).get(pid_, {"run_time_ns": 0, "run_cnt": 0})
            cost = registry.get(coll).bpf
            kind = cost.kind_of(p["prog_type"]) if cost else str(p["prog_type"])
            out.append({
                "collector": coll, "id": pid_, "name": names.get(pid_, ""), "kind": kind,
                "run_time_ns": p["run_time_ns"] - b["run_time_ns"],
                "run_cnt": p["run_cnt"] - b["run_cnt"],
            })  # fmt: skip
    return out


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    """BPF run-time stats on for the duration, through the bpf(BPF_ENABLE_STATS) fd: the
    kernel counts its holders, so another user writing kernel.bpf_stats_enabled meanwhile
    (a shared machine) can neither turn them off under us nor be left with them on."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 30)()  # union bpf_attr, zeroed; enable_stats.type = RUN_TIME (0)
    fd = -1
    if SYS_BPF is not None:
        fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:  # an older kernel: the sysctl, put back after
        old = BPF_STATS.read_text().strip()
        BPF_STATS.write_text("1\n")
        try:
            yield
        finally:
            BPF_STATS.write_text(old + "\n")
        return
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def servers_running(wls: list[Workload], tls_dir: Path | None = None) -> Iterator[list[Target]]:
    """Every workload's server, pinned, READY; stopped and reaped on the way out. TLS
    workloads use the certificate in ``tls_dir`` (no key log: nobody decrypts here)."""
    with ProcessSet() as procs:
        targets = []
        for wl in wls:
            scen = scenarios.get(wl.scenario)
            port = free_port()
            d = tls_dir if wl.tls else None
            if wl.tls and d is None:
                raise ValueError(f"{wl.key}: a TLS workload needs a certificate directory")
            cmd = pinned(SERVER_CPU, scenarios.server_command(scen, wl.server, port, None)
                         + scenarios.tls_arguments(scen, wl.server, d, TLS_VERSION, None))
            server = procs.spawn(f"server {wl.key}", cmd, stdin=subprocess.PIPE)
            read_line_until(server, lambda s: s.startswith("READY"), READY_TIMEOUT_S, "READY")
            targets.append(Target(wl, port, server, _exe(server.pid),
                                  scenarios.tls_arguments(scen, CLIENT, d, TLS_VERSION, None)))
        yield targets


# -- the session's results, written once at the end -------------------------------------


@dataclass
class Report:
    settings: OverheadSettings
    started_utc: str
    loadavg_start: tuple[float, float, float]
    workloads: dict[str, Any] = field(default_factory=dict)
    bpf_run_time: dict[str, Any] = field(default_factory=dict)
    trap_cost: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    collectors: dict[str, Any] = field(default_factory=dict)
    fixed_rate: dict[str, Any] = field(default_factory=dict)
    h2_walk: dict[str, Any] = field(default_factory=dict)
    floor_builds: dict[str, Any] = field(default_factory=dict)

    def decomposition(self) -> dict[str, Any]:
        """Per workload and collector: the floor, our BPF work, our user space (oh.decompose)."""
        out: dict[str, Any] = {}
        for key, w in self.workloads.items():
            out[key] = oh.decompose(w, self.trap_cost or None, self.floor_builds.get(key))
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """Flat numbers per collector config across workloads, for the report's seed table."""
        out: dict[str, dict[str, float]] = {}
        for config in ("kprobe", "uprobe", "both", "tls"):
            rows = [w["configs"][config] for w in self.workloads.values()
                    if "throughput_ratio" in w["configs"].get(config, {})]  # fmt: skip
            if not rows:
                continue
            s: dict[str, float] = {
                "throughput_ratio_min": min(r["throughput_ratio"] for r in rows),
                "throughput_ratio_max": max(r["throughput_ratio"] for r in rows),
                "p99_ratio_max": max(r["p99_ratio"] for r in rows),
            }
            cpu = [r["collector_cpu_user_s_per_1k"] for r in rows
                   if r.get("collector_cpu_user_s_per_1k") is not None]  # fmt: skip
            if cpu:
                s["cpu_user_s_per_1k_max"] = max(cpu)
            coll = registry.known(config)  # None: a configuration of several
            kinds = coll.bpf.kinds if coll and coll.bpf else ()
            # per workload, the kind the floor reads (oh.decompose): its first one measured
            found = (next((b["by_kind"][x] for x in kinds if b["by_kind"].get(x)), None)
                     for b in self.bpf_run_time.values())  # fmt: skip
            hits = [k.get("ns_per_hit") for k in found if k]
            if any(h is not None for h in hits):
                s["bpf_ns_per_hit_max"] = max(h for h in hits if h is not None)
            dec = [d[config] for d in self.decomposition().values() if config in d]
            for key in ("bpf_ns_per_exchange", "fixed_rate_core_pct", "hits_per_exchange",
                        "context_switches_per_1k"):
                vals = [d[key] for d in dec if d.get(key) is not None]
                if vals:
                    s[f"{key}_max"] = max(vals)
            s["lost_events"] = sum(t["lost_events"]
                                   for t in self.collectors.get(config, {}).values())
            out[config] = s
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": oh.SCHEMA_VERSION,
            "kind": "probebench-overhead",
            "started_utc": self.started_utc,
            "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "settings": {
                "rounds": self.settings.rounds,
                "scale": self.settings.scale,
                "servers": list(self.settings.servers),
                "scenarios": list(self.settings.scenarios),
                "client": CLIENT,
                "warmup_per_connection": WARMUP_PER_CONN,
                "order": "rotated by one configuration per round",
                "cpu_placement": {"server": [SERVER_CPU], "client": [CLIENT_CPU],
                                  "collectors": "unpinned", "trap_helper": [CLIENT_CPU]},
                "bpf_stats_during_rounds": False,
                "fixed_rate": {"exchanges_per_s": FIXED_RATE, "seconds_at_scale_1": FIXED_RATE_S,
                               "seconds_min": FIXED_RATE_MIN_S,
                               "exchanges": fixed_rate_exchanges(self.settings.scale),
                               "loop": "open: exchange k due at start + k/rate",
                               "bpf_stats": True, "idle_s": FIXED_IDLE_S,
                               "process_cpu": "exact on-CPU ns of every thread "
                                              "(/proc/PID/task/*/schedstat); user and system "
                                              "split by the clock-tick ratio (/proc/PID/stat)",
                               "span": "GO until the collector caught up (settle included)",
                               "core_pct_at_rate_target": "idle process % + (process % above "
                                                          "idle + BPF %) x target / the span's "
                                                          "rate: a linear projection"},
                "fixed_rate_only": self.settings.fixed_rate_only,
                "loadavg_start": list(self.loadavg_start),
                "loadavg_end": list(os.getloadavg()),
                "ci": "95% delta-method on the log ratio of means, Welch df",
                "test": "Welch t-test (p), Mann-Whitney U beside it; alpha 0.05",
            },
            "summary": self.summary(),
            "workloads": self.workloads,
            "bpf_run_time": self.bpf_run_time,
            "collectors": self.collectors,
            "trap_cost": self.trap_cost,
            "fixed_rate": self.fixed_rate,
            "h2_walk": self.h2_walk,
            "floor_builds": self.floor_builds,
            "decomposition": self.decomposition(),
            "warnings": self.warnings,
        }


@pytest.fixture(scope="module")
def report(overhead_settings: OverheadSettings) -> Iterator[Report]:
    r = Report(overhead_settings, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               os.getloadavg())  # fmt: skip
    yield r
    if r.workloads or r.trap_cost or r.fixed_rate:
        out = overhead_settings.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r.to_dict(), indent=1) + "\n")
        print(f"\noverhead results: {out}")


# -- the interleaved rounds --------------------------------------------------------------


@dataclass
class Session:
    workloads: list[Workload]
    work_dir: Path
    configs: list[str] = field(default_factory=lambda: list(PLAIN_CONFIGS))
    tls_dir: Path | None = None  # the certificate of the TLS workloads
    results: dict[str, dict[str, list[RunResult]]] = field(default_factory=dict)
    not_measured: dict[str, dict[str, str]] = field(default_factory=dict)
    orders: list[list[str]] = field(default_factory=list)
    collector_totals: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    probed: dict[str, list[str]] = field(default_factory=dict)  # binaries uprobes hit

    def drop_uprobe(self, reason: str) -> None:
        """The uprobe collector failed: its configurations leave the session everywhere."""
        for c in [c for c in self.configs if "uprobe" in CONFIGS[c]]:
            self.configs.remove(c)
            for wl in self.workloads:
                self.results.get(wl.key, {}).pop(c, None)
                self.not_measured.setdefault(wl.key, {})[c] = f"not measured: {reason}"

    def one_round(self) -> None:
        r = len(self.orders)
        k = r % len(self.configs)
        order = self.configs[k:] + self.configs[:k]
        self.orders.append(order)
        with servers_running(self.workloads, self.tls_dir) as targets:
            for config in order:
                if config not in self.configs:
                    continue  # dropped earlier this round
                try:
                    run = run_config(config, targets, self.work_dir, seed=r + 1)
                except CollectorError as e:
                    if "uprobe" not in CONFIGS[config]:
                        raise
                    self.drop_uprobe(f"the uprobe collector failed: {e}")
                    continue
                self._keep(config, targets, run)

    def _keep(self, config: str, targets: list[Target], run: ConfigRun) -> None:
        for name, st in run.collector_stats.items():
            tot = self.collector_totals.setdefault(config, {}).setdefault(
                name, {"lost_events": 0, "attached_probes": st.get("attached_probes"),
                       "unsupported": st.get("unsupported"), "attaches": 0})  # fmt: skip
            tot["lost_events"] += st.get("lost_events") or 0
            tot["attaches"] += 1
        up = run.collector_stats.get("uprobe")
        for t in targets:
            key = t.wl.key
            if up is not None:
                probed = [os.path.basename(b) for b in (t.server_exe, run.client_exes[key])
                          if (up.get("binaries") or {}).get(b, {}).get("probes")]  # fmt: skip
                if not probed:
                    errs = [str((up.get("binaries") or {}).get(b, {}).get("error"))
                            for b in (t.server_exe, run.client_exes[key])]  # fmt: skip
                    self.not_measured.setdefault(key, {})[config] = (
                        "not measured: the uprobe collector has no probe points in this "
                        f"workload's binaries ({'; '.join(errs)})")  # fmt: skip
                    continue
                self.probed[key] = probed
            self.results.setdefault(key, {}).setdefault(config, []).append(run.results[key])


def workloads(settings: OverheadSettings) -> list[Workload]:
    return [Workload(s, srv, max(MIN_EXCHANGES, round(EXCHANGES[(s, srv)] * settings.scale)))
            for s in settings.scenarios for srv in settings.servers]  # fmt: skip


def test_overhead(
    benchmark: BenchmarkFixture,
    report: Report,
    overhead_settings: OverheadSettings,
    tmp_path: Path,
) -> None:
    (tmp_path / "events").mkdir()
    sess = Session(workloads(overhead_settings), tmp_path)
    if overhead_settings.fixed_rate_only:
        benchmark.group = "fixed-rate pass (attach included)"
        benchmark.pedantic(lambda: setattr(report, "fixed_rate", _rate_pass(
            sess, tmp_path, overhead_settings.scale)), rounds=1, iterations=1)  # fmt: skip
        n = fixed_rate_exchanges(overhead_settings.scale)
        for wl in sess.workloads:
            _print_workload(Workload(wl.scenario, wl.server, n), {}, None, [],
                            report.fixed_rate.get(wl.key))  # fmt: skip
        return
    benchmark.group = "overhead rounds (attach included; see extra_info)"
    benchmark.pedantic(sess.one_round, rounds=overhead_settings.rounds, iterations=1)
    bpf = _bpf_pass(sess, tmp_path)
    fixed = _rate_pass(sess, tmp_path, overhead_settings.scale)
    report.fixed_rate = fixed
    report.h2_walk = _h2_walk_pass(sess, tmp_path)
    report.floor_builds = _floor_pass(sess, tmp_path, overhead_settings.scale)
    for wl in sess.workloads:
        entry = _analyse(sess, wl, overhead_settings.rounds)
        entry["bpf_run_time"] = bpf.get(wl.key)
        entry["fixed_rate"] = fixed.get(wl.key)
        report.workloads[wl.key] = {k: v for k, v in entry.items() if k != "warnings"}
        report.bpf_run_time[wl.key] = bpf.get(wl.key)
        report.warnings += entry["warnings"]
        _print_workload(wl, entry["configs"], bpf.get(wl.key), entry["warnings"], fixed.get(wl.key))
    for key, modes in report.h2_walk.items():
        for mode, m in modes.items():
            print(f"\n{key} server side, {mode}: {m['bpf_ns_per_exchange']:.0f} ns BPF/exchange, "
                  f"exit programs {m['exit_ns_per_hit'] or 0:.0f} ns/hit x "
                  f"{m['exit_hits_per_exchange']:.1f} hits/exchange, "
                  f"{m['h2_frame_aware_calls']} frame-aware calls")  # fmt: skip
    for key, builds in report.floor_builds.items():
        _print_floor(key, builds)
    report.collectors.update(sess.collector_totals)
    benchmark.extra_info.update(workloads=report.workloads, collectors=sess.collector_totals,
                                warnings=report.warnings)  # fmt: skip


def test_tls_overhead(
    benchmark: BenchmarkFixture,
    report: Report,
    overhead_settings: OverheadSettings,
    tmp_path: Path,
) -> None:
    """The TLS collector on HTTPS/1.1 keep-alive (TLS 1.3), Go client: none and tls
    interleaved per round, then its programs' hits and run time with BPF stats on. A Go
    server is probed at crypto/tls, a Python one at libssl (OpenSSL)."""
    if overhead_settings.fixed_rate_only:
        pytest.skip("only the fixed-rate pass (--overhead-fixed-rate-only)")
    (tmp_path / "events").mkdir()
    tls_dir = make_tls_files(tmp_path / "tls").dir
    wls = [Workload(w.scenario, w.server, w.exchanges, tls=True)
           for w in workloads(overhead_settings) if w.scenario == "http11-keepalive"]
    sess = Session(wls, tmp_path, list(TLS_CONFIGS), tls_dir)
    benchmark.group = "TLS overhead rounds (attach included; see extra_info)"
    benchmark.pedantic(sess.one_round, rounds=overhead_settings.rounds, iterations=1)
    bpf = _bpf_pass(sess, tmp_path)
    for wl in sess.workloads:
        entry = _analyse(sess, wl, overhead_settings.rounds)
        entry["tls_version"] = TLS_VERSION
        entry["bpf_run_time"] = bpf.get(wl.key)
        report.workloads[wl.key] = {k: v for k, v in entry.items() if k != "warnings"}
        report.bpf_run_time[wl.key] = bpf.get(wl.key)
        report.warnings += entry["warnings"]
        _print_workload(wl, entry["configs"], bpf.get(wl.key), entry["warnings"])
    report.collectors.update(sess.collector_totals)
    benchmark.extra_info.update(workloads={w.key: report.workloads[w.key] for w in wls},
                                collectors=sess.collector_totals)  # fmt: skip


def _analyse(sess: Session, wl: Workload, rounds: int) -> dict[str, Any]:
    res = sess.results.get(wl.key, {})
    if "none" not in res:
        raise AssertionError(f"{wl.key}: no baseline samples")
    samples = {c: {"throughput": [r.throughput for r in rs], "p50_ms": [r.p50_ms for r in rs],
                   "p99_ms": [r.p99_ms for r in rs]}
               for c, rs in res.items()}  # fmt: skip
    configs, warnings = oh.analyse_configs(samples, label=wl.key)
    for c, rs in res.items():
        configs[c]["rounds"] = len(rs)
        n = sum(r.exchanges for r in rs)
        per: dict[str, dict[str, float]] = {}
        for name in CONFIGS[c]:
            per[name] = {
                "cpu_user_s_per_1k": 1000 * sum(r.collectors[name]["cpu_user_s"] for r in rs) / n,
                "cpu_system_s_per_1k":
                    1000 * sum(r.collectors[name]["cpu_system_s"] for r in rs) / n,
                "context_switches_per_1k":
                    1000 * sum(r.collectors[name]["context_switches"] for r in rs) / n,
                # payload and event headers the collector wrote per exchange: what is copied
                # (ring, batch, file), so what the per-byte part of its cost scales with
                "event_bytes_per_exchange":
                    sum(r.collectors[name].get("event_bytes", 0) for r in rs) / n,
                # exact on-CPU time of the collector's threads (the per-1k s are ticks)
                "cpu_ns_per_exchange": sum(r.collectors[name]["cpu_ns"] for r in rs) / n,
            }  # fmt: skip
            per[name]["cpu_s_per_1k"] = (per[name]["cpu_user_s_per_1k"]
                                         + per[name]["cpu_system_s_per_1k"])  # fmt: skip
        if per:
            configs[c]["collectors"] = per
            configs[c]["collector_cpu_user_s_per_1k"] = sum(v["cpu_user_s_per_1k"]
                                                            for v in per.values())  # fmt: skip
            configs[c]["collector_cpu_s_per_1k"] = sum(v["cpu_s_per_1k"] for v in per.values())
            configs[c]["lost_events_all_workloads"] = sum(
                t["lost_events"] for t in sess.collector_totals.get(c, {}).values())
    for c, why in sess.not_measured.get(wl.key, {}).items():
        configs[c] = {"not_measured": why}
    return {"scenario": wl.scenario, "client": CLIENT, "server": wl.server,
            "exchanges": wl.exchanges, "rounds": rounds, "order": sess.orders,
            "uprobe_probed_binaries": sess.probed.get(wl.key, []),
            "configs": configs, "warnings": warnings}  # fmt: skip


def _bpf_pass(sess: Session, work_dir: Path) -> dict[str, Any]:
    """One more attach of every available collector with BPF stats on: ns per program run,
    read around each workload's client."""
    config = next(c for c in ("both", "tls", "kprobe") if c in sess.configs)
    with bpf_stats_enabled(), servers_running(sess.workloads, sess.tls_dir) as targets:
        run = run_config(config, targets, work_dir, seed=1000, with_bpf_stats=True)
    out: dict[str, Any] = {}
    for key, res in run.results.items():
        _name_programs(res.programs, run.collector_stats)
        out[key] = {"config": config, **_bpf_figures(res),
                    "programs": [p for p in res.programs if p["run_cnt"]]}  # fmt: skip
    return out


def _bpf_figures(res: RunResult) -> dict[str, Any]:
    """One client's run with BPF stats on: its programs' totals by kind, the workload's own
    hits and the idle span (what oh.decompose and oh.floor_figures read)."""
    out = {"exchanges": res.exchanges, "throughput": res.throughput,
           "by_kind": _by_kind(res.programs, res.exchanges), "idle": _idle(res)}  # fmt: skip
    if res.traced_hits is not None:
        # the workload's own processes' hits; the rest of run_cnt is other processes'
        # syscalls passing the filter
        out["target_hits_per_exchange"] = res.traced_hits / res.exchanges
    return out


def _idle(res: RunResult) -> dict[str, Any]:
    """What the kernel-side programs did in the idle span before GO: hits per second and
    ns per hit of hits the filter turned away (other processes' syscalls)."""
    progs = [p for p in res.idle_programs if p["collector"] == "kprobe"]
    cnt = sum(p["run_cnt"] for p in progs)
    return {"seconds": res.idle_s, "kprobe_hits": cnt,
            "kprobe_ns_per_hit": oh.per_hit_ns(sum(p["run_time_ns"] for p in progs), cnt)}


def _h2_walk_pass(sess: Session, work_dir: Path) -> dict[str, Any]:
    """The HTTP/2 frame walk's cost: the gRPC servers traced alone, once with the collector
    attached before the clients connect (every call walked frame by frame from the preface)
    and once after (connections found mid-stream: prefix capture until a call starts with a
    plausible frame header, then the walk on trial), BPF stats on; per exit-program hit and
    per exchange, server side only."""
    wls = [w for w in sess.workloads if scenarios.get(w.scenario).is_grpc]
    out: dict[str, Any] = {}
    if not wls:
        return out
    with bpf_stats_enabled(), servers_running(wls) as targets:
        for mode, early in (("frame_aware", True), ("found_mid_stream", False)):
            run = run_config("kprobe", targets, work_dir, seed=3000, with_bpf_stats=True,
                             servers_only=True, early=early)  # fmt: skip
            st = run.collector_stats.get("kprobe", {})
            for key, res in run.results.items():
                _name_programs(res.programs, run.collector_stats)
                exits = [p for p in res.programs if "sys_exit_" in p["name"] and p["run_cnt"]]
                t_ns = sum(p["run_time_ns"] for p in res.programs)
                ex_ns = sum(p["run_time_ns"] for p in exits)
                ex_cnt = sum(p["run_cnt"] for p in exits)
                out.setdefault(key, {})[mode] = {
                    "exchanges": res.exchanges,
                    "bpf_ns_per_exchange": t_ns / res.exchanges,
                    "exit_ns_per_hit": oh.per_hit_ns(ex_ns, ex_cnt),
                    "exit_hits_per_exchange": ex_cnt / res.exchanges,
                    "target_hits_per_exchange": (res.traced_hits or 0) / res.exchanges,
                    "h2_frame_aware_calls": st.get("h2_frame_aware_calls"),
                    "truncated_calls": st.get("truncated_calls"),
                    "programs": [p for p in res.programs if p["run_cnt"]],
                }
    return out


def _floor_pass(sess: Session, work_dir: Path, scale: float) -> dict[str, Any]:
    """The kernel-side collector alone beside its floor builds (FLOOR_BUILDS), BPF stats on:
    at saturation, each build's BPF run time (as _bpf_pass), then paced to FIXED_RATE, its
    share of a core (as _rate_pass). Servers restart per build, as in a round."""
    if "kprobe" not in sess.configs:
        return {}
    paced = [Workload(w.scenario, w.server, fixed_rate_exchanges(scale)) for w in sess.workloads]
    out: dict[str, Any] = {}
    for build in FLOOR_BUILDS:
        opts = CollectorOptions(kprobe_floor="none" if build == "collector" else build)
        with bpf_stats_enabled(), servers_running(sess.workloads) as targets:
            run = run_config("kprobe", targets, work_dir, seed=4000, with_bpf_stats=True,
                             options=opts)  # fmt: skip
        for key, res in run.results.items():
            _name_programs(res.programs, run.collector_stats)
            out.setdefault(key, {})[build] = _bpf_figures(res)
        with bpf_stats_enabled(), servers_running(paced) as targets:
            run = run_config("kprobe", targets, work_dir, seed=4001, with_bpf_stats=True,
                             rate=FIXED_RATE, idle_span=FIXED_IDLE_S, options=opts)  # fmt: skip
        for key, res in run.results.items():
            _name_programs(res.programs, run.collector_stats)
            out[key][build]["fixed_rate"] = _at_rate("kprobe", res.collectors["kprobe"], res)
            out[key][build]["fixed_rate"]["rate_achieved"] = res.throughput
    return out


def _print_floor(key: str, builds: dict[str, Any]) -> None:
    print(f"\n{key}, the kernel side against its floor builds:")
    cost = registry.get("kprobe").bpf
    figures = oh.floor_figures(builds, cost.kinds if cost else (), "kprobe")
    for build, f in figures.items():
        side = f["bpf_ns_per_exchange_per_side"]
        print(f"  {build:9s} {'n/a' if side is None else format(side, ',.0f')} ns BPF per "
              f"exchange and side, {f['throughput']:.0f}/s; at {FIXED_RATE:.0f}/s "
              f"{f['fixed_rate_core_pct'] or float('nan'):.2f}% of a core "
              f"(BPF {f['fixed_rate_bpf_pct'] or float('nan'):.2f}%)")  # fmt: skip


def _name_programs(programs: list[dict[str, Any]], stats: dict[str, dict[str, Any]]) -> None:
    """Full program names from the collectors' own report (bpftool cuts them at 15)."""
    for p in programs:
        names = stats.get(p["collector"], {}).get("programs")
        full = names.get(str(p["id"])) if isinstance(names, dict) else None
        if full:
            p["name"] = full


def _by_kind(programs: list[dict[str, Any]], exchanges: int) -> dict[str, dict[str, Any]]:
    by_kind: dict[str, dict[str, Any]] = {}
    for p in programs:
        k = by_kind.setdefault(p["kind"], {"programs": 0, "run_time_ns": 0, "run_cnt": 0})
        k["programs"] += 1
        k["run_time_ns"] += p["run_time_ns"]
        k["run_cnt"] += p["run_cnt"]
        p["ns_per_hit"] = oh.per_hit_ns(p["run_time_ns"], p["run_cnt"])
        p["hits_per_exchange"] = p["run_cnt"] / exchanges
    for k in by_kind.values():
        k["ns_per_hit"] = oh.per_hit_ns(k["run_time_ns"], k["run_cnt"])
        k["hits_per_exchange"] = k["run_cnt"] / exchanges
        k["ns_per_exchange"] = k["run_time_ns"] / exchanges
    return by_kind


def fixed_rate_exchanges(scale: float) -> int:
    """Exchanges of the rate pass: FIXED_RATE_S at scale 1, never under FIXED_RATE_MIN_S."""
    return max(MIN_EXCHANGES, round(FIXED_RATE * max(FIXED_RATE_MIN_S, FIXED_RATE_S * scale)))


def _rate_pass(sess: Session, work_dir: Path, scale: float) -> dict[str, Any]:
    """Each collector alone, the clients paced open loop to FIXED_RATE exchanges/s (the
    load production agents quote their CPU at): the collector's CPU (its process's exact
    on-CPU time, all threads, + its programs' BPF run time) as a percentage of one core,
    over the span from GO until the collector caught up (`cpu_delta`'s wall_s). Before GO,
    an idle span of FIXED_IDLE_S (attached, no traffic) gives its cost with nothing to do."""
    n = fixed_rate_exchanges(scale)
    wls = [Workload(w.scenario, w.server, n) for w in sess.workloads]
    configs = ["none"] + [c for c in ("kprobe", "uprobe") if c in sess.configs]
    out: dict[str, Any] = {}
    with bpf_stats_enabled(), servers_running(wls) as targets:
        for config in configs:
            run = run_config(config, targets, work_dir, seed=2000, with_bpf_stats=True,
                             rate=FIXED_RATE, idle_span=FIXED_IDLE_S)  # fmt: skip
            for key, res in run.results.items():
                e = out.setdefault(key, {"rate_target": FIXED_RATE, "exchanges": n,
                                         "configs": {}})  # fmt: skip
                _name_programs(res.programs, run.collector_stats)
                entry: dict[str, Any] = {"rate_achieved": res.throughput, "wall_s": res.wall_s,
                                         "p50_ms": res.p50_ms, "p99_ms": res.p99_ms}  # fmt: skip
                for name, c in res.collectors.items():
                    if name in (sess.not_measured.get(key) or {}):
                        continue  # no probe points in this workload's binaries
                    entry[name] = _at_rate(name, c, res)
                e["configs"][config] = entry
    return out


def _at_rate(name: str, c: dict[str, Any], res: RunResult) -> dict[str, Any]:
    """One collector's share of a core in the rate pass, and its idle span apart."""
    progs = [p for p in res.programs if p["collector"] == name]
    bpf_s = sum(p["run_time_ns"] for p in progs) / 1e9
    # the kernel-side programs also run (briefly) for every other process's syscalls;
    # that share, estimated from the idle span, is not this workload's
    others_s = 0.0
    if name == "kprobe" and res.traced_hits is not None:
        others_s = oh.others_bpf_ns(sum(p["run_cnt"] for p in progs), res.traced_hits,
                                    _idle(res)["kprobe_ns_per_hit"]) / 1e9  # fmt: skip
    x = oh.core_share(c["cpu_user_s"], c["cpu_system_s"], bpf_s - others_s, c["wall_s"],
                      c["context_switches"], c["cpu_ns"])  # fmt: skip
    x["bpf_other_processes_s"] = others_s
    x["main_phase_s"] = res.wall_s
    x["cpu_ns_per_exchange"] = c["cpu_ns"] / res.exchanges
    x["bpf_ns_per_exchange"] = 1e9 * (bpf_s - others_s) / res.exchanges
    x["context_switches_per_1k"] = 1000 * c["context_switches"] / res.exchanges
    w = c["wall_s"]
    x["threads"] = oh.thread_shares(c["threads"], w)
    idle = c.get("idle")
    if idle:
        idle_bpf = sum(p["run_time_ns"] for p in res.idle_programs if p["collector"] == name)
        x["idle"] = oh.idle_share(idle["cpu_ns"], idle_bpf, idle["wall_s"],
                                  idle["context_switches"], idle["threads"])  # fmt: skip
        if "process_pct" in x and "process_pct" in x["idle"]:
            x["process_pct_above_idle"] = x["process_pct"] - x["idle"]["process_pct"]
            # a loaded machine may not reach the rate (or the span holds the settle): the
            # traffic's share scaled to FIXED_RATE over the span, the idle share as measured
            k = FIXED_RATE * w / res.exchanges
            x["core_pct_at_rate_target"] = (x["idle"]["process_pct"]
                                            + k * (x["process_pct_above_idle"] + x["bpf_pct"]))
    return x


def _print_workload(
    wl: Workload,
    configs: dict[str, Any],
    bpf: dict[str, Any] | None,
    warnings: list[str],
    fixed: dict[str, Any] | None = None,
) -> None:
    def f(x: float | None, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    print(f"\n{wl.key}: {wl.exchanges} exchanges per run")
    for c, e in configs.items():
        if "not_measured" in e:
            print(f"  {c:7s} {e['not_measured']}")
            continue
        t = e["throughput"]
        line = (f"  {c:7s} {t['mean']:9.0f}/s cv {f(t['cv'] and 100 * t['cv'], '4.1f')}%  "
                f"p50 {e['p50_ms']['mean']:.3f} ms  p99 {e['p99_ms']['mean']:.3f} ms")
        if "throughput_ratio" in e:
            lo, hi = e["ci95"] or (None, None)
            line += (f"  ratio {e['throughput_ratio']:.3f} [{f(lo, '.3f')}, {f(hi, '.3f')}]"
                     f" p={f(e['p'], '.3g')}  p99x {e['p99_ratio']:.2f}"
                     f"  cpu {e['collector_cpu_user_s_per_1k']:.3f} s/1k")  # fmt: skip
        print(line)
    for kind, k in (bpf or {}).get("by_kind", {}).items():
        print(f"  bpf {kind}: {f(k['ns_per_hit'], '.0f')} ns/hit, "
              f"{k['hits_per_exchange']:.1f} hits/exchange ({k['programs']} programs), "
              f"{k['ns_per_exchange']:.0f} ns/exchange")  # fmt: skip
    if bpf and "target_hits_per_exchange" in bpf:
        print(f"  kprobe: {bpf['target_hits_per_exchange']:.1f} hits/exchange by the workload's "
              "own processes")  # fmt: skip
    for c, e in ((fixed or {}).get("configs") or {}).items():
        for name in ("kprobe", "uprobe"):
            if name in e:
                print(_rate_line(name, e[name], e["rate_achieved"], c))
    for w in warnings:
        print(f"  warning: {w}")


def _rate_line(name: str, x: dict[str, Any], rate: float, config: str) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    line = (f"  at {rate:.0f}/s ({config}): {name} {f(x['core_pct'])}% of a core "
            f"({f(x.get('core_pct_at_rate_target'))}% projected to {FIXED_RATE:.0f}/s) = process "
            f"{f(x.get('process_pct'))} (user {f(x['user_pct'])}, sys {f(x['system_pct'])}, "
            f"by ticks) + bpf {f(x['bpf_pct'])}; {x.get('cpu_ns_per_exchange', 0):.0f} ns "
            f"process CPU/exchange; {x['context_switches_per_s']:.0f} wake-ups/s")
    threads = x.get("threads") or {}
    line += "".join(f"\n    thread {t}: {v['process_pct']:.3f}%, "
                    f"{v['context_switches_per_s']:.0f} wake-ups/s" for t, v in threads.items())
    idle = x.get("idle") or {}
    if "process_pct" in idle:
        line += (f"\n    idle ({idle['wall_s']:.1f} s, no traffic): process "
                 f"{idle['process_pct']:.3f}%, bpf {idle['bpf_pct']:.3f}%, "
                 f"{idle['context_switches_per_s']:.0f} wake-ups/s")
    return line


# -- the bare trap cost ------------------------------------------------------------------

TRAP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* noinline and an asm barrier: the call must stay, so a uprobe on it fires every time */
__attribute__((noinline, used)) void pb_empty(void) { __asm__ volatile("" ::: "memory"); }

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    long n = atol(argv[2]);
    char c = 0;
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0 || n <= 0) return 2;
    long long t0 = now_ns();
    if (strcmp(argv[1], "write") == 0) {
        for (long i = 0; i < n; i++)
            if (write(fd, &c, 1) != 1) return 1;
    } else if (strcmp(argv[1], "call") == 0) {
        for (long i = 0; i < n; i++) pb_empty();
    } else {
        return 2;
    }
    printf("%.3f\n", (double)(now_ns() - t0) / n);
    return 0;
}
"""
EMPTY_TP = b"TRACEPOINT_PROBE(syscalls, sys_enter_write) { return 0; }"
EMPTY_UPROBE = b"int pb_empty_probe(struct pt_regs *ctx) { return 0; }"


def _write_under_collector(helper: Path, work: Path) -> list[float]:
    """write() of an untraced process, the kernel-side collector attached for another."""
    out = []
    with ProcessSet() as procs:
        rc = start_collector(procs, "kprobe", work / "trap-events", tgids=[os.getpid()],
                             ports=[], options=CollectorOptions(),
                             deadline_s=COLLECTOR_DEADLINE_S, binaries=[])  # fmt: skip
        try:
            for _ in range(TRAP_ROUNDS):
                out.append(_trap_ns(helper, "write", TRAP_N["write"]))
        finally:
            stop_collector(procs, rc)
            procs.children.remove(rc.child)
    return out


def _trap_ns(helper: Path, mode: str, n: int) -> float:
    out = subprocess.run(pinned(CLIENT_CPU, [str(helper), mode, str(n)]), capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    return float(out.stdout.strip())


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc missing")
def test_trap_cost(
    benchmark: BenchmarkFixture, report: Report, overhead_settings: OverheadSettings,
    tmp_path: Path,
) -> None:
    if overhead_settings.fixed_rate_only:
        pytest.skip("only the fixed-rate pass (--overhead-fixed-rate-only)")
    from harness.collectors.bpfsource import load_bcc

    bcc = load_bcc()
    src, helper = tmp_path / "trap.c", tmp_path / "trap"
    src.write_text(TRAP_C)
    subprocess.run(["gcc", "-O2", "-g", "-o", str(helper), str(src)], check=True, timeout=120)
    samples: dict[str, list[float]] = {k: [] for k in
                                       ("write", "write_tracepoint", "call", "call_uprobe")}

    def one_round() -> None:
        # bare and traced alternate inside every round, so drift hits both alike
        samples["write"].append(_trap_ns(helper, "write", TRAP_N["write"]))
        tp = bcc.BPF(text=EMPTY_TP)  # auto-attaches to sys_enter_write
        try:
            samples["write_tracepoint"].append(_trap_ns(helper, "write", TRAP_N["write"]))
        finally:
            tp.cleanup()
        samples["call"].append(_trap_ns(helper, "call", TRAP_N["call"]))
        up = bcc.BPF(text=EMPTY_UPROBE)
        try:
            up.attach_uprobe(name=str(helper).encode(), sym=b"pb_empty",
                             fn_name=b"pb_empty_probe")  # fmt: skip
            samples["call_uprobe"].append(_trap_ns(helper, "call", TRAP_N["call_uprobe"]))
        finally:
            up.cleanup()

    benchmark.group = "trap cost rounds"
    benchmark.pedantic(one_round, rounds=TRAP_ROUNDS, iterations=1)
    samples["write_kprobe_other"] = _write_under_collector(helper, tmp_path)
    med = {k: oh.summarize(v).median for k, v in samples.items()}
    # the minimum is the least disturbed round (timeit's reasoning): the added cost from it
    low = {k: min(v) for k, v in samples.items()}
    cost = {
        "unit": "ns per operation",
        "iterations": dict(TRAP_N),
        "rounds": TRAP_ROUNDS,
        "median_ns": med,
        "min_ns": low,
        "samples_ns": samples,
        "tracepoint_added_ns": low["write_tracepoint"] - low["write"],
        # the kernel-side collector attached, tracing other processes: what its two programs
        # on write (enter, exit) cost a process it does not trace; the floor is 2 traps
        "kprobe_untraced_write_added_ns": low["write_kprobe_other"] - low["write"],
        "uprobe_added_ns": low["call_uprobe"] - low["call"],
        "write_tracepoint_ratio": oh.compare(samples["write"],
                                             samples["write_tracepoint"]).to_dict(),
    }  # fmt: skip
    report.trap_cost = cost
    benchmark.extra_info.update(cost)
    print(f"\ntrap cost (ns/op, min of {TRAP_ROUNDS}): write {low['write']:.0f}, with empty "
          f"tracepoint {low['write_tracepoint']:.0f} (+{cost['tracepoint_added_ns']:.0f}); "
          f"call {low['call']:.1f}, with uprobe {low['call_uprobe']:.0f} "
          f"(+{cost['uprobe_added_ns']:.0f}); write of an untraced process with the kprobe "
          f"collector attached {low['write_kprobe_other']:.0f} "
          f"(+{cost['kprobe_untraced_write_added_ns']:.0f}); medians {med}")  # fmt: skip
