"""Attributions -> alignment metrics per explanation: the bank (method.md section 5).

    python -m pipelines score [--params params.yaml]
    # data/attributions.jsonl + data/generations.jsonl -> data/bank.parquet, data/score_summary.json

One row per (decision, method, explanation); `pd.read_parquet("data/bank.parquet")` reads it. Rows of
kind `own` are the model's explanations; `counterfactual` and `mismatched` rows are the controls
(pipelines/analysis/controls.py). The summary gives metric means over own rows, the split by correct vs
incorrect decisions, the null floor and the diagnosticity AUROC with bootstrap intervals over decisions,
the spread of each metric, and a warning where n_samples is below what the convergence study found
stable for the record's feature count.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.analysis.controls import COUNTERFACTUAL, OWN, control_summary
from pipelines.analysis.metrics import align_by_string, metric_functions
from pipelines.attribution.catalog import SAMPLING_METHODS
from pipelines.core.config import Params
from pipelines.core.records import read_stage_input, write_json

# Perturbation samples per feature below which the score summary warns. The convergence study
# (experiments/results/convergence) found LIME and KernelSHAP alignment scores not reproducible across
# seeds at up to ~2 samples per feature (score ICC <= 0.31, the chosen explanation kept no more often
# than chance); no tested level was stable. Until a larger study finds the level, warn below the paper's
# 500 samples for ~50 features, where an earlier probe put seed-to-seed vector agreement at 0.57.
STABLE_SAMPLES_PER_FEATURE = {"lime": 10, "kernel_shap": 10}


def _targets(attribution: dict[str, Any], generation: dict[str, Any]) -> list[dict[str, Any]]:
    """Own explanations, then the controls: kind, index within its kind, source, text, tokens, vector."""
    own = [{"kind": OWN, "index": i, "source": None, "text": generation["explanations"][i], "tokens": tokens,
            "vector": vector} for i, (tokens, vector) in enumerate(zip(attribution["explanation_feature_tokens"],
                                                                       attribution["explanations"]))]
    tokens = (attribution["explanation_feature_tokens"] or [attribution["feature_tokens"]])[0]
    seen: dict[str, int] = {}
    controls = []
    for control in attribution.get("controls") or []:
        index = seen[control["kind"]] = seen.get(control["kind"], -1) + 1
        controls.append({"kind": control["kind"], "index": index, "source": control["source"],
                         "text": control["text"], "tokens": tokens, "vector": control["vector"]})
    return own + controls


def score_attribution(attribution: dict[str, Any], generation: dict[str, Any], metrics: tuple[str, ...],
                      top_k: int) -> list[dict[str, Any]]:
    functions = metric_functions(top_k)
    task = generation["task"]
    seeds = attribution.get("seeds") or {}
    rows = []
    for target in _targets(attribution, generation):
        tokens, index = attribution["feature_tokens"], target["index"]
        name = f"{target['kind']} explanation {index}" if target["kind"] != OWN else f"explanation {index}"
        if attribution["features"] == "string_aligned":
            tokens, d, e = align_by_string(tokens, attribution["decision"], target["tokens"], target["vector"])
        else:
            d, e = np.asarray(attribution["decision"], float), np.asarray(target["vector"], float)
            if d.shape != e.shape:
                raise ValueError(f"record {attribution['id']}: {name} has {e.size} features, the decision {d.size}")
        suffix = index if target["kind"] == OWN else f"{target['kind']}-{index}"
        rows.append({
            "id": f"{attribution['id']}/{suffix}", "generation_id": generation["id"], "task_id": task["id"],
            "dataset": task["dataset"], "split": task["split"], "method": attribution["method"],
            "kind": target["kind"], "explanation_index": index, "control_source": target["source"],
            "correct": generation["correct"], "answer_label": generation["answer_label"],
            "gold_label": task["answer_label"], "decision": generation["decision"], "explanation": target["text"],
            "n_features": int(d.size),
            **{name: functions[name](d, e) for name in metrics},
            "masks": attribution.get("masks", "none"), "decision_seed": seeds.get("decision"),
            "explanation_seed": seeds.get("explanations"),
            "n_samples": (attribution.get("settings") or {}).get("n_samples")
            if attribution["method"] in SAMPLING_METHODS else None,
            "decision_vector": d.tolist(), "explanation_vector": e.tolist(),
            "feature_tokens": tokens, "model": generation["model"]["id"],
        })
    return rows


def _rounded(value) -> float | None:
    """JSON-friendly: NaN (undefined) becomes null."""
    return None if value is None or np.isnan(value) else round(float(value), 4)


def spread(table, metric: str) -> dict[str, float | None]:
    """How a metric varies between the explanations of one decision (within) and between decisions.

    Spread is not discrimination: a metric can vary a lot among a decision's explanations for reasons
    unrelated to faithfulness (sampling noise included). `within_share` = within / (within + between)
    std; whether the metric tells a faithful explanation from an unfaithful one is the diagnosticity
    AUROC's question, not this one's."""
    grouped = table.dropna(subset=[metric]).groupby("generation_id")[metric]
    within = grouped.std(ddof=0).mean()
    between = grouped.mean().std(ddof=0)
    total = within + between
    return {"within_decision_std": _rounded(within), "between_decision_std": _rounded(between),
            "within_share": _rounded(within / total) if total else None}


def sample_warnings(rows, method: str) -> list[str]:
    """Where n_samples is below the convergence study's stable level for the records' feature counts."""
    if method not in SAMPLING_METHODS or rows["n_samples"].isna().all():
        return []
    needed = STABLE_SAMPLES_PER_FEATURE[method] * int(rows["n_features"].median())
    short = rows.loc[rows["n_samples"] < STABLE_SAMPLES_PER_FEATURE[method] * rows["n_features"], "generation_id"]
    if short.empty:
        return []
    return [f"{method}: n_samples {int(rows['n_samples'].min())} is below {STABLE_SAMPLES_PER_FEATURE[method]} "
            f"samples per feature (about {needed} for the median record's {int(rows['n_features'].median())} "
            f"features) in {short.nunique()} of {rows['generation_id'].nunique()} decisions; the convergence study "
            "found scores at up to ~2 samples per feature not reproducible across seeds (ICC <= 0.31, chosen "
            "explanation kept at chance), so these per-explanation scores and the pairs built on them are mostly "
            "sampling noise (experiments/results/convergence)"]


def summarize(table, metrics: tuple[str, ...], samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method, everything in table.groupby("method"):
        rows = everything[everything["kind"] == OWN]
        graded = rows[rows["correct"].notna()]
        summary[method] = {
            "explanations": len(rows), "decisions": int(rows["generation_id"].nunique()),
            "masks": sorted(everything["masks"].unique().tolist()),
            "warnings": sample_warnings(rows, method),
            "mean": {m: _rounded(rows[m].mean()) for m in metrics},
            "undefined": {m: int(rows[m].isna().sum()) for m in metrics},
            "empty_explanations": int((rows["explanation"].str.strip() == "").sum()),
            "decisions_without_counterfactual": int(everything["generation_id"].nunique() - everything.loc[
                everything["kind"] == COUNTERFACTUAL, "generation_id"].nunique()),
            "by_correctness": {label: {m: _rounded(part[m].mean()) for m in metrics} | {"explanations": len(part)}
                               for label, part in (("correct", graded[graded["correct"].astype(bool)]),
                                                   ("incorrect", graded[~graded["correct"].astype(bool)]))},
            "by_dataset": {d: {m: _rounded(part[m].mean()) for m in metrics} for d, part in rows.groupby("dataset")},
            **control_summary(everything, metrics, samples, seed),
            "spread": {m: spread(rows, m) for m in metrics},
        }
    return summary


def run(params: Params, folder: Path) -> dict[str, Any]:
    import pandas as pd

    data = folder
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
    if len(table):  # nullable integers: 63-bit seeds would lose their low bits in a float column
        table = table.astype({"decision_seed": "Int64", "explanation_seed": "Int64", "n_samples": "Int64"})
    out = data / "bank.parquet"
    partial = out.with_name(out.name + ".partial")
    table.to_parquet(partial, index=False)
    partial.replace(out)
    summary = {"path": str(out), "rows": len(table), "seconds": round(time.perf_counter() - started, 2),
               "methods": summarize(table, params.score.metrics, params.score.bootstrap_samples, params.seed)
               if len(table) else {}}
    write_json(data / "score_summary.json", summary)
    return summary
