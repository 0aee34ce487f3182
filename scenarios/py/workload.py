"""Seeded HTTP/1.x request plan shared by the Python targets.

The Go targets implement the very same generator (scenarios/go/http1/plan); the
algorithm, draw order and constants are specified in scenarios/plan.md. Change
both sides together: the tests compare the two plans byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

MASK64 = (1 << 64) - 1

# h2c: the same plan over prior-knowledge HTTP/2 (scenario h2c-plain, Go and Node targets);
# a body "chunked" in HTTP/1.1 is one streamed without content-length there.
PROTOS = ("http10", "http11", "h2c")
PROTOCOL_NAME = {"http10": "http/1.0", "http11": "http/1.1", "h2c": "h2c"}
STREAMED = frozenset({"http11", "h2c"})  # protos whose bodies may go without a length

METHOD_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("GET", 30),
    ("POST", 20),
    ("PUT", 10),
    ("DELETE", 10),
    ("PATCH", 10),
    ("HEAD", 10),
    ("OPTIONS", 10),
)
STATUS_WEIGHTS: tuple[tuple[int, int], ...] = (
    (200, 50),
    (201, 15),
    (204, 10),
    (301, 8),
    (404, 10),
    (500, 7),
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# 304 only comes from the mixed plan; like 204 it has neither length header nor body.
NO_BODY_STATUSES = frozenset({204, 304})
STATUSES = frozenset(s for s, _ in STATUS_WEIGHTS) | {304}

MAX_BODY = 256 * 1024
PIPELINED_MAX_BODY = 4096
# Chunked bodies (both directions, both languages) are cut into pieces of this size;
# not a power of two so chunk-size lines are not all alike.
CHUNK = 8000
# Printable so captures stay readable; 62 is prime to powers of two, so the
# pattern does not line up with buffer sizes.
PATTERN_ALPHABET = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEADER_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
LOCATION = "/r/200/0/cl"

_PATTERN = (PATTERN_ALPHABET * (MAX_BODY // len(PATTERN_ALPHABET) + 1))[:MAX_BODY]


class SplitMix64:
    """splitmix64 (Steele, Lea, Flood 2014): tiny, and identical in Python and Go."""

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """0..n-1 by plain modulo: the bias is irrelevant here and trivial to mirror in Go."""
        return self.next() % n

    def pick(self, table: Sequence[tuple[T, int]]) -> T:
        r = self.below(sum(w for _, w in table))
        for value, weight in table:
            if r < weight:
                return value
            r -= weight
        raise AssertionError("unreachable: weights cover the draw")

    def size(self) -> int:
        """Body size 0..256 KiB: mostly small, some medium, a few large."""
        cls = self.below(100)
        if cls < 70:
            return self.below(1025)
        if cls < 95:
            return 1025 + self.below(15360)
        return 16385 + self.below(MAX_BODY - 16385 + 1)


@dataclass(frozen=True)
class PlannedRequest:
    id: int
    method: str
    path: str
    status: int
    resp_size: int  # what the path asks for (HEAD still gets it as Content-Length)
    resp_mode: str  # "cl" or "ch"
    resp_bytes: int  # body bytes the client must receive
    req_bytes: int
    req_chunked: bool
    headers: tuple[tuple[str, str], ...]

    def to_json(self) -> str:
        """One canonical line; the Go client's --plan-only prints the same bytes."""
        return json.dumps(
            {
                "id": self.id,
                "method": self.method,
                "path": self.path,
                "status": self.status,
                "resp_size": self.resp_size,
                "resp_mode": self.resp_mode,
                "resp_bytes": self.resp_bytes,
                "req_bytes": self.req_bytes,
                "req_chunked": self.req_chunked,
                "headers": [list(h) for h in self.headers],
            },
            separators=(",", ":"),
        )


def make_plan(
    n: int, seed: int, proto: str, mixed: bool = False, pipelined: bool = False
) -> list[PlannedRequest]:
    """The n requests for this seed; the draw order is the spec in scenarios/plan.md.

    ``mixed`` (http11 only) turns request i into, by i mod 4: a HEAD, a conditional GET
    answered 304, a DELETE answered 204, and a POST uploaded after ``Expect: 100-continue``.
    ``pipelined`` sends GET where the plan drew HEAD (TShark 4.0.17 frames a pipelined
    response by the latest request's method, so the truth could not follow a HEAD's), and
    keeps bodies small, as pipelining clients do (sizes modulo PIPELINED_MAX_BODY + 1).
    """
    if proto not in PROTOS:
        raise ValueError(f"unknown proto {proto!r}")
    if mixed and proto != "http11":
        raise ValueError("the mixed plan is HTTP/1.1 only")
    rng = SplitMix64(seed)
    plan = []
    for i in range(n):
        method = rng.pick(METHOD_WEIGHTS)
        status = rng.pick(STATUS_WEIGHTS)
        resp_size = rng.size()
        chunk_draw = rng.below(4)
        qv = rng.below(1_000_000)
        pad_draw = rng.below(4)
        pad_len = rng.below(200)
        headers = []
        for j in range(rng.below(9)):
            vlen = 1 + (rng.below(64) if rng.below(100) < 85 else rng.below(1024))
            off = rng.below(64)
            value = "".join(
                HEADER_ALPHABET[(off + k * 7) % len(HEADER_ALPHABET)] for k in range(vlen)
            )
            headers.append((f"x-pb-extra-{j}", value))
        body = rng.size()
        body_chunk_draw = rng.below(3)

        if pipelined:
            method = "GET" if method == "HEAD" else method
            resp_size %= PIPELINED_MAX_BODY + 1
            body %= PIPELINED_MAX_BODY + 1
        if mixed:
            kind = i % 4
            method = ("HEAD", "GET", "DELETE", "POST")[kind]
            if kind == 0 or (kind == 3 and status == 204):
                status = 200
            elif kind == 1:
                status = 304
                headers.append(("If-None-Match", f'"pb-{qv}"'))
            elif kind == 2:
                status = 204
            if kind == 3:
                body = max(body, 1)
                body_chunk_draw = 1
                headers.append(("Expect", "100-continue"))
        if status in NO_BODY_STATUSES:
            resp_size = 0
        resp_mode = "cl"
        if (
            chunk_draw == 0
            and proto in STREAMED
            and status not in NO_BODY_STATUSES
            and method != "HEAD"
        ):
            resp_mode = "ch"
        resp_bytes = 0 if method == "HEAD" else resp_size
        if method not in BODY_METHODS:
            body = 0
        req_chunked = body_chunk_draw == 0 and proto in STREAMED and method in BODY_METHODS
        path = f"/r/{status}/{resp_size}/{resp_mode}?n={i}&v={qv}"
        if pad_draw == 0:
            path += "&pad=" + "p" * pad_len
        plan.append(
            PlannedRequest(
                id=i,
                method=method,
                path=path,
                status=status,
                resp_size=resp_size,
                resp_mode=resp_mode,
                resp_bytes=resp_bytes,
                req_bytes=body,
                req_chunked=req_chunked,
                headers=tuple(headers),
            )
        )
    return plan


def body_bytes(n: int) -> bytes:
    """The deterministic body of n bytes (requests and responses alike)."""
    if not 0 <= n <= MAX_BODY:
        raise ValueError(f"body size {n} out of 0..{MAX_BODY}")
    return _PATTERN[:n]


def body_chunks(n: int) -> list[bytes]:
    """The body of n bytes cut into CHUNK-sized pieces, as sent chunked."""
    data = body_bytes(n)
    return [data[k : k + CHUNK] for k in range(0, n, CHUNK)]


def parse_route(path: str) -> tuple[int, int, str] | None:
    """`/r/<status>/<size>/<mode>[?query]` -> (status, size, mode), None when malformed."""
    parts = path.split("?", 1)[0].split("/")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "r":
        return None
    try:
        status, size = int(parts[2]), int(parts[3])
    except ValueError:
        return None
    if status not in STATUSES or not 0 <= size <= MAX_BODY or parts[4] not in ("cl", "ch"):
        return None
    return status, size, parts[4]
