"""Connections a collector kept without an address are shown, by reason, in the summary."""

from __future__ import annotations

from harness.report.summary import summary_table


def test_connections_without_an_address_are_listed_by_reason() -> None:
    metrics = {
        "run_id": "r", "truth_vs_workload": None, "truth": {"exchanges": 0}, "rows": [],
        "collectors": {
            "kprobe": {
                "attach_ns": 1, "stats": {},
                "default": {"decode": {"addresses_unknown": {}}},
                "no-sockdiag": {"decode": {"addresses_unknown": {"lookup_disabled": 8,
                                                                 "socket_gone": 1}}},
            }
        },
    }  # fmt: skip
    out = summary_table(metrics)
    want = "kprobe no-sockdiag: connections without an address: lookup_disabled=8, socket_gone=1"
    assert want in out
    assert "kprobe default:" not in out
