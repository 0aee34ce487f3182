/* Bulk draining of BPF ring buffers: a sample callback for libbcc's ring buffer
 * manager (bpf_new_ringbuf / bpf_add_ringbuf take any C function pointer) that
 * appends each record to a batch buffer in the event file's framing
 * (u8 type | u32 length | payload, harness/collectors/eventfile.py), so the
 * recorder makes one Python call per poll instead of one per record.
 * A ring record may also pack several events of the trimmed kind back to back
 * (the BPF side then pays one ring reservation for them): each goes into the
 * batch as its own record, as if submitted alone.
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
    /* >= 0: the u8 there, in a record of trim_kind, counts the events packed in it
     * (0 or 1: one), each starting at an 8-byte boundary; zeroed in the batch */
    int32_t pack_off;
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

/* One event into the batch, framed (its packing count, if any, zeroed); 0 or -1
 * (no room: counted as dropped). */
static int append_one(struct pb_batch *b, const uint8_t *d, uint64_t n, uint64_t size,
                      int watch, int packed) {
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
    if (packed) p[5 + b->pack_off] = 0;
    b->len += 5 + n;
    b->records++;
    b->payload += n;
    return 0;
}

/* The events packed in one record of the trimmed kind, each cut to its valid bytes. */
static void append_packed(struct pb_batch *b, const uint8_t *d, uint64_t size, unsigned count) {
    uint64_t off = 0;
    for (unsigned i = 0; i < count; i++) {
        if (off + b->trim_base > size || off + b->trim_len_off + 4 > size) {
            b->dropped += count - i;  /* a malformed pack: what is left is counted lost */
            return;
        }
        uint64_t valid = (uint64_t)b->trim_base + rd32(d + off + b->trim_len_off);
        if (off + valid > size) {
            b->dropped += count - i;
            return;
        }
        uint64_t next = (off + valid + 7) & ~(uint64_t)7;
        /* the padding to the next event is what trimming leaves out */
        uint64_t span = (next < size ? next : size) - off;
        if (append_one(b, d + off, valid, span, 0, 1) < 0) {
            b->dropped += count - i - 1;
            return;
        }
        off = next;
    }
    b->trimmed += off < size ? size - off : 0;
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
    if (b->kind_off >= 0 && (uint64_t)b->kind_off < n && d[b->kind_off] == b->trim_kind &&
        b->pack_off >= 0 && (uint64_t)b->pack_off < n && d[b->pack_off] > 1) {
        append_packed(b, d, n, d[b->pack_off]);
        if (b->cap - b->len < b->headroom || b->nwatched >= PB_WATCH_MAX) return -1;
        return 0;
    }
    if (b->kind_off >= 0 && (uint64_t)b->kind_off < n) {
        uint8_t kind = d[b->kind_off];
        if (kind == b->trim_kind && (uint64_t)b->trim_len_off + 4 <= n) {
            uint64_t valid = (uint64_t)b->trim_base + rd32(d + b->trim_len_off);
            if (valid < n) n = valid;
        }
        watch = kind == b->watch_kind && (uint64_t)b->watch_off + 4 <= n;
    }
    if (append_one(b, d, n, size, watch, 0) < 0) return -1;
    if (b->cap - b->len < b->headroom || b->nwatched >= PB_WATCH_MAX) return -1;
    return 0;
}
