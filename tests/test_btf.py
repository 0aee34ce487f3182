"""Kernel struct offsets from BTF, for the kernel-side collector's fd -> socket walk."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.collectors.btf import VMLINUX, Btf, socket_walk_defines
from harness.errors import CollectorError

needs_btf = pytest.mark.skipif(not VMLINUX.exists(), reason="no /sys/kernel/btf/vmlinux")


@needs_btf
def test_offsets_of_the_running_kernel() -> None:
    d = socket_walk_defines()
    assert d["PB_FD_SOCK"] == 1
    # sock_common's head has kept its layout for a decade: addresses, then ports
    assert (d["PB_OFF_SK_DADDR"], d["PB_OFF_SK_SADDR"]) == (0, 4)
    assert (d["PB_OFF_SK_DPORT"], d["PB_OFF_SK_NUM"]) == (12, 14)
    # members found inside anonymous unions and structs, at distinct places
    walk = [v for k, v in d.items() if k.startswith("PB_OFF_FILE_")]
    assert len(set(walk)) == len(walk) and all(v % 8 == 0 for v in walk)


@needs_btf
def test_a_missing_member_is_a_clear_error() -> None:
    btf = Btf(VMLINUX.read_bytes())
    with pytest.raises(CollectorError, match="has no member"):
        btf.offset("sock_common", "no_such_member")
    with pytest.raises(CollectorError, match="no struct"):
        btf.offset("no_such_struct", "x")


def test_not_btf_falls_back_to_no_socket_walk(tmp_path: Path) -> None:
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(CollectorError, match="not a BTF blob"):
        Btf(bad.read_bytes())
    assert socket_walk_defines(bad) == {"PB_FD_SOCK": 0}
    assert socket_walk_defines(tmp_path / "absent") == {"PB_FD_SOCK": 0}


@needs_btf
def test_cached_offsets_equal_a_fresh_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = socket_walk_defines(use_cache=False)
    assert socket_walk_defines() == fresh  # computed, then written
    (entry,) = (tmp_path / "probebench" / "btf").glob("*.json")
    assert socket_walk_defines() == fresh  # read back
    entry.write_text("{not json")  # a corrupt entry is computed again, never trusted
    assert socket_walk_defines() == fresh


@needs_btf
def test_a_member_that_must_lead_its_struct_and_does_not_turns_the_walk_off() -> None:
    """The walk reads sock_common's fields off the sock pointer: on a kernel where sock
    did not begin with it, the walk is off (not reading the wrong bytes)."""
    from harness.collectors.btf import _offsets

    blob = VMLINUX.read_bytes()
    assert _offsets(blob, ((None, "sock", "__sk_common"),), "F") == {"F": 1}
    # sk_type is not sock's first member: a stand-in for a layout that moved
    assert _offsets(blob, (("X", "sock", "sk_protocol"), (None, "sock", "sk_type")), "F") == {
        "F": 0}
