/* Uprobe collector for grpc-go, compiled by bcc once per distinct binary layout.
 * Every offset, register and type address arrives as a -D cflag resolved from the
 * binary's ELF symbols and DWARF (harness/collectors/uprobe/resolve.py); nothing
 * here knows a grpc-go version. Registers are DWARF numbers (0 rax, 3 rbx, ...).
 *
 * Kernel side does only: read the arguments, walk to the connection's addresses,
 * copy header fields and the first bytes of DATA payloads. Stitching is replay's. */
#include <uapi/linux/ptrace.h>
#include "uprobe_events.h"

#ifndef PB_RINGBUF_PAGES
#define PB_RINGBUF_PAGES 1024
#endif
#ifndef PB_TYPE_SYSCONN
#define PB_TYPE_SYSCONN 0 /* no *syscallConn hop (see unwrap) */
#endif
#ifndef PB_TYPE_TLSCONN
#define PB_TYPE_TLSCONN 0 /* no *tls.Conn hop */
#endif
#define PB_MAX_PIECES 16 /* [][]byte pieces summed per DATA write */
#define PB_COPY_PIECES 4 /* pieces the payload prefix is copied from */

BPF_RINGBUF_OUTPUT(events, PB_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(stats, u64, PB_USTAT_MAX);

/* batched wake-ups (pb_common.h) */
BPF_PERCPU_ARRAY(rb_pending, u64, 1);
static __always_inline u64 rb_flags(u32 size) {
    u32 zero = 0;
    return pb_rb_flags(rb_pending.lookup(&zero), size, PB_WAKE_BYTES);
}
/* Header events are built in one scratch entry per CPU (bpf_loop callbacks reach it by
 * CPU id): a plain array, because a per-CPU map's values are capped at 32 KiB. Slack after
 * the blob lets a power-of-two mask bound offsets for the verifier. */
#ifndef PB_NCPU
#define PB_NCPU 64
#endif
struct hdr_scratch { struct pb_header_event e; u8 slack[PB_HDR_BLOB]; };
BPF_ARRAY(hscratch, struct hdr_scratch, PB_NCPU);
BPF_HASH(targets, u32, u8, 1024); /* tgids to trace (PB_FILTER_TGID) */

/* data events are built on the stack; the slack bounds variable offsets into data[] */
struct data_scratch { struct pb_data_event e; u8 slack[2 * PB_DATA_CAP]; };
struct go_slice { u64 ptr; u64 len; u64 cap; };
struct go_string { u64 ptr; u64 len; };
struct conn_addr {
    u64 conn;
    s32 fd;
    u16 lport;
    u16 rport;
    u8 laddr[16];
    u8 raddr[16];
    u8 ip_len;
    u8 status;
};

static __always_inline void stat_add(u32 idx, u64 n) {
    pb_count(stats.lookup(&idx), n);
}

#ifndef PB_PROFILE
#define PB_PROFILE 0 /* 1: count user-memory reads (PB_USTAT_USER_READS, recorder --profile) */
#endif
/* Every read of the traced process's memory goes through here: a read costs about as much
 * as copying a few hundred bytes (page-fault-safe copy, per call), so their number, not
 * their size, sets a hit's cost; --profile counts them. */
static __always_inline long uread(void *dst, u32 size, const void *src) {
#if PB_PROFILE
    stat_add(PB_USTAT_USER_READS, 1);
#endif
    return bpf_probe_read_user(dst, size, src);
}

static __always_inline u32 bound(u32 v, u32 mask) {
    /* the asm keeps clang from dropping a mask it can prove redundant */
    asm volatile("%0 &= %1" : "+r"(v) : "r"(mask));
    return v;
}

static __always_inline u64 rd64(u64 addr) {
    u64 v = 0;
    if (!addr || uread(&v, sizeof(v), (void *)addr) < 0) return 0;
    return v;
}

static __always_inline u64 go_reg(struct pt_regs *ctx, int dwarf_reg) {
    switch (dwarf_reg) {
    case 0: return ctx->ax;
    case 1: return ctx->dx;
    case 2: return ctx->cx;
    case 3: return ctx->bx;
    case 4: return ctx->si;
    case 5: return ctx->di;
    case 8: return ctx->r8;
    case 9: return ctx->r9;
    case 10: return ctx->r10;
    case 11: return ctx->r11;
    }
    return 0;
}

/* the target filter (pb_common.h), with the map when there is no inline list */
static __always_inline int traced(u32 tgid) {
    int known = pb_tgid_filter(tgid);
    return known >= 0 ? known : targets.lookup(&tgid) != NULL;
}

struct go_iface { u64 tab; u64 data; };

/* The dynamic type of an interface whose itab is tab, for type_is; without type checks
 * (resolve.py turns them off for PIE binaries) nothing is read. */
static __always_inline u64 dyn_type(u64 tab) {
#if PB_CHECK_TYPES
    return tab ? rd64(tab + PB_ITAB_TYPE) : 0;
#else
    return 0;
#endif
}

static __always_inline int type_is(u64 t, u64 want) {
#if PB_CHECK_TYPES
    return t == want;
#else
    return 1;
#endif
}

/* Is the interface at iface of the dynamic type whose descriptor is at typ? */
static __always_inline int iface_is(u64 iface, u64 typ) {
#if PB_CHECK_TYPES
    return type_is(dyn_type(rd64(iface)), typ);
#else
    return 1;
#endif
}

/* One hop of a conn path: off < 0 means no hop; a typed hop reads an interface's data
 * word (itab at off - 8) after checking its dynamic type. */
static __always_inline u64 hop(u64 p, s64 off, u64 typ) {
    if (!p || off < 0) return p;
    if (typ && !iface_is(p + off - 8, typ)) return 0;
    return rd64(p + off);
}

/* A net.Addr interface (its itab's type known as t) holding a *net.TCPAddr: IP and port.
 * Every read costs about as much as the copy of a few hundred bytes, so adjacent fields
 * come in one read. */
static __always_inline u8 read_tcpaddr(struct go_iface *i, u64 t, u8 *ip, u16 *port,
                                       u8 *ip_len) {
    if (!type_is(t, PB_TYPE_TCPADDR)) return PB_ADDR_NOT_TCPADDR;
    if (!i->data) return PB_ADDR_UNREADABLE;
    struct go_slice s = {};
    u64 p = 0;
#if PB_TCPADDR_PORT == PB_TCPADDR_IP + 24
    struct { struct go_slice ip; u64 port; } ta = {};
    if (uread(&ta, sizeof(ta), (void *)(i->data + PB_TCPADDR_IP)) < 0)
        return PB_ADDR_UNREADABLE;
    s = ta.ip;
    p = ta.port;
#else
    if (uread(&s, sizeof(s), (void *)(i->data + PB_TCPADDR_IP)) < 0)
        return PB_ADDR_UNREADABLE;
    p = rd64(i->data + PB_TCPADDR_PORT);
#endif
    u32 n = s.len == 4 ? 4 : 16;
    if (s.len != 4 && s.len != 16) return PB_ADDR_UNREADABLE;
    if (uread(ip, n, (void *)s.ptr) < 0) return PB_ADDR_UNREADABLE;
    *port = (u16)p;
    *ip_len = n;
    return PB_ADDR_OK;
}

/* Over TLS the transport's net.Conn is grpc-go's *syscallConn, whose sysConn field holds
 * the raw *net.TCPConn, or a bare *tls.Conn, whose conn field holds it: one hop, by the
 * wrapper's dynamic type t, to the interface that names the socket (t follows). */
static __always_inline void unwrap(struct go_iface *i, u64 *t) {
    u64 inner = 0;
#if PB_TYPE_SYSCONN
    if (type_is(*t, PB_TYPE_SYSCONN)) inner = i->data + PB_SYSCONN_INNER;
#endif
#if PB_TYPE_TLSCONN
    if (!inner && type_is(*t, PB_TYPE_TLSCONN)) inner = i->data + PB_TLSCONN_INNER;
#endif
    struct go_iface w = {};
    if (!inner || uread(&w, sizeof(w), (void *)inner) < 0 || !w.data) return;
    *i = w;
    *t = dyn_type(w.tab);
}

/* From the probe's root object to the connection: its netFD, fd and both addresses. */
static __always_inline void conn_of(struct conn_addr *c, u64 root, s64 s0, u64 t0, s64 s1,
                                    u64 t1, s64 conn_off) {
    c->fd = -1;
    c->status = PB_ADDR_UNREADABLE;
    u64 obj = hop(hop(root, s0, t0), s1, t1);
    if (!obj) return;
    struct go_iface ci = {};
    if (uread(&ci, sizeof(ci), (void *)(obj + conn_off)) < 0 || !ci.data) return;
    c->conn = ci.data; /* a stable name even when the type is not TCP */
#if PB_HAVE_ADDR
    u64 t = dyn_type(ci.tab);
    unwrap(&ci, &t);
    if (!type_is(t, PB_TYPE_TCPCONN)) {
        c->status = PB_ADDR_NOT_TCP;
        return;
    }
    u64 fd = rd64(ci.data + PB_TCPCONN_FD);
    if (!fd) return;
    c->conn = fd;
    s32 sysfd = -1;
    uread(&sysfd, sizeof(sysfd), (void *)(fd + PB_NETFD_SYSFD));
    c->fd = sysfd;
    struct go_iface la = {}, ra = {};
#if PB_NETFD_RADDR == PB_NETFD_LADDR + 16
    struct go_iface both[2] = {};
    if (uread(both, sizeof(both), (void *)(fd + PB_NETFD_LADDR)) < 0) return;
    la = both[0];
    ra = both[1];
#else
    if (uread(&la, sizeof(la), (void *)(fd + PB_NETFD_LADDR)) < 0 ||
        uread(&ra, sizeof(ra), (void *)(fd + PB_NETFD_RADDR)) < 0)
        return;
#endif
    /* both addresses are usually of one type: its itab's type is read once */
    u64 lt = dyn_type(la.tab);
    u64 rt = ra.tab == la.tab ? lt : dyn_type(ra.tab);
    u8 ll = 0, rl = 0;
    u8 st = read_tcpaddr(&la, lt, c->laddr, &c->lport, &ll);
    if (st == PB_ADDR_OK) st = read_tcpaddr(&ra, rt, c->raddr, &c->rport, &rl);
    c->ip_len = ll;
    c->status = st;
#endif
}

#define CONN_PATH(P) PB_##P##_S0, PB_##P##_T0, PB_##P##_S1, PB_##P##_T1, PB_##P##_CONN

/* ---- the connection, remembered per goroutine. Every probe runs on a goroutine that serves
 * one connection for its whole life (the transport's reader, or its loopyWriter), so the
 * walk above (about 10 reads) is done once per (process, goroutine id, probe) and then
 * costs one read: the goroutine id from the g that Go's register ABI keeps in R14. Ids are
 * never reused within a process, and a hit whose root object differs walks again; but a
 * new process under a reused tgid, or the same tgid after an exec, counts goroutines from
 * 1 again and, without heap randomisation (Go < 1.26), allocates its roots at the same
 * addresses: so the entry also holds the process image (pb_task_image) and is trusted only
 * by the same image. PB_G_GOID is runtime.g's goid offset (0: not known, no cache); no
 * cache either without the image (PB_TASK_IMAGE=0: no kernel BTF). */
#ifndef PB_G_GOID
#define PB_G_GOID 0
#endif
#define PB_CONN_CACHE (PB_G_GOID && PB_TASK_IMAGE)
#if PB_CONN_CACHE
struct conn_key { u64 goid; u32 tgid; u32 probe; };
struct conn_val { u64 root; struct pb_image img; struct conn_addr c; };
BPF_TABLE("lru_hash", struct conn_key, struct conn_val, conn_cache, 8192);
#endif

static __always_inline void conn_at(struct pt_regs *ctx, struct conn_addr *c, u32 probe,
                                    u64 root, s64 s0, u64 t0, s64 s1, u64 t1, s64 conn_off) {
#if PB_CONN_CACHE
    struct conn_key k = {};
    k.goid = rd64(ctx->r14 + PB_G_GOID);
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.probe = probe;
    struct pb_image img = {};
    struct conn_val *v = k.goid && root ? conn_cache.lookup(&k) : NULL;
    if (k.goid && root) pb_task_image(&img);
    if (v && v->root == root && v->img.start == img.start && v->img.exec_id == img.exec_id) {
        __builtin_memcpy(c, &v->c, sizeof(*c));
#if PB_PROFILE
        stat_add(PB_USTAT_CONN_CACHED, 1);
#endif
        return;
    }
#endif
    conn_of(c, root, s0, t0, s1, t1, conn_off);
#if PB_CONN_CACHE
    if (k.goid && root && c->conn && c->status == PB_ADDR_OK) {
        struct conn_val nv = {};
        nv.root = root;
        nv.img = img;
        __builtin_memcpy(&nv.c, c, sizeof(*c));
        conn_cache.update(&k, &nv);
    }
#endif
}

/* the prefix both event structs share */
#define FILL_PREFIX(e, c, kind_, probe_, role_, dir_)                  \
    do {                                                               \
        u64 id_ = bpf_get_current_pid_tgid();                          \
        (e)->ts_ns = bpf_ktime_get_ns();                               \
        (e)->tgid = id_ >> 32;                                         \
        (e)->tid = (u32)id_;                                           \
        (e)->kind = (kind_);                                           \
        (e)->probe = (probe_);                                         \
        (e)->role = (role_);                                           \
        (e)->dir = (dir_);                                             \
        (e)->conn = (c)->conn;                                         \
        (e)->fd = (c)->fd;                                             \
        (e)->addr_status = (c)->status;                                \
        (e)->ip_len = (c)->ip_len;                                     \
        (e)->lport = (c)->lport;                                       \
        (e)->rport = (c)->rport;                                       \
        __builtin_memcpy((e)->laddr, (c)->laddr, 16);                  \
        __builtin_memcpy((e)->raddr, (c)->raddr, 16);                  \
    } while (0)

/* ---- header blocks */

#ifdef PB_HFIELD_SIZE
static __always_inline struct pb_header_event *hscratch_get(void) {
    u32 cpu = bpf_get_smp_processor_id();
    struct hdr_scratch *hs = hscratch.lookup(&cpu);
    return hs ? &hs->e : NULL;
}

/* Append up to `max` bytes of a Go string to the blob; returns bytes copied. The running
 * offset lives in the event (map memory, accessed volatile), not in a register: the
 * verifier then sees no state carried between calls. */
static __always_inline u32 blob_put(struct pb_header_event *e, struct go_string *s, u32 max) {
    volatile u32 *vo = &e->blob_len;
    u32 off = *vo;
    if (off >= PB_HDR_BLOB) return 0;
    u32 n = s->len < max ? (u32)s->len : max;
    if (n > PB_HDR_BLOB - off) n = PB_HDR_BLOB - off;
    u32 o = bound(off, PB_HDR_BLOB - 1);
    u32 m = bound(n, PB_HDR_BLOB - 1);
    if (!m) return 0;
    if (uread(e->blob + o, m, (void *)s->ptr) < 0) {
        stat_add(PB_USTAT_READ_ERRORS, 1);
        return 0;
    }
    *vo = off + m;
    return m;
}

/* Where a block's walk stands between the runs of its tail-call chain (one CPU), and the
 * (name, value) string headers of up to PB_FCHUNK fields from index base, fetched in one
 * read: each probe read costs more than copying a few hundred bytes. `ro` remembers the
 * read-only strings this CPU has sent (pb_hfield): a slot is good while its epoch is the
 * walk's, which moves on when a record is lost (its strings must be sent again). */
#define PB_FCHUNK 8
#define PB_FBUF 512 /* power of two > PB_FCHUNK * PB_HFIELD_SIZE */
#define PB_RO_SLOTS 256 /* power of two */
_Static_assert(PB_FCHUNK * PB_HFIELD_SIZE < PB_FBUF, "field chunk exceeds its buffer");
struct roslot { u64 ptr; u32 len; u32 tgid; u32 epoch; u32 pad; };
struct hwalk {
    u64 hf_ptr;
    u32 next;
    u32 n;
    u32 base;
    u32 loaded;
    u32 epoch;
    u32 pad;
    u8 fbuf[2 * PB_FBUF]; /* slack: a masked offset plus a string header stays inside */
    struct roslot ro[PB_RO_SLOTS];
};
BPF_PERCPU_ARRAY(hwalk, struct hwalk, 1);
BPF_PROG_ARRAY(hdr_walker, 1); /* [0] = hdr_fields, loaded by the recorder */

/* Send the part built so far and start the next one. */
static __always_inline void hdr_flush(struct pb_header_event *e, struct hwalk *w) {
    u32 off = *(volatile u32 *)&e->blob_len;
    u32 size = offsetof(struct pb_header_event, blob) + bound(off, PB_HDR_BLOB - 1);
    if (off >= PB_HDR_BLOB) size = sizeof(struct pb_header_event);
    if (events.ringbuf_output(e, size, rb_flags(size)) < 0) {
        stat_add(PB_STAT_DROPPED, 1);
        w->epoch += 1; /* its strings may be named later: forget every one */
    } else
        stat_add(PB_USTAT_HEADER_EVENTS, 1);
    e->first += e->count;
    e->count = 0;
    e->blob_len = 0;
    e->part += 1;
}


/* Field idx's name and value string headers, from the chunk, read first if need be.
 * Returns -1 when they cannot be read. */
static __always_inline int field_strings(struct hwalk *w, u32 idx, struct go_string *name,
                                         struct go_string *value) {
    u32 k = idx - w->base;
    if (idx < w->base || k >= w->loaded) {
        u32 left = w->n - idx;
        u32 cnt = left < PB_FCHUNK ? left : PB_FCHUNK;
        u32 size = bound(cnt * PB_HFIELD_SIZE, PB_FBUF - 1);
        w->loaded = 0;
        if (!size || uread(w->fbuf, size,
                                         (void *)(w->hf_ptr + (u64)idx * PB_HFIELD_SIZE)) < 0)
            return -1;
        w->base = idx;
        w->loaded = cnt;
        k = 0;
    }
    u32 at = k * PB_HFIELD_SIZE;
    __builtin_memcpy(name, w->fbuf + bound(at + PB_HFIELD_NAME, PB_FBUF - 1), sizeof(*name));
    __builtin_memcpy(value, w->fbuf + bound(at + PB_HFIELD_VALUE, PB_FBUF - 1), sizeof(*value));
    return 0;
}

/* ---- strings in the binary's read-only segment [PB_RO_LO, PB_RO_HI) (resolve.py; none
 * for a PIE): header names, and values grpc-go takes from constants or hpack's static
 * table, sent once per CPU and process, then named by address (pb_hfield). */
#ifndef PB_RO_HI
#define PB_RO_LO 0
#define PB_RO_HI 0
#endif

/* The slot that remembers s, or NULL when s is not a whole read-only string. */
static __always_inline struct roslot *ro_slot(struct hwalk *w, u32 tgid, struct go_string *s,
                                              u32 cap) {
#if PB_RO_HI
    if (!s->len || s->len > cap || s->ptr < PB_RO_LO || s->ptr + s->len > PB_RO_HI) return NULL;
    u32 i = bound((u32)(s->ptr >> 3) ^ (u32)(s->ptr >> 11) ^ tgid, PB_RO_SLOTS - 1);
    return &w->ro[i];
#else
    return NULL;
#endif
}

/* A string's address into the blob (space checked by the caller) */
static __always_inline void blob_addr(struct pb_header_event *e, u64 addr) {
    volatile u32 *vo = &e->blob_len;
    u32 off = *vo;
    if (off >= PB_HDR_BLOB) return;
    __builtin_memcpy(e->blob + bound(off, PB_HDR_BLOB - 1), &addr, sizeof(addr));
    *vo = off + sizeof(addr);
}

/* One string of a field (c: up to its cap): with its address if it is read-only, then its
 * bytes unless this CPU sent them before; the PB_HOW_* bits go into h->how. Returns the
 * bytes that follow in the blob. A string sent with its address whose bytes could not all
 * be read is forgotten: no reference may name it. */
static __always_inline u32 put_str(struct pb_header_event *e, struct hwalk *w,
                                   struct pb_hfield *h, struct go_string *s,
                                   struct go_string *c, u32 max, u32 addr, u32 ref) {
    u32 tgid = e->tgid;
    struct roslot *r = c->len == s->len ? ro_slot(w, tgid, s, max) : NULL;
    if (r) {
        blob_addr(e, s->ptr);
        if (r->ptr == s->ptr && r->len == (u32)s->len && r->tgid == tgid &&
            r->epoch == w->epoch) {
            *(volatile u32 *)&h->how |= addr | ref;
            return 0;
        }
        *(volatile u32 *)&h->how |= addr;
    }
    u32 got = blob_put(e, c, max);
    if (got != s->len) {
        stat_add(PB_USTAT_CUT_VALUES, 1);
        return got;
    }
    if (r) {
        r->ptr = s->ptr;
        r->len = (u32)s->len;
        r->tgid = tgid;
        r->epoch = w->epoch;
    }
    return got;
}

/* One header field into the current part: its pb_hfield, name and value; returns 0 when
 * the part is full (nothing added). A field whose string headers cannot be read goes in
 * with lengths of 2^32-1 and nothing captured: replay marks it cut, never empty. */
static __always_inline int hdr_field(struct pb_header_event *e, struct hwalk *w, u32 idx) {
    struct go_string name = {}, value = {};
    if (field_strings(w, idx, &name, &value) < 0) {
        stat_add(PB_USTAT_READ_ERRORS, 1);
        name.len = value.len = 0xffffffffULL;
        name.ptr = value.ptr = 0;
    }
    u32 nl = name.len < PB_NAME_MAX ? (u32)name.len : PB_NAME_MAX;
    u32 vl = value.len < PB_VALUE_MAX ? (u32)value.len : PB_VALUE_MAX;
    if (!name.ptr) nl = 0;
    if (!value.ptr) vl = 0;
    u32 cnt = *(volatile u32 *)&e->count;
    if (cnt >= PB_EV_FIELDS) return 0;
    volatile u32 *vo = &e->blob_len;
    u32 off = *vo;
    if (off >= PB_HDR_BLOB) return 0;
    /* 16: room for both addresses (sizing_defines keeps one whole field within a part) */
    if (cnt && off + sizeof(struct pb_hfield) + nl + vl + 16 > PB_HDR_BLOB) return 0;
    /* the slack after the blob keeps a masked offset plus the record inside the entry */
    struct pb_hfield *h = (struct pb_hfield *)(e->blob + bound(off, PB_HDR_BLOB - 1));
    h->name_len = name.len > 0xffffffffULL ? 0xffffffff : (u32)name.len;
    h->value_len = value.len > 0xffffffffULL ? 0xffffffff : (u32)value.len;
    *vo = off + sizeof(struct pb_hfield);
    struct go_string nc_s = {name.ptr, nl}, vc_s = {value.ptr, vl};
    h->how = 0;
    h->name_cap = put_str(e, w, h, &name, &nc_s, PB_NAME_MAX, PB_HOW_NAME_ADDR, PB_HOW_NAME_REF);
    h->value_cap = put_str(e, w, h, &value, &vc_s, PB_VALUE_MAX, PB_HOW_VALUE_ADDR,
                           PB_HOW_VALUE_REF);
    *(volatile u32 *)&e->count = cnt + 1;
    return 1;
}

/* Fill one part with the block's next fields and send it; tail-call itself for the rest.
 * A chain is at most 33 runs (the kernel's tail-call limit): fields beyond it are counted
 * in nfields but not sent, which replay marks as truncated_headers. Each run's loop is
 * verified once, whatever the block's length. */

/* Fields per run of hdr_fields: the verifier walks each of them (about 17k instructions
 * each, of its million); 33 runs still reach PB_MAX_BLOCK_FIELDS. --profile's read
 * counter (a map update per read) makes each field dearer: 32 of them passed 6.18's
 * verifier in 748k instructions but not 6.1's, so a profile run takes 20 (33 runs: 660
 * fields of a block, the rest truncated_headers). */
#if PB_PROFILE
#define PB_RUN_FIELDS 20
#else
#define PB_RUN_FIELDS 32
#endif
_Static_assert(PB_RUN_FIELDS <= PB_EV_FIELDS, "a run fills at most one part");
int hdr_fields(struct pt_regs *ctx) {
    u32 zero = 0;
    struct hwalk *w = hwalk.lookup(&zero);
    struct pb_header_event *e = hscratch_get();
    if (!w || !e) return 0;
    for (int i = 0; i < PB_RUN_FIELDS; i++) {
        u32 idx = *(volatile u32 *)&w->next;
        if (idx >= w->n) break;
        if (!hdr_field(e, w, idx)) break;
        *(volatile u32 *)&w->next = idx + 1;
    }
    if (w->next < w->n) {
        hdr_flush(e, w);
        hdr_walker.call(ctx, 0);
        /* the chain's end (tail-call limit, or no walker loaded): the rest goes unsent */
    }
    e->flags |= PB_FLAG_LAST_PART;
    hdr_flush(e, w);
    return 0;
}

static __always_inline int emit_headers(struct pt_regs *ctx, struct conn_addr *c, u8 probe,
                                        u8 role, u8 dir, u32 sid, u8 end, u64 hf_ptr,
                                        u64 hf_len) {
    u32 zero = 0;
    struct hwalk *w = hwalk.lookup(&zero);
    struct pb_header_event *e = hscratch_get();
    if (!w || !e) return 0;
    FILL_PREFIX(e, c, PB_UEV_HEADERS, probe, role, dir);
    e->stream_id = sid;
    e->flags = end ? PB_FLAG_END_STREAM : 0;
    e->pad = 0;
    e->nfields = hf_len > 0xffffffffULL ? 0xffffffff : (u32)hf_len;
    if (hf_len > PB_MAX_BLOCK_FIELDS) stat_add(PB_USTAT_EXTRA_FIELDS, hf_len - PB_MAX_BLOCK_FIELDS);
    e->first = 0;
    e->count = 0;
    e->part = 0;
    e->blob_len = 0;
    w->hf_ptr = hf_ptr;
    w->next = 0;
    w->base = 0;
    w->loaded = 0;
    w->n = hf_len < PB_MAX_BLOCK_FIELDS ? (u32)hf_len : PB_MAX_BLOCK_FIELDS;
    hdr_walker.call(ctx, 0);
    /* no walker loaded: the block's fields go unsent, and replay says so */
    e->flags |= PB_FLAG_LAST_PART;
    hdr_flush(e, w);
    return 0;
}

/* (*MetaHeadersFrame): stream id and flags from the embedded *HeadersFrame's header */
static __always_inline int recv_headers(struct pt_regs *ctx, struct conn_addr *c, u8 probe,
                                        u8 role, u64 frame) {
    struct go_slice fields = {};
    u64 hdrs = 0;
#if PB_MHF_FIELDS == PB_MHF_HEADERS + 8
    struct { u64 hdrs; struct go_slice fields; } m = {};
    uread(&m, sizeof(m), (void *)(frame + PB_MHF_HEADERS));
    hdrs = m.hdrs;
    fields = m.fields;
#else
    hdrs = rd64(frame + PB_MHF_HEADERS);
    uread(&fields, sizeof(fields), (void *)(frame + PB_MHF_FIELDS));
#endif
    u32 sid = 0;
    u8 flags = 0;
    if (hdrs) {
        /* the frame header's flags and stream id, in one read */
        u8 fh[PB_FH_SID + 4] = {};
        _Static_assert(PB_FH_FLAGS < PB_FH_SID, "FrameHeader layout");
        uread(fh, sizeof(fh), (void *)(hdrs + PB_HDRF_FH));
        flags = fh[PB_FH_FLAGS];
        __builtin_memcpy(&sid, fh + PB_FH_SID, sizeof(sid));
    }
    return emit_headers(ctx, c, probe, role, PB_DIR_RECV, sid, flags & 1, fields.ptr, fields.len);
}
#endif

#if PB_HAVE_WRITE_HEADER
int probe_write_header(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    stat_add(PB_USTAT_HITS + PB_PROBE_WRITE_HEADER, 1);
    struct conn_addr c = {};
    conn_at(ctx, &c, PB_PROBE_WRITE_HEADER, go_reg(ctx, PB_WH_RECV_REG), CONN_PATH(WH));
    return emit_headers(ctx, &c, PB_PROBE_WRITE_HEADER, PB_ROLE_UNKNOWN, PB_DIR_SEND,
                        (u32)go_reg(ctx, PB_WH_SID_REG), (u8)go_reg(ctx, PB_WH_END_REG),
                        go_reg(ctx, PB_WH_HF_PTR_REG), go_reg(ctx, PB_WH_HF_LEN_REG));
}
#endif

#if PB_HAVE_CLIENT_HEADERS
int probe_client_headers(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    stat_add(PB_USTAT_HITS + PB_PROBE_CLIENT_HEADERS, 1);
    struct conn_addr c = {};
    conn_at(ctx, &c, PB_PROBE_CLIENT_HEADERS, go_reg(ctx, PB_CH_RECV_REG), CONN_PATH(CH));
    return recv_headers(ctx, &c, PB_PROBE_CLIENT_HEADERS, PB_ROLE_CLIENT, go_reg(ctx, PB_CH_FRAME_REG));
}
#endif

#if PB_HAVE_SERVER_HEADERS
int probe_server_headers(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    stat_add(PB_USTAT_HITS + PB_PROBE_SERVER_HEADERS, 1);
    struct conn_addr c = {};
    conn_at(ctx, &c, PB_PROBE_SERVER_HEADERS, go_reg(ctx, PB_SH_RECV_REG), CONN_PATH(SH));
    return recv_headers(ctx, &c, PB_PROBE_SERVER_HEADERS, PB_ROLE_SERVER, go_reg(ctx, PB_SH_FRAME_REG));
}
#endif

/* ---- DATA frames: length, flags and the payload's first bytes */

static __always_inline int emit_data(struct pb_data_event *e) {
    if (events.ringbuf_output(e, sizeof(*e), rb_flags(sizeof(*e))) < 0) {
        stat_add(PB_STAT_DROPPED, 1);
        return 0;
    }
    stat_add(PB_USTAT_DATA_EVENTS, 1);
    return 0;
}

#if PB_HAVE_WRITE_DATA
int probe_write_data(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    stat_add(PB_USTAT_HITS + PB_PROBE_WRITE_DATA, 1);
    struct conn_addr c = {};
    conn_at(ctx, &c, PB_PROBE_WRITE_DATA, go_reg(ctx, PB_WD_RECV_REG), CONN_PATH(WD));
    if (!c.conn) return 0; /* an x/net Framer that is not grpc-go's */
    struct data_scratch ds = {};
    struct pb_data_event *e = &ds.e;
    FILL_PREFIX(e, &c, PB_UEV_DATA, PB_PROBE_WRITE_DATA, PB_ROLE_UNKNOWN, PB_DIR_SEND);
    e->stream_id = (u32)go_reg(ctx, PB_WD_SID_REG);
    e->flags = go_reg(ctx, PB_WD_END_REG) & 1 ? PB_FLAG_END_STREAM : 0;
    u64 ptr = go_reg(ctx, PB_WD_DATA_PTR_REG), len = go_reg(ctx, PB_WD_DATA_LEN_REG);
#if PB_WD_SHAPE == 1
    /* data []byte */
    e->frame_len = (u32)len;
    u32 n = bound(len < PB_DATA_CAP ? (u32)len : PB_DATA_CAP, 2 * PB_DATA_CAP - 1);
    if (n && uread(e->data, n, (void *)ptr) == 0) e->cap_len = n;
#else
    /* data [][]byte: the frame is the concatenation of the pieces */
    /* running totals live in the event (volatile), so iterations carry no verifier state */
    volatile u32 *total = &e->frame_len, *got = &e->cap_len;
    for (int i = 0; i < PB_MAX_PIECES; i++) {
        if (i >= len) break;
        struct go_slice s = {};
        uread(&s, sizeof(s), (void *)(ptr + (u64)i * sizeof(s)));
        *total = *total + (u32)s.len;
        u32 g = *got;
        if (i >= PB_COPY_PIECES || g >= PB_DATA_CAP || !s.len) continue;
        u32 n = s.len < PB_DATA_CAP - g ? (u32)s.len : PB_DATA_CAP - g;
        u32 o = bound(g, PB_DATA_CAP - 1);
        u32 m = bound(n, 2 * PB_DATA_CAP - 1);
        if (m && uread(e->data + o, m, (void *)s.ptr) == 0) *got = g + m;
    }
    if (len > PB_MAX_PIECES) e->flags |= PB_FLAG_LEN_PARTIAL;
#endif
    return emit_data(e);
}
#endif

#if PB_HAVE_CLIENT_DATA || PB_HAVE_SERVER_DATA
static __always_inline int recv_data(struct conn_addr *c, u8 probe, u8 role, u64 frame) {
    struct data_scratch ds = {};
    struct pb_data_event *e = &ds.e;
    FILL_PREFIX(e, c, PB_UEV_DATA, probe, role, PB_DIR_RECV);
    uread(&e->stream_id, sizeof(e->stream_id), (void *)(frame + PB_DF_FH + PB_FH_SID));
    u8 flags = 0;
    uread(&flags, sizeof(flags), (void *)(frame + PB_DF_FH + PB_FH_FLAGS));
    e->flags = flags & 1 ? PB_FLAG_END_STREAM : 0;
    struct go_slice s = {};
#if PB_RD_SHAPE == 1
    /* data []byte (padding already stripped) */
    uread(&s, sizeof(s), (void *)(frame + PB_DF_DATA));
#else
    /* data mem.Buffer: a SliceBuffer (the interface points at a slice header) or a
     * *mem.buffer (whose data field is the slice) */
    u64 iface = frame + PB_DF_DATA;
    u64 itab = rd64(iface);
    u64 typ = itab ? rd64(itab + PB_ITAB_TYPE) : 0;
    u64 obj = rd64(iface + 8);
    if (itab && typ == PB_TYPE_SLICEBUF)
        uread(&s, sizeof(s), (void *)obj);
    else if (itab && typ == PB_TYPE_MEMBUF)
        uread(&s, sizeof(s), (void *)(obj + PB_MEMBUF_DATA));
    else if (itab)
        e->flags |= PB_FLAG_DATA_UNREAD; /* emptyBuffer has no bytes; others are unknown */
#endif
    e->frame_len = (u32)s.len;
    u32 n = bound(s.len < PB_DATA_CAP ? (u32)s.len : PB_DATA_CAP, 2 * PB_DATA_CAP - 1);
    if (n && uread(e->data, n, (void *)s.ptr) == 0) e->cap_len = n;
    else if (n) stat_add(PB_USTAT_READ_ERRORS, 1);
    return emit_data(e);
}
#endif

#if PB_HAVE_CLIENT_DATA
int probe_client_data(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    stat_add(PB_USTAT_HITS + PB_PROBE_CLIENT_DATA, 1);
    struct conn_addr c = {};
    conn_at(ctx, &c, PB_PROBE_CLIENT_DATA, go_reg(ctx, PB_CD_RECV_REG), CONN_PATH(CD));
    return recv_data(&c, PB_PROBE_CLIENT_DATA, PB_ROLE_CLIENT, go_reg(ctx, PB_CD_FRAME_REG));
}
#endif

#if PB_HAVE_SERVER_DATA
int probe_server_data(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    stat_add(PB_USTAT_HITS + PB_PROBE_SERVER_DATA, 1);
    struct conn_addr c = {};
    conn_at(ctx, &c, PB_PROBE_SERVER_DATA, go_reg(ctx, PB_SD_RECV_REG), CONN_PATH(SD));
    return recv_data(&c, PB_PROBE_SERVER_DATA, PB_ROLE_SERVER, go_reg(ctx, PB_SD_FRAME_REG));
}
#endif

/* ---- RST_STREAM frames: stream id and error code (a call's end, and its status) */

#if PB_HAVE_WRITE_RST || PB_HAVE_CLIENT_RST || PB_HAVE_SERVER_RST
static __always_inline int emit_rst(struct pb_rst_event *e) {
    if (events.ringbuf_output(e, sizeof(*e), rb_flags(sizeof(*e))) < 0) {
        stat_add(PB_STAT_DROPPED, 1);
        return 0;
    }
    stat_add(PB_USTAT_RST_EVENTS, 1);
    return 0;
}
#endif

#if PB_HAVE_WRITE_RST
int probe_write_rst(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    stat_add(PB_USTAT_HITS + PB_PROBE_WRITE_RST, 1);
    struct conn_addr c = {};
    conn_at(ctx, &c, PB_PROBE_WRITE_RST, go_reg(ctx, PB_WR_RECV_REG), CONN_PATH(WR));
    if (!c.conn) return 0; /* an x/net Framer that is not grpc-go's */
    struct pb_rst_event e = {};
    FILL_PREFIX(&e, &c, PB_UEV_RST, PB_PROBE_WRITE_RST, PB_ROLE_UNKNOWN, PB_DIR_SEND);
    e.stream_id = (u32)go_reg(ctx, PB_WR_SID_REG);
    e.err_code = (u32)go_reg(ctx, PB_WR_CODE_REG);
    return emit_rst(&e);
}
#endif

#if PB_HAVE_CLIENT_RST || PB_HAVE_SERVER_RST
static __always_inline int recv_rst(struct conn_addr *c, u8 probe, u8 role, u64 frame) {
    struct pb_rst_event e = {};
    FILL_PREFIX(&e, c, PB_UEV_RST, probe, role, PB_DIR_RECV);
    if (uread(&e.stream_id, sizeof(e.stream_id),
                            (void *)(frame + PB_RSTF_FH + PB_FH_SID)) < 0 ||
        uread(&e.err_code, sizeof(e.err_code), (void *)(frame + PB_RSTF_CODE)) < 0) {
        stat_add(PB_USTAT_READ_ERRORS, 1);
        return 0;
    }
    return emit_rst(&e);
}
#endif

#if PB_HAVE_CLIENT_RST
int probe_client_rst(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    stat_add(PB_USTAT_HITS + PB_PROBE_CLIENT_RST, 1);
    struct conn_addr c = {};
    conn_at(ctx, &c, PB_PROBE_CLIENT_RST, go_reg(ctx, PB_CR_RECV_REG), CONN_PATH(CR));
    return recv_rst(&c, PB_PROBE_CLIENT_RST, PB_ROLE_CLIENT, go_reg(ctx, PB_CR_FRAME_REG));
}
#endif

#if PB_HAVE_SERVER_RST
int probe_server_rst(struct pt_regs *ctx) {
    if (!traced(bpf_get_current_pid_tgid() >> 32)) return 0;
    stat_add(PB_USTAT_HITS + PB_PROBE_SERVER_RST, 1);
    struct conn_addr c = {};
    conn_at(ctx, &c, PB_PROBE_SERVER_RST, go_reg(ctx, PB_SR_RECV_REG), CONN_PATH(SR));
    return recv_rst(&c, PB_PROBE_SERVER_RST, PB_ROLE_SERVER, go_reg(ctx, PB_SR_FRAME_REG));
}
#endif
