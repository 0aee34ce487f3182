"""Tests' helper: run a generator to its end, keeping what it yielded and what it returned."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

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
