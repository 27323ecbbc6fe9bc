"""Promote a fine-tune to the MLflow model registry when its evaluation earns it.

    python -m pipelines promote [--params params.yaml] [--model NAME]
    # data/<model>/report/metrics.json + train_summary.json -> data/<model>/promotion.json, registry alias

The gate (params `promote`) is on evidence, never on point estimates: the lower bound of the bootstrap
95% CI of the candidate's paired gain over the base model in per-decision median Spearman (all
evaluated tasks) exceeds `min_alignment_gain`, and its accuracy is non-inferior: the one-sided lower
bound of the paired accuracy change is above `-accuracy_tolerance`. Passing registers the candidate's adapter (the
artifact of its training run) as a new version of `promote.registered_model` and moves the alias
(`champion`) to it; failing registers nothing and says why. Either way promotion.json records it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipelines.analysis.gate import Gate, alignment_label, gate
from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import Params
from pipelines.core.records import write_json
from pipelines.core.tracking import use_experiment

# what it reads (metrics.json, each fine-tune's training run) and writes: pipelines/core/artifacts.py
REPORT, MODELS, PROMOTION = (ARTIFACTS[n] for n in ("report", "models", "promotion"))


def registered_name(params: Params) -> str:
    return params.promote.registered_model.format(model=params.model.name, candidate=params.promote.candidate)


def register(params: Params, training_run_id: str, decision: Gate) -> dict[str, Any]:
    """A new registry version from the training run's adapter artifact, with the alias moved to it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    use_experiment(params.mlflow.tracking_uri, params.mlflow.training_experiment)
    client = mlflow.MlflowClient()
    name = registered_name(params)
    try:
        client.create_registered_model(name, description="LoRA adapter fine-tuned by PSCB for self-consistent "
                                       f"explanations; base model {params.model.id}.")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(training_run_id).info.artifact_uri}/adapter"
    version = client.create_model_version(name, source=source, run_id=training_run_id, tags={
        "alignment_gain": str(decision.alignment_gain), "alignment_gain_ci95": str(decision.alignment_gain_ci95),
        "accuracy_change": str(decision.accuracy_change), "accuracy_lower_bound": str(decision.accuracy_lower_bound),
        "base_model": params.model.id})
    client.set_registered_model_alias(name, params.promote.alias, version.version)
    # the registry keeps the artifact store's location; the file keeps the run's URI, which holds no path of
    # this machine (mlflow resolves runs:/ wherever the store lives), so a clone elsewhere writes the same text
    return {"registered_model": name, "version": int(version.version), "alias": params.promote.alias,
            "source": f"runs:/{training_run_id}/adapter"}


def run(params: Params, folder: Path) -> dict[str, Any]:
    data = folder
    metrics_path, train_path = data / REPORT.summary, data / MODELS.summary
    for path, stage in ((metrics_path, REPORT.stage), (train_path, MODELS.stage)):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `python -m pipelines {stage}` first")
    decision = gate(json.loads(metrics_path.read_text()), params.promote, alignment_label(params.evaluate))
    summary: dict[str, Any] = {"candidate": params.promote.candidate, **asdict(decision), "promoted": False}
    if decision.passed:
        training_run = json.loads(train_path.read_text())[params.promote.candidate]["mlflow_run_id"]
        summary.update(register(params, training_run, decision), promoted=True)
    write_json(data / PROMOTION.path, summary)
    return summary
