"""The kernel-side recorder's sock_diag thread on a real BPF map and real sockets: it answers
every wanted (tgid, fd) and empties the map, and an empty map (its cheap idle check) writes
nothing."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from harness.collectors.bpfsource import load_bcc
from harness.collectors.eventfile import NOTE, read_event_file
from harness.collectors.kprobe.record import Recorder

pytestmark = pytest.mark.bpf

MAP = """
struct conn_key { u32 tgid; s32 fd; };
BPF_HASH(addr_wanted, struct conn_key, u64, 4096);
"""


def _notes(path: Path) -> list[dict]:
    return [r for t, r in read_event_file(path).records() if t == NOTE and isinstance(r, dict)]


def _run_loop(rec: Recorder, bpf: object, rounds_s: float) -> None:
    stop = threading.Event()
    t = threading.Thread(target=rec._sockdiag_loop, args=(bpf, stop), daemon=True)
    t.start()
    stop.wait(rounds_s)
    stop.set()
    t.join(10)
    assert not t.is_alive()


def test_wanted_sockets_are_answered_and_an_empty_map_writes_nothing(tmp_path: Path) -> None:
    bpf = load_bcc().BPF(text=MAP)
    wanted = bpf["addr_wanted"]
    me = os.getpid()
    idle = Recorder(tmp_path / "idle.bin", [me], [])
    _run_loop(idle, bpf, 0.6)  # several idle rounds: the map stays empty
    idle.writer.close()
    assert _notes(tmp_path / "idle.bin") == [] and idle.sockdiag_lookups == 0

    rec = Recorder(tmp_path / "ev.bin", [me], [])
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as c, srv.accept()[0]:
            wanted[wanted.Key(me, c.fileno())] = wanted.Leaf(1234)
            _run_loop(rec, bpf, 0.3)
    rec.writer.close()
    assert len(wanted.items()) == 0  # answered, then dropped from the map
    notes = [n for n in _notes(tmp_path / "ev.bin") if n["type"] == "sockdiag"]
    assert len(notes) == 1 and notes[0]["found"] and notes[0]["ts_ns"] == 1234
    assert notes[0]["remote_port"] == port
    bpf.cleanup()
