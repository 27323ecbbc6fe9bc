"""Every metric against scipy, from one table, on random, tied and constant vectors."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial import distance

from pipelines.analysis.metrics import (
    align_by_string,
    cosine,
    kendall,
    l1_dot,
    spearman,
    top_k_overlap,
)


def scipy_or_nan(function, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(function(*args))
    return value


REFERENCES = {
    spearman: lambda d, e: scipy_or_nan(lambda a, b: stats.spearmanr(a, b).statistic, np.abs(d), np.abs(e)),
    kendall: lambda d, e: scipy_or_nan(lambda a, b: stats.kendalltau(a, b).statistic, np.abs(d), np.abs(e)),
    cosine: lambda d, e: float("nan") if not (np.any(d) and np.any(e)) else 1 - distance.cosine(d, e),
    l1_dot: lambda d, e: float("nan") if not (np.any(d) and np.any(e)) else float(
        np.dot(d / np.abs(d).sum(), e / np.abs(e).sum())),
}

# small integers make ties and constant vectors frequent; floats cover the generic case
values = st.one_of(st.integers(-3, 3).map(float), st.floats(-1e3, 1e3, allow_nan=False, width=32))
pairs = st.integers(2, 40).flatmap(lambda n: st.tuples(st.lists(values, min_size=n, max_size=n),
                                                        st.lists(values, min_size=n, max_size=n)))


@pytest.mark.parametrize("metric", list(REFERENCES), ids=lambda f: f.__name__)
@settings(max_examples=300, deadline=None)
@given(pair=pairs)
def test_metric_equals_scipy(metric, pair):
    d, e = (np.array(v, dtype=float) for v in pair)
    ours, reference = metric(d, e), REFERENCES[metric](d, e)
    if math.isnan(reference):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(reference, abs=1e-9)
        assert -1 - 1e-12 <= ours <= 1 + 1e-12


@pytest.mark.parametrize("metric", [spearman, kendall, cosine, l1_dot, lambda d, e: top_k_overlap(d, e, 3)])
def test_constant_or_zero_vectors_are_undefined_not_zero(metric):
    assert math.isnan(metric(np.zeros(6), np.arange(6.0)))
    assert math.isnan(metric(np.arange(6.0), np.zeros(6)))


def test_spearman_is_on_absolute_values():
    d = np.array([-3.0, 1.0, 2.0])
    assert spearman(d, np.array([3.0, 1.0, 2.0])) == pytest.approx(1.0)
    assert cosine(d, np.array([3.0, 1.0, 2.0])) < 0.5


def test_top_k_overlap_is_jaccard_of_largest_magnitudes():
    d = np.array([5.0, -4.0, 0.1, 0.2, 3.0])
    e = np.array([-9.0, 0.0, 0.0, 8.0, 7.0])
    assert top_k_overlap(d, e, 3) == pytest.approx(2 / 4)  # {0,1,4} vs {0,3,4}
    assert top_k_overlap(d, d, 3) == 1.0


def test_string_alignment_keeps_the_last_occurrence():
    tokens, d, e = align_by_string(["a", "b", "a"], [1.0, 2.0, 3.0], ["b", "c", "a"], [4.0, 5.0, 6.0])
    assert tokens == ["a", "b"] and d.tolist() == [3.0, 2.0] and e.tolist() == [6.0, 4.0]
