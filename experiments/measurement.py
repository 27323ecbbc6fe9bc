"""The measurement study's summary: null floor and diagnosticity per attribution method over every slice.

    python experiments/measurement.py --params experiments/measurement.yaml
    # data/experiments/measurement/<model>/bank/*/bank.parquet -> experiments/results/measurement/{summary.json,results.md}

The score stage summarises one slice (dataset) at a time; this pools the slices, so each method's figures
cover every decision of the study, and lists them per dataset beside it. The same functions as the score
summary and the report (pipelines/analysis/controls.py): means over decisions, bootstrap 95% CIs over decisions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.analysis.controls import OWN, control_summary  # noqa: E402
from pipelines.core.config import load_params  # noqa: E402
from pipelines.core.partitions import model_names, slice_dir  # noqa: E402
from pipelines.stages.score import spread  # noqa: E402

RESULTS = Path("experiments/results/measurement")


def summarize(params) -> dict:
    import pandas as pd

    model = model_names(params)[0]
    bank = pd.concat([pd.read_parquet(slice_dir(params, d, model) / "bank.parquet") for d in params.tasks.datasets])
    metrics = params.score.metrics
    out = {"decisions": int(bank["generation_id"].nunique()), "methods": {}}
    for method, rows in bank.groupby("method"):
        own = rows[rows["kind"] == OWN]
        out["methods"][method] = {
            "decisions": int(own["generation_id"].nunique()), "explanations": len(own),
            "n_samples": None if own["n_samples"].isna().all() else int(own["n_samples"].max()),
            "masks": sorted(rows["masks"].unique().tolist()),
            "median_features": int(own["n_features"].median()),
            "mean": {m: round(float(own[m].mean()), 4) for m in metrics},
            **control_summary(rows, metrics, params.score.bootstrap_samples, params.seed),
            "spread": {m: spread(own, m) for m in metrics}}
    return out


def markdown(summary: dict) -> str:
    def ci(e: dict) -> str:
        if e.get("mean") is None:
            return "-"
        low, high = e["ci95"] or (float("nan"), float("nan"))
        return f"{e['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"

    lines = ["| method | dataset | decisions | metric | observed | null floor | observed - floor | diagnosticity AUROC |",
             "|---|---|---|---|---|---|---|---|"]
    for method, figures in summary["methods"].items():
        for dataset, by_metric in figures.get("null_floor", {}).items():
            for metric, floor in by_metric.items():
                auroc = figures["diagnosticity"][dataset][metric]["auroc"]
                lines.append(f"| {method} | {dataset} | {auroc['decisions']} | {metric} | {ci(floor['observed'])} | "
                             f"{ci(floor['floor'])} | {ci(floor['observed_minus_floor'])} | {ci(auroc)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="experiments/measurement.yaml")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    write_results(Path(args.out), "summary", summarize(load_params(args.params)), markdown, table="results")


def write_results(out: Path, name: str, payload: dict, render, table: str | None = None) -> None:
    """<out>/<name>.json and its markdown table <out>/<table or name>.md, printed too."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{table or name}.md").write_text(render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
