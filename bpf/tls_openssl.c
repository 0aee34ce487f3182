/* TLS uprobe collector, OpenSSL: SSL_write/SSL_read and their _ex variants, entry
 * and return (uretprobes are safe on C). The plaintext is copied at return, when
 * the byte count is known.
 *
 * The connection: the socket the SSL call's own send/recv uses, found by the
 * sock_send_length/sock_recv_length tracepoints on the same thread while the call
 * is open (the approach Pixie and Coroot moved to; before Linux 6.3, which has no
 * such tracepoints, kprobes on tcp_sendmsg/tcp_recvmsg: PB_SK_HOOK), its address
 * from the TCP state change that established it. A call that moved no socket bytes
 * (a read served from OpenSSL's buffer) takes the address its SSL object used last,
 * or the one its handshake (SSL_do_handshake) used: with TLS 1.3 a server's first
 * SSL_read often returns a request the handshake already read (nginx). Stitching and
 * everything else is replay's. */
#include <uapi/linux/ptrace.h>
#include <linux/socket.h>
#include <linux/in.h>
#include "tls_events.h"

#ifndef PB_RINGBUF_PAGES
#define PB_RINGBUF_PAGES 4096
#endif
#define TCP_ESTABLISHED_ 1

BPF_RINGBUF_OUTPUT(events, PB_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, u64, PB_TSTAT_MAX);
/* batched wake-ups (pb_common.h): the recorder drains on its poll timer */
BPF_PERCPU_ARRAY(rb_pending, u64, 1);
static __always_inline u64 rb_flags(u32 size) {
    u32 zero = 0;
    return pb_rb_flags(rb_pending.lookup(&zero), size, PB_WAKE_BYTES);
}
BPF_HASH(targets, u32, u8, 1024);  /* tgids to trace (PB_FILTER_TGID) */
BPF_HASH(ports, u16, u8, 64);      /* server ports to trace (PB_FILTER_PORTS) */
/* slack after the event lets a power-of-two mask bound lengths for the verifier */
struct tls_scratch { struct pb_tls_event e; u8 slack[PB_TLS_CHUNK]; };
BPF_PERCPU_ARRAY(scratch, struct tls_scratch, 1);

struct addr {
    u16 family;
    u16 lport;
    u16 rport;
    u8 laddr[16];
    u8 raddr[16];
};
struct open_call {
    u64 ssl;
    u64 buf;
    u64 len_ptr; /* _ex: where the byte count is written */
    u64 sk;      /* the socket the call's own send/recv used */
    u64 ts_ns;
    s32 fd;
    u8 dir;
    u8 ex;
};
BPF_HASH(open_calls, u32, struct open_call, 16384);   /* by tid */
BPF_HASH(sys_fd, u32, s32, 16384);                    /* tid -> fd of its data syscall */
BPF_TABLE("lru_hash", u64, struct addr, sk_addr, 65536);       /* established sockets */
BPF_TABLE("lru_hash", u64, struct addr, ssl_addr, 65536);      /* SSL object -> its last socket */
struct seqs { u32 n[2]; };
BPF_TABLE("lru_hash", u64, struct seqs, ssl_seq, 65536);

static __always_inline void stat_add(u32 i, u64 n) {
    pb_count(stats.lookup(&i), n);
}
/* Mask a length so the verifier sees its bound; the asm keeps clang from
 * dropping a mask it can prove redundant (as in kprobe_collector.c). */
static __always_inline u32 verifier_bound(u32 v) {
    asm volatile("%0 &= %1" : "+r"(v) : "i"(2 * PB_TLS_CHUNK - 1));
    return v;
}
/* the target filter (pb_common.h), with the map when there is no inline list */
static __always_inline int traced(u32 tgid) {
    int known = pb_tgid_filter(tgid);
    return known >= 0 ? known : targets.lookup(&tgid) != NULL;
}

/* ---- addresses */
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP || args->newstate != TCP_ESTABLISHED_) return 0;
    struct addr a = {};
    a.family = args->family;
    a.lport = args->sport;
    a.rport = args->dport;
    if (args->family == AF_INET) {
        __builtin_memcpy(a.laddr, args->saddr, 4);
        __builtin_memcpy(a.raddr, args->daddr, 4);
    } else {
        __builtin_memcpy(a.laddr, args->saddr_v6, 16);
        __builtin_memcpy(a.raddr, args->daddr_v6, 16);
    }
    u64 sk = (u64)args->skaddr;
    sk_addr.update(&sk, &a);
    return 0;
}

/* the socket a data syscall moved bytes on, while an SSL call is open on this thread */
static __always_inline int on_sock_io(u64 sk) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct open_call *c = open_calls.lookup(&tid);
    if (c && !c->sk) c->sk = sk;
    return 0;
}
/* which hook names that socket: the loader's choice for this kernel (tls/sockhook.py) */
#ifndef PB_SK_HOOK
#define PB_SK_HOOK PB_SK_TRACEPOINTS
#endif
#if PB_SK_HOOK == PB_SK_TRACEPOINTS
TRACEPOINT_PROBE(sock, sock_send_length) { return on_sock_io((u64)args->sk); }
TRACEPOINT_PROBE(sock, sock_recv_length) { return on_sock_io((u64)args->sk); }
#elif PB_SK_HOOK == PB_SK_KPROBES
/* every send and receive on a TCP socket reaches these, the sock their first argument;
 * attached by the loader (bcc would auto-attach a kprobe__ name at compile) */
int pb_tcp_io(struct pt_regs *ctx) { return on_sock_io(PT_REGS_PARM1(ctx)); }
#endif

/* the fd of that syscall, kept for replay (the fallback when no address is known) */
static __always_inline int on_sys_enter(int fd) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct open_call *c = open_calls.lookup(&tid);
    if (c && c->fd < 0) c->fd = fd;
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return on_sys_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return on_sys_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return on_sys_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return on_sys_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return on_sys_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return on_sys_enter(args->fd); }

/* ---- SSL calls */
static __always_inline int enter(struct pt_regs *ctx, u8 dir, u8 ex) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id >> 32)) return 0;
    u32 tid = (u32)id;
    if (open_calls.lookup(&tid)) stat_add(PB_TSTAT_NESTED, 1);
    struct open_call c = {};
    c.ssl = PT_REGS_PARM1(ctx);
    c.buf = PT_REGS_PARM2(ctx);
    c.len_ptr = ex ? PT_REGS_PARM4(ctx) : 0;
    c.ts_ns = bpf_ktime_get_ns();
    c.fd = -1;
    c.dir = dir;
    c.ex = ex;
    open_calls.update(&tid, &c);
    return 0;
}

static __always_inline int leave(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct open_call *cp = open_calls.lookup(&tid);
    if (!cp) return 0;
    struct open_call c = *cp;
    open_calls.delete(&tid);
    int rc = (int)PT_REGS_RC(ctx); /* both return int: -1 is 0xffffffff in rax */
    u64 n = 0;
    if (c.ex) {
        if (rc == 1 && c.len_ptr) bpf_probe_read_user(&n, sizeof(n), (void *)c.len_ptr);
    } else if (rc > 0) {
        n = rc;
    }
    if (!n) return 0;

    struct addr a = {};
    u8 source = PB_TLS_ADDR_NONE;
    struct addr *known = ssl_addr.lookup(&c.ssl);
    struct addr *found = c.sk ? sk_addr.lookup(&c.sk) : 0;
    if (found) {
        a = *found;
        source = PB_TLS_ADDR_SYSCALL;
        if (known && (known->lport != a.lport || known->rport != a.rport))
            stat_add(PB_TSTAT_ADDR_MISMATCH, 1);
        ssl_addr.update(&c.ssl, &a);
    } else if (known) {
        a = *known;
        source = PB_TLS_ADDR_SSL;
    }
    stat_add(source == PB_TLS_ADDR_SYSCALL ? PB_TSTAT_ADDR_SYSCALL
             : source == PB_TLS_ADDR_SSL ? PB_TSTAT_ADDR_SSL : PB_TSTAT_ADDR_NONE, 1);
    if (PB_FILTER_PORTS && source != PB_TLS_ADDR_NONE) {
        u16 lp = a.lport, rp = a.rport;
        if (!ports.lookup(&lp) && !ports.lookup(&rp)) return 0;
    }
    if (PB_FILTER_PORTS && !PB_FILTER_TGID && source == PB_TLS_ADDR_NONE) return 0;

    u32 zero = 0;
    struct seqs init = {};
    struct seqs *sq = ssl_seq.lookup_or_try_init(&c.ssl, &init);
    u32 seq = 1;
    if (sq) {
        seq = sq->n[c.dir & 1] + 1;
        sq->n[c.dir & 1] = seq;
    }
    stat_add(PB_TSTAT_CALLS, 1);
    if (n > (u64)PB_TLS_CHUNK * PB_TLS_MAX_CHUNKS) stat_add(PB_TSTAT_TRUNCATED, 1);
    struct tls_scratch *sc = scratch.lookup(&zero);
    if (!sc) return 0;
    struct pb_tls_event *e = &sc->e;
    e->ts_ns = c.dir == PB_TLS_DIR_SEND ? c.ts_ns : bpf_ktime_get_ns();
    e->ssl = c.ssl;
    e->tgid = id >> 32;
    e->tid = tid;
    e->fd = c.fd;
    e->dir = c.dir;
    e->addr_source = source;
    e->lib = PB_TLS_LIB_OPENSSL;
    e->family = a.family;
    e->lport = a.lport;
    e->rport = a.rport;
    __builtin_memcpy(e->laddr, a.laddr, 16);
    __builtin_memcpy(e->raddr, a.raddr, 16);
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
        if (bpf_probe_read_user(e->data, verifier_bound(len), (void *)(c.buf + off)) < 0)
            e->cap_len = 0; /* unreadable: the event still says how much went by */
        u32 size = verifier_bound(offsetof(struct pb_tls_event, data) + e->cap_len);
        if (events.ringbuf_output(e, size, rb_flags(size)) < 0) stat_add(PB_STAT_DROPPED, 1);
        else stat_add(PB_TSTAT_EVENTS, 1);
    }
    return 0;
}

int probe_ssl_write(struct pt_regs *ctx) { return enter(ctx, PB_TLS_DIR_SEND, 0); }
int probe_ssl_write_ex(struct pt_regs *ctx) { return enter(ctx, PB_TLS_DIR_SEND, 1); }
int probe_ssl_read(struct pt_regs *ctx) { return enter(ctx, PB_TLS_DIR_RECV, 0); }
int probe_ssl_read_ex(struct pt_regs *ctx) { return enter(ctx, PB_TLS_DIR_RECV, 1); }
int probe_ssl_return(struct pt_regs *ctx) { return leave(ctx); }
/* SSL_do_handshake: no plaintext, only the socket its own I/O used, kept as the SSL
 * object's address. Its own return probe, so a handshake run inside an open SSL_read
 * or SSL_write (not tracked then) never ends that call. */
#define HANDSHAKE_DIR 0xff
int probe_ssl_handshake(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if (!traced(id >> 32)) return 0;
    u32 tid = (u32)id;
    if (open_calls.lookup(&tid)) return 0;
    struct open_call c = {};
    c.ssl = PT_REGS_PARM1(ctx);
    c.fd = -1;
    c.dir = HANDSHAKE_DIR;
    open_calls.update(&tid, &c);
    return 0;
}
int probe_ssl_handshake_return(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct open_call *c = open_calls.lookup(&tid);
    if (!c || c->dir != HANDSHAKE_DIR) return 0;
    u64 ssl = c->ssl, sk = c->sk;
    open_calls.delete(&tid);
    struct addr *found = sk ? sk_addr.lookup(&sk) : 0;
    if (found) {
        struct addr a = *found;
        ssl_addr.update(&ssl, &a);
    }
    return 0;
}

/* A freed SSL object's address may be the next connection's: forget it. */
int probe_ssl_free(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    u64 ssl = PT_REGS_PARM1(ctx);
    ssl_addr.delete(&ssl);
    ssl_seq.delete(&ssl);
    return 0;
}
