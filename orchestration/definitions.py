"""The Dagster code location: `dagster dev` (or `make ui`) from the repository root loads `defs`.

Partitions come from the params file: PSCB_PARAMS (default params.yaml), the file the assets read. Steps
run where PSCB_EXECUTOR says (orchestration/executor.py): in the run's process by default."""

from __future__ import annotations

import os

import dagster as dg

from orchestration.assets import build_assets
from orchestration.automation import build_automation_sensor, build_jobs, build_schedule
from orchestration.executor import executor_from_env
from orchestration.resources import DvcLock, MlflowTracking, PscbParams
from pipelines.core.config import load_params


def build_definitions(params_path: str = "params.yaml", repo: str = ".") -> dg.Definitions:
    params = load_params(params_path)
    bank_job, model_job = build_jobs(params)
    return dg.Definitions(
        assets=build_assets(params), jobs=[bank_job, model_job], schedules=[build_schedule(params, bank_job)],
        sensors=[build_automation_sensor()],
        executor=executor_from_env(),
        resources={"pscb": PscbParams(path=params_path), "dvc": DvcLock(repo=repo, params=params_path),
                   "mlflow": MlflowTracking()})


defs = build_definitions(os.environ.get("PSCB_PARAMS", "params.yaml"))
