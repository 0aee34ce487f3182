/* Event records of the uprobe collector (grpc-go), shared by uprobe_grpc.c and
 * harness/collectors/uprobe/layout.py (which parses this header to build its
 * ctypes layout, so each struct is defined exactly once).
 * Only fixed-width types, one field per line: the Python side parses it.
 * Every event starts with the same head (ts_ns .. raddr), defined once in
 * uprobe_event_head.h and included as the first lines of each struct: the decoder reads
 * it from any of them. */
#ifndef PB_UPROBE_EVENTS_H
#define PB_UPROBE_EVENTS_H

#define PB_UEV_HEADERS 1 /* one header block, sent or received */
#define PB_UEV_DATA 2    /* one DATA frame, sent or received */
#define PB_UEV_RST 3     /* one RST_STREAM frame, sent or received */

/* which probe produced an event */
#define PB_PROBE_WRITE_HEADER 1   /* (*loopyWriter).writeHeader: headers sent */
#define PB_PROBE_CLIENT_HEADERS 2 /* (*http2Client).operateHeaders: headers received */
#define PB_PROBE_SERVER_HEADERS 3 /* (*http2Server).operateHeaders: headers received */
#define PB_PROBE_WRITE_DATA 4     /* DATA frame written (x/net Framer or grpc framer) */
#define PB_PROBE_CLIENT_DATA 5    /* (*http2Client).handleData */
#define PB_PROBE_SERVER_DATA 6    /* (*http2Server).handleData */
#define PB_PROBE_WRITE_RST 7      /* (*http2.Framer).WriteRSTStream: a reset sent */
#define PB_PROBE_CLIENT_RST 8     /* (*http2Client).handleRSTStream: a reset received */
#define PB_PROBE_SERVER_RST 9     /* (*http2Server).handleRSTStream */

#include "pb_common.h" /* roles, directions */

/* flags */
#define PB_FLAG_END_STREAM 1
#define PB_FLAG_LEN_PARTIAL 2 /* a write had more pieces than the program sums */
#define PB_FLAG_DATA_UNREAD 4 /* the payload's buffer type was not one we know */
#define PB_FLAG_LAST_PART 8   /* the last event of a header block */

/* collection levels (recorder option --uprobe-level) */
#define PB_LEVEL_HEADERS 0  /* header blocks only: 3 hits per unary call per side */
#define PB_LEVEL_MESSAGES 1 /* plus one hit per DATA frame sent or received */

/* what became of the connection's address */
#define PB_ADDR_OK 0
#define PB_ADDR_NOT_TCP 1    /* the conn's dynamic type is not *net.TCPConn */
#define PB_ADDR_UNREADABLE 2 /* a pointer on the way was nil or unreadable */
#define PB_ADDR_NOT_TCPADDR 3

/* counters in the stats array */
/* PB_STAT_DROPPED 0 (pb_common.h): ring buffer full, event lost */
#define PB_USTAT_HEADER_EVENTS 1
#define PB_USTAT_DATA_EVENTS 2
#define PB_USTAT_USER_READS 3       /* reads of user memory (only with PB_PROFILE) */
#define PB_USTAT_EXTRA_FIELDS 4     /* fields beyond PB_MAX_BLOCK_FIELDS in a block */
#define PB_USTAT_READ_ERRORS 5
#define PB_USTAT_CUT_VALUES 6       /* names or values captured only in part */
#define PB_USTAT_RST_EVENTS 7
#define PB_USTAT_HITS 8             /* + probe id (1..9): uprobe hits per probe */
#define PB_USTAT_CONN_CACHED 20      /* connections found in the goroutine cache (PB_PROFILE) */
#define PB_USTAT_MAX 24

/* A header block is sent as one or more events (parts) of up to PB_EV_FIELDS fields and
 * PB_HDR_BLOB bytes; the parts of a block share ts_ns and tid. The blob holds each field as
 * a struct pb_hfield followed by its captured name and value bytes, so a part is as long
 * as what it carries (a fixed per-field table cost 1 KiB per event).
 * PB_VALUE_MAX and PB_MAX_BLOCK_FIELDS may be overridden with -D (recorder options);
 * PB_HDR_BLOB must stay a power of two >= sizeof(struct pb_hfield) + PB_NAME_MAX +
 * PB_VALUE_MAX. The blob is the event's last field, and replay reads only blob_len bytes
 * of it, so its size may vary. */
#define PB_EV_FIELDS 64 /* power of two */
#ifndef PB_HDR_BLOB
#define PB_HDR_BLOB 32768
#endif
#define PB_NAME_MAX 256
#ifndef PB_VALUE_MAX
#define PB_VALUE_MAX 16384
#endif
#ifndef PB_MAX_BLOCK_FIELDS
#define PB_MAX_BLOCK_FIELDS 1024
#endif
#define PB_DATA_CAP 64 /* first payload bytes of each DATA frame: the gRPC prefixes */

struct pb_header_event {
#include "uprobe_event_head.h"
    u32 nfields;   /* fields in the whole block, including those beyond PB_MAX_BLOCK_FIELDS */
    u32 first;     /* index in the block of this part's first field */
    u32 count;     /* fields in this part */
    u32 part;      /* 0, 1, ...: this event's place among the block's parts */
    u32 blob_len;  /* valid bytes of blob: count fields, each a pb_hfield, name, value */
    u8 blob[PB_HDR_BLOB];
};

/* one header field in a pb_header_event's blob, followed by its name (the 8-byte address
 * if `how` has PB_HOW_NAME_ADDR, then name_cap bytes) and its value (the same, with
 * PB_HOW_VALUE_ADDR). A string in the binary's read-only segment is the same bytes
 * wherever it is met in that process: it comes with its address, and once a CPU has sent
 * it (tgid, address, length) later fields name it by address only (PB_HOW_*_REF, no
 * bytes), which replay resolves from the record that carried them. */
struct pb_hfield {
    u32 name_len;  /* original lengths (clamped to 2^32-1) */
    u32 value_len;
    u32 name_cap;  /* captured lengths: less than the original = cut (unless by reference) */
    u32 value_cap;
    u32 how;       /* PB_HOW_* */
};
#define PB_HOW_NAME_ADDR 1  /* the name's address precedes its bytes */
#define PB_HOW_NAME_REF 2   /* with PB_HOW_NAME_ADDR: no bytes, they were sent before */
#define PB_HOW_VALUE_ADDR 4
#define PB_HOW_VALUE_REF 8

struct pb_data_event {
#include "uprobe_event_head.h"
    u32 frame_len; /* DATA payload bytes (padding excluded) */
    u32 cap_len;   /* bytes of data[] that are valid: a prefix of the payload */
    u8 data[PB_DATA_CAP];
};

struct pb_rst_event {
#include "uprobe_event_head.h"
    u32 err_code;  /* the HTTP/2 error code */
    u32 pad2;
};

#endif
