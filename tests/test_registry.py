"""The collector registry: what each registration tells the report, and that the report and
the analysis ask the registry instead of naming collectors. No root needed."""

from __future__ import annotations

import re
from pathlib import Path

from harness.collectors import registry
from harness.collectors.base import VARIANTS
from harness.collectors.gobin.offsets_gen import wanted
from harness.report.bench import CONFIG_LABEL, BenchView
from harness.report.tables import recovery_series

ROOT = Path(__file__).resolve().parent.parent
# a collector's name as a string literal: the registry and its own package may write it
NAMED = re.compile(r"""["'](""" + "|".join(registry.NAMES) + r""")["']""")


def test_report_and_analysis_name_no_collector() -> None:
    files = [p for d in ("report", "analysis") for p in sorted((ROOT / "harness" / d).glob("*.py"))]
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if NAMED.search(line) and not line.lstrip().startswith("#")]  # fmt: skip
    # "tls" is also a run.json parameter and a metrics key (TLS on or off), not a collector
    hits = [h for h in hits if not re.search(r"""["']tls["']\s*:|get\(["']tls["']\)""", h)]
    assert hits == []


def test_the_article_compares_one_collector_of_each_family() -> None:
    kern, upr = registry.approach(registry.KERNEL_SIDE), registry.approach(registry.UPROBE)
    assert kern is not None and upr is not None and kern != upr
    assert [c.name for c in registry.compared()] == [kern.name, upr.name]
    for c in registry.compared():
        assert set(c.article) == {"stability", "multi-language", "compatibility",
                                  "ease of building", "data completeness"}  # fmt: skip


def test_each_collector_has_its_report_facts() -> None:
    kinds: list[str] = []
    for c in registry.collectors():
        assert c.family and c.called and c.label and c.color
        assert all(v.variant in VARIANTS for v in c.curves), c.name
        if c.bpf:
            kinds += [*c.bpf.kinds, *([c.bpf.helper_kind] if c.bpf.helper_kind else [])]
        for part, globs in c.parts.items():  # the ease section counts these files
            assert all(list(ROOT.glob(g)) for g in globs), (c.name, part)
    # the per-hit table names a program kind's collector: one owner per kind
    assert len(kinds) == len(set(kinds))


def test_each_program_type_files_under_one_of_its_collectors_kinds() -> None:
    """The overhead bench files each program it reads (fdinfo's prog_type) under a kind its
    collector's BpfCost declares: uprobes load as kprobe programs."""
    kprobe, tracepoint = 2, 5
    got = {c.name: (c.bpf.kind_of(kprobe), c.bpf.kind_of(tracepoint))
           for c in registry.collectors() if c.bpf}  # fmt: skip
    for c in registry.collectors():
        if c.bpf:
            assert set(got[c.name]) <= {*c.bpf.kinds, c.bpf.helper_kind, "5"}, c.name
    kern, upr = registry.approach(registry.KERNEL_SIDE), registry.approach(registry.UPROBE)
    assert kern is not None and upr is not None
    assert got[kern.name] == ("kprobe", "tracepoint")
    assert got[upr.name][0] == "uprobe"
    assert kern.bpf is not None and kern.bpf.kind_of(99) == "99"  # an unknown type, as is


def test_recovery_series_and_overhead_labels_come_from_the_registry() -> None:
    kern = registry.approach(registry.KERNEL_SIDE)
    assert kern is not None
    series = {recovery_series(kern.name, v) for v in VARIANTS}
    assert None in series  # a variant the curves leave out (no-sockdiag)
    assert len(series - {None}) == len(kern.curves)
    # a collector this version does not register (an old run's) keeps its default curve
    assert recovery_series("gone", "default") == "gone"
    assert recovery_series("gone", "hpack-strict") is None
    assert CONFIG_LABEL[kern.name] == kern.called and CONFIG_LABEL["both"] == "both"


def test_per_hit_rows_name_the_owning_collector() -> None:
    view = BenchView(data={"bpf_run_time": {"w/go2go": {"by_kind": {
        kind: {"programs": 1, "hits_per_exchange": 1.0, "ns_per_exchange": 10.0,
               "ns_per_hit": 10.0, "run_cnt": 5}
        for c in registry.collectors() if c.bpf for kind in c.bpf.kinds[:1]} | {
        "mystery": {"programs": 1, "run_cnt": 1}}}}})  # fmt: skip
    what = list(view.per_hit_frame()["what"])
    for c in registry.collectors():
        if c.bpf:
            assert f"{c.bpf.kinds[0]} programs (1) of the {c.family} collector" in what
    assert "mystery programs (1)" in what  # no owner is made up


def test_offsets_generator_reads_what_the_collectors_declare() -> None:
    w = wanted()
    declared = [c.go_layouts() for c in registry.collectors() if c.go_layouts]
    assert len(declared) >= 2  # the grpc-go probes and Go crypto/tls share the table
    for d in declared:
        assert set(d.functions) <= set(w.functions) and set(d.structs) <= set(w.structs)
    assert len(w.structs) == len(set(w.structs))
