"""Every collector, registered once: other modules ask here and name none of them.

A new collector is one package under harness/collectors/<name>/ with a ``collector.py``
holding its ``COLLECTOR`` (see base.Collector), and its name added to NAMES."""

from __future__ import annotations

import importlib

from harness.collectors.base import Collector
from harness.errors import ProbebenchError

NAMES = ("kprobe", "uprobe", "tls")
# The seed article's two approach families (Collector.family), which its table compares
KERNEL_SIDE, UPROBE = "kernel-side", "uprobe"


def get(name: str) -> Collector:
    if name not in NAMES:
        raise ProbebenchError(f"unknown collector {name!r}; choose from {', '.join(NAMES)}")
    coll: Collector = importlib.import_module(f"harness.collectors.{name}.collector").COLLECTOR
    return coll


def collectors() -> list[Collector]:
    return [get(n) for n in NAMES]


def default_names() -> tuple[str, ...]:
    """What a run records when --collectors is not given."""
    return tuple(c.name for c in collectors() if c.default)


def tls_names() -> tuple[str, ...]:
    """Collectors added to the matrix's TLS cells."""
    return tuple(c.name for c in collectors() if c.tls)


def known(name: str) -> Collector | None:
    """The registered collector of that name, or None (a run recorded by another version)."""
    return get(name) if name in NAMES else None


def compared() -> list[Collector]:
    """The approaches the seed article compares: the collectors registered with its verdicts."""
    return [c for c in collectors() if c.article]


def approach(family: str) -> Collector | None:
    """The article's approach of that family (kernel-side, uprobe), if one is registered."""
    return next((c for c in compared() if c.family == family), None)
