"""The TLS collector (OpenSSL and Go crypto/tls plaintext), as the registry holds it."""

from __future__ import annotations

from pathlib import Path

from harness.collectors.base import BpfCost, Collector, CollectorOptions, GoLayouts
from harness.collectors.tls.exchanges import not_covered, replay_exchanges, replay_stream


def _recorder_args(_opts: CollectorOptions, bins: list[Path], _follow: int | None) -> list[str]:
    return [a for b in bins for a in ("--binary", str(b))]


def _prepare_binaries(bins: list[Path]) -> None:
    """Each Go binary's crypto/tls probes, worked out now (cached by content hash)."""
    from harness.collectors.tls.gotls import resolve_go_tls

    for b in bins:
        resolve_go_tls(b)


def _go_layouts() -> GoLayouts:
    from harness.collectors.tls.gotls import TLS_STRUCTS

    return GoLayouts(structs=TLS_STRUCTS)


COLLECTOR = Collector(
    name="tls",
    label="TLS library probes",
    record_module="harness.collectors.tls.record",
    exchanges=replay_exchanges,
    stream=replay_stream,
    recorder_args=_recorder_args,
    not_covered=not_covered,
    default=False,
    tls=True,
    short="tls",
    family="TLS",
    # its uprobes pay a uprobe's trap; its socket tracepoints (which socket an SSL call
    # used) are counted apart
    bpf=BpfCost(("tls_uprobe",), "uprobe_added_ns", helper_kind="tls_tracepoint"),
    go_layouts=_go_layouts,
    prepare_binaries=_prepare_binaries,
)
