"""Evaluation banks -> a self-contained HTML report and a machine-readable metrics file.

    python -m pipelines report [--params params.yaml]
    # data/<model>/evaluation/{base,dpo,sft}/bank.parquet -> data/<model>/report/{report.html,metrics.json,...}

Per dataset (in-domain and shifted side by side) and model (base, DPO, SFT): accuracy with a Wilson
95% interval; per decision the best, median and worst Spearman and cosine over its explanations,
averaged, with bootstrap 95% intervals; a paired comparison of each tuned model with the base model on
the same tasks (Wilcoxon signed-rank on per-decision median Spearman, exact McNemar on correctness);
metric distributions, correct vs incorrect decisions, and how much each metric separates the
explanations of one decision.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Params
from pipelines.controls import OWN, bootstrap_ci, control_summary
from pipelines.evaluate import evaluation_datasets
from pipelines.records import write_json
from pipelines.score import sample_warnings

METRICS = ("spearman", "cosine")


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


def summarize_model(table, samples: int, seed: int) -> dict[str, Any]:
    graded = table[table["correct"].notna()]
    correct = int(graded["correct"].astype(bool).sum())
    out: dict[str, Any] = {"decisions": len(table),
                           "accuracy": round(correct / len(graded), 4) if len(graded) else None,
                           "accuracy_ci95": wilson(correct, len(graded))}
    for metric in METRICS:
        for which in ("best", "median", "worst"):
            values = table[f"{metric}_{which}"].to_numpy(float)
            out[f"{metric}_{which}"] = None if np.isnan(values).all() else round(float(np.nanmean(values)), 4)
            out[f"{metric}_{which}_ci95"] = bootstrap_ci(values, samples, seed)
        out[f"{metric}_within_decision_std"] = _mean_or_none(table[f"{metric}_spread"])
        for label, part in (("correct", graded[graded["correct"].astype(bool)]),
                            ("incorrect", graded[~graded["correct"].astype(bool)])):
            out[f"{metric}_median_{label}"] = _mean_or_none(part[f"{metric}_median"])
    return out


def _mean_or_none(series) -> float | None:
    value = series.mean()
    return None if value is None or np.isnan(value) else round(float(value), 4)


def paired(base, tuned) -> dict[str, Any]:
    """Tuned vs base on the decisions of the same tasks."""
    from scipy.stats import binomtest, wilcoxon

    joined = base.set_index("task_id").join(tuned.set_index("task_id"), lsuffix="_base", rsuffix="_tuned",
                                            how="inner")
    difference = (joined["spearman_median_tuned"] - joined["spearman_median_base"]).dropna().to_numpy()
    result: dict[str, Any] = {"tasks": len(joined), "spearman_median_difference":
                              round(float(difference.mean()), 4) if len(difference) else None}
    if len(difference) >= 2 and np.any(difference != 0):
        result["wilcoxon_p"] = round(float(wilcoxon(difference).pvalue), 4)
    both = joined[joined["correct_base"].notna() & joined["correct_tuned"].notna()]
    gained = int((~both["correct_base"].astype(bool) & both["correct_tuned"].astype(bool)).sum())
    lost = int((both["correct_base"].astype(bool) & ~both["correct_tuned"].astype(bool)).sum())
    result.update(accuracy_gained=gained, accuracy_lost=lost,
                  mcnemar_p=round(float(binomtest(gained, gained + lost).pvalue), 4) if gained + lost else None)
    return result


def build_metrics(params: Params, tables: dict[str, Any]) -> dict[str, Any]:
    domains = evaluation_datasets(params)
    samples, seed = params.evaluate.bootstrap_samples, params.seed
    metrics: dict[str, Any] = {"method": params.pair.method or params.attribute.methods[0], "domains": domains,
                               "models": {}, "paired_vs_base": {}}
    for name, table in tables.items():
        metrics["models"][name] = {"all": summarize_model(table, samples, seed)} | {
            dataset: summarize_model(table[table["dataset"] == dataset], samples, seed)
            for dataset in domains if (table["dataset"] == dataset).any()}
    for name, table in tables.items():
        if name != "base" and "base" in tables:
            metrics["paired_vs_base"][name] = {"all": paired(tables["base"], table)} | {
                dataset: paired(tables["base"][tables["base"]["dataset"] == dataset], table[table["dataset"] == dataset])
                for dataset in domains}
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
    paired_rows = [f"<tr><td>{name}</td><td>{html.escape(d)}</td><td>{r['tasks']}</td>"
                   f"<td>{r['spearman_median_difference']}</td><td>{r.get('wilcoxon_p', '–')}</td>"
                   f"<td>+{r['accuracy_gained']} / -{r['accuracy_lost']}</td><td>{r['mcnemar_p'] or '–'}</td></tr>"
                   for name, per in metrics["paired_vs_base"].items() for d, r in per.items()]
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
<h2>Paired against the base model (same tasks)</h2>
<table><tr><th>model</th><th>dataset</th><th>tasks</th><th>median Spearman difference</th><th>Wilcoxon p</th>
<th>correct gained / lost</th><th>McNemar p</th></tr>{''.join(paired_rows)}</table>
{trust}
<h2>Figures</h2>{images}</body></html>"""


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


def run(params: Params) -> dict[str, Any]:
    import pandas as pd

    source, folder = Path(params.data_dir) / "evaluation", Path(params.data_dir) / "report"
    method = params.pair.method or params.attribute.methods[0]
    tables, trust = {}, {}
    for name in params.evaluate.models:
        path = source / name / "bank.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `python -m pipelines evaluate` first")
        bank = pd.read_parquet(path)
        tables[name] = per_decision(bank, method)
        rows = bank[bank["method"] == method]
        trust[name] = {"warnings": sample_warnings(rows[rows["kind"] == OWN], method),
                       **control_summary(rows, params.score.metrics, params.evaluate.bootstrap_samples, params.seed)}
    metrics = build_metrics(params, tables) | {"trust": trust}
    write_json(folder / "metrics.json", metrics)
    write_plot_table(folder / "alignment.csv", metrics)
    (folder / "report.html").write_text(render(metrics, figures(tables, metrics)))
    return {"report": str(folder / "report.html"), "metrics": str(folder / "metrics.json")}


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, dataset) of metrics.json's `models` section, the "all" dataset included."""
    return [{"model": model, "dataset": dataset, **stats}
            for model, per_dataset in metrics["models"].items() for dataset, stats in per_dataset.items()]


def write_plot_table(path: Path, metrics: dict[str, Any]) -> None:
    """The figures `dvc plots show` draws and `dvc plots diff` compares, one row per (model, dataset)."""
    import pandas as pd

    columns = ["model", "dataset", "accuracy", "spearman_best", "spearman_median", "spearman_worst", "cosine_median"]
    pd.DataFrame(metric_rows(metrics)).reindex(columns=columns).to_csv(path, index=False)
