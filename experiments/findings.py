"""The paper's three findings, tested on the embedded model with the decision as the unit.

    python experiments/findings.py [--params experiments/measurement.yaml] [--report DIR/metrics.json]
    # the measurement study's banks (+ a powered experiment's metrics.json) -> experiments/results/findings/

1. Alignment does not differ between correct and incorrect decisions: per decision the median Spearman
   over its own explanations; correct minus incorrect with a bootstrap CI and TOST against
   evaluate.equivalence_margin (equivalence must be shown, a non-significant difference is not it).
2. Spearman tells explanations apart where cosine does not: per decision the diagnosticity AUROC (own vs
   counterfactual explanations) of each metric; the paired difference Spearman - cosine, bootstrap CI
   and Wilcoxon p over decisions, and each AUROC against 0.5.
3. DPO raises alignment without accuracy loss, in-domain and under shift, and SFT does not: read from a
   report's metrics.json (its paired comparisons, power and non-inferiority), when one is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measurement import write_results  # noqa: E402  (experiments/ is on sys.path when run as a script)

from pipelines.analysis.controls import OWN, bootstrap_ci, decision_aurocs  # noqa: E402
from pipelines.analysis.stats import equivalence, paired_difference  # noqa: E402
from pipelines.core.config import load_params  # noqa: E402
from pipelines.core.partitions import model_names, slice_dir  # noqa: E402

RESULTS = Path("experiments/results/findings")


def correct_vs_incorrect(own, margin: float, samples: int, seed: int) -> dict:
    medians = own.groupby("generation_id").agg(correct=("correct", "first"), spearman=("spearman", "median"))
    medians = medians[medians["correct"].notna()]
    right = medians.loc[medians["correct"].astype(bool), "spearman"].to_numpy(float)
    wrong = medians.loc[~medians["correct"].astype(bool), "spearman"].to_numpy(float)
    return equivalence(right, wrong, margin, samples, seed)


def spearman_vs_cosine(rows, samples: int, seed: int) -> dict:
    spearman, cosine = decision_aurocs(rows, "spearman"), decision_aurocs(rows, "cosine")
    both = ~np.isnan(spearman) & ~np.isnan(cosine)
    return {m: {"auroc": round(float(np.nanmean(v)), 4), "ci95": bootstrap_ci(v, samples, seed),
                "decisions": int((~np.isnan(v)).sum())} for m, v in (("spearman", spearman), ("cosine", cosine))} | {
        "spearman_minus_cosine": paired_difference(spearman[both] - cosine[both], samples, seed)}


def finding_three(metrics: dict) -> dict:
    out = {"smoke_test": metrics.get("smoke_test"), "comparisons": {}}
    for name, by_dataset in metrics.get("comparisons", {}).items():
        out["comparisons"][name] = {
            dataset: {"decisions": r["alignment"]["decisions"], "gain": r["alignment"]["mean"],
                      "ci95": r["alignment"]["ci95"], "holm_p": r["alignment"].get("holm_p"),
                      "power": r["alignment"]["power"]["value"], "accuracy_change": r["accuracy"]["mean"],
                      "accuracy_lower_bound": r["accuracy"]["lower_bound"],
                      "non_inferior": r["accuracy"]["non_inferior"]}
            for dataset, r in by_dataset.items()}
    return out


def run(params, report: Path | None) -> dict:
    import pandas as pd

    model = model_names(params)[0]
    bank = pd.concat([pd.read_parquet(slice_dir(params, d, model) / "bank.parquet") for d in params.tasks.datasets])
    samples, seed, margin = params.score.bootstrap_samples, params.seed, params.evaluate.equivalence_margin
    out = {"model": params.model.id, "equivalence_margin": margin, "methods": {}}
    for method, rows in bank.groupby("method"):
        own = rows[rows["kind"] == OWN]
        out["methods"][method] = {
            "decisions": int(own["generation_id"].nunique()),
            "accuracy": round(float(own.groupby("generation_id")["correct"].first().astype(float).mean()), 4),
            "finding_1_correct_vs_incorrect": correct_vs_incorrect(own, margin, samples, seed),
            "finding_2_diagnosticity": spearman_vs_cosine(rows, samples, seed)}
    if report is not None:
        out["finding_3"] = finding_three(json.loads(report.read_text()))
    return out


def markdown(findings: dict) -> str:
    def interval(ci) -> str:
        return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "[-]"

    lines = ["Finding 1: correct vs incorrect decisions (per-decision median Spearman; TOST margin "
             f"+-{findings['equivalence_margin']})", "",
             "| method | decisions | accuracy | correct / incorrect | difference [95% CI] | TOST p | equivalent |",
             "|---|---|---|---|---|---|---|"]
    for method, f in findings["methods"].items():
        e = f["finding_1_correct_vs_incorrect"]
        lines.append(f"| {method} | {f['decisions']} | {f['accuracy']:.2f} | {e['n_a']} / {e['n_b']} | "
                     f"{e['difference']:+.3f} {interval(e['ci95'])} | {e['tost_p']:.3g} | "
                     f"{'yes' if e['equivalent'] else 'not shown'} |")
    lines += ["", "Finding 2: diagnosticity AUROC (own vs counterfactual explanations), per decision", "",
              "| method | decisions | Spearman AUROC | cosine AUROC | Spearman - cosine [95% CI] | Wilcoxon p |",
              "|---|---|---|---|---|---|"]
    for method, f in findings["methods"].items():
        d = f["finding_2_diagnosticity"]
        gap = d["spearman_minus_cosine"]
        lines.append(f"| {method} | {gap['decisions']} | {d['spearman']['auroc']:.3f} {interval(d['spearman']['ci95'])} | "
                     f"{d['cosine']['auroc']:.3f} {interval(d['cosine']['ci95'])} | {gap['mean']:+.3f} "
                     f"{interval(gap['ci95'])} | {gap['wilcoxon_p']:.3g} |")
    if "finding_3" in findings:
        lines += ["", f"Finding 3: paired comparisons (smoke test: {findings['finding_3']['smoke_test']})", "",
                  "| comparison | dataset | decisions | gain [95% CI] | Holm p | power | accuracy change | "
                  "lower bound | non-inferior |", "|---|---|---|---|---|---|---|---|---|"]
        for name, by in findings["finding_3"]["comparisons"].items():
            for dataset, r in by.items():
                lines.append(f"| {name} | {dataset} | {r['decisions']} | {r['gain']:+.3f} {interval(r['ci95'])} | "
                             f"{r['holm_p']} | {r['power']:.2f} | {r['accuracy_change']} | "
                             f"{r['accuracy_lower_bound']} | {r['non_inferior']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="experiments/measurement.yaml")
    parser.add_argument("--report", type=Path, help="a powered experiment's report/metrics.json (finding 3)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    write_results(Path(args.out), "findings", run(load_params(args.params), args.report), markdown)


if __name__ == "__main__":
    main()
