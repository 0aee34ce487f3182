"""The report's numbers, by the definitions DESIGN.md fixes (completeness, degradation, ...)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness.analysis.match import FIELD_VALUES, Verdict, match_into, required_fields
from harness.model import TRUNCATED_PAYLOAD, Exchange

DEFINITIONS = {
    "observable": "truth exchanges that started after the collector attached",
    "completeness": "observable truth exchanges matched by a collector exchange / observable",
    "degradation_rate": "matched exchanges with one or more required fields missing or wrong "
    "/ matched",
    "exact_rate": "matched and not degraded / observable",
    "wrong": "matched exchanges with at least one field whose value differs from the truth "
    "(worse than missing; also counted in degraded)",
    "phantoms": "collector exchanges with a connection address but no truth partner",
    "unmatched_no_address": "collector exchanges with neither an address nor a decoded "
    "exchange id: nothing ties them to a truth exchange (counted apart from phantoms)",
    "pre_attach": "collector exchanges whose truth partner started before the attach "
    "(a late attach caught their tail); neither observable nor phantom",
    "lost_events": "records the kernel could not queue (ring buffer full), from the in-kernel "
    "drop counter",
    "undecodable": "observable truth exchanges the collector saw but could not decode, by "
    "reason (encrypted: on a connection whose bytes were TLS records); never matched, "
    "never phantoms",
    "recovery": "per call index on a connection after the attach (0 = first call seen): "
    "[index, required fields correct, required fields the truth has], summed over connections",
    "unjudged": "matched exchanges' fields the truth itself could not determine, as "
    "'field:reason' (e.g. truth_hpack_unknown: Wireshark missed the HPACK table's start; "
    "method:truth_unreliable: a request Wireshark never decoded whose response it did); "
    "neither correct nor degraded",
    "self_reported": "matched exchanges' fields the collector marked unknown itself, as "
    "'field:reason', whether or not the truth could judge them",
}
RECOVERY_CALLS = 20  # call indexes the recovery curve keeps; later calls are pooled in the last


@dataclass
class Row:
    scenario: str
    protocol: str
    client: str
    server: str
    attach: str
    collector: str
    side: str
    variant: str
    observable: int = 0
    matched: int = 0
    degraded: int = 0
    wrong: int = 0
    phantoms: int = 0
    unmatched_no_address: int = 0
    pre_attach: int = 0
    lost_events: int = 0
    truncated_payloads: int = 0
    degraded_by_field: dict[str, int] = field(default_factory=dict)
    degraded_by_reason: dict[str, int] = field(default_factory=dict)
    wrong_by_field: dict[str, int] = field(default_factory=dict)
    recovery: list[list[int]] = field(default_factory=list)
    grpc_go: str | None = None
    tls: str | None = None  # TLS version of a TLS run
    undecodable: dict[str, int] = field(default_factory=dict)
    not_covered: str | None = None  # why this collector cannot see this side at all
    unjudged: dict[str, int] = field(default_factory=dict)
    self_reported: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["completeness"] = self.matched / self.observable if self.observable else None
        d["degradation_rate"] = self.degraded / self.matched if self.matched else None
        d["exact_rate"] = (
            (self.matched - self.degraded) / self.observable if self.observable else None
        )
        return d


class Scorer:
    """One row's numbers, added up as truth, verdicts and phantoms stream past: nothing is
    kept per exchange, so a row costs the same for a second of traffic as for an hour."""

    def __init__(self, row: Row, attach_ns: int) -> None:
        self.row, self.attach_ns = row, attach_ns
        self._fields: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._wrong: Counter[str] = Counter()
        self._correct_at: Counter[int] = Counter()
        # a late attach's HPACK losses show here even where the truth lost the same fields
        self._unjudged: Counter[str] = Counter()
        self._self_reported: Counter[str] = Counter()
        self._total_at: Counter[int] = Counter()
        self._addressless = self._phantoms = 0

    def truth(self, t: Exchange) -> None:
        if (t.t_start_ns or 0) >= self.attach_ns:
            self.row.observable += 1

    def pair(self, v: Verdict) -> None:
        row = self.row
        if (v.truth.t_start_ns or 0) < self.attach_ns:
            row.pre_attach += 1
            return
        idx = min(v.observed.conn_seq or 0, RECOVERY_CALLS - 1)
        values = FIELD_VALUES[required_fields(v.truth.protocol)](v.truth)
        # the fields the truth has (0 counts; None and empty header sets do not)
        have = len(values) - values.count(None) - values.count({})
        self._total_at[idx] += have
        self._correct_at[idx] += have - len(v.missing) - len(v.wrong)
        row.matched += 1
        if v.degraded:
            row.degraded += 1
        if v.wrong:
            row.wrong += 1
        for f, r in v.missing.items():
            self._fields[f] += 1
            self._reasons[r] += 1
        for f in v.wrong:
            self._fields[f] += 1
            self._wrong[f] += 1
            self._reasons["wrong_value"] += 1
        if v.truth.degraded:
            self._unjudged.update(f"{d.field}:{d.reason}" for d in v.truth.degraded)
        if v.observed.degraded:
            if any(d.reason == TRUNCATED_PAYLOAD for d in v.observed.degraded):
                row.truncated_payloads += 1
            self._self_reported.update(f"{d.field}:{d.reason}" for d in v.observed.degraded)

    def phantom(self, x: Exchange) -> None:
        if x.client_port is None or x.server_port is None:
            self._addressless += 1
        else:
            self._phantoms += 1

    def done(self) -> Row:
        row = self.row
        row.unmatched_no_address = self._addressless
        row.phantoms = self._phantoms
        row.degraded_by_field = dict(sorted(self._fields.items()))
        row.degraded_by_reason = dict(sorted(self._reasons.items()))
        row.wrong_by_field = dict(sorted(self._wrong.items()))
        row.unjudged = dict(sorted(self._unjudged.items()))
        row.self_reported = dict(sorted(self._self_reported.items()))
        row.recovery = [[i, self._correct_at[i], self._total_at[i]] for i in sorted(self._total_at)]
        return row


def score(
    row: Row,
    truth: list[Exchange],
    observed: list[Exchange],
    attach_ns: int,
) -> Row:
    """Fill one row (one collector, side and variant) from truth and that side's exchanges."""
    sc = Scorer(row, attach_ns)
    for t in truth:
        sc.truth(t)
    match_into(truth, observed, sc.pair, sc.phantom)
    return sc.done()
