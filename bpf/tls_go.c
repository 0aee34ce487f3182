/* TLS uprobe collector, Go crypto/tls: (*Conn).Write at entry (the plaintext is whole
 * there) and (*Conn).Read at entry and at each RET instruction (never a uretprobe on Go:
 * goroutine stacks move). Go register ABI: c in RAX, b.ptr in RBX, b.len in RCX; Read's
 * n in RAX at RET; R14 holds the goroutine, which keys a Read across its park and
 * resume (it may return on another thread). The connection's addresses come from the
 * *tls.Conn itself: conn (a net.Conn holding a *net.TCPConn) -> netFD -> laddr/raddr.
 * Offsets arrive as -D cflags from the binary's DWARF (harness/collectors/tls/gotls.py). */
#include <uapi/linux/ptrace.h>
#include "tls_events.h"

#ifndef PB_RINGBUF_PAGES
#define PB_RINGBUF_PAGES 4096
#endif

BPF_RINGBUF_OUTPUT(events, PB_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, u64, PB_TSTAT_MAX);
/* batched wake-ups (pb_common.h): the recorder drains on its poll timer */
BPF_PERCPU_ARRAY(rb_pending, u64, 1);
static __always_inline u64 rb_flags(u32 size) {
    u32 zero = 0;
    return pb_rb_flags(rb_pending.lookup(&zero), size, PB_WAKE_BYTES);
}
BPF_HASH(targets, u32, u8, 1024);
BPF_HASH(ports, u16, u8, 64);
struct tls_scratch { struct pb_tls_event e; u8 slack[PB_TLS_CHUNK]; };
BPF_PERCPU_ARRAY(scratch, struct tls_scratch, 1);
struct g_key { u32 tgid; u32 pad; u64 g; };
struct go_read { u64 conn; u64 buf; };
BPF_HASH(reads, struct g_key, struct go_read, 16384);
struct seqs { u32 n[2]; };
BPF_TABLE("lru_hash", u64, struct seqs, conn_seq, 65536);

static __always_inline void stat_add(u32 i, u64 n) {
    pb_count(stats.lookup(&i), n);
}
static __always_inline u32 verifier_bound(u32 v) {
    asm volatile("%0 &= %1" : "+r"(v) : "i"(2 * PB_TLS_CHUNK - 1));
    return v;
}
static __always_inline u64 rd64(u64 p) {
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)p);
    return v;
}
/* a *net.TCPAddr behind an interface's data word: IP slice and port */
static __always_inline int read_addr(u64 iface, u8 *ip, u16 *port, u16 *family) {
    u64 a = rd64(iface + 8);
    if (!a) return 0;
    u64 ptr = rd64(a + PB_TCPADDR_IP), len = rd64(a + PB_TCPADDR_IP + 8);
    if (len != 4 && len != 16) return 0;
    if (bpf_probe_read_user(ip, len == 4 ? 4 : 16, (void *)ptr) < 0) return 0;
    *port = (u16)rd64(a + PB_TCPADDR_PORT);
    *family = len == 4 ? 2 : 10;
    return 1;
}

static __always_inline int emit(u64 conn, u64 buf, u64 n, u8 dir) {
    u64 id = bpf_get_current_pid_tgid();
    u32 zero = 0;
    struct tls_scratch *sc = scratch.lookup(&zero);
    if (!sc) return 0;
    struct pb_tls_event *e = &sc->e;
    __builtin_memset(e->laddr, 0, 16);
    __builtin_memset(e->raddr, 0, 16);
    e->addr_source = PB_TLS_ADDR_NONE;
    e->fd = -1;
    u64 tcpconn = rd64(conn + PB_TLSCONN_CONN + 8);
    u64 fd = tcpconn ? rd64(tcpconn + PB_TCPCONN_FD) : 0;
    u16 fl = 0, fr = 0;
    if (fd) {
        s32 sysfd = -1;
        bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(fd + PB_NETFD_SYSFD));
        e->fd = sysfd;
        if (read_addr(fd + PB_NETFD_LADDR, e->laddr, &e->lport, &fl) &&
            read_addr(fd + PB_NETFD_RADDR, e->raddr, &e->rport, &fr) && fl == fr)
            e->addr_source = PB_TLS_ADDR_STRUCT;
    }
    stat_add(e->addr_source ? PB_TSTAT_ADDR_SYSCALL : PB_TSTAT_ADDR_NONE, 1);
    if (PB_FILTER_PORTS) {
        u16 lp = e->lport, rp = e->rport;
        if (!e->addr_source && !PB_FILTER_TGID) return 0;
        if (e->addr_source && !ports.lookup(&lp) && !ports.lookup(&rp)) return 0;
    }
    struct seqs init = {};
    struct seqs *sq = conn_seq.lookup_or_try_init(&conn, &init);
    u32 seq = 1;
    if (sq) {
        seq = sq->n[dir & 1] + 1;
        sq->n[dir & 1] = seq;
    }
    stat_add(PB_TSTAT_CALLS, 1);
    if (n > (u64)PB_TLS_CHUNK * PB_TLS_MAX_CHUNKS) stat_add(PB_TSTAT_TRUNCATED, 1);
    e->ts_ns = bpf_ktime_get_ns();
    e->ssl = conn;
    e->tgid = id >> 32;
    e->tid = (u32)id;
    e->dir = dir;
    e->lib = PB_TLS_LIB_GO;
    e->family = fl;
    e->orig_len = n;
    e->seq = seq;
    for (int i = 0; i < PB_TLS_MAX_CHUNKS; i++) {
        u32 off = i * PB_TLS_CHUNK;
        if (off >= n) break;
        u32 len = n - off;
        if (len > PB_TLS_CHUNK) len = PB_TLS_CHUNK;
        e->part = i;
        e->offset = off;
        e->cap_len = len;
        if (bpf_probe_read_user(e->data, verifier_bound(len), (void *)(buf + off)) < 0)
            e->cap_len = 0;
        u32 size = verifier_bound(offsetof(struct pb_tls_event, data) + e->cap_len);
        if (events.ringbuf_output(e, size, rb_flags(size)) < 0) stat_add(PB_STAT_DROPPED, 1);
        else stat_add(PB_TSTAT_EVENTS, 1);
    }
    return 0;
}

/* the target filter (pb_common.h), with the map when there is no inline list */
static __always_inline int traced(u32 tgid) {
    int known = pb_tgid_filter(tgid);
    return known >= 0 ? known : targets.lookup(&tgid) != NULL;
}

int probe_go_write(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    u64 n = ctx->cx;
    if (!n) return 0;
    return emit(ctx->ax, ctx->bx, n, PB_TLS_DIR_SEND);
}
#ifndef PB_GO_READ_SPILLED
#define PB_GO_READ_SPILLED 0
#endif
int probe_go_read(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id >> 32)) return 0;
    struct g_key k = {.tgid = id >> 32, .g = ctx->r14};
    struct go_read r = {.conn = ctx->ax, .buf = ctx->bx};
    reads.update(&k, &r);
    return 0;
}
int probe_go_read_ret(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (PB_GO_READ_SPILLED) {
        /* Read stored c, b.ptr, b.len in its spill slots before its first call and never
         * wrote them again (checked in its disassembly, gotls.py): at RET they sit just
         * above the return address. One hit per call instead of two, and a call begun
         * before the attach is seen whole. */
        if (!traced(id >> 32)) return 0;
        s64 n = (s64)ctx->ax;
        if (n <= 0) return 0;
        u64 sp = ctx->sp;
        u64 conn = rd64(sp + 8), buf = rd64(sp + 16), len = rd64(sp + 24);
        if (!conn || !buf || (u64)n > len) return 0;
        return emit(conn, buf, (u64)n, PB_TLS_DIR_RECV);
    }
    struct g_key k = {.tgid = id >> 32, .g = ctx->r14};
    struct go_read *r = reads.lookup(&k);
    if (!r) {
        if ((s64)ctx->ax > 0 && traced(k.tgid)) stat_add(PB_TSTAT_READ_UNSEEN, 1);
        return 0;
    }
    struct go_read v = *r;
    reads.delete(&k);
    s64 n = (s64)ctx->ax;
    if (n <= 0) return 0;
    return emit(v.conn, v.buf, (u64)n, PB_TLS_DIR_RECV);
}
