"""The one CLI: python -m pipelines <stage> [--params FILE] [--set key=value ...]

Stages run in flow order, each reading the previous stage's output under `data_dir`:
tasks -> generate -> attribute -> score -> pair -> train -> evaluate -> report. `all` runs them in turn
(the README's main job).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time

import yaml

STAGES = ("tasks", "generate", "attribute", "score", "pair", "train", "evaluate", "report")


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
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value, e.g. --set attribute.n_samples=64")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from pipelines.config import ParamsError, load_params
    from pipelines.tasks import BadRowError

    try:
        params = load_params(args.params, parse_overrides(args.set))
        for stage in STAGES if args.stage == "all" else (args.stage,):
            started = time.perf_counter()
            summary = importlib.import_module(f"pipelines.{stage}").run(params)
            short = {k: v for k, v in summary.items() if not isinstance(v, dict)}
            print(f"[{stage}] {time.perf_counter() - started:.1f}s {json.dumps(short, default=str)}", flush=True)
    except (ParamsError, BadRowError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.stage in ("all", "score"):
        print(f"bank: {params.data_dir}/bank.parquet  summary: {params.data_dir}/score_summary.json")
    if args.stage in ("all", "report"):
        print(f"report: {params.data_dir}/eval/report.html  metrics: {params.data_dir}/eval/metrics.json  "
              f"runs: mlflow ui --backend-store-uri {params.mlflow.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
