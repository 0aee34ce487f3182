/* Event records of the TLS uprobe collector (bpf/tls_openssl.c), shared with
 * harness/collectors/tls/layout.py, which parses this header (one definition).
 * Only fixed-width types, one field per line: the Python side parses it. */
#ifndef PB_TLS_EVENTS_H
#define PB_TLS_EVENTS_H

#ifndef PB_TLS_CHUNK
#define PB_TLS_CHUNK 8192 /* plaintext bytes per event; power of two (per-CPU scratch <= 32 KiB) */
#endif
#define PB_TLS_MAX_CHUNKS 8 /* events per SSL call: 64 KiB of plaintext at most */

#define PB_TLS_DIR_SEND 0 /* SSL_write*: plaintext the process wrote */
#define PB_TLS_DIR_RECV 1 /* SSL_read*: plaintext the process read */

/* how the event's connection address was found */
#define PB_TLS_ADDR_NONE 0    /* not found: replay may still tie it by (tgid, ssl) */
#define PB_TLS_ADDR_SYSCALL 1 /* the socket the SSL call's own send/recv used (same thread) */
#define PB_TLS_ADDR_SSL 2     /* no socket call inside (buffered read): the SSL's last one */
#define PB_TLS_ADDR_STRUCT 3  /* Go: read from the *tls.Conn's own net.Conn */

/* how the OpenSSL program finds the socket an SSL call moves bytes on (PB_SK_HOOK) */
#define PB_SK_TRACEPOINTS 1 /* sock:sock_send_length/sock_recv_length (Linux 6.3+) */
#define PB_SK_KPROBES 2     /* kprobes on tcp_sendmsg/tcp_recvmsg (older kernels) */

#define PB_TLS_LIB_OPENSSL 1
#define PB_TLS_LIB_GO 2

/* Batched wake-ups (pb_common.h): a CPU forces one after this many bytes. Lower than
 * the default (1/16 of the ring): TLS calls arrive as bursts of 8 KiB records (up to
 * 64 KiB a call), and at 1 MiB per CPU a recorder scheduled late on a loaded 2-core box
 * let the ring overflow (9,906 of 27,847 events of a grpc-unary go2go run lost). */
#ifndef PB_WAKE_BYTES
#define PB_WAKE_BYTES (PB_RINGBUF_PAGES * 4096 / 64)
#endif

/* counters in the stats array */
#include "pb_common.h" /* PB_STAT_DROPPED 0: ring buffer full, event lost */
#define PB_TSTAT_EVENTS 1
#define PB_TSTAT_CALLS 2         /* SSL calls that moved plaintext */
#define PB_TSTAT_TRUNCATED 3     /* calls longer than the capture limit */
#define PB_TSTAT_ADDR_SYSCALL 4
#define PB_TSTAT_ADDR_SSL 5
#define PB_TSTAT_ADDR_NONE 6
#define PB_TSTAT_ADDR_MISMATCH 7 /* the call's socket differs from the SSL's last one */
#define PB_TSTAT_NESTED 8        /* an SSL call entered while one was open on the thread */
/* Go: a Read returned whose entry no probe saw (the goroutine was parked in it when the
 * probes went in): its plaintext went unseen, and replay trims what answers it */
#define PB_TSTAT_READ_UNSEEN 9
#define PB_TSTAT_MAX 10

struct pb_tls_event {
    u64 ts_ns;    /* send: when the call began; receive: when it returned */
    u64 ssl;      /* the SSL object: one TLS connection while it lives */
    u32 tgid;
    u32 tid;
    s32 fd;       /* from the data syscall inside the call, -1 if none ran */
    u8 dir;
    u8 addr_source;
    u8 lib;
    u8 family;
    u16 lport;
    u16 rport;
    u16 part;     /* index of this event among its call's events */
    u16 pad;
    u32 orig_len; /* plaintext bytes the call moved */
    u32 offset;   /* offset of this chunk in them */
    u32 cap_len;  /* valid bytes of data[] */
    u32 seq;      /* the call's number on its SSL object and direction, from 1 */
    u8 laddr[16];
    u8 raddr[16];
    u8 data[PB_TLS_CHUNK];
};

#endif
