"""Is the instrument right where the answer is known? Figures of a known-answer bank against its ground truth.

    from pipelines.synthetic.validation import faithful_labels, instrument_table, dose_response, pair_precision

- `within_decision_auroc`: per decision with at least one faithful and one unfaithful own explanation, the
  probability that a faithful one scores above an unfaithful one (ties count half), averaged over decisions
  with a bootstrap 95% CI. 0.5 is chance; a working instrument reaches 0.9 with its best metric.
- `shuffled_control`: the same AUROC after each decision's vector is swapped for another decision's (the
  questions of the world have equal token counts, so every vector fits every decision): it must fall to
  about 0.5, else the AUROC measures something other than the decision's own attribution.
- `dose_response`: per decision, the mean alignment of its k explanations against the share of them that is
  faithful; the OLS slope with a bootstrap CI over decisions.
- `pair_precision`: the share of preference pairs whose chosen explanation is faithful and rejected
  unfaithful (and the share reversed).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.analysis.controls import OWN, auroc, bootstrap_ci
from pipelines.synthetic.world import label_explanation


def faithful_labels(bank, generations: dict[str, dict[str, Any]]):
    """The bank's rows with `faithful` (True / False / None) from the text each row scores."""
    def label(row) -> bool | None:
        question = generations[row.generation_id]["task"]["question"]
        return label_explanation(question, row.explanation) if isinstance(row.explanation, str) else None

    labelled = bank.copy()
    labelled["faithful"] = [label(row) for row in bank.itertuples()]
    return labelled


def _decision_aurocs(own, metric: str) -> np.ndarray:
    values = []
    for _, rows in own.groupby("generation_id"):
        scores = rows[metric].to_numpy(float)
        faithful = rows["faithful"].to_numpy(object)
        values.append(auroc(scores[faithful == True], scores[faithful == False]))  # noqa: E712 (None stays out)
    return np.array(values, float)


def within_decision_auroc(own, metric: str, samples: int, seed: int) -> dict[str, Any]:
    values = _decision_aurocs(own, metric)
    defined = values[~np.isnan(values)]
    return {"auroc": round(float(defined.mean()), 4) if len(defined) else None,
            "ci95": bootstrap_ci(defined, samples, seed), "decisions": int(len(defined))}


def shuffled_control(own, metric_function, metric: str, samples: int, seed: int) -> dict[str, Any]:
    """The AUROC with every decision's vector replaced by another decision's (a derangement, seeded)."""
    ids = sorted(own["generation_id"].unique())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    while len(ids) > 1 and (order == np.arange(len(ids))).any():
        order = rng.permutation(len(ids))
    vectors = {g: np.asarray(own.loc[own["generation_id"] == g, "decision_vector"].iloc[0], float) for g in ids}
    swapped = {g: vectors[ids[j]] for g, j in zip(ids, order)}
    shuffled = own.copy()
    shuffled[metric] = [metric_function(swapped[row.generation_id], np.asarray(row.explanation_vector, float))
                        for row in own.itertuples()]
    return within_decision_auroc(shuffled, metric, samples, seed)


def dose_response(own, metric: str, samples: int, seed: int) -> dict[str, Any]:
    """OLS slope of per-decision mean alignment on the faithful share of its labelled explanations."""
    shares, means = [], []
    for _, rows in own.groupby("generation_id"):
        labelled = rows[rows["faithful"].notna()]
        score = labelled[metric].to_numpy(float)
        if len(labelled) and not np.isnan(score).all():
            shares.append(float(labelled["faithful"].astype(bool).mean()))
            means.append(float(np.nanmean(score)))
    x, y = np.array(shares), np.array(means)
    if len(x) < 3 or np.ptp(x) == 0:
        return {"decisions": len(x), "slope": None, "ci95": None}

    def slope(index: np.ndarray) -> float:
        xs, ys = x[index], y[index]
        return float(np.polyfit(xs, ys, 1)[0]) if np.ptp(xs) > 0 else float("nan")

    rng = np.random.default_rng(seed)
    boot = np.array([slope(rng.integers(0, len(x), len(x))) for _ in range(samples)])
    boot = boot[~np.isnan(boot)]
    rounded = np.round(x, 1)
    by_share = {f"{s:.1f}": round(float(y[rounded == s].mean()), 4) for s in sorted(set(rounded))}
    return {"decisions": len(x), "slope": round(slope(np.arange(len(x))), 4),
            "ci95": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
            "mean_by_share": by_share}


def pair_precision(pairs: list[dict[str, Any]], generations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Share of pairs with a faithful chosen and an unfaithful rejected explanation, and the reverse."""
    right = wrong = 0
    for pair in pairs:
        question = generations[pair["task_id"]]["task"]["question"]
        chosen = label_explanation(question, pair["chosen"][-1]["content"])
        rejected = label_explanation(question, pair["rejected"][-1]["content"])
        right += chosen is True and rejected is False
        wrong += chosen is False and rejected is True
    n = len(pairs)
    return {"pairs": n, "precision": round(right / n, 4) if n else None,
            "reversed": round(wrong / n, 4) if n else None}


def faithful_share(own) -> np.ndarray:
    """Per decision (generation_id order), the faithful share of its labelled own explanations."""
    return np.array([float(rows.loc[rows["faithful"].notna(), "faithful"].astype(bool).mean())
                     if rows["faithful"].notna().any() else float("nan")
                     for _, rows in own.groupby("generation_id")], float)


def own_rows(bank, method: str):
    return bank[(bank["method"] == method) & (bank["kind"] == OWN)]
