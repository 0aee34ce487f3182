/* What every collector's programs share, defined once for the BPF programs and for
 * Python (harness/collectors/cstruct.py reads its #defines through the headers that
 * include it; it skips the functions).
 *
 * bcc rewrites map calls (`m.lookup(&k)`) only in the program's own file, never in a
 * header nor inside a macro: so each program declares its own maps (`stats`,
 * `targets`, `rb_pending`) and passes what it looked up to the helpers here, which
 * hold the logic. */
#ifndef PB_COMMON_H
#define PB_COMMON_H

/* which end of its connection the observed process is */
#define PB_ROLE_UNKNOWN 0
#define PB_ROLE_CLIENT 1
#define PB_ROLE_SERVER 2

/* which way the bytes of an event went, seen from the observed process */
#define PB_DIR_SEND 0
#define PB_DIR_RECV 1

/* Every collector's `stats` array (per-CPU u64 counters, its own PB_*STAT_* beyond)
 * starts with this one: ring buffer full, event lost. */
#define PB_STAT_DROPPED 0

/* ---- helpers for the programs (cstruct.py skips them) */
static __always_inline void pb_count(u64 *counter, u64 n) {
    if (counter) *counter += n;
}

/* ---- the target filter: which processes' events are kept. Settings (-D):
 * PB_FILTER_TGID (1: only the tgids in the program's `targets` map), PB_TGID_LIST (up
 * to 16 of them, compared inline: the hits of every other process on the machine then
 * cost no map lookup), PB_SELF_TGID (the recorder itself, never traced). */
#ifndef PB_FILTER_TGID
#define PB_FILTER_TGID 0
#endif
#ifndef PB_FILTER_PORTS
#define PB_FILTER_PORTS 0
#endif
#ifndef PB_SELF_TGID
#define PB_SELF_TGID 0
#endif
#if PB_FILTER_TGID && defined(PB_TGID_LIST)
/* the tgid's place in PB_TGID_LIST, or -1 */
static __always_inline int pb_tgid_index(u32 tgid) {
    u32 list[] = {PB_TGID_LIST};
#pragma unroll
    for (int i = 0; i < sizeof(list) / sizeof(list[0]); i++)
        if (tgid == list[i]) return i;
    return -1;
}
#endif
/* 1: traced, 0: not, -1: ask the `targets` map (PB_FILTER_TGID without a list) */
static __always_inline int pb_tgid_filter(u32 tgid) {
    if (tgid == PB_SELF_TGID) return 0;
#if PB_FILTER_TGID && defined(PB_TGID_LIST)
    return pb_tgid_index(tgid) >= 0;
#elif PB_FILTER_TGID
    return -1;
#else
    return 1;
#endif
}

/* ---- which process image the current task runs: its thread group leader's start time
 * (a reused tgid is a new process) and its exec count (an exec keeps the tgid and the
 * start time; every thread after it carries the new count). State kept per tgid across
 * hits checks both. PB_TASK_IMAGE=1 with PB_OFF_TASK_* from the running kernel's BTF
 * (harness/collectors/btf.py task_image_defines); the exec count is read as its low 32
 * bits (u32 before 5.7, u64 since). */
#ifndef PB_TASK_IMAGE
#define PB_TASK_IMAGE 0
#endif
struct pb_image {
    u64 start;
    u32 exec_id;
    u32 pad;
};
#if PB_TASK_IMAGE
static __always_inline void pb_task_image(struct pb_image *img) {
    u64 task = bpf_get_current_task(), leader = 0;
    bpf_probe_read_kernel(&leader, sizeof(leader), (void *)(task + PB_OFF_TASK_GROUP_LEADER));
    if (leader)
        bpf_probe_read_kernel(&img->start, sizeof(img->start),
                              (void *)(leader + PB_OFF_TASK_START_TIME));
    bpf_probe_read_kernel(&img->exec_id, sizeof(img->exec_id),
                          (void *)(task + PB_OFF_TASK_EXEC_ID));
}
#endif

/* ---- batched wake-ups: records go in with BPF_RB_NO_WAKEUP and the recorder drains
 * on a timer (harness/collectors/rings.py); only after PB_WAKE_BYTES submitted on this
 * CPU since its last forced wake-up (the program passes PB_WAKE_BYTES, which its own
 * PB_RINGBUF_PAGES sizes) is the consumer woken early, so a burst cannot fill
 * the ring between two timed drains. `pending` is the program's per-CPU byte count
 * (bcc 0.26 cannot name the map for bpf_ringbuf_query, so each CPU counts its own; a
 * non-atomic count on one CPU is exact enough for a threshold). A wake-up per record
 * was 2.5 context switches per gRPC call, on the cores the traced processes need. */
#ifndef PB_WAKE_BYTES
#define PB_WAKE_BYTES (PB_RINGBUF_PAGES * 4096 / 16)
#endif
static __always_inline u64 pb_rb_flags(u64 *pending, u32 size, u64 wake_bytes) {
    if (!pending) return 0;
    u64 v = *pending + size + 8; /* + the ring's record header */
    if (v < wake_bytes) {
        *pending = v;
        return BPF_RB_NO_WAKEUP;
    }
    *pending = 0;
    return BPF_RB_FORCE_WAKEUP;
}

#endif
