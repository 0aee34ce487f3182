"""How the OpenSSL TLS collector finds an SSL call's socket on a kernel: the sock
tracepoints where there are both (Linux 6.3+), else kprobes on the TCP functions, else a
clear refusal (a 6.1 guest failed every TLS test on the missing tracepoints)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.collectors.tls.sockhook import TRACEPOINTS, sock_hook
from harness.errors import CapabilityError


def _tracefs(tmp_path: Path, *events: str) -> Path:
    for e in events:
        (tmp_path / "events" / "sock" / e).mkdir(parents=True)
    return tmp_path


def test_tracepoints_where_the_kernel_has_both(tmp_path: Path) -> None:
    assert sock_hook(_tracefs(tmp_path, *TRACEPOINTS), kprobes=True) == "tracepoints"


@pytest.mark.parametrize("events", [(), ("sock_send_length",)])
def test_kprobes_before_6_3(tmp_path: Path, events: tuple[str, ...]) -> None:
    assert sock_hook(_tracefs(tmp_path, *events), kprobes=True) == "kprobes"


def test_neither_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CapabilityError, match=r"sock_send_length.*tcp_sendmsg.*neither"):
        sock_hook(_tracefs(tmp_path), kprobes=False)


def test_kprobes_told_by_the_tracefs_file(tmp_path: Path) -> None:
    (tmp_path / "kprobe_events").touch()
    assert sock_hook(tmp_path) == "kprobes"
