"""Statistics that can carry a claim: the decision is the unit, comparisons are paired, intervals gate.

Every function takes one value per decision (a per-decision median alignment, a 0/1 correctness) and
returns plain dicts for metrics.json. The tests themselves are scipy's (Wilcoxon, t) and statsmodels'
(Holm's correction, TOST with ttost_ind, t-test power): this module chooses and reports them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.analysis.controls import bootstrap_ci


def paired_difference(difference: np.ndarray, samples: int, seed: int) -> dict[str, Any]:
    """Mean of per-decision paired differences (tuned - reference), bootstrap 95% CI over decisions,
    two-sided Wilcoxon signed-rank p (None when every difference is 0 or fewer than 2 decisions)."""
    from scipy.stats import wilcoxon

    difference = np.asarray(difference, float)
    difference = difference[~np.isnan(difference)]
    n = len(difference)
    result: dict[str, Any] = {
        "decisions": n, "mean": round(float(difference.mean()), 4) if n else None,
        "sd": round(float(difference.std(ddof=1)), 4) if n > 1 else None,
        "ci95": bootstrap_ci(difference, samples, seed) if n > 1 else None, "wilcoxon_p": None}
    if n >= 2 and np.any(difference != 0):
        result["wilcoxon_p"] = float(wilcoxon(difference).pvalue)
    return result


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p over the family (the keys with a p); None stays None."""
    from statsmodels.stats.multitest import multipletests

    tested = [key for key, p in pvalues.items() if p is not None]
    adjusted: dict[str, float | None] = {key: None for key in pvalues}
    if tested:
        corrected = multipletests([pvalues[key] for key in tested], method="holm")[1]
        adjusted.update({key: float(p) for key, p in zip(tested, corrected)})
    return adjusted


def noninferiority(difference: np.ndarray, margin: float, alpha: float = 0.05) -> dict[str, Any]:
    """Paired non-inferiority of a 0/1 outcome (tuned - reference per decision): the one-sided
    (1 - alpha) lower bound of the mean difference from a paired t-test, and whether it clears -margin.
    With no decision changed the difference has no variance: the bound is then the point value, and
    `degenerate` says so (no test can put an interval on it)."""
    from scipy.stats import ttest_1samp

    difference = np.asarray(difference, float)
    difference = difference[~np.isnan(difference)]
    n = len(difference)
    if n < 2:
        return {"decisions": n, "mean": None, "lower_bound": None, "p": None, "margin": margin,
                "non_inferior": False, "degenerate": True}
    mean = float(difference.mean())
    if np.all(difference == difference[0]):
        return {"decisions": n, "mean": round(mean, 4), "lower_bound": round(mean, 4), "p": None,
                "margin": margin, "non_inferior": mean > -margin, "degenerate": True}
    test = ttest_1samp(difference, -margin, alternative="greater")
    low = float(test.confidence_interval(1 - alpha).low)
    return {"decisions": n, "mean": round(mean, 4), "lower_bound": round(low, 4), "p": float(test.pvalue),
            "margin": margin, "non_inferior": low > -margin, "degenerate": False}


def equivalence(a: np.ndarray, b: np.ndarray, margin: float, samples: int, seed: int,
                alpha: float = 0.05) -> dict[str, Any]:
    """Two independent groups of decisions (e.g. correct vs incorrect): mean(a) - mean(b) with a
    bootstrap 95% CI (resampling within each group) and TOST with Welch t-tests against +-margin:
    equivalent when both one-sided tests reject at alpha."""
    from statsmodels.stats.weightstats import ttost_ind

    a, b = (np.asarray(x, float) for x in (a, b))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    out: dict[str, Any] = {"n_a": len(a), "n_b": len(b), "margin": margin, "difference": None, "ci95": None,
                           "tost_p": None, "equivalent": False}
    if len(a) < 2 or len(b) < 2:
        return out
    rng = np.random.default_rng(seed)
    boot = [rng.choice(a, len(a)).mean() - rng.choice(b, len(b)).mean() for _ in range(samples)]
    tost = float(ttost_ind(a, b, -margin, margin, usevar="unequal")[0])
    out.update(difference=round(float(a.mean() - b.mean()), 4),
               ci95=[round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
               tost_p=tost, equivalent=tost < alpha)
    return out


def paired_power(n: int, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Power of a two-sided paired t-test on n decisions to detect a mean difference `effect` when the
    paired differences have standard deviation `sd` (noncentral t)."""
    from statsmodels.stats.power import TTestPower

    if n < 2 or sd <= 0:
        return 0.0
    return float(TTestPower().power(effect_size=effect / sd, nobs=n, alpha=alpha, alternative="two-sided"))


def decisions_for_power(effect: float, sd: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """The smallest n whose paired_power reaches `power`."""
    n = 2
    while paired_power(n, effect, sd, alpha) < power:
        n += 1
    return n
