"""The raw event file: what a killed collector leaves behind still reads, corruption is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.collectors.eventfile import KERNEL, NOTE, EventWriter, read_event_file
from harness.errors import RunDirError


def _write(path: Path, n: int) -> None:
    w = EventWriter(path, {"collector": "test"})
    for i in range(n):
        w.kernel(bytes([i]) * (10 + i))
        w.note({"i": i})
    w.close()


def test_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "e.bin"
    _write(f, 5)
    ef = read_event_file(f)
    assert ef.header == {"collector": "test"}
    recs = list(ef.records())
    assert [t for t, _ in recs] == [KERNEL, NOTE] * 5
    assert bytes(recs[4][1]) == bytes([2]) * 12
    assert recs[5][1] == {"i": 2}
    assert ef.truncated_tail_bytes == 0


@pytest.mark.parametrize("cut", [1, 3, 7])
def test_cut_short_keeps_every_whole_record(tmp_path: Path, cut: int) -> None:
    f = tmp_path / "e.bin"
    _write(f, 4)
    data = f.read_bytes()
    f.write_bytes(data[:-cut])
    ef = read_event_file(f)
    assert ef.kernel_records == 4 and ef.notes == 3  # the last note lost its tail
    assert ef.truncated_tail_bytes > 0
    assert len(list(ef.records())) == 7


def test_bad_magic_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "e.bin"
    f.write_bytes(b"not an event file at all")
    with pytest.raises(RunDirError, match="not a probebench event file"):
        read_event_file(f)


def test_corrupt_record_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "e.bin"
    _write(f, 2)
    data = bytearray(f.read_bytes())
    hlen = int.from_bytes(data[6:10], "little")
    data[10 + hlen] = 99  # first record's type
    f.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="corrupt record"):
        read_event_file(f)


@pytest.mark.parametrize("cut", [0, 1, 3, 7])
def test_unchecked_read_checks_as_it_goes(tmp_path: Path, cut: int) -> None:
    """check=False (a replay's single pass): the same records, counts and cut-off tail
    once read to the end, and a corrupt record still an error, raised where it is read."""
    f = tmp_path / "e.bin"
    _write(f, 4)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - cut])
    checked = read_event_file(f)
    lazy = read_event_file(f, check=False)
    got = [(t, bytes(r) if t == KERNEL else r) for t, r in lazy.records()]
    assert got == [(t, bytes(r) if t == KERNEL else r) for t, r in checked.records()]
    assert (lazy.kernel_records, lazy.notes, lazy.truncated_tail_bytes) == (
        checked.kernel_records, checked.notes, checked.truncated_tail_bytes)
    assert len(list(lazy.records())) == len(got)  # a second pass reads the same
    bad = bytearray(data)
    hlen = int.from_bytes(bad[6:10], "little")
    second = 10 + hlen + 5 + 10  # the second record: after the first (10 bytes of payload)
    bad[second] = 99
    f.write_bytes(bytes(bad))
    lazy = read_event_file(f, check=False)
    it = lazy.records()
    assert next(it)[0] == KERNEL  # read up to the corrupt record
    with pytest.raises(RunDirError, match="corrupt record"):
        next(it)
