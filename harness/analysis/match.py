"""Pair collector Exchanges with truth Exchanges, and judge each field of each pair."""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

from harness.model import Exchange

# How far apart a collector's and Wireshark's start of one exchange may be.
MATCH_WINDOW_NS = 2_000_000_000
# pcap timestamps have microsecond resolution; the clock offset is measured to ~1 us.
CLOCK_TOLERANCE_NS = 20_000
ID_HEADER = "x-probebench-id"
# A field the source's configuration does not look at (e.g. message counts at the uprobe
# collector's "headers" level): out of that source's scope, so neither scored nor wrong.
NOT_COLLECTED = "not_collected"

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
    if protocol == "h2c":
        return H2C_FIELDS
    return GRPC_FIELDS if protocol.startswith("h2c") else COMMON_FIELDS


@dataclass
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
    reasons = {d.field: d.reason for d in obs.degraded}
    unreliable = {d.field for d in truth.degraded}  # Wireshark itself could not tell
    unreliable |= {d.field for d in obs.degraded if d.reason == NOT_COLLECTED}
    for f in required_fields(truth.protocol):
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


def match(truth: list[Exchange], observed: list[Exchange]) -> Matching:
    """Pair on the 4-tuple plus HTTP/2 stream id, with time proximity splitting HTTP/1
    exchanges on one connection and ephemeral-port reuse. A collector record without an
    address can only be paired through the exchange id it decoded, if any."""
    by_conn: dict[tuple[object, ...], list[tuple[int, int]]] = defaultdict(list)
    by_id: dict[str, int] = {}
    for i, t in enumerate(truth):
        key = _conn_key(t)
        if key is not None:
            by_conn[key].append((t.t_start_ns or 0, i))
        if ID_HEADER in t.req_headers:
            by_id[t.req_headers[ID_HEADER]] = i
    for lst in by_conn.values():
        lst.sort()
    taken: set[int] = set()
    pairs: list[Verdict] = []
    phantoms: list[Exchange] = []
    ordered = sorted(observed, key=lambda x: (x.t_start_ns or 0, x.conn_seq or 0))
    # A server reads a pipelined burst in one syscall: its exchanges share one start
    # time, and each must take its own place in the burst, not the latest one.
    burst: dict[tuple[object, ...], int] = defaultdict(int)
    for obs in ordered:
        if obs.side == "server" and obs.stream_id is None and (key := _conn_key(obs)):
            burst[(*key, obs.t_start_ns)] += 1
    # The truth exchange each connection's last observed exchange took: the next one in
    # the collector's sequence answers the next request in the truth's (pipelining puts
    # several requests on the wire before the server reads the first).
    last: dict[tuple[object, ...], tuple[str | None, int, int]] = {}
    for obs in ordered:
        later = 0
        key = _conn_key(obs) if obs.stream_id is None else None
        if obs.side == "server" and key:
            burst[(*key, obs.t_start_ns)] -= 1
            later = burst[(*key, obs.t_start_ns)]
        i = None
        prev = last.get(key) if key and obs.side == "server" else None
        if prev is not None and prev[0] == obs.conn_id and prev[1] + 1 == obs.conn_seq:
            i = _next_in_sequence(obs, truth, by_conn[key], prev[2], taken)
        if i is None:
            i = _find(obs, truth, by_conn, by_id, taken, later)
        if i is None:
            phantoms.append(obs)
            continue
        if key and obs.conn_seq is not None:
            last[key] = (obs.conn_id, obs.conn_seq, i)
        taken.add(i)
        pairs.append(judge(truth[i], obs))
    return Matching(pairs, phantoms)


def _next_in_sequence(
    obs: Exchange, truth: list[Exchange], cands: list[tuple[int, int]], prev: int,
    taken: set[int],
) -> int | None:
    """The first free truth exchange after ``prev`` on the connection that a server
    could have read by ``obs``'s start."""
    ts = obs.t_start_ns or 0
    after = False
    for t, i in cands:
        if i == prev:
            after = True
            continue
        if not after or i in taken:
            continue
        if t > ts + CLOCK_TOLERANCE_NS or ts - t > MATCH_WINDOW_NS:
            return None
        return i
    return None


def _find(
    obs: Exchange,
    truth: list[Exchange],
    by_conn: dict[tuple[object, ...], list[tuple[int, int]]],
    by_id: dict[str, int],
    taken: set[int],
    later: int = 0,
) -> int | None:
    """``later``: exchanges of the same server read still to be matched after this one."""
    key = _conn_key(obs)
    if key is None:
        xid = obs.req_headers.get(ID_HEADER)
        i = by_id.get(xid) if xid is not None else None
        return i if i is not None and i not in taken else None
    cands = by_conn.get(key, [])
    if obs.stream_id is not None:
        for _t, i in cands:
            near = abs((truth[i].t_start_ns or 0) - (obs.t_start_ns or 0)) <= MATCH_WINDOW_NS
            if truth[i].stream_id == obs.stream_id and i not in taken and near:
                return i
        return None
    # Causality, not mere proximity: a client writes a request before its first packet
    # is on the wire; a server reads it after. Nearest-in-time would pick a neighbour
    # whenever the server is slower to read than the client is to send the next one.
    ts = obs.t_start_ns or 0
    if obs.side == "server":
        pos = bisect.bisect_right(cands, (ts + CLOCK_TOLERANCE_NS, 1 << 62))
        earliest = None  # when the burst has more exchanges than the truth left for it
        for j in range(pos - 1, -1, -1):
            t, i = cands[j]
            if ts - t > MATCH_WINDOW_NS:
                break
            if i not in taken:
                if later == 0:
                    # requests that reached the wire together (one pipelined write) are
                    # read in their order: take the first of them still free
                    k = j
                    while k > 0 and cands[k - 1][0] == t and cands[k - 1][1] not in taken:
                        k -= 1
                    return cands[k][1]
                later -= 1  # left for a later exchange of the same read
                earliest = i
        return earliest
    pos = bisect.bisect_left(cands, (ts - CLOCK_TOLERANCE_NS, -1))
    for j in range(pos, len(cands)):
        t, i = cands[j]
        if t - ts > MATCH_WINDOW_NS:
            break
        if i not in taken:
            return i
    return None
