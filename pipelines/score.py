"""Attributions -> alignment metrics per explanation: the bank (method.md section 5).

    python -m pipelines score [--params params.yaml]
    # data/attributions.jsonl + data/generations.jsonl -> data/bank.parquet, data/score_summary.json

One row per (decision, method, explanation); `pd.read_parquet("data/bank.parquet")` reads it. The
summary gives metric means, the split by correct vs incorrect decisions, and how much each metric
varies between the k explanations of one decision compared with between decisions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Params
from pipelines.metrics import align_by_string, metric_functions
from pipelines.records import read_stage_input, write_json


def score_attribution(attribution: dict[str, Any], generation: dict[str, Any], metrics: tuple[str, ...],
                      top_k: int) -> list[dict[str, Any]]:
    functions = metric_functions(top_k)
    task = generation["task"]
    rows = []
    for index, (tokens_e, vector_e) in enumerate(zip(attribution["explanation_feature_tokens"],
                                                     attribution["explanations"])):
        tokens = attribution["feature_tokens"]
        if attribution["features"] == "string_aligned":
            tokens, d, e = align_by_string(tokens, attribution["decision"], tokens_e, vector_e)
        else:
            d, e = np.asarray(attribution["decision"], float), np.asarray(vector_e, float)
            if d.shape != e.shape:
                raise ValueError(f"record {attribution['id']}: explanation {index} has {e.size} features, "
                                 f"the decision {d.size}")
        rows.append({
            "id": f"{attribution['id']}/{index}", "generation_id": generation["id"], "task_id": task["id"],
            "dataset": task["dataset"], "split": task["split"], "method": attribution["method"],
            "explanation_index": index, "correct": generation["correct"],
            "answer_label": generation["answer_label"], "gold_label": task["answer_label"],
            "decision": generation["decision"], "explanation": generation["explanations"][index],
            "n_features": int(d.size),
            **{name: functions[name](d, e) for name in metrics},
            "decision_vector": d.tolist(), "explanation_vector": e.tolist(),
            "feature_tokens": tokens, "model": generation["model"]["id"],
        })
    return rows


def _rounded(value) -> float | None:
    """JSON-friendly: NaN (undefined) becomes null."""
    return None if value is None or np.isnan(value) else round(float(value), 4)


def spread(table, metric: str) -> dict[str, float | None]:
    """Within-decision vs between-decision variation of one metric (the paper's argument about cosine)."""
    grouped = table.dropna(subset=[metric]).groupby("generation_id")[metric]
    within = grouped.std(ddof=0).mean()
    between = grouped.mean().std(ddof=0)
    return {"within_decision_std": _rounded(within), "between_decision_std": _rounded(between),
            "within_to_between": _rounded(within / between) if between else None}


def summarize(table, metrics: tuple[str, ...]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method, rows in table.groupby("method"):
        graded = rows[rows["correct"].notna()]
        summary[method] = {
            "explanations": len(rows), "decisions": int(rows["generation_id"].nunique()),
            "mean": {m: _rounded(rows[m].mean()) for m in metrics},
            "undefined": {m: int(rows[m].isna().sum()) for m in metrics},
            "by_correctness": {label: {m: _rounded(part[m].mean()) for m in metrics} | {"explanations": len(part)}
                               for label, part in (("correct", graded[graded["correct"].astype(bool)]),
                                                   ("incorrect", graded[~graded["correct"].astype(bool)]))},
            "by_dataset": {d: {m: _rounded(part[m].mean()) for m in metrics} for d, part in rows.groupby("dataset")},
            "spread": {m: spread(rows, m) for m in metrics},
        }
    return summary


def run(params: Params) -> dict[str, Any]:
    import pandas as pd

    data = Path(params.data_dir)
    attributions_path, generations_path = data / "attributions.jsonl", data / "generations.jsonl"
    started = time.perf_counter()
    attributions = read_stage_input(attributions_path, "attribute")
    generations = {row["id"]: row for row in read_stage_input(generations_path, "generate")}
    rows = []
    for attribution in attributions:
        generation = generations.get(attribution["generation_id"])
        if generation is None:
            raise KeyError(f"attribution {attribution['id']}: generation {attribution['generation_id']} "
                           f"is not in {generations_path}")
        rows.extend(score_attribution(attribution, generation, params.score.metrics, params.score.top_k))
    table = pd.DataFrame(rows)
    out = data / "bank.parquet"
    partial = out.with_name(out.name + ".partial")
    table.to_parquet(partial, index=False)
    partial.replace(out)
    summary = {"path": str(out), "rows": len(table), "seconds": round(time.perf_counter() - started, 2),
               "methods": summarize(table, params.score.metrics) if len(table) else {}}
    write_json(data / "score_summary.json", summary)
    return summary
