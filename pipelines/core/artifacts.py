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
    name: str  # the artifact's one noun: its Dagster asset key, its suite's name, its file's or folder's stem
    stage: str  # the verb: the CLI and DVC stage that writes it
    scope: Literal["slice", "model"]  # one per dataset x model slice of the bank, or one per model
    files: tuple[str, ...]  # relative to the partition's folder; the first is the artifact itself
    suite: str | None  # pipelines/runner/quality.py suite
    reads: tuple[str, ...]  # the artifacts the stage consumes (validated before it runs)
    # files the stage only ever appends to (records.Appender); its other top-level files it replaces
    # atomically (write_records, write_json, temp file + rename), and its folders it may rewrite in place
    appended: tuple[str, ...] = ()


ARTIFACTS = {a.name: a for a in (
    Artifact("tasks", "tasks", "slice", ("tasks.jsonl", "tasks_summary.json"), "tasks", ()),
    Artifact("generations", "generate", "slice", ("generations.jsonl", "generations_summary.json"), "generations",
             ("tasks",), appended=("generations.jsonl",)),
    Artifact("attributions", "attribute", "slice", ("attributions.jsonl", "attributions_summary.json"),
             "attributions", ("generations",), appended=("attributions.jsonl",)),
    Artifact("bank", "score", "slice", ("bank.parquet", "score_summary.json"), "bank",
             ("generations", "attributions")),
    Artifact("pairs", "pair", "model", ("pairs", "pairs_summary.json"), "pairs", ("bank",)),
    Artifact("models", "train", "model", ("models", "train_summary.json"), "models", ("pairs",)),
    Artifact("evaluation", "evaluate", "model", ("evaluation",), "bank", ("models",)),
    Artifact("report", "report", "model", ("report",), "report", ("evaluation",)),
    Artifact("promotion", "promote", "model", ("promotion.json",), None, ("report",)),
)}
BY_STAGE = {a.stage: a for a in ARTIFACTS.values()}
