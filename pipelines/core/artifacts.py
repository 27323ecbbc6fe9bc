"""Each artifact declared once: its name, the stage that writes it, its files, its Great Expectations suite and
what its stage reads.

An artifact has one name, a noun: its Dagster asset key, its suite (pipelines/runner/quality.py) and the stem
of its file or folder. The stage that writes it is a verb: the CLI command and the DVC stage. The stages take
their files and their inputs' files from this table; the runner (pipelines/runner/) validates what a stage
reads and what it wrote by it; the Dagster assets' deps are its `reads`; dvc.yaml's outs, metrics and data
deps are held to it by tests/test_dvc.py. It imports nothing of pipelines/, so that every floor may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Artifact:
    name: str  # the artifact's one noun: its Dagster asset key, its suite's name, its file's or folder's stem
    stage: str  # the verb: the CLI and DVC stage that writes it
    scope: Literal["slice", "model"]  # one per dataset x model slice of the bank, or one per model
    path: str  # the artifact itself, a file or a folder, relative to its partition's folder (a DVC out)
    summary: str | None  # the stage's summary (a DVC metric), relative to the partition's folder; may lie in `path`
    suite: str | None  # the suite that validates it (the evaluation holds banks: the bank suite)
    reads: tuple[str, ...]  # the artifacts its stage consumes, validated before it runs (the asset's deps)
    # the stage only ever appends to `path` (records.Appender); the files it does not append to it replaces
    # atomically (write_records, write_json, temp file + rename), and its folders it may rewrite in place
    appended: bool = False

    @property
    def files(self) -> tuple[str, ...]:
        """What the stage writes, each once: the artifact, and its summary unless that lies inside it."""
        inside = self.summary is None or self.summary.startswith(f"{self.path}/")
        return (self.path,) if inside else (self.path, self.summary)


ARTIFACTS = {a.name: a for a in (
    Artifact("tasks", "tasks", "slice", "tasks.jsonl", "tasks_summary.json", "tasks", ()),
    Artifact("generations", "generate", "slice", "generations.jsonl", "generations_summary.json", "generations",
             ("tasks",), appended=True),
    Artifact("attributions", "attribute", "slice", "attributions.jsonl", "attributions_summary.json",
             "attributions", ("generations",), appended=True),
    Artifact("bank", "score", "slice", "bank.parquet", "score_summary.json", "bank", ("generations", "attributions")),
    Artifact("pairs", "pair", "model", "pairs", "pairs_summary.json", "pairs", ("bank", "generations")),
    Artifact("models", "train", "model", "models", "train_summary.json", "models", ("pairs",)),
    Artifact("evaluation", "evaluate", "model", "evaluation", "evaluation/evaluate_summary.json", "bank",
             ("models",)),
    Artifact("report", "report", "model", "report", "report/metrics.json", "report", ("evaluation", "models")),
    Artifact("promotion", "promote", "model", "promotion.json", None, None, ("report", "models")),
)}
BY_STAGE = {a.stage: a for a in ARTIFACTS.values()}
