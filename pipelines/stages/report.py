"""Evaluation banks -> a self-contained HTML report and a machine-readable metrics file.

    python -m pipelines report [--params params.yaml]
    # data/<model>/evaluation/{base,dpo,sft}/bank.parquet -> data/<model>/report/{report.html,metrics.json,...}

Per dataset (in-domain and shifted side by side) and model (base, DPO, SFT): accuracy with a Wilson
95% interval; per decision the best, median and worst Spearman and cosine over its explanations,
averaged, with bootstrap 95% intervals. Comparisons (DPO-base, SFT-base, DPO-SFT) are paired on the
decisions of the same tasks (pipelines/analysis/stats.py): the difference in per-decision alignment
(evaluate.alignment_metric and alignment_aggregate, the paper's median Spearman by default) with a bootstrap CI,
Wilcoxon and Holm-adjusted p over the family, its power at evaluate.min_detectable_effect (a run below
evaluate.power is labelled a smoke test), accuracy as non-inferiority; correct vs incorrect decisions by
TOST. Then the trust figures (null floor, diagnosticity) and the plots.

The page (templates/report.html.j2, docs/report.md) opens on a summary card: each comparison's verdict with its
CI and power, whether each fine-tune moved the policy, the promotion gate's decision on these metrics, and the
trust line; then the figures, token heatmaps of a few seeded decisions, and the tables.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from pipelines.analysis.controls import bootstrap_ci, control_summary
from pipelines.analysis.gate import PAPER_ALIGNMENT, alignment_column, alignment_label
from pipelines.analysis.gate import gate as promotion_rule
from pipelines.analysis.stats import (
    decisions_for_power,
    equivalence,
    holm,
    noninferiority,
    paired_difference,
    paired_power,
)
from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import Params, PromoteParams, evaluation_datasets
from pipelines.core.records import write_json
from pipelines.core.vocabulary import OWN, TEST
from pipelines.stages.score import read_scores, sample_warnings

# what it reads (each evaluated model's bank, the fine-tunes' summary) and writes: pipelines/core/artifacts.py
BANK, MODELS, EVALUATION, REPORT = (ARTIFACTS[n] for n in ("bank", "models", "evaluation", "report"))
METRICS = ("spearman", "cosine")
# the evaluation banks' columns the report reads (with the score metrics)
REPORT_COLUMNS = ["generation_id", "task_id", "dataset", "method", "kind", "correct", "n_features", "n_samples", "masks"]
# the page's template ships beside this module (package data: pyproject's tool.setuptools.package-data)
TEMPLATES = Path(__file__).parent / "templates"
FOLD_ROWS = 6  # a table longer than this starts folded: the card and the figures come first
HEATMAP_DECISIONS = 3
# what a heatmap reads of its decisions' rows: the vectors, for these few decisions only
HEATMAP_COLUMNS = ["generation_id", "method", "kind", "explanation_index", "spearman", "correct", "decision",
                   "explanation", "decision_vector", "explanation_vector", "feature_tokens"]
POSITIVE, NEGATIVE = "220,38,38", "37,99,235"  # red, blue
MAX_OPACITY = 0.85  # the strongest token stays readable under its colour


def wilson(successes: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion (statsmodels'), None without trials."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return None
    low, high = proportion_confint(successes, n, alpha=0.05, method="wilson")
    return round(float(low), 4), round(float(high), 4)


def per_decision(bank, method: str):
    """One row per decision: best / median / worst of each metric over its explanations, and spread."""
    rows = bank[(bank["method"] == method) & (bank["kind"] == OWN)]
    grouped = rows.groupby("generation_id")
    table = grouped[["dataset", "task_id", "correct"]].first()
    for metric in METRICS:
        table[f"{metric}_best"] = grouped[metric].max()
        table[f"{metric}_median"] = grouped[metric].median()
        table[f"{metric}_worst"] = grouped[metric].min()
        table[f"{metric}_mean"] = grouped[metric].mean()
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
    column = alignment_column(settings)
    alignment = paired_difference((joined[f"{column}_tuned"] - joined[f"{column}_ref"]).to_numpy(float),
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
                  "how": f"two-sided paired t-test (noncentral t) on the per-decision {alignment_label(settings)} "
                         "difference, "
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


# ---- the page: pipelines/stages/templates/report.html.j2 holds the markup; these functions give it plain values


@functools.cache
def _template() -> jinja2.Template:
    # StrictUndefined: a name the template expects and the view lacks fails the report, not a blank cell
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("report.html.j2")


def render(metrics: dict[str, Any], plots: list[tuple[str, str]], gate: dict[str, Any] | None = None,
           heatmaps: list[dict[str, Any]] | None = None, seed: int | None = None,
           alignment: str = PAPER_ALIGNMENT) -> str:
    """The self-contained HTML page: summary card, figures, token heatmaps (token_heatmaps), then the tables.
    `gate` is promotion_gate's decision on these metrics, when known; `alignment` what the comparisons judge."""
    return _template().render(
        models=list(metrics["models"]), method=metrics["method"], power=metrics["power"], alignment=alignment,
        card=summary_card(metrics, gate), plots=[{"title": t, "png": b64} for t, b64 in plots],
        heatmaps=heatmaps or [], seed=seed, fold_rows=FOLD_ROWS, model_table=model_table(metrics),
        movement=movement_table(metrics.get("movement", {})), comparisons=comparison_table(metrics, alignment),
        equivalence=equivalence_table(metrics), trust=trust_table(metrics.get("trust", {})))


def cell(value: Any, ci=None, n: int | None = None, signed: bool = False, strong: bool = False) -> dict[str, Any]:
    """One table value as the template's `num` macro shows it: the number, its [CI] and n small beside it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"value": "–", "ci": None, "n": None, "strong": strong}
    if isinstance(value, str):
        return {"value": value, "ci": None, "n": None, "strong": strong}
    form = "{:+.3f}" if signed else "{:.3f}"
    interval = f"[{form.format(ci[0])}, {form.format(ci[1])}]" if ci else None
    return {"value": form.format(value), "ci": interval, "n": n, "strong": strong}


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _text(value: Any) -> dict[str, Any]:
    return cell("–" if value is None else str(value))


def alignment_verdict(alignment: dict[str, Any]) -> tuple[str, str]:
    """(verdict, tone) from the interval alone: a point estimate inside an interval that covers 0 shows nothing."""
    ci = alignment["ci95"]
    if ci is None:
        return f"no interval ({alignment['decisions']} paired decisions)", "neutral"
    if ci[0] > 0:
        return "alignment rose", "up"
    if ci[1] < 0:
        return "alignment fell", "down"
    return "no change shown (the interval covers 0)", "neutral"


def power_label(alignment: dict[str, Any], target: float) -> str:
    power = alignment["power"]
    if alignment["smoke_test"]:
        return (f"smoke test: power {power['value']:.2f} < {target:.2f}, {power['decisions_needed']} decisions "
                f"needed, {alignment['decisions']} evaluated")
    return f"powered: {power['value']:.2f} ≥ {target:.2f} to detect {power['effect']}"


def accuracy_line(accuracy: dict[str, Any]) -> str:
    shown = "non-inferior" if accuracy["non_inferior"] else "non-inferiority not shown"
    return (f"accuracy change {_signed(accuracy['mean'])}, lower bound {_signed(accuracy['lower_bound'])} against "
            f"-{accuracy['margin']}: {shown}")


def comparison_verdict(name: str, per: dict[str, Any], domains: dict[str, str], target: float) -> dict[str, Any]:
    """One card line: the pooled verdict with its CI, power and accuracy, and a word per dataset."""
    pooled = per["all"]["alignment"]
    verdict, tone = alignment_verdict(pooled)
    datasets = [{"dataset": d, "domain": domains.get(d, d), "verdict": alignment_verdict(s["alignment"])[0],
                 "difference": cell(s["alignment"]["mean"], s["alignment"]["ci95"], signed=True),
                 "smoke": s["alignment"]["smoke_test"]} for d, s in per.items() if d != "all"]
    return {"title": name.replace("-", " vs "), "verdict": verdict, "tone": tone,
            "difference": cell(pooled["mean"], pooled["ci95"], n=pooled["decisions"], signed=True),
            "holm_p": _p(pooled.get("holm_p")), "power": power_label(pooled, target),
            "smoke": pooled["smoke_test"], "accuracy": accuracy_line(per["all"]["accuracy"]), "datasets": datasets}


def movement_line(name: str, moves: dict[str, Any]) -> dict[str, Any]:
    accuracy, p = moves.get("reward_accuracy"), moves.get("reward_accuracy_p")
    changed = moves.get("changed_explanations_changed")
    if accuracy is None and changed is None:
        detail = "no held-out reward figures or changed outputs: train_summary.json and evaluate_summary.json lack them"
    else:
        detail = (f"held-out reward accuracy {'–' if accuracy is None else f'{accuracy:.3f}'} (p {_p(p)}), "
                  f"{'–' if changed is None else f'{changed:.0%}'} of explanations changed at evaluation")
    return {"model": name, "moved": bool(moves.get("moved")), "detail": detail}


def promotion_gate(metrics: dict[str, Any], settings: PromoteParams, alignment: str = PAPER_ALIGNMENT
                   ) -> dict[str, Any]:
    """The decision `python -m pipelines promote` will take on this metrics.json, with the thresholds it used."""
    return {"candidate": settings.candidate, "min_alignment_gain": settings.min_alignment_gain,
            "accuracy_tolerance": settings.accuracy_tolerance, **asdict(promotion_rule(metrics, settings, alignment))}


def gate_line(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    """The gate's decision and why: its reasons when it refuses, the two bounds that cleared when it passes."""
    if gate is None:
        return None
    reasons = list(gate["reasons"])
    if gate["passed"]:
        reasons = [f"alignment gain {_signed(gate['alignment_gain'])}: its 95% CI lower bound "
                   f"{gate['alignment_gain_ci95'][0]:+.4f} is above promote.min_alignment_gain "
                   f"{gate['min_alignment_gain']}",
                   f"accuracy change {_signed(gate['accuracy_change'])}: non-inferior, one-sided lower bound "
                   f"{_signed(gate['accuracy_lower_bound'])} above -promote.accuracy_tolerance "
                   f"{-gate['accuracy_tolerance']}"]
    return {"candidate": gate["candidate"], "passed": gate["passed"], "reasons": reasons}


def trust_line(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Over all datasets: observed vs null floor (Spearman when scored) and the best diagnosticity AUROC."""
    floors = figures.get("null_floor", {}).get("all")
    if not floors:
        return {"model": name, "controls": False}
    metric = "spearman" if "spearman" in floors else next(iter(floors))
    floor = floors[metric]
    aurocs = {m: d["auroc"] for m, d in figures["diagnosticity"]["all"].items() if d["auroc"]["mean"] is not None}
    best = max(aurocs, key=lambda m: aurocs[m]["mean"]) if aurocs else None

    def estimate(e: dict[str, Any], signed: bool = True) -> dict[str, Any]:
        return cell(e.get("mean"), e.get("ci95"), n=e.get("decisions"), signed=signed)

    return {"model": name, "controls": True, "metric": metric, "observed": estimate(floor["observed"]),
            "floor": estimate(floor["floor"]), "excess": estimate(floor["observed_minus_floor"]),
            "auroc": estimate(aurocs[best], signed=False) if best else None, "auroc_metric": best}


def summary_card(metrics: dict[str, Any], gate: dict[str, Any] | None) -> dict[str, Any]:
    target = metrics["power"]["target"]
    return {"smoke": metrics.get("smoke_test", True),
            "comparisons": [comparison_verdict(name, per, metrics["domains"], target)
                            for name, per in metrics["comparisons"].items()],
            "movement": [movement_line(name, m) for name, m in metrics.get("movement", {}).items()],
            "gate": gate_line(gate),
            "trust": [trust_line(name, figures) for name, figures in metrics.get("trust", {}).items()]}


MODEL_KEYS = ["accuracy", "spearman_best", "spearman_median", "spearman_worst", "cosine_best", "cosine_median",
              "cosine_worst", "spearman_median_correct", "spearman_median_incorrect", "spearman_within_decision_std",
              "cosine_within_decision_std"]


def model_table(metrics: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for dataset, domain in [("all", "all"), *metrics["domains"].items()]:
        for name, per in metrics["models"].items():
            stats = per.get(dataset)
            if stats:
                rows.append([_text(dataset), _text(domain), _text(name), _text(stats["decisions"])]
                            + [cell(stats.get(k), stats.get(f"{k}_ci95")) for k in MODEL_KEYS])
    header = [k.replace("_", " ") for k in ["dataset", "domain", "model", "decisions", *MODEL_KEYS]]
    return {"header": header, "rows": rows}


def comparison_table(metrics: dict[str, Any], alignment: str = PAPER_ALIGNMENT) -> dict[str, Any]:
    rows = []
    for name, per in metrics["comparisons"].items():
        for dataset, r in per.items():
            a, acc = r["alignment"], r["accuracy"]
            decisions = f"{a['decisions']}" + (" (smoke test)" if a["smoke_test"] else "")
            rows.append([_text(name), _text(dataset), _text(decisions), cell(a["mean"], a["ci95"], signed=True),
                         _text(_p(a["wilcoxon_p"])), _text(_p(a.get("holm_p"))), cell(a["power"]["value"]),
                         _text(a["power"]["decisions_needed"]), _text(_signed(acc["mean"])),
                         _text(_signed(acc["lower_bound"])), _text("yes" if acc["non_inferior"] else "not shown"),
                         _text(f"+{acc['gained']} / -{acc['lost']}"), _text(_p(acc["mcnemar_p"]))])
    header = ["comparison", "dataset", "decisions", f"{alignment} difference", "Wilcoxon p", "Holm p", "power",
              "decisions for power", "accuracy change", "lower bound", "non-inferior", "gained / lost", "McNemar p"]
    return {"header": header, "rows": rows}


def equivalence_table(metrics: dict[str, Any]) -> dict[str, Any]:
    rows = [[_text(name), _text(d), _text(f"{e['n_a']} / {e['n_b']}"), cell(e["difference"], e["ci95"], signed=True),
             _text(f"±{e['margin']}"), _text(_p(e["tost_p"])), _text("yes" if e["equivalent"] else "not shown")]
            for name, per in metrics["models"].items() for d, stats in per.items()
            for e in [stats["correct_vs_incorrect_spearman"]]]
    header = ["model", "dataset", "correct / incorrect", "difference", "margin", "TOST p", "equivalent"]
    return {"header": header, "rows": rows}


def trust_table(trust: dict[str, Any]) -> dict[str, Any]:
    """Observed alignment vs its null floor, and the diagnosticity AUROC, per model and dataset."""
    def estimate(e: dict[str, Any] | None) -> dict[str, Any]:
        return cell(e.get("mean"), e.get("ci95"), n=e.get("decisions"), signed=True) if e else cell(None)

    rows, warnings = [], []
    for name, figures in trust.items():
        warnings += [f"{name}: {w}" for w in figures.get("warnings", [])]
        for dataset, by_metric in figures.get("null_floor", {}).items():
            diagnostic = figures["diagnosticity"][dataset]
            for metric, floor in by_metric.items():
                rows.append([_text(name), _text(dataset), _text(metric), estimate(floor["observed"]),
                             estimate(floor["floor"]), estimate(floor["observed_minus_floor"]),
                             estimate(diagnostic[metric]["auroc"])])
    header = ["model", "dataset", "metric", "observed", "null floor", "observed - floor", "diagnosticity AUROC"]
    return {"header": header, "rows": rows, "warnings": warnings}


def movement_table(moves: dict[str, Any]) -> dict[str, Any]:
    def value(v) -> str:
        return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    keys = ["pairs", "reward_accuracy", "reward_accuracy_p", "reward_margin", "logp_shift_chosen",
            "logp_shift_rejected", "kl_per_token", "changed_decisions_changed", "changed_explanations_changed"]
    rows = [[_text(name), *(_text(value(m.get(k))) for k in keys),
             cell("yes") if m["moved"] else cell("no", strong=True)] for name, m in moves.items()]
    header = ["model", *(k.replace("changed_", "").replace("_", " ") for k in keys), "moved"]
    return {"header": header, "rows": rows, "stale": [name for name, m in moves.items() if not m["moved"]]}


# ---- token heatmaps: a few decisions' prompt tokens coloured by the decision's and its explanations' attributions


def scored_decisions(bank, method: str) -> list[str]:
    """The decisions of `method` with at least one own explanation whose Spearman is defined (sorted ids)."""
    own = bank[(bank["method"] == method) & (bank["kind"] == OWN) & bank["spearman"].notna()]
    return sorted(own["generation_id"].unique().tolist())


def pick_decisions(candidates: dict[str, list[str]], seed: int, count: int = HEATMAP_DECISIONS) -> list[tuple[str, str]]:
    """(model, generation id) of `count` decisions drawn without replacement from all models' candidates,
    seeded so a rerun shows the same decisions; in model order, then id order."""
    pooled = [(name, gid) for name, ids in candidates.items() for gid in ids]
    if not pooled:
        return []
    chosen = np.random.default_rng(seed).choice(len(pooled), size=min(count, len(pooled)), replace=False)
    return [pooled[i] for i in sorted(chosen)]


def decision_rows(path: Path, method: str, ids: list[str]):
    """The own rows of these decisions, vectors included. The filter is pushed into the parquet scan (row-group
    statistics skip the rest), so a bank of 100K decisions is never loaded whole."""
    import pyarrow.parquet as pq

    names = pq.ParquetFile(path).schema_arrow.names
    table = pq.read_table(path, columns=[c for c in HEATMAP_COLUMNS if c in names], filters=[
        ("generation_id", "in", ids), ("method", "==", method), ("kind", "==", OWN)])
    return table.to_pandas()


def display_token(token: str) -> str:
    # byte-level BPE (SmolLM2, GPT-2) marks a leading space as Ġ and a newline as Ċ, SentencePiece a space as ▁;
    # the newline stays visible (↵, it has an attribution too) and breaks the line as in the prompt
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "↵\n")


def shade(tokens: list[str], values) -> list[dict[str, str]]:
    """Each token with a signed background: red for positive, blue for negative, opacity |value| / max |value|
    of this vector (vectors differ in scale by orders of magnitude between methods and targets)."""
    values = np.asarray(values, float)
    top = float(np.nanmax(np.abs(values))) if values.size and np.isfinite(values).any() else 0.0
    out = []
    for token, value in zip(tokens, values):
        if value and np.isfinite(value):
            colour = POSITIVE if value > 0 else NEGATIVE
            style = f"background:rgba({colour},{MAX_OPACITY * abs(value) / top:.3f})"
        else:
            style = "background:transparent"
        out.append({"text": display_token(token), "style": style, "value": f"{value:+.4g}"})
    return out


def heatmap(model: str, rows) -> dict[str, Any]:
    """One decision: its attribution and those of its most and least aligned own explanation, side by side."""
    import pandas as pd

    ranked = rows[rows["spearman"].notna()].sort_values(["spearman", "explanation_index"], ascending=[False, True])
    chosen = [("most aligned explanation", ranked.iloc[0])]
    if len(ranked) > 1:
        chosen.append(("least aligned explanation", ranked.iloc[-1]))
    panels, shown = [], []
    for label, row in chosen:
        tokens, decision = list(row["feature_tokens"]), list(row["decision_vector"])
        # string-aligned features give each explanation its own tokens: then its decision vector is shown too
        if (tokens, decision) not in shown:
            shown.append((tokens, decision))
            panels.append({"role": "decision", "label": "decision", "score": None, "text": None,
                           "tokens": shade(tokens, decision)})
        panels.append({"role": "explanation", "label": f"{label} #{int(row['explanation_index'])}",
                       "score": f"Spearman {row['spearman']:+.3f}", "text": row["explanation"],
                       "tokens": shade(tokens, row["explanation_vector"])})
    first = ranked.iloc[0]
    correct = first.get("correct")  # None (or NaN, NA) where the answer was not graded
    return {"model": model, "generation_id": first["generation_id"], "decision": first["decision"],
            "correct": None if pd.isna(correct) else bool(correct), "panels": panels}


def token_heatmaps(source: Path, method: str, picks: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The heatmaps of the picked decisions, each model's bank scanned once for its picks."""
    out = []
    for model in dict.fromkeys(name for name, _ in picks):
        ids = [gid for name, gid in picks if name == model]
        rows = decision_rows(source / model / BANK.path, method, ids)
        out += [heatmap(model, rows[rows["generation_id"] == gid]) for gid in ids]
    return out


def run(params: Params, folder: Path) -> dict[str, Any]:
    source, model_folder, folder = folder / EVALUATION.path, folder, folder / REPORT.path
    method = params.pair.method or params.attribute.methods[0]
    tables, trust, candidates = {}, {}, {}
    for name in params.evaluate.models:
        path = source / name / BANK.path
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `python -m pipelines {EVALUATION.stage}` first")
        bank = read_scores(path, columns=REPORT_COLUMNS + [*METRICS, *params.score.metrics])  # never the vectors
        tables[name] = per_decision(bank, method)
        candidates[name] = scored_decisions(bank, method)
        rows = bank[bank["method"] == method]
        trust[name] = {"warnings": sample_warnings(rows[rows["kind"] == OWN], method),
                       **control_summary(rows, params.score.metrics, params.evaluate.bootstrap_samples, params.seed)}
    metrics = build_metrics(params, tables) | {"trust": trust, "movement": movement(params, model_folder)}
    evaluated = model_folder / EVALUATION.summary
    split = json.loads(evaluated.read_text()).get("split", TEST) if evaluated.exists() else TEST
    if split != TEST:  # named only when it is not the test split, so a test-split report keeps its bytes
        metrics["split"] = split
    write_json(model_folder / REPORT.summary, metrics)
    write_plot_table(folder / "alignment.csv", metrics)
    # the gate's decision is shown before promote takes it: the same rule on the same metrics.json
    label = alignment_label(params.evaluate)
    gate = promotion_gate(metrics, params.promote, label)
    heatmaps = token_heatmaps(source, method, pick_decisions(candidates, params.seed))
    (folder / "report.html").write_text(render(metrics, figures(tables, metrics), gate, heatmaps, params.seed,
                                               label))
    return {"report": str(folder / "report.html"), "metrics": str(model_folder / REPORT.summary)}


def movement(params: Params, data: Path) -> dict[str, Any]:
    """Per fine-tune: did the policy move? Held-out reward accuracy (binomial test), margin, log-probability
    shifts and KL from training; the share of outputs that changed at evaluation. `moved` needs both a
    reward accuracy above chance at evaluate.alpha and at least one changed explanation."""
    trained = json.loads((data / MODELS.summary).read_text()) if (data / MODELS.summary).exists() else {}
    evaluated = data / EVALUATION.summary
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


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, dataset) of metrics.json's `models` section, the "all" dataset included."""
    return [{"model": model, "dataset": dataset, **stats}
            for model, per_dataset in metrics["models"].items() for dataset, stats in per_dataset.items()]


def write_plot_table(path: Path, metrics: dict[str, Any]) -> None:
    """The figures `dvc plots show` draws and `dvc plots diff` compares, one row per (model, dataset)."""
    import pandas as pd

    columns = ["model", "dataset", "accuracy", "spearman_best", "spearman_median", "spearman_worst", "cosine_median"]
    pd.DataFrame(metric_rows(metrics)).reindex(columns=columns).to_csv(path, index=False)
