"""Each artifact declared once: the stage that writes it, its files, its Great Expectations suite, what it reads.

The CLI, `dvc repro` and Dagster run a stage through `checked_run`: it validates the artifacts the stage
reads, runs it, and validates what it wrote before reporting success. A failing suite raises
`ArtifactInvalid` naming the file, the expectation, the column and the row ids, the same message from
every entry point; the rejected output is moved to `<model>/rejected/` (kept for inspection: move it back
once the cause is fixed to keep its work) and the output that was there before the run is restored, so
neither the next stage nor `dvc status` takes a failed artifact for a good one. dvc.yaml's outs, the
Dagster assets and their checks come from this table (tests/test_dvc.py holds them to it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipelines.config import Params
from pipelines.quality import QualityReport, validate
from pipelines.records import read_records


@dataclass(frozen=True)
class Artifact:
    asset: str  # Dagster asset key
    stage: str  # CLI and DVC stage that writes it
    scope: Literal["slice", "model"]  # one per dataset x model slice of the bank, or one per model
    files: tuple[str, ...]  # relative to the partition's folder; the first is the artifact itself
    suite: str | None  # pipelines/quality.py suite
    reads: tuple[str, ...]  # assets whose artifacts the stage consumes (validated before it runs)


ARTIFACTS = {a.asset: a for a in (
    Artifact("raw_tasks", "tasks", "slice", ("tasks.jsonl", "tasks_summary.json"), "tasks", ()),
    Artifact("generations", "generate", "slice", ("generations.jsonl", "generations_summary.json"), "generations",
             ("raw_tasks",)),
    Artifact("attributions", "attribute", "slice", ("attributions.jsonl", "attributions_summary.json"),
             "attributions", ("generations",)),
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


class ArtifactInvalid(ValueError):
    """An artifact failed its suite; `reports` are per part (a file, a fine-tune, a model)."""

    def __init__(self, artifact: Artifact, where: Path, reports: list[tuple[str, QualityReport]]):
        self.artifact, self.where, self.reports = artifact, where, reports
        failed = "; ".join(f"{part}: {report.summary()}" for part, report in reports if not report.success)
        super().__init__(f"{where / artifact.files[0]} failed its Great Expectations suite '{artifact.suite}': "
                         f"{failed}")


def parts(artifact: Artifact, params: Params, folder: Path) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(part, rows, expected values) for each table the artifact holds in `folder` (its partition's)."""
    import pandas as pd

    name = artifact.asset
    if name in ("raw_tasks", "generations", "attributions"):
        expected = {"raw_tasks": {"dataset": folder.name}, "attributions": {},
                    "generations": {"n_explanations": params.generate.n_explanations}}[name]
        return [(folder.name, list(read_records(folder / artifact.files[0])), expected)]
    if name == "bank":
        return [(folder.name, pd.read_parquet(folder / "bank.parquet").to_dict("records"), {})]
    if name == "preference_pairs":
        rows = [r for f in sorted((folder / "pairs").glob("*.jsonl")) for r in read_records(f)]
        return [("pairs", rows, {"min_margin": params.pair.min_margin, "keep_ties": params.pair.keep_ties})]
    if name == "fine_tuned_models":
        summary = json.loads((folder / "train_summary.json").read_text())
        return [(a, summary[a]["log_history"], {}) for a in params.train.algorithms]
    if name == "evaluation":
        return [(model, pd.read_parquet(folder / "evaluation" / model / "bank.parquet").to_dict("records"), {})
                for model in params.evaluate.models]
    from pipelines.report import metric_rows

    return [("report", metric_rows(json.loads((folder / "report" / "metrics.json").read_text())), {})]


def check(artifact: Artifact, params: Params, folder: Path) -> list[tuple[str, QualityReport]]:
    """Run the artifact's suite on what `folder` holds; raise ArtifactInvalid when any part fails."""
    if artifact.suite is None:
        return []
    reports = [(part, validate(artifact.suite, rows, **expected))
               for part, rows, expected in parts(artifact, params, folder)]
    if any(not report.success for _, report in reports):
        raise ArtifactInvalid(artifact, folder, reports)
    return reports


@dataclass
class StageResult:
    summary: dict[str, Any]
    reports: list[tuple[str, QualityReport]]  # the written artifact's validation, per part


def _move(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))


def checked_run(artifact: Artifact, params: Params, folder: Path, stage: Callable[[], dict[str, Any]],
                inputs: list[tuple[Artifact, Path]], rejected: Path) -> StageResult:
    """Validate the inputs, run the stage, validate its output; on failure restore the previous output.

    `folder` is the partition's folder, `inputs` the (artifact, folder) pairs the stage reads, `rejected`
    where a failed output goes (outside every DVC output and dependency)."""
    for upstream, where in inputs:
        check(upstream, params, where)
    staging = rejected / ".previous" / artifact.asset
    if staging.exists():
        shutil.rmtree(staging)
    kept = [name for name in artifact.files if (folder / name).exists()]
    for name in kept:  # a copy, not a move: resumable stages continue from what is there
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (folder / name).is_dir() else shutil.copy2
        copy(folder / name, staging / name)
    try:
        summary = stage()  # a crash leaves its partial output in place: the stages resume from it
        try:
            reports = check(artifact, params, folder)
        except ArtifactInvalid:
            for name in artifact.files:
                if (folder / name).exists():
                    _move(folder / name, rejected / name)
            for name in kept:
                _move(staging / name, folder / name)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return StageResult(summary, reports)
