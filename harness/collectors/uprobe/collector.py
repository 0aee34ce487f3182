"""The uprobe collector (grpc-go's HTTP/2 layer), as the registry holds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.collectors.base import BpfCost, Collector, CollectorOptions, Curve, GoLayouts
from harness.collectors.uprobe.discover import find_grpc_go_targets
from harness.collectors.uprobe.exchanges import replay_exchanges, replay_stream
from harness.collectors.uprobe.facts import binary_facts


def _recorder_args(opts: CollectorOptions, bins: list[Path], follow: int | None) -> list[str]:
    args = [a for b in bins for a in ("--binary", str(b))]
    if follow is not None:
        args += ["--follow", str(follow)]
    return [*args, "--level", opts.uprobe_level, "--value-max", str(opts.uprobe_value_max)]


def _observe_binaries(ports: list[int]) -> list[Path]:
    """grpc-go services already serving the ports are probed from the start."""
    return sorted({Path(t.exe) for t in find_grpc_go_targets(ports)})


def _observe_summary(stats: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Per binary: what was probed and from what (DWARF or the offsets table), and why each
    other one was not (not Go, no grpc-go, version not in table)."""
    bins = stats.get("binaries") or {}
    probed = sorted(b for b, v in bins.items() if v.get("probes"))
    lines = [f"uprobe probed: {', '.join(probed) or 'nothing'} (run.json: collectors.uprobe)"]
    lines += [f"uprobe: {b}: layouts from {bins[b].get('how') or 'DWARF'}" for b in probed]
    lines += [f"uprobe: {exe}: {verdict}"
              for exe, verdict in sorted((stats.get("followed") or {}).items())
              if exe not in probed and verdict.startswith("not probed")]  # fmt: skip
    lines += [f"uprobe: {problem}" for problem in stats.get("unsupported") or []]
    return {"uprobe_targets": probed}, lines


def _prepare_binaries(bins: list[Path]) -> None:
    """Resolve each binary now (cached by content hash; an error is an answer too)."""
    from harness.collectors.uprobe.resolve import resolve

    for b in bins:
        resolve(b)


def _go_layouts() -> GoLayouts:
    from harness.collectors.uprobe.resolve import FUNCTIONS, STRUCTS, TYPES

    return GoLayouts(FUNCTIONS, STRUCTS, TYPES)


COLLECTOR = Collector(
    name="uprobe",
    label="uprobe (grpc-go)",
    record_module="harness.collectors.uprobe.record",
    exchanges=replay_exchanges,
    stream=replay_stream,
    recorder_args=_recorder_args,
    observe_binaries=_observe_binaries,
    observe_summary=_observe_summary,
    color="#d62728",
    short="uprobe",
    family="uprobe",
    curves=(Curve(style=":^"),),
    bpf=BpfCost(("uprobe",), "uprobe_added_ns"),
    process_gap="uprobe_gap",
    binary_facts=binary_facts,
    go_layouts=_go_layouts,
    prepare_binaries=_prepare_binaries,
    article={"stability": "weak", "multi-language": "weak", "compatibility": "weak",
             "ease of building": "simple", "data completeness": "complete"},
    parts={
        "BPF C": ("bpf/uprobe_grpc.c", "bpf/uprobe_events.h", "bpf/uprobe_event_head.h",
                  "bpf/pb_common.h"),
        "decoding": ("harness/collectors/uprobe/decode.py",
                     "harness/collectors/uprobe/exchanges.py",
                     "harness/protocols/http2/grpc.py"),
        "loader": ("harness/collectors/uprobe/record.py", "harness/collectors/uprobe/layout.py",
                   "harness/collectors/uprobe/discover.py"),
        "target resolution": ("harness/collectors/uprobe/resolve.py",
                              "harness/collectors/gobin/elfgo.py"),
    },
)  # fmt: skip
