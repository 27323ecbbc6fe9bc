"""Bank -> preference pairs for DPO (docs/method.md section 6).

    python -m pipelines pair [--params params.yaml] [--model NAME]
    # data/<model>/bank/*/{bank.parquet,generations.jsonl} -> data/<model>/pairs/{train,eval}.jsonl

Per decision, among its explanations with a defined score: chosen = the highest score, rejected = the
lowest (`pair.preference: shorter` ranks by length instead: the positive control of the training loop). The prompt is the three-turn conversation with the model's own decision; chosen and rejected
are assistant turns (TRL's conversational preference format). Pairs follow their task's split, so no
eval or test task ever reaches training; test tasks give no pairs at all (they are held out).

The stage reads only the bank columns pairs are made of (ids, method, kind, index, text and the metric, a
row group at a time: never the vectors), keeps the generations of the decisions it pairs, and writes each
pair as it is made, so a slice of 100,000 decisions costs a few hundred megabytes.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import PairParams, Params
from pipelines.core.prompts import explanation_conversation
from pipelines.core.records import Task, read_records, sha256, write_json
from pipelines.core.vocabulary import EVAL, OWN, PAIR_SPLITS, TRAIN

GENERATIONS, BANK, PAIRS = (ARTIFACTS[n] for n in ("generations", "bank", "pairs"))  # read, read, written


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


def _decision_pairs(decisions: Iterable[tuple[str, list[tuple[int, Any, str]]]],
                    generations: dict[str, dict[str, Any]], method: str, params: PairParams,
                    dropped: Counter) -> Iterator[dict[str, Any]]:
    """The pair of each decision, from its own explanations' (index, score, text) in any order; `dropped`
    counts why decisions gave none."""
    for generation_id, rows in decisions:
        generation = generations[generation_id]
        task = Task.from_dict(generation["task"])
        if task.split not in PAIR_SPLITS:
            dropped["held-out test task"] += 1
            continue
        rows = sorted(rows, key=lambda r: r[0])

        def score(row):
            return -float(len(row[2])) if params.preference == "shorter" else row[1]

        picked = choose([(r[0], score(r), r[2]) for r in rows], params)
        if isinstance(picked, str):
            dropped[picked] += 1
            continue
        chosen, rejected = (next(r for r in rows if r[0] == i) for i in picked)
        yield {
            "id": generation_id, "task_id": task.id, "dataset": task.dataset, "split": task.split,
            "prompt": explanation_conversation(task, generation["decision"]),
            "chosen": [{"role": "assistant", "content": chosen[2]}],
            "rejected": [{"role": "assistant", "content": rejected[2]}],
            "chosen_index": chosen[0], "rejected_index": rejected[0],
            "chosen_score": score(chosen), "rejected_score": score(rejected),
            "margin": score(chosen) - score(rejected), "method": method, "metric": params.metric,
            "preference": params.preference, "correct": generation["correct"], "model": generation["model"],
        }


def make_pairs(bank_rows: list[dict[str, Any]], generations: dict[str, dict[str, Any]], method: str,
               params: PairParams) -> tuple[list[dict[str, Any]], Counter]:
    """Pairs from the bank rows of one attribution method; the Counter says why decisions gave none."""
    by_decision: dict[str, list[tuple[int, Any, str]]] = {}
    for row in bank_rows:
        if row["method"] == method and row["kind"] == OWN:  # controls are never paired
            score = row.get(params.metric) if params.preference == "shorter" else row[params.metric]
            by_decision.setdefault(row["generation_id"], []).append((row["explanation_index"], score,
                                                                     row["explanation"]))
    dropped: Counter = Counter()
    pairs = list(_decision_pairs(by_decision.items(), generations, method, params, dropped))
    return pairs, dropped


class Bank(NamedTuple):
    """What the pair stage reads of the bank slices: per decision (in bank order) its own explanations of
    the paired method as (index, score, text), the methods the slices hold, and their generations."""
    decisions: dict[str, list[tuple[int, Any, str]]]
    methods: set[str]
    generations: dict[str, dict[str, Any]]
    rows: int


def read_bank(slices: list[Path], method: str, metric: str | None) -> Bank:
    """The bank slices' columns that pairs are made of (never the vectors), a row group at a time, and the
    generations of the decisions they pair (a slice: one dataset's bank folder). `metric`: the score column
    (None: pairs ranked by length read none)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    decisions: dict[str, list[tuple[int, Any, str]]] = {}
    methods: set[str] = set()
    generations: dict[str, dict[str, Any]] = {}
    rows = 0
    for folder in slices:
        bank_path = folder / BANK.path
        if not bank_path.exists():
            raise FileNotFoundError(f"{bank_path} not found: run `python -m pipelines {BANK.stage}` first")
        file = pq.ParquetFile(bank_path)
        rows += file.metadata.num_rows
        if not file.metadata.num_rows:
            continue
        if metric is not None and metric not in file.schema_arrow.names:
            raise ValueError(f"{bank_path} has no '{metric}' scores: add it to score.metrics and rerun score, or "
                             "set pair.metric")
        columns = ["generation_id", "method", "kind", "explanation_index", "explanation"] + ([metric] if metric else [])
        for batch in file.iter_batches(columns=columns):
            methods.update(pc.unique(batch.column("method")).to_pylist())
            own = batch.filter(pc.and_(pc.equal(batch.column("method"), method), pc.equal(batch.column("kind"), OWN)))
            scores = own.column(metric).to_pylist() if metric in columns else [None] * own.num_rows
            for generation_id, index, score, text in zip(own.column("generation_id").to_pylist(),
                                                         own.column("explanation_index").to_pylist(), scores,
                                                         own.column("explanation").to_pylist()):
                decisions.setdefault(generation_id, []).append((index, score, text))
        wanted = set(decisions)
        generations.update({g["id"]: {k: g[k] for k in ("task", "decision", "correct", "model")}
                            for g in read_records(_stage_input(folder / GENERATIONS.path, GENERATIONS.stage))
                            if g["id"] in wanted})
    return Bank(decisions, methods, generations, rows)


def _stage_input(path: Path, producer: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m pipelines {producer}` first")
    return path


class _SplitWriter:
    """pairs/{train,eval}.jsonl written a pair at a time (write_records' format), each replaced atomically."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = {split: folder / f"{split}.jsonl" for split in PAIR_SPLITS}
        self.handles = {split: open(path.with_name(path.name + ".partial"), "w", encoding="utf-8")
                        for split, path in self.paths.items()}
        self.counts = dict.fromkeys(PAIR_SPLITS, 0)

    def write(self, pair: dict[str, Any]) -> None:
        self.handles[pair["split"]].write(json.dumps(pair, ensure_ascii=False) + "\n")
        self.counts[pair["split"]] += 1

    def close(self, keep: bool) -> None:
        for split, handle in self.handles.items():
            handle.close()
            partial = self.paths[split].with_name(self.paths[split].name + ".partial")
            partial.replace(self.paths[split]) if keep else partial.unlink()


def run(params: Params, folder: Path, slices: list[Path] | None = None) -> dict[str, Any]:
    """Pairs from the bank slices (default: the bank in `folder` itself) into folder/pairs."""
    data = folder
    method = params.pair.method or params.attribute.methods[0]
    bank = read_bank(slices if slices is not None else [data], method,
                     None if params.pair.preference == "shorter" else params.pair.metric)
    if not bank.rows:
        where = " + ".join(str(folder / BANK.path) for folder in (slices or [data]))
        raise ValueError(f"{where} is empty: run tasks, generate, attribute and score on some tasks first")
    if method not in bank.methods:
        raise ValueError(f"the bank has no '{method}' attributions: add it to attribute.methods and rerun "
                         "attribute and score, or set pair.method")
    dropped: Counter = Counter()
    writer, margins, tasks = _SplitWriter(data / PAIRS.path), [], {split: set() for split in PAIR_SPLITS}
    try:
        for pair in _decision_pairs(bank.decisions.items(), bank.generations, method, params.pair, dropped):
            writer.write(pair)
            margins.append(pair["margin"])
            tasks[pair["split"]].add(pair["task_id"])
        assert not tasks[TRAIN] & tasks[EVAL], "a task in two splits"
    except BaseException:
        writer.close(keep=False)
        raise
    writer.close(keep=True)
    summary: dict[str, Any] = {"method": method, "metric": params.pair.metric, "dropped": dict(dropped)}
    for split in PAIR_SPLITS:
        path = data / PAIRS.path / f"{split}.jsonl"
        summary[split] = {"pairs": writer.counts[split], "path": str(path), "sha256": sha256(path)}
    summary["mean_margin"] = sum(margins) / len(margins) if margins else None
    write_json(data / PAIRS.summary, summary)
    if not summary[TRAIN]["pairs"]:
        raise ValueError(f"no usable training pairs ({dict(dropped)}): build the bank on more train-split tasks "
                         "or with more explanations, or relax pair.min_margin / pair.keep_ties")
    return summary
