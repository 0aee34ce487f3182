"""One epoll over the ring buffers of several bcc programs, drained per record or in bulk.

bcc gives each program its own ring buffer manager, so a collector with several
programs would poll them in turn and answer each one a time slice late. libbcc's
manager accepts any ring buffer map fd, so one manager here serves them all: an
event from any program wakes the single poll at once. The exec gate relies on
that, since every exec it holds waits for this loop.

Two ways to take records:

- ``add(table, handler)``: a Python call per record (the uprobe collector, whose
  records are few and whose exec gate must answer each one).
- ``add_batch(table, batch)``: libbcc calls a C function (``libpbdrain.so``, built
  by scripts/setup) that appends each record to a batch buffer already framed
  for the event file; Python sees one batch per poll. At tens of thousands of
  records per second the per-record Python callback was most of the recorder's
  CPU (issue 10), and with it the kernel's wake-ups and context switches.

Producers that submit with BPF_RB_NO_WAKEUP wake nobody, so ``poll`` always
consumes after its wait: a quiet ring is drained on the timer.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.collectors.bpfsource import load_bcc
from harness.errors import CollectorError

# (address, size) of one record; valid only during the call
RecordHandler = Callable[[int, int], None]

DRAIN_LIB_ENV = "PROBEBENCH_DRAIN_LIB"
WATCH_MAX = 64  # PB_WATCH_MAX in native/pbdrain.c
DEFAULT_BATCH_BYTES = 8 << 20
# the largest record a batch must always have room for (kprobe: 16 KiB chunk + header)
DEFAULT_HEADROOM = 1 << 18


def drain_lib_path() -> Path:
    """Where scripts/setup puts the bulk-drain helper: in the venv, beside its Python."""
    env = os.environ.get(DRAIN_LIB_ENV)
    return Path(env) if env else Path(sys.prefix) / "lib" / "probebench" / "libpbdrain.so"


class _CBatch(ctypes.Structure):
    """struct pb_batch of native/pbdrain.c, field for field."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("cap", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("records", ctypes.c_uint64),
        ("payload", ctypes.c_uint64),
        ("trimmed", ctypes.c_uint64),
        ("headroom", ctypes.c_uint64),
        ("dropped", ctypes.c_uint64),
        ("rec_type", ctypes.c_uint32),
        ("kind_off", ctypes.c_int32),
        ("trim_kind", ctypes.c_uint32),
        ("trim_len_off", ctypes.c_uint32),
        ("trim_base", ctypes.c_uint32),
        ("pack_off", ctypes.c_int32),
        ("watch_kind", ctypes.c_uint32),
        ("watch_off", ctypes.c_uint32),
        ("nwatched", ctypes.c_uint32),
        ("watched", ctypes.c_uint32 * WATCH_MAX),
    ]


@dataclass(frozen=True)
class Trim:
    """Records of ``kind`` are cut to ``base + u32 at len_off`` bytes (reserved, not valid).
    With ``pack_off``, the u8 there counts the events of that kind one record packs (0 or 1:
    one), each at an 8-byte boundary; each is taken as its own record, the count zeroed."""

    kind: int
    len_off: int
    base: int
    pack_off: int = -1


@dataclass(frozen=True)
class Watch:
    """Records of ``kind`` report their u32 at ``off`` (e.g. the tgid of an exit)."""

    kind: int
    off: int


BatchHandler = Callable[[memoryview, int, int, list[int]], None]


class Batch:
    """A batch buffer the C callback fills: (framed bytes, records, payload bytes, watched)."""

    def __init__(
        self,
        on_batch: BatchHandler,
        *,
        rec_type: int,
        kind_off: int = -1,
        trim: Trim | None = None,
        watch: Watch | None = None,
        capacity: int = DEFAULT_BATCH_BYTES,
        headroom: int = DEFAULT_HEADROOM,
    ) -> None:
        if capacity < 2 * headroom:
            raise CollectorError("a drain batch needs room for two of its largest records")
        self.on_batch = on_batch
        self._buf = (ctypes.c_uint8 * capacity)()
        self.c = _CBatch(buf=ctypes.addressof(self._buf), cap=capacity, rec_type=rec_type,
                         kind_off=kind_off, trim_kind=256, watch_kind=256, pack_off=-1,
                         headroom=headroom)  # fmt: skip
        if trim is not None:
            self.c.trim_kind, self.c.trim_len_off = trim.kind, trim.len_off
            self.c.trim_base, self.c.pack_off = trim.base, trim.pack_off
        if watch is not None:
            self.c.watch_kind, self.c.watch_off = watch.kind, watch.off
        self.batches = 0  # Python calls made, for the recorder's stats
        self.records = 0
        self.trimmed_bytes = 0

    @property
    def dropped(self) -> int:
        """Records lost because one was larger than the headroom (a bug if ever nonzero)."""
        return int(self.c.dropped)

    def empty(self) -> bool:
        return self.c.len == 0 and self.c.nwatched == 0

    def hand_over(self) -> None:
        if self.empty():
            return
        c = self.c
        view = memoryview(self._buf).cast("B")[: c.len]
        watched = list(c.watched[: c.nwatched])
        records, payload = c.records, c.payload
        self.batches += 1
        self.records += records
        self.trimmed_bytes += c.trimmed
        try:
            self.on_batch(view, records, payload, watched)
        finally:
            view.release()
            c.len = c.records = c.payload = c.trimmed = c.nwatched = 0


class RingSet:
    def __init__(self) -> None:
        libbcc = load_bcc().libbcc
        self._lib = libbcc.lib
        self._cb_type = libbcc._RINGBUF_CB_TYPE  # the argtypes of bpf_new/add_ringbuf use it
        self._mgr: int | None = None
        self._cbs: list[Any] = []  # ctypes callbacks must outlive the manager
        self._batches: list[Batch] = []
        self._error: BaseException | None = None
        self._native: Any = None

    def _attach(self, table: Any, fn: Any, ctx: Any) -> None:
        if self._mgr is None:
            self._mgr = self._lib.bpf_new_ringbuf(table.map_fd, fn, ctx)
            if not self._mgr:
                raise CollectorError("libbcc could not open a ring buffer")
        elif self._lib.bpf_add_ringbuf(self._mgr, table.map_fd, fn, ctx) < 0:
            raise CollectorError("libbcc could not add a ring buffer")
        self._cbs.append(fn)

    def add(self, table: Any, handler: RecordHandler) -> None:
        """Serve one BPF_RINGBUF_OUTPUT table (a bcc RingBuf) with ``handler``, per record."""

        def cb(_ctx: Any, data: int, size: int) -> int:
            try:
                handler(data, size)
            except BaseException as e:  # ctypes would print and swallow it
                self._error = self._error or e
                return -1  # stops this poll; the error is raised after it
            return 0

        self._attach(table, self._cb_type(cb), None)

    def add_batch(self, table: Any, batch: Batch) -> None:
        """Serve one ring buffer in bulk: the C callback fills ``batch``, handed over per poll."""
        if self._native is None:
            path = drain_lib_path()
            try:
                self._native = ctypes.CDLL(str(path))
            except OSError as e:
                raise CollectorError(f"the bulk-drain helper {path} is missing or broken "
                                     f"(scripts/setup builds it): {e}") from e  # fmt: skip
        fn = self._cb_type(ctypes.cast(self._native.pb_batch_append, ctypes.c_void_p).value)
        self._attach(table, fn, ctypes.addressof(batch.c))
        self._batches.append(batch)

    def _raise_pending(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def _drain(self, rc: int) -> None:
        """Hand the batches over; while a full one stopped libbcc, consume again."""
        for _ in range(1 << 16):  # bounded: each turn empties at least one full batch
            self._raise_pending()
            # a batch stopped libbpf (nearly full, its record kept): empty it, consume again
            full = rc < 0 and any(not b.empty() for b in self._batches)
            for b in self._batches:
                b.hand_over()
            if not full:
                return
            assert self._mgr is not None
            rc = self._lib.bpf_consume_ringbuf(self._mgr)
        raise CollectorError("the ring buffers kept the batch full for 65536 turns")

    def poll(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for a wake-up, then read everything queued."""
        if self._mgr is None:
            time.sleep(timeout_ms / 1000)  # nothing to wait on yet
            return
        rc = self._lib.bpf_poll_ringbuf(self._mgr, timeout_ms)
        if rc >= 0 and self._batches:
            # producers that skip the wake-up leave epoll silent: read on the timer too
            rc = self._lib.bpf_consume_ringbuf(self._mgr)
        self._drain(rc)

    def consume(self) -> None:
        """Read whatever is queued, without waiting."""
        if self._mgr is not None:
            self._drain(self._lib.bpf_consume_ringbuf(self._mgr))

    def close(self) -> None:
        """Free the manager; call before the programs owning the maps are cleaned up."""
        if self._mgr is not None:
            self._lib.bpf_free_ringbuf(self._mgr)
            self._mgr = None
        self._cbs.clear()
        self._batches.clear()
