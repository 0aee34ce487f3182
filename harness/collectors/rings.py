"""One epoll over the ring buffers of several bcc programs.

bcc gives each program its own ring buffer manager, so a collector with several
programs would poll them in turn and answer each one a time slice late. libbcc's
manager accepts any ring buffer map fd, so one manager here serves them all: an
event from any program wakes the single poll at once. The exec gate relies on
that, since every exec it holds waits for this loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harness.collectors.bpfsource import load_bcc
from harness.errors import CollectorError

# (address, size) of one record; valid only during the call
RecordHandler = Callable[[int, int], None]


class RingSet:
    def __init__(self) -> None:
        libbcc = load_bcc().libbcc
        self._lib = libbcc.lib
        self._cb_type = libbcc._RINGBUF_CB_TYPE  # the argtypes of bpf_new/add_ringbuf use it
        self._mgr: int | None = None
        self._cbs: list[Any] = []  # ctypes callbacks must outlive the manager
        self._error: BaseException | None = None

    def add(self, table: Any, handler: RecordHandler) -> None:
        """Serve one BPF_RINGBUF_OUTPUT table (a bcc RingBuf) with ``handler``."""

        def cb(_ctx: Any, data: int, size: int) -> int:
            try:
                handler(data, size)
            except BaseException as e:  # ctypes would print and swallow it
                self._error = self._error or e
                return -1  # stops this poll; the error is raised after it
            return 0

        fn = self._cb_type(cb)
        if self._mgr is None:
            self._mgr = self._lib.bpf_new_ringbuf(table.map_fd, fn, None)
            if not self._mgr:
                raise CollectorError("libbcc could not open a ring buffer")
        elif self._lib.bpf_add_ringbuf(self._mgr, table.map_fd, fn, None) < 0:
            raise CollectorError("libbcc could not add a ring buffer")
        self._cbs.append(fn)

    def _raise_pending(self) -> None:
        if self._error is not None:
            e, self._error = self._error, None
            raise e

    def poll(self, timeout_ms: int) -> None:
        if self._mgr is None:
            time.sleep(timeout_ms / 1000)  # nothing to wait on yet
            return
        self._lib.bpf_poll_ringbuf(self._mgr, timeout_ms)
        self._raise_pending()

    def consume(self) -> None:
        """Read whatever is queued, without waiting."""
        if self._mgr is not None:
            self._lib.bpf_consume_ringbuf(self._mgr)
            self._raise_pending()

    def close(self) -> None:
        """Free the manager; call before the programs owning the maps are cleaned up."""
        if self._mgr is not None:
            self._lib.bpf_free_ringbuf(self._mgr)
            self._mgr = None
        self._cbs.clear()
