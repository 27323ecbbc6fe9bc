"""Agreement between a decision's attribution vector d and an explanation's vector e (method.md section 5).

Every metric returns NaN where it is undefined (a constant or all-zero vector), never 0: an undefined
score must not pass for "no agreement". Tests check each against scipy on random, tied and constant
vectors.
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


def align_by_string(tokens_d: list[str], d: list[float], tokens_e: list[str],
                    e: list[float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The released code's alignment: map token string -> value (last occurrence wins), keep shared strings."""
    by_d, by_e = dict(zip(tokens_d, d)), dict(zip(tokens_e, e))
    shared = [t for t in by_d if t in by_e]
    return shared, np.array([by_d[t] for t in shared], dtype=float), np.array([by_e[t] for t in shared], dtype=float)
