"""Blocking asset checks: a Great Expectations suite per artifact (pipelines/quality.py), and the gate
that lets a fine-tune become the champion. A failing check stops every asset downstream of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from pipelines.config import Params
from pipelines.records import read_records

# asset -> the suite of pipelines/quality.py that validates it
SUITES = {"raw_tasks": "tasks", "generations": "generations", "attributions": "attributions", "bank": "bank",
          "preference_pairs": "pairs", "fine_tuned_models": "training_log", "evaluation": "bank",
          "eval_report": "eval_metrics"}
QUALITY = "great_expectations"
GATE_SPEC = dg.AssetCheckSpec("promotion_gate", asset="eval_report", blocking=True,
                              description="The fine-tune's alignment beats the base model's and its accuracy is "
                              "within tolerance (params `promote`); champion_model runs only when this passes.")


def quality_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(QUALITY, asset=asset, blocking=True,
                             description=f"Great Expectations suite '{SUITES[asset]}' (pipelines/quality.py).")


def parts_to_check(asset: str, params: Params, folder: Path) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(part, rows, expected) for each table an asset wrote: one for most, one per fine-tune or model."""
    import pandas as pd

    from pipelines.report import metric_rows

    if asset in ("raw_tasks", "generations", "attributions"):
        expected = {"raw_tasks": {"dataset": folder.name}, "attributions": {},
                    "generations": {"n_explanations": params.generate.n_explanations}}[asset]
        return [(folder.name, list(read_records(folder / f"{asset.removeprefix('raw_')}.jsonl")), expected)]
    if asset == "bank":
        return [(folder.name, pd.read_parquet(folder / "bank.parquet").to_dict("records"), {})]
    if asset == "preference_pairs":
        rows = [r for f in sorted((folder / "pairs").glob("*.jsonl")) for r in read_records(f)]
        return [("pairs", rows, {"min_margin": params.pair.min_margin, "keep_ties": params.pair.keep_ties})]
    if asset == "fine_tuned_models":
        summary = json.loads((folder / "train_summary.json").read_text())
        return [(a, summary[a]["log_history"], {}) for a in params.train.algorithms]
    if asset == "evaluation":
        return [(name, pd.read_parquet(folder / "evaluation" / name / "bank.parquet").to_dict("records"), {})
                for name in params.evaluate.models]
    return [("report", metric_rows(json.loads((folder / "report" / "metrics.json").read_text())), {})]


def quality(asset: str, params: Params, folder: Path) -> dg.AssetCheckResult:
    from pipelines.quality import validate

    reports = [(part, validate(SUITES[asset], rows, **expected))
               for part, rows, expected in parts_to_check(asset, params, folder)]
    failures = [(part, f) for part, report in reports for f in report.failures]
    metadata: dict[str, Any] = {"suite": SUITES[asset], "rows": sum(r.rows for _, r in reports),
                                "expectations": sum(r.evaluated for _, r in reports),
                                "failed_expectations": len(failures)}
    if failures:
        metadata["failures"] = dg.MetadataValue.md(
            "| part | expectation | column | rows failing | first failing rows |\n|---|---|---|---|---|\n" + "\n".join(
                f"| {part} | {f.expectation} | {f.column} | {f.unexpected_count} | {', '.join(f.unexpected_rows)} |"
                for part, f in failures))
    return dg.AssetCheckResult(
        asset_key=asset, check_name=QUALITY, passed=not failures, metadata=metadata,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{part}: {report.summary()}" for part, report in reports if not report.success) or None)


def promotion_gate(params: Params, folder: Path) -> dg.AssetCheckResult:
    from pipelines.promote import gate

    decision = gate(json.loads((folder / "report" / "metrics.json").read_text()), params.promote)
    return dg.AssetCheckResult(
        asset_key="eval_report", check_name="promotion_gate", passed=decision.passed,
        severity=dg.AssetCheckSeverity.ERROR, description="; ".join(decision.reasons) or "promotion earned",
        metadata={"candidate": params.promote.candidate, "alignment_gain": decision.alignment_gain,
                  "alignment_gain_ci95_low": decision.alignment_gain_ci95[0] if decision.alignment_gain_ci95 else None,
                  "accuracy_change": decision.accuracy_change, "accuracy_lower_bound": decision.accuracy_lower_bound,
                  "min_alignment_gain": params.promote.min_alignment_gain,
                  "accuracy_tolerance": params.promote.accuracy_tolerance})
