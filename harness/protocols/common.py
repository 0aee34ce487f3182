"""What every protocol parser is fed: one direction of one connection, as syscall-sized segments."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


# Read only once made. Not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, 0.7 us more per segment, and a soak's replay makes 15 M of them.
@dataclass(slots=True)
class Segment:
    """The bytes of one data syscall (or one captured chunk of it).

    ``orig_len`` is what the syscall really moved; when the collector's capture
    limit cut the payload, ``len(data) < orig_len`` and the parser must skip
    ``orig_len - len(data)`` unseen bytes to stay in sync.
    """

    ts_ns: int  # CLOCK_MONOTONIC
    data: bytes
    orig_len: int

    @property
    def truncated(self) -> int:
        return self.orig_len - len(self.data)


class ParseState(Enum):
    """Pixie-style outcome of one parse attempt."""

    NEEDS_MORE_DATA = "needs_more_data"
    INVALID = "invalid"
    SUCCESS = "success"
