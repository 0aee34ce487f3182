/* Event records of the kernel-side collector, shared by kprobe_collector.c and
 * harness/collectors/kprobe/events.py (which parses this header to build its
 * ctypes layout, so the struct is defined exactly once).
 * Only fixed-width types, one field per line: the Python side parses it. */
#ifndef PB_KPROBE_EVENTS_H
#define PB_KPROBE_EVENTS_H

#define PB_EV_CONN 1       /* connection with full 4-tuple (connect or accept) */
#define PB_EV_CONN_INFER 2 /* first data on a connection opened before attach */
#define PB_EV_DATA 3
#define PB_EV_CLOSE 4
#define PB_EV_EXIT 5       /* a traced process exited */

#include "pb_common.h" /* roles, directions */

#define PB_PROTO_UNKNOWN 0
#define PB_PROTO_HTTP1 1
#define PB_PROTO_HTTP2 2
#define PB_PROTO_TLS 3     /* TLS records: encrypted, kept so replay can say so */

/* which syscall produced a data event */
#define PB_SC_READ 1
#define PB_SC_WRITE 2
#define PB_SC_SENDTO 3
#define PB_SC_RECVFROM 4
#define PB_SC_SENDMSG 5
#define PB_SC_RECVMSG 6
#define PB_SC_READV 7
#define PB_SC_WRITEV 8

/* counters in the stats array */
/* PB_STAT_DROPPED 0 (pb_common.h): ring buffer full, event lost */
#define PB_STAT_DATA_EVENTS 1
#define PB_STAT_TRUNCATED_CALLS 2 /* calls longer than the capture limit */
#define PB_STAT_TRUNCATED_BYTES 3
#define PB_STAT_CONN_EVENTS 4
#define PB_STAT_NON_HTTP 5       /* connections dropped by protocol inference */
#define PB_STAT_READ_FAILED 6    /* payload bytes the kernel could not read from user memory */
#define PB_STAT_H2_CALLS 7       /* calls captured frame-aware (HTTP/2 in sync) */
#define PB_STAT_H2_SKIPPED_BYTES 8 /* DATA message-body bytes left out as gaps */
#define PB_STAT_H2_IMPLAUSIBLE 9 /* frame headers that could not be one: sync given up */
#define PB_STAT_H2_BOUND 10      /* walks out of steps or iovecs: sync given up */
#define PB_STAT_TAIL_FAILED 11   /* data calls lost: a tail call into a walker failed */
#define PB_STAT_H2_RESYNC 12     /* frame walks begun mid-stream, on trial (PB_H2_TRIAL) */
#define PB_STAT_H1_SKIPPED_BYTES 13 /* HTTP/1 Content-Length body bytes left out as gaps */
#define PB_STAT_H1_GIVEN_UP 14   /* HTTP/1 directions whose framing stopped being followed */
#define PB_STAT_H1_MIDSTREAM 15  /* HTTP/1 directions found mid-stream that began following */
#define PB_STAT_MAX 16

/* Floor builds (-D PB_FLOOR, recorder --floor; the overhead bench's floor pass): what
 * this approach costs on the machine before any of the collector's own work, measured
 * with the same hooks, filter and clock. 0: the collector. */
#define PB_FLOOR_FILTER 1 /* every data program returns after the target filter */
#define PB_FLOOR_RECORD 2 /* + the call stashed, its connection looked up and numbered, and
                           * one record of at most 255 bytes (no framing, no walker) */

/* What the data path did, counted with -D PB_PROFILE=1 (recorder --profile): where a
 * data call's BPF time goes, in counts that do not depend on the machine's load */
#define PB_PROF_DATA_CALLS 0     /* data calls that moved bytes (data_fn runs) */
#define PB_PROF_EMPTY_CALLS 1    /* data calls that moved nothing (EAGAIN, EOF) */
#define PB_PROF_H2_CALLS 2       /* calls walked frame by frame */
#define PB_PROF_H2_RUNS 3        /* runs of h2_walk_fn: tail calls into it */
#define PB_PROF_H2_STEPS 4       /* steps of the frame walk */
#define PB_PROF_H2_FIELDS 5      /* frame headers and gRPC prefixes gathered */
#define PB_PROF_USER_READS 6     /* bpf_probe_read_user calls for payload bytes */
#define PB_PROF_USER_READ_BYTES 7
#define PB_PROF_RING_RECORDS 8   /* ring records of data events (one may pack several) */
#define PB_PROF_GRPC_MAP_OPS 9   /* grpc_msgs lookups, updates, deletes */
#define PB_PROF_IGNORED_CALLS 10 /* data calls on fds known to be no followed socket */
#define PB_PROF_FD_WALKS 11      /* data calls that walked task->files for their fd */
#define PB_PROF_H1_RUNS 12       /* runs of h1_walk_fn: tail calls into it */
#define PB_PROF_H1_SCAN_RUNS 13  /* ... of them scanning a head */
#define PB_PROF_H1_SCAN_WORDS 14 /* 8-byte words of heads scanned */
#define PB_PROF_H1_HEADS 15      /* heads scanned to a decision */
#define PB_PROF_MAX 16

/* The sys_exit_* programs only stash a data call and tail-call the walkers
 * (slots of the `walkers` program array, filled by the loader), so the costly
 * walk is verified once, not once per syscall. */
#define PB_TC_DATA 0 /* data_fn: inference, prefix capture, start of an HTTP/2 walk */
#define PB_TC_H2 1   /* h2_walk_fn: PB_H2_STEPS steps of the walk, then itself again */
#define PB_TC_H1 2   /* h1_walk_fn: one HTTP/1 message of a call, then itself again */
#define PB_TC_MAX 3

/* HTTP/2 frame-aware capture (PB_PROTO_HTTP2 connections seen from their start, or
 * directions that found frame boundaries mid-stream, see h2_resync): the kernel
 * follows frame boundaries in each direction and always captures the client
 * preface, every frame header, every non-DATA payload and every gRPC 5-byte
 * message prefix inside DATA; message-body bytes are captured while the call's
 * budget (PB_H2_BODY_LIMIT) lasts, the rest is left out. A call then yields
 * several data events, each a contiguous piece at `offset` in the call's bytes;
 * bytes between pieces (and after the last, up to orig_len) went by unseen. The
 * first event of every call has offset 0 (a call's first byte is never skipped),
 * so no empty events are needed. Directions not in sync keep the prefix capture:
 * one run at offset 0, as many events as PB_CHUNK-sized chunks.
 *
 * HTTP/1 body skipping (role known, calls not vectored): each direction follows
 * message framing across calls; a call's header blocks are captured and
 * Content-Length body bytes are left out as gaps (the first byte of a call is kept,
 * as above). Anything it cannot frame for sure (close-delimited, 101, chunk
 * extensions or trailers, a head or chunk-size line cut by the call's end, a head
 * longer than PB_H1_HDR_MAX, a vectored call, a response to a request not framed or
 * to a CONNECT) ends the following of that direction for the connection: prefix
 * capture from there on. Chunked bodies are followed chunk by chunk (size lines
 * captured, data left out); a HEAD's response is known from the requests framed on
 * the connection (paired in order, as pipelining keeps them). A connection found
 * mid-stream (opened before the attach) seeks a message's start in each direction,
 * with prefix capture until then: the request direction begins at a call that starts
 * with a whole request line, the response direction only at its first call after
 * that, and only if that call starts with a status line: it answers the first
 * request framed (unless requests were pipelined across the attach, which replay's
 * own in-order pairing cannot tell either). Replay's parser frames the bytes itself
 * and checks that every gap falls inside a body; a gap elsewhere is a lost message,
 * never a guess.
 *
 * Loss: `seq` counts the data calls of one connection and direction (from 1),
 * and `part` the events of one call (from 0), both whether or not an event made
 * it into the ring buffer; replay sees a jump in either and knows bytes are
 * missing there, instead of splicing around them. */

#ifndef PB_CHUNK
#define PB_CHUNK 16384 /* payload bytes per data event; power of two */
#endif

struct pb_conn_event {
    u64 ts_ns;
    u32 tgid;
    u32 tid;
    s32 fd;
    u8 kind;
    u8 role;
    u8 proto;
    u8 family;
    u16 lport;
    u16 rport;
    u8 laddr[16];
    u8 raddr[16];
    char comm[16];
    u32 seq[2];   /* close: data calls numbered on it, by PB_DIR_* (replay finds a lost tail) */
};

struct pb_data_event {
    u64 ts_ns;    /* send: when the call began; receive: when it returned */
    u32 tgid;
    u32 tid;
    s32 fd;
    u8 kind;
    u8 role;
    u8 proto;
    u8 dir;
    u8 syscall;
    u8 packed;    /* events in this ring record, set in its first (0 or 1: one alone);
                   * the recorder's drain takes them apart and zeroes it */
    u16 part;     /* index of this event among its call's events */
    u32 orig_len; /* bytes the syscall moved */
    u32 offset;   /* offset of this chunk in the syscall's bytes */
    u32 cap_len;  /* bytes of data[] that are valid */
    u32 seq;      /* the call's number on its connection and direction, from 1 */
    u8 data[PB_CHUNK];
};

/* Connection-tracking counters, in their own array (conn_stats): why a
 * connection's addresses stayed unknown in the kernel, and what the walk from
 * an fd to its socket (PB_FD_SOCK) decided for sockets not seen opened. */
#define PB_CSTAT_ACCEPT_NO_SOCK 0  /* accept: the fd's socket unreadable, caller's sockaddr used */
#define PB_CSTAT_ACCEPT_NO_ADDR 1  /* accept: no address from the socket nor the caller */
#define PB_CSTAT_INFER_SOCK 2      /* a socket not seen opened, addresses from the socket */
#define PB_CSTAT_INFER_NO_ADDR 3   /* a connection inferred from bytes alone (no socket walk) */
#define PB_CSTAT_OTHER_PORTS 4     /* a TCP socket not seen opened, off the traced ports */
#define PB_CSTAT_SOCK_WALKS 5      /* fd -> socket walks for data on fds not in the table */
#define PB_CSTAT_MAX 6

#endif
