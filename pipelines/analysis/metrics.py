"""Agreement between a decision's attribution vector d and an explanation's vector e (docs/method.md section 5).

Every metric returns NaN where it is undefined (a constant or all-zero vector), never 0: an undefined
score must not pass for "no agreement". Tests check each against scipy on random, tied and constant
vectors.

`metric_rows(d, e, metrics, top_k)` computes them for many pairs at once (one pair of vectors per row of two
m x n arrays), as the score stage does: the same floating-point operations in the same order as the
one-pair functions, so each value equals theirs bit for bit (tested), at a small fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import kendalltau, rankdata


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    if denominator == 0:
        return float("nan")
    return float(np.clip((x * y).sum() / denominator, -1.0, 1.0))


def spearman(d: np.ndarray, e: np.ndarray) -> float:
    """Spearman of |d| and |e| (the paper's metric): Pearson of average ranks."""
    return _pearson(rankdata(np.abs(d)), rankdata(np.abs(e)))


def cosine(d: np.ndarray, e: np.ndarray) -> float:
    norms = np.linalg.norm(d) * np.linalg.norm(e)
    return float("nan") if norms == 0 else float(np.clip(d @ e / norms, -1.0, 1.0))


def l1_dot(d: np.ndarray, e: np.ndarray) -> float:
    """The released code's "cosine": dot(d / sum|d|, e / sum|e|). Not a cosine; kept for reproduction."""
    scale = np.abs(d).sum() * np.abs(e).sum()
    return float("nan") if scale == 0 else float(d @ e / scale)


def kendall(d: np.ndarray, e: np.ndarray) -> float:
    """Kendall tau-b of |d| and |e|."""
    a, b = np.abs(d), np.abs(e)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def top_k_overlap(d: np.ndarray, e: np.ndarray, k: int) -> float:
    """Jaccard of the k features with the largest |value| (ties broken by position)."""
    k = min(k, len(d))
    if k == 0 or not np.abs(d).any() or not np.abs(e).any():
        return float("nan")
    top_d = set(np.argsort(-np.abs(d), kind="stable")[:k].tolist())
    top_e = set(np.argsort(-np.abs(e), kind="stable")[:k].tolist())
    return len(top_d & top_e) / len(top_d | top_e)


def metric_functions(top_k: int) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    return {"spearman": spearman, "cosine": cosine, "l1_dot": l1_dot, "kendall": kendall,
            "top_k_overlap": lambda d, e: top_k_overlap(d, e, top_k)}


class _Ranked:
    """One stable sort per row of |vectors| (m x n): average ranks (Spearman's), dense ranks and the count of
    tied pairs (Kendall's). Ranks are exact: halves for the average, small integers for the dense."""

    def __init__(self, a: np.ndarray):
        m, n = a.shape
        order = np.argsort(a, axis=1, kind="stable")
        ordered = np.take_along_axis(a, order, axis=1)
        new = np.ones((m, n), bool)  # where a run of equal values starts
        new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        position = np.broadcast_to(np.arange(n), (m, n))
        first = np.maximum.accumulate(np.where(new, position, 0), axis=1)  # the run's first position
        ends = np.ones((m, n), bool)
        ends[:, :-1] = new[:, 1:]
        last = np.minimum.accumulate(np.where(ends, position, n)[:, ::-1], axis=1)[:, ::-1]
        self.average = np.empty((m, n))
        np.put_along_axis(self.average, order, (first + last) / 2 + 1, axis=1)
        dense = np.cumsum(new, axis=1, dtype=np.int16) - 1
        self.dense = np.empty((m, n), np.int8 if n <= 128 else np.int16)  # differences fit the type
        np.put_along_axis(self.dense, order, dense.astype(self.dense.dtype), axis=1)
        self.tied_pairs = (position - first).sum(axis=1)
        self.nan = np.isnan(a).any(axis=1)


def _dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise a @ b through the BLAS dot the one-pair functions' `@` calls (np.vecdot calls it per row)."""
    return np.vecdot(a, b)


PAIRS_PER_BLOCK = 2**22  # rows x feature pairs that kendall holds at once (one byte each)


def _pair_signs(dense: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """sign(rank i - rank j) for every feature pair i < j, as int8."""
    return np.sign(np.take(dense, first, axis=1) - np.take(dense, second, axis=1)).astype(np.int8, copy=False)


class _Rows:
    """The metrics of row pairs (decision d[owner[r]], explanation e[r]): each decision's own share of the work
    (norms, ranks, pair signs) is done once for all of its explanations."""

    def __init__(self, d: np.ndarray, e: np.ndarray, owner: np.ndarray):
        self.d, self.e, self.owner = d, e, owner
        self.m, self.n = e.shape
        self._abs: dict[str, np.ndarray] = {}
        self._ranked: dict[str, _Ranked] = {}

    def absolute(self, side: str) -> np.ndarray:
        if side not in self._abs:
            self._abs[side] = np.abs(self.d if side == "d" else self.e)
        return self._abs[side]

    def ranked(self, side: str) -> _Ranked:
        if side not in self._ranked:
            self._ranked[side] = _Ranked(self.absolute(side))
        return self._ranked[side]

    def decision_rows(self, values: np.ndarray) -> np.ndarray:
        return values[self.owner]

    def spearman(self) -> np.ndarray:
        """Pearson of average ranks; the sums are exact (halves), so their order does not matter."""
        if self.n == 0:
            return np.full(self.m, np.nan)
        x, y = self.ranked("d").average, self.ranked("e").average
        x, y = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
        denominator = np.sqrt(self.decision_rows((x * x).sum(axis=1)) * (y * y).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.clip((self.decision_rows(x) * y).sum(axis=1) / denominator, -1.0, 1.0)
        value[(denominator == 0) | self.decision_rows(self.ranked("d").nan) | self.ranked("e").nan] = np.nan
        return value  # scipy's rankdata gives NaN ranks to a vector with a NaN

    def cosine(self) -> np.ndarray:
        # np.linalg.norm of a vector is sqrt(x @ x)
        norms = self.decision_rows(np.sqrt(_dots(self.d, self.d))) * np.sqrt(_dots(self.e, self.e))
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.clip(_dots(self.decision_rows(self.d), self.e) / norms, -1.0, 1.0)
        value[norms == 0] = np.nan
        return value

    def l1_dot(self) -> np.ndarray:
        scale = self.decision_rows(self.absolute("d").sum(axis=1)) * self.absolute("e").sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = _dots(self.decision_rows(self.d), self.e) / scale
        value[scale == 0] = np.nan
        return value

    def kendall(self) -> np.ndarray:
        """tau-b as scipy computes it: (concordant - discordant) / sqrt(pairs untied in x) / sqrt(pairs untied
        in y), each an exact count over all feature pairs."""
        value = np.full(self.m, np.nan)
        if self.n < 2:
            return value
        x, y = self.ranked("d"), self.ranked("e")
        first, second = np.triu_indices(self.n, 1)
        total = len(first)
        x_free = self.decision_rows(total - x.tied_pairs)
        y_free = total - y.tied_pairs
        decisions = np.unique(self.owner)
        step = max(1, PAIRS_PER_BLOCK // total)
        for start in range(0, len(decisions), step):
            block = decisions[start:start + step]
            signs = np.zeros((block[-1] + 1 - block[0], total), np.int8)
            signs[block - block[0]] = _pair_signs(x.dense[block], first, second)
            rows = np.nonzero((self.owner >= block[0]) & (self.owner <= block[-1]))[0]
            for part in np.array_split(rows, max(1, len(rows) // step)):
                difference = (signs[self.owner[part] - block[0]] * _pair_signs(y.dense[part], first, second)).sum(
                    axis=1, dtype=np.int64)
                with np.errstate(invalid="ignore", divide="ignore"):
                    tau = difference / np.sqrt(x_free[part]) / np.sqrt(y_free[part])
                value[part] = np.minimum(1.0, np.maximum(-1.0, tau))
        value[(x_free == 0) | (y_free == 0) | self.decision_rows(x.nan) | y.nan] = np.nan  # scipy propagates NaN
        return value

    def top_k_overlap(self, k: int) -> np.ndarray:
        k = min(k, self.n)
        if k == 0:
            return np.full(self.m, np.nan)

        def top(a: np.ndarray) -> np.ndarray:
            mask = np.zeros(a.shape, bool)
            np.put_along_axis(mask, np.argsort(-a, axis=1, kind="stable")[:, :k], True, axis=1)
            return mask

        a, b = self.absolute("d"), self.absolute("e")
        shared = np.count_nonzero(self.decision_rows(top(a)) & top(b), axis=1)
        value = shared / (2 * k - shared)
        value[~(self.decision_rows(a.any(axis=1)) & b.any(axis=1))] = np.nan
        return value


def metric_rows(d: np.ndarray, e: np.ndarray, metrics: tuple[str, ...], top_k: int,
                owner: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each metric for many pairs at once: {metric: one value per row of e}. `d` and `e` are u x n and m x n
    float64 arrays, `owner[r]` the row of d that row r of e is scored against (default: the same row). Each
    value equals the one-pair function's bit for bit."""
    d, e = np.ascontiguousarray(d, float), np.ascontiguousarray(e, float)
    owner = np.arange(len(e)) if owner is None else np.asarray(owner, np.intp)
    if d.ndim != 2 or e.ndim != 2 or d.shape[1] != e.shape[1] or owner.shape != (len(e),):
        raise ValueError(f"metric_rows takes u x n and m x n arrays and m owners, got {d.shape}, {e.shape}, "
                         f"{owner.shape}")
    rows = _Rows(d, e, owner)
    functions = {"spearman": rows.spearman, "cosine": rows.cosine, "l1_dot": rows.l1_dot, "kendall": rows.kendall,
                 "top_k_overlap": lambda: rows.top_k_overlap(top_k)}
    return {name: functions[name]() for name in metrics}


def align_by_string(tokens_d: list[str], d: list[float], tokens_e: list[str],
                    e: list[float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The released code's alignment: map token string -> value (last occurrence wins), keep shared strings."""
    by_d, by_e = dict(zip(tokens_d, d)), dict(zip(tokens_e, e))
    shared = [t for t in by_d if t in by_e]
    return shared, np.array([by_d[t] for t in shared], dtype=float), np.array([by_e[t] for t in shared], dtype=float)
