"""Scoring as the exchanges stream past: truth and each collector's exchanges arrive in
batches, each with a watermark ("nothing later starts before it"), and every metrics row is
matched and counted as far as both watermarks allow. What is held is the matcher's window
(MATCH_WINDOW_NS behind and ahead), the exchanges not yet released by a watermark, and the
truth some row has not passed yet: not the recording.

Every row gives exactly what ``metrics.score`` over whole lists gives: the same matcher is
fed the same truth and observations in the same order (start time, then the truth's index
or the collector's conn_seq); only the moments at which it ages its truth move earlier,
which changes nothing (aging reads only what observations change).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from harness.analysis.match import HORIZON_NS, ID_HEADER, StreamMatcher, Verdict
from harness.analysis.metrics import Row, Scorer
from harness.collectors.base import STREAM_END_NS as END_NS
from harness.model import Exchange


def _start(x: Exchange) -> int:
    return x.t_start_ns or 0


# Taken truth a feed keeps as None at its front before cutting it off (then at most half)
_COMPACT = 4096


class _Pending:
    """Keyed items waiting for a watermark, taken in key order (keys are unique: the same
    order a heap gives). Held as one sorted list read from ``pos``: a batch is sorted and
    merged in by ``list.sort`` (C: the two sorted runs merge, a batch mostly later than
    what waits goes on the end), instead of a heap push and pop per item, which cost a
    soak's replay a second per row."""

    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.pos = 0  # items before it are taken

    def __len__(self) -> int:
        return len(self.items) - self.pos

    def add(self, keyed: list[Any]) -> None:
        if not keyed:
            return
        items, pos = self.items, self.pos
        if pos:
            del items[:pos]
            self.pos = 0
        items += keyed
        items.sort()


class TruthFeed:
    """The truth in (start, index) order, released up to its watermark and kept until every
    stage of every row has taken it. Indexes are the truth's places in arrival order (the
    matcher breaks ties in start time by them: a pipelined burst shares one start)."""

    def __init__(self, on_release: Callable[[Exchange], None]) -> None:
        self._pending = _Pending()  # (start, index, exchange) not yet released
        self._count = 0
        # released, in order; what every stage took is None (a deque's indexing walks it
        # from an end: costly in a soak's window of ~100k), cut off now and then
        self.items: list[tuple[int, Exchange] | None] = []
        self.base = 0  # absolute position of items[0]
        self._taken = 0  # items before it are None
        self.watermark = -END_NS  # every truth exchange starting before it is released
        self.early: list[tuple[int, Exchange]] = []  # carry the workload's id: known first
        self._on_release = on_release

    @property
    def done(self) -> bool:
        return self.watermark >= END_NS

    def whole(self, truth: list[Exchange]) -> None:
        """All of the truth at once (a list): id-carrying exchanges are known to every
        matcher before anything else, as ``match_into`` has them."""
        for i, t in enumerate(truth):
            if ID_HEADER in t.req_headers:
                self.early.append((i, t))
        self._count = len(truth)
        for i, t in sorted(
            ((i, t) for i, t in enumerate(truth) if ID_HEADER not in t.req_headers),
            key=lambda it: _start(it[1]),
        ):
            self.items.append((i, t))
        for t in truth:
            self._on_release(t)
        self.watermark = END_NS

    def add(self, batch: Iterable[Exchange], watermark: int) -> None:
        n = self._count
        keyed = [(_start(t), i, t) for i, t in enumerate(batch, n)]
        self._count = n + len(keyed)
        pending = self._pending
        pending.add(keyed)
        self.watermark = wm = max(self.watermark, watermark)
        items, pos, release = pending.items, pending.pos, self._on_release
        end = len(items)
        while pos < end and items[pos][0] < wm:
            _s, i, t = items[pos]
            pos += 1
            self.items.append((i, t))
            release(t)
        pending.pos = pos

    @property
    def held(self) -> int:
        """Released truth some stage has not taken yet."""
        return len(self.items) - self._taken

    def trim(self, upto: int) -> None:
        """Forget what every stage has taken (positions below ``upto``)."""
        items = self.items
        k = min(upto - self.base, len(items))
        if k <= self._taken:
            return
        items[self._taken : k] = repeat(None, k - self._taken)  # as long: nothing moves
        self._taken = k
        if k > _COMPACT and k * 2 > len(items):
            del items[:k]
            self.base += k
            self._taken = 0


class _Stage:
    """One StreamMatcher and its place in the truth feed."""

    def __init__(
        self, feed: TruthFeed, matcher: StreamMatcher, until: int | None
    ) -> None:
        self.feed, self.m, self.until = feed, matcher, until
        self.pos = feed.base
        self._early = False

    def truth_upto(self, ahead: int) -> None:
        """Add the released truth starting at or before ``ahead``, as ``run`` does before
        an observation ``HORIZON_NS`` earlier (the id-carrying truth before anything)."""
        items, feed, until = self.feed.items, self.feed, self.until
        if not self._early and feed.early:
            self._early = True
            for i, t in feed.early:
                if until is None or _start(t) <= until:
                    self.m.add_truth(t, i)
        while True:
            k = self.pos - feed.base
            if k >= len(items):
                return
            i, t = items[k]  # type: ignore[misc]  # not None: this stage has not taken it
            s = _start(t)
            if s > ahead:
                return
            if until is None or s <= until:
                self.m.add_truth(t, i)
            self.pos += 1


@dataclass
class _Conn:
    pushed: int = 0
    fed: int = 0
    finished: bool = False


class RowStream:
    """One metrics row: one side of one collector variant, matched and counted as the
    exchanges come. ``until`` (observe): the truth that started before the observation's
    end, and what the collector saw of it, as ``replay._window`` cuts them: a first matcher
    over all the truth decides which observations belong to the window, a second scores
    them against the truth in it. The two decide alike as long as the first has no truth
    from after ``until`` (every observation's partner, or the observation itself if it
    has none, starts no later than the truth it was matched among): until then the first
    scores alone, and the second starts from a copy of it (``_split``), which halves a
    long observation's matching. ``since``: observations that start before it are left
    out (the truth begins there)."""

    def __init__(
        self, row: Row, scored_from: int, feed: TruthFeed, *, until: int | None = None,
        since: int | None = None,
    ) -> None:  # fmt: skip
        self.row = row
        self.scorer = Scorer(row, scored_from)
        self.until, self.since = until, since
        self._pending = _Pending()  # (start, conn_seq, arrival, exchange) not yet matched
        self._n = 0
        self._conns: dict[str, _Conn] = {}
        sc = self.scorer
        self.first = _Stage(feed, StreamMatcher(sc.pair, sc.phantom), None)
        self.second: _Stage | None = None
        self._split_pending = until is not None

    def _truth_upto(self, ahead: int, now: int) -> None:
        """The first stage's ``truth_upto``, split first if it would take truth from after
        ``until`` (or id-carrying truth, which any observation may claim by its id)."""
        if self._split_pending and (ahead > self.until or self.first.feed.early):  # type: ignore[operator]
            self._split(now)
        self.first.truth_upto(ahead)

    def _split(self, now: int) -> None:
        """From here on the first stage decides what belongs to the window and the second,
        a copy of it, scores: ``now`` is before any observation still to come, so the copy
        is taken with nothing pending."""
        self._split_pending = False
        first, sc = self.first, self.scorer
        first.m.advance(now)
        m2 = first.m.fork(sc.pair, sc.phantom)
        self.second = _Stage(first.feed, m2, self.until)
        self.second.pos, self.second._early = first.pos, first._early
        first.m.reroute(self._kept_pair, self._kept_phantom, m2.close_connection)

    @property
    def held(self) -> int:
        return len(self._pending)

    def count_truth(self, t: Exchange) -> None:
        if self.until is None or _start(t) <= self.until:
            self.scorer.truth(t)

    def push(self, xs: Iterable[Exchange]) -> None:
        keyed = []
        n, since, conns = self._n, self.since, self._conns
        for x in xs:
            s = _start(x)
            if since is not None and s < since:
                continue
            keyed.append((s, x.conn_seq or 0, n, x))
            n += 1
            if (cid := x.conn_id) is not None:
                c = conns.get(cid)
                if c is None:
                    c = conns[cid] = _Conn()
                c.pushed += 1
        self._n = n
        self._pending.add(keyed)

    def finished(self, conn_ids: Iterable[str]) -> None:
        """These connections yield no more exchanges: each is closed in the matcher after
        its last one (its state goes)."""
        for cid in conn_ids:
            c = self._conns.get(cid)
            if c is None:
                continue
            c.finished = True
            if c.fed == c.pushed:
                self.first.m.close_connection(cid)
                del self._conns[cid]

    def step(self, collector_wm: int, truth_wm: int) -> None:
        """Match what both watermarks allow: observations that start before the
        collector's, whose window of truth (HORIZON_NS ahead) is all released."""
        limit = collector_wm if truth_wm >= END_NS else min(collector_wm, truth_wm - HORIZON_NS - 1)
        pending, first = self._pending, self.first
        items = pending.items
        while pending.pos < len(items) and items[pending.pos][0] < limit:
            s, _seq, _n, obs = items[pending.pos]
            items[pending.pos] = None  # taken: not held
            pending.pos += 1
            self._truth_upto(s + HORIZON_NS, s)
            first.m.add_observed(obs)
            cid = obs.conn_id
            if cid is not None and (c := self._conns.get(cid)) is not None:
                c.fed += 1
                if c.finished and c.fed == c.pushed:
                    first.m.close_connection(cid)
                    del self._conns[cid]
        if limit >= END_NS:
            return
        # nothing before `limit` comes any more: age the truth now, not at the next
        # observation (a row that sees nothing for a while would hold it all)
        self._truth_upto(limit + HORIZON_NS, limit)
        first.m.advance(limit)
        if self.second is not None:
            self.second.truth_upto(limit + HORIZON_NS)
            self.second.m.advance(limit)

    def _kept_pair(self, v: Verdict) -> None:
        assert self.until is not None
        if _start(v.truth) <= self.until:
            self._forward(v.observed)

    def _kept_phantom(self, x: Exchange) -> None:
        assert self.until is not None
        if _start(x) <= self.until:
            self._forward(x)

    def _forward(self, x: Exchange) -> None:
        assert self.second is not None
        self.second.truth_upto(_start(x) + HORIZON_NS)
        self.second.m.add_observed(x)

    def position(self) -> int:
        """The lowest truth position a stage of this row still needs."""
        return min(self.first.pos, self.second.pos) if self.second is not None else self.first.pos

    def done(self) -> Row:
        self.first.m.finish()
        if self.second is not None:
            self.second.m.finish()
        return self.scorer.done()
