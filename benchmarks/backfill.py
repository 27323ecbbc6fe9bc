"""Bank partitions per hour through Dagster's run queue on a Dask cluster of 1 vs N workers, in one run.

    python benchmarks/backfill.py                     # writes benchmarks/results/backfill-cpu.{json,md}
    python benchmarks/backfill.py    --workers 1,2,4 --models 2

Each worker count starts from nothing (its own instance, data and MLflow store): a local cluster
(`orchestration.cluster`), then `python -m orchestration.backfill` over every bank partition of the
params (the embedded SmolLM2 under `--models` names, so the partitions are equal work). Per count:
partitions per hour over the whole backfill, the share of the runs' time spent in the queue, the launch
time (dequeued to the run worker's start: a process and the code location's import) and the overhead
(the run's time outside its steps: the step hand-off to Dask and back), each against 1 worker. On a
CPU the workers share the machine's cores (threads are split between them), so the speedup here is
bounded by the cores; on a GPU box each worker has its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_files import write_results  # noqa: E402

from orchestration.cluster import local_cluster  # noqa: E402
from orchestration.webserver import free_port  # noqa: E402


def bank_params(workdir: Path, models: int) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data_dir"] = str(workdir / "data")
    params["mlflow"]["tracking_uri"] = f"sqlite:///{workdir / 'mlflow.db'}"
    base = params["model"]
    params["models"] = [{**base, "name": f"{base['name']}-copy{i}"} for i in range(1, models)]
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def backfill(workers: int, models: int, workdir: Path) -> dict:
    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / ".dagster" / "dagster.yaml").read_text())
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PSCB_PARAMS": str(bank_params(workdir, models)),
           "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{port}", "PSCB_EXECUTOR": "dask", "DO_NOT_TRACK": "1"}
    figures = workdir / "backfill.json"
    with local_cluster(workers, port, workdir / "cluster", env):
        done = subprocess.run([sys.executable, "-m", "orchestration.backfill", "--figures", str(figures)],
                              cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"backfill on {workers} workers failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads(figures.read_text())
    return {"workers": workers, **{k: round(v, 3) for k, v in report["summary"].items()},
            "runs": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in run.items()
                      if k != "step_intervals"} for run in report["runs"]]}


def markdown(results: dict) -> str:
    base = results["rows"][0]
    lines = [f"# Bank partitions through Dagster's queue on a Dask cluster ({results['device']})", "",
             f"{results['partitions']} bank partitions ({results['model']}, {results['tasks_per_partition']} tasks "
             f"each), one backfill per worker count, each from nothing; {results['cpus']} CPU cores.", "",
             "| workers | wall s | partitions/hour | x 1 worker | time in queue | launch s/run | overhead s/run |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['workers']} | {row['wall_s']:.0f} | {row['partitions_per_hour']:.1f} | "
                     f"{row['partitions_per_hour'] / base['partitions_per_hour']:.2f} | {row['queue_share']:.0%} | "
                     f"{row['mean_launch_s']:.1f} | {row['mean_overhead_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--models", type=int, default=2, help="copies of the embedded model (partitions x this)")
    parser.add_argument("--out")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"pscb-distributed-{workers}-") as workdir:
            rows.append(backfill(workers, args.models, Path(workdir)))
            print(f"{workers} workers: {rows[-1]['partitions_per_hour']:.1f} partitions/hour", flush=True)
    results = {"device": "cpu", "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "model": params["model"]["id"], "partitions": rows[0]["runs"] and len(rows[0]["runs"]),
               "tasks_per_partition": params["tasks"]["max_per_dataset"], "rows": rows}
    write_results(results, markdown(results), "backfill", "cpu", args.out)


if __name__ == "__main__":
    main()
