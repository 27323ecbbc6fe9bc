"""Promote a fine-tune to the MLflow model registry when its evaluation earns it.

    python -m pipelines promote [--params params.yaml] [--model NAME]
    # data/<model>/report/metrics.json + train_summary.json -> data/<model>/promotion.json, registry alias

The gate (params `promote`): the candidate's mean per-decision median Spearman over all evaluated
tasks beats the base model's by more than `min_alignment_gain`, and its accuracy is not below the
base model's by more than `accuracy_tolerance`. Passing registers the candidate's adapter (the
artifact of its training run) as a new version of `promote.registered_model` and moves the alias
(`champion`) to it; failing registers nothing and says why. Either way promotion.json records it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.config import Params, PromoteParams
from pipelines.records import write_json
from pipelines.tracking import use_experiment


@dataclass(frozen=True)
class Gate:
    passed: bool
    alignment_gain: float | None
    accuracy_change: float | None
    reasons: list[str]


def gate(metrics: dict[str, Any], params: PromoteParams) -> Gate:
    """The promotion rule on a report's metrics.json."""
    models = metrics.get("models", {})
    if "base" not in models or params.candidate not in models:
        return Gate(False, None, None, [f"the report has no 'base' and '{params.candidate}' models to compare: "
                                        "add both to evaluate.models"])
    base, candidate = models["base"]["all"], models[params.candidate]["all"]
    gain = candidate["spearman_median"] - base["spearman_median"] if None not in (
        candidate.get("spearman_median"), base.get("spearman_median")) else None
    change = candidate["accuracy"] - base["accuracy"] if None not in (
        candidate.get("accuracy"), base.get("accuracy")) else None
    reasons = []
    if gain is None or not gain > params.min_alignment_gain:
        reasons.append(f"alignment gain {gain} (median Spearman, {params.candidate} - base) is not above "
                       f"promote.min_alignment_gain {params.min_alignment_gain}")
    if change is None or change < -params.accuracy_tolerance:
        reasons.append(f"accuracy change {change} ({params.candidate} - base) is below "
                       f"-promote.accuracy_tolerance {-params.accuracy_tolerance}")
    return Gate(not reasons, gain, change, reasons)


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
        "alignment_gain": str(decision.alignment_gain), "accuracy_change": str(decision.accuracy_change),
        "base_model": params.model.id})
    client.set_registered_model_alias(name, params.promote.alias, version.version)
    return {"registered_model": name, "version": int(version.version), "alias": params.promote.alias,
            "source": source}


def run(params: Params) -> dict[str, Any]:
    data = Path(params.data_dir)
    metrics_path, train_path = data / "report" / "metrics.json", data / "train_summary.json"
    for path, stage in ((metrics_path, "report"), (train_path, "train")):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `python -m pipelines {stage}` first")
    decision = gate(json.loads(metrics_path.read_text()), params.promote)
    summary: dict[str, Any] = {"candidate": params.promote.candidate, **asdict(decision), "promoted": False}
    if decision.passed:
        training_run = json.loads(train_path.read_text())[params.promote.candidate]["mlflow_run_id"]
        summary.update(register(params, training_run, decision), promoted=True)
    write_json(data / "promotion.json", summary)
    return summary
