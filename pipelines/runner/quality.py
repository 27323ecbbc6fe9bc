"""Great Expectations suites, one per artifact: the data contracts behind Dagster's blocking checks.

    from pipelines.runner.quality import validate
    report = validate("tasks", rows, dataset=["arc_easy", "commonsense_qa"])
    assert report.success, report.summary()

`rows` are the records a stage wrote (JSON Lines records; the bank's `pd.read_parquet(...).to_dict("records")`;
TRL's `log_history` of each fine-tune for models; `report.metric_rows(metrics)` for report). `frame()` turns them into
the table a suite validates and adds a boolean column for each rule GX cannot state itself (a value in the
row's own list, two fields that must differ, a vector as long as its features); the suite expects it True,
so a failure names the rule. Failures name the offending rows by the artifact's id.

NaN is "undefined" in the bank and the metrics file and passes: GX counts NaN as missing, and its
column-map expectations skip missing values. GX is imported on first use (seconds) and runs in one
ephemeral, offline context per process: no analytics, no progress bars.

Every row is validated, in bounded memory: `validate` takes any iterable of records (a file read one record
at a time) and `validate_tables` arrow tables (the bank's row groups). A record's rules are judged as it
arrives, then it is kept slim (a list or dict in a column no expectation reads, such as a vector, becomes
its length), and GX validates CHUNK_ROWS slim rows at a time; the table-wide expectations (row count,
unique ids, increasing steps) run once on every row's id. The report is the one a single validation of the
whole table gives: the same expectations, counts, failing rows and messages (tested).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from pipelines.core.catalog import ATTRIBUTION_METHODS
from pipelines.core.provenance import mismatched_settings
from pipelines.core.records import Attribution, Generation, Task
from pipelines.core.vocabulary import COUNTERFACTUAL, DATASETS, METRICS, MISMATCHED, OWN, PAIR_SPLITS, SPLITS

if TYPE_CHECKING:
    import pandas as pd

SUITES = ("tasks", "generations", "attributions", "bank", "pairs", "models", "report")  # named by artifact
PARSE_STATUSES = ("letter", "text", "unparseable")
EXPECTED = ("dataset", "n_explanations", "min_margin", "keep_ties", "min_rows", "settings")
SETTINGS_RULE = "settings_match_params"
CONTROL_KINDS = (COUNTERFACTUAL, MISMATCHED)
ROW_ID = "row_id"  # the column GX reports offending rows by
MAX_ROWS = 20
CHUNK_ROWS = 65536  # slim rows GX validates at a time
# expectations over the whole table, run once on every row's id (and the columns they read)
TABLE_WIDE = ("expect_table_row_count_to_be_between", "expect_column_values_to_be_unique",
              "expect_column_values_to_be_increasing")
# columns of lists and dicts that only an existence expectation reads: a validated row keeps their length
HEAVY = {
    "tasks": ("choices", "source"),
    "generations": ("task", "decision_ids", "explanations", "explanation_ids", "seeds", "model", "settings",
                    "counterfactual"),
    "attributions": ("feature_tokens", "decision", "explanation_feature_tokens", "explanations", "model", "settings",
                     "seeds", "controls"),
    "bank": ("decision_vector", "explanation_vector", "feature_tokens"),
    "pairs": ("prompt", "chosen", "rejected", "model"),
    "models": (),
    "report": (),
}


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
    """Every value a finite number (float() of it, as numpy converts): one C pass over a vector."""
    import numpy as np

    if not isinstance(values, (list, tuple, np.ndarray)):
        values = list(values)
    array = np.asarray(values, dtype=float)
    return array.ndim == 1 and bool(np.isfinite(array).all())


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
    "models": lambda r: r.get("step"),
    "report": lambda r: f"{r.get('model')}/{r.get('dataset')}",
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
        # an empty explanation is a real outcome (kept, NaN metrics: docs/stages.md); a non-string is corruption
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
    "models": {
        "all_finite": lambda r: _finite(v for v in r.values() if isinstance(v, float)),
    },
    "report": {
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

    if artifact not in SUITES:
        raise ValueError(f"unknown artifact {artifact!r}; choose from {list(SUITES)}")
    if artifact == "models":
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
                among("kind", CONTROL_KINDS + (OWN,)), *scores,
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
    if artifact == "models":
        fractions = [bounded(c, 0, 1) for c in ("rewards/accuracies", "mean_token_accuracy") if c in table]
        return [*common, *exist("step", "loss"), *not_null("step", "loss"),
                gxe.ExpectColumnValuesToBeIncreasing(column="step", strictly=True), *fractions, *rules()]
    # report: per-decision Spearman / cosine summaries; a std of values in [-1, 1] lies in [0, 1]
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


@dataclass
class _Outcome:
    """One expectation's result over every chunk it ran on."""
    expectation: str
    column: str | None
    success: bool = True
    unexpected_count: int = 0
    rows: list[str] | None = None
    error: str | None = None
    observed: Any = None
    has_observed: bool = False

    def add(self, result: Any) -> None:
        info = result.result or {}
        # a metric that raised (missing column, wrong type) reports under its metric id
        errors = [v.get("exception_message") for v in (result.exception_info or {}).values()
                  if isinstance(v, dict) and v.get("raised_exception")]
        self.success = self.success and bool(result.success)
        if result.success:
            return
        self.unexpected_count += int(info.get("unexpected_count") or 0)
        self.rows = (self.rows or []) + [str(index[ROW_ID]) for index in
                                         info.get("partial_unexpected_index_list") or []]
        if errors and self.error is None:
            self.error = str(errors[0]).splitlines()[0]
        if "observed_value" in info and not self.has_observed:
            self.observed, self.has_observed = info["observed_value"], True

    def failure(self) -> Failure:
        rows, count = (self.rows or [])[:MAX_ROWS], self.unexpected_count
        if self.error is not None:
            detail = f"error: {self.error}"
        elif rows:
            detail = f"{count} unexpected, rows {', '.join(rows)}" + (" ..." if count > len(rows) else "")
        elif self.has_observed:
            detail = f"observed {self.observed!r}"
        else:
            detail = "failed"
        where = f" on {self.column}" if self.column else ""
        return Failure(expectation=self.expectation, column=self.column, unexpected_count=count, unexpected_rows=rows,
                       message=f"{self.expectation}{where}: {detail}")


def _failure(result: Any) -> Failure:
    config = result.expectation_config
    outcome = _Outcome(config.type, config.kwargs.get("column"))
    outcome.add(result)
    return outcome.failure()


def _settings_rule(artifact: str, settings: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """Whether a record's own `settings` hold this run's record-determining values (a file mixed by hand or by
    an older version fails): for attributions `settings` is per method, and a method this run does not
    attribute does not belong in its file."""
    def matches(row: dict[str, Any]) -> bool:
        wanted = settings.get(row.get("method")) if artifact == "attributions" else settings
        return wanted is not None and not list(mismatched_settings([row], lambda _: wanted))

    return matches


def _key(config: Any) -> str:
    """An expectation's identity: its type and arguments (GX adds the batch to a result's)."""
    return config.type + repr(sorted((k, v) for k, v in config.kwargs.items() if k != "batch_id"))


def _column_key(column: str) -> str:
    return repr(("column", column))


class _Validation:
    """One artifact's suite over its rows, chunk by chunk (module docstring)."""

    def __init__(self, artifact: str, expected: dict[str, Any]):
        unknown = sorted(set(expected) - set(EXPECTED))
        if unknown:
            raise TypeError(f"unknown expected value(s) {unknown}; choose from {list(EXPECTED)}")
        if artifact not in SUITES:
            raise ValueError(f"unknown artifact {artifact!r}; choose from {list(SUITES)}")
        self.artifact, self.expected = artifact, expected
        self.outcomes: dict[str, _Outcome] = {}
        self.ids: list[str] = []
        self.steps: list[Any] = []  # the models suite's step column (TRL's log), for the table-wide increasing check
        self.rows, self.chunks = 0, 0
        self.missing: dict[str, int] = {}  # required column -> chunks it was absent from
        self.first: Any = None  # the first chunk's frame as it came

    def _suite(self, table: Any) -> list:
        return _expectations(self.artifact, table, self.expected)

    def _run(self, table: Any, keep: Callable[[str], bool], record: bool = True) -> list[str]:
        """Validate `table` on the suite's expectations whose key `keep` accepts; their keys in GX's order."""
        definition = _batch_definition()  # first: it configures GX before anything else imports it
        import great_expectations as gx

        expectations = [e for e in self._suite(table) if keep(_key(e.configuration))]
        suite = gx.ExpectationSuite(name=self.artifact, expectations=expectations)
        batch = definition.get_batch(batch_parameters={"dataframe": table})
        result = batch.validate(suite, result_format={"result_format": "SUMMARY",
                                                      "partial_unexpected_count": MAX_ROWS,
                                                      "unexpected_index_column_names": [ROW_ID]})
        keys = []
        for item in result.results:
            key = _key(item.expectation_config)
            keys.append(key)
            if record:
                self.outcomes.setdefault(key, _Outcome(item.expectation_config.type,
                                                       item.expectation_config.kwargs.get("column"))).add(item)
        return keys

    def add_frame(self, table: Any) -> None:
        """Validate one chunk's frame (ROW_ID, the derived columns and the slim columns) on every expectation
        that is not table-wide."""
        import pandas as pd

        self.chunks += 1
        self.rows += len(table)
        self.ids.extend(table[ROW_ID].tolist())
        if self.artifact == "models" and "step" in table:
            self.steps.extend(table["step"].tolist())
        if self.first is None:
            self.first = table
        absent = [e.configuration.kwargs["column"] for e in self._suite(table)
                  if e.expectation_type == "expect_column_to_exist" and e.configuration.kwargs["column"] not in table]
        for column in absent:
            self.missing[column] = self.missing.get(column, 0) + 1
        if absent:  # absent here only, it is a column of the whole table without values in these rows
            table = table.assign(**{c: pd.Series([None] * len(table), index=table.index, dtype=object)
                                    for c in absent})
        self._run(table, keep=lambda key: not key.startswith(TABLE_WIDE))

    def report(self) -> QualityReport:
        import pandas as pd

        if not self.chunks:  # no rows: the whole suite on the empty table, as one validation runs it
            empty = frame(self.artifact, [])
            if "settings" in self.expected:
                empty[SETTINGS_RULE] = []
            keys = self._run(empty, keep=lambda key: True)
            return self._report(keys, 0)
        for column in [c for c, n in self.missing.items() if n == self.chunks]:
            # absent from every chunk, so from the whole table: its expectations as they run without it
            for key in [k for k in self.outcomes if _column_key(column) in k]:
                del self.outcomes[key]
            self._run(self.first, keep=lambda key, c=column: _column_key(c) in key)
        narrow = pd.DataFrame({ROW_ID: pd.Series(self.ids, dtype=object)})
        if self.artifact == "models" and self.steps:
            narrow["step"] = self.steps
        self._run(narrow, keep=lambda key: key.startswith(TABLE_WIDE))
        if all(outcome.success for outcome in self.outcomes.values()):
            return self._report(list(self.outcomes), self.rows)
        # the failures in the order one validation of the whole suite lists them (GX's, not the suite's)
        sample = self.first.head(1)
        sample = sample.assign(**{c: None for c in self.missing if c not in sample and self.missing[c] < self.chunks})
        if self.artifact == "models" and "step" not in sample and self.steps:
            sample = sample.assign(step=self.steps[:1])
        order = self._run(sample, keep=lambda key: True, record=False)
        return self._report([k for k in order if k in self.outcomes] + [k for k in self.outcomes if k not in order],
                            self.rows)

    def _report(self, keys: list[str], rows: int) -> QualityReport:
        return QualityReport(artifact=self.artifact, rows=rows, evaluated=len(keys),
                             failures=[self.outcomes[k].failure() for k in keys if not self.outcomes[k].success])


def _slim(artifact: str, row: dict[str, Any]) -> dict[str, Any]:
    heavy = HEAVY[artifact]
    return {k: (len(v) if k in heavy and isinstance(v, (list, dict)) else v) for k, v in row.items()}


def validate(artifact: str, rows: Iterable[dict[str, Any]], **expected: Any) -> QualityReport:
    """Run `artifact`'s suite on `rows` (any iterable: a file is read one record at a time). expected: dataset
    (a name or several; tasks), n_explanations (generations), min_margin and keep_ties (pairs, as in
    params.pair), min_rows (default 1), settings (the record-determining values every record's `settings` must
    hold: generations; per method: attributions)."""
    import pandas as pd

    validation = _Validation(artifact, expected)
    rules = dict(DERIVED[artifact])
    if "settings" in expected:
        rules[SETTINGS_RULE] = _settings_rule(artifact, expected["settings"])
    chunk: list[dict[str, Any]] = []
    judged: dict[str, list] = {name: [] for name in rules}
    ids: list[str] = []

    def flush() -> None:
        table = pd.DataFrame(chunk)
        table[ROW_ID] = ids
        for name in rules:
            table[name] = judged[name]
        validation.add_frame(table)
        chunk.clear(), ids.clear()
        for values in judged.values():
            values.clear()

    for row in rows:
        if artifact == "models" and "loss" not in row:
            continue  # TRL logs evaluations and the closing summary as separate dicts under the same step
        ids.append(str(ROW_IDS[artifact](row)))
        for name, rule in rules.items():
            judged[name].append(_judge(rule, row))
        chunk.append(_slim(artifact, row))
        if len(chunk) >= CHUNK_ROWS:
            flush()
    if chunk:
        flush()
    return validation.report()


def _is_list(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_list(kind) or pa.types.is_large_list(kind)


def _list_rules(table: Any) -> dict[str, Any]:
    """The bank's derived rules over an arrow table, vectorized: a vector as long as its features, every value
    finite (a missing column, list or value breaks the rule, as a row too malformed to judge does)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = table.num_rows
    names = table.column_names

    def lengths(name: str):
        if name not in names or not _is_list(table.schema.field(name).type):
            return None
        return pc.list_value_length(table[name]).to_numpy(zero_copy_only=False)

    def finite(name: str):
        if name not in names or not _is_list(table.schema.field(name).type):
            return np.zeros(rows, bool)
        column = table[name].combine_chunks() if table.num_rows else pa.array([], table.schema.field(name).type)
        values = column.flatten()
        ok = np.zeros(rows, bool)
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(values.type) or pa.types.is_integer(values.type):
            good = pc.fill_null(pc.is_finite(values.cast(pa.float64())), False).to_numpy(zero_copy_only=False)
            parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
            bad = np.bincount(parents[~good], minlength=rows)
            ok = valid & (bad == 0)
        elif pa.types.is_null(values.type):  # lists of nothing but nulls, or empty
            ok = valid & (lengths(name) == 0)
        return ok

    decision, explanation = lengths("decision_vector"), lengths("explanation_vector")
    if decision is None or explanation is None or "n_features" not in names:
        matches = np.zeros(rows, bool)
    else:
        features = table["n_features"].to_numpy(zero_copy_only=False).astype(float)
        with np.errstate(invalid="ignore"):
            matches = (decision == explanation) & (explanation == features)
    return {"vector_length_matches_features": matches,
            "all_finite": finite("decision_vector") & finite("explanation_vector")}


def validate_tables(artifact: str, tables: Iterable[Any], **expected: Any) -> QualityReport:
    """Run the bank's suite (a bank or an evaluation bank) on arrow tables, one after the other (a
    bank.parquet's row groups): the report that validating their rows as records gives, the vectors judged
    over arrays instead of row by row."""
    import pandas as pd
    import pyarrow as pa

    if artifact != "bank":
        raise ValueError(f"validate_tables validates the bank's tables, not {artifact!r}")
    validation = _Validation(artifact, expected)
    pending: list[Any] = []

    def flush() -> None:
        table = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
        pending.clear()
        lists = [i for i, field in enumerate(table.schema) if _is_list(field.type)]
        rules = _list_rules(table)
        chunk = table.drop_columns([table.column_names[i] for i in lists]).to_pandas()  # pd.read_parquet's dtypes
        for i in lists:  # only their existence is expected: the lengths stand in for the vectors
            chunk.insert(i, table.column_names[i], pd.Series(pa.compute.list_value_length(table.column(i)).to_pylist(),
                                                             dtype=object))
        chunk[ROW_ID] = [str(v) for v in chunk["id"].tolist()] if "id" in chunk else ["None"] * len(chunk)
        for name, values in rules.items():
            chunk[name] = values.tolist()
        validation.add_frame(chunk)

    count = 0
    for table in tables:
        if table.num_rows:
            pending.append(table)
            count += table.num_rows
        if count >= CHUNK_ROWS:
            flush()
            count = 0
    if pending:
        flush()
    return validation.report()
