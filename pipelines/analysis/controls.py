"""How far a bank's alignment scores can be trusted: the null floor and the diagnosticity test.

    from pipelines.analysis.controls import control_summary
    control_summary(bank, metrics=("spearman", "cosine"), samples=2000, seed=42)

Both read the bank's control rows (`kind`): `mismatched` = an explanation of another task teacher-forced
after this decision, `counterfactual` = the model's explanation of a forced other option, teacher-forced
after the real decision. The unit is the decision, so every interval is a bootstrap over decisions.
- Null floor: the mean over decisions of (own explanations' mean score - mismatched explanations' mean
  score). What template, positions and option tokens produce alone sits in the floor; only the
  difference is agreement that belongs to this explanation.
- Diagnosticity: per decision, the AUROC of own vs counterfactual scores (P(own > counterfactual), ties
  half), averaged over decisions. 0.5 = the metric cannot tell the model's own explanation from one
  written for another answer, so it cannot judge faithfulness however much it spreads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OWN, MISMATCHED, COUNTERFACTUAL = "own", "mismatched", "counterfactual"
KINDS = (OWN, MISMATCHED, COUNTERFACTUAL)


def bootstrap_ci(values: np.ndarray, samples: int, seed: int) -> tuple[float, float] | None:
    """Percentile 95% interval of the mean, NaNs dropped; None below two values."""
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return None
    means = np.random.default_rng(seed).choice(values, (samples, len(values))).mean(1)
    return round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(positive > negative) + P(tie) / 2 over all pairs; NaN when either side is empty."""
    positives, negatives = positives[~np.isnan(positives)], negatives[~np.isnan(negatives)]
    if not len(positives) or not len(negatives):
        return float("nan")
    difference = positives[:, None] - negatives[None, :]
    return float((difference > 0).mean() + 0.5 * (difference == 0).mean())


def _estimate(values: list[float], samples: int, seed: int) -> dict[str, Any]:
    array = np.asarray(values, float)
    defined = array[~np.isnan(array)]
    return {"mean": round(float(defined.mean()), 4) if len(defined) else None,
            "ci95": bootstrap_ci(defined, samples, seed), "decisions": int(len(defined))}


def null_floor(table, metric: str, samples: int, seed: int) -> dict[str, Any]:
    """Observed (own) vs floor (mismatched) per decision, and their difference with a bootstrap CI."""
    own, floor, difference = [], [], []
    for _, rows in table.groupby("generation_id"):
        a = rows.loc[rows["kind"] == OWN, metric].mean()
        b = rows.loc[rows["kind"] == MISMATCHED, metric].mean()
        if np.isnan(a) or np.isnan(b):
            continue
        own.append(a), floor.append(b), difference.append(a - b)
    return {"observed": _estimate(own, samples, seed), "floor": _estimate(floor, samples, seed),
            "observed_minus_floor": _estimate(difference, samples, seed)}


def decision_aurocs(table, metric: str) -> np.ndarray:
    """Per decision (in generation_id order), the AUROC of its own explanations vs its counterfactual."""
    return np.array([auroc(rows.loc[rows["kind"] == OWN, metric].to_numpy(float),
                           rows.loc[rows["kind"] == COUNTERFACTUAL, metric].to_numpy(float))
                     for _, rows in table.groupby("generation_id")], float)


def diagnosticity(table, metric: str, samples: int, seed: int) -> dict[str, Any]:
    """Within-decision AUROC of own vs counterfactual explanations, averaged over decisions."""
    return {"auroc": _estimate(decision_aurocs(table, metric), samples, seed)}


def control_summary(table, metrics: tuple[str, ...], samples: int, seed: int) -> dict[str, Any]:
    """Null floor and diagnosticity per metric, over all decisions and per dataset, for one method's rows."""
    if "kind" not in table or not table["kind"].isin([MISMATCHED, COUNTERFACTUAL]).any():
        return {"controls": 0}
    parts = {"all": table, **{d: rows for d, rows in table.groupby("dataset")}}
    return {"controls": int((table["kind"] != OWN).sum()),
            "null_floor": {name: {m: null_floor(rows, m, samples, seed) for m in metrics}
                           for name, rows in parts.items()},
            "diagnosticity": {name: {m: diagnosticity(rows, m, samples, seed) for m in metrics}
                              for name, rows in parts.items()}}
