"""Bank partitions per hour through Dagster's run queue on a Dask cluster of 1 vs N workers, in one run.

    python benchmarks/backfill.py                     # writes benchmarks/results/backfill-cpu.{json,md}
    python benchmarks/backfill.py    --workers 1,2,4 --models 2
    python benchmarks/backfill.py    --shards         # one dataset, bank.shards = workers: backfill-shards-cpu.*

`--shards` times one bank slice (the first dataset, one model) with `bank.shards` equal to the worker
count, so 1 worker is the unsharded slice and N workers build it as N shards side by side; each row also
says whether its generations and attributions are the bytes the 1-worker run wrote.

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
from pipelines.core.records import sha256  # noqa: E402


def bank_params(workdir: Path, models: int, shards: int | None = None) -> Path:
    """params.yaml with `models` copies of its model; with `shards`, its first dataset only, in that many shards."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data_dir"] = str(workdir / "data")
    params["mlflow"]["tracking_uri"] = f"sqlite:///{workdir / 'mlflow.db'}"
    base = params["model"]
    params["models"] = [{**base, "name": f"{base['name']}-copy{i}"} for i in range(1, models)]
    if shards is not None:
        params["tasks"]["datasets"] = params["tasks"]["datasets"][:1]
        params["bank"]["shards"] = shards
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def backfill(workers: int, models: int, workdir: Path, shards: int | None = None) -> dict:
    home = workdir / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text((REPO / ".dagster" / "dagster.yaml").read_text())
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PSCB_PARAMS": str(bank_params(workdir, models, shards)),
           "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{port}", "PSCB_EXECUTOR": "dask", "DO_NOT_TRACK": "1"}
    figures = workdir / "backfill.json"
    with local_cluster(workers, port, workdir / "cluster", env):
        done = subprocess.run([sys.executable, "-m", "orchestration.backfill", "--figures", str(figures)],
                              cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"backfill on {workers} workers failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads(figures.read_text())
    digests = {path.relative_to(workdir / "data").as_posix(): sha256(path)
               for name in ("generations.jsonl", "attributions.jsonl") for path in (workdir / "data").rglob(name)}
    return {"workers": workers, "shards": shards or 1, **{k: round(v, 3) for k, v in report["summary"].items()},
            "runs": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in run.items()
                      if k != "step_intervals"} for run in report["runs"]],
            "busiest_compute_steps": busiest(report["runs"]), "sha256": digests}


def busiest(runs: list[dict]) -> int:
    """The most compute steps (generate / attribute shards) that ran at the same moment."""
    steps = [(a, b) for run in runs for a, b in run["step_intervals"]]
    return max((sum(1 for a, b in steps if a <= t < b) for t, _ in steps), default=0)


def shards_markdown(results: dict) -> str:
    base = results["rows"][0]
    lines = [f"# One bank slice in shards on a Dask cluster ({results['device']})", "",
             f"One slice ({results['model']}, {results['tasks_per_partition']} tasks), `bank.shards` = workers, "
             f"each worker count from nothing; {results['cpus']} CPU cores.", "",
             "| workers | shards | wall s | x 1 worker | compute steps at once | generations = 1 worker's | "
             "attributions = 1 worker's |", "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        same = {name: all(row["sha256"][k] == base["sha256"].get(k) for k in row["sha256"] if k.endswith(name))
                for name in ("generations.jsonl", "attributions.jsonl")}
        lines.append(f"| {row['workers']} | {row['shards']} | {row['wall_s']:.0f} | "
                     f"{base['wall_s'] / row['wall_s']:.2f} | {row['busiest_compute_steps']} | "
                     f"{'yes' if same['generations.jsonl'] else 'no'} | {'yes' if same['attributions.jsonl'] else 'no'} |")
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--shards", action="store_true", help="one slice, bank.shards = workers (1 model)")
    parser.add_argument("--out")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"pscb-distributed-{workers}-") as workdir:
            rows.append(backfill(workers, 1 if args.shards else args.models, Path(workdir),
                                 workers if args.shards else None))
            print(f"{workers} workers: {rows[-1]['wall_s']:.0f} s, {rows[-1]['partitions_per_hour']:.1f} "
                  "partitions/hour", flush=True)
    results = {"device": "cpu", "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
               "model": params["model"]["id"], "partitions": rows[0]["runs"] and len(rows[0]["runs"]),
               "tasks_per_partition": params["tasks"]["max_per_dataset"], "rows": rows}
    if args.shards:
        write_results(results, shards_markdown(results), "backfill-shards", "cpu", args.out)
    else:
        write_results(results, markdown(results), "backfill", "cpu", args.out)


if __name__ == "__main__":
    main()
