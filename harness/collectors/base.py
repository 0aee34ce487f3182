"""What every collector has in common: the shape the registry holds, the options the runner
passes its recorder, and what its replay side takes and gives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.model import Exchange

# Capture defaults, defined once: recorders, runner and command line all read them here.
# 64 KiB per call covers Go's 32 KiB reads whole, so chunked framing stays in view.
DEFAULT_MAX_CAPTURE = 65536
# gRPC message-body bytes captured per frame-aware HTTP/2 call: none. No field needs them
# (messages are counted by their 5-byte prefixes, which are always kept), and they were
# most of the collector's cost on gRPC (1 MiB messages written to the event file).
DEFAULT_H2_BODY_LIMIT = 0
# HTTP/1 bodies on the kernel side: "skip" leaves the bodies it can frame out of the
# capture (no field needs their bytes, and they were most of what it wrote on HTTP/1);
# "capture" copies them like any bytes, up to --max-capture per call.
H1_BODIES = ("skip", "capture")
DEFAULT_H1_BODIES = "skip"
# 64 MiB: a Go client moving 256 KiB bodies outruns a Python consumer for a moment
DEFAULT_RINGBUF_PAGES = 16384
DEFAULT_VALUE_MAX = 16384  # header value bytes a uprobe copies; a longer one is marked cut
LEVELS = ("headers", "messages")  # --uprobe-level: what each call costs in hits
# The kernel side's attach points (collectors/kprobe/hooks.py): the published numbers are
# tracepoints'; kprobes where asked for and the kernel has them.
KERNEL_HOOKS = ("tracepoints", "kprobes")
DEFAULT_KERNEL_HOOKS = "tracepoints"


@dataclass
class CollectorOptions:
    """Recorder options of a run (run.json's params.options keeps these names)."""

    max_capture: int = DEFAULT_MAX_CAPTURE
    h2_body_limit: int = DEFAULT_H2_BODY_LIMIT  # gRPC message-body bytes per HTTP/2 call
    h1_bodies: str = DEFAULT_H1_BODIES  # kernel side: "skip" or "capture" HTTP/1 bodies
    ringbuf_pages: int = DEFAULT_RINGBUF_PAGES
    uprobe_level: str = "headers"  # or "messages": + one uprobe hit per DATA frame
    uprobe_value_max: int = DEFAULT_VALUE_MAX
    kernel_hooks: str = DEFAULT_KERNEL_HOOKS  # kernel side: "tracepoints" or "kprobes"
    kprobe_floor: str = "none"  # kernel side, the overhead bench only: a floor build


@dataclass(frozen=True)
class Variant:
    """A collector option compared in the report; replay applies it to one recording."""

    name: str = "default"
    use_sockdiag: bool = True
    hpack_mode: str = "tolerant"


VARIANTS = {
    v.name: v
    for v in (
        Variant(),
        Variant("no-sockdiag", use_sockdiag=False),
        Variant("hpack-strict", hpack_mode="strict"),
    )
}


@dataclass
class ObservedStats:
    connections: int = 0
    connections_by_proto: dict[str, int] = field(default_factory=dict)
    skipped_other_ports: int = 0
    # server port unknown and not one of the run's processes: cannot be tied to the run
    unattributed_connections: int = 0
    # HTTP/2 streams cut in two by lost events: the part after the gap is not a new call
    split_stream_tails: int = 0
    parse: dict[str, int] = field(default_factory=dict)
    decode: dict[str, Any] = field(default_factory=dict)
    # TLS connections: nothing in them can be decoded; by side, with and without address
    encrypted_connections: dict[str, int] = field(default_factory=dict)
    encrypted_without_address: int = 0

    def add_parse(self, stats: Any) -> None:
        """Add a stitcher's integer counters (its stats dataclass, slots or not) to ``parse``."""
        for f in dataclasses.fields(stats):
            v = getattr(stats, f.name)
            if isinstance(v, int) and not isinstance(v, bool):
                self.parse[f.name] = self.parse.get(f.name, 0) + v


@dataclass(frozen=True)
class EncryptedConn:
    """A connection whose bytes were TLS records, as one side saw it (for scoring)."""

    side: str
    client_port: int
    server_port: int
    start_ns: int
    end_ns: int | None


@dataclass
class ReplayInput:
    """What replay hands a collector's exchanges function for one recording."""

    events: Path
    ports: list[int]
    protocol: str  # the run's: http/1.0, http/1.1, h2c-grpc, h2c
    attach_at_ns: int | None = None  # a simulated attach; None: the recording's own
    target_pids: set[int] = field(default_factory=set)
    variant: Variant = field(default_factory=Variant)
    # out: connections seen only as TLS records, for the scoring to count
    encrypted: list[EncryptedConn] = field(default_factory=list)


Exchanges = Callable[[ReplayInput], tuple[list[Exchange], ObservedStats]]


@dataclass
class ExchangeBatch:
    """Exchanges a collector's replay has finished, as it reads its recording."""

    exchanges: list[Exchange]
    # no exchange of a later batch starts before this (monotonic ns); a stream's last batch
    # says 2**63: the scoring matches what starts before it and holds the rest
    watermark_ns: int
    # connections (conn_id) that yield nothing more: their matching state can go
    finished: list[str] = field(default_factory=list)


# A collector's replay as a stream: batches as its recording is read, its stats at the end
# (the generator's return value). Memory is bounded by what is open at once, not the run.
ExchangeStream = Generator[ExchangeBatch, None, ObservedStats]
STREAM_END_NS = 1 << 63


def whole_stream(exchanges: Exchanges, r: ReplayInput) -> ExchangeStream:
    """A collector without a streaming replay: all of its exchanges as one batch."""
    xs, st = exchanges(r)
    yield ExchangeBatch(xs, STREAM_END_NS, sorted({x.conn_id for x in xs if x.conn_id}))
    return st


def only_default(_attach: str, _protocol: str, _simulated: bool) -> tuple[str, ...]:
    return ("default",)


def no_arguments(_opts: CollectorOptions, _bins: list[Path], _follow: int | None) -> list[str]:
    return []


def no_binaries(_ports: list[int]) -> list[Path]:
    return []


def nothing_to_say(_stats: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    return {}, []


def always_covered(_lang: str | None, _grpc: bool) -> str | None:
    return None


def no_binary_facts(_stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return []


def nothing_to_prepare(_bins: list[Path]) -> None:
    return None


@dataclass(frozen=True)
class GoLayouts:
    """What a collector reads from a Go binary's DWARF: the offsets table
    (collectors/gobin/offsets.py) keeps these per version for binaries stripped of it."""

    functions: tuple[str, ...] = ()  # probed: parameters, and source lines as fingerprint
    structs: tuple[str, ...] = ()  # member offsets
    types: tuple[str, ...] = ()  # runtime type descriptors


@dataclass(frozen=True)
class Curve:
    """One late-attach recovery curve the report draws: a replay variant of a collector."""

    variant: str = "default"
    suffix: str = ""  # the series is "<collector> <suffix>", or the collector's name alone
    style: str = "-"  # matplotlib's marker and line format
    color: str | None = None  # None: the collector's colour


# The kinds a program of each kernel program type (BPF_PROG_TYPE_*) can be filed under, by
# how its name ends: uprobes load as kprobe programs.
PROG_TYPE_KINDS: dict[int, tuple[str, ...]] = {2: ("kprobe", "uprobe"), 5: ("tracepoint",)}


@dataclass(frozen=True)
class BpfCost:
    """Where the overhead benchmark files a collector's programs (bpf_run_time.by_kind) and
    the bare trap each of their hits pays (trap_cost), for the report's floor."""

    kinds: tuple[str, ...]  # its probes' kinds, the one the floor reads first
    trap: str  # the key of its bare trap in trap_cost
    helper_kind: str | None = None  # its helper tracepoints' kind, counted apart
    # its programs run for every process's syscalls and turn the others away: the bench
    # counts the target's hits apart (target_hits_per_exchange, idle <name>_ns_per_hit)
    every_process: bool = False

    def kind_of(self, prog_type: int) -> str:
        """The kind one of its programs is filed under, from the kernel's program type: the
        first of its kinds (then its helper kind) that the type can be; else the number."""
        ends = PROG_TYPE_KINDS.get(prog_type, ())
        for kind in (*self.kinds, *((self.helper_kind,) if self.helper_kind else ())):
            if kind.endswith(ends):
                return kind
        return str(prog_type)


@dataclass(frozen=True)
class Collector:
    """One collector, as every other module sees it: registered once, in its own package."""

    name: str  # run.json, metrics rows, events/<name>.bin
    label: str  # what the report calls it
    record_module: str  # `python -m` this to record
    exchanges: Exchanges  # replay: its recording -> Exchanges
    # replay as a stream (bounded memory); None: ``exchanges`` whole, as one batch
    stream: Callable[[ReplayInput], ExchangeStream] | None = None
    # recorder arguments beyond the common ones: (options, binaries, follow) -> argv
    recorder_args: Callable[[CollectorOptions, list[Path], int | None], list[str]] = no_arguments
    # replay variant names for a run: (attach, protocol, simulated attach) -> names;
    # attach is the run's --attach, or "observe" for an observe run
    variants: Callable[[str, str, bool], tuple[str, ...]] = only_default
    # why a side cannot be seen at all by this collector, or None: (lang, grpc) -> reason
    not_covered: Callable[[str | None, bool], str | None] = always_covered
    # observe: binaries already serving the ports, to probe from the start
    observe_binaries: Callable[[list[int]], list[Path]] = no_binaries
    # observe: from the collector's stats, params for run.json and lines to tell the user
    observe_summary: Callable[[dict[str, Any]], tuple[dict[str, Any], list[str]]] = (
        nothing_to_say)
    default: bool = True  # recorded when --collectors is not given
    tls: bool = False  # added to the matrix's TLS cells
    color: str = "grey"  # in the report's plots
    # the seed article's verdicts on this approach (criterion -> verdict), for the report's
    # side-by-side table; empty for a collector the article did not look at
    article: dict[str, str] = field(default_factory=dict)
    # the report's ease-of-implementation proxies: part -> files, relative to the repository
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # what the report's sentences and overhead tables call it (default: its name), and the
    # approach family it belongs to (kernel-side, uprobe, TLS): the article compares the
    # kernel-side and uprobe collectors it has verdicts for
    short: str = ""
    family: str = ""
    curves: tuple[Curve, ...] = (Curve(),)  # the late-attach recovery curves it adds
    bpf: BpfCost | None = None  # None: the overhead floor leaves it out
    kernel_hooks: bool = False  # attaches where --kernel-hooks says (tracepoints, kprobes)
    # the key in run.json's processes that says why it cannot see that process's stack
    process_gap: str | None = None
    # the report's ease section: per binary it probed, the facts it had to resolve, from
    # its stats in each run.json (the runs it was in)
    binary_facts: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = no_binary_facts
    # what it needs from Go binaries, for scripts/gen-grpc-offsets; None: nothing
    go_layouts: Callable[[], GoLayouts] | None = None
    # work out ahead, into its cache, what it will need to know of these binaries (a
    # kernel guest reads the host's answers instead of working them out 30-300x slower)
    prepare_binaries: Callable[[list[Path]], None] = nothing_to_prepare

    def replay_stream(self, r: ReplayInput) -> ExchangeStream:
        return self.stream(r) if self.stream is not None else whole_stream(self.exchanges, r)

    @property
    def called(self) -> str:
        return self.short or self.name

    def series(self, variant: str) -> str | None:
        """The recovery curve a metrics row of this variant belongs to, or None."""
        c = next((c for c in self.curves if c.variant == variant), None)
        return None if c is None else f"{self.name} {c.suffix}".strip()
