"""Evaluation banks -> a self-contained HTML report and a machine-readable metrics file.

    python -m pipelines report [--params params.yaml]
    # data/<model>/evaluation/{base,dpo,sft}/bank.parquet -> data/<model>/report/{report.html,metrics.json,...}

Per dataset (in-domain and shifted side by side) and model (base, DPO, SFT): accuracy with a Wilson
95% interval; per decision the best, median and worst Spearman and cosine over its explanations,
averaged, with bootstrap 95% intervals. Comparisons (DPO-base, SFT-base, DPO-SFT) are paired on the
decisions of the same tasks (pipelines/analysis/stats.py): the median-Spearman difference with a bootstrap CI,
Wilcoxon and Holm-adjusted p over the family, its power at evaluate.min_detectable_effect (a run below
evaluate.power is labelled a smoke test), accuracy as non-inferiority; correct vs incorrect decisions by
TOST. Then the trust figures (null floor, diagnosticity) and the plots.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.analysis.controls import OWN, bootstrap_ci, control_summary
from pipelines.analysis.stats import (
    decisions_for_power,
    equivalence,
    holm,
    noninferiority,
    paired_difference,
    paired_power,
)
from pipelines.core.config import Params, evaluation_datasets
from pipelines.core.records import write_json
from pipelines.stages.score import read_scores, sample_warnings

METRICS = ("spearman", "cosine")
# the evaluation banks' columns the report reads (with the score metrics)
REPORT_COLUMNS = ["generation_id", "task_id", "dataset", "method", "kind", "correct", "n_features", "n_samples", "masks"]


def wilson(successes: int, n: int) -> tuple[float, float] | None:
    if n == 0:
        return None
    z, p = 1.959964, successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return round(centre - half, 4), round(centre + half, 4)


def per_decision(bank, method: str):
    """One row per decision: best / median / worst of each metric over its explanations, and spread."""
    rows = bank[(bank["method"] == method) & (bank["kind"] == OWN)]
    grouped = rows.groupby("generation_id")
    table = grouped[["dataset", "task_id", "correct"]].first()
    for metric in METRICS:
        table[f"{metric}_best"] = grouped[metric].max()
        table[f"{metric}_median"] = grouped[metric].median()
        table[f"{metric}_worst"] = grouped[metric].min()
        table[f"{metric}_spread"] = grouped[metric].std(ddof=0)
    return table


def summarize_model(table, samples: int, seed: int, margin: float, alpha: float) -> dict[str, Any]:
    graded = table[table["correct"].notna()]
    correct = int(graded["correct"].astype(bool).sum())
    out: dict[str, Any] = {"decisions": len(table),
                           "accuracy": round(correct / len(graded), 4) if len(graded) else None,
                           "accuracy_ci95": wilson(correct, len(graded))}
    right, wrong = graded[graded["correct"].astype(bool)], graded[~graded["correct"].astype(bool)]
    for metric in METRICS:
        for which in ("best", "median", "worst"):
            values = table[f"{metric}_{which}"].to_numpy(float)
            out[f"{metric}_{which}"] = None if np.isnan(values).all() else round(float(np.nanmean(values)), 4)
            out[f"{metric}_{which}_ci95"] = bootstrap_ci(values, samples, seed)
        out[f"{metric}_within_decision_std"] = _mean_or_none(table[f"{metric}_spread"])
        for label, part in (("correct", right), ("incorrect", wrong)):
            out[f"{metric}_median_{label}"] = _mean_or_none(part[f"{metric}_median"])
    # the paper's first finding, decision by decision: equivalence needs TOST, not a non-significant test
    out["correct_vs_incorrect_spearman"] = equivalence(
        right["spearman_median"].to_numpy(float), wrong["spearman_median"].to_numpy(float), margin, samples, seed,
        alpha)
    return out


def _mean_or_none(series) -> float | None:
    value = series.mean()
    return None if value is None or np.isnan(value) else round(float(value), 4)


def comparison_pairs(names) -> list[tuple[str, str]]:
    """(tuned, reference): each fine-tune against the base model, and DPO against SFT."""
    wanted = [("dpo", "base"), ("sft", "base"), ("dpo", "sft")]
    return [(a, b) for a, b in wanted if a in names and b in names]


def compare(reference, tuned, params: Params) -> dict[str, Any]:
    """Tuned vs reference on the decisions of the same tasks (the unit: one decision per task)."""
    from scipy.stats import binomtest

    settings = params.evaluate
    joined = reference.set_index("task_id").join(tuned.set_index("task_id"), lsuffix="_ref", rsuffix="_tuned",
                                                 how="inner")
    alignment = paired_difference((joined["spearman_median_tuned"] - joined["spearman_median_ref"]).to_numpy(float),
                                  settings.bootstrap_samples, params.seed)
    sd = max(alignment["sd"] or 0.0, settings.planning_sd)
    alignment["power"] = {
        "effect": settings.min_detectable_effect, "sd": round(sd, 4), "alpha": settings.alpha,
        "value": round(paired_power(alignment["decisions"], settings.min_detectable_effect, sd, settings.alpha), 4),
        "decisions_needed": decisions_for_power(settings.min_detectable_effect, sd, settings.power, settings.alpha)}
    alignment["smoke_test"] = alignment["power"]["value"] < settings.power
    both = joined[joined["correct_ref"].notna() & joined["correct_tuned"].notna()]
    before, after = both["correct_ref"].astype(bool), both["correct_tuned"].astype(bool)
    accuracy = noninferiority((after.astype(float) - before.astype(float)).to_numpy(), params.promote.accuracy_tolerance,
                              settings.alpha)
    gained, lost = int((~before & after).sum()), int((before & ~after).sum())
    accuracy.update(gained=gained, lost=lost,
                    mcnemar_p=float(binomtest(gained, gained + lost).pvalue) if gained + lost else None)
    return {"tasks": len(joined), "alignment": alignment, "accuracy": accuracy}


def build_metrics(params: Params, tables: dict[str, Any]) -> dict[str, Any]:
    domains = evaluation_datasets(params)
    settings = params.evaluate
    samples, seed = settings.bootstrap_samples, params.seed
    margin = settings.equivalence_margin
    metrics: dict[str, Any] = {
        "method": params.pair.method or params.attribute.methods[0], "domains": domains, "models": {},
        "comparisons": {},
        "power": {"effect": settings.min_detectable_effect, "planning_sd": settings.planning_sd,
                  "target": settings.power, "alpha": settings.alpha,
                  "how": "two-sided paired t-test (noncentral t) on the per-decision median Spearman difference, "
                         "SD = max(planning_sd, observed SD of the paired differences)"}}
    for name, table in tables.items():
        metrics["models"][name] = {"all": summarize_model(table, samples, seed, margin, settings.alpha)} | {
            dataset: summarize_model(table[table["dataset"] == dataset], samples, seed, margin, settings.alpha)
            for dataset in domains if (table["dataset"] == dataset).any()}
    for tuned, reference in comparison_pairs(tables):
        a, b = tables[reference], tables[tuned]
        metrics["comparisons"][f"{tuned}-{reference}"] = {"all": compare(a, b, params)} | {
            dataset: compare(a[a["dataset"] == dataset], b[b["dataset"] == dataset], params) for dataset in domains}
    # one family: every alignment test the report runs
    family = {(c, d): scope["alignment"]["wilcoxon_p"] for c, by in metrics["comparisons"].items()
              for d, scope in by.items()}
    for (c, d), p in holm(family).items():
        metrics["comparisons"][c][d]["alignment"]["holm_p"] = p
    main = metrics["comparisons"].get(f"{params.promote.candidate}-base", {}).get("all")
    metrics["smoke_test"] = main is None or main["alignment"]["smoke_test"]
    return metrics


def figures(tables: dict[str, Any], metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) of each plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, datasets = list(tables), list(metrics["domains"])
    out = []

    def emit(title, fig):
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        out.append((title, base64.b64encode(buffer.getvalue()).decode()))

    for key, label in (("spearman_median", "median Spearman per decision"), ("accuracy", "accuracy")):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            stats = [metrics["models"][name].get(d, {}) for d in datasets]
            means = [s.get(key) if s.get(key) is not None else np.nan for s in stats]
            cis = [s.get(f"{key}_ci95") for s in stats]
            errors = np.array([[m - c[0], c[1] - m] if c and not np.isnan(m) else [0, 0] for m, c in zip(means, cis)]).T
            ax.bar(np.arange(len(datasets)) + i * width, means, width, yerr=errors, capsize=3, label=name)
        ax.set_xticks(np.arange(len(datasets)) + width * (len(names) - 1) / 2,
                      [f"{d}\n({metrics['domains'][d].replace('_', '-')})" for d in datasets])
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        emit(f"{label} by dataset, 95% CI", fig)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, METRICS):
        for name in names:
            ax.hist(tables[name][f"{metric}_median"].dropna(), bins=15, alpha=0.5, label=name)
        ax.set_title(f"per-decision median {metric}")
    axes[0].legend(fontsize=8)
    emit("distributions", fig)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, METRICS):
        ax.boxplot([tables[n][f"{metric}_spread"].dropna() for n in names], tick_labels=names)
        ax.set_title(f"{metric}: std across a decision's explanations")
    # spread is not discrimination: the trust table's diagnosticity AUROC says whether a metric tells apart
    emit("spread across a decision's explanations (not discrimination: see the diagnosticity AUROC)", fig)
    return out


def render(metrics: dict[str, Any], plots: list[tuple[str, str]]) -> str:
    def cell(stats: dict[str, Any], key: str) -> str:
        value, ci = stats.get(key), stats.get(f"{key}_ci95")
        if value is None:
            return "–"
        return f"{value:.3f}" + (f" <small>[{ci[0]:.3f}, {ci[1]:.3f}]</small>" if ci else "")

    keys = ["accuracy", "spearman_best", "spearman_median", "spearman_worst", "cosine_best", "cosine_median",
            "cosine_worst", "spearman_median_correct", "spearman_median_incorrect", "spearman_within_decision_std",
            "cosine_within_decision_std"]
    rows = []
    for dataset, domain in [("all", "all"), *metrics["domains"].items()]:
        for name, per in metrics["models"].items():
            stats = per.get(dataset)
            if stats:
                rows.append(f"<tr><td>{html.escape(dataset)}</td><td>{domain}</td><td>{name}</td>"
                            f"<td>{stats['decisions']}</td>" + "".join(f"<td>{cell(stats, k)}</td>" for k in keys) + "</tr>")
    comparison_rows = comparison_table(metrics)
    equivalence_rows = [
        f"<tr><td>{name}</td><td>{html.escape(d)}</td><td>{e['n_a']} / {e['n_b']}</td><td>{_signed(e['difference'])}"
        f"{_interval(e['ci95'])}</td><td>±{e['margin']}</td><td>{_p(e['tost_p'])}</td>"
        f"<td>{'yes' if e['equivalent'] else 'not shown'}</td></tr>"
        for name, per in metrics["models"].items() for d, stats in per.items()
        for e in [stats["correct_vs_incorrect_spearman"]]]
    smoke = metrics.get("smoke_test", True)
    power = metrics["power"]
    banner = (f"<p style='background:#fee;padding:6px'><b>Smoke test: supports no claim.</b> The main comparison "
              f"cannot detect a change of {power['effect']} in per-decision median Spearman with "
              f"{power['target']:.0%} power ({html.escape(power['how'])}).</p>" if smoke else "")
    trust = trust_section(metrics.get("trust", {}))
    images = "".join(f"<figure><img src='data:image/png;base64,{b64}'><figcaption>{html.escape(t)}</figcaption></figure>"
                     for t, b64 in plots)
    header = "".join(f"<th>{k.replace('_', ' ')}</th>" for k in ["dataset", "domain", "model", "decisions", *keys])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>PSCB evaluation</title><style>
body{{font-family:sans-serif;margin:2em;max-width:1300px}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}figure{{display:inline-block;margin:1em}}</style></head>
<body><h1>PSCB evaluation: base vs DPO vs SFT</h1>
<p>Attribution method: {html.escape(metrics['method'])}. Per decision: best / median / worst over its explanations,
then averaged over decisions; [95% CI] (Wilson for accuracy, bootstrap for means).</p>
<table><tr>{header}</tr>{''.join(rows)}</table>
{movement_section(metrics.get("movement", {}))}
<h2>Paired comparisons (same tasks; the unit is the decision)</h2>{banner}
<p>Alignment: mean paired difference of per-decision median Spearman [bootstrap 95% CI], Wilcoxon p, and Holm's
adjusted p over every alignment test in this table; power to detect {power['effect']} at alpha {power['alpha']}.
Accuracy: non-inferiority, the one-sided {1 - power['alpha']:.0%} lower bound of the paired change against minus
the margin (promote.accuracy_tolerance); McNemar on the discordant decisions.</p>
<table><tr><th>comparison</th><th>dataset</th><th>decisions</th><th>median Spearman difference</th><th>Wilcoxon p</th>
<th>Holm p</th><th>power</th><th>decisions for power</th><th>accuracy change</th><th>lower bound</th>
<th>non-inferior</th><th>gained / lost</th><th>McNemar p</th></tr>{''.join(comparison_rows)}</table>
<h2>Correct vs incorrect decisions</h2>
<p>Per-decision median Spearman, mean over correct minus mean over incorrect decisions [bootstrap 95% CI];
equivalence by TOST (two one-sided Welch t-tests) against the margin evaluate.equivalence_margin. A
non-significant difference is not equivalence.</p>
<table><tr><th>model</th><th>dataset</th><th>correct / incorrect</th><th>difference</th><th>margin</th>
<th>TOST p</th><th>equivalent</th></tr>{''.join(equivalence_rows)}</table>
{trust}
<h2>Figures</h2>{images}</body></html>"""


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _interval(ci) -> str:
    return f" <small>[{ci[0]:+.3f}, {ci[1]:+.3f}]</small>" if ci else ""


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def comparison_table(metrics: dict[str, Any]) -> list[str]:
    rows = []
    for name, per in metrics["comparisons"].items():
        for dataset, r in per.items():
            a, acc = r["alignment"], r["accuracy"]
            label = " <small>(smoke test)</small>" if a["smoke_test"] else ""
            rows.append(
                f"<tr><td>{name}</td><td>{html.escape(dataset)}</td><td>{a['decisions']}{label}</td>"
                f"<td>{_signed(a['mean'])}{_interval(a['ci95'])}</td><td>{_p(a['wilcoxon_p'])}</td>"
                f"<td>{_p(a.get('holm_p'))}</td><td>{a['power']['value']:.2f}</td><td>{a['power']['decisions_needed']}</td>"
                f"<td>{_signed(acc['mean'])}</td><td>{_signed(acc['lower_bound'])}</td>"
                f"<td>{'yes' if acc['non_inferior'] else 'not shown'}</td><td>+{acc['gained']} / -{acc['lost']}</td>"
                f"<td>{_p(acc['mcnemar_p'])}</td></tr>")
    return rows


def trust_section(trust: dict[str, Any]) -> str:
    """Observed alignment vs its null floor, and the diagnosticity AUROC, per model and dataset."""
    def estimate(e: dict[str, Any] | None) -> str:
        if not e or e.get("mean") is None:
            return "–"
        ci = e.get("ci95")
        return f"{e['mean']:+.3f}" + (f" <small>[{ci[0]:+.3f}, {ci[1]:+.3f}]</small>" if ci else "") + \
            f" <small>n={e['decisions']}</small>"

    rows, warnings = [], []
    for name, figures in trust.items():
        warnings += [f"<li>{html.escape(name)}: {html.escape(w)}</li>" for w in figures.get("warnings", [])]
        for dataset, by_metric in figures.get("null_floor", {}).items():
            diagnostic = figures["diagnosticity"][dataset]
            for metric, floor in by_metric.items():
                rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(dataset)}</td><td>{metric}</td>"
                            f"<td>{estimate(floor['observed'])}</td><td>{estimate(floor['floor'])}</td>"
                            f"<td>{estimate(floor['observed_minus_floor'])}</td>"
                            f"<td>{estimate(diagnostic[metric]['auroc'])}</td></tr>")
    if not rows:
        return "<h2>Trust in the measurement</h2><p>No control explanations in these banks.</p>"
    return f"""<h2>Trust in the measurement</h2>
<p>Null floor: the same decision's vector against explanations of other tasks teacher-forced on its prompt; only
observed minus floor is agreement that belongs to the explanation. Diagnosticity: within each decision, the AUROC
of its own explanations' scores against the counterfactual explanation (written after a forced other option);
0.5 = the metric cannot tell them apart. Means over decisions, [bootstrap 95% CI over decisions].</p>
<ul>{''.join(warnings)}</ul>
<table><tr><th>model</th><th>dataset</th><th>metric</th><th>observed</th><th>null floor</th><th>observed - floor</th>
<th>diagnosticity AUROC</th></tr>{''.join(rows)}</table>"""


def run(params: Params, folder: Path) -> dict[str, Any]:
    source, model_folder, folder = folder / "evaluation", folder, folder / "report"
    method = params.pair.method or params.attribute.methods[0]
    tables, trust = {}, {}
    for name in params.evaluate.models:
        path = source / name / "bank.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `python -m pipelines evaluate` first")
        bank = read_scores(path, columns=REPORT_COLUMNS + [*METRICS, *params.score.metrics])  # never the vectors
        tables[name] = per_decision(bank, method)
        rows = bank[bank["method"] == method]
        trust[name] = {"warnings": sample_warnings(rows[rows["kind"] == OWN], method),
                       **control_summary(rows, params.score.metrics, params.evaluate.bootstrap_samples, params.seed)}
    metrics = build_metrics(params, tables) | {"trust": trust, "movement": movement(params, model_folder)}
    write_json(folder / "metrics.json", metrics)
    write_plot_table(folder / "alignment.csv", metrics)
    (folder / "report.html").write_text(render(metrics, figures(tables, metrics)))
    return {"report": str(folder / "report.html"), "metrics": str(folder / "metrics.json")}


def movement(params: Params, data: Path) -> dict[str, Any]:
    """Per fine-tune: did the policy move? Held-out reward accuracy (binomial test), margin, log-probability
    shifts and KL from training; the share of outputs that changed at evaluation. `moved` needs both a
    reward accuracy above chance at evaluate.alpha and at least one changed explanation."""
    trained = json.loads((data / "train_summary.json").read_text()) if (data / "train_summary.json").exists() else {}
    evaluated = data / "evaluation" / "evaluate_summary.json"
    models = json.loads(evaluated.read_text())["models"] if evaluated.exists() else {}
    out = {}
    for name in params.evaluate.models:
        if name == "base":
            continue
        held_out = trained.get(name, {}).get("movement", {})
        changed = {k: v for k, v in models.get(name, {}).items() if k.startswith("changed_")}
        p = held_out.get("reward_accuracy_p")
        out[name] = {**held_out, **changed, "moved": p is not None and p < params.evaluate.alpha
                     and (changed.get("changed_explanations_changed") or 0) > 0}
    return out


def movement_section(moves: dict[str, Any]) -> str:
    if not moves:
        return ""

    def value(v) -> str:
        return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    keys = ["pairs", "reward_accuracy", "reward_accuracy_p", "reward_margin", "logp_shift_chosen",
            "logp_shift_rejected", "kl_per_token", "changed_decisions_changed", "changed_explanations_changed"]
    rows = "".join(f"<tr><td>{name}</td>" + "".join(f"<td>{value(m.get(k))}</td>" for k in keys)
                   + f"<td>{'yes' if m['moved'] else '<b>no</b>'}</td></tr>" for name, m in moves.items())
    header = "".join(f"<th>{k.replace('changed_', '').replace('_', ' ')}</th>" for k in keys)
    stale = [name for name, m in moves.items() if not m["moved"]]
    warning = (f"<p style='background:#fee;padding:6px'><b>{', '.join(stale)}: the policy did not measurably move</b> "
               "(held-out reward accuracy not above chance, or no explanation changed): its comparisons say "
               "nothing about what training does.</p>" if stale else "")
    return f"""<h2>Did the fine-tune move the policy?</h2>{warning}
<p>On the held-out eval pairs, adapter on vs off: DPO's implicit reward accuracy (one-sided binomial p against 0.5),
mean reward margin, mean log-probability shift of chosen and rejected, per-token KL to the reference on the chosen
completions; at evaluation, the share of decisions and explanations that differ from the base model's.</p>
<table><tr><th>model</th>{header}<th>moved</th></tr>{rows}</table>"""


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, dataset) of metrics.json's `models` section, the "all" dataset included."""
    return [{"model": model, "dataset": dataset, **stats}
            for model, per_dataset in metrics["models"].items() for dataset, stats in per_dataset.items()]


def write_plot_table(path: Path, metrics: dict[str, Any]) -> None:
    """The figures `dvc plots show` draws and `dvc plots diff` compares, one row per (model, dataset)."""
    import pandas as pd

    columns = ["model", "dataset", "accuracy", "spearman_best", "spearman_median", "spearman_worst", "cosine_median"]
    pd.DataFrame(metric_rows(metrics)).reindex(columns=columns).to_csv(path, index=False)
