"""What one BPF helper call costs on this machine: the floor under every collector's BPF time.

    .venv/bin/python benchmarks/bpf_helpers.py [--runs 20000] [--rounds 3] [--reps 32]
        [--evict MB] [--json FILE]

A program on ``sys_enter_getppid`` repeats one operation ``--reps`` times (unrolled), for
this process only; this process calls getppid() ``--runs`` times; the program's run time
comes from BPF stats (its fd's fdinfo). Per operation: (run time - the same program with no
operation) / reps, the minimum over rounds. A tail call cannot repeat in one run, so it is
measured once per run: a program that tail-calls an empty one, against the same program
without the call.

By default the loop is hot (its code, maps and the user buffer stay in cache): lower
bounds. ``--evict MB`` writes that much memory before every call, as a workload does between
two of its syscalls, and ``--reps 1`` then gives one cold call of each. What the figures
bound is the design, not our code: every record of a syscall-level collector pays at least
a clock read, a user read of its bytes and a ring record, and every program run pays BPF
stats' own clock reads. The overhead decomposition (README, issue 10) sets them beside the
collectors' per-hit figures.

Not a pytest bench (nothing asserted): a measuring tool. Needs root and bcc.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import bpf_stats_enabled

REPS = 32  # operations per run, by default

# operation -> the C of one repetition (names: buf, sp (a user stack address), k, v)
OPS: dict[str, str] = {
    "nothing": "",
    "bpf_ktime_get_ns": "v += bpf_ktime_get_ns();",
    "bpf_get_current_pid_tgid": "v += bpf_get_current_pid_tgid();",
    "probe_read_user 16 B": "bpf_probe_read_user(buf, 16, (void *)sp);",
    "probe_read_user 256 B": "bpf_probe_read_user(buf, 256, (void *)sp);",
    "probe_read_user 1 KiB": "bpf_probe_read_user(buf, 1024, (void *)sp);",
    "probe_read_kernel 256 B": "bpf_probe_read_kernel(buf, 256, buf + 1024);",
    "ringbuf reserve + commit": (
        "{ void *e = ring.ringbuf_reserve(256); if (e) ring.ringbuf_discard(e, BPF_RB_NO_WAKEUP); }"
    ),
    "ringbuf_output 256 B": "ring.ringbuf_output(buf, 256, BPF_RB_NO_WAKEUP | 0);",
    "hash lookup": "{ u64 *p = h.lookup(&k); if (p) v += *p; }",
    "lru_hash lookup": "{ u64 *p = lru.lookup(&k); if (p) v += *p; }",
    "percpu array lookup": "{ u64 *p = pc.lookup(&z); if (p) v += *p; }",
    "task storage get": (
        "{ u64 *p = ts.task_storage_get((struct task_struct *)bpf_get_current_task_btf(), 0, "
        "BPF_LOCAL_STORAGE_GET_F_CREATE); if (p) v += *p; }"
    ),
    "bpf_task_pt_regs": (
        "{ struct pt_regs *r = (struct pt_regs *)bpf_task_pt_regs("
        "(struct task_struct *)bpf_get_current_task_btf()); if (r) v += r->di; }"
    ),
}

HEAD = r"""
#include <linux/sched.h>
BPF_RINGBUF_OUTPUT(ring, 64);
BPF_HASH(h, u64, u64, 1024);
BPF_TABLE("lru_hash", u64, u64, lru, 1024);
BPF_PERCPU_ARRAY(pc, u64, 1);
BPF_TASK_STORAGE(ts, u64);
struct blob { u8 b[2048]; };
BPF_PERCPU_ARRAY(scratch, struct blob, 1);
BPF_ARRAY(sink, u64, 1);
BPF_PROG_ARRAY(next, 1);

int empty_fn(void *ctx) { return 0; }
"""

# every program: the same prologue (the filter, a scratch buffer, a user address), then
# its repetitions; the sum keeps the compiler from dropping them
BODY = r"""
int NAME(void *ctx) {
    u32 z = 0;
    u64 v = 0, k = 7;
    if ((bpf_get_current_pid_tgid() >> 32) != TGID) return 0;
    struct blob *bl = scratch.lookup(&z);
    if (!bl) return 0;
    u8 *buf = bl->b;
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(
        (struct task_struct *)bpf_get_current_task_btf());
    if (!regs) return 0;
    u64 sp = regs->sp - 2048;  /* the caller's stack, mapped and resident */
#pragma unroll
    for (int i = 0; i < REPS; i++) { OP }
    u64 *s = sink.lookup(&z);
    if (s) *s += v + buf[0] + sp;
    TAIL
    return 0;
}
"""


def program(name: str, op: str, reps: int, tail: bool) -> str:
    return (BODY.replace("NAME", name).replace("REPS", str(reps)).replace("OP", op)
            .replace("TAIL", "next.call(ctx, 0);" if tail else ""))  # fmt: skip


def run_ns(fd: int) -> tuple[int, int]:
    t = c = 0
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, val = line.partition(":")
        if key == "run_time_ns":
            t = int(val)
        elif key == "run_cnt":
            c = int(val)
    return t, c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20000, help="getppid() calls per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=REPS, help="operations per program run")
    ap.add_argument(
        "--evict",
        type=int,
        default=0,
        metavar="MB",
        help="write MB of memory before every call (cold caches)",
    )
    ap.add_argument("--json", type=Path, help="write the table here too")
    a = ap.parse_args(argv)
    from bcc import BPF

    names = {op: f"op_{i}" for i, op in enumerate(OPS)}
    src = HEAD + "".join(program(names[op], body, a.reps, False) for op, body in OPS.items())
    src += program("tail_0", "", 0, False) + program("tail_1", "", 0, True)
    b = BPF(text=src, cflags=[f"-DTGID={os.getpid()}"])
    k = ctypes.c_ulonglong(7)
    b["h"][k] = ctypes.c_ulonglong(1)
    b["lru"][k] = ctypes.c_ulonglong(1)
    b["next"][ctypes.c_int(0)] = ctypes.c_int(b.load_func("empty_fn", BPF.TRACEPOINT).fd)
    libc = ctypes.CDLL(None)
    evict = ctypes.create_string_buffer(a.evict << 20) if a.evict else None
    tp = "syscalls:sys_enter_getppid"
    per_run: dict[str, list[float]] = {}
    progs = [*names.values(), "tail_0", "tail_1"]
    with bpf_stats_enabled():
        for _ in range(a.rounds):
            for name in progs:
                fd = b.load_func(name, BPF.TRACEPOINT).fd
                b.attach_tracepoint(tp=tp, fn_name=name)
                try:
                    t0, c0 = run_ns(fd)
                    for i in range(a.runs):
                        if evict is not None:
                            ctypes.memset(evict, i & 0xFF, len(evict))
                        libc.getppid()
                    t1, c1 = run_ns(fd)
                finally:
                    b.detach_tracepoint(tp=tp)
                per_run.setdefault(name, []).append((t1 - t0) / max(1, c1 - c0))
    b.cleanup()
    base = min(per_run[names["nothing"]])
    ns_per_op: dict[str, float] = {}
    table = {"machine": {"kernel": platform.release()}, "reps_per_run": a.reps, "evict_mb": a.evict,
             "empty_run_ns": round(base, 1), "ns_per_op": ns_per_op}  # fmt: skip
    print(f"{platform.release()}: a run with no operation {base:.0f} ns (BPF stats on)")
    for op, name in names.items():
        if op == "nothing":
            continue
        ns = (min(per_run[name]) - base) / a.reps
        ns_per_op[op] = round(ns, 1)
        print(f"  {op:28s} {ns:7.1f} ns")
    tail = min(per_run["tail_1"]) - min(per_run["tail_0"])
    ns_per_op["tail call (to an empty program)"] = round(tail, 1)
    print(f"  {'tail call (to an empty program)':28s} {tail:7.1f} ns")
    if a.json:
        a.json.write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
