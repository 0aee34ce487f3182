"""doctor's judgement of what recording needs (root-free checks)."""

from __future__ import annotations

import pytest

from harness import doctor


def test_without_go_on_path_built_targets_still_let_it_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel guest shares the host's built checkout without Go on its PATH: recording
    runs the built targets, so a missing toolchain is a warning there, a failure only when
    a target must still be built."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(doctor, "_missing_targets", lambda: [])
    c = doctor.check_go()
    assert (c.status, c.required) == (doctor.WARN, False)
    assert doctor.can_record([c])
    monkeypatch.setattr(doctor, "_missing_targets", lambda: ["grpc-client"])
    c = doctor.check_go()
    assert (c.status, c.required) == (doctor.FAIL, True)
    assert not doctor.can_record([c])
