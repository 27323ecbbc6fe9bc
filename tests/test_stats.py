"""pipelines/analysis/stats.py against scipy and statsmodels, and the report's comparisons and promotion gate on
constructed per-decision tables whose truth is known."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t
from scipy.stats import wilcoxon
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_ind

from pipelines.analysis.stats import (
    decisions_for_power,
    equivalence,
    holm,
    noninferiority,
    paired_difference,
    paired_power,
)
from pipelines.core.config import Params, PromoteParams
from pipelines.stages import promote, report


def test_holm_equals_statsmodels():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 12)
    adjusted = holm({i: float(v) for i, v in enumerate(p)} | {"untested": None})
    assert adjusted["untested"] is None
    np.testing.assert_allclose([adjusted[i] for i in range(12)], multipletests(p, method="holm")[1], rtol=1e-12)


def test_paired_difference_uses_scipy_wilcoxon_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    difference = rng.normal(0.05, 0.1, 40)
    result = paired_difference(difference, 2000, 0)
    assert result["wilcoxon_p"] == pytest.approx(wilcoxon(difference).pvalue)
    assert result["ci95"][0] < result["mean"] < result["ci95"][1]
    assert result["sd"] == pytest.approx(difference.std(ddof=1), abs=1e-4)
    assert paired_difference(np.zeros(5), 200, 0)["wilcoxon_p"] is None  # nothing changed: no test to run


def test_noninferiority_bound_is_the_one_sided_t_bound():
    rng = np.random.default_rng(2)
    difference = rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0], 60)
    result = noninferiority(difference, margin=0.02, alpha=0.05)
    n = len(difference)
    expected = difference.mean() - student_t.ppf(0.95, n - 1) * difference.std(ddof=1) / math.sqrt(n)
    assert result["lower_bound"] == pytest.approx(expected, abs=1e-4)
    assert result["non_inferior"] == (expected > -0.02)
    many_lost = noninferiority(np.r_[-np.ones(20), np.zeros(40)], margin=0.02)
    assert not many_lost["non_inferior"] and many_lost["lower_bound"] < -0.2
    unchanged = noninferiority(np.zeros(30), margin=0.02)
    assert unchanged["degenerate"] and unchanged["lower_bound"] == 0 and unchanged["non_inferior"]


def test_tost_equals_statsmodels_ttost_ind():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.10, 0.08, 35), rng.normal(0.11, 0.12, 50)
    result = equivalence(a, b, margin=0.05, samples=1000, seed=0)
    reference_p = ttost_ind(a, b, -0.05, 0.05, usevar="unequal")[0]
    assert result["tost_p"] == pytest.approx(reference_p, rel=1e-9)
    assert result["equivalent"] == (reference_p < 0.05)
    far = equivalence(a, b + 0.3, margin=0.05, samples=1000, seed=0)
    assert not far["equivalent"] and far["ci95"][1] < -0.2


def test_power_equals_statsmodels_ttest_power():
    reference = TTestPower()
    for n, effect, sd in ((9, 0.05, 0.09), (30, 0.05, 0.09), (45, 0.05, 0.1), (120, 0.02, 0.1)):
        assert paired_power(n, effect, sd) == pytest.approx(
            reference.power(effect_size=effect / sd, nobs=n, alpha=0.05, alternative="two-sided"), abs=1e-6)
    needed = decisions_for_power(0.05, 0.09)
    assert needed == math.ceil(reference.solve_power(effect_size=0.05 / 0.09, power=0.8, alpha=0.05))
    assert paired_power(needed - 1, 0.05, 0.09) < 0.8 <= paired_power(needed, 0.05, 0.09)


def constructed_tables(n: int, gain: float, lost: int, seed: int = 0, noise: float = 0.03) -> dict[str, pd.DataFrame]:
    """Per-decision tables as report.per_decision builds them: `dpo` raises every decision's median
    Spearman by `gain` (plus noise) and loses `lost` correct answers; `sft` is the base plus noise."""
    rng = np.random.default_rng(seed)
    base_median = rng.normal(0.1, 0.1, n)
    correct = np.arange(n) % 3 == 0
    tables = {}
    for name, shift, flips in (("base", 0.0, 0), ("dpo", gain, lost), ("sft", 0.0, 0)):
        median = base_median + shift + (rng.normal(0, noise, n) if name != "base" else 0)
        right = correct.copy()
        right[np.flatnonzero(correct)[:flips]] = False
        table = pd.DataFrame({"dataset": ["arc_easy"] * (n // 2) + ["codah"] * (n - n // 2),
                              "task_id": [f"t{i}" for i in range(n)], "correct": right,
                              "spearman_median": median, "cosine_median": median})
        for metric in ("spearman", "cosine"):
            for which, offset in (("best", 0.1), ("worst", -0.1)):
                table[f"{metric}_{which}"] = median + offset
            table[f"{metric}_spread"] = 0.05
        tables[name] = table.set_index(pd.Index([f"g{i}" for i in range(n)], name="generation_id"))
    return tables


def metrics_for(tables, **promote_settings) -> tuple[dict, Params]:
    params = Params.model_validate({"tasks": {"datasets": ["arc_easy"]}, "evaluate": {
        "shift_datasets": ["codah"], "bootstrap_samples": 500}, "promote": promote_settings})
    return report.build_metrics(params, tables), params


def test_gate_passes_on_a_real_gain_without_accuracy_loss():
    metrics, params = metrics_for(constructed_tables(60, gain=0.08, lost=0))
    dpo = metrics["comparisons"]["dpo-base"]["all"]
    assert dpo["alignment"]["ci95"][0] > 0.05 and dpo["accuracy"]["non_inferior"]
    assert not metrics["smoke_test"] and dpo["alignment"]["power"]["value"] >= 0.8
    decision = promote.gate(metrics, params.promote)
    assert decision.passed and decision.alignment_gain_ci95[0] > 0 and decision.accuracy_lower_bound == 0


def test_gate_refuses_a_point_gain_whose_interval_covers_zero_and_a_small_run_is_a_smoke_test():
    metrics, params = metrics_for(constructed_tables(9, gain=0.02, lost=0, seed=4, noise=0.1))
    dpo = metrics["comparisons"]["dpo-base"]["all"]["alignment"]
    assert dpo["mean"] > 0 and dpo["ci95"][0] <= 0  # the old gate would have promoted on the point estimate
    assert metrics["smoke_test"] and dpo["smoke_test"] and dpo["power"]["decisions_needed"] > 9
    decision = promote.gate(metrics, params.promote)
    assert not decision.passed and "95% CI lower bound" in decision.reasons[0]


def test_gate_never_promotes_on_the_eval_split_that_chose_the_training():
    metrics, params = metrics_for(constructed_tables(60, gain=0.08, lost=0))
    assert promote.gate(metrics, params.promote).passed  # the same figures on the test split pass
    decision = promote.gate({**metrics, "split": "eval"}, params.promote)
    assert not decision.passed and decision.reasons == [r for r in decision.reasons if "eval split" in r] != []


def test_gate_refuses_an_alignment_gain_bought_with_accuracy():
    metrics, params = metrics_for(constructed_tables(60, gain=0.08, lost=10), accuracy_tolerance=0.02)
    decision = promote.gate(metrics, params.promote)
    assert not decision.passed and decision.accuracy_lower_bound < -0.02
    assert decision.reasons == [r for r in decision.reasons if "non-inferiority not shown" in r]


def test_comparisons_holm_over_the_family_and_correct_vs_incorrect_by_decision():
    metrics, _ = metrics_for(constructed_tables(60, gain=0.08, lost=0))
    assert set(metrics["comparisons"]) == {"dpo-base", "sft-base", "dpo-sft"}
    family = {(c, d): s["alignment"]["wilcoxon_p"] for c, by in metrics["comparisons"].items() for d, s in by.items()}
    expected = multipletests([p for p in family.values()], method="holm")[1]
    got = [metrics["comparisons"][c][d]["alignment"]["holm_p"] for c, d in family]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    split = metrics["models"]["base"]["all"]["correct_vs_incorrect_spearman"]
    assert (split["n_a"], split["n_b"]) == (20, 40)  # decisions, not explanations
    page = report.render(metrics, [])
    assert "Holm" in page and "TOST" in page and "Smoke test" not in page


def test_gate_needs_the_comparison():
    decision = promote.gate({"models": {}}, PromoteParams())
    assert not decision.passed and "dpo-base" in decision.reasons[0]


def test_the_reports_wilson_interval_is_the_score_interval():
    """Against the closed form: centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)."""
    from scipy.stats import norm

    from pipelines.stages.report import wilson

    z = norm.ppf(0.975)
    for successes, n in ((0, 5), (3, 10), (47, 50), (50, 50)):
        p, scale = successes / n, 1 + z * z / n
        centre, half = (p + z * z / (2 * n)) / scale, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
        assert wilson(successes, n) == pytest.approx((centre - half, centre + half), abs=1e-4)
    assert wilson(0, 0) is None
