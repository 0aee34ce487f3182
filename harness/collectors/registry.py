"""Every collector, registered once: other modules ask here and name none of them.

A new collector is one package under harness/collectors/<name>/ with a ``collector.py``
holding its ``COLLECTOR`` (see base.Collector), and its name added to NAMES."""

from __future__ import annotations

import importlib

from harness.collectors.base import Collector
from harness.errors import ProbebenchError

NAMES = ("kprobe", "uprobe", "tls")


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


def labels() -> dict[str, str]:
    return {c.name: c.label for c in collectors()}
