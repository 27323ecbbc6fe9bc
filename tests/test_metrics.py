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
    metric_rows,
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


ROWS = st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.lists(st.lists(values, min_size=n, max_size=n), min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 3), st.lists(values, min_size=n, max_size=n)), min_size=1, max_size=12)))
ONE_PAIR = {"spearman": spearman, "cosine": cosine, "l1_dot": l1_dot, "kendall": kendall,
            "top_k_overlap": lambda d, e: top_k_overlap(d, e, 3)}


@settings(max_examples=300, deadline=None)
@given(case=ROWS)
def test_metric_rows_equal_the_one_pair_functions_bit_for_bit(case):
    """The score stage's array path: each row's value is the one-pair function's (so scipy's, above), the
    same float64, NaN for constant vectors; a decision's explanations share its row of d."""
    decisions, targets = case
    d = np.array(decisions, dtype=float)
    owner = np.array([i % len(d) for i, _ in targets])
    e = np.array([vector for _, vector in targets], dtype=float)
    rows = metric_rows(d, e, tuple(ONE_PAIR), 3, owner)
    for name, function in ONE_PAIR.items():
        expected = np.array([function(d[o], v) for o, v in zip(owner, e)])
        assert np.array_equal(rows[name], expected, equal_nan=True), name


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the references on infinite values
def test_metric_rows_match_scipy_on_long_and_special_vectors():
    rng = np.random.default_rng(0)
    for n in (1, 7, 63, 129, 300):
        d = rng.normal(size=(5, n)).astype(np.float32).astype(float)
        e = np.concatenate([rng.normal(size=(5, n)), np.round(rng.normal(size=(5, n))), d[::-1], np.zeros((1, n))])
        e[3, 0], e[4, :2] = np.nan, np.inf
        owner = np.arange(len(e)) % 5
        rows = metric_rows(d, e, tuple(ONE_PAIR), 3, owner)
        for name in ("spearman", "kendall", "cosine", "l1_dot"):
            reference = np.array([REFERENCES[ONE_PAIR[name]](d[o], v) if n > 1 or name in ("cosine", "l1_dot")
                                  else np.nan for o, v in zip(owner, e)])
            finite = ~np.isnan(reference)
            assert np.array_equal(np.isnan(rows[name]), ~finite), name
            assert np.allclose(rows[name][finite], reference[finite], rtol=0, atol=1e-12), name


def test_metric_rows_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="m x n arrays"):
        metric_rows(np.zeros((2, 3)), np.zeros((2, 4)), ("spearman",), 3)
