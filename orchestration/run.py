"""The main job (`make run`): every asset of every partition, through Dagster, on the project's instance.

    DAGSTER_HOME=$PWD/.dagster python -m orchestration.run [--params params.yaml]

Each bank slice (dataset x model) is one `build_bank` run, then each model one `fine_tune_and_evaluate`
run, in the instance DAGSTER_HOME names, so `make ui` afterwards shows every asset materialized with
its metadata and checks, the stages have recorded themselves in dvc.lock (`dvc status` is clean) and
MLflow holds the fine-tunes and evaluations. Runs go one after another in this process: on one
accelerator (or a laptop's cores) the stages would take turns anyway. A slice that fails stops its own
run; the others still run, and the model runs wait for every slice (their inputs are checked).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import dagster as dg

from orchestration.assets import bank_partitions, model_partitions
from orchestration.definitions import build_definitions
from pipelines.core.config import load_params
from pipelines.core.partitions import model_dir


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    messages = [f"{e.step_key}: {e.step_failure_data.error.message.strip()}" for e in result.all_events
                if e.is_step_failure and e.step_failure_data.error]
    messages += [f"{e.asset_key.to_user_string()} check {e.check_name}: {e.description}"
                 for e in result.get_asset_check_evaluations()
                 if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
    return messages


def materialize_all(params_path: str = "params.yaml", repo: str = ".", instance: dg.DagsterInstance | None = None
                    ) -> bool:
    defs = build_definitions(params_path, repo=repo)
    params = load_params(params_path)
    instance = instance or dg.DagsterInstance.get()
    plan = [("build_bank", key) for key in bank_partitions(params).get_partition_keys()]
    plan += [("fine_tune_and_evaluate", key) for key in model_partitions(params).get_partition_keys()]
    failed: list[str] = []
    for job, key in plan:
        if job == "fine_tune_and_evaluate" and failed:
            print(f"[{job} {key}] not run: a bank slice failed", flush=True)
            continue
        started = time.perf_counter()
        result = defs.resolve_job_def(job).execute_in_process(partition_key=key, instance=instance,
                                                              raise_on_error=False)
        status = "succeeded" if result.success else "FAILED"
        print(f"[{job} {key}] run {result.run_id} {status} in {time.perf_counter() - started:.1f}s", flush=True)
        for message in failure_messages(result):
            print(f"  {message}", file=sys.stderr, flush=True)
        if not result.success:
            failed.append(f"{job} {key}")
    folder = model_dir(params, params.model.name)
    print(f"report: {folder / 'report' / 'report.html'}  promotion: {folder / 'promotion.json'}  "
          f"runs: mlflow ui --backend-store-uri {params.mlflow.tracking_uri}", flush=True)
    print(f"runs: {len(plan)} ({len(failed)} failed); the UI: make ui; DAGSTER_HOME={instance.root_directory}",
          flush=True)
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=os.environ.get("PSCB_PARAMS", "params.yaml"))
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        print("error: set DAGSTER_HOME (make run uses .dagster, the instance `make ui` shows)", file=sys.stderr)
        return 2
    from pipelines.core.config import ParamsError

    try:
        return 0 if materialize_all(args.params) else 1
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
