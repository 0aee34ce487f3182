/* Exec events of the exec gate (exec_gate.c), shared with
 * harness/collectors/uprobe/gate.py, which parses this header for its ctypes layout.
 * Only fixed-width types, one field per line: the Python side parses it. */
#ifndef PB_EXEC_GATE_H
#define PB_EXEC_GATE_H

/* counters in the gstats array */
#define PB_GSTAT_EXECS 0       /* execs seen in the followed tree */
#define PB_GSTAT_HELD 1        /* of those, stopped until user space lets them go */
#define PB_GSTAT_LOST 2        /* ring buffer full: exec not reported, so not held */
#define PB_GSTAT_SIGNAL_FAILED 3 /* bpf_send_signal refused: reported, not held */
#define PB_GSTAT_TREE_FULL 4   /* a fork in the tree could not be remembered */
#define PB_GSTAT_MAX 8

#define PB_GATE_TREE_MAX 65536 /* tasks remembered as part of the followed tree */

struct pb_exec_event {
    u64 ts_ns;
    u32 tgid;
    u32 held;  /* 1: stopped with SIGSTOP, waiting for SIGCONT */
};

#endif
