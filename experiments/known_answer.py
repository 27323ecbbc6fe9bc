"""The known-answer validation: does the bank see the planted signal, and does DPO raise it?

    python experiments/known_answer.py --params experiments/known_answer.yaml   # after the pipeline ran

Reads the bank (bank.parquet, generations.jsonl, score_summary.json), the pairs and, where present, the
evaluation banks of base / DPO / SFT under the params' data_dir, and writes results.json and results.md to
experiments/results/known_answer/: per attribution method and metric the within-decision AUROC of faithful
vs unfaithful explanations with its bootstrap CI, the shuffled-decision control, the null floor and the
counterfactual diagnosticity of the same bank, the dose-response slope; the pairs' precision; the faithful
share and alignment of base / DPO / SFT, paired, with the report's statistics.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.measurement import write_results  # noqa: E402
from pipelines.analysis.gate import alignment_label  # noqa: E402
from pipelines.analysis.metrics import metric_functions  # noqa: E402
from pipelines.analysis.stats import holm, paired_difference, paired_power  # noqa: E402
from pipelines.core.config import load_params  # noqa: E402
from pipelines.core.partitions import model_dir, slice_dir  # noqa: E402
from pipelines.core.records import read_records  # noqa: E402
from pipelines.synthetic.validation import (  # noqa: E402
    dose_response,
    faithful_labels,
    faithful_share,
    own_rows,
    pair_precision,
    shuffled_control,
    within_decision_auroc,
)

RESULTS = Path("experiments/results/known_answer")
WORKING = 0.9  # the AUROC a working instrument reaches with its best metric (issue 20)


def instrument(params, bank, summary: dict[str, Any]) -> dict[str, Any]:
    functions = metric_functions(params.score.top_k)
    samples = params.score.bootstrap_samples
    table = {}
    for method in params.attribute.methods:
        own = own_rows(bank, method)
        controls = summary["methods"].get(method, {})
        table[method] = {metric: {
            "auroc": within_decision_auroc(own, metric, samples, params.seed),
            "shuffled_control": shuffled_control(own, functions[metric], metric, samples, params.seed),
            "null_floor": controls.get("null_floor", {}).get("all", {}).get(metric, {}).get("observed_minus_floor"),
            "diagnosticity": controls.get("diagnosticity", {}).get("all", {}).get(metric, {}).get("auroc"),
            "dose_response": dose_response(own, metric, samples, params.seed),
        } for metric in params.score.metrics}
    return table


def fine_tunes(params, data: Path, generations: dict[str, Any]) -> dict[str, Any] | None:
    import pandas as pd

    banks = {}
    for name in params.evaluate.models:
        path = data / "evaluation" / name / "bank.parquet"
        if not path.exists():
            return None
        rows = {r["id"]: r for r in read_records(data / "evaluation" / name / "generations.jsonl")}
        labelled = faithful_labels(pd.read_parquet(path), rows)
        own = own_rows(labelled, params.pair.method or params.attribute.methods[0])
        banks[name] = {"own": own, "accuracy": float(np.mean([r["correct"] for r in rows.values()]))}
    base = banks["base"]["own"]
    ids = sorted(base["generation_id"].unique())
    samples = params.evaluate.bootstrap_samples

    # the ground truth first, then the alignment the pairs were ranked by, then the paper's Spearman
    measures = list(dict.fromkeys(["faithful", params.pair.metric, "spearman"]))
    aggregate = params.evaluate.alignment_aggregate

    def per_decision(own, what: str) -> np.ndarray:
        if what == "faithful":
            shares = dict(zip(sorted(own["generation_id"].unique()), faithful_share(own)))
            return np.array([shares.get(i, np.nan) for i in ids])
        # the report's per-decision statistic (evaluate.alignment_aggregate), so the gate's figure is in the table
        values = own.set_index("generation_id").groupby(level=0)[what].agg(aggregate)
        return np.array([values.get(i, np.nan) for i in ids])

    out: dict[str, Any] = {"decisions": len(ids), "measures": measures, "models": {}, "comparisons": {}}
    for name, made in banks.items():
        out["models"][name] = {"accuracy": round(made["accuracy"], 4), **{
            ("faithful_share" if what == "faithful" else f"{aggregate}_{what}"):
                round(float(np.nanmean(per_decision(made["own"], what))), 4) for what in measures}}
    pvalues = {}
    for tuned, reference in (("dpo", "base"), ("sft", "base"), ("dpo", "sft")):
        if tuned not in banks or reference not in banks:
            continue
        for what in measures:
            difference = per_decision(banks[tuned]["own"], what) - per_decision(banks[reference]["own"], what)
            result = paired_difference(difference, samples, params.seed)
            sd = result["sd"] or params.evaluate.planning_sd
            result["power"] = round(paired_power(result["decisions"], params.evaluate.min_detectable_effect, sd,
                                                 params.evaluate.alpha), 4)
            result["powered"] = result["power"] >= params.evaluate.power
            key = f"{tuned}-{reference}/{what}"
            out["comparisons"][key], pvalues[key] = result, result["wilcoxon_p"]
    for key, adjusted in holm(pvalues).items():
        out["comparisons"][key]["holm_p"] = adjusted
    return out


def promotion(params, data: Path) -> dict[str, Any] | None:
    """The gate's decision on the candidate (promotion.json, written by the promote stage) and its statistic."""
    path = data / "promotion.json"
    if not path.exists():
        return None
    made = json.loads(path.read_text())
    return {"statistic": alignment_label(params.evaluate), **{k: made.get(k) for k in (
        "candidate", "passed", "promoted", "alignment_gain", "alignment_gain_ci95", "accuracy_change",
        "accuracy_lower_bound", "reasons")}}


def markdown(results: dict[str, Any]) -> str:
    def ci(e):
        if not e or e.get("ci95") is None:
            return "n/a"
        value = e.get("auroc", e.get("mean", e.get("slope")))
        return f"{value:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"

    lines = [f"Known-answer bank: {results['decisions']} decisions, k = {results['k']}; faithful share of own "
             f"explanations {results['faithful_share']:.3f} (labelled {results['labelled_share']:.3f}); model "
             f"held-out accuracy {results['accuracy']:.3f}.", "",
             "| method | metric | AUROC faithful vs unfaithful (95% CI) | decisions | shuffled-decision control | "
             "observed - null floor | counterfactual AUROC | dose-response slope |", "|---|---|---|---|---|---|---|---|"]
    for method, by_metric in results["instrument"].items():
        for metric, row in by_metric.items():
            lines.append(f"| {method} | {metric} | {ci(row['auroc'])} | {row['auroc']['decisions']} | "
                         f"{ci(row['shuffled_control'])} | {ci(row['null_floor'])} | {ci(row['diagnosticity'])} | "
                         f"{ci(row['dose_response'])} |")
    best = results["best"]
    verdict = ("no decision has both a faithful and an unfaithful explanation: no AUROC" if best["auroc"] is None
               else f"{best['method']} / {best['metric']} at AUROC {best['auroc']:.3f} "
               f"({'reaches' if best['auroc'] >= WORKING else 'below'} the {WORKING} a working instrument needs)")
    lines += ["", f"Best: {verdict}.",
              "", f"Pairs ({results['pairs']['pairs']}): precision {results['pairs']['precision']} (chosen faithful, "
              f"rejected unfaithful), reversed {results['pairs']['reversed']}."]
    tunes = results.get("fine_tunes")
    if tunes:
        columns = [k for k in next(iter(tunes["models"].values())) if k != "accuracy"]
        lines += ["", "| model | accuracy | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
                  "|---" * (len(columns) + 2) + "|"]
        lines += [f"| {m} | {r['accuracy']:.3f} | " + " | ".join(f"{r[c]:.3f}" for c in columns) + " |"
                  for m, r in tunes["models"].items()]
        lines += ["", "| comparison | mean difference (95% CI) | decisions | Wilcoxon p | Holm p | power at 0.05 |",
                  "|---|---|---|---|---|---|"]
        for key, r in tunes["comparisons"].items():
            label = "" if r["powered"] else " (underpowered)"
            lines.append(f"| {key} | {ci(r)} | {r['decisions']} | {r['wilcoxon_p']} | {r['holm_p']} | "
                         f"{r['power']}{label} |")
    gate = results.get("promotion")
    if gate:
        because = "; ".join(gate["reasons"]) or "every condition holds"
        lines += ["", f"Gate ({gate['candidate']}, on the per-decision {gate['statistic']} of the pair method): "
                  f"{'promoted' if gate['promoted'] else 'not promoted'}; alignment gain {gate['alignment_gain']} "
                  f"CI {gate['alignment_gain_ci95']}, accuracy change {gate['accuracy_change']} ({because})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="experiments/known_answer.yaml")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    params = load_params(args.params)
    model = params.model.name
    folder, data = slice_dir(params, "synthetic", model), model_dir(params, model)
    generations = {r["id"]: r for r in read_records(folder / "generations.jsonl")}
    bank = faithful_labels(pd.read_parquet(folder / "bank.parquet"), generations)
    summary = json.loads((folder / "score_summary.json").read_text())
    own = bank[bank["kind"] == "own"]
    first = own[own["method"] == params.attribute.methods[0]]
    pairs = [r for f in sorted((data / "pairs").glob("*.jsonl")) for r in read_records(f)]
    results = {"params": args.params, "decisions": int(first["generation_id"].nunique()),
               "k": params.generate.n_explanations,
               "accuracy": float(np.mean([g["correct"] for g in generations.values()])),
               "faithful_share": float(first["faithful"].eq(True).mean()),
               "labelled_share": float(first["faithful"].notna().mean()),
               "instrument": instrument(params, bank, summary),
               "pairs": pair_precision(pairs, generations),
               "fine_tunes": fine_tunes(params, data, generations),
               "promotion": promotion(params, data)}
    defined = [(m, k, r["auroc"]["auroc"]) for m, by in results["instrument"].items() for k, r in by.items()
               if r["auroc"]["auroc"] is not None]
    best = max(defined, key=lambda t: t[2]) if defined else (None, None, None)
    results["best"] = {"method": best[0], "metric": best[1], "auroc": best[2]}
    write_results(Path(args.out), "results", results, markdown)


if __name__ == "__main__":
    main()
