"""Asset checks: each stage's own Great Expectations validation (pipelines/runner/checked.py, run inside the
stage by every entry point) reported as a blocking check, and the promotion decision the promote stage
took. A failing quality check stops every asset downstream of it."""

from __future__ import annotations

from typing import Any

import dagster as dg

from pipelines.core.artifacts import ARTIFACTS
from pipelines.runner.quality import QualityReport

QUALITY = "great_expectations"
GATE = "promotion_gate"
GATE_SPEC = dg.AssetCheckSpec(
    GATE, asset="promotion", blocking=False,
    description="Did the evaluation earn the candidate the champion alias (params `promote`: the CI lower bound of "
    "its paired alignment gain above min_alignment_gain, accuracy non-inferior)? The promote stage decides and "
    "moves the alias only when it passed; a refusal is a result, reported here as a warning.")


def quality_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(QUALITY, asset=asset, blocking=True,
                             description=f"Great Expectations suite '{ARTIFACTS[asset].suite}' "
                             "(pipelines/runner/quality.py), run by the stage on what it wrote.")


def quality(asset: str, reports: list[tuple[str, QualityReport]]) -> dg.AssetCheckResult:
    """The stage's validation of its output as the asset's check (no second run of the suite)."""
    failures = [(part, f) for part, report in reports for f in report.failures]
    metadata: dict[str, Any] = {"suite": ARTIFACTS[asset].suite, "rows": sum(r.rows for _, r in reports),
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


def promotion_gate(summary: dict[str, Any], promote) -> dg.AssetCheckResult:
    low = summary.get("alignment_gain_ci95")
    return dg.AssetCheckResult(
        asset_key="promotion", check_name=GATE, passed=summary["passed"], severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(summary["reasons"]) or "promotion earned",
        metadata={"candidate": summary["candidate"], "promoted": summary["promoted"],
                  "alignment_gain": summary["alignment_gain"], "alignment_gain_ci95_low": low[0] if low else None,
                  "accuracy_change": summary["accuracy_change"],
                  "accuracy_lower_bound": summary["accuracy_lower_bound"],
                  "min_alignment_gain": promote.min_alignment_gain, "accuracy_tolerance": promote.accuracy_tolerance})
