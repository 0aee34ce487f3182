"""A set of HTTP/2 stream ids whose memory does not grow with a connection's age.

A long-lived connection closes streams by the hundred thousand, nearly in order: 1, 3, 5, ...
(each parity on its own: clients open odd ids, pushes even ones). The ids are kept as runs of
one parity (lo, lo + 2, ..., hi), so what is held is the gaps, not the ids; the latest ones sit
in a plain set first, so the per-frame question "is this stream closed?" stays a hash look-up.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

# ids kept in the plain set before they are folded into the runs
_RECENT = 1024


class IdSet:
    """Non-negative ints: ``add``, ``update``, ``in`` and ``len`` like a set's."""

    __slots__ = ("_his", "_len", "_los", "_max", "_recent")

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._recent: set[int] = set()
        # per parity: the runs' first and last ids, sorted (runs neither touch nor overlap)
        self._los: tuple[list[int], list[int]] = ([], [])
        self._his: tuple[list[int], list[int]] = ([], [])
        self._len = 0  # ids in the runs
        self._max = -1  # the largest id in the runs
        self.update(ids)

    def add(self, x: int) -> None:
        if x < 0:
            raise ValueError(f"IdSet holds non-negative ints, not {x}")
        if x in self:
            return
        recent = self._recent
        recent.add(x)
        if len(recent) >= _RECENT:
            self._fold()

    def update(self, ids: Iterable[int]) -> None:
        for x in ids:
            self.add(x)

    def __contains__(self, x: object) -> bool:
        if x in self._recent:
            return True
        if not isinstance(x, int) or x > self._max or x < 0:
            return False
        los, his = self._los[x & 1], self._his[x & 1]
        i = bisect.bisect_right(los, x) - 1
        return i >= 0 and x <= his[i]

    def __len__(self) -> int:
        return self._len + len(self._recent)

    def runs(self) -> int:
        """How many runs are held (what the memory grows with: gaps between closed ids)."""
        return len(self._los[0]) + len(self._los[1])

    def _fold(self) -> None:
        for x in sorted(self._recent):
            self._insert(x)
        self._recent.clear()

    def _insert(self, x: int) -> None:
        los, his = self._los[x & 1], self._his[x & 1]
        if his and his[-1] + 2 == x:  # the next id after the last run: most of them
            his[-1] = x
        else:
            i = bisect.bisect_right(los, x) - 1
            if i >= 0 and x <= his[i]:
                return  # already held
            joins_left = i >= 0 and his[i] + 2 == x
            joins_right = i + 1 < len(los) and los[i + 1] == x + 2
            if joins_left and joins_right:
                his[i] = his[i + 1]
                del los[i + 1], his[i + 1]
            elif joins_left:
                his[i] = x
            elif joins_right:
                los[i + 1] = x
            else:
                los.insert(i + 1, x)
                his.insert(i + 1, x)
        self._len += 1
        self._max = max(self._max, x)
