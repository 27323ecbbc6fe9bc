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

from pipelines.core.vocabulary import COUNTERFACTUAL, MISMATCHED, OWN

# resample indices drawn (and values gathered) at once by a bootstrap: blocks of rows of the samples x decisions
# draw, so 2,000 resamples of 100,000 decisions never hold 200 million indices. The generator's stream is
# the same drawn in blocks or in one call (tested), so the intervals are choice()'s in one call.
BOOTSTRAP_BLOCK = 2**24


def _resample_means(arrays: list[np.ndarray], samples: int, seed: int) -> list[np.ndarray]:
    """The bootstrap means of each array (all of one length n), from the draws `default_rng(seed)` makes for n:
    `choice(values, (samples, n)).mean(1)` for each, the draws made once and shared."""
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    means = [np.empty(samples) for _ in arrays]
    # the indices choice draws (int32 holds the same values), a block of rows at a time
    rows = max(1, BOOTSTRAP_BLOCK // n)
    for start in range(0, samples, rows):
        index = rng.integers(0, n, size=(min(rows, samples - start), n), dtype=np.int32)
        for step in range(0, len(index), max(1, BOOTSTRAP_BLOCK // (4 * n))):  # a gathered block at a time
            block = index[step:step + max(1, BOOTSTRAP_BLOCK // (4 * n))]
            for values, out in zip(arrays, means):
                out[start + step:start + step + len(block)] = values[block].mean(1)
    return means


def bootstrap_cis(arrays: list[np.ndarray], samples: int, seed: int) -> list[tuple[float, float] | None]:
    """bootstrap_ci of each array; arrays of the same length share their draws (each call's draws depend on
    the length and the seed only), so a summary of many metrics draws once per length."""
    defined = [np.asarray(values, float) for values in arrays]
    defined = [values[~np.isnan(values)] for values in defined]
    out: list[tuple[float, float] | None] = [None] * len(defined)
    by_length: dict[int, list[int]] = {}
    for i, values in enumerate(defined):
        if len(values) >= 2:
            by_length.setdefault(len(values), []).append(i)
    for members in by_length.values():
        distinct: dict[bytes, int] = {}  # equal arrays (a slice's only dataset is also "all") resample once
        for i in members:
            distinct.setdefault(defined[i].tobytes(), i)
        firsts = list(distinct.values())
        for i, means in zip(firsts, _resample_means([defined[i] for i in firsts], samples, seed)):
            out[i] = round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)
        for i in members:
            out[i] = out[distinct[defined[i].tobytes()]]
    return out


def bootstrap_ci(values: np.ndarray, samples: int, seed: int) -> tuple[float, float] | None:
    """Percentile 95% interval of the mean, NaNs dropped; None below two values."""
    return bootstrap_cis([values], samples, seed)[0]


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(positive > negative) + P(tie) / 2 over all pairs; NaN when either side is empty."""
    positives, negatives = positives[~np.isnan(positives)], negatives[~np.isnan(negatives)]
    if not len(positives) or not len(negatives):
        return float("nan")
    difference = positives[:, None] - negatives[None, :]
    return float((difference > 0).mean() + 0.5 * (difference == 0).mean())


class _Estimates:
    """Estimates (mean, bootstrap CI, decisions) of many arrays, their intervals computed in one batch."""

    def __init__(self, samples: int, seed: int):
        self.samples, self.seed, self.pending = samples, seed, []

    def add(self, values: np.ndarray) -> dict[str, Any]:
        array = np.asarray(values, float)
        defined = array[~np.isnan(array)]
        estimate = {"mean": round(float(defined.mean()), 4) if len(defined) else None, "ci95": None,
                    "decisions": int(len(defined))}
        self.pending.append((estimate, defined))
        return estimate

    def finish(self) -> None:
        for (estimate, _), ci in zip(self.pending, bootstrap_cis([v for _, v in self.pending], self.samples,
                                                                 self.seed)):
            estimate["ci95"] = ci
        self.pending = []


def _estimate(values: list[float], samples: int, seed: int) -> dict[str, Any]:
    estimates = _Estimates(samples, seed)
    estimate = estimates.add(np.asarray(values, float))
    estimates.finish()
    return estimate


def _codes(table) -> tuple[np.ndarray, int]:
    """Each row's decision as its position among the table's generation ids in sorted order (groupby's)."""
    import pandas as pd

    codes, uniques = pd.factorize(table["generation_id"], sort=True)
    return codes, len(uniques)


def _kind_means(table, metric: str, kind: str, codes: np.ndarray, decisions: int) -> np.ndarray:
    """Per decision, the mean of `metric` over its rows of `kind` (NaN skipped; NaN without any), as
    Series.mean computes it for the rows in table order: the sum with NaN as 0 over the defined count."""
    mask = (table["kind"] == kind).to_numpy()
    group, values = codes[mask], table[metric].to_numpy(float)[mask]
    order = np.argsort(group, kind="stable")
    group, values = group[order], values[order]
    counts = np.bincount(group, minlength=decisions)
    position = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)[:len(group)]
    padded = np.zeros((decisions, counts.max() if len(group) else 0))
    padded[group, position] = np.where(np.isnan(values), 0.0, values)
    defined = np.bincount(group, weights=~np.isnan(values), minlength=decisions)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined > 0, padded.sum(axis=1) / defined, np.nan)


def _null_floor(table, metric: str, estimates: _Estimates, codes=None) -> dict[str, Any]:
    codes, decisions = (codes if codes is not None else _codes(table))
    own = _kind_means(table, metric, OWN, codes, decisions)
    floor = _kind_means(table, metric, MISMATCHED, codes, decisions)
    both = ~np.isnan(own) & ~np.isnan(floor)
    return {"observed": estimates.add(own[both]), "floor": estimates.add(floor[both]),
            "observed_minus_floor": estimates.add(own[both] - floor[both])}


def null_floor(table, metric: str, samples: int, seed: int) -> dict[str, Any]:
    """Observed (own) vs floor (mismatched) per decision, and their difference with a bootstrap CI."""
    estimates = _Estimates(samples, seed)
    out = _null_floor(table, metric, estimates)
    estimates.finish()
    return out


def _decision_aurocs(table, metric: str, codes: np.ndarray, decisions: int) -> np.ndarray:
    """auroc() of each decision's own vs counterfactual scores, over all its (own, counterfactual) pairs at once."""
    values = table[metric].to_numpy(float)
    kind = table["kind"].to_numpy()
    defined = ~np.isnan(values)
    own, other = np.nonzero((kind == OWN) & defined)[0], np.nonzero((kind == COUNTERFACTUAL) & defined)[0]
    out = np.full(decisions, np.nan)
    if not len(own) or not len(other):
        return out
    other = other[np.argsort(codes[other], kind="stable")]
    per = np.bincount(codes[other], minlength=decisions)
    first = np.cumsum(per) - per
    counts = per[codes[own]]  # counterfactual scores paired with each own score
    left = np.repeat(own, counts)
    right = other[np.repeat(first[codes[own]], counts) + np.arange(counts.sum()) - np.repeat(
        np.cumsum(counts) - counts, counts)]
    difference = values[left] - values[right]
    group = codes[left]
    pairs = np.bincount(group, minlength=decisions)
    above = np.bincount(group, weights=difference > 0, minlength=decisions)
    ties = np.bincount(group, weights=difference == 0, minlength=decisions)
    scored = pairs > 0
    out[scored] = above[scored] / pairs[scored] + 0.5 * (ties[scored] / pairs[scored])
    return out


def decision_aurocs(table, metric: str) -> np.ndarray:
    """Per decision (in generation_id order), the AUROC of its own explanations vs its counterfactual."""
    return _decision_aurocs(table, metric, *_codes(table))


def diagnosticity(table, metric: str, samples: int, seed: int) -> dict[str, Any]:
    """Within-decision AUROC of own vs counterfactual explanations, averaged over decisions."""
    return {"auroc": _estimate(decision_aurocs(table, metric), samples, seed)}


def control_summary(table, metrics: tuple[str, ...], samples: int, seed: int) -> dict[str, Any]:
    """Null floor and diagnosticity per metric, over all decisions and per dataset, for one method's rows."""
    if "kind" not in table or not table["kind"].isin([MISMATCHED, COUNTERFACTUAL]).any():
        return {"controls": 0}
    parts = {"all": table, **{d: rows for d, rows in table.groupby("dataset")}}
    estimates = _Estimates(samples, seed)
    floors, aurocs = {}, {}
    for name, rows in parts.items():
        codes = _codes(rows)
        floors[name] = {m: _null_floor(rows, m, estimates, codes) for m in metrics}
        aurocs[name] = {m: {"auroc": estimates.add(_decision_aurocs(rows, m, *codes))} for m in metrics}
    estimates.finish()
    return {"controls": int((table["kind"] != OWN).sum()), "null_floor": floors, "diagnosticity": aurocs}
