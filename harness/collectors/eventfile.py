"""The raw event file: what a collector records live, and replay reads back.

Layout: magic, a JSON header, then records ``u8 type | u32 length | payload``.
Type KERNEL holds one ring-buffer record byte for byte; type NOTE holds a JSON
object written by the collector's user space (sock_diag answers, stats).
A file cut short (the collector was killed) reads up to its last whole record
and reports the rest as ``truncated_tail_bytes``: nothing complete is lost.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from harness.errors import RunDirError

MAGIC = b"PBEV\x01\n"
KERNEL = 1
NOTE = 2
_REC = struct.Struct("<BI")
_MAX_RECORD = 1 << 26
# Mapped pages read stay in the process's resident set (its RSS counts them) until told
# otherwise: every this many bytes the pages behind the reader are let go. They stay in
# the page cache; a payload still held is faulted back in from there if read again.
_RELEASE_BYTES = 32 << 20


def _release(data: bytes | mmap.mmap, start: int, end: int) -> int:
    """Drop the mapping's pages in [start, end) from the resident set; returns where the
    next release starts (page-aligned)."""
    if not isinstance(data, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return start
    end -= end % mmap.PAGESIZE
    if end > start:
        data.madvise(mmap.MADV_DONTNEED, start, end - start)
        return end
    return start


class EventWriter:
    """Appends records, buffered. The header is on disk at once; the recorders flush after
    every poll, so a recorder killed outright (SIGKILL) loses at most its last poll's records
    and leaves a readable file, its cut-off tail counted by `read_event_file`."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        # a small buffer: a drained batch larger than it goes to write() straight from the
        # batch (no copy into the buffer first); notes and small batches are still gathered
        self._f: BinaryIO = path.open("wb", buffering=1 << 16)
        hdr = json.dumps(header, sort_keys=True).encode()
        self._f.write(MAGIC + struct.pack("<I", len(hdr)) + hdr)
        self._f.flush()
        self.records = 0
        self.bytes = 0

    def kernel(self, payload: bytes) -> None:
        self._f.write(_REC.pack(KERNEL, len(payload)))
        self._f.write(payload)
        self.records += 1
        self.bytes += len(payload)

    def kernel_framed(self, framed: memoryview | bytes, records: int, payload: int) -> None:
        """KERNEL records already framed (the C bulk drain of harness/collectors/rings.py)."""
        self._f.write(framed)
        self.records += records
        self.bytes += payload

    def note(self, obj: dict[str, Any]) -> None:
        payload = json.dumps(obj, sort_keys=True).encode()
        self._f.write(_REC.pack(NOTE, len(payload)) + payload)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


@dataclass
class EventFile:
    header: dict[str, Any]
    kernel_records: int = 0
    notes: int = 0
    truncated_tail_bytes: int = 0
    # the file's bytes, mapped (not read): a recording of minutes is gigabytes, and mapped
    # pages are the page cache's to drop, not the replay's resident memory
    _data: bytes | mmap.mmap = field(default=b"", repr=False)
    _start: int = 0
    _end: int = 0
    # read_event_file(check=False): the framing is checked by the first ``records`` pass,
    # which sets the counts and ``truncated_tail_bytes`` once it has ended
    _unchecked: str | None = field(default=None, repr=False)  # the file's path, for errors

    def records(self) -> Iterator[tuple[int, memoryview | dict[str, Any]]]:
        """(KERNEL, raw bytes) or (NOTE, dict), in recording order, read as iterated."""
        data = self._data
        view = memoryview(data)
        unpack = _REC.unpack_from
        size = _REC.size
        pos, end = self._start, self._end
        path = self._unchecked
        if path is not None:
            end = len(data)
        kernel = notes = 0
        released = 0
        while pos + size <= end:
            rtype, n = unpack(data, pos)
            if path is not None and (rtype not in (KERNEL, NOTE) or n > _MAX_RECORD):
                raise RunDirError(_corrupt(path, pos, rtype, n))
            if pos + size + n > end:
                break
            payload = view[pos + size : pos + size + n]
            pos += size + n
            if pos - released >= _RELEASE_BYTES:
                released = _release(data, released, pos - size - n)
            if rtype == KERNEL:
                kernel += 1
                yield KERNEL, payload
            elif rtype == NOTE:
                notes += 1
                yield NOTE, json.loads(bytes(payload))
        if path is not None:  # checked now, to the end: as read_event_file would say it
            self.kernel_records, self.notes = kernel, notes
            self.truncated_tail_bytes = end - pos
            self._end, self._unchecked = pos, None


def _corrupt(path: str | Path, pos: int, rtype: int, n: int) -> str:
    return f"{path}: corrupt record at byte {pos} (type {rtype}, length {n})"


def _map(path: Path) -> bytes | mmap.mmap:
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_event_file(path: Path, *, check: bool = True) -> EventFile:
    """Open a recording; a corrupt start raises RunDirError, a cut-off end is counted.

    The framing of every record is checked here, in one pass over the mapped file;
    payloads are only read when `EventFile.records` is iterated. ``check`` False leaves
    the check to the first ``records`` pass (a corrupt record raises there; the counts
    and ``truncated_tail_bytes`` are known once it ended): a soak's 15 M records took
    15 CPU-s to check before the replay read them again."""
    try:
        data = _map(path)
    except OSError as e:
        raise RunDirError(f"cannot read event file {path}: {e.strerror}") from e
    if data[: len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + 4:
        raise RunDirError(f"{path} is not a probebench event file (bad magic)")
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    hstart = len(MAGIC) + 4
    try:
        header = json.loads(data[hstart : hstart + hlen])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: event file header is corrupt ({e})") from e
    ef = EventFile(header=header, _data=data, _start=hstart + hlen)
    if not check:
        ef._unchecked = str(path)
        return ef
    # one pass to validate framing and count; stops at the first impossible record
    pos, end = ef._start, len(data)
    unpack = _REC.unpack_from
    size = _REC.size
    kernel = notes = 0
    released = 0
    while pos + size <= end:
        if pos - released >= _RELEASE_BYTES:
            released = _release(data, released, pos)
        rtype, n = unpack(data, pos)
        if rtype == KERNEL:
            kernel += 1
        elif rtype == NOTE:
            notes += 1
        else:
            raise RunDirError(_corrupt(path, pos, rtype, n))
        if n > _MAX_RECORD:
            raise RunDirError(_corrupt(path, pos, rtype, n))
        if pos + size + n > end:
            if rtype == KERNEL:
                kernel -= 1
            else:
                notes -= 1
            break
        pos += size + n
    _release(data, released, pos)
    ef.kernel_records, ef.notes = kernel, notes
    ef.truncated_tail_bytes = end - pos
    ef._end = pos
    return ef
