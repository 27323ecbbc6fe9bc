"""Bank -> preference pairs for DPO (method.md section 6).

    python -m pipelines pair [--params params.yaml] [--model NAME]
    # data/<model>/bank/*/{bank.parquet,generations.jsonl} -> data/<model>/pairs/{train,eval}.jsonl

Per decision, among its explanations with a defined score: chosen = the highest score, rejected = the
lowest (`pair.preference: shorter` ranks by length instead: the positive control of the training loop). The prompt is the three-turn conversation with the model's own decision; chosen and rejected
are assistant turns (TRL's conversational preference format). Pairs follow their task's split, so no
eval or test task ever reaches training; test tasks give no pairs at all (they are held out).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from pipelines.analysis.controls import OWN
from pipelines.core.config import PairParams, Params
from pipelines.core.prompts import explanation_conversation
from pipelines.core.records import (
    Task,
    read_stage_input,
    sha256,
    write_json,
    write_records,
)

PAIR_SPLITS = ("train", "eval")


def choose(scores: list[tuple[int, float, str]], params: PairParams) -> tuple[int, int] | str:
    """(chosen index, rejected index) among (index, score, text) triples, or the reason for no pair."""
    defined = [(i, s, t) for i, s, t in scores if s is not None and not math.isnan(s)]
    if len(defined) < 2:
        return "fewer than two scored explanations"
    # on equal scores the earlier explanation is chosen and the later one rejected: never the same one
    best = max(defined, key=lambda row: (row[1], -row[0]))
    worst = min(defined, key=lambda row: (row[1], -row[0]))
    tie = best[1] == worst[1] or best[2].strip() == worst[2].strip()
    if tie and not params.keep_ties:
        return "tie"
    if not tie and best[1] - worst[1] < params.min_margin:
        return "below margin"
    return best[0], worst[0]


def make_pairs(bank_rows: list[dict[str, Any]], generations: dict[str, dict[str, Any]], method: str,
               params: PairParams) -> tuple[list[dict[str, Any]], Counter]:
    """Pairs from the bank rows of one attribution method; the Counter says why decisions gave none."""
    by_decision: dict[str, list[dict[str, Any]]] = {}
    for row in bank_rows:
        if row["method"] == method and row["kind"] == OWN:  # controls are never paired
            by_decision.setdefault(row["generation_id"], []).append(row)
    pairs, dropped = [], Counter()
    for generation_id, rows in by_decision.items():
        generation = generations[generation_id]
        task = Task.from_dict(generation["task"])
        if task.split not in PAIR_SPLITS:
            dropped["held-out test task"] += 1
            continue
        rows = sorted(rows, key=lambda r: r["explanation_index"])
        def score(row):
            return -float(len(row["explanation"])) if params.preference == "shorter" else row[params.metric]

        picked = choose([(r["explanation_index"], score(r), r["explanation"]) for r in rows], params)
        if isinstance(picked, str):
            dropped[picked] += 1
            continue
        chosen, rejected = (next(r for r in rows if r["explanation_index"] == i) for i in picked)
        pairs.append({
            "id": generation_id, "task_id": task.id, "dataset": task.dataset, "split": task.split,
            "prompt": explanation_conversation(task, generation["decision"]),
            "chosen": [{"role": "assistant", "content": chosen["explanation"]}],
            "rejected": [{"role": "assistant", "content": rejected["explanation"]}],
            "chosen_index": chosen["explanation_index"], "rejected_index": rejected["explanation_index"],
            "chosen_score": score(chosen), "rejected_score": score(rejected),
            "margin": score(chosen) - score(rejected), "method": method, "metric": params.metric,
            "preference": params.preference, "correct": generation["correct"], "model": generation["model"],
        })
    return pairs, dropped


def read_bank(slices: list[Path]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The bank rows and the generations of every slice (a slice: one dataset's bank folder)."""
    import pandas as pd

    rows, generations = [], {}
    for folder in slices:
        bank_path = folder / "bank.parquet"
        if not bank_path.exists():
            raise FileNotFoundError(f"{bank_path} not found: run `python -m pipelines score` first")
        rows.extend(pd.read_parquet(bank_path).to_dict("records"))
        if rows:
            generations.update({g["id"]: g for g in read_stage_input(folder / "generations.jsonl", "generate")})
    return rows, generations


def run(params: Params, folder: Path, slices: list[Path] | None = None) -> dict[str, Any]:
    """Pairs from the bank slices (default: the bank in `folder` itself) into folder/pairs."""
    data = folder
    bank, generations = read_bank(slices if slices is not None else [data])
    if not bank:
        where = " + ".join(str(folder / "bank.parquet") for folder in (slices or [data]))
        raise ValueError(f"{where} is empty: run tasks, generate, attribute and score on some tasks first")
    method = params.pair.method or params.attribute.methods[0]
    if method not in {row["method"] for row in bank}:
        raise ValueError(f"the bank has no '{method}' attributions: add it to attribute.methods and rerun "
                         "attribute and score, or set pair.method")
    pairs, dropped = make_pairs(bank, generations, method, params.pair)
    train_ids = {p["task_id"] for p in pairs if p["split"] == "train"}
    assert not train_ids & {p["task_id"] for p in pairs if p["split"] != "train"}, "a task in two splits"
    summary: dict[str, Any] = {"method": method, "metric": params.pair.metric, "dropped": dict(dropped)}
    for split in PAIR_SPLITS:
        path = data / "pairs" / f"{split}.jsonl"
        summary[split] = {"pairs": write_records(path, [p for p in pairs if p["split"] == split]),
                          "path": str(path), "sha256": sha256(path)}
    margins = [p["margin"] for p in pairs]
    summary["mean_margin"] = sum(margins) / len(margins) if margins else None
    write_json(data / "pairs_summary.json", summary)
    if not summary["train"]["pairs"]:
        raise ValueError(f"no usable training pairs ({dict(dropped)}): build the bank on more train-split tasks "
                         "or with more explanations, or relax pair.min_margin / pair.keep_ties")
    return summary
