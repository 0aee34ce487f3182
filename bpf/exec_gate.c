/* Exec gate: follows one process tree and stops each of its execs at the first
 * instruction of the new image (SIGSTOP from the sched_process_exec tracepoint),
 * so the uprobe collector can probe a new binary before it runs a line of code,
 * then lets it go (SIGCONT). Loaded by harness/collectors/uprobe/gate.py.
 *
 * The tree is keyed by task id: a fork of any thread of a followed process adds
 * the child. Thread creations add their thread ids too; exec looks up by tgid, so
 * those entries are inert. */
#include <uapi/linux/ptrace.h>
#include "exec_gate.h"

#ifndef PB_GATE_RINGBUF_PAGES
#define PB_GATE_RINGBUF_PAGES 16 /* 64 KiB: some 2,700 execs waiting to be heard */
#endif
#define PB_SIGSTOP 19

BPF_HASH(tree, u32, u8, PB_GATE_TREE_MAX);
BPF_RINGBUF_OUTPUT(execs, PB_GATE_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(gstats, u64, PB_GSTAT_MAX);

static __always_inline void gstat_add(u32 idx) {
    u64 *v = gstats.lookup(&idx);
    if (v) *v += 1;
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    /* current is the parent; a fork from any of its threads counts */
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!tree.lookup(&parent))
        return 0;
    u32 child = args->child_pid;
    u8 one = 1;
    if (tree.update(&child, &one))
        gstat_add(PB_GSTAT_TREE_FULL);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!tree.lookup(&tgid))
        return 0;
    gstat_add(PB_GSTAT_EXECS);
    /* reserve first: an exec nobody hears of must not be stopped, or it stays stopped */
    struct pb_exec_event *e = execs.ringbuf_reserve(sizeof(*e));
    if (!e) {
        gstat_add(PB_GSTAT_LOST);
        return 0;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->tgid = tgid;
    /* pending until the return to user space: the new image has not run yet */
    e->held = bpf_send_signal(PB_SIGSTOP) == 0;
    gstat_add(e->held ? PB_GSTAT_HELD : PB_GSTAT_SIGNAL_FAILED);
    execs.ringbuf_submit(e, 0);
    return 0;
}
