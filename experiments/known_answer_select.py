"""Choose the known-answer fine-tune's epochs on the eval split, before the test split is looked at.

    python experiments/known_answer_select.py --params experiments/known_answer.yaml --epochs 5,10,20

For each epochs value: train DPO and SFT (the params' other settings), evaluate base / DPO / SFT on the
first `evaluate.tasks_per_dataset` tasks of the eval split (`evaluate.split: eval`: never trained on, their
pairs only scored), and measure accuracy and the ground-truth faithful share. The rule, fixed before any
run: among the values whose DPO accuracy is at least the base model's minus `promote.accuracy_tolerance`,
the one with the largest DPO - base faithful share (ties: fewer epochs). Writes selection.{json,md} to
experiments/results/known_answer/; then set train.epochs in the params and run the pipeline on the test
split as usual.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.known_answer import RESULTS, fine_tunes  # noqa: E402
from pipelines.core.config import load_params  # noqa: E402
from pipelines.core.partitions import model_dir, slice_dir  # noqa: E402
from pipelines.core.records import read_records  # noqa: E402
from pipelines.runner.dispatch import run_stage  # noqa: E402


def evaluate_on_eval_split(path: str, epochs: int) -> dict[str, Any]:
    params = load_params(path, {"train.epochs": epochs, "evaluate.split": "eval"})
    run_stage("train", params)
    run_stage("evaluate", params)
    model = params.model.name
    generations = {r["id"]: r for d in params.tasks.datasets
                   for r in read_records(slice_dir(params, d, model) / "generations.jsonl")}
    tunes = fine_tunes(params, model_dir(params, model), generations)
    gain = tunes["comparisons"]["dpo-base/faithful"]
    return {"epochs": epochs, "decisions": tunes["decisions"],
            "accuracy": {m: r["accuracy"] for m, r in tunes["models"].items()},
            "faithful_share": {m: r["faithful_share"] for m, r in tunes["models"].items()},
            "dpo_minus_base_faithful": {"mean": gain["mean"], "ci95": gain["ci95"]}}


def choose(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any] | None:
    kept = [r for r in rows if r["accuracy"]["dpo"] >= r["accuracy"]["base"] - tolerance]
    return max(kept, key=lambda r: (r["dpo_minus_base_faithful"]["mean"], -r["epochs"]), default=None)


def markdown(rows: list[dict[str, Any]], chosen: dict[str, Any] | None, tolerance: float) -> str:
    lines = [f"Eval split ({rows[0]['decisions']} decisions, never trained on): DPO and SFT per train.epochs. Rule: "
             f"DPO accuracy >= base - {tolerance}, then the largest DPO - base faithful share.", "",
             "| epochs | accuracy base / DPO / SFT | faithful share base / DPO / SFT | DPO - base faithful (95% CI) |",
             "|---|---|---|---|"]
    for r in rows:
        a, f, g = r["accuracy"], r["faithful_share"], r["dpo_minus_base_faithful"]
        lines.append(f"| {r['epochs']} | {a['base']:.3f} / {a['dpo']:.3f} / {a['sft']:.3f} | {f['base']:.3f} / "
                     f"{f['dpo']:.3f} / {f['sft']:.3f} | {g['mean']:.3f} [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}] |")
    lines += ["", f"Chosen: {chosen['epochs']} epochs." if chosen else "Chosen: none keeps DPO's accuracy."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="experiments/known_answer.yaml")
    parser.add_argument("--epochs", type=lambda s: [int(x) for x in s.split(",")], default=[5, 10, 20])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    tolerance = load_params(args.params).promote.accuracy_tolerance
    rows = [evaluate_on_eval_split(args.params, epochs) for epochs in args.epochs]
    chosen = choose(rows, tolerance)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps({"rows": rows, "tolerance": tolerance,
                                                     "chosen_epochs": chosen and chosen["epochs"]}, indent=2) + "\n")
    (out / "selection.md").write_text(markdown(rows, chosen, tolerance))
    print(markdown(rows, chosen, tolerance))


if __name__ == "__main__":
    main()
