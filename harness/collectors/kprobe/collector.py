"""The kernel-side collector (syscall tracepoints), as the registry holds it."""

from __future__ import annotations

from pathlib import Path

from harness.collectors.base import BpfCost, Collector, CollectorOptions, Curve
from harness.collectors.kprobe.exchanges import replay_exchanges, replay_stream, variants


def _recorder_args(opts: CollectorOptions, _bins: list[Path], _follow: int | None) -> list[str]:
    return ["--max-capture", str(opts.max_capture), "--h2-body-limit", str(opts.h2_body_limit),
            "--h1-bodies", opts.h1_bodies,
            "--ringbuf-pages", str(opts.ringbuf_pages), "--kernel-hooks", opts.kernel_hooks,
            *(["--floor", opts.kprobe_floor] if opts.kprobe_floor != "none" else [])]


COLLECTOR = Collector(
    name="kprobe",
    label="kernel side (syscall tracepoints)",
    record_module="harness.collectors.kprobe.record",
    exchanges=replay_exchanges,
    stream=replay_stream,
    recorder_args=_recorder_args,
    variants=variants,
    color="#1f77b4",
    short="kernel side",
    family="kernel-side",
    # HPACK decoding as shipped (tolerant) and strict, both drawn after a late attach
    curves=(Curve("default", "tolerant", "-o"), Curve("hpack-strict", "strict", "--s", "#6aa8dc")),
    bpf=BpfCost(("tracepoint", "kprobe"), "tracepoint_added_ns", every_process=True),
    kernel_hooks=True,
    article={"stability": "strong", "multi-language": "strong", "compatibility": "strong",
             "ease of building": "complex", "data completeness": "degrades"},
    parts={
        "BPF C": ("bpf/kprobe_collector.c", "bpf/kprobe_events.h", "bpf/pb_common.h"),
        "decoding": ("harness/collectors/kprobe/decode.py",
                     "harness/collectors/kprobe/exchanges.py",
                     "harness/protocols/http1/*.py", "harness/protocols/http2/*.py",
                     "harness/protocols/common.py", "harness/protocols/sniff.py"),
        "loader": ("harness/collectors/kprobe/record.py", "harness/collectors/kprobe/layout.py",
                   "harness/collectors/sockdiag.py"),
    },
)  # fmt: skip
