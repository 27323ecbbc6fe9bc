"""The promotion rule on a report's metrics.json: evidence, never point estimates (pipelines/stages/promote.py
applies it and registers a passing candidate; pipelines/stages/report.py shows its decision on the page it writes).

Apart from the stage so the report can quote the decision without the registry's imports: the lower bound of the
bootstrap 95% CI of the candidate's paired gain over the base model in per-decision alignment (all evaluated
tasks; evaluate.alignment_metric and alignment_aggregate, the paper's median Spearman by default) exceeds
`min_alignment_gain`, and its accuracy is non-inferior (the one-sided lower bound of the paired change is above
`-accuracy_tolerance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.core.config import EvaluateParams, PromoteParams
from pipelines.core.vocabulary import TEST


@dataclass(frozen=True)
class Gate:
    passed: bool
    alignment_gain: float | None
    alignment_gain_ci95: list[float] | None
    accuracy_change: float | None
    accuracy_lower_bound: float | None
    reasons: list[str]


METRIC_NAMES = {"spearman": "Spearman", "cosine": "cosine"}


def alignment_label(settings: EvaluateParams) -> str:
    """What the comparisons and the gate judge, in words: "median Spearman" (the paper's), "mean cosine", ..."""
    return f"{settings.alignment_aggregate} {METRIC_NAMES[settings.alignment_metric]}"


def alignment_column(settings: EvaluateParams) -> str:
    """Its column in the report's per-decision table (pipelines/stages/report.py per_decision)."""
    return f"{settings.alignment_metric}_{settings.alignment_aggregate}"


PAPER_ALIGNMENT = alignment_label(EvaluateParams())  # "median Spearman": the default of every caller


def gate(metrics: dict[str, Any], params: PromoteParams, alignment: str = PAPER_ALIGNMENT) -> Gate:
    """The promotion rule on a report's metrics.json (its `comparisons`, pipelines/stages/report.py), whose
    alignment is `alignment` (alignment_label of the evaluate section that made it)."""
    comparison = metrics.get("comparisons", {}).get(f"{params.candidate}-base", {}).get("all")
    if comparison is None:
        return Gate(False, None, None, None, None, [
            f"the report has no '{params.candidate}-base' comparison: add 'base' and '{params.candidate}' to "
            "evaluate.models"])
    gain, accuracy = comparison["alignment"], comparison["accuracy"]
    ci = gain["ci95"]
    reasons = []
    if metrics.get("split", TEST) != TEST:  # evaluate.split: eval chooses settings; only the test split decides
        reasons.append(f"the report evaluates the {metrics['split']} split, on which training settings are chosen: "
                       "evaluate the test split (evaluate.split: test) to promote")
    if ci is None:
        reasons.append(f"alignment gain has no confidence interval ({gain['decisions']} paired decisions)")
    elif not ci[0] > params.min_alignment_gain:
        reasons.append(f"alignment gain {gain['mean']:+.4f} ({alignment}, {params.candidate} - base): its "
                       f"95% CI lower bound {ci[0]:+.4f} is not above promote.min_alignment_gain "
                       f"{params.min_alignment_gain}")
    if not accuracy["non_inferior"]:
        bound = accuracy["lower_bound"]
        reasons.append(f"accuracy change {accuracy['mean']} ({params.candidate} - base): non-inferiority not shown, "
                       f"one-sided lower bound {bound} is not above -promote.accuracy_tolerance "
                       f"{-params.accuracy_tolerance}")
    return Gate(not reasons, gain["mean"], list(ci) if ci else None, accuracy["mean"], accuracy["lower_bound"],
                reasons)
