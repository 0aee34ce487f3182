/* Bulk draining of BPF ring buffers: a sample callback for libbcc's ring buffer
 * manager (bpf_new_ringbuf / bpf_add_ringbuf take any C function pointer) that
 * appends each record to a batch buffer in the event file's framing
 * (u8 type | u32 length | payload, harness/collectors/eventfile.py), so the
 * recorder makes one Python call per poll instead of one per record.
 *
 * Built by scripts/setup into the venv (lib/probebench/libpbdrain.so); loaded
 * with ctypes by harness/collectors/rings.py, which owns the batch's memory and
 * mirrors struct pb_batch there. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PB_WATCH_MAX 64

struct pb_batch {
    uint8_t *buf;
    uint64_t cap;
    uint64_t len;        /* bytes of buf in use */
    uint64_t records;    /* records appended since the batch was last emptied */
    uint64_t payload;    /* their payload bytes */
    uint64_t trimmed;    /* bytes left out by trimming (reserved but not valid) */
    uint64_t headroom;   /* stop taking records when less than this is free */
    uint64_t dropped;    /* records larger than the free space: lost (never with headroom) */
    uint32_t rec_type;   /* the framing's type byte for these records */
    int32_t kind_off;    /* offset of the record's kind byte; < 0: no trim, no watch */
    /* records of kind trim_kind are cut to trim_base + (u32 at trim_len_off) bytes */
    uint32_t trim_kind;
    uint32_t trim_len_off;
    uint32_t trim_base;
    /* records of kind watch_kind leave their u32 at watch_off in watched[] */
    uint32_t watch_kind;
    uint32_t watch_off;
    uint32_t nwatched;
    uint32_t watched[PB_WATCH_MAX];
};

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ring_buffer_sample_fn. libbpf advances past a record before calling this, so a
 * record is never refused: it is stored, and when the batch is then nearly full
 * (less than `headroom`, at least the largest record, left) or its watch list is
 * full, returning < 0 makes libbpf stop after it; the caller empties the batch and
 * consumes again. */
int pb_batch_append(void *ctx, void *data, size_t size) {
    struct pb_batch *b = ctx;
    const uint8_t *d = data;
    uint64_t n = size;
    if (n > UINT32_MAX) return -1;
    int watch = 0;
    if (b->kind_off >= 0 && (uint64_t)b->kind_off < n) {
        uint8_t kind = d[b->kind_off];
        if (kind == b->trim_kind && (uint64_t)b->trim_len_off + 4 <= n) {
            uint64_t valid = (uint64_t)b->trim_base + rd32(d + b->trim_len_off);
            if (valid < n) n = valid;
        }
        watch = kind == b->watch_kind && (uint64_t)b->watch_off + 4 <= n;
    }
    if (b->len + 5 + n > b->cap || (watch && b->nwatched >= PB_WATCH_MAX)) {
        b->dropped++;  /* headroom too small for this record: counted, never silent */
        return -1;
    }
    if (watch) b->watched[b->nwatched++] = rd32(d + b->watch_off);
    b->trimmed += size - n;
    uint8_t *p = b->buf + b->len;
    uint32_t n32 = (uint32_t)n;
    p[0] = (uint8_t)b->rec_type;
    memcpy(p + 1, &n32, 4);
    memcpy(p + 5, d, n);
    b->len += 5 + n;
    b->records++;
    b->payload += n;
    if (b->cap - b->len < b->headroom || b->nwatched >= PB_WATCH_MAX) return -1;
    return 0;
}
