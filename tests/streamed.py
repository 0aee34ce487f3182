"""Tests' helpers for streamed replays: run a stream to its end, and compare what it gave
with the whole replay's exchanges."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

from harness.analysis.match import StreamMatcher, Verdict
from harness.model import Exchange

Y = TypeVar("Y")
R = TypeVar("R")


def drain(gen: Generator[Y, object, R]) -> tuple[list[Y], R]:
    """Every item ``gen`` yields, in order, and its return value (a stream's final stats)."""
    items: list[Y] = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            return items, stop.value


def assert_same_exchanges(
    whole: list[Exchange], got: list[Exchange], key: Callable[[Exchange], tuple[Any, ...]]
) -> None:
    """``got`` holds exactly ``whole``'s exchanges, each field for field, told apart by ``key``."""
    by = {key(x): x.to_dict() for x in whole}
    assert len(by) == len(whole), "the key must tell every exchange apart"
    assert sorted(map(key, got)) == sorted(by)
    assert all(x.to_dict() == by[key(x)] for x in got)


def matcher_peak(
    truth: Iterable[tuple[int, Exchange]], seen: Iterable[Exchange],
    ends: dict[str, int] | None = None,
) -> dict[str, int]:
    """The most state a StreamMatcher held (its ``retained()``, sampled every 101 pairs)
    while it matched ``seen`` against ``truth``; ``pairs`` counts the pairs. Every pair is
    exact and nothing is a phantom."""
    peak: dict[str, int] = {"pairs": 0}
    phantoms: list[Exchange] = []

    def on_pair(v: Verdict) -> None:
        assert not v.degraded
        peak["pairs"] += 1
        if peak["pairs"] % 101 == 0:
            for k, c in m.retained().items():
                peak[k] = max(peak.get(k, 0), c)

    m = StreamMatcher(on_pair, phantoms.append)
    m.run(truth, seen, ends=ends)
    assert not phantoms
    return peak
