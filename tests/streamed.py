"""Tests' helpers for streamed replays: run a stream to its end, and compare what it gave
with the whole replay's exchanges."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

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
