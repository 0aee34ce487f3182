"""observe scores up to the moment the collectors were told to stop."""

from __future__ import annotations

from harness.analysis.replay import _window
from harness.model import Exchange

UNTIL = 10_000


def _x(source: str, t: int, port: int) -> Exchange:
    return Exchange(
        source=source, side="client" if source != "truth" else "wire", protocol="http/1.1",
        client_ip="127.0.0.1", client_port=port, server_ip="127.0.0.1", server_port=80,
        conn_seq=0, method="GET", path="/", status=200, t_start_ns=t,
    )  # fmt: skip


def test_truth_after_the_end_is_not_scored_and_pairs_stay_whole() -> None:
    truth = [_x("truth", 5_000, 1), _x("truth", UNTIL + 50, 2), _x("truth", UNTIL + 9_000, 3)]
    # port 2: the client's send began just before the end, its packet left just after
    seen = [_x("kprobe", 5_000, 1), _x("kprobe", UNTIL - 50, 2), _x("kprobe", UNTIL + 9_000, 3)]
    t, s = _window(truth, seen, UNTIL)
    assert [x.client_port for x in t] == [1]
    assert [x.client_port for x in s] == [1]  # no phantom from either edge


def test_without_an_end_everything_is_scored() -> None:
    truth, seen = [_x("truth", UNTIL * 9, 1)], [_x("kprobe", UNTIL * 9, 1)]
    assert _window(truth, seen, None) == (truth, seen)


SINCE = 2_000


def test_before_the_truth_began_nothing_is_a_phantom_or_a_partner() -> None:
    # port 1: a collector saw it before the truth began: no phantom, and it must not take
    # port 1's next exchange (the first the truth has) as its partner;
    # port 2: wholly inside the window
    truth = [_x("truth", SINCE + 100, 1), _x("truth", 5_000, 2)]
    seen = [_x("kprobe", SINCE - 500, 1), _x("kprobe", SINCE + 90, 1), _x("kprobe", 5_000, 2)]
    seen[0].path = "/before"
    t, s = _window(truth, seen, UNTIL, SINCE)
    assert [x.client_port for x in t] == [1, 2]
    assert [(x.client_port, x.t_start_ns) for x in s] == [(1, SINCE + 90), (2, 5_000)]


def test_a_phantom_inside_the_window_stays_one() -> None:
    truth = [_x("truth", 5_000, 3)]
    seen = [_x("kprobe", 5_000, 3), _x("kprobe", 6_000, 4)]
    assert [x.client_port for x in _window(truth, seen, UNTIL, SINCE)[1]] == [3, 4]
