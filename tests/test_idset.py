"""IdSet: a set of stream ids held as runs; the same answers as a set, in bounded memory."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.protocols.idset import IdSet


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=3000),
       st.lists(st.integers(min_value=-3, max_value=5100), max_size=200))  # fmt: skip
def test_answers_as_a_set_does(added: list[int], asked: list[int]) -> None:
    ids = IdSet(added)
    assert len(ids) == len(set(added))
    for x in [*asked, *added]:
        assert (x in ids) == (x in set(added))


def test_a_connection_s_closed_streams_are_a_few_runs() -> None:
    # 200k client streams closed nearly in order (each a little late or early), and a few
    # never seen: the memory is the gaps, not the ids
    ids = IdSet()
    order = list(range(1, 400_001, 2))
    rng = random.Random(7)
    for i in range(0, len(order) - 8, 8):
        rng.shuffle(chunk := order[i : i + 8])
        order[i : i + 8] = chunk
    missing = {order[1000], order[50_000], order[150_000]}
    ids.update(x for x in order if x not in missing)
    assert len(ids) == len(order) - 3
    assert ids.runs() <= 4 + 4  # (and a few at the edge of the ids not folded yet)
    assert all(x not in ids for x in missing)
    assert 399_999 in ids and 2 not in ids and 400_001 not in ids


def test_negative_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        IdSet([-1])
