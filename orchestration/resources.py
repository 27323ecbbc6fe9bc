"""Resources: the params file, DVC's lock file, MLflow links. Stage work itself is in pipelines/."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from pipelines.core.config import Params, load_params


class PscbParams(dg.ConfigurableResource):
    """The params file every asset reads; the same one `dvc repro` and the CLI read."""

    path: str = "params.yaml"

    def load(self) -> Params:
        return load_params(self.path)


class DvcLock(dg.ConfigurableResource):
    """Records what Dagster built in dvc.lock (`dvc commit`), so `dvc status` agrees with Dagster.

    Dagster runs the stage function itself (one code path, its own retries and partitions); DVC only
    hashes the outputs, deps and params of the matching stage. Stages of models other than the params
    file's `model` have no DVC stage and are not recorded. Only a repository whose own params.yaml is the
    file Dagster was started with is touched: a run on other params (a test's, an experiment's) would
    otherwise record its data under the repository's stages."""

    repo: str = "."
    params: str = "params.yaml"
    executable: str = ""

    def dvc(self) -> str | None:
        beside_python = Path(sys.executable).parent / "dvc"  # `make install` puts the wrapper there
        return self.executable or (str(beside_python) if beside_python.exists() else shutil.which("dvc"))

    def commit(self, stage: str, log) -> str:
        if not (Path(self.repo) / "dvc.yaml").exists() or not (Path(self.repo) / ".dvc").is_dir():
            return "no DVC repository"
        if (Path(self.repo) / "params.yaml").resolve() != Path(self.params).resolve():
            return f"not recorded: dvc.yaml reads {Path(self.repo) / 'params.yaml'}, this run {self.params}"
        executable = self.dvc()
        if executable is None:
            log.warning("dvc not found (make install puts it in .venv/bin): %s is not recorded in dvc.lock", stage)
            return "dvc not found"
        for attempt in range(5):  # parallel partitions take DVC's repository lock in turn
            done = subprocess.run([executable, "commit", "--force", "--quiet", stage], cwd=self.repo,
                                  capture_output=True, text=True)
            if done.returncode == 0:
                return f"committed {stage}"
            if "lock" not in done.stderr.lower():
                break
            time.sleep(1 + attempt)
        log.warning("dvc commit %s failed: %s", stage, done.stderr.strip()[-500:])
        return f"dvc commit failed: {done.stderr.strip()[-200:]}"


class MlflowTracking(dg.ConfigurableResource):
    """The MLflow UI that serves the params file's store (`mlflow ui --backend-store-uri ...`): run links
    in Dagster's metadata point there. The runs themselves are logged by pipelines/ (train, evaluate)."""

    ui_url: str = "http://127.0.0.1:5000"

    def run_url(self, tracking_uri: str, run_id: str) -> str:
        import mlflow

        experiment = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
        return f"{self.ui_url}/#/experiments/{experiment}/runs/{run_id}"
