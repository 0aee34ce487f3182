"""Body accounting for one direction of one stream: DATA bytes and gRPC message counting.

gRPC frames each message as a 1-byte compressed flag, a 4-byte big-endian length and the
message. Messages may span DATA frames and unseen (capture-cut) bytes: the walk follows
lengths through unseen message bodies and only breaks when a 5-byte prefix itself is unseen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.model import RST_CANCEL_OR_DEADLINE, STREAM_RESET, Exchange

GRPC_PREFIX_LEN = 5


@dataclass(slots=True)
class BodyCounter:
    data_bytes: int = 0  # DATA payload minus padding
    data_exact: bool = True  # False once a padding length byte was unseen
    frames: int = 0
    messages: int = 0  # counted when a message's prefix is complete
    message_bytes: int = 0  # sum of message lengths, prefixes excluded
    broken: bool = False  # a prefix fell in unseen bytes: counts no longer reliable
    grpc_shaped: bool = True  # every prefix had a 0/1 compressed flag
    _prefix: bytearray = field(default_factory=bytearray)
    _remaining: int = 0  # message bytes still to come

    @property
    def at_boundary(self) -> bool:
        """The body ended exactly after a whole message (or is empty)."""
        return not self._prefix and self._remaining == 0

    def add_data_frame(
        self, length: int, padded: bool, pieces: Sequence[tuple[int, bytes]]
    ) -> None:
        """Account one DATA frame: ``length`` its payload length, ``pieces`` its seen runs."""
        self.frames += 1
        start, stop = 0, length
        if padded:
            first = pieces[0] if pieces and pieces[0][0] == 0 else None
            if first is None or length < 1:
                self.data_exact = False
                self.broken = True  # the data's end is unknown, so is where prefixes sit
                return
            start, stop = 1, length - first[1][0]
            if stop < start:
                self.data_exact = False
                self.broken = True
                return
        self.data_bytes += stop - start
        if self.broken:
            return
        cursor = start
        for off, chunk in pieces:
            lo, hi = max(off, start), min(off + len(chunk), stop)
            if lo >= hi:
                continue
            if lo > cursor:
                self._skip_unseen(lo - cursor)
                if self.broken:
                    return
            self._walk(chunk[lo - off : hi - off])
            cursor = hi
        if cursor < stop:
            self._skip_unseen(stop - cursor)

    def mark_lost(self) -> None:
        """Frames of this direction were lost: counts can no longer be trusted."""
        self.broken = True
        self.data_exact = False

    def _skip_unseen(self, n: int) -> None:
        take = min(n, self._remaining)
        self._remaining -= take
        if n > take:
            self.broken = True

    def _walk(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self._remaining:
                take = min(self._remaining, len(data) - i)
                self._remaining -= take
                i += take
                continue
            need = GRPC_PREFIX_LEN - len(self._prefix)
            self._prefix += data[i : i + need]
            i += min(need, len(data) - i)
            if len(self._prefix) == GRPC_PREFIX_LEN:
                if self._prefix[0] not in (0, 1):
                    self.grpc_shaped = False
                length = int.from_bytes(self._prefix[1:5], "big")
                self.messages += 1
                self.message_bytes += length
                self._remaining = length
                self._prefix.clear()


# -- calls ended by RST_STREAM -------------------------------------------------------------

# The gRPC status a grpc-go client gives a call ended by RST_STREAM with each HTTP/2 error
# code: http2ErrConvTab in grpc-go's internal/transport/http_util.go (the same from v1.33
# to v1.85). A code missing from it is UNKNOWN (2). A client that reset the stream itself
# (cancel, deadline) gets its context's status, CANCELLED or DEADLINE_EXCEEDED, and sends
# CANCEL: the same two statuses the table and grpc-go's deadline rule give.
RST_TO_GRPC_STATUS = {
    0x0: 13, 0x1: 13, 0x2: 13, 0x3: 8, 0x4: 13, 0x5: 13, 0x6: 13, 0x7: 14, 0x8: 1,
    0x9: 13, 0xA: 13, 0xB: 8, 0xC: 7, 0xD: 13,
}  # fmt: skip
RST_CANCEL = 0x8
GRPC_UNKNOWN, GRPC_CANCELLED, GRPC_DEADLINE_EXCEEDED = 2, 1, 4
R_RST_CANCEL_OR_DEADLINE = RST_CANCEL_OR_DEADLINE
R_RESET = STREAM_RESET
_TIMEOUT_UNITS = {"H": 3_600_000_000_000, "M": 60_000_000_000, "S": 1_000_000_000,
                  "m": 1_000_000, "u": 1_000, "n": 1}  # fmt: skip


def grpc_timeout_ns(value: str | None) -> int | None:
    """The ``grpc-timeout`` header's value in ns (1-8 digits and a unit); None if invalid."""
    if not value or len(value) > 9 or value[-1] not in _TIMEOUT_UNITS or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]


# The most an observer's view of a call may lag the client's clock: the client computes its
# grpc-timeout some time before the request head is on the wire (tens of ms under load
# here), and a server may read a request head late and its reset promptly.
LAG_BOUND_NS = 1_000_000_000


def rst_grpc_status(code: int, timeout_ns: int | None, elapsed_ns: int, *,
                    server_side: bool) -> tuple[int | None, str | None]:
    """(gRPC status, None) for a call ended by RST_STREAM ``code``, or (None, reason).

    CANCEL on a call with a deadline (``timeout_ns`` from its ``grpc-timeout``) may be a
    cancel (CANCELLED) or the deadline (DEADLINE_EXCEEDED). ``elapsed_ns`` is request head
    to reset on the observer's clock. A reset seen at or after the timeout by the wire or
    the client came after the client's deadline: DEADLINE_EXCEEDED, as grpc-go decides. A
    server may read the head late and the reset early (or the reverse), so it never
    concludes the deadline. Well before the timeout (by more than any lag): CANCELLED.
    Otherwise the status is unknown, with a reason, never guessed.
    """
    status = RST_TO_GRPC_STATUS.get(code, GRPC_UNKNOWN)
    if code != RST_CANCEL or timeout_ns is None:
        return status, None
    if elapsed_ns < timeout_ns - max(LAG_BOUND_NS, timeout_ns // 2):
        return GRPC_CANCELLED, None
    if elapsed_ns >= timeout_ns and not server_side:
        return GRPC_DEADLINE_EXCEEDED, None
    return None, R_RST_CANCEL_OR_DEADLINE


def apply_reset_status(x: Exchange, code: int, elapsed_ns: int,
                       request_unknown: str | None) -> None:
    """Set (or mark unknown) the grpc_status of a call reset before any grpc-status.

    ``request_unknown``: why the request's headers are not all known (None: they are); a
    CANCEL then has an unknown deadline, so an unknown status. ``x.req_headers`` and
    ``x.side`` (whose clock ``elapsed_ns`` is on) must be set.
    """
    if x.grpc_message is None:
        # the client's message is its library's; a server's that crossed the reset unseen
        x.degrade("grpc_message", R_RESET)
    timeout = None
    if code == RST_CANCEL:
        if request_unknown is not None:
            x.degrade("grpc_status", request_unknown)
            return
        timeout = grpc_timeout_ns(x.req_headers.get("grpc-timeout"))
    status, reason = rst_grpc_status(code, timeout, elapsed_ns, server_side=x.side == "server")
    if status is not None:
        x.grpc_status = status
    elif reason is not None:
        x.degrade("grpc_status", reason)
