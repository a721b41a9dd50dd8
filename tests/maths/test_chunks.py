"""Tests for labelsieve.maths.chunks: the row chunks cover every row once, in order, within the budget."""

from __future__ import annotations

import itertools

import pytest

from labelsieve.maths import chunks
from labelsieve.maths.chunks import row_chunks


@pytest.mark.parametrize(("n_rows", "row_values"), [(1, 1), (999, 1), (1000, 1), (4321, 1), (4321, 7)])
def test_row_chunks_cover_rows_in_order_within_budget(monkeypatch, n_rows: int, row_values: int) -> None:
    monkeypatch.setattr(chunks, "CHUNK_VALUES", 1000)
    slices = row_chunks(n_rows, row_values)
    assert slices[0].start == 0 and slices[-1].stop == n_rows
    assert all(a.stop == b.start for a, b in itertools.pairwise(slices))
    assert all(0 < (s.stop - s.start) * row_values <= 1000 for s in slices)
    # Every chunk but the last is full.
    assert {s.stop - s.start for s in slices[:-1]} <= {1000 // row_values}


def test_row_chunks_below_one_chunk_is_one_slice() -> None:
    assert row_chunks(5000, 10) == [slice(0, 5000)]


def test_row_chunks_never_split_a_row_and_handle_empty_input(monkeypatch) -> None:
    monkeypatch.setattr(chunks, "CHUNK_VALUES", 1000)
    assert row_chunks(3, 5000) == [slice(0, 1), slice(1, 2), slice(2, 3)]
    assert row_chunks(0) == []
    assert row_chunks(4, 0) == [slice(0, 4)]
