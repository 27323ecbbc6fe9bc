"""Each artifact declared once: the stage that writes it, its files, its Great Expectations suite, what it reads.

The stages take their files from here, the runner (pipelines/runner/) validates what a stage reads and
writes by it, and dvc.yaml's outs and deps, the Dagster assets, their deps and their checks follow it
(tests/test_dvc.py holds dvc.yaml to it). This module imports nothing: the ground floor of the ground floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Artifact:
    asset: str  # Dagster asset key
    stage: str  # CLI and DVC stage that writes it
    scope: Literal["slice", "model"]  # one per dataset x model slice of the bank, or one per model
    files: tuple[str, ...]  # relative to the partition's folder; the first is the artifact itself
    suite: str | None  # pipelines/runner/quality.py suite
    reads: tuple[str, ...]  # assets whose artifacts the stage consumes (validated before it runs)
    # files the stage only ever appends to (records.Appender); its other top-level files it replaces
    # atomically (write_records, write_json, temp file + rename), and its folders it may rewrite in place
    appended: tuple[str, ...] = ()


ARTIFACTS = {a.asset: a for a in (
    Artifact("raw_tasks", "tasks", "slice", ("tasks.jsonl", "tasks_summary.json"), "tasks", ()),
    Artifact("generations", "generate", "slice", ("generations.jsonl", "generations_summary.json"), "generations",
             ("raw_tasks",), appended=("generations.jsonl",)),
    Artifact("attributions", "attribute", "slice", ("attributions.jsonl", "attributions_summary.json"),
             "attributions", ("generations",), appended=("attributions.jsonl",)),
    Artifact("bank", "score", "slice", ("bank.parquet", "score_summary.json"), "bank",
             ("generations", "attributions")),
    Artifact("preference_pairs", "pair", "model", ("pairs", "pairs_summary.json"), "pairs", ("bank",)),
    Artifact("fine_tuned_models", "train", "model", ("models", "train_summary.json"), "training_log",
             ("preference_pairs",)),
    Artifact("evaluation", "evaluate", "model", ("evaluation",), "bank", ("fine_tuned_models",)),
    Artifact("eval_report", "report", "model", ("report",), "eval_metrics", ("evaluation",)),
    Artifact("champion_model", "promote", "model", ("promotion.json",), None, ("eval_report",)),
)}
BY_STAGE = {a.stage: a for a in ARTIFACTS.values()}
