"""A small DPO sweep of learning rate x beta, selected on held-out eval-pair reward accuracy.

    python experiments/sweep.py --params experiments/powered.yaml [--grid 5e-6:5,2e-5:5,2e-5:1,1e-4:1]
    # <model>/pairs -> <model>/sweep/<lr>-<beta>/ (one DPO fine-tune each, MLflow runs) -> experiments/results/<name>/sweep.{json,md}

Each candidate is the train stage itself (pipelines/stages/train.py) in its own folder, so it resumes and logs
like any fine-tune; its held-out movement (pipelines/analysis/movement.py) ranks it: reward accuracy on the eval
pairs, then the reward margin. The winner's values are printed as --set overrides for the train stage.
The eval pairs pick the configuration, so the evaluation that follows uses test tasks only (never paired).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.__main__ import parse_overrides  # noqa: E402
from pipelines.core.config import load_params  # noqa: E402
from pipelines.core.partitions import for_model, model_dir, model_names  # noqa: E402


def candidates(grid: str) -> list[tuple[float, float]]:
    return [(float(lr), float(beta)) for lr, beta in (item.split(":") for item in grid.split(","))]


def run_sweep(params, grid: list[tuple[float, float]], tag: str = "") -> dict:
    from pipelines.stages import train

    model = model_names(params)[0]
    own, data = for_model(params, model), model_dir(params, model)
    pairs = data / "pairs"
    if not (pairs / "eval.jsonl").exists():
        raise FileNotFoundError(f"{pairs}/eval.jsonl not found: run `python -m pipelines pair` first")
    results = []
    for learning_rate, beta in grid:
        folder = data / "sweep" / f"{tag}lr{learning_rate:g}-beta{beta:g}"
        if not (folder / "train_summary.json").exists():
            shutil.copytree(pairs, folder / "pairs", dirs_exist_ok=True)
            settings = own.train.model_copy(update={"algorithms": ("dpo",), "learning_rate": learning_rate,
                                                    "beta": beta})
            train.run(own.model_copy(update={"train": settings}), folder)
        summary = json.loads((folder / "train_summary.json").read_text())["dpo"]
        results.append({"learning_rate": learning_rate, "beta": beta, "steps": summary["steps"],
                        "seconds": summary["seconds"], **summary["movement"]})
    best = max(results, key=lambda r: (r.get("reward_accuracy", 0), r.get("reward_margin", 0)))
    return {"pairs": json.loads((pairs.parent / "pairs_summary.json").read_text()) if (
                pairs.parent / "pairs_summary.json").exists() else None,
            "train": own.train.model_dump(), "candidates": results,
            "chosen": {"learning_rate": best["learning_rate"], "beta": best["beta"]}}


def markdown(sweep: dict) -> str:
    lines = ["| learning rate | beta | steps | held-out reward accuracy | binomial p | margin | log p shift chosen / "
             "rejected | KL per token | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sweep["candidates"]:
        lines.append(f"| {r['learning_rate']:g} | {r['beta']:g} | {r['steps']} | {r['reward_accuracy']:.3f} | "
                     f"{r['reward_accuracy_p']:.3g} | {r['reward_margin']:+.3f} | {r['logp_shift_chosen']:+.3f} / "
                     f"{r['logp_shift_rejected']:+.3f} | {r['kl_per_token']:.2e} | {r['seconds']:.0f} |")
    chosen = sweep["chosen"]
    return "\n".join(lines) + f"\n\nChosen: learning_rate {chosen['learning_rate']:g}, beta {chosen['beta']:g}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="experiments/powered.yaml")
    parser.add_argument("--grid", default="5e-6:5,2e-5:5,2e-5:1,1e-4:1", help="learning_rate:beta,...")
    parser.add_argument("--tag", default="", help="names this sweep's folders and files (e.g. the pairs it trains on)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a params value")
    parser.add_argument("--out", help="default: experiments/results/<params file stem>")
    args = parser.parse_args()
    tag = f"{args.tag}-" if args.tag else ""
    sweep = run_sweep(load_params(args.params, parse_overrides(args.set)), candidates(args.grid), tag)
    out = Path(args.out or f"experiments/results/{Path(args.params).stem}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}sweep.json").write_text(json.dumps(sweep, indent=2, default=str) + "\n")
    (out / f"{tag}sweep.md").write_text(markdown(sweep))
    print(markdown(sweep))
    chosen = sweep["chosen"]
    print(f"train with: --set train.learning_rate={chosen['learning_rate']:g} --set train.beta={chosen['beta']:g}")


if __name__ == "__main__":
    main()
