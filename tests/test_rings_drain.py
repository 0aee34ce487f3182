"""The bulk drain (harness/collectors/rings.py + native/pbdrain.c) on a real ring buffer.

A tiny program on sys_enter_getppid, filtered to this process, submits numbered records
without waking anyone; the C callback frames them for the event file, trims the ones of
one kind to their valid length and reports a field of another. A batch far smaller than
the records makes the drain hand over many batches and resume where libbpf stopped.
"""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from harness.collectors.eventfile import KERNEL
from harness.collectors.rings import Batch, RingSet, Trim, Watch, drain_lib_path

pytestmark = pytest.mark.bpf

N = 500
REC = 64
PROGRAM = r"""
BPF_RINGBUF_OUTPUT(out, 16);
BPF_ARRAY(seq, u32, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != PB_PID) return 0;
    u32 zero = 0;
    u32 *s = seq.lookup(&zero);
    if (!s) return 0;
    u32 n = *s;  /* one thread calls: no atomics (bcc's target has no fetch-add) */
    *s = n + 1;
    u8 *r = out.ringbuf_reserve(64);
    if (!r) return 0;
    __builtin_memset(r, 0xee, 64);
    r[0] = n % 5 == 0 ? 2 : 1;           /* kind: 2 is watched, 1 is trimmed */
    *(u32 *)(r + 4) = n % 40;            /* valid payload bytes after the 12-byte head */
    *(u32 *)(r + 8) = n;
    out.ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    return 0;
}
"""


def _drain(program: str, batch: Batch, got: list[bytes], calls: int) -> list[bytes]:
    """Load the program, call getppid() `calls` times, drain its ring `out` into the batch
    (on the timer: nothing wakes the poll); the records of the batches handed to `got`."""
    from harness.collectors.bpfsource import load_bcc

    b = load_bcc().BPF(text=program.encode(), cflags=[f"-DPB_PID={os.getpid()}"])
    rings = RingSet()
    try:
        rings.add_batch(b["out"], batch)
        libc = ctypes.CDLL(None)
        for _ in range(calls):
            libc.getppid()
        rings.poll(50)
        rings.consume()
    finally:
        rings.close()
        b.cleanup()
    data = b"".join(got)
    recs = []
    pos = 0
    while pos < len(data):
        rtype, n = struct.unpack_from("<BI", data, pos)
        assert rtype == KERNEL
        recs.append(data[pos + 5 : pos + 5 + n])
        pos += 5 + n
    assert pos == len(data)
    return recs


def test_bulk_drain_frames_trims_watches_and_resumes():
    if not drain_lib_path().exists():
        pytest.fail(f"{drain_lib_path()} missing: scripts/setup builds it")
    got: list[bytes] = []
    watched: list[int] = []
    counts = {"records": 0, "payload": 0}

    def on_batch(view: memoryview, records: int, payload: int, w: list[int]) -> None:
        got.append(bytes(view))
        counts["records"] += records
        counts["payload"] += payload
        watched.extend(w)

    # room for about ten records: the drain must stop libbpf and resume many times
    batch = Batch(on_batch, rec_type=KERNEL, kind_off=0, trim=Trim(1, 4, 12), watch=Watch(2, 8),
                  capacity=10 * (5 + REC), headroom=5 + REC)  # fmt: skip
    recs = _drain(PROGRAM, batch, got, N)
    assert batch.dropped == 0
    assert len(recs) == N == counts["records"] == batch.records
    assert counts["payload"] == sum(len(r) for r in recs)
    assert batch.batches > 1 and len(got) == batch.batches
    for i, r in enumerate(recs):
        assert struct.unpack_from("<I", r, 8)[0] == i  # every record, in order, once
        if i % 5 == 0:
            assert r[0] == 2 and len(r) == REC  # watched kind: whole
        else:
            assert r[0] == 1 and len(r) == 12 + i % 40  # trimmed to its valid bytes
    assert watched == list(range(0, N, 5))
    assert batch.trimmed_bytes == sum(REC - 12 - i % 40 for i in range(N) if i % 5)


PACKED = r"""
BPF_RINGBUF_OUTPUT(out, 16);
struct pack { u8 b[256]; };
BPF_PERCPU_ARRAY(scratch, struct pack, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != PB_PID) return 0;
    u32 zero = 0;
    struct pack *p = scratch.lookup(&zero);
    if (!p) return 0;
    __builtin_memset(p->b, 0xee, sizeof(p->b));
    /* three events of the trimmed kind (head: kind, count, pad, pad, u32 valid length,
     * u32 id), at 8-byte boundaries: 12 + 5, 12 + 0, 12 + 9 bytes */
    u32 at[3] = {0, 24, 40}, len[3] = {5, 0, 9};
    for (int i = 0; i < 3; i++) {
        u8 *e = &p->b[at[i]];
        e[0] = 1;
        e[1] = i == 0 ? 3 : 0;
        *(u32 *)(e + 4) = len[i];
        *(u32 *)(e + 8) = 100 + i;
    }
    out.ringbuf_output(p, 64, BPF_RB_NO_WAKEUP);
    return 0;
}
"""


def test_bulk_drain_takes_a_packed_record_apart():
    """One ring record packing three events comes out as three records, each cut to its
    valid bytes, the packing count zeroed: as if each had been submitted alone."""
    got: list[bytes] = []
    batch = Batch(lambda view, *_: got.append(bytes(view)), rec_type=KERNEL, kind_off=0,
                  trim=Trim(1, 4, 12, pack_off=1))  # fmt: skip
    recs = _drain(PACKED, batch, got, 1)
    assert batch.dropped == 0 and batch.records == 3
    assert [len(r) for r in recs] == [17, 12, 21]
    assert [struct.unpack_from("<I", r, 8)[0] for r in recs] == [100, 101, 102]
    assert all(r[0] == 1 and r[1] == 0 for r in recs)
    assert batch.trimmed_bytes == 64 - (17 + 12 + 21)
