/* Kernel-side collector: syscall tracepoints, or kprobes on the syscall
 * functions (PB_KPROBES=1) (the seed article's "kprobe" approach), compiled by
 * bcc. Settings arrive as -D cflags, never by editing this text: PB_FILTER_TGID,
 * PB_FILTER_PORTS, PB_SELF_TGID, PB_CHUNK, PB_CALL_LIMIT, PB_H2_BODY_LIMIT,
 * PB_RINGBUF_PAGES, PB_MAX_CONNS, PB_KPROBES, PB_TASK_STORAGE, PB_EXIT_ARGS.
 *
 * Kernel side does only: connection table, protocol inference, copy bytes.
 * Parsing and stitching happen in replay (user space), from the raw records. */
#include <uapi/linux/ptrace.h>
#include <linux/socket.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/uio.h>
#include "kprobe_events.h"

#ifndef PB_KPROBES
#define PB_KPROBES 0
#endif
#ifndef PB_RINGBUF_PAGES
#define PB_RINGBUF_PAGES 1024
#endif
#ifndef PB_TASK_STORAGE
#define PB_TASK_STORAGE 0 /* 1: pending calls in task storage (needs kernel BTF, 5.11+) */
#endif
#ifndef PB_EXIT_ARGS
/* 1: a receive's arguments are read at its exit from the user registers saved at the
 * syscall's entry (bpf_task_pt_regs: 5.15+, kernel BTF; with PB_TASK_STORAGE): receives
 * need no enter program. A send keeps its enter: it is timed when it starts. */
#define PB_EXIT_ARGS 0
#endif
#if PB_EXIT_ARGS && !PB_TASK_STORAGE
#error "PB_EXIT_ARGS needs PB_TASK_STORAGE (bpf_get_current_task_btf)"
#endif
#ifndef PB_FLOOR
#define PB_FLOOR 0 /* PB_FLOOR_* (kprobe_events.h): a floor build, for the bench */
#endif
#ifndef PB_MAX_CONNS
#define PB_MAX_CONNS 65536
#endif
#ifndef PB_MAX_IOV
#define PB_MAX_IOV 64 /* iovecs walked per call (grpcio writes many small ones) */
#endif
#ifndef PB_CALL_LIMIT
#define PB_CALL_LIMIT (4 * PB_CHUNK) /* payload bytes captured per syscall */
#endif
#define PB_IGNORED 255
#define PB_MAX_CPUS 256
#define TCP_ESTABLISHED_ 1
#define TCP_SYN_SENT_ 2
#define TCP_SYN_RECV_ 3

#ifndef PB_H2_STEPS
/* steps of the frame walk per program run (about 3.7k verifier insns each, about
 * 2 per frame); a walk goes on in up to 31 chained runs (the kernel's tail-call
 * limit is 33, two are taken to get here), so a call may take about 31 times this */
#define PB_H2_STEPS 48
#endif
#ifndef PB_H2_WIN
/* bytes of a call read at once into the walk's window, where frame headers, gRPC
 * prefixes and captured runs are then taken from: one user read where there were a
 * few per frame; a power of two (most unary gRPC writes fit in one) */
#define PB_H2_WIN 1024
#endif
#ifndef PB_H2_PACK
/* bytes of events one ring record packs: the small pieces of a walked call go out in
 * one reservation (the drain splits them, kprobe_events.h); a power of two */
#define PB_H2_PACK 2048
#endif
#define H2_PIECE_MAX 512 /* larger pieces, or ones not in the window, go out alone;
                           * a power of two (h2_emit masks a length with it) */
#ifndef PB_H2_MAX_IOV
#define PB_H2_MAX_IOV 512 /* iovecs followed by the frame walk (grpcio writes up to 260) */
#endif
#define H2_HDR 0  /* gathering a frame header into fld */
#define H2_PAY 1  /* inside a payload captured whole: preface, non-DATA, padded DATA */
#define H2_DATA 2 /* inside a DATA payload: gRPC prefixes always, bodies while budget lasts */
#define H2_PREFACE_LEN 24
#ifndef PB_H2_BODY_LIMIT
/* gRPC message-body bytes a frame-aware call captures: no field needs them (frame
 * headers, HEADERS payloads and message prefixes are always captured), so the
 * recorder passes 0 by default (--h2-body-limit); bodies are most of gRPC's bytes */
#define PB_H2_BODY_LIMIT PB_CALL_LIMIT
#endif
#ifndef PB_H2_TRIAL
/* a direction found mid-stream walks frames from a call that starts with a plausible
 * frame header; bodies are skipped only after this many more plausible headers
 * (until then everything is captured, as the prefix capture would) */
#define PB_H2_TRIAL 3
#endif

#ifndef PB_H2_KEPT
#define PB_H2_KEPT 4 /* streams' gRPC positions kept in the connection's entry; a power of two */
#endif
/* One stream's gRPC message position (sid 0: a free slot). */
struct h2_pos {
    u32 sid;
    u32 msg_rem;
    u8 have;
    u8 pre[5];
};
/* Where one direction of an HTTP/2 connection stands between calls. */
struct h2_dir {
    u32 rem;      /* payload bytes left of the current frame */
    u32 msg_rem;  /* H2_DATA: body bytes left of the current gRPC message */
    u32 sid;      /* H2_DATA: the frame's stream */
    u8 sync;      /* 1: frame boundaries known; 0: prefix capture */
    u8 state;     /* H2_* */
    u8 have;      /* bytes gathered in fld: of a frame header, or of a gRPC prefix */
    u8 end_stream;
    u8 trial;     /* plausible headers still to see before bodies may be skipped */
    u8 mid;       /* synced mid-stream: a stream's message position is known only
                   * from its HEADERS on (kept as below) */
    /* a frame header, or a gRPC prefix, gathered; at most 16 bytes are ever written
     * (a read's offset and length are masked to 15 each for the verifier, and the map
     * value goes on past fld, so such a write would stay inside it) */
    u8 fld[16];
    /* The gRPC message positions of up to PB_H2_KEPT streams between their DATA frames,
     * kept here: a connection carrying that many calls at once never needs grpc_msgs,
     * whose LRU updates and deletes were the walk's largest cost (one slot was not
     * enough: calls interleave on a connection). One more stream's position moves a
     * kept one to the map (spilled), and only then is the map looked up. */
    struct h2_pos kept[PB_H2_KEPT];
    u8 next;      /* the slot given up next when all are taken */
    u8 spilled;   /* positions in grpc_msgs not taken back since (LRU losses aside) */
};
#ifndef PB_H1_SKIP
#define PB_H1_SKIP 1 /* 0: HTTP/1 bodies captured like any bytes (prefix capture) */
#endif
#ifndef PB_H1_HDR_MAX
/* bytes of an HTTP/1 message scanned for the end of its header block; a power of two
 * (the verifier walks the scan once per 8 bytes of it) */
#define PB_H1_HDR_MAX 8192
#endif
#define H1_SLICE 1024 /* a head is read from the call a slice at a time, as the scan needs */
/* H1_SEEK is 0 so that a connection found mid-stream seeks from its first call: data_fn
 * makes its table entry zeroed and has no stack left to set more */
#define H1_SEEK 0 /* found mid-stream: prefix capture until a call starts a message (h1_seek_may) */
#define H1_MSG 1  /* the direction's next byte starts a message */
#define H1_BODY 2 /* rem bytes of a Content-Length body go first, then a message */
#define H1_CHUNK 3 /* a chunk-size line next (after the CRLF ending a chunk's data, if crlf) */
#define H1_CDATA 4 /* rem bytes of a chunk's data, then H1_CHUNK */
#define H1_OFF 5  /* framing not followed: prefix capture */
/* Where one direction of an HTTP/1 connection stands between calls. */
struct h1_dir {
    u32 rem;
    u8 state;
    u8 crlf;
    u16 pend;     /* H1_MSG: a head's first bytes came in earlier calls (Go's server
                   * reads 1 byte, then the rest; a read ends mid-head): in h1_pends */
    u8 clen;      /* H1_CHUNK: bytes of a size line an earlier call ended in, in cline */
    u8 cline[15];
};

/* gRPC message position of one stream direction, kept between its DATA frames */
struct grpc_key { u32 tgid; s32 fd; u32 sid; u32 dir; };
struct grpc_val { u32 msg_rem; u8 have; u8 pre[7]; };

struct conn_key { u32 tgid; s32 fd; };
struct conn_info {
    u8 role;
    u8 proto;     /* PB_PROTO_*, or PB_IGNORED for non-HTTP */
    u8 from_start; /* seen from connect/accept */
    u8 family;
    u16 lport;
    u16 rport;
    u8 laddr[16];
    u8 raddr[16];
    union {  /* by PB_DIR_*, as proto says */
        struct h2_dir h2[2]; /* PB_PROTO_HTTP2 */
        struct {
            struct h1_dir h1[2]; /* PB_PROTO_HTTP1 */
            u64 h1_heads;        /* bit (n % 64): request n was a HEAD (its response's
                                  * length header announces no body) */
            u32 h1_reqs;         /* requests framed */
            u32 h1_resps;        /* final responses framed */
            u8 h1_resp_ok;       /* every request so far framed, none a CONNECT, at most
                                  * 64 unanswered: responses can be paired with them */
            u32 h1_mark;         /* found mid-stream: the response direction's calls
                                  * (seq) when the request direction began following */
        };
    };
    u32 seq[2];          /* data calls so far, by PB_DIR_* (pb_data_event.seq) */
    u32 fd_gen;          /* PB_IGNORED by the fd walk (unseen_socket): the process's
                          * fd_gens value then; another one says the fd may have changed */
};
struct data_args {
    u64 enter_ns;
    u64 buf;   /* buffer, or iovec array for the vectored calls */
    u32 iovcnt;
    s32 fd;
    u8 syscall;
    u8 dir;
};
/* A data call on its way from a sys_exit_* program through the walkers (one per
 * CPU: a tail-call chain runs on one CPU, and the walkers cannot read `args`). */
struct data_call {
    struct data_args a;
    struct conn_key key;
    u64 ts;
    u32 orig;
    u32 seq;
    u32 tid;
    u16 part;  /* events of this call so far, emitted or dropped */
};
struct accept_args { u64 addr; };
struct addr_key { u8 addr[16]; u16 port; u16 family; };
struct addr_val { u8 addr[16]; u16 port; };

BPF_RINGBUF_OUTPUT(events, PB_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, u64, PB_STAT_MAX);
BPF_HASH(targets, u32, u8, 1024);       /* tgids to trace (PB_FILTER_TGID) */
BPF_HASH(ports, u16, u8, 256);          /* tcp ports to trace (PB_FILTER_PORTS) */
BPF_TABLE("lru_hash", struct conn_key, struct conn_info, conns, PB_MAX_CONNS);
BPF_TABLE("lru_hash", u64, struct conn_key, sk_owner, 4096);  /* connecting sock -> fd */
BPF_TABLE("lru_hash", struct addr_key, struct addr_val, passive, 4096); /* peer -> local */
BPF_HASH(connect_fd, u32, s32, 4096);   /* tid -> fd, during connect() */
BPF_HASH(accept_args_map, u32, struct accept_args, 4096);
#if PB_TASK_STORAGE
/* a data call between its enter and exit, kept on the thread itself: task
 * storage costs about a third of a hash update + lookup + delete keyed by tid */
BPF_TASK_STORAGE(data_args_ts, struct data_args);
#else
BPF_HASH(data_args_map, u32, struct data_args, 4096);
#endif
BPF_PERCPU_ARRAY(calls, struct data_call, 1);
BPF_PERCPU_ARRAY(conn_scratch, struct conn_info, 1);
BPF_PROG_ARRAY(walkers, PB_TC_MAX);
/* Nonzero once the recorder has put every walker in `walkers` and attached every hook: the
 * one instant from which data calls are numbered. Putting a program in `walkers` patches
 * each caller's tail-call jump in turn (constant keys are direct jumps), over milliseconds
 * on a loaded machine: the receive hooks (loaded first) then reached data_fn before the
 * send hooks did, so a connection's first sends went unnumbered after its first receives,
 * which replay took for pipelining. */
BPF_ARRAY(armed, u32, 1);
BPF_TABLE("lru_hash", struct grpc_key, struct grpc_val, grpc_msgs, PB_MAX_CONNS);

static __always_inline void stat_add(u32 idx, u64 n) {
    pb_count(stats.lookup(&idx), n);
}
#ifndef PB_PROFILE
#define PB_PROFILE 0 /* 1: count the data path's work (PB_PROF_*, recorder --profile) */
#endif
#if PB_PROFILE
BPF_PERCPU_ARRAY(prof, u64, PB_PROF_MAX);
#endif
static __always_inline void prof_add(u32 idx, u64 n) {
#if PB_PROFILE
    u64 *v = prof.lookup(&idx);
    if (v) *v += n;
#endif
}

#if PB_FILTER_TGID && defined(PB_TGID_LIST)
/* data-syscall program runs (enter and exit hits), by place in PB_TGID_LIST: the hits
 * our targets cause, for the overhead bench's floor */
BPF_PERCPU_ARRAY(traced_hits, u64, 16);
#endif

/* the target filter (pb_common.h), with the map when there is no inline list */
static __always_inline int tgid_traced(u32 tgid) {
    int known = pb_tgid_filter(tgid);
    return known >= 0 ? known : targets.lookup(&tgid) != NULL;
}

static __always_inline int port_traced(u16 a, u16 b) {
#if PB_FILTER_PORTS
    return ports.lookup(&a) != NULL || ports.lookup(&b) != NULL;
#else
    return 1;
#endif
}

/* The target filter of the data-syscall programs, first thing: 1 if tgid is traced
 * (its hit counted, with an inline list), 0 for every other process. */
static __always_inline int data_hit(u32 tgid) {
#if PB_FILTER_TGID && defined(PB_TGID_LIST)
    int slot = pb_tgid_index(tgid);
    if (slot < 0) return 0;
    u32 k = slot;
    u64 *nc = traced_hits.lookup(&k);
    if (nc) *nc += 1;
    return 1;
#else
    return tgid_traced(tgid);
#endif
}

/* batched wake-ups (pb_common.h) */
BPF_PERCPU_ARRAY(rb_pending, u64, 1);
static __always_inline u64 rb_flags(u32 size) {
    u32 zero = 0;
    return pb_rb_flags(rb_pending.lookup(&zero), size, PB_WAKE_BYTES);
}

static __always_inline u64 emit_conn(u8 kind, struct conn_key *k, struct conn_info *c, u64 pid_tgid) {
    struct pb_conn_event e = {};
    e.ts_ns = bpf_ktime_get_ns();
    e.tgid = k->tgid;
    e.tid = (u32)pid_tgid;
    e.fd = k->fd;
    e.kind = kind;
    e.role = c->role;
    e.proto = c->proto;
    e.family = c->family;
    e.lport = c->lport;
    e.rport = c->rport;
    __builtin_memcpy(e.laddr, c->laddr, 16);
    __builtin_memcpy(e.raddr, c->raddr, 16);
    bpf_get_current_comm(e.comm, sizeof(e.comm));
    e.seq[0] = c->seq[0];
    e.seq[1] = c->seq[1];
    if (events.ringbuf_output(&e, sizeof(e), rb_flags(sizeof(e))) < 0) stat_add(PB_STAT_DROPPED, 1);
    else stat_add(PB_STAT_CONN_EVENTS, 1);
    return e.ts_ns;
}

/* A connection whose address the kernel could not see. User space polls this
 * map on its own clock (not behind the data backlog) and asks sock_diag while
 * the socket still exists; the value ties the answer to the connection event. */
BPF_HASH(addr_wanted, struct conn_key, u64, 4096);
static __always_inline void want_address(struct conn_key *k, u64 ts) {
    addr_wanted.update(k, &ts);
}

/* ---- the socket behind an fd (PB_FD_SOCK): addresses that never depend on what
 * the caller passed to accept(), and a socket check for data on fds not seen
 * opened. The kernel headers bcc compiles against may be another kernel's, so
 * members are read at offsets from the running kernel's BTF (-D PB_OFF_*,
 * harness/collectors/btf.py), never through the headers' structs. */
#ifndef PB_FD_SOCK
#define PB_FD_SOCK 0
#endif
BPF_PERCPU_ARRAY(conn_stats, u64, PB_CSTAT_MAX);
static __always_inline void cstat_add(u32 idx) {
    u64 *v = conn_stats.lookup(&idx);
    if (v) *v += 1;
}
#define PB_KREAD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)((base) + (off)))
/* 1: fd is a connected TCP socket of the current process; its family, ports and
 * addresses are in c. 0: not one (a file, a pipe, UDP, unconnected, gone). */
static __always_inline int fd_sock(s32 fd, struct conn_info *c) {
#if PB_FD_SOCK
    cstat_add(PB_CSTAT_SOCK_WALKS);
    if (fd < 0) return 0;
    u64 task = bpf_get_current_task();
    u64 files = 0, fdt = 0, arr = 0, file = 0, inode = 0, sock = 0, sk = 0;
    u32 max = 0;
    u16 mode = 0, family = 0, proto = 0, type = 0, num = 0, dport = 0;
    if (PB_KREAD(files, task, PB_OFF_TASK_FILES) || !files) return 0;
    if (PB_KREAD(fdt, files, PB_OFF_FILES_FDT) || !fdt) return 0;
    if (PB_KREAD(max, fdt, PB_OFF_FDT_MAX) || (u32)fd >= max) return 0;
    if (PB_KREAD(arr, fdt, PB_OFF_FDT_FD) || !arr) return 0;
    if (PB_KREAD(file, arr, (u64)fd * 8) || !file) return 0;
    if (PB_KREAD(inode, file, PB_OFF_FILE_INODE) || !inode) return 0;
    if (PB_KREAD(mode, inode, PB_OFF_INODE_MODE) || (mode & 0170000) != 0140000) return 0;
    if (PB_KREAD(sock, file, PB_OFF_FILE_PRIV) || !sock) return 0;
    if (PB_KREAD(sk, sock, PB_OFF_SOCKET_SK) || !sk) return 0;
    PB_KREAD(family, sk, PB_OFF_SK_FAMILY);
    PB_KREAD(proto, sk, PB_OFF_SK_PROTOCOL);
    PB_KREAD(type, sk, PB_OFF_SK_TYPE);
    if ((family != AF_INET && family != AF_INET6) || proto != IPPROTO_TCP || type != 1 /* SOCK_STREAM */)
        return 0;
    PB_KREAD(num, sk, PB_OFF_SK_NUM);
    PB_KREAD(dport, sk, PB_OFF_SK_DPORT);
    if (!num || !dport) return 0;  /* not connected */
    c->family = family;
    c->lport = num;
    c->rport = bpf_ntohs(dport);
    if (family == AF_INET) {
        bpf_probe_read_kernel(c->laddr, 4, (void *)(sk + PB_OFF_SK_SADDR));
        bpf_probe_read_kernel(c->raddr, 4, (void *)(sk + PB_OFF_SK_DADDR));
    } else {
        bpf_probe_read_kernel(c->laddr, 16, (void *)(sk + PB_OFF_SK_V6_SADDR));
        bpf_probe_read_kernel(c->raddr, 16, (void *)(sk + PB_OFF_SK_V6_DADDR));
    }
    return 1;
#else
    return 0;
#endif
}

/* ---- connect: SYN_SENT (in the caller's context) ties the sock to the fd,
 * ESTABLISHED (any context) brings the full 4-tuple. */
static __always_inline int on_connect_enter(int fd) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tgid_traced(id >> 32)) return 0;
    u32 tid = (u32)id;
    s32 f = fd;
    connect_fd.update(&tid, &f);
    return 0;
}
static __always_inline int on_connect_exit(void) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tgid_traced(id >> 32)) return 0;
    u32 tid = (u32)id;
    connect_fd.delete(&tid);
    return 0;
}


TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP) return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == TCP_SYN_SENT_) {
        u64 id = bpf_get_current_pid_tgid();
        u32 tid = (u32)id;
        s32 *fd = connect_fd.lookup(&tid);
        if (!fd) return 0;
        struct conn_key k = {.tgid = id >> 32, .fd = *fd};
        sk_owner.update(&sk, &k);
        return 0;
    }
    if (args->newstate != TCP_ESTABLISHED_) return 0;
    if (!port_traced(args->sport, args->dport)) return 0;
    if (args->oldstate == TCP_SYN_SENT_) {
        struct conn_key *k = sk_owner.lookup(&sk);
        if (!k) return 0;
        struct conn_key key = *k;
        sk_owner.delete(&sk);
        struct conn_info c = {};
        c.role = PB_ROLE_CLIENT;
        c.from_start = 1;
        c.family = args->family;
        c.lport = args->sport;
        c.rport = args->dport;
        if (args->family == AF_INET) {
            __builtin_memcpy(c.laddr, args->saddr, 4);
            __builtin_memcpy(c.raddr, args->daddr, 4);
        } else {
            __builtin_memcpy(c.laddr, args->saddr_v6, 16);
            __builtin_memcpy(c.raddr, args->daddr_v6, 16);
        }
        conns.update(&key, &c);
        emit_conn(PB_EV_CONN, &key, &c, ((u64)key.tgid << 32));
    } else if (!PB_FD_SOCK && args->oldstate == TCP_SYN_RECV_) {
        /* passive open: remember local address by peer, for accept() to find
         * (with PB_FD_SOCK, accept reads both addresses from the socket) */
        struct addr_key pk = {};
        struct addr_val lv = {};
        pk.port = args->dport;
        pk.family = args->family;
        lv.port = args->sport;
        if (args->family == AF_INET) {
            __builtin_memcpy(pk.addr, args->daddr, 4);
            __builtin_memcpy(lv.addr, args->saddr, 4);
        } else {
            __builtin_memcpy(pk.addr, args->daddr_v6, 16);
            __builtin_memcpy(lv.addr, args->saddr_v6, 16);
        }
        passive.update(&pk, &lv);
    }
    return 0;
}

/* ---- accept: the peer address from the caller's sockaddr, the local one
 * from the passive ESTABLISHED transition. */
static __always_inline int on_accept_enter(u64 addr) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tgid_traced(id >> 32)) return 0;
    u32 tid = (u32)id;
    struct accept_args a = {.addr = addr};
    accept_args_map.update(&tid, &a);
    return 0;
}
static __always_inline int on_accept_exit(long ret) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tgid_traced(id >> 32)) return 0;
    u32 tid = (u32)id;
    struct accept_args *a = accept_args_map.lookup(&tid);
    if (!a) return 0;
    u64 addr = a->addr;
    accept_args_map.delete(&tid);
    if (ret < 0) return 0;
    struct conn_key key = {.tgid = id >> 32, .fd = (s32)ret};
    struct conn_info c = {};
    c.role = PB_ROLE_SERVER;
    c.from_start = 1;
    int from_sock = fd_sock(key.fd, &c);
    if (!from_sock && PB_FD_SOCK) cstat_add(PB_CSTAT_ACCEPT_NO_SOCK);
    if (!from_sock && addr) {
        u16 family = 0;
        bpf_probe_read_user(&family, sizeof(family), (void *)addr);
        struct addr_key pk = {};
        pk.family = family;
        if (family == AF_INET) {
            struct sockaddr_in sin = {};
            bpf_probe_read_user(&sin, sizeof(sin), (void *)addr);
            pk.port = bpf_ntohs(sin.sin_port);
            __builtin_memcpy(pk.addr, &sin.sin_addr.s_addr, 4);
        } else if (family == AF_INET6) {
            struct sockaddr_in6 sin6 = {};
            bpf_probe_read_user(&sin6, sizeof(sin6), (void *)addr);
            pk.port = bpf_ntohs(sin6.sin6_port);
            __builtin_memcpy(pk.addr, &sin6.sin6_addr, 16);
        }
        c.family = family;
        c.rport = pk.port;
        __builtin_memcpy(c.raddr, pk.addr, 16);
        struct addr_val *lv = passive.lookup(&pk);
        if (lv) {
            c.lport = lv->port;
            __builtin_memcpy(c.laddr, lv->addr, 16);
            passive.delete(&pk);
        }
    }
    /* without the local port we cannot apply the port filter here; user
     * space recovers the address (sock_diag) and filters there */
    if (c.lport && !port_traced(c.lport, c.rport)) return 0;
    conns.update(&key, &c);
    u64 ts = emit_conn(PB_EV_CONN, &key, &c, id);
    if (!c.lport) {
        cstat_add(PB_CSTAT_ACCEPT_NO_ADDR);
        want_address(&key, ts);
    }
    return 0;
}

/* ---- close */
/* every process's close() and dup2() pass here: the target filter comes first, so
 * the others cost no table lookup (only targets' fds are in the table) */
static __always_inline int on_close_enter(int fd) {
    u64 id = bpf_get_current_pid_tgid();
    if (!tgid_traced(id >> 32)) return 0;
    struct conn_key key = {.tgid = id >> 32, .fd = (s32)fd};
    struct conn_info *c = conns.lookup(&key);
    if (!c) return 0;
    if (c->proto != PB_IGNORED) emit_conn(PB_EV_CLOSE, &key, c, id);
    conns.delete(&key);
    return 0;
}

/* dup2/dup3 onto an fd in the table close what it held, without a close() */
static __always_inline int on_fd_replaced(long ret) {
    if (ret < 0) return 0;
    u64 id = bpf_get_current_pid_tgid();
    if (!tgid_traced(id >> 32)) return 0;
    struct conn_key key = {.tgid = id >> 32, .fd = (s32)ret};
    struct conn_info *c = conns.lookup(&key);
    if (!c) return 0;
    if (c->proto != PB_IGNORED) emit_conn(PB_EV_CLOSE, &key, c, id);
    conns.delete(&key);
    return 0;
}

/* A traced process's fd generation: bumped when its fds may change without a close()
 * or dup2() we see (exec closes its close-on-exec fds). 0 until then. */
BPF_HASH(fd_gens, u32, u32, 1024);
static __always_inline u32 fd_gen(u32 tgid) {
    u32 *g = fd_gens.lookup(&tgid);
    return g ? *g : 0;
}
TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!tgid_traced(tgid)) return 0;
    u32 g = fd_gen(tgid) + 1;
    fd_gens.update(&tgid, &g);
    return 0;
}
/* An fd the walk found to be no followed socket: remembered as ignored, so its later
 * calls (eventfds, files, pipes, UDP, other ports) stop at the table
 * instead of walking task->files again. A close() or dup2() onto the fd drops the
 * entry; an exec bumps the generation, so an fd number reused after it is walked
 * anew. (close_range() and io_uring closes are not seen: a socket reusing such a
 * number in the same process stays unseen.) */
static __always_inline void ignore_fd(struct conn_key *key, struct conn_info *n) {
    /* n itself: what the walk found is of no use now */
    n->proto = PB_IGNORED;
    n->fd_gen = fd_gen(key->tgid);
    conns.update(key, n);
}

/* Data on an fd not in the table (a connection opened before the attach, in a
 * child after fork, or through dup): 1 if it is a TCP socket on the traced
 * ports, its addresses and (from which end has the traced port) role in n. Any
 * other fd is remembered as ignored (ignore_fd). */
static __always_inline int unseen_socket(struct conn_key *key, struct conn_info *n) {
    prof_add(PB_PROF_FD_WALKS, 1);
    if (!fd_sock(key->fd, n)) {
        if (PB_FD_SOCK && key->fd >= 0) ignore_fd(key, n);
        return 0;
    }
#if PB_FILTER_PORTS
    /* values read, not pointers compared: clang would OR the two pointers */
    u8 server = 0, client = 0;
    u8 *sv = ports.lookup(&n->lport);
    if (sv) server = *sv;
    u8 *cv = ports.lookup(&n->rport);
    if (cv) client = *cv;
    if (!server && !client) {
        cstat_add(PB_CSTAT_OTHER_PORTS);
        ignore_fd(key, n);
        return 0;
    }
    if (server != client) n->role = server ? PB_ROLE_SERVER : PB_ROLE_CLIENT;
#endif
    return 1;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id != tgid || tgid == PB_SELF_TGID) return 0;  /* whole process only */
    if (!PB_FILTER_TGID || !targets.lookup(&tgid)) return 0;  /* others: the LRU ages them out */
    struct conn_key key = {.tgid = tgid, .fd = -1};
    struct conn_info c = {};
    emit_conn(PB_EV_EXIT, &key, &c, id);
    return 0;
}

/* ---- protocol inference from the first bytes of a call */
static __always_inline int starts(const char *b, const char *p, int n) {
    for (int i = 0; i < n; i++)
        if (b[i] != p[i]) return 0;
    return 1;
}
static __always_inline u8 infer_http1(const char *b) {
    if (starts(b, "GET ", 4) || starts(b, "PUT ", 4) || starts(b, "POST ", 5) ||
        starts(b, "HEAD ", 5) || starts(b, "PATCH ", 6) || starts(b, "TRACE ", 6) ||
        starts(b, "DELETE ", 7) || starts(b, "OPTIONS ", 8) || starts(b, "CONNECT ", 8) ||
        starts(b, "HTTP/1.", 7))
        return PB_PROTO_HTTP1;
    return PB_PROTO_UNKNOWN;
}
/* A plausible HTTP/2 frame header, for connections whose preface was missed. */
static __always_inline u8 infer_h2_frame(const u8 *b, u32 len) {
    if (len < 9) return PB_PROTO_UNKNOWN;
    u32 flen = ((u32)b[0] << 16) | ((u32)b[1] << 8) | b[2];
    u8 type = b[3], flags = b[4];
    u32 sid = (((u32)b[5] & 0x7f) << 24) | ((u32)b[6] << 16) | ((u32)b[7] << 8) | b[8];
    if (b[5] & 0x80) return PB_PROTO_UNKNOWN;
    if (flen > 16384) return PB_PROTO_UNKNOWN;
    switch (type) {
    case 0: if (flags & ~0x09) return 0; if (!sid) return 0; break;            /* DATA */
    case 1: if (flags & ~0x2d) return 0; if (!sid) return 0; break;            /* HEADERS */
    case 3: if (flags || flen != 4 || !sid) return 0; break;                   /* RST_STREAM */
    case 4: if ((flags & ~0x01) || sid || flen % 6) return 0; break;           /* SETTINGS */
    case 6: if ((flags & ~0x01) || sid || flen != 8) return 0; break;          /* PING */
    case 7: if (flags || sid || flen < 8) return 0; break;                     /* GOAWAY */
    case 8: if (flags || flen != 4) return 0; break;                           /* WINDOW_UPDATE */
    default: return PB_PROTO_UNKNOWN;
    }
    /* the first frame must fit in what the call moved, or start a larger read */
    return PB_PROTO_HTTP2;
}
/* A SETTINGS frame on stream 0: the server's connection preface, which a Go
 * server writes before it has read the client's. */
static __always_inline int is_settings(const u8 *b, u32 len) {
    u32 flen = ((u32)b[0] << 16) | ((u32)b[1] << 8) | b[2];
    return len >= 9 && b[3] == 4 && b[4] == 0 && !(b[5] | b[6] | b[7] | b[8]) &&
           flen % 6 == 0 && flen <= 16384;
}
/* A TLS record header: handshake (0x16) or, mid-stream, application data (0x17),
 * version 0x0300-0x0304. Neither can start an HTTP/1 message or a plausible
 * HTTP/2 frame (its length would be > 16384). */
#define PB_INFER_MIN 5 /* a TLS record header; every HTTP/1 method fits too */
static __always_inline int is_tls_record(const u8 *b, u32 len) {
    return len >= PB_INFER_MIN && (b[0] == 0x16 || b[0] == 0x17) && b[1] == 3 && b[2] <= 4;
}
static __always_inline u8 infer(const u8 *b, u32 len, u8 from_start) {
    if (len >= 4 && starts((const char *)b, "PRI ", 4)) return PB_PROTO_HTTP2;
    if (is_tls_record(b, len)) return PB_PROTO_TLS;
    u8 p = infer_http1((const char *)b);
    if (p) return p;
    if (!from_start) return infer_h2_frame(b, len);
    return is_settings(b, len) ? PB_PROTO_HTTP2 : PB_PROTO_UNKNOWN;
}

/* ---- data */
static __always_inline int on_data_enter(u8 sc, u8 dir, int fd, u64 buf, u32 iovcnt) {
    u64 id = bpf_get_current_pid_tgid();
    if (!data_hit(id >> 32)) return 0;
    if (PB_FLOOR == PB_FLOOR_FILTER) return 0;
#if PB_TASK_STORAGE
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct data_args *ap = data_args_ts.task_storage_get(t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!ap) return 0;
    /* nonzero: a call is pending; only a send is timed at its start (on_data_exit) */
    ap->enter_ns = dir == PB_DIR_SEND ? bpf_ktime_get_ns() : 1;
    ap->buf = buf;
    ap->iovcnt = iovcnt;
    ap->fd = fd;
    ap->syscall = sc;
    ap->dir = dir;
#else
    u32 tid = (u32)id;
    struct data_args a = {.enter_ns = dir == PB_DIR_SEND ? bpf_ktime_get_ns() : 1, .buf = buf,
                          .iovcnt = iovcnt, .fd = fd, .syscall = sc, .dir = dir};
    data_args_map.update(&tid, &a);
#endif
    return 0;
}

/* Reserve one data event with room for `cls` payload bytes. The verifier needs a
 * constant size per reserve, so events come in size classes (PB_CHUNK the
 * largest); the recorder's drain cuts each to its cap_len before writing it.
 * (bcc rewrites map calls only outside macros, so each class is spelled out.) */
#define PB_DATA_HDR offsetof(struct pb_data_event, data)
/* n & mask, kept by clang, so the verifier sees n within the class */
#define PB_MASKED(n, mask) ({ u32 _v = (n); asm volatile("%0 &= %1" : "+r"(_v) : "i"(mask)); _v; })

/* Copy up to `want` bytes from one user buffer into one event, straight into
 * the ring buffer (each byte copied once); returns bytes copied. */
/* A data event's head, all but its part. */
static __always_inline void data_head(struct pb_data_event *e, struct data_call *dc,
                                      struct conn_info *c, u32 offset, u32 n) {
    e->ts_ns = dc->ts;
    e->tgid = dc->key.tgid;
    e->tid = dc->tid;
    e->fd = dc->key.fd;
    e->kind = PB_EV_DATA;
    e->role = c->role;
    e->proto = c->proto;
    e->dir = dc->a.dir;
    e->syscall = dc->a.syscall;
    e->packed = 0;
    e->orig_len = dc->orig;
    e->offset = offset;
    e->cap_len = n;
    e->seq = dc->seq;
}

/* Copy the bytes from kernel memory at kptr instead (nonzero: the HTTP/2 walk's window
 * holds them); a user read costs several times a kernel one. */
#define PB_READ(dst, n, ptr, kptr) \
    ((kptr) ? bpf_probe_read_kernel(dst, n, (void *)(kptr)) : bpf_probe_read_user(dst, n, (void *)(ptr)))
static __always_inline u32 emit_piece(struct data_call *dc, struct conn_info *c,
                                      u32 offset, u64 ptr, u32 want, u64 kptr) {
    u32 n = want;
    if (n > PB_CHUNK) n = PB_CHUNK;
    if (n == 0) return 0;
    struct pb_data_event *e;
    long rd;
    u32 cls;
    /* a class takes n below its size (a mask bounds n for the verifier); the
     * largest takes n == PB_CHUNK too, read with a constant size */
#if PB_CHUNK > 256
    if (n < 256) {
        cls = 256;
        e = (struct pb_data_event *)events.ringbuf_reserve(PB_DATA_HDR + 256);
        if (!e) goto dropped;
        rd = PB_READ(e->data, PB_MASKED(n, 255), ptr, kptr);
    } else
#endif
#if PB_CHUNK > 1024
    if (n < 1024) {
        cls = 1024;
        e = (struct pb_data_event *)events.ringbuf_reserve(PB_DATA_HDR + 1024);
        if (!e) goto dropped;
        rd = PB_READ(e->data, PB_MASKED(n, 1023), ptr, kptr);
    } else
#endif
#if PB_CHUNK > 4096
    if (n < 4096) {
        cls = 4096;
        e = (struct pb_data_event *)events.ringbuf_reserve(PB_DATA_HDR + 4096);
        if (!e) goto dropped;
        rd = PB_READ(e->data, PB_MASKED(n, 4095), ptr, kptr);
    } else
#endif
    {
        cls = PB_CHUNK;
        e = (struct pb_data_event *)events.ringbuf_reserve(PB_DATA_HDR + PB_CHUNK);
        if (!e) goto dropped;
        if (n == PB_CHUNK) rd = PB_READ(e->data, PB_CHUNK, ptr, kptr);
        else rd = PB_READ(e->data, PB_MASKED(n, PB_CHUNK - 1), ptr, kptr);
    }
    e->part = dc->part++;  /* counted before the copy: a failed one shows as a gap */
    if (rd < 0) {
        events.ringbuf_discard(e, BPF_RB_NO_WAKEUP);
        stat_add(PB_STAT_READ_FAILED, 1);
        return 0;
    }
    data_head(e, dc, c, offset, n);
    prof_add(PB_PROF_RING_RECORDS, 1);
    if (!kptr) {
        prof_add(PB_PROF_USER_READS, 1);
        prof_add(PB_PROF_USER_READ_BYTES, n);
    }
    events.ringbuf_submit(e, rb_flags(PB_DATA_HDR + cls));
    stat_add(PB_STAT_DATA_EVENTS, 1);
    return n;
dropped:
    dc->part++;
    stat_add(PB_STAT_DROPPED, 1);
    return 0;
}
static __always_inline u32 emit_chunk(struct data_call *dc, struct conn_info *c,
                                      u32 offset, u64 ptr, u32 want) {
    return emit_piece(dc, c, offset, ptr, want, 0);
}

struct iov_walk {
    struct iovec cur;
    u64 done, iov_i, iov_off;
};
BPF_PERCPU_ARRAY(iov_walks, struct iov_walk, 1);

/* A connection seen from its start turned out HTTP/2 at its first call: both
 * directions are at offset 0, the client's starting with the 24-byte preface. */
static __always_inline void h2_start(struct conn_info *c) {
    u8 pre = c->role == PB_ROLE_CLIENT ? PB_DIR_SEND : PB_DIR_RECV;
    for (int d = 0; d < 2; d++) {
        __builtin_memset(&c->h2[d], 0, sizeof(c->h2[d]));
        c->h2[d].sync = c->role != PB_ROLE_UNKNOWN;
        if (d == pre) {
            c->h2[d].state = H2_PAY;
            c->h2[d].rem = H2_PREFACE_LEN;
        }
    }
}

/* A direction not in sync (found mid-stream, or its walk failed): a call that starts
 * with a plausible frame header starts a walk on trial (PB_H2_TRIAL). */
static __always_inline void h2_resync(struct conn_info *c, u8 dir, u64 first, u32 first_len) {
#if PB_H2_TRIAL
    u8 head[16] = {};
    if (first_len < 9 || bpf_probe_read_user(head, sizeof(head), (void *)first) < 0) return;
    if (infer_h2_frame(head, first_len) != PB_PROTO_HTTP2) return;
    struct h2_dir *d = &c->h2[dir & 1];
    __builtin_memset(d, 0, sizeof(*d));
    d->sync = 1;
    d->state = H2_HDR;
    d->trial = PB_H2_TRIAL;
    d->mid = 1;
    stat_add(PB_STAT_H2_RESYNC, 1);
#endif
}

struct h2_walk {
    struct iovec cur;
    u64 iov_i, iov_off;
    u64 pos;      /* offset in the call */
    u64 run_ptr;  /* the captured run not yet emitted: user address, call offset, length */
    u32 run_off, run_len;
    u32 budget;   /* message-body bytes this call may still capture */
    u32 skipped;
    /* this step's decision; kept here rather than in registers (see below) */
    u64 ptr;
    u32 avail, n;
    u8 fin, cap, field, pad;
    struct h2_dir s; /* working copy of the direction's state */
    u64 win_ptr;  /* the window: win[0, win_len) holds the user bytes at win_ptr */
    u32 win_len;
    u32 pack_len; /* bytes of pack in use: pack_n events, each at an 8-byte boundary */
    u32 pack_n;
    u8 win[2 * PB_H2_WIN]; /* twice: masked offsets plus masked lengths stay inside */
    u8 pack[2 * PB_H2_PACK];
};
BPF_PERCPU_ARRAY(h2_walks, struct h2_walk, 1);

/* The window's kernel address of the user bytes [ptr, ptr + n), or 0 if it does not
 * hold them all. */
static __always_inline u64 h2_win_at(struct h2_walk *w, u64 ptr, u32 n) {
    if (ptr < w->win_ptr || ptr + n > w->win_ptr + w->win_len) return 0;
    return (u64)&w->win[(ptr - w->win_ptr) & (PB_H2_WIN - 1)];
}

/* The packed events go out as one ring record (the first one's `packed` says how many). */
static __always_inline void h2_flush(struct h2_walk *w) {
    u32 n = w->pack_n;
    if (!n) return;
    u32 len = w->pack_len;
    w->pack_n = 0;
    w->pack_len = 0;
    ((struct pb_data_event *)w->pack)->packed = (u8)n;
    len = PB_MASKED(len, 2 * PB_H2_PACK - 1);
    u64 flags = rb_flags(len);
    struct pb_data_event *first = (struct pb_data_event *)w->pack;
    if (events.ringbuf_output(first, len, flags) < 0) {
        stat_add(PB_STAT_DROPPED, n);
        return;
    }
    stat_add(PB_STAT_DATA_EVENTS, n);
    prof_add(PB_PROF_RING_RECORDS, 1);
}

/* A piece of a call (n bytes at call offset off: user address uptr, or kernel kptr when
 * nonzero) as a data event: packed when it is small (read from the call into the pack
 * when no kernel copy holds it: a call's first byte inside a skipped body is such a
 * piece, and went out as a ring record of its own), else (after what is packed, to keep
 * the call's events in order) alone. The pack goes out at the call's end (h2_flush). */
static __always_inline void pack_piece(struct data_call *dc, struct conn_info *c,
                                       struct h2_walk *w, u32 off, u64 uptr, u32 n, u64 kptr) {
    if (!n) return;
    if (n > H2_PIECE_MAX) {
        h2_flush(w);
        emit_piece(dc, c, off, uptr, n, kptr);
        return;
    }
    u32 need = (PB_DATA_HDR + n + 7) & ~7;
    if (w->pack_len + need > PB_H2_PACK) h2_flush(w);
    u32 at = PB_MASKED(w->pack_len, PB_H2_PACK - 1);
    struct pb_data_event *e = (struct pb_data_event *)&w->pack[at];
    e->part = dc->part++;  /* counted before the copy: a failed one shows as a gap */
    data_head(e, dc, c, off, n);
    /* n is 1..H2_PIECE_MAX: masked as n - 1, so that a piece of exactly H2_PIECE_MAX
     * bytes is copied whole (n & (H2_PIECE_MAX - 1) made it 0: the record then carried
     * the pack buffer's stale bytes, e.g. a write of HEADERS frames 512 bytes long) */
    u32 len = PB_MASKED(n - 1, H2_PIECE_MAX - 1) + 1;
    if (kptr) {
        bpf_probe_read_kernel(e->data, len, (void *)kptr);
    } else {
        prof_add(PB_PROF_USER_READS, 1);
        prof_add(PB_PROF_USER_READ_BYTES, n);
        if (bpf_probe_read_user(e->data, len, (void *)uptr) < 0) {
            stat_add(PB_STAT_READ_FAILED, 1);
            return;
        }
    }
    w->pack_len += need;
    w->pack_n++;
}

/* One captured run of the walk as a data event (from the window when it holds it). */
static __always_inline void h2_emit(struct data_call *dc, struct conn_info *c, struct h2_walk *w) {
    u32 n = w->run_len;
    pack_piece(dc, c, w, w->run_off, w->run_ptr, n, h2_win_at(w, w->run_ptr, n));
}

/* This step's field bytes (w->n of them at w->ptr) into fld at `have`: from the
 * window, read anew at ptr (up to PB_H2_WIN of the w->avail bytes there) when it
 * does not hold them. */
static __always_inline void h2_field(struct h2_walk *w) {
    u64 src = h2_win_at(w, w->ptr, w->n);
    if (!src) {
        /* a call's start holds its headers; further in, after a skipped body, the
         * next frame header or two is what is wanted */
        u32 len = w->pos ? PB_H2_WIN / 8 : PB_H2_WIN;
        if (w->avail < len) len = w->avail;
        w->win_len = 0;
        prof_add(PB_PROF_USER_READS, 1);
        prof_add(PB_PROF_USER_READ_BYTES, len);
        if (len && !bpf_probe_read_user(w->win, PB_MASKED(len - 1, PB_H2_WIN - 1) + 1,
                                        (void *)w->ptr)) {
            w->win_ptr = w->ptr;
            w->win_len = len;
        }
        src = h2_win_at(w, w->ptr, w->n);
    }
    if (!src) {
        prof_add(PB_PROF_USER_READS, 1);
        prof_add(PB_PROF_USER_READ_BYTES, w->n);
        bpf_probe_read_user(&w->s.fld[w->s.have & 15], w->n & 15, (void *)w->ptr);
        return;
    }
    if (w->s.have) {
        bpf_probe_read_kernel(&w->s.fld[w->s.have & 15], w->n & 15, (void *)src);
        return;
    }
    /* the common case, a field from its start: 16 bytes copied, no helper (past the n
     * wanted they are not read; the window has room past any masked offset) */
    __builtin_memcpy(w->s.fld, &w->win[(w->ptr - w->win_ptr) & (PB_H2_WIN - 1)], 16);
}

/* Between the phases of a step, values are passed through the map value and
 * this barrier makes the compiler reload them: the verifier then sees the same
 * registers wherever the branches of a phase join and prunes all but one path,
 * so a step costs the verifier about its own length, not its paths' product. */
#define H2_JOIN() asm volatile("" ::: "memory")

/* The slot keeping stream sid's position, or -1. */
static __always_inline int grpc_slot(struct h2_dir *s, u32 sid) {
    int at = -1;
#pragma unroll
    for (int i = 0; i < PB_H2_KEPT; i++)
        if (s->kept[i].sid == sid) at = i;
    return at;
}

/* A stream's gRPC message position (msg_rem, have, fld[0..5)) kept for its next DATA
 * frame: in its slot, or a free one; with none free, a kept stream goes to the map. */
static __always_inline void grpc_put(struct conn_key *k, struct h2_walk *w, u8 dir, u32 sid) {
    struct h2_dir *s = &w->s;
    int at = grpc_slot(s, sid);
    if (at < 0) at = grpc_slot(s, 0);
    if (at < 0) {
        at = s->next & (PB_H2_KEPT - 1);
        s->next++;
        struct h2_pos *old = &s->kept[at & (PB_H2_KEPT - 1)];
        struct grpc_key gk = {.tgid = k->tgid, .fd = k->fd, .sid = old->sid, .dir = dir};
        struct grpc_val gv = {.msg_rem = old->msg_rem, .have = old->have};
        __builtin_memcpy(gv.pre, old->pre, 5);
        prof_add(PB_PROF_GRPC_MAP_OPS, 1);
        if (!grpc_msgs.update(&gk, &gv)) s->spilled++;
    }
    struct h2_pos *p = &s->kept[at & (PB_H2_KEPT - 1)];
    p->sid = sid;
    p->msg_rem = s->msg_rem;
    p->have = s->have;
    __builtin_memcpy(p->pre, s->fld, 5);
}

/* The position kept for a stream into msg_rem, have, fld[0..5); 0: none kept. A
 * position found in the map leaves it (the frame's end puts it in a slot, or drops it). */
static __always_inline int grpc_get(struct conn_key *k, struct h2_walk *w, u8 dir, u32 sid) {
    struct h2_dir *s = &w->s;
    int at = sid ? grpc_slot(s, sid) : -1;
    if (at >= 0) {
        struct h2_pos *p = &s->kept[at & (PB_H2_KEPT - 1)];
        s->msg_rem = p->msg_rem;
        s->have = p->have;
        __builtin_memcpy(s->fld, p->pre, 5);
        return 1;
    }
    if (!s->spilled) return 0;
    struct grpc_key gk = {.tgid = k->tgid, .fd = k->fd, .sid = sid, .dir = dir};
    prof_add(PB_PROF_GRPC_MAP_OPS, 1);
    struct grpc_val *gv = grpc_msgs.lookup(&gk);
    if (!gv) return 0;
    s->msg_rem = gv->msg_rem;
    s->have = gv->have;
    __builtin_memcpy(s->fld, gv->pre, 5);
    prof_add(PB_PROF_GRPC_MAP_OPS, 1);
    if (!grpc_msgs.delete(&gk)) s->spilled--;
    return 1;
}

/* A stream ended: nothing kept for it. */
static __always_inline void grpc_drop(struct conn_key *k, struct h2_walk *w, u8 dir, u32 sid) {
    int at = grpc_slot(&w->s, sid);
    if (at >= 0) {
        w->s.kept[at & (PB_H2_KEPT - 1)].sid = 0;
        return;
    }
    if (!w->s.spilled) return;
    struct grpc_key gk = {.tgid = k->tgid, .fd = k->fd, .sid = sid, .dir = dir};
    prof_add(PB_PROF_GRPC_MAP_OPS, 1);
    if (!grpc_msgs.delete(&gk)) w->s.spilled--;
}

/* End of a frame's payload: a DATA frame leaves its stream's gRPC position
 * behind for the stream's next DATA frame. */
static __always_inline void h2_frame_end(struct conn_key *k, struct h2_walk *w, u8 dir) {
    if (w->s.state == H2_DATA) {
        if (w->s.end_stream) grpc_drop(k, w, dir, w->s.sid);
        else grpc_put(k, w, dir, w->s.sid);
    }
    w->s.state = H2_HDR;
    w->s.have = 0;
}

/* A whole frame header is in fld: enter its payload. */
static __always_inline void h2_header(struct conn_key *k, struct h2_walk *w, u8 dir, u32 orig) {
    u8 *f = w->s.fld;
    u8 type = f[3], flags = f[4];
    int bad = type > 0x10 || (f[5] & 0x80);
    /* on trial, only the frames a peer sends unprompted pass (infer_h2_frame) */
    if (!bad && w->s.trial) bad = infer_h2_frame(f, 9) != PB_PROTO_HTTP2;
    if (bad) {
        /* not a frame header: where frames are is unknown from here on */
        stat_add(PB_STAT_H2_IMPLAUSIBLE, 1);
        w->s.sync = 0;
        if (w->s.trial) {
            /* a mid-stream sync that did not hold: nothing was skipped yet, and the
             * rest of the call is captured as the prefix capture would have */
            w->s.trial = 0;
            w->s.state = H2_PAY;
            w->s.have = 0;
            u32 rest = orig - (u32)w->pos;
            w->s.rem = rest < PB_CALL_LIMIT ? rest : PB_CALL_LIMIT;
            return;
        }
        /* the rest of this call goes by unseen, and is counted */
        stat_add(PB_STAT_TRUNCATED_CALLS, 1);
        stat_add(PB_STAT_TRUNCATED_BYTES, orig - (u32)w->pos);
        w->pos = orig;
        return;
    }
    if (w->s.trial) w->s.trial--;
    w->s.rem = ((u32)f[0] << 16) | ((u32)f[1] << 8) | f[2];
    w->s.have = 0;
    w->s.end_stream = flags & 1;
    u32 sid = (((u32)f[5] & 0x7f) << 24) | ((u32)f[6] << 16) | ((u32)f[7] << 8) | f[8];
    if (type == 0 && !(flags & 0x8)) {
        w->s.state = H2_DATA;
        w->s.sid = sid;
        w->s.msg_rem = 0;
        if (!grpc_get(k, w, dir, sid) && w->s.mid) {
            /* a stream that began before the sync: where its messages start is
             * unknown, so its DATA is captured whole */
            w->s.state = H2_PAY;
        }
        return;
    }
    if (type == 1 && !(flags & 1) && w->s.mid) {
        /* a stream's headers, seen in sync: its DATA starts with a message prefix */
        w->s.msg_rem = 0;
        w->s.have = 0;
        grpc_put(k, w, dir, sid);
    }
    /* padded DATA is captured whole (gRPC does not pad) */
    w->s.state = H2_PAY;
    if (type <= 1 && (flags & 1)) grpc_drop(k, w, dir, sid);
}

/* Right after a frame header, in the same step: a payload captured whole that this
 * buffer holds goes into the run at once, and so does the gRPC prefix of a DATA frame
 * that starts a message, when the header's window copy brought it along (fld[9, 14)).
 * Saves a step per frame and a read per message; the general steps do the rest. */
static __always_inline void h2_quick(struct h2_walk *w) {
    u32 left = w->avail - w->n;  /* this buffer's bytes after the header */
    u64 next = w->ptr + w->n;
    if (!w->run_len || w->run_ptr + w->run_len != next) return;  /* not one run */
    if (w->s.state == H2_DATA) {
        if (w->s.msg_rem || w->s.have || w->s.rem < 5 || w->n != 9 || left < 5 ||
            w->run_len + 5 > PB_CHUNK || !h2_win_at(w, w->ptr, 14))
            return;
        u8 *f = w->s.fld;
        w->s.msg_rem = ((u32)f[10] << 24) | ((u32)f[11] << 16) | ((u32)f[12] << 8) | f[13];
        w->s.rem -= 5;
        w->pos += 5;
        w->iov_off += 5;
        w->run_len += 5;
        return;
    }
    if (w->s.state != H2_PAY || w->s.rem > left || w->run_len + w->s.rem > PB_CHUNK) return;
    w->run_len += w->s.rem;
    w->pos += w->s.rem;
    w->iov_off += w->s.rem;
    w->s.rem = 0;
    w->s.state = H2_HDR;  /* the frame's end (h2_frame_end of a payload captured whole) */
    w->s.have = 0;
}

/* How many bytes this step takes, and whether it captures them and gathers them
 * into fld. Reads w->avail, writes w->n, w->cap, w->field. */
static __always_inline void h2_decide(struct h2_walk *w) {
    u32 max;
    w->cap = 1;
    w->field = 0;
    if (w->s.state == H2_HDR) {
        max = 9 - w->s.have;
        w->field = 1;
    } else if (w->s.state == H2_PAY) {
        max = w->s.rem;
    } else if (w->s.msg_rem) {
        max = w->s.rem < w->s.msg_rem ? w->s.rem : w->s.msg_rem;
        if (!w->budget) {
            /* budget spent: skip to the message's or frame's end; but a call's first
             * byte is kept, so every call has its first event at offset 0 */
            if (w->pos) w->cap = 0;
            else max = 1;
        } else if (max > w->budget) {
            max = w->budget;
        }
    } else {
        max = 5 - w->s.have;  /* a gRPC prefix, perhaps split over frames or calls */
        if (max > w->s.rem) max = w->s.rem;
        w->field = 1;
    }
    u32 n = w->avail < max ? w->avail : max;
    if (w->cap && n > PB_CHUNK) n = PB_CHUNK;
    w->n = n;
}

/* One call of an HTTP/2 direction in sync: set up the walk of its frames. */
static __always_inline int h2_begin(struct data_call *dc, struct conn_info *c) {
    u32 zero = 0;
    struct h2_walk *w = h2_walks.lookup(&zero);
    if (!w) return 0;
    struct data_args *a = &dc->a;
    w->s = c->h2[a->dir & 1];
    w->pos = 0;
    w->iov_i = 0;
    w->iov_off = 0;
    w->run_len = 0;
    w->run_off = 0;
    w->run_ptr = 0;
    w->budget = w->s.trial ? PB_CALL_LIMIT : PB_H2_BODY_LIMIT;
    w->skipped = 0;
    w->win_len = 0;  /* a buffer's bytes change between calls (Go reuses its buffers) */
    w->pack_len = 0;
    w->pack_n = 0;
    if (a->iovcnt) bpf_probe_read_user(&w->cur, sizeof(w->cur), (void *)a->buf);
    stat_add(PB_STAT_H2_CALLS, 1);
    return 1;
}

/* The frame walk of one call (see kprobe_events.h), PB_H2_STEPS steps per run of
 * this program; a run out of steps tail-calls this program again to go on.
 * Not a TRACEPOINT_PROBE: the loader puts it in `walkers`. All walk state lives
 * in map values so the verifier sees unknown scalars at each step and can prune. */
int h2_walk_fn(void *ctx) {
    u32 zero = 0;
    struct data_call *dc = calls.lookup(&zero);
    struct h2_walk *w = h2_walks.lookup(&zero);
    if (!dc || !w) return 0;
    struct conn_info *c = conns.lookup(&dc->key);
    if (!c) return 0;  /* closed meanwhile by another thread */
    struct conn_key *k = &dc->key;
    struct data_args *a = &dc->a;
    u32 orig = dc->orig;
    u8 dir = a->dir & 1;
    int i;
    prof_add(PB_PROF_H2_RUNS, 1);
#pragma clang loop unroll(disable)
    for (i = 0; i < PB_H2_STEPS; i++) {
        H2_JOIN();
        prof_add(PB_PROF_H2_STEPS, 1);
        /* a payload ended: settle the frame before anything else (even at the
         * call's end, so the state kept between calls is normalised) */
        if (w->s.state != H2_HDR && w->s.rem == 0) {
            h2_frame_end(k, w, dir);
            continue;
        }
        /* where the next bytes are */
        w->fin = w->pos >= orig;
        w->avail = orig - (u32)w->pos;
        w->ptr = a->buf + w->pos;
        if (!w->fin && a->iovcnt) {
            if (w->iov_off >= w->cur.iov_len) {
                w->iov_i++;
                if (w->iov_i >= a->iovcnt || w->iov_i >= PB_H2_MAX_IOV) {
                    stat_add(PB_STAT_H2_BOUND, 1);
                    w->s.sync = 0;
                    w->fin = 1;
                } else {
                    /* the next iovec, and go on with it in this same step */
                    w->iov_off = 0;
                    bpf_probe_read_user(&w->cur, sizeof(w->cur),
                                        (void *)(a->buf + w->iov_i * sizeof(struct iovec)));
                }
            }
            H2_JOIN();
            if (!w->fin) {
                if (w->iov_off >= w->cur.iov_len) continue;  /* an empty iovec */
                if (w->cur.iov_len - w->iov_off < w->avail)
                    w->avail = w->cur.iov_len - w->iov_off;
                w->ptr = (u64)w->cur.iov_base + w->iov_off;
            }
        }
        H2_JOIN();
        w->n = 0;
        w->cap = 1;
        w->field = 0;
        if (!w->fin) h2_decide(w);
        H2_JOIN();
        /* the one place a run is emitted: it ends at a gap, a jump in user
         * memory (next iovec), a full chunk, or the call's end */
        if (w->run_len && (w->fin || !w->cap || w->run_ptr + w->run_len != w->ptr ||
                           w->run_len + w->n > PB_CHUNK)) {
            h2_emit(dc, c, w);
            w->run_len = 0;
        }
        H2_JOIN();
        if (w->fin) break;
        if (w->cap) {
            if (!w->run_len) {
                w->run_ptr = w->ptr;
                w->run_off = (u32)w->pos;
            }
            w->run_len += w->n;
        } else {
            w->skipped += w->n;
        }
        H2_JOIN();
        if (w->field) {
            prof_add(PB_PROF_H2_FIELDS, 1);
            h2_field(w);
            w->s.have += w->n;
        }
        w->pos += w->n;
        w->iov_off += w->n;
        H2_JOIN();
        if (w->s.state == H2_HDR) {
            if (w->s.have >= 9) {
                h2_header(k, w, dir, orig);
                H2_JOIN();
                h2_quick(w);
            }
            continue;
        }
        w->s.rem -= w->n;
        if (w->s.state == H2_DATA) {
            if (w->s.msg_rem) {
                w->s.msg_rem -= w->n;
                if (w->cap) w->budget = w->n < w->budget ? w->budget - w->n : 0;
            } else if (w->s.have == 5) {
                u8 *f = w->s.fld;
                w->s.msg_rem = ((u32)f[1] << 24) | ((u32)f[2] << 16) | ((u32)f[3] << 8) | f[4];
                w->s.have = 0;
            }
        }
        H2_JOIN();
        if (w->s.rem == 0) h2_frame_end(k, w, dir);  /* in this step: saves one */
    }
    if (i == PB_H2_STEPS) {
        /* out of steps mid-call: go on in a fresh run (returns only at the chain's limit) */
        walkers.call(ctx, PB_TC_H2);
        /* the run so far is emitted, the rest unseen */
        if (w->run_len) h2_emit(dc, c, w);
        stat_add(PB_STAT_H2_BOUND, 1);
        w->s.sync = 0;
    }
    /* skipped message bodies cost no field (gRPC counts messages by their prefixes,
     * which are kept): they are counted apart from truncation, which can */
    if (w->pos < orig) {
        stat_add(PB_STAT_TRUNCATED_CALLS, 1);
        stat_add(PB_STAT_TRUNCATED_BYTES, orig - (u32)w->pos);
    }
    h2_flush(w);
    if (w->skipped) stat_add(PB_STAT_H2_SKIPPED_BYTES, w->skipped);
    c->h2[dir] = w->s;
    return 0;
}

/* ---- HTTP/1 body skipping (kprobe_events.h): a direction in step with its messages
 * captures each header block and leaves Content-Length bodies out as gaps. */
#define H1_MASK (PB_H1_HDR_MAX - 1)
struct h1_scan {
    union {  /* a message's first bytes; 16 readable past any offset */
        u8 buf[2 * PB_H1_HDR_MAX + 32];  /* room for a slice read past pending bytes */
        u64 words[2 * PB_H1_HDR_MAX / 8 + 4];
    };
    u32 n;        /* bytes of buf read from the call */
    u32 lim;      /* bytes there are to read, at most PB_H1_HDR_MAX - 1 */
    u32 sh;       /* buf starts with this many bytes of earlier calls (h1_dir.pre) */
    u32 o;        /* where the scan goes on (a multiple of 8) */
    u32 end;      /* length of the header block (through its empty line); 0: not found */
    u32 cl_at;    /* offset just past the last "content-length:" */
    u32 cl;       /* its value (h1_cl_value), or a chunk's size (h1_chunk_line) */
    u32 te_at;    /* offset just past the last "transfer-encoding:" */
    u32 line1;    /* offset just past the first line's '\n'; 0: not found yet */
    u8 cl_count;  /* content-length lines seen */
    u8 te;        /* transfer-encoding (or transfer-*) lines seen */
    u8 digits;
    u8 bad;
    u8 cut;       /* h1_chunk_line: the bytes ended inside the line */
};
BPF_PERCPU_ARRAY(h1_scans, struct h1_scan, 1);
/* the first bytes of a head a call ended in, for the direction's next call */
struct h1_pend_key { u32 tgid; s32 fd; u32 dir; };
struct h1_pend_val { u8 buf[PB_H1_HDR_MAX]; };
BPF_TABLE("lru_hash", struct h1_pend_key, struct h1_pend_val, h1_pends, 256);
/* one call's walk over its messages, between runs of h1_walk_fn */
struct h1_walk {
    u64 pos;      /* offset in the call */
    u64 skipped;  /* body bytes left out so far */
    u8 scanning;  /* H1_SCANNING: a head is in h1_scans, its scan goes on in the next
                   * run; H1_SCANNED: the next run decides from it */
};
BPF_PERCPU_ARRAY(h1_walks, struct h1_walk, 1);
#define H1_SCANNING 1
#define H1_SCANNED 2

/* header names, 8 bytes little-endian, lower case (a byte | 0x20 folds A-Z) */
#define H1_LOWER 0x2020202020202020ULL
#define H1_W_CONTENT 0x2d746e65746e6f63ULL  /* "content-" */
#define H1_W_LENGTH 0x3a6874676e656cULL     /* "length:" (7 bytes) */
#define H1_W_TRANSFER 0x726566736e617274ULL /* "transfer" */
#define H1_W_ENCODIN 0x6e69646f636e652dULL  /* "-encodin" */
#define H1_W_CHUNKED 0x64656b6e756863ULL    /* "chunked" (7 bytes) */

/* A line starts at q: the header block's end, or a header that frames the body.
 * (Loose matches are harmless: replay frames the bytes again and checks the gaps.) */
static __always_inline void h1_line(struct h1_scan *s, u32 q) {
    if (!s->line1) s->line1 = q;
    if (q >= s->n || s->end) return;
    u32 m = q & H1_MASK;
    if (s->buf[m] == '\r' && s->buf[m + 1] == '\n') {
        if (q + 2 <= s->n) s->end = q + 2;
        return;
    }
    u64 a = *(u64 *)&s->buf[m] | H1_LOWER;
    if (a == H1_W_CONTENT) {
        u64 b = (*(u64 *)&s->buf[m + 8] | H1_LOWER) & 0x00ffffffffffffffULL;
        if (b == H1_W_LENGTH) {
            s->cl_at = q + 15;
            s->cl_count++;
        }
    } else if (a == H1_W_TRANSFER) {
        s->te++;  /* only "transfer-encoding: chunked" is framed, once */
        if ((*(u64 *)&s->buf[m + 8] | H1_LOWER) == H1_W_ENCODIN) s->te_at = q + 18;
    }
}

#ifndef PB_H1_SCAN_WORDS
/* 8-byte words of a head scanned per run of h1_walk_fn: the verifier keeps every
 * branch of a run pending at once (at most 8192), so a run scans a slice. 64: heads up
 * to 512 bytes in one run. 128 (heads up to 1 KiB in one run: 17% fewer scan runs on the
 * bench's go->go requests, no time difference measurable) made h1_walk_fn verify in 390k
 * instructions against 242k, 0.16 s more on the host and seconds more per load in a
 * guest, where it took `kernels --quick` past its 6 minutes */
#define PB_H1_SCAN_WORDS 64
#endif
/* A line checked at a word's end reads up to 40 bytes on: not past what was read */
#define H1_WANTS_SLICE(s) ((s)->n < (s)->lim && (s)->o + 48 > (s)->n)
/* 0x80 in exactly the bytes of w that are '\n' (no false hit, unlike x - 0x01..) */
static __always_inline u64 h1_newlines(u64 w) {
    u64 x = w ^ 0x0a0a0a0a0a0a0a0aULL;
    return ~(((x & 0x7f7f7f7f7f7f7f7fULL) + 0x7f7f7f7f7f7f7f7fULL) | x | 0x7f7f7f7f7f7f7f7fULL);
}
/* Each line starting after a '\n' of the word at o (m: h1_newlines), lowest address
 * first: a word holds a few at most, where checking every lane cost 8 loads and tests. */
static __always_inline void h1_lines(struct h1_scan *s, u32 o, u64 m) {
#pragma unroll
    for (u32 j = 0; j < 8; j++) {
        if (!m) break;
        /* the lowest hit's lane: (m & -m) >> 7 is 1 << 8 * lane, and times this
         * constant it brings byte `lane` of 0x0706050403020100 to the top */
        u32 lane = (((m & -m) >> 7) * 0x0001020304050607ULL) >> 56;
        m &= m - 1;
        H2_JOIN();
        h1_line(s, o + (lane & 7) + 1);
    }
}
/* Go on finding the header block's end in s->buf[0, n), two words at a time: words
 * without a '\n' cost a few instructions. State lives in the map value (H2_JOIN). A
 * second word past n is harmless: h1_line takes nothing at or past n (the scan read
 * past n a word at a time before, too), and before n is all read H1_WANTS_SLICE keeps
 * 48 bytes ahead of o. (Four words a step measured no better on a loaded machine and
 * doubled the step's code: 32 inlined h1_line.) */
static __always_inline void h1_scan_step(struct h1_scan *s) {
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < PB_H1_SCAN_WORDS / 2; i++) {
        H2_JOIN();
        u32 o = s->o & H1_MASK;
        if (s->o >= s->n || s->end || H1_WANTS_SLICE(s)) break;
        s->o = o + 16;
        prof_add(PB_PROF_H1_SCAN_WORDS, 2);
        u64 m0 = h1_newlines(s->words[o / 8]);
        u64 m1 = h1_newlines(s->words[o / 8 + 1]);
        if (!(m0 | m1)) continue;
        h1_lines(s, o, m0);
        H2_JOIN();
        h1_lines(s, o + 8, m1);
    }
}

/* Read the call's next slice of a head into s->buf, after the s->sh bytes of earlier
 * calls (the call's bytes read so far are a multiple of H1_SLICE). */
static __always_inline void h1_read_slice(struct h1_scan *s, u64 ptr) {
    u32 off = (s->n - s->sh) & (H1_MASK & ~(H1_SLICE - 1));
    u32 want = s->lim - s->n;
    if (!want) return;
    if (want > H1_SLICE) want = H1_SLICE;
    want = PB_MASKED(want - 1, H1_SLICE - 1) + 1;
    if (bpf_probe_read_user(&s->buf[off + (s->sh & H1_MASK)], want, (void *)(ptr + off)) < 0) {
        s->lim = s->n;  /* unreadable: the scan ends at what it has */
        return;
    }
    s->n = s->sh + off + want;
}

/* The Content-Length value at cl_at: spaces, 1 to 9 digits, CR. 0: not that. */
static __always_inline int h1_cl_value(struct h1_scan *s) {
    s->cl = 0;
    s->digits = 0;
    s->bad = 0;
    int i;
#pragma clang loop unroll(disable)
    for (i = 0; i < 16; i++) {
        H2_JOIN();
        u8 ch = s->buf[(s->cl_at + i) & H1_MASK];
        if (ch == '\r') break;
        if (ch == ' ' || ch == '\t') {
            if (s->digits) s->bad = 1;
            continue;
        }
        if (ch < '0' || ch > '9' || s->digits >= 9) {
            s->bad = 1;
            break;
        }
        s->cl = s->cl * 10 + (ch - '0');
        s->digits++;
    }
    return i < 16 && !s->bad && s->digits;
}

/* One "transfer-encoding: chunked" line and no content-length. */
static __always_inline int h1_chunked(struct h1_scan *s) {
    if (s->te != 1 || !s->te_at || s->cl_count) return 0;
    u32 at = s->te_at;
    if (s->buf[at & H1_MASK] == ' ') at++;
    u64 v = *(u64 *)&s->buf[at & H1_MASK];
    return ((v | H1_LOWER) & 0x00ffffffffffffffULL) == H1_W_CHUNKED && (v >> 56) == '\r';
}

/* The head's first line ends in " HTTP/1.x" CRLF: with a method before it (h1_body), a
 * request line, which a direction found mid-stream may start following at. */
#define H1_W_VERSION 0x2e312f5054544820ULL /* " HTTP/1." */
static __always_inline int h1_request_line(struct h1_scan *s) {
    u32 e = s->line1;
    if (e < 16 || e > s->end) return 0;
    u8 v = s->buf[(e - 3) & H1_MASK];
    return *(u64 *)&s->buf[(e - 11) & H1_MASK] == H1_W_VERSION && v >= '0' && v <= '9' &&
           s->buf[(e - 2) & H1_MASK] == '\r';
}

/* At s->buf[s->o, n): a chunk-size line, hex size CRLF, and after the last chunk's (size
 * 0) the empty line ending the message (trailers are not framed here). Sets s->end to
 * where it ends, s->digits to the size's and s->cl to the size; s->end 0: not that, or
 * cut (s->cut). */
static __always_inline void h1_size_line(struct h1_scan *s) {
    int i;
#pragma clang loop unroll(disable)
    for (i = 0; i < 8; i++) {
        H2_JOIN();
        if (s->o >= s->n) {
            s->cut = 1;
            break;
        }
        u8 ch = s->buf[s->o & 63];
        if (ch == '\r') break;
        u8 v;
        if (ch >= '0' && ch <= '9') v = ch - '0';
        else if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f') v = (ch | 0x20) - 'a' + 10;
        else break;  /* an extension, or not a size line */
        if (s->digits >= 7) break;
        s->cl = (s->cl << 4) | v;
        s->digits++;
        s->o++;
    }
    if (s->cut) return;
    u32 o = s->o & 63;
    /* a line cut after its digits or its CR (o + 1 == n: the CR is there) */
    s->cut = s->digits && (o >= s->n || (o + 1 == s->n && s->buf[o] == '\r'));
    if (!s->digits || o + 2 > s->n || s->buf[o] != '\r' || s->buf[o + 1] != '\n') return;
    o += 2;
    if (!s->cl) {
        s->cut = o >= s->n || (o + 1 == s->n && s->buf[o] == '\r');
        if (o + 2 > s->n || s->buf[o] != '\r' || s->buf[o + 1] != '\n') return;
        o += 2;
    }
    s->end = o;
}

/* At s->buf[0, n): with crlf, the CRLF ending a chunk's data (a writer may send it
 * alone), and the next size line with it when that is whole here (one step where there
 * were two); else a size line (h1_size_line). Sets s->end to the bytes taken, s->digits
 * to the size's (0: the CRLF alone) and s->cl to the size; s->end 0: not that, or cut. */
static __always_inline void h1_chunk_line(struct h1_scan *s, u8 crlf) {
    s->end = 0;
    s->cl = 0;
    s->digits = 0;
    s->bad = 0;
    s->cut = 0;
    s->o = 0;
    if (crlf) {
        if (s->n < 2 || s->buf[0] != '\r' || s->buf[1] != '\n') {
            s->cut = s->n == 1 && s->buf[0] == '\r';
            return;
        }
        s->o = 2;
        h1_size_line(s);
        if (!s->end) {  /* the size line is not whole here: the CRLF alone */
            s->end = 2;
            s->cl = 0;
            s->digits = 0;
            s->cut = 0;
        }
        return;
    }
    h1_size_line(s);
}

/* The direction a call went is the connection's request direction. */
static __always_inline u8 h1_is_req(struct conn_info *c, u8 dir) {
    return (c->role == PB_ROLE_CLIENT) == (dir == PB_DIR_SEND);
}

#define H1_UNSURE (-1)
#define H1_CHUNKED (-2)
#define H1_NO_TE (-3) /* no transfer-encoding: the length rules apply */
/* The body length of the message whose head is in s, H1_CHUNKED, or H1_UNSURE when
 * it cannot be framed here for sure (req: a request, else a response). */
static __always_inline s64 h1_body(struct conn_info *c, struct h1_scan *s, u8 req) {
    if (s->end < 16 || s->cl_count > 1) return H1_UNSURE;
    s64 framed = h1_chunked(s) ? H1_CHUNKED : s->te ? H1_UNSURE : H1_NO_TE;
    const char *b = (const char *)s->buf;
    if (req) {
        if (!infer_http1(b) || starts(b, "HTTP/1.", 7)) return -1;
        /* a HEAD's response carries a length and no body; CONNECT's turns to a tunnel */
        if (starts(b, "CONNECT ", 8) || c->h1_reqs - c->h1_resps >= 64) c->h1_resp_ok = 0;
        u64 bit = 1ULL << (c->h1_reqs & 63);
        if (starts(b, "HEAD ", 5)) c->h1_heads |= bit;
        else c->h1_heads &= ~bit;
        c->h1_reqs++;
        if (framed != H1_NO_TE) return framed;
        if (!s->cl_count) return 0;  /* a request without a length has no body */
        return h1_cl_value(s) ? s->cl : -1;
    }
    if (!c->h1_resp_ok || !starts(b, "HTTP/1.", 7) || b[8] != ' ') return -1;
    u8 d0 = b[9] - '0', d1 = b[10] - '0', d2 = b[11] - '0';
    if (d0 > 9 || d1 > 9 || d2 > 9) return -1;
    u32 status = d0 * 100 + d1 * 10 + d2;
    if (status == 101) return -1;  /* another protocol follows */
    if (status < 200) return 0;    /* interim: the request's answer is still to come */
    if (c->h1_resps == c->h1_reqs) return -1;  /* no request seen for it */
    u8 head = (c->h1_heads >> (c->h1_resps & 63)) & 1;
    c->h1_resps++;
    if (head || status == 204 || status == 304) return 0;
    if (framed != H1_NO_TE) return framed;
    if (!s->cl_count) return -1;  /* close-delimited */
    return h1_cl_value(s) ? s->cl : -1;
}

/* A connection seen from its start turned out HTTP/1 at its first call: both
 * directions are at a message's start. */
static __always_inline void h1_start(struct conn_info *c) {
    u8 on = PB_H1_SKIP && c->role != PB_ROLE_UNKNOWN;
    __builtin_memset(c->h1, 0, sizeof(c->h1));
    c->h1[0].state = on ? H1_MSG : H1_OFF;
    c->h1[1].state = on ? H1_MSG : H1_OFF;
    c->h1_resp_ok = on;
    c->h1_heads = 0;
    c->h1_reqs = 0;
    c->h1_resps = 0;
}

/* This direction's framing is not followed any more (prefix capture from here on);
 * a request direction given up hides the methods its responses depend on. */
static __always_inline void h1_give_up(struct conn_info *c, u8 dir) {
    c->h1[dir & 1].state = H1_OFF;
    if (h1_is_req(c, dir)) c->h1_resp_ok = 0;
    if (PB_H1_SKIP) stat_add(PB_STAT_H1_GIVEN_UP, 1);  /* (else nothing was followed) */
}

/* A direction in H1_SEEK (found mid-stream) may start following at a call that starts a
 * message; the walk then checks the message whole. A request direction tries every call
 * that starts with a method. A response direction waits for the request direction to
 * begin, then tries only its next call, which must start with a status line: a later
 * one could answer a request sent before the one framed first, so it gives up instead.
 * A connection found mid-stream is in H1_SEEK from its first call (its entry zeroed).
 * h1_seek_may: before the call's bytes are read, 0 to wait (or after giving up). */
static __always_inline int h1_seek_may(struct conn_info *c, u8 dir) {
    if (!PB_H1_SKIP || c->role == PB_ROLE_UNKNOWN) {
        c->h1[dir & 1].state = H1_OFF;  /* not to be followed: prefix capture, as ever */
        return 0;
    }
    if (h1_is_req(c, dir)) return 1;
    u8 rq = c->h1[dir ^ 1].state;
    if (rq == H1_SEEK) return 0;
    if (rq == H1_OFF || !c->h1_resp_ok || !c->h1_reqs || c->h1_resps ||
        c->seq[dir & 1] != c->h1_mark + 1) {
        h1_give_up(c, dir);
        return 0;
    }
    return 1;
}
/* ... and with the call's first bytes read into s->buf. */
static __always_inline int h1_seek_starts(struct conn_info *c, u8 dir, struct h1_scan *s) {
    u8 req = h1_is_req(c, dir);
    const char *b = (const char *)s->buf;
    if (s->n >= 16 && starts(b, "HTTP/1.", 7) == !req &&
        (!req || infer_http1(b) != PB_PROTO_UNKNOWN))
        return 1;
    if (!req) h1_give_up(c, dir);
    return 0;
}

/* Capture a call's bytes from `start` as a prefix: PB_CHUNK-sized events, at most
 * PB_CALL_LIMIT bytes, the rest counted as truncated. */
static __always_inline void capture_prefix(struct data_call *dc, struct conn_info *c,
                                           u32 start, u64 buf, u32 orig) {
    u32 left = orig - start;
    if (left > PB_CALL_LIMIT) {
        stat_add(PB_STAT_TRUNCATED_CALLS, 1);
        stat_add(PB_STAT_TRUNCATED_BYTES, left - PB_CALL_LIMIT);
    }
    u32 limit = left < PB_CALL_LIMIT ? left : PB_CALL_LIMIT;
    u32 done = 0;
    for (int i = 0; i < PB_CALL_LIMIT / PB_CHUNK; i++) {
        if (done >= limit) break;
        u32 got = emit_chunk(dc, c, start + done, buf + start + done, limit - done);
        if (!got) break;
        done += got;
    }
}

/* A head's scan set up, its first slice read: n bytes of the call at w->pos after the
 * s->sh bytes of earlier calls already in s->buf. The scan itself runs in the walker's
 * next run (H1_SCANNING). */
static __always_inline void h1_head_begin(struct h1_scan *s, struct h1_walk *w, u64 buf, u32 n) {
    s->line1 = 0;
    s->lim = s->sh + (n < H1_MASK - s->sh ? n : H1_MASK - s->sh);
    s->n = s->sh;
    h1_read_slice(s, buf + w->pos);
    s->o = 0;
    s->end = 0;
    s->cl_at = 0;
    s->cl_count = 0;
    s->te = 0;
    w->scanning = H1_SCANNING;
}

/* One message of a call whose direction follows HTTP/1 framing (the rest of a body,
 * then a head), then this program again for the next; see kprobe_events.h.
 * Not a TRACEPOINT_PROBE: the loader puts it in `walkers`. */
int h1_walk_fn(void *ctx) {
    u32 zero = 0;
    struct data_call *dc = calls.lookup(&zero);
    struct h1_walk *w = h1_walks.lookup(&zero);
    struct h1_scan *s = h1_scans.lookup(&zero);
    /* the HTTP/2 walk's pack: a call's small pieces go out as one ring record */
    struct h2_walk *pk = h2_walks.lookup(&zero);
    if (!dc || !w || !s || !pk) return 0;
    prof_add(PB_PROF_H1_RUNS, 1);
    u8 dir = dc->a.dir & 1;
    u32 orig = dc->orig;
    u64 buf = dc->a.buf;
    u8 mode = w->scanning;
    if (mode == H1_SCANNING) {
        /* a scan-only run needs no connection: the table is looked up only if the
         * chain ends here (out of tail calls) */
        prof_add(PB_PROF_H1_SCAN_RUNS, 1);
        h1_scan_step(s);
        if (!s->end && H1_WANTS_SLICE(s)) h1_read_slice(s, buf + w->pos);
        /* a head scanned to its end is decided in this run (a call that is one small
         * message costs one run); a longer scan goes on in a fresh run */
        if (s->end || s->o >= s->n) mode = H1_SCANNED;
        else walkers.call(ctx, PB_TC_H1);
    }
    struct conn_info *c = conns.lookup(&dc->key);
    if (!c) {
        h2_flush(pk);  /* closed meanwhile by another thread: what was packed goes out */
        return 0;
    }
    struct h1_dir *d = &c->h1[dir];
    if (mode == H1_SCANNING) {
        /* out of tail calls: the rest goes as a prefix, below */
    } else if (mode == H1_SCANNED) {
        prof_add(PB_PROF_H1_HEADS, 1);
        w->scanning = 0;
        s64 body = H1_UNSURE;
        u32 rest = orig - (u32)w->pos;
        u32 take = 0;  /* bytes of this call captured as one event: a head, or its start */
        u8 req = h1_is_req(c, dir);
        u8 seek = d->state == H1_SEEK;  /* a message's start, if this head is a whole one */
        if (!seek && !s->end && s->n >= s->lim && s->lim - s->sh == rest && s->n < H1_MASK) {
            /* the call ended inside a head: its bytes so far wait for the next call */
            struct h1_pend_key pk = {.tgid = dc->key.tgid, .fd = dc->key.fd, .dir = dir};
            if (!h1_pends.update(&pk, (struct h1_pend_val *)s->buf)) {
                d->pend = s->n;
                take = rest;
            }
        } else if (s->end > s->sh && (!seek || !req || h1_request_line(s))) {
            if (seek && req) {
                /* responses are paired from this request on */
                c->h1_reqs = 0;
                c->h1_resps = 0;
                c->h1_heads = 0;
                c->h1_resp_ok = 1;
            }
            body = h1_body(c, s, req);
            if (body >= 0 || body == H1_CHUNKED) take = s->end - s->sh;
        }
        /* one event, whole (else as a prefix, cut as ever) */
        if (take > PB_CHUNK || take > PB_CALL_LIMIT) take = 0;
        H2_JOIN();
        if (take) {
            /* a lost event shows in its call's parts: replay stops trusting the call */
            /* from the scan's copy (kernel memory): the head's bytes were read once */
            /* a head goes straight into the ring (packing it would copy it twice); the
             * small pieces of a call (chunk lines, a first byte) are packed */
            h2_flush(pk);
            emit_piece(dc, c, (u32)w->pos, buf + w->pos, take, (u64)&s->buf[s->sh & H1_MASK]);
            w->pos += take;
            if (body != H1_UNSURE) {
                if (seek) {
                    stat_add(PB_STAT_H1_MIDSTREAM, 1);
                    if (req) c->h1_mark = c->seq[dir ^ 1];  /* see h1_seek_may */
                }
                d->pend = 0;
                d->rem = body > 0 ? (u32)body : 0;
                d->state = body > 0 ? H1_BODY : body ? H1_CHUNK : H1_MSG;
                d->crlf = 0;
            }
            u32 left = orig - (u32)w->pos;
            if (d->state == H1_BODY && d->rem >= left) {
                /* the body takes the rest of the call: left out here, no run more */
                d->rem -= left;
                w->skipped += left;
                w->pos = orig;
                if (!d->rem) d->state = H1_MSG;
            }
            /* this message's body (or the next message) in this run, below */
            mode = 0;
        }
    }
    H2_JOIN();
    if (mode == 0 && w->pos < orig) {
        if (d->state == H1_BODY || d->state == H1_CDATA) {
            u32 k = orig - (u32)w->pos;
            if (d->rem < k) k = d->rem;
            if (!w->pos) {
                pack_piece(dc, c, pk, 0, buf, 1, 0);  /* a call's first byte is kept */
                k--;
                w->pos = 1;
                d->rem--;
            }
            d->rem -= k;
            w->pos += k;
            w->skipped += k;
            if (!d->rem) {
                d->crlf = 1;
                d->state = d->state == H1_BODY ? H1_MSG : H1_CHUNK;
            }
        }
        if (w->pos < orig && d->state == H1_CHUNK) {
            u32 n = orig - (u32)w->pos;
            if (n > 31) n = 31;
            u32 cp = d->clen & 15;  /* the line's start, from an earlier call */
            __builtin_memcpy(s->buf, d->cline, 15);
            if (bpf_probe_read_user(&s->buf[cp], PB_MASKED(n, 31), (void *)(buf + w->pos)) < 0)
                n = 0;
            s->n = cp + n;
            h1_chunk_line(s, d->crlf);
            if (!s->end && s->cut && s->n < 16 && n == orig - (u32)w->pos) {
                /* the call ended inside the line: its bytes so far wait for the next */
                pack_piece(dc, c, pk, (u32)w->pos, buf + w->pos, n, (u64)&s->buf[cp]);
                __builtin_memcpy(d->cline, s->buf, 15);
                d->clen = s->n;
                w->pos = orig;
            } else if (s->end > cp) {
                /* from the line's copy (kernel memory), not read from the call again */
                pack_piece(dc, c, pk, (u32)w->pos, buf + w->pos, s->end - cp, (u64)&s->buf[cp]);
                w->pos += s->end - cp;
                d->clen = 0;
                d->rem = s->cl;
                d->state = !s->digits ? H1_CHUNK : s->cl ? H1_CDATA : H1_MSG;
                d->crlf = 0;
                u32 left = orig - (u32)w->pos;
                if (d->state == H1_CDATA && left && d->rem >= left) {
                    /* the chunk's data takes the rest of the call: left out here, no run
                     * more (a chunked writer's usual call: size line, then data) */
                    d->rem -= left;
                    w->skipped += left;
                    w->pos = orig;
                    if (!d->rem) {
                        d->crlf = 1;
                        d->state = H1_CHUNK;
                    }
                }
                if (w->pos < orig) walkers.call(ctx, PB_TC_H1);
            }
        } else if (w->pos < orig && (d->state == H1_MSG ||
                                     (d->state == H1_SEEK && h1_seek_may(c, dir)))) {
            u32 n = orig - (u32)w->pos;
            s->sh = 0;
            if (d->pend) {
                struct h1_pend_key pk = {.tgid = dc->key.tgid, .fd = dc->key.fd, .dir = dir};
                struct h1_pend_val *pv = h1_pends.lookup(&pk);
                /* gone from the LRU: this head cannot be framed (lim 0 gives up below) */
                if (pv && !bpf_probe_read_kernel(s->buf, PB_MASKED(d->pend, H1_MASK), pv->buf))
                    s->sh = d->pend & H1_MASK;
                else
                    n = 0;
            }
            h1_head_begin(s, w, buf, n);
            /* the scan runs at the start of a run: one path in */
            if (d->state != H1_SEEK || h1_seek_starts(c, dir, s)) walkers.call(ctx, PB_TC_H1);
        }
    }
    if (w->pos < orig) {
        /* not framed for sure here, or out of tail calls: the rest as a prefix (a direction
         * still seeking tries again at its next call; one given up here is already off) */
        if (d->state != H1_SEEK && d->state != H1_OFF) h1_give_up(c, dir);
        h2_flush(pk);
        capture_prefix(dc, c, (u32)w->pos, buf, orig);
    }
    h2_flush(pk);  /* the call's end (a run that went on in another does not get here) */
    if (w->skipped) stat_add(PB_STAT_H1_SKIPPED_BYTES, w->skipped);
    return 0;
}

/* A call wholly inside a Content-Length body or a chunk's data (a large body's later
 * calls, most calls of a big transfer): 1 if so, and the direction is moved past it.
 * Only its first byte is captured (data_fn), with no walker run. */
static __always_inline int h1_inside_body(struct conn_info *c, u8 dir, u32 orig) {
    struct h1_dir *d = &c->h1[dir & 1];
    if ((d->state != H1_BODY && d->state != H1_CDATA) || d->rem < orig) return 0;
    d->rem -= orig;
    if (!d->rem) {
        d->crlf = 1;
        d->state = d->state == H1_BODY ? H1_MSG : H1_CHUNK;
    }
    stat_add(PB_STAT_H1_SKIPPED_BYTES, orig - 1);
    return 1;
}

/* A call on a direction that follows HTTP/1 framing: 1 to go on in h1_walk_fn. */
static __always_inline int h1_begin(struct conn_info *c, struct data_args *a, u32 orig) {
    u32 zero = 0;
    struct h1_walk *w = h1_walks.lookup(&zero);
    if (!w) return 0;
    if (a->iovcnt) {
        /* vectored: left to the prefix capture (the walk reads one buffer) */
        h1_give_up(c, a->dir);
        return 0;
    }
    struct h2_walk *pk = h2_walks.lookup(&zero);
    if (!pk) return 0;
    w->pos = 0;
    w->skipped = 0;
    w->scanning = 0;
    pk->pack_len = 0;
    pk->pack_n = 0;
    struct h1_dir *d = &c->h1[a->dir & 1];
    if (d->state == H1_MSG && !d->pend) {
        /* a call that starts a message: its head's scan is set up here, so the walker
         * begins with the scan (one run less per head) */
        struct h1_scan *s = h1_scans.lookup(&zero);
        if (!s) return 0;
        s->sh = 0;
        h1_head_begin(s, w, a->buf, orig);
    }
    return 1;
}

/* A data call, from the stash: find or infer its connection, number it, and
 * capture it (prefix capture here, or hand it to the frame walk).
 * Not a TRACEPOINT_PROBE: the loader puts it in `walkers`. */
int data_fn(void *ctx) {
    u32 zero = 0;
    struct data_call *dc = calls.lookup(&zero);
    if (!dc) return 0;
    prof_add(PB_PROF_DATA_CALLS, 1);
    u64 id = bpf_get_current_pid_tgid();
    struct data_args a = dc->a;
    u32 orig = dc->orig;
    struct conn_key key = dc->key;
    struct conn_info *c = conns.lookup(&key);
    if (c && c->proto == PB_IGNORED) {
        if (c->fd_gen == fd_gen(key.tgid)) {
            prof_add(PB_PROF_IGNORED_CALLS, 1);
            return 0;
        }
        c = NULL;  /* ignored before an exec: the fd is walked anew (entry replaced) */
    }
    /* a connection not in the table is built in a per-CPU value: a conn_info is too
     * large for the stack beside the rest */
    struct conn_info *n = conn_scratch.lookup(&zero);
    if (!n) return 0;
    int sock = 0;
    if (!c) {
        __builtin_memset(n, 0, sizeof(*n));
        sock = unseen_socket(&key, n);
        if (PB_FD_SOCK && !sock) return 0;
    }

    /* where the first bytes are, for inference */
    u64 first = a.buf;
    u32 first_len = orig;
    if (a.iovcnt) {
        struct iovec iov = {};
        bpf_probe_read_user(&iov, sizeof(iov), (void *)a.buf);
        first = (u64)iov.iov_base;
        first_len = iov.iov_len < orig ? iov.iov_len : orig;
    }
    if (!c || c->proto == PB_PROTO_UNKNOWN) {
        u8 head[16] = {};
        bpf_probe_read_user(head, sizeof(head), (void *)first);
        u8 p = infer(head, first_len, c ? c->from_start : 0);
        if (!c) {
            /* Connections opened before attach are inferred only on sockets
             * (PB_FD_SOCK), or else only in processes named as targets: without
             * a socket check, any file read could pass for an HTTP/2 frame. */
            if ((!PB_FILTER_TGID && !sock) || !p) return 0;  /* !p: maybe mid-message, retry next call */
            n->proto = p;
            /* who sends a request or a preface is the client */
            int req = p == PB_PROTO_HTTP2 ? starts((const char *)head, "PRI ", 4)
                                          : !starts((const char *)head, "HTTP/1.", 7);
            /* else the ports told; a TLS record says nothing of who sent it */
            if (n->role == PB_ROLE_UNKNOWN && !(p == PB_PROTO_HTTP2 && !req) && p != PB_PROTO_TLS)
                n->role = (req == (a.dir == PB_DIR_SEND)) ? PB_ROLE_CLIENT : PB_ROLE_SERVER;
            conns.update(&key, n);
            c = conns.lookup(&key);
            if (!c) return 0;
            u64 ts = emit_conn(PB_EV_CONN_INFER, &key, c, id);
            if (c->lport) {
                cstat_add(PB_CSTAT_INFER_SOCK);
            } else {
                cstat_add(PB_CSTAT_INFER_NO_ADDR);
                want_address(&key, ts);
            }
        } else {
            /* fewer bytes than a TLS record header cannot rule anything out (nginx peeks
             * at 1 byte of a new TLS connection): unnumbered, the next call decides */
            if (!p && first_len < PB_INFER_MIN) return 0;
            if (!p) {
                c->proto = PB_IGNORED;
                c->fd_gen = fd_gen(key.tgid);
                stat_add(PB_STAT_NON_HTTP, 1);
                return 0;
            }
            c->proto = p;
            if (p == PB_PROTO_HTTP2) h2_start(c);
            if (p == PB_PROTO_HTTP1) h1_start(c);
        }
    }
    /* numbered whether or not its events reach the ring buffer (kprobe_events.h);
     * not atomic (bcc's clang target has no fetch-add): two threads sending on one
     * socket at once interleave its bytes anyway */
    u32 seq = c->seq[a.dir & 1] + 1;
    c->seq[a.dir & 1] = seq;
    dc->seq = seq;
    dc->part = 0;
    if (PB_FLOOR == PB_FLOOR_RECORD) {
        emit_chunk(dc, c, 0, first, first_len < 255 ? first_len : 255);
        return 0;
    }
    if (c->proto == PB_PROTO_HTTP2 && !c->h2[a.dir & 1].sync) h2_resync(c, a.dir & 1, first, first_len);
    if (c->proto == PB_PROTO_HTTP2 && c->h2[a.dir & 1].sync) {
        prof_add(PB_PROF_H2_CALLS, 1);
        if (h2_begin(dc, c)) walkers.call(ctx, PB_TC_H2);
        /* the walker is not there: the call goes unseen, its seq tells replay */
        stat_add(PB_STAT_TAIL_FAILED, 1);
        return 0;
    }
    u32 cap = orig;  /* the prefix captured */
    if (c->proto == PB_PROTO_HTTP1 && !a.iovcnt && h1_inside_body(c, a.dir, orig)) {
        cap = 1;  /* a call's first byte is kept (kprobe_events.h) */
    } else if (c->proto == PB_PROTO_HTTP1 && c->h1[a.dir & 1].state != H1_OFF &&
               h1_begin(c, &a, orig)) {
        walkers.call(ctx, PB_TC_H1);
        stat_add(PB_STAT_TAIL_FAILED, 1);  /* the call goes unseen, its seq tells replay */
        return 0;
    }
    /* one event per chunk; the captured bytes are always a prefix of the call's */
    if (!a.iovcnt) {
        capture_prefix(dc, c, 0, a.buf, cap);
        return 0;
    }
    if (orig > PB_CALL_LIMIT) {
        stat_add(PB_STAT_TRUNCATED_CALLS, 1);
        stat_add(PB_STAT_TRUNCATED_BYTES, orig - PB_CALL_LIMIT);
    }
    u32 limit = orig < PB_CALL_LIMIT ? orig : PB_CALL_LIMIT;
    /* vectored: walk the iovecs in order, a chunk at a time, so what was
     * captured stays a prefix of the call's bytes. The walk's state lives in a
     * map value: the verifier then sees unknown scalars each iteration and can
     * prune, where register state would make every path distinct. */
    struct iov_walk *w = iov_walks.lookup(&zero);
    if (!w) return 0;
    w->done = 0;
    w->iov_i = 0;
    w->iov_off = 0;
    bpf_probe_read_user(&w->cur, sizeof(w->cur), (void *)a.buf);
    for (int i = 0; i < PB_CALL_LIMIT / PB_CHUNK + PB_MAX_IOV; i++) {
        if (w->done >= limit) break;
        if (w->iov_off >= w->cur.iov_len) {
            w->iov_i++;
            if (w->iov_i >= a.iovcnt || w->iov_i >= PB_MAX_IOV) break;
            w->iov_off = 0;
            bpf_probe_read_user(&w->cur, sizeof(w->cur),
                                (void *)(a.buf + w->iov_i * sizeof(struct iovec)));
            continue;
        }
        u32 want = w->cur.iov_len - w->iov_off;
        if (want > limit - w->done) want = limit - w->done;
        u32 got = emit_chunk(dc, c, w->done, (u64)w->cur.iov_base + w->iov_off, want);
        if (!got) break;
        w->done += got;
        w->iov_off += got;
    }
    return 0;
}

/* A data call, its arguments known: stash it and go on in data_fn. */
static __always_inline int stash_call(void *ctx, struct data_args *a, u64 id, long ret) {
    u32 zero = 0;
    u32 *on = armed.lookup(&zero);
    if (!on || !*on) return 0;  /* before the attach: unnumbered, as if unseen */
    struct data_call *dc = calls.lookup(&zero);
    if (!dc) return 0;
    dc->a = *a;
    dc->key.tgid = id >> 32;
    dc->key.fd = a->fd;
    dc->tid = (u32)id;
    /* a send is timed when it starts (its packets leave during the call), a
     * receive when it returns (a blocking read starts long before data arrives) */
    dc->ts = a->dir == PB_DIR_SEND ? a->enter_ns : bpf_ktime_get_ns();
    dc->orig = (u32)ret;
    dc->seq = 0;
    dc->part = 0;
    walkers.call(ctx, PB_TC_DATA);
    stat_add(PB_STAT_TAIL_FAILED, 1);
    return 0;
}

#if PB_EXIT_ARGS
/* A receive's fd, buffer (or iovecs) and count, at its exit: from the user registers
 * saved at the syscall's entry (a syscall returns its value in ax and leaves the
 * argument registers as they were). 0: unreadable. */
static __always_inline int exit_args(struct data_args *a) {
    /* the registers as kernel BTF types them: plain loads, no helper call per read */
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(
        (struct task_struct *)bpf_get_current_task_btf());
    if (!regs) return 0;
    u64 fd, ptr, n;
#ifdef bpf_target_x86
    fd = regs->di;
    ptr = regs->si;
    n = regs->dx;
#else
/* elsewhere the return value may overwrite the first argument's register (arm64: x0) */
#error "PB_EXIT_ARGS reads x86-64's saved argument registers: set it on x86-64 only"
#endif
    a->fd = (s32)fd;
    a->buf = ptr;
    if (a->syscall == PB_SC_READV) {
        a->iovcnt = (u32)n;
    } else if (a->syscall == PB_SC_RECVMSG) {
        /* the kernel writes back a msghdr's lengths and flags, never msg_iov/msg_iovlen */
        struct user_msghdr m = {};
        if (bpf_probe_read_user(&m, sizeof(m), (void *)ptr) < 0) return 0;
        a->buf = (u64)m.msg_iov;
        a->iovcnt = (u32)m.msg_iovlen;
    }
    return 1;
}
#endif

/* The sys_exit_* side: stash the call and go on in data_fn. The work is there,
 * once, rather than inlined into all eight programs (each copy costs the
 * verifier seconds at attach). sc and dir name the syscall: a receive's arguments
 * are read here (PB_EXIT_ARGS); else its enter stashed them. */
static __always_inline int on_data_exit(void *ctx, long ret, u8 sc, u8 dir) {
    u64 id = bpf_get_current_pid_tgid();
    if (!data_hit(id >> 32)) return 0;  /* others: no lookup when the list is inline */
    if (PB_FLOOR == PB_FLOOR_FILTER) return 0;
    if (ret <= 0) prof_add(PB_PROF_EMPTY_CALLS, 1);
#if PB_EXIT_ARGS
    if (dir == PB_DIR_RECV) {
        if (ret <= 0) return 0;
        struct data_args a = {.enter_ns = 1, .syscall = sc, .dir = dir};
        if (!exit_args(&a)) return 0;
        return stash_call(ctx, &a, id, ret);
    }
#endif
#if PB_TASK_STORAGE
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    struct data_args *ap = data_args_ts.task_storage_get(t, 0, 0);
    if (!ap || !ap->enter_ns) return 0;
    if (ret <= 0) {
        ap->enter_ns = 0;
        return 0;
    }
    struct data_args a = *ap;
    ap->enter_ns = 0;
#else
    u32 tid = (u32)id;
    struct data_args *ap = data_args_map.lookup(&tid);
    if (!ap) return 0;
    struct data_args a = *ap;
    data_args_map.delete(&tid);
    if (ret <= 0) return 0;
#endif
    return stash_call(ctx, &a, id, ret);
}

static __always_inline int on_msg_enter(u8 sc, u8 dir, int fd, u64 msg) {
    struct user_msghdr m = {};
    if (bpf_probe_read_user(&m, sizeof(m), (void *)msg) < 0) return 0;
    return on_data_enter(sc, dir, fd, (u64)m.msg_iov, (u32)m.msg_iovlen);
}

/* ---- the syscall hooks: thin entry points into the on_* logic above, attached
 * either to the syscall tracepoints (default) or, with PB_KPROBES, as kprobes on
 * the syscall functions (entry and return), the way Pixie attaches. */
#if !PB_KPROBES
TRACEPOINT_PROBE(syscalls, sys_enter_connect) { return on_connect_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_exit_connect) { return on_connect_exit(); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return on_accept_enter((u64)args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return on_accept_enter((u64)args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return on_accept_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return on_accept_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_close) { return on_close_enter(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_exit_dup2) { return on_fd_replaced(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_dup3) { return on_fd_replaced(args->ret); }
/* receives: with PB_EXIT_ARGS, the exit alone */
#if !PB_EXIT_ARGS
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return on_data_enter(PB_SC_READ, PB_DIR_RECV, args->fd, (u64)args->buf, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return on_data_enter(PB_SC_RECVFROM, PB_DIR_RECV, args->fd, (u64)args->ubuf, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return on_data_enter(PB_SC_READV, PB_DIR_RECV, args->fd, (u64)args->vec, args->vlen); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return on_msg_enter(PB_SC_RECVMSG, PB_DIR_RECV, args->fd, (u64)args->msg); }
#endif
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return on_data_exit(args, args->ret, PB_SC_READ, PB_DIR_RECV); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return on_data_exit(args, args->ret, PB_SC_RECVFROM, PB_DIR_RECV); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return on_data_exit(args, args->ret, PB_SC_READV, PB_DIR_RECV); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return on_data_exit(args, args->ret, PB_SC_RECVMSG, PB_DIR_RECV); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return on_data_enter(PB_SC_WRITE, PB_DIR_SEND, args->fd, (u64)args->buf, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return on_data_exit(args, args->ret, PB_SC_WRITE, PB_DIR_SEND); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return on_data_enter(PB_SC_SENDTO, PB_DIR_SEND, args->fd, (u64)args->buff, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return on_data_exit(args, args->ret, PB_SC_SENDTO, PB_DIR_SEND); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return on_data_enter(PB_SC_WRITEV, PB_DIR_SEND, args->fd, (u64)args->vec, args->vlen); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return on_data_exit(args, args->ret, PB_SC_WRITEV, PB_DIR_SEND); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return on_msg_enter(PB_SC_SENDMSG, PB_DIR_SEND, args->fd, (u64)args->msg); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return on_data_exit(args, args->ret, PB_SC_SENDMSG, PB_DIR_SEND); }
#else
/* Not auto-attached (no kprobe__ prefix): the recorder attaches each
 * pb_sysenter__NAME / pb_sysexit__NAME to the kernel's NAME syscall function
 * (__x64_sys_NAME), the return probes with room for many blocked threads. The
 * syscall functions take one argument, the user's registers at the syscall,
 * which hold its arguments: PB_SYSREGS copies them to `r` on the stack. */
#define PB_SYSREGS struct pt_regs r = {}; \
    bpf_probe_read_kernel(&r, sizeof(r), (void *)PT_REGS_PARM1(ctx))
#define PB_A1 ((int)PT_REGS_PARM1(&r))
#define PB_A2 ((u64)PT_REGS_PARM2(&r))
#define PB_A3 ((u32)PT_REGS_PARM3(&r))
#define PB_RET ((long)PT_REGS_RC(ctx))
int pb_sysenter__connect(struct pt_regs *ctx) { PB_SYSREGS; return on_connect_enter(PB_A1); }
int pb_sysexit__connect(struct pt_regs *ctx) { return on_connect_exit(); }
int pb_sysenter__accept(struct pt_regs *ctx) { PB_SYSREGS; return on_accept_enter(PB_A2); }
int pb_sysenter__accept4(struct pt_regs *ctx) { PB_SYSREGS; return on_accept_enter(PB_A2); }
int pb_sysexit__accept(struct pt_regs *ctx) { return on_accept_exit(PB_RET); }
int pb_sysexit__accept4(struct pt_regs *ctx) { return on_accept_exit(PB_RET); }
int pb_sysenter__close(struct pt_regs *ctx) { PB_SYSREGS; return on_close_enter(PB_A1); }
int pb_sysexit__dup2(struct pt_regs *ctx) { return on_fd_replaced(PB_RET); }
int pb_sysexit__dup3(struct pt_regs *ctx) { return on_fd_replaced(PB_RET); }
#if !PB_EXIT_ARGS
int pb_sysenter__read(struct pt_regs *ctx) { PB_SYSREGS; return on_data_enter(PB_SC_READ, PB_DIR_RECV, PB_A1, PB_A2, 0); }
int pb_sysenter__recvfrom(struct pt_regs *ctx) { PB_SYSREGS; return on_data_enter(PB_SC_RECVFROM, PB_DIR_RECV, PB_A1, PB_A2, 0); }
int pb_sysenter__readv(struct pt_regs *ctx) { PB_SYSREGS; return on_data_enter(PB_SC_READV, PB_DIR_RECV, PB_A1, PB_A2, PB_A3); }
int pb_sysenter__recvmsg(struct pt_regs *ctx) { PB_SYSREGS; return on_msg_enter(PB_SC_RECVMSG, PB_DIR_RECV, PB_A1, PB_A2); }
#endif
int pb_sysexit__read(struct pt_regs *ctx) { return on_data_exit(ctx, PB_RET, PB_SC_READ, PB_DIR_RECV); }
int pb_sysexit__recvfrom(struct pt_regs *ctx) { return on_data_exit(ctx, PB_RET, PB_SC_RECVFROM, PB_DIR_RECV); }
int pb_sysexit__readv(struct pt_regs *ctx) { return on_data_exit(ctx, PB_RET, PB_SC_READV, PB_DIR_RECV); }
int pb_sysexit__recvmsg(struct pt_regs *ctx) { return on_data_exit(ctx, PB_RET, PB_SC_RECVMSG, PB_DIR_RECV); }
int pb_sysenter__write(struct pt_regs *ctx) { PB_SYSREGS; return on_data_enter(PB_SC_WRITE, PB_DIR_SEND, PB_A1, PB_A2, 0); }
int pb_sysexit__write(struct pt_regs *ctx) { return on_data_exit(ctx, PB_RET, PB_SC_WRITE, PB_DIR_SEND); }
int pb_sysenter__sendto(struct pt_regs *ctx) { PB_SYSREGS; return on_data_enter(PB_SC_SENDTO, PB_DIR_SEND, PB_A1, PB_A2, 0); }
int pb_sysexit__sendto(struct pt_regs *ctx) { return on_data_exit(ctx, PB_RET, PB_SC_SENDTO, PB_DIR_SEND); }
int pb_sysenter__writev(struct pt_regs *ctx) { PB_SYSREGS; return on_data_enter(PB_SC_WRITEV, PB_DIR_SEND, PB_A1, PB_A2, PB_A3); }
int pb_sysexit__writev(struct pt_regs *ctx) { return on_data_exit(ctx, PB_RET, PB_SC_WRITEV, PB_DIR_SEND); }
int pb_sysenter__sendmsg(struct pt_regs *ctx) { PB_SYSREGS; return on_msg_enter(PB_SC_SENDMSG, PB_DIR_SEND, PB_A1, PB_A2); }
int pb_sysexit__sendmsg(struct pt_regs *ctx) { return on_data_exit(ctx, PB_RET, PB_SC_SENDMSG, PB_DIR_SEND); }
#endif
