"""Pair collector Exchanges with truth Exchanges, and judge each field of each pair."""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

from harness.model import H2_FAMILY, NOT_COLLECTED, Exchange, is_h2

# How far apart a collector's and Wireshark's start of one exchange may be.
MATCH_WINDOW_NS = 2_000_000_000
# pcap timestamps have microsecond resolution; the clock offset is measured to ~1 us.
CLOCK_TOLERANCE_NS = 20_000
ID_HEADER = "x-probebench-id"
# A field the source's configuration does not look at (e.g. message counts at the uprobe
# collector's "headers" level): out of that source's scope, so neither scored nor wrong.

COMMON_FIELDS = (
    "method", "path", "status", "req_bytes", "resp_bytes",
    "client_ip", "client_port", "server_ip", "server_port",
)  # fmt: skip
GRPC_FIELDS = (
    *COMMON_FIELDS, "authority", "grpc_status", "grpc_message", "req_messages", "resp_messages",
    "req_headers",
)  # fmt: skip
# Plain HTTP/2 (h2c-plain): the HTTP/1 fields, plus what HPACK can hide: the authority and
# the custom fields of both header blocks (the echoed id and x-req-bytes come back in the
# response's).
H2C_FIELDS = (*COMMON_FIELDS, "authority", "req_headers", "resp_headers")
HEADER_FIELDS = ("req_headers", "resp_headers")  # scored on their custom (x-) fields


def required_fields(protocol: str) -> tuple[str, ...]:
    if protocol == H2_FAMILY:  # plain HTTP/2: no gRPC fields
        return H2C_FIELDS
    return GRPC_FIELDS if is_h2(protocol) else COMMON_FIELDS


# Each protocol's required fields read in one call (as a tuple), by the tuple of names.
FIELD_VALUES: dict[tuple[str, ...], attrgetter[Any]] = {
    fs: attrgetter(*fs) for fs in (COMMON_FIELDS, GRPC_FIELDS, H2C_FIELDS)
}


@dataclass(slots=True)
class Verdict:
    """One matched pair: which required fields were missing (with why) or wrong."""

    truth: Exchange
    observed: Exchange
    missing: dict[str, str] = field(default_factory=dict)  # field -> reason
    wrong: dict[str, str] = field(default_factory=dict)  # field -> "truth != observed"

    @property
    def degraded(self) -> bool:
        return bool(self.missing or self.wrong)


def _custom(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("x-")}


def judge(truth: Exchange, obs: Exchange) -> Verdict:
    v = Verdict(truth, obs)
    fields = required_fields(truth.protocol)
    values = FIELD_VALUES[fields]
    if values(truth) == values(obs):  # the common case: every field the same, none judged
        return v
    reasons = {d.field: d.reason for d in obs.degraded}
    unreliable = {d.field for d in truth.degraded}  # Wireshark itself could not tell
    unreliable |= {d.field for d in obs.degraded if d.reason == NOT_COLLECTED}
    for f in fields:
        if f in unreliable:
            continue
        want, got = getattr(truth, f), getattr(obs, f)
        if f in HEADER_FIELDS:
            want, got = _custom(want), _custom(got)
            if want == got:
                continue
            absent = [k for k in want if k not in got]
            if absent and all(want[k] == got.get(k, want[k]) for k in want):
                v.missing[f] = reasons.get(f) or next(
                    (r for k, r in reasons.items() if k.startswith(f)), "missing"
                )
                continue
            v.wrong[f] = f"{want!r} != {got!r}"
            continue
        if want is None or want == got:
            continue
        if got is None:
            v.missing[f] = reasons.get(f, "missing")
        else:
            v.wrong[f] = f"{want!r} != {got!r}"
    return v


def _conn_key(x: Exchange) -> tuple[object, ...] | None:
    if x.client_port is None or x.server_port is None:
        return None
    return (x.client_ip, x.client_port, x.server_ip, x.server_port)


@dataclass
class Matching:
    pairs: list[Verdict]
    phantoms: list[Exchange]  # observed, with no truth partner


# Every path below looks at most MATCH_WINDOW_NS back and CLOCK_TOLERANCE_NS ahead of an
# observation's start: truth older than this behind it can be nobody's partner any more,
# but the next in a server's followed HTTP/1 sequence not yet answered (``_awaited``).
HORIZON_NS = MATCH_WINDOW_NS + CLOCK_TOLERANCE_NS
# most groups are one observation, with no burst to count (a dict each cost a soak ~1%)
_NO_BURST: dict[tuple[object, ...], int] = {}

_Key = tuple[object, ...]
# Aged candidates a connection's list may keep at its front before they are cut off (then
# at most an eighth of it: the cut is paid for by as many cheap agings).
_COMPACT = 1024
_Cand = tuple[int, int]  # (truth start, truth index): each connection's list is sorted on it
# Steps a search takes on from where the last one on the same list ended (``_seek``) before
# it bisects the rest.
_SEEK_STEPS = 8


def _insort(items: list[Any], item: Any, lo: int = 0) -> None:
    """``bisect.insort``; truth comes in start order (but for the id-carrying truth ``run``
    adds first), so most items go on the end: appended without a bisect of the window."""
    if not items or items[-1] < item:
        items.append(item)
    else:
        bisect.insort(items, item, lo)


def _seek(cands: list[_Cand], target: _Cand, lo: int, hint: int) -> int:
    """``bisect.bisect_left(cands, target, lo)``, looked for from ``hint``: where the last
    search on ``cands`` ended, a step or two before this one's answer (observations come in
    time order), where a bisect of a window's thousands of candidates, each probe a cache
    miss, cost a soak's replay a few percent. A hint that no longer holds (the list was cut
    or inserted into since) only costs the bisect."""
    end = len(cands)
    if lo <= hint <= end and (hint == lo or cands[hint - 1] < target):
        for j in range(hint, min(hint + _SEEK_STEPS, end)):
            if not cands[j] < target:
                return j
        lo = min(hint + _SEEK_STEPS, end)
    return bisect.bisect_left(cands, target, lo)


@dataclass(slots=True)
class _Last:
    """The truth exchange a connection's last observed exchange took: the next one in the
    collector's sequence answers the next request in the truth's (pipelining puts several
    requests on the wire before the server reads the first)."""

    conn_id: str | None
    conn_seq: int
    cand: _Cand
    # truth after ``cand`` on the connection that aged out while free: the first of them
    # was the next in sequence, and too old for any later observation
    blocked: bool = False
    blocked_ids: list[int] = field(default_factory=list)  # such truth an id may still take


def _awaited(t: Exchange, now: int) -> bool:
    """Whether a server could still read HTTP/1 truth ``t`` at ``now``, past the window: it
    reads a request before it answers it, so not once the answer was all on the wire. What
    such truth a matcher holds is bounded by the exchanges in flight; truth never answered
    has no such bound and is held only within the window."""
    return t.stream_id is None and t.t_end_ns is not None and t.t_end_ns + CLOCK_TOLERANCE_NS >= now


class StreamMatcher:
    """``match`` over time-ordered streams, holding only the truth of the last few seconds.

    Feed truth with ``add_truth`` and observations with ``add_observed`` in order of start
    time, truth at least HORIZON_NS ahead of the observations (``run`` does the
    interleaving); ``close_connection`` once a collector connection has yielded its last
    exchange; ``finish`` at the end. Verdicts and phantoms go to the callbacks as they are
    decided. Truth that carries the workload's exchange id stays to the end: an
    observation without an address may claim it by that id at any time."""

    def __init__(
        self,
        on_pair: Callable[[Verdict], None],
        on_phantom: Callable[[Exchange], None],
        on_closed: Callable[[str], None] | None = None,
    ) -> None:
        """``on_closed``: told each connection id once its closing took effect (after every
        exchange added before ``close_connection`` was decided), to chain a second matcher."""
        self._on_pair, self._on_phantom, self._on_closed = on_pair, on_phantom, on_closed
        self._truth: dict[int, Exchange] = {}
        self._by_conn: dict[_Key, list[_Cand]] = {}
        # where each connection's live candidates begin: aged ones are dropped from the
        # front in bulk (_age), not one by one; a list's front deletion moves all the rest,
        # which at 10k exchanges/s per connection was most of a soak's matching
        self._head: dict[_Key, int] = {}
        # where each connection's last search (``_seek``) ended: the next starts there
        self._hint: dict[_Key, int] = {}
        # the same candidates by (connection, HTTP/2 stream id): ids are unique on a
        # connection (no run lasts to their wrap), so an observation's stream looks at its own
        self._by_stream: dict[tuple[_Key, int], list[_Cand]] = {}
        self._by_id: dict[str, int] = {}
        self._taken: set[int] = set()
        # each connection's candidates not taken, or more (truth an id keeps counts until
        # it is taken): at 0, _find has nothing to look for. Without it an observation
        # with no partner (a collector seeing traffic after the capture ended) walked all
        # of its connection's taken candidates in the window: most of such a replay's CPU
        self._free: dict[_Key, int] = {}
        self._last: dict[_Key, _Last] = {}
        self._key_of: dict[str, _Key] = {}  # conn_id -> the key its _Last is under
        # (start, index, key) of each candidate, sorted, read from ``_aging_pos``: truth is
        # added in start order (but for the id-carrying truth ``run`` adds first), so a list
        # appended to, and read from its front, ages it (a heap push and pop each was a
        # twentieth of a soak's replay)
        self._aging: list[tuple[int, int, _Key]] = []
        self._aging_pos = 0
        # connections holding truth past the horizon for their _Last's sequence (_awaited)
        self._held: set[_Key] = set()
        self._group: list[Exchange] = []  # observations sharing one start time
        self._closing: list[str] = []
        self._count = 0

    def fork(
        self, on_pair: Callable[[Verdict], None], on_phantom: Callable[[Exchange], None]
    ) -> StreamMatcher:
        """A matcher in this one's state that goes on on its own (nothing may be pending:
        ``advance`` first): the exchanges are shared, the bookkeeping copied."""
        assert not self._group
        m = StreamMatcher(on_pair, on_phantom)
        m._truth, m._head, m._by_id = dict(self._truth), dict(self._head), dict(self._by_id)
        m._hint = dict(self._hint)
        m._by_conn = {k: list(v) for k, v in self._by_conn.items()}
        m._by_stream = {k: list(v) for k, v in self._by_stream.items()}
        m._taken, m._held, m._free = set(self._taken), set(self._held), dict(self._free)
        m._last = {k: replace(v, blocked_ids=list(v.blocked_ids)) for k, v in self._last.items()}
        m._key_of, m._count = dict(self._key_of), self._count
        m._aging, m._aging_pos = self._aging[self._aging_pos :], 0
        return m

    def reroute(
        self,
        on_pair: Callable[[Verdict], None],
        on_phantom: Callable[[Exchange], None],
        on_closed: Callable[[str], None] | None,
    ) -> None:
        """Send what is decided from now on to these callbacks."""
        self._on_pair, self._on_phantom, self._on_closed = on_pair, on_phantom, on_closed

    def retained(self) -> dict[str, int]:
        """How much state is held (what must not grow with a recording's length)."""
        return {
            "truth": len(self._truth),
            "candidates": sum(map(len, self._by_conn.values())) - sum(self._head.values()),
            "connections": len(self._by_conn), "streams": len(self._by_stream),
            "taken": len(self._taken), "last": len(self._last), "group": len(self._group),
            "held": len(self._held),
        }  # fmt: skip

    def run(
        self,
        truth: Iterable[tuple[int, Exchange]],
        observed: Iterable[Exchange],
        *,
        ends: dict[str, int] | None = None,
        known: Iterable[tuple[int, Exchange]] = (),
    ) -> None:
        """Match (index, truth) and observations, each in order of start time. ``ends``: how
        many exchanges each collector connection yields, so its state goes after its last
        one. ``known``: truth added before anything else."""
        for i, t in known:
            self.add_truth(t, i)
        pending = iter(truth)
        nxt = next(pending, None)
        left = dict(ends or {})
        for obs in observed:
            ahead = (obs.t_start_ns or 0) + HORIZON_NS
            while nxt is not None and (nxt[1].t_start_ns or 0) <= ahead:
                self.add_truth(nxt[1], nxt[0])
                nxt = next(pending, None)
            self.add_observed(obs)
            if obs.conn_id is not None and obs.conn_id in left:
                left[obs.conn_id] -= 1
                if not left[obs.conn_id]:
                    self.close_connection(obs.conn_id)
        self.finish()

    def add_truth(self, t: Exchange, index: int | None = None) -> None:
        """``index``: the truth's place in its list (ties in start time go by it)."""
        i = self._count if index is None else index
        self._count = max(self._count, i + 1)
        self._truth[i] = t
        if ID_HEADER in t.req_headers:
            self._by_id[t.req_headers[ID_HEADER]] = i
        key = _conn_key(t)
        if key is not None:
            cand = (t.t_start_ns or 0, i)
            _insort(self._by_conn.setdefault(key, []), cand, self._head.get(key, 0))
            self._free[key] = self._free.get(key, 0) + 1
            if t.stream_id is not None:
                _insort(self._by_stream.setdefault((key, t.stream_id), []), cand)
            _insort(self._aging, (*cand, key), self._aging_pos)
        elif ID_HEADER not in t.req_headers:
            del self._truth[i]  # neither an address nor an id: no observation can take it

    def add_observed(self, obs: Exchange) -> None:
        if self._group and (self._group[0].t_start_ns or 0) != (obs.t_start_ns or 0):
            self._flush()
        self._group.append(obs)

    def close_connection(self, conn_id: str) -> None:
        self._closing.append(conn_id)

    def finish(self) -> None:
        self._flush()

    def _flush(self) -> None:
        group, self._group = self._group, []
        # A server reads a pipelined burst in one syscall: its exchanges share one start
        # time, and each must take its own place in the burst, not the latest one.
        burst: dict[_Key, int] = _NO_BURST  # (read only: it stays empty)
        if len(group) > 1:  # (alone, an observation has no later one in its burst)
            burst = defaultdict(int)
            for obs in group:
                if obs.side == "server" and obs.stream_id is None and (key := _conn_key(obs)):
                    burst[key] += 1
        for obs in group:
            later = 0
            key = _conn_key(obs) if obs.stream_id is None else None
            if obs.side == "server" and key and burst:
                burst[key] -= 1
                later = burst[key]
            i = None
            prev = self._last.get(key) if key and obs.side == "server" else None
            if (
                key is not None
                and prev is not None
                and prev.conn_id == obs.conn_id
                and prev.conn_seq + 1 == obs.conn_seq
            ):
                i = self._next_in_sequence(obs, key, prev)
            if i is None:
                i = self._find(obs, later)
            if i is None:
                self._on_phantom(obs)
                continue
            if key and obs.conn_seq is not None and obs.side == "server":  # only it follows one
                self._last[key] = _Last(
                    obs.conn_id, obs.conn_seq, (self._truth[i].t_start_ns or 0, i)
                )
                if obs.conn_id is not None:
                    self._key_of[obs.conn_id] = key
            self._taken.add(i)
            if (tkey := _conn_key(self._truth[i])) is not None:
                self._free[tkey] -= 1
            self._on_pair(judge(self._truth[i], obs))
        for conn_id in self._closing:
            key = self._key_of.pop(conn_id, None)
            if key is not None and self._last[key].conn_id == conn_id:
                del self._last[key]
            if self._on_closed is not None:
                self._on_closed(conn_id)
        self._closing.clear()
        if group:
            self._age(group[0].t_start_ns or 0)

    def advance(self, now: int) -> None:
        """No observation added from here on starts before ``now``: decide what is pending
        and forget the truth too old for any later one, as the next observation would.
        Aging early changes nothing (what it reads changes only with observations), and
        lets a row whose collector sees nothing for a while hold no more than the window."""
        if self._group and (self._group[0].t_start_ns or 0) < now:
            self._flush()
        if not self._group:
            self._age(now)

    def _age(self, now: int) -> None:
        """Forget truth too old for any observation from ``now`` on, but what a followed
        sequence may still read (``_awaited``); that is looked at again each time."""
        cutoff = now - HORIZON_NS
        aging, pos = self._aging, self._aging_pos
        if not self._held and (pos >= len(aging) or aging[pos][0] >= cutoff):
            return  # nothing aged (most observations)
        keys = self._held
        self._held = set()
        end = len(aging)
        while pos < end and (entry := aging[pos])[0] < cutoff:  # a few each time
            keys.add(entry[2])
            pos += 1
        if pos > _COMPACT and pos * 2 > end:  # the dead front, now and then
            del aging[:pos]
            pos = 0
        self._aging_pos = pos
        taken, truth = self._taken, self._truth
        for key in keys:
            cands = self._by_conn[key]
            head = self._head.get(key, 0)
            # the first candidate not aged, stepped to: no more steps than the loop below
            # takes (one or two: aging comes at each observation), where a bisect of the
            # window's candidates cost a soak's replay 2%
            n, stop = head, len(cands)
            while n < stop and cands[n][0] < cutoff:
                n += 1
            last = self._last.get(key)
            kept: list[_Cand] = []
            gone = 0  # free truth forgotten
            for cand in cands[head:n]:
                i = cand[1]
                t = truth[i]
                free = i not in taken
                after = free and last is not None and cand > last.cand
                if after and _awaited(t, now):
                    kept.append(cand)
                    continue
                has_id = ID_HEADER in t.req_headers
                sid = t.stream_id
                if sid is not None:  # the oldest of its stream's candidates too
                    scands = self._by_stream[(key, sid)]
                    scands.remove(cand)
                    if not scands:
                        del self._by_stream[(key, sid)]
                if after:
                    assert last is not None
                    if has_id:
                        last.blocked_ids.append(i)
                    else:
                        last.blocked = True
                if not has_id:  # an id keeps it (and whether it was taken) for by_id
                    if not free:
                        taken.remove(i)
                    del truth[i]
                    gone += free
            if gone:
                self._free[key] -= gone
            if kept:
                self._held.add(key)
            if n == len(cands) and not kept:
                del self._by_conn[key]
                self._head.pop(key, None)
                self._hint.pop(key, None)
                if not self._free[key]:  # (else truth an id keeps: counted till taken)
                    del self._free[key]
                continue
            head = n - len(kept)
            cands[head:n] = kept  # as long as what it replaces: nothing moves
            if head > _COMPACT and head * 8 > len(cands):  # the dead front, now and then
                del cands[:head]
                head = 0
            self._head[key] = head

    def _next_in_sequence(self, obs: Exchange, key: _Key, prev: _Last) -> int | None:
        """The first free truth exchange after ``prev`` on the connection that a server
        could have read by ``obs``'s start: not before it was on the wire, and not after it
        was answered; however late otherwise (a pipelined request waits in the socket
        while the server handles the ones before it)."""
        if prev.blocked or (prev.blocked_ids and any(i not in self._taken
                                                     for i in prev.blocked_ids)):
            return None  # the first free one after prev is long past
        cands = self._by_conn.get(key)
        if not cands:
            return None
        ts = obs.t_start_ns or 0
        head = self._head.get(key, 0)
        t0, i0 = prev.cand
        # bisect_right(cands, prev.cand): indexes are ints, so (t0, i0 + 1) is the next pair
        start = self._hint[key] = _seek(cands, (t0, i0 + 1), head, self._hint.get(key, head))
        for j in range(start, len(cands)):
            t, i = cands[j]
            if i in self._taken:
                continue
            if t > ts + CLOCK_TOLERANCE_NS:
                return None
            x = self._truth[i]
            if x.t_end_ns is None or x.stream_id is not None:
                # no answer on the wire bounds when it was read: the window does
                return i if ts - t <= MATCH_WINDOW_NS else None
            return i if _awaited(x, ts) else None
        return None

    def _find(self, obs: Exchange, later: int = 0) -> int | None:
        """``later``: exchanges of the same server read still to be matched after this one."""
        taken = self._taken
        key = _conn_key(obs)
        if key is None:
            xid = obs.req_headers.get(ID_HEADER)
            i = self._by_id.get(xid) if xid is not None else None
            return i if i is not None and i not in taken else None
        if not self._free.get(key):
            return None
        cands = self._by_conn.get(key, [])
        head = self._head.get(key, 0)
        ts = obs.t_start_ns or 0
        if obs.stream_id is not None:
            for t, i in self._by_stream.get((key, obs.stream_id), ()):
                if i not in taken and abs(t - ts) <= MATCH_WINDOW_NS:
                    return i
            return None
        # Causality, not mere proximity: a client writes a request before its first packet
        # is on the wire; a server reads it after. Nearest-in-time would pick a neighbour
        # whenever the server is slower to read than the client is to send the next one.
        if obs.side == "server":
            pos = bisect.bisect_right(cands, (ts + CLOCK_TOLERANCE_NS, 1 << 62), head)
            earliest = None  # when the burst has more exchanges than the truth left for it
            for j in range(pos - 1, head - 1, -1):
                t, i = cands[j]
                if ts - t > MATCH_WINDOW_NS:
                    break
                if i not in taken:
                    if later == 0:
                        # requests that reached the wire together (one pipelined write) are
                        # read in their order: take the first of them still free
                        k = j
                        while k > head and cands[k - 1][0] == t and cands[k - 1][1] not in taken:
                            k -= 1
                        # unless the collector missed some of them (a capture budget cut
                        # the read): then the request line it did read says which
                        same = (obs.method, obs.path)
                        for _t, i2 in cands[k : j + 1]:
                            t2 = self._truth[i2]
                            if obs.path is not None and (t2.method, t2.path) == same:
                                return i2
                        return cands[k][1]
                    later -= 1  # left for a later exchange of the same read
                    earliest = i
            return earliest
        pos = _seek(cands, (ts - CLOCK_TOLERANCE_NS, -1), head, self._hint.get(key, head))
        if cands:  # (a key's hint goes with its candidates)
            self._hint[key] = pos
        for j in range(pos, len(cands)):
            t, i = cands[j]
            if t - ts > MATCH_WINDOW_NS:
                break
            if i not in taken:
                return i
        return None


def match_into(
    truth: list[Exchange],
    observed: list[Exchange],
    on_pair: Callable[[Verdict], None],
    on_phantom: Callable[[Exchange], None],
) -> None:
    """``match``, with each verdict and phantom handed over as it is decided."""
    ordered = sorted(observed, key=lambda x: (x.t_start_ns or 0, x.conn_seq or 0))
    # truth that carries an id may be claimed by it at any distance in time
    early = [(i, t) for i, t in enumerate(truth) if ID_HEADER in t.req_headers]
    rest = sorted(
        ((i, t) for i, t in enumerate(truth) if ID_HEADER not in t.req_headers),
        key=lambda it: it[1].t_start_ns or 0,
    )
    ends = Counter(x.conn_id for x in ordered if x.conn_id is not None)
    StreamMatcher(on_pair, on_phantom).run(rest, ordered, ends=ends, known=early)


def match(truth: list[Exchange], observed: list[Exchange]) -> Matching:
    """Pair on the 4-tuple plus HTTP/2 stream id, with time proximity splitting HTTP/1
    exchanges on one connection and ephemeral-port reuse. A collector record without an
    address can only be paired through the exchange id it decoded, if any."""
    m = Matching([], [])
    match_into(truth, observed, m.pairs.append, m.phantoms.append)
    return m
