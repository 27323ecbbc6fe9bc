"""The one CLI: python -m pipelines <stage> [--dataset D] [--model M] [--params FILE] [--set key=value ...]

Stages run in flow order, each reading the previous stage's output in its partition's folder under `data_dir`:
tasks -> generate -> attribute -> score (per dataset x model: the bank) -> pair -> train -> evaluate ->
report -> promote (per model). Without --dataset / --model a stage runs every partition; `all` runs
the stages in turn (the README's main job). DVC's stages and Dagster's assets call the same functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import yaml

from pipelines.core.partitions import STAGES


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=(*STAGES, "all"))
    parser.add_argument("--dataset", help="one dataset partition (default: every one in tasks.datasets)")
    parser.add_argument("--model", help="one model partition, by name (default: every model)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value, e.g. --set attribute.n_samples=64")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipelines.core.artifacts import PartitionBusy
    from pipelines.core.config import ParamsError, load_params
    from pipelines.core.partitions import model_dir, run_stage, slice_dir
    from pipelines.stages.tasks import BadRowError

    try:
        params = load_params(args.params, parse_overrides(args.set))
        for stage in STAGES if args.stage == "all" else (args.stage,):
            started = time.perf_counter()
            results = run_stage(stage, params, args.dataset, args.model)
            for key, result in results.items():
                short = {k: v for k, v in result.summary.items() if not isinstance(v, (dict, list))}
                checked = sum(report.evaluated for _, report in result.reports)
                print(f"[{stage} {key}] {json.dumps(short, default=str)} checks: {checked} expectations passed",
                      flush=True)
            print(f"[{stage}] {len(results)} partition(s) in {time.perf_counter() - started:.1f}s", flush=True)
    except (ParamsError, BadRowError, FileNotFoundError, KeyError, ValueError, PartitionBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.stage in ("all", "score"):
        print(f"bank: {slice_dir(params, '<dataset>', params.model.name)}/bank.parquet")
    if args.stage in ("all", "report", "promote"):
        folder = model_dir(params, params.model.name) / "report"
        print(f"report: {folder}/report.html  metrics: {folder}/metrics.json  "
              f"runs: mlflow ui --backend-store-uri {params.mlflow.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
