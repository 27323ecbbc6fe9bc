"""MLflow store and experiment selection, shared by training and evaluation runs."""

from __future__ import annotations

import os
from pathlib import Path

# the tag MLflow's UI reads to open an experiment on its runs table rather than its GenAI pages
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def use_experiment(tracking_uri: str, name: str) -> str:
    """Point MLflow at the store and the named experiment (created if new) and return its id.

    With a local SQLite store the artifacts go to mlruns/ beside the database file (MLflow's own
    default would be ./mlruns under whatever directory the process happens to run in). The experiment is
    tagged a model-training one: MLflow 3 opens an untagged experiment on its GenAI traces page."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
        if experiment.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    else:
        location = None
        if tracking_uri.startswith("sqlite:///"):
            location = (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=location,
                                                 tags={EXPERIMENT_KIND: MODEL_TRAINING})
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def run_exists(tracking_uri: str, run_id: str | None) -> bool:
    """Whether the store still holds a finished run: a rerun that trained or evaluated nothing new reuses it."""
    import mlflow

    if not run_id:
        return False
    try:
        return mlflow.MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"
    except mlflow.exceptions.MlflowException:
        return False
