"""Great Expectations suites, one per artifact: the data contracts behind Dagster's blocking checks.

    from pipelines.core.quality import validate
    report = validate("tasks", rows, dataset=["arc_easy", "commonsense_qa"])
    assert report.success, report.summary()

`rows` are the records a stage wrote (JSON Lines records; the bank's `pd.read_parquet(...).to_dict("records")`;
TRL's `log_history` for training_log; `report.metric_rows(metrics)` for eval_metrics). `frame()` turns them into
the table a suite validates and adds a boolean column for each rule GX cannot state itself (a value in the
row's own list, two fields that must differ, a vector as long as its features); the suite expects it True,
so a failure names the rule. Failures name the offending rows by the artifact's id.

NaN is "undefined" in the bank and the metrics file and passes: GX counts NaN as missing, and its
column-map expectations skip missing values. GX is imported on first use (seconds) and runs in one
ephemeral, offline context per process: no analytics, no progress bars.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from pipelines.analysis.controls import COUNTERFACTUAL, MISMATCHED
from pipelines.attribution.catalog import ATTRIBUTION_METHODS
from pipelines.core.config import DATASETS, METRICS
from pipelines.core.provenance import mismatched_settings
from pipelines.core.records import Attribution, Generation, Task
from pipelines.stages.pair import PAIR_SPLITS

if TYPE_CHECKING:
    import pandas as pd

ARTIFACTS = ("tasks", "generations", "attributions", "bank", "pairs", "training_log", "eval_metrics")
SPLITS = ("train", "eval", "test")
PARSE_STATUSES = ("letter", "text", "unparseable")
EXPECTED = ("dataset", "n_explanations", "min_margin", "keep_ties", "min_rows", "settings")
SETTINGS_RULE = "settings_match_params"
CONTROL_KINDS = (COUNTERFACTUAL, MISMATCHED)
ROW_ID = "row_id"  # the column GX reports offending rows by
MAX_ROWS = 20


@dataclass(frozen=True)
class Failure:
    expectation: str  # e.g. "expect_column_values_to_be_between"
    column: str | None
    unexpected_count: int
    unexpected_rows: list[str]  # ids of the offending rows, at most MAX_ROWS
    message: str


@dataclass(frozen=True)
class QualityReport:
    artifact: str
    rows: int
    evaluated: int  # expectations evaluated
    failures: list[Failure]

    @property
    def success(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        head = f"{self.artifact}: {self.rows} rows, {self.evaluated} expectations, {len(self.failures)} failed"
        return head + (": " + "; ".join(f.message for f in self.failures) if self.failures else "")


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _labels(task: dict[str, Any]) -> list[str]:
    return [choice["label"] for choice in task["choices"]]


def _finite(values: Any) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def _contents(messages: list[dict[str, Any]]) -> list[str]:
    return [message["content"] for message in messages]


def _answer_in_choices(row: dict[str, Any]) -> bool:
    if row["parse_status"] == "unparseable":
        return row["answer_label"] is None
    return row["answer_label"] in _labels(row["task"])


def _correct_matches_gold(row: dict[str, Any]) -> bool:
    gold = row["task"]["answer_label"]
    return row["correct"] is None if gold is None else row["correct"] == (row["answer_label"] == gold)


def _attribution_lengths(row: dict[str, Any]) -> bool:
    tokens = row["explanation_feature_tokens"]
    return (len(row["decision"]) == len(row["feature_tokens"]) and len(row["explanations"]) == len(tokens)
            and all(len(v) == len(t) for v, t in zip(row["explanations"], tokens)))


def _controls_well_formed(row: dict[str, Any]) -> bool:
    return all(c["kind"] in CONTROL_KINDS and len(c["vector"]) == len(row["feature_tokens"]) and _finite(c["vector"])
               and isinstance(c["text"], str) for c in row.get("controls") or [])


def _counterfactual_well_formed(row: dict[str, Any]) -> bool:
    made = row.get("counterfactual")
    if made is None or made.get("label") is None:  # not asked, or no other option (kept and counted)
        return True
    return (made["label"] in _labels(row["task"]) and made["label"] != row["answer_label"]
            and isinstance(made["explanation"], str) and isinstance(made["explanation_ids"], list))


def _intervals_ordered(row: dict[str, Any]) -> bool:
    return all(value[0] <= value[1] for key, value in row.items() if key.endswith("_ci95") and value is not None)


# the id that names a row in a failure, per artifact
ROW_IDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "tasks": lambda r: r.get("id"),
    "generations": lambda r: r.get("id"),
    "attributions": lambda r: f"{r.get('generation_id')}/{r.get('method')}",
    "bank": lambda r: r.get("id"),
    "pairs": lambda r: r.get("id"),
    "training_log": lambda r: r.get("step"),
    "eval_metrics": lambda r: f"{r.get('model')}/{r.get('dataset')}",
}

# derived columns: rules every row must satisfy (True), and COUNTS, checked against `expected`
COUNTS = ("n_explanations",)
DERIVED: dict[str, dict[str, Callable[[dict[str, Any]], Any]]] = {
    "tasks": {
        "question_non_empty": lambda r: _text(r["question"]),
        "at_least_two_choices": lambda r: len(r["choices"]) >= 2,
        "answer_in_choices": lambda r: r["answer_label"] is None or r["answer_label"] in _labels(r),
    },
    "generations": {
        # an empty explanation is a real outcome (kept, NaN metrics: README); a non-string is corruption
        "explanations_are_text": lambda r: bool(r["explanations"])
        and all(isinstance(e, str) for e in r["explanations"]),
        "answer_in_choices": _answer_in_choices,
        "correct_matches_gold": _correct_matches_gold,
        "ids_and_seeds_match_explanations": lambda r: len(r["explanation_ids"]) == len(r["explanations"])
        == len(r["seeds"]) - 1,
        "n_explanations": lambda r: len(r["explanations"]),
        "counterfactual_is_another_option": _counterfactual_well_formed,
    },
    "attributions": {
        "vector_length_matches_features": _attribution_lengths,
        "all_finite": lambda r: _finite(r["decision"]) and all(map(_finite, r["explanations"])),
        "controls_well_formed": _controls_well_formed,
    },
    "bank": {
        "vector_length_matches_features": lambda r: len(r["decision_vector"]) == len(r["explanation_vector"])
        == r["n_features"],
        "all_finite": lambda r: _finite(r["decision_vector"]) and _finite(r["explanation_vector"]),
    },
    "pairs": {
        "texts_non_empty": lambda r: all(bool(m) and all(map(_text, _contents(m)))
                                         for m in (r["prompt"], r["chosen"], r["rejected"])),
        # pair.choose compares stripped texts
        "chosen_differs_from_rejected": lambda r: "".join(_contents(r["chosen"])).strip()
        != "".join(_contents(r["rejected"])).strip(),
        "margin_is_score_difference": lambda r: math.isclose(r["margin"], r["chosen_score"] - r["rejected_score"],
                                                             abs_tol=1e-9),
    },
    "training_log": {
        "all_finite": lambda r: _finite(v for v in r.values() if isinstance(v, float)),
    },
    "eval_metrics": {
        "intervals_ordered": _intervals_ordered,
    },
}


def _judge(rule: Callable[[dict[str, Any]], Any], row: dict[str, Any]) -> Any:
    try:
        return rule(row)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return False  # a row too malformed to judge breaks the rule; the column checks say which field


def frame(artifact: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table `artifact`'s suite validates: the rows, their id (ROW_ID) and the derived columns."""
    import pandas as pd

    if artifact not in ARTIFACTS:
        raise ValueError(f"unknown artifact {artifact!r}; choose from {list(ARTIFACTS)}")
    if artifact == "training_log":
        # TRL logs evaluations and the closing summary as separate dicts under the same step
        rows = [row for row in rows if "loss" in row]
    table = pd.DataFrame(rows)
    table[ROW_ID] = [str(ROW_IDS[artifact](row)) for row in rows]
    for name, rule in DERIVED[artifact].items():
        table[name] = [_judge(rule, row) for row in rows]
    return table


def _expectations(artifact: str, table: pd.DataFrame, expected: dict[str, Any]) -> list:
    import great_expectations.expectations as gxe

    def exist(*columns: str) -> list:
        return [gxe.ExpectColumnToExist(column=c) for c in columns]

    def not_null(*columns: str) -> list:
        return [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]

    def among(column: str, values: Any) -> Any:
        return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(values))

    def bounded(column: str, low: float | None, high: float | None = None) -> Any:
        return gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high)

    def rules(skip: tuple[str, ...] = ()) -> list:
        names = [*DERIVED[artifact], *([SETTINGS_RULE] if SETTINGS_RULE in table else [])]
        return [among(name, [True]) for name in names if name not in (*skip, *COUNTS)]

    common = [gxe.ExpectTableRowCountToBeBetween(min_value=expected.get("min_rows", 1)),
              gxe.ExpectColumnValuesToBeUnique(column=ROW_ID)]
    if artifact == "tasks":
        dataset = expected.get("dataset", DATASETS)
        return [*common, *exist(*(f.name for f in fields(Task))), *not_null("id", "dataset", "split"),
                among("split", SPLITS), among("dataset", [dataset] if isinstance(dataset, str) else dataset),
                *rules()]
    if artifact == "generations":
        counts = expected.get("n_explanations")
        return [*common, *exist(*(f.name for f in fields(Generation))), *not_null("id"),
                among("parse_status", PARSE_STATUSES), among("correct", [True, False]), *rules(),
                *([bounded("n_explanations", counts, counts)] if counts is not None else [])]
    if artifact == "attributions":
        return [*common, *exist(*(f.name for f in fields(Attribution))), *not_null("generation_id"),
                among("method", ATTRIBUTION_METHODS), *rules()]
    if artifact == "bank":
        scores = [bounded(m, 0 if m == "top_k_overlap" else -1, 1) for m in METRICS if m in table]
        return [*common, *exist("id", "generation_id", "task_id", "method", "kind", "explanation_index", "n_features",
                                "decision_vector", "explanation_vector"),
                *not_null("generation_id", "task_id"), among("method", ATTRIBUTION_METHODS),
                among("split", SPLITS), among("correct", [True, False]), bounded("explanation_index", 0),
                among("kind", CONTROL_KINDS + ("own",)), *scores,
                *rules()]
    if artifact == "pairs":
        # the released code's keep_ties keeps equal scores and identical texts
        keep_ties = expected.get("keep_ties", False)
        return [*common, *exist("id", "task_id", "split", "prompt", "chosen", "rejected", "margin", "method",
                                "metric"),
                *not_null("id", "task_id", "margin"), among("split", PAIR_SPLITS),
                among("method", ATTRIBUTION_METHODS), among("metric", METRICS),
                bounded("margin", 0 if keep_ties else expected.get("min_margin", 0)),
                *rules(skip=("chosen_differs_from_rejected",) if keep_ties else ())]
    if artifact == "training_log":
        fractions = [bounded(c, 0, 1) for c in ("rewards/accuracies", "mean_token_accuracy") if c in table]
        return [*common, *exist("step", "loss"), *not_null("step", "loss"),
                gxe.ExpectColumnValuesToBeIncreasing(column="step", strictly=True), *fractions, *rules()]
    # eval_metrics: per-decision Spearman / cosine summaries; a std of values in [-1, 1] lies in [0, 1]
    scores = [bounded(c, 0 if c.endswith("_std") else -1, 1) for c in table
              if c.startswith(("spearman_", "cosine_")) and not c.endswith("_ci95")]
    return [*common, *exist("model", "dataset", "decisions", "accuracy"), *not_null("model", "dataset"),
            bounded("decisions", 1), bounded("accuracy", 0, 1), *scores, *rules()]


@functools.cache
def _batch_definition() -> Any:
    """One ephemeral GX context per process (creating one is slow); every artifact's frame goes through it."""
    import logging

    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # read when a context starts; nothing may call home
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # INFO chatter on every context
    context = gx.get_context(mode="ephemeral")
    context.config.analytics_enabled = False
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return (context.data_sources.add_pandas("pscb").add_dataframe_asset("artifact")
            .add_batch_definition_whole_dataframe("rows"))


def _failure(result: Any) -> Failure:
    config, info = result.expectation_config, result.result or {}
    column = config.kwargs.get("column")
    rows = [str(index[ROW_ID]) for index in info.get("partial_unexpected_index_list") or []][:MAX_ROWS]
    count = int(info.get("unexpected_count") or 0)
    # a metric that raised (missing column, wrong type) reports under its metric id
    errors = [v.get("exception_message") for v in (result.exception_info or {}).values()
              if isinstance(v, dict) and v.get("raised_exception")]
    if errors:
        detail = f"error: {str(errors[0]).splitlines()[0]}"
    elif rows:
        detail = f"{count} unexpected, rows {', '.join(rows)}" + (" ..." if count > len(rows) else "")
    elif "observed_value" in info:
        detail = f"observed {info['observed_value']!r}"
    else:
        detail = "failed"
    where = f" on {column}" if column else ""
    return Failure(expectation=config.type, column=column, unexpected_count=count, unexpected_rows=rows,
                   message=f"{config.type}{where}: {detail}")


def _settings_match(artifact: str, rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[bool]:
    """Whether each record's own `settings` hold this run's record-determining values (a file mixed by hand
    or by an older version fails): for attributions `settings` is per method, and a method this run does
    not attribute does not belong in its file."""
    def expected(row: dict[str, Any]) -> dict[str, Any] | None:
        return settings.get(row.get("method")) if artifact == "attributions" else settings

    def matches(row: dict[str, Any]) -> bool:
        wanted = expected(row)
        return wanted is not None and not list(mismatched_settings([row], lambda _: wanted))

    return [_judge(matches, row) for row in rows]


def validate(artifact: str, rows: list[dict[str, Any]], **expected: Any) -> QualityReport:
    """Run `artifact`'s suite on `rows`. expected: dataset (a name or several; tasks), n_explanations
    (generations), min_margin and keep_ties (pairs, as in params.pair), min_rows (default 1), settings (the
    record-determining values every record's `settings` must hold: generations; per method: attributions)."""
    unknown = sorted(set(expected) - set(EXPECTED))
    if unknown:
        raise TypeError(f"unknown expected value(s) {unknown}; choose from {list(EXPECTED)}")
    table = frame(artifact, rows)
    if "settings" in expected:
        table[SETTINGS_RULE] = _settings_match(artifact, rows, expected["settings"])
    definition = _batch_definition()  # first: it configures GX before anything else imports it
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=artifact, expectations=_expectations(artifact, table, expected))
    batch = definition.get_batch(batch_parameters={"dataframe": table})
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": MAX_ROWS,
                                                  "unexpected_index_column_names": [ROW_ID]})
    return QualityReport(artifact=artifact, rows=len(table), evaluated=len(result.results),
                         failures=[_failure(r) for r in result.results if not r.success])
