"""A/B micro-bench of the kernel-side collector's BPF cost: two builds, pinned, interleaved.

    .venv/bin/python benchmarks/kprobe_ab.py --build base=/var/tmp/w10/base --build new=. \\
        --scenario http11-keepalive --rounds 6 --exchanges 4000

A build ``NAME=TREE@FLOOR`` is the tree's floor build (recorder ``--floor``, ``PB_FLOOR_*`` in
bpf/kprobe_events.h): ``@filter`` returns after the target filter, ``@record`` writes one
record of at most 255 bytes per call with no framing. Against the tree itself they split its
cost into what any collector on these hooks pays and what the framing adds::

    .venv/bin/python benchmarks/kprobe_ab.py --build full=. --build record=.@record \\
        --build filter=.@filter --rounds 4 --exchanges 30000

Each build is a source tree (its ``bpf/`` and ``harness/``; e.g. ``git worktree add --detach
DIR COMMIT``): its recorder runs from there, so the builds differ only in what the trees hold.
One Go server (pinned to CPU 1) serves every round; per round each build, in an order rotated
by one, gets a fresh Go client (pinned to CPU 0), warmed before the recorder attaches, then a
main phase of ``--exchanges`` exchanges. Workload processes run at nice -19 (a loaded shared
machine otherwise decides the timings). BPF stats are on throughout; each program's run time
and count are read from the recorder's fds around an idle span (attached, no traffic) and
around the main phase.

Reported per run: ns per hit of the data programs (sys_exit_read, sys_enter_write,
sys_exit_write: tail-called walkers run inside them and count there), and BPF ns per exchange
per side over the workload's own hits: every process's read/write passes the programs, and
their hits (the data programs' run count less the workload's, `traced_hits_by_tgid`) are
charged at the idle span's ns per hit and taken out. Then per build the median and range over
rounds, and each build's median against the first's. ``--profile`` adds the recorder's
PB_PROF_* counters per exchange (a separate build with counters: its timings are not
comparable with a build without); the walkers' verified instructions are printed once.

``--together`` attaches every build at once to each client instead (order rotated by round):
the builds then see the very same syscalls under the same load, but the first attached pays
more (in session 8's runs about 0.7 us per exchange and side), so compare over rounds that
give each build each place equally often.

Not a pytest bench (nothing asserted, nothing written to results/): a tool to decide whether
a BPF change is worth keeping. Needs root, bcc and the Go targets (scripts/setup). Timings on
a loaded 2-core VM move by 5-15% between rounds; only differences well past that are news.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import (
    CLIENT_CPU,
    SERVER_CPU,
    bpf_programs,
    bpf_stats_enabled,
    pinned,
    prog_fdinfo,
)

from harness import scenarios
from harness.collectors import registry
from harness.runner.collectors import CollectorOptions
from harness.runner.lifecycle import Child, ProcessSet, read_line_until
from harness.runner.record import free_port

WARMUP_PER_CONN = 10
IDLE_S = 0.5
DATA_PROGRAMS = ("sys_exit_read", "sys_enter_write", "sys_exit_write")
NICE = -19


@dataclass
class Run:
    build: str
    exchanges: int
    wall_s: float
    target_hits: int
    per_program: dict[str, tuple[int, int]]  # name -> (run_cnt, run_time_ns), main phase
    idle_ns_per_hit: float
    profile: dict[str, int] = field(default_factory=dict)
    verified_insns: dict[str, int] = field(default_factory=dict)  # the walkers'

    def data_totals(self) -> tuple[int, int]:
        cnt = sum(c for n, (c, _) in self.per_program.items() if _is_data(n))
        ns = sum(t for n, (_, t) in self.per_program.items() if _is_data(n))
        return cnt, ns

    def target_ns(self) -> float:
        """BPF ns of the workload's own hits: others' hits charged at the idle cost."""
        cnt, ns = self.data_totals()
        others = max(0, cnt - self.target_hits)
        return ns - others * self.idle_ns_per_hit

    def per_side_ns(self) -> float:
        return self.target_ns() / self.exchanges / 2

    def ns_per_hit(self, prog: str) -> float:
        c, t = self.per_program.get(prog, (0, 0))
        return t / c if c else float("nan")


def _is_data(name: str) -> bool:
    return any(s in name for s in ("sys_enter_", "sys_exit_")) and any(
        s in name for s in ("read", "write", "recv", "send")
    )


def _short(name: str) -> str:
    return name.rsplit("__", 1)[-1]


@dataclass(frozen=True)
class Build:
    name: str
    tree: Path
    floor: str = "none"  # a floor build of the tree (recorder --floor)

    @classmethod
    def parse(cls, spec: str) -> Build:
        name, _, where = spec.partition("=")
        tree, _, floor = where.partition("@")
        if not name or not tree:
            raise SystemExit(f"--build {spec!r}: NAME=TREE[@FLOOR] expected")
        return cls(name, Path(tree).resolve(), floor or "none")


def recorder_cmd(
    b: Build, out: Path, tgids: list[int], port: int, profile: bool
) -> list[str]:
    args = [sys.executable, "-m", "harness.collectors.kprobe.record", "--out", str(out),
            "--stats", str(out.with_suffix(".stats.json")), "--deadline", "600",
            "--port", str(port)]  # fmt: skip
    for t in tgids:
        args += ["--tgid", str(t)]
    args += registry.get("kprobe").recorder_args(CollectorOptions(kprobe_floor=b.floor), [], None)
    if profile:
        args.append("--profile")
    return args


def one_run(
    procs: ProcessSet,
    builds: list[Build],
    scen: Any,
    port: int,
    server: Child,
    exchanges: int,
    seed: int,
    work: Path,
    profile: bool,
) -> list[Run]:
    """One client's main phase with every build in `builds` attached at once, in that order
    (one build: the usual A/B run; several: they see the very same syscalls)."""
    wl = work / "workload.jsonl"
    wl.unlink(missing_ok=True)
    cmd = scenarios.client_command(scen, "go", port, exchanges=exchanges + WARMUP_PER_CONN
                                   * scen.connections, seed=seed, warmup=WARMUP_PER_CONN,
                                   workload=wl, grpc_version=None, deadline=300)  # fmt: skip
    client = procs.spawn("client", ["nice", "-n", str(NICE), *pinned(CLIENT_CPU, cmd)],
                         stdin=subprocess.PIPE)  # fmt: skip
    read_line_until(client, lambda s: s == "WARM", 60, "WARM")
    recs = []
    for b in builds:
        out = work / f"events-{b.name}.bin"
        env = dict(os.environ, PYTHONPATH=str(b.tree))
        rec = procs.spawn(f"recorder {b.name}",
                          recorder_cmd(b, out, [server.pid, client.pid], port, profile),
                          cwd=str(b.tree), env=env, stop_timeout=60)  # fmt: skip
        read_line_until(rec, lambda s: s.startswith("ATTACHED "), 300, "ATTACHED")
        recs.append((b.name, rec, out))
    p0 = {b: bpf_programs(r.pid) for b, r, _ in recs}
    insns = {b: verified_insns(r.pid) for b, r, _ in recs}
    time.sleep(IDLE_S)
    p1 = {b: bpf_programs(r.pid) for b, r, _ in recs}
    assert client.proc.stdin is not None
    t0 = time.monotonic()
    client.proc.stdin.write("GO\n")
    client.proc.stdin.flush()
    read_line_until(client, lambda s: s.startswith("DONE"), 300, "DONE")
    wall = time.monotonic() - t0
    p2 = {b: bpf_programs(r.pid) for b, r, _ in recs}
    procs.stop(client)
    procs.children.remove(client)
    procs.stop_all([r for _, r, _ in recs])
    for _, r, _ in recs:
        procs.children.remove(r)
    records = [json.loads(x) for x in wl.read_text().splitlines() if x.strip()]
    n_main = sum(1 for r in records if r.get("phase") == "main")
    runs = []
    for build, _, out in recs:
        stats = json.loads(out.with_suffix(".stats.json").read_text())
        out.unlink(missing_ok=True)
        names = {int(k): v for k, v in stats["programs"].items()}
        per: dict[str, tuple[int, int]] = {}
        idle_cnt = idle_ns = 0
        for pid_, p in p2[build].items():
            name = names.get(pid_, str(pid_))
            b, i = p1[build].get(pid_), p0[build].get(pid_)
            if b is None or i is None:
                continue
            per[name] = (p["run_cnt"] - b["run_cnt"], p["run_time_ns"] - b["run_time_ns"])
            if _is_data(name):
                idle_cnt += b["run_cnt"] - i["run_cnt"]
                idle_ns += b["run_time_ns"] - i["run_time_ns"]
        hits = sum(int(v) for v in stats.get("traced_hits_by_tgid", {}).values())
        verified = {names.get(i, str(i)): v for i, v in insns[build].items()}
        runs.append(Run(build, n_main, wall, hits, per,
                        idle_ns / idle_cnt if idle_cnt else 40.0, stats.get("profile", {}),
                        {n: v for n, v in verified.items() if n.endswith("_fn")}))  # fmt: skip
    return runs


def verified_insns(pid: int) -> dict[int, int]:
    """prog id -> instructions the verifier processed (fdinfo, 5.16+), of a process's programs."""
    return {int(kv["prog_id"]): int(kv["verified_insns"])
            for kv in prog_fdinfo(pid) if "verified_insns" in kv}  # fmt: skip


def describe(r: Run) -> str:
    cnt, _ = r.data_totals()
    progs = " ".join(f"{_short(p)}={r.ns_per_hit(n):.0f}" for p in DATA_PROGRAMS
                     for n in r.per_program if n.endswith(p))  # fmt: skip
    return (
        f"{r.build:>8}: {r.per_side_ns():7.0f} ns/exchange/side  {progs}  "
        f"hits/exch {r.target_hits / r.exchanges:.2f} others {cnt - r.target_hits} "
        f"(idle {r.idle_ns_per_hit:.0f} ns)  {r.exchanges / r.wall_s:.0f}/s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", action="append", required=True, metavar="NAME=TREE[@FLOOR]",
                    help="a source tree to measure; @filter or @record: its floor build")
    ap.add_argument("--scenario", default="http11-keepalive")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--exchanges", type=int, default=3000)
    ap.add_argument("--profile", action="store_true", help="PB_PROF_* counters per exchange")
    ap.add_argument(
        "--together",
        action="store_true",
        help="attach every build at once to each client (order rotated by round): "
        "they see the same syscalls under the same load",
    )
    ap.add_argument("--json", type=Path, help="also write every run here")
    a = ap.parse_args(argv)
    builds = [Build.parse(b) for b in a.build]
    scen = scenarios.get(a.scenario)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="kprobe-ab-") as tmp, ProcessSet() as procs, \
            bpf_stats_enabled():  # fmt: skip
        work = Path(tmp)
        port = free_port()
        server = procs.spawn("server", ["nice", "-n", str(NICE), *pinned(
            SERVER_CPU, scenarios.server_command(scen, "go", port, None))],
            stdin=subprocess.PIPE)  # fmt: skip
        read_line_until(server, lambda s: s.startswith("READY"), 30, "READY")
        for rnd in range(a.rounds):
            order = builds[rnd % len(builds) :] + builds[: rnd % len(builds)]
            groups = [order] if a.together else [[b] for b in order]
            for group in groups:
                for r in one_run(procs, group, scen, port, server, a.exchanges, rnd + 1, work,
                                 a.profile):  # fmt: skip
                    runs.append(r)
                    print(f"round {rnd + 1} {describe(r)}", flush=True)
                    if rnd == 0:
                        print(
                            "   verified insns: "
                            + " ".join(f"{k}={v}" for k, v in sorted(r.verified_insns.items())),
                            flush=True,
                        )
                    if a.profile and r.profile:
                        print(
                            "   "
                            + " ".join(f"{k}={v / r.exchanges:.2f}" for k, v in r.profile.items()),
                            flush=True,
                        )
    base = None
    print(f"\n{a.scenario}, {a.rounds} rounds of {a.exchanges} exchanges, median [min, max]")
    for name in (b.name for b in builds):
        mine = [r for r in runs if r.build == name]
        side = [r.per_side_ns() for r in mine]
        med = statistics.median(side)
        base = base or med
        progs = []
        for p in DATA_PROGRAMS:
            v = [r.ns_per_hit(n) for r in mine for n in r.per_program if n.endswith(p)]
            if v:
                progs.append(f"{p} {statistics.median(v):.0f}")
        print(f"{name:>8}: {med:7.0f} ns/exchange/side [{min(side):.0f}, {max(side):.0f}] "
              f"x{med / base:.3f}; per hit: {', '.join(progs)}")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps([r.__dict__ for r in runs], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
