"""Issue 15: the hot path's cheaper per-request code gives the same answers as the plain NumPy it
replaced (fast, in-process)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from services import codecs
from services.kinds.image import SMALL_SCORES, ranked


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12).flatmap(lambda classes: st.tuples(
    arrays(np.float32, st.tuples(st.integers(1, 40), st.just(classes)),
           elements=st.floats(-30, 30, width=32)),
    st.integers(1, classes))))
def test_ranked_is_softmax_then_top_k_in_either_path(case: tuple[np.ndarray, int]) -> None:
    scores, k = case  # up to 40 × 12 scores: both sides of SMALL_SCORES
    got = ranked(scores, k)
    probs = codecs.softmax(scores.astype(np.float64))
    best = -np.sort(-probs, axis=1)[:, :k]  # classes within rounding of each other may swap places
    np.testing.assert_allclose([p for _, p in got], best, rtol=1e-5, atol=1e-7)
    for (order, p), row in zip(got, probs, strict=True):
        assert len(set(order)) == k
        np.testing.assert_allclose(p, row[order], rtol=1e-5, atol=1e-7)
    assert all(isinstance(j, int) and isinstance(q, float)
               for row, p in got for j, q in zip(row, p, strict=True))


@pytest.mark.parametrize("rows", [1, SMALL_SCORES // 10 + 1])  # the Python path and the NumPy path
def test_ties_rank_the_lower_class_first_in_both_paths(rows: int) -> None:
    scores = np.zeros((rows, 10), np.float32)
    scores[:, [3, 7]] = 1.0
    for order, probs in ranked(scores, 3):
        assert order == [3, 7, 0]
        assert probs[0] == pytest.approx(probs[1])
