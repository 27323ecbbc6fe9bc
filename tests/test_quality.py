"""The Great Expectations suites on every artifact: a valid example passes, one bad row fails with the rule
that it breaks and names that row. Real GX (one context for the file) with the network cut off; the
examples are built from the record dataclasses and the real score, pair and report functions."""

import copy
import math
import socket

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import METRICS, PairParams, Params
from pipelines.core.records import Attribution, Choice, Generation, Task, to_dict
from pipelines.runner.quality import ROW_ID, ROW_IDS, SUITES, frame, validate
from pipelines.stages.pair import make_pairs
from pipelines.stages.report import build_metrics, metric_rows, per_decision
from pipelines.stages.score import score_attribution

K = 3  # explanations per decision
SPLITS = ["train", "train", "eval", "test"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """GX must never call home (analytics, version checks): any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def make_task(n: int) -> Task:
    return Task(id=f"arc_easy/q{n}", dataset="arc_easy", split=SPLITS[n], question=f"Which gas do plants absorb? ({n})",
                choices=[Choice("A", "oxygen"), Choice("B", "carbon dioxide")], answer_label="B",
                source={"source": "embedded", "row": n})


def make_generation(task: Task) -> Generation:
    answer = "B" if task.id.endswith(("0", "2")) else "A"
    return Generation(id=task.id, task=task, decision=f"{answer})", decision_ids=[1, 2], answer_label=answer,
                      parse_status="letter", correct=answer == task.answer_label,
                      explanations=[f"Because reason {i} of {task.id}." for i in range(K)],
                      explanation_ids=[[3, i] for i in range(K)], seeds=[42] + [42 + i for i in range(K)],
                      model={"id": "tiny"}, settings={"n_explanations": K, "seed": 42},
                      counterfactual={"label": "A" if answer == "B" else "B", "decision": "A) oxygen",
                                      "explanation": "Because of the other option.", "explanation_ids": [4, 5],
                                      "seed": 42 + K})


def make_attribution(generation: Generation, rng: np.random.Generator) -> Attribution:
    tokens = ["Which", " gas", " do", " plants", " absorb"]
    explanations = [rng.normal(size=len(tokens)).tolist() for _ in range(K)]
    if generation.id.endswith("3"):
        explanations[-1] = [0.0] * len(tokens)  # an empty explanation's vector: every metric undefined
    return Attribution(id=f"{generation.id}/lime", generation_id=generation.id, method="lime", target="sequence",
                       features="first_user_message", feature_tokens=tokens,
                       decision=rng.normal(size=len(tokens)).tolist(), explanation_feature_tokens=[tokens] * K,
                       explanations=explanations, baseline_token_id=2, baseline_token="<|im_end|>",
                       model={"id": "tiny"}, settings={"n_samples": 8}, masks="independent",
                       seeds={"decision": 1, "explanations": 2},
                       controls=[{"kind": kind, "source": source, "text": "Another reason.",
                                  "vector": rng.normal(size=len(tokens)).tolist()}
                                 for kind, source in (("counterfactual", "A"), ("mismatched", "arc_easy/q9/0"))])


TRAINING_LOG = [  # TRL's log_history as DPOTrainer writes it (trainer_state.json)
    {"loss": 0.6931, "grad_norm": 68.0, "learning_rate": 5e-06, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
     "rewards/accuracies": 0.0, "rewards/margins": 0.0, "mean_token_accuracy": 0.80, "epoch": 0.5, "step": 1},
    {"loss": 0.7499, "grad_norm": 77.6, "learning_rate": 3.75e-06, "rewards/chosen": -0.05, "rewards/rejected": 0.05,
     "rewards/accuracies": 0.25, "rewards/margins": -0.1, "mean_token_accuracy": 0.71, "epoch": 1.0, "step": 2},
    {"eval_loss": 0.6779, "eval_rewards/accuracies": 0.5, "eval_runtime": 1.97, "epoch": 1.0, "step": 2},
    {"loss": 0.5012, "grad_norm": 57.4, "learning_rate": 2.5e-06, "rewards/chosen": 0.26, "rewards/rejected": -0.26,
     "rewards/accuracies": 1.0, "rewards/margins": 0.51, "mean_token_accuracy": 0.74, "epoch": 1.5, "step": 3},
    {"train_runtime": 59.1, "train_loss": 0.6481, "epoch": 1.5, "step": 3},
]


@pytest.fixture(scope="module")
def valid() -> dict[str, list[dict]]:
    tasks = [make_task(n) for n in range(len(SPLITS))]
    generations = [to_dict(make_generation(t)) for t in tasks]
    rng = np.random.default_rng(0)
    attributions = [to_dict(make_attribution(Generation.from_dict(g), rng)) for g in generations]
    bank = pd.DataFrame([row for a, g in zip(attributions, generations)
                         for row in score_attribution(a, g, METRICS, top_k=2)])
    pairs, _ = make_pairs(bank.to_dict("records"), {g["id"]: g for g in generations}, "lime", PairParams())
    metrics = build_metrics(Params(), {"base": per_decision(bank, "lime")})
    return {"tasks": [to_dict(t) for t in tasks], "generations": generations, "attributions": attributions,
            "bank": bank.to_dict("records"), "pairs": pairs, "models": TRAINING_LOG,
            "report": metric_rows(metrics)}


EXPECTED = {"tasks": {"dataset": ["arc_easy", "commonsense_qa"]}, "generations": {"n_explanations": K}}


@pytest.mark.parametrize("artifact", SUITES)
def test_valid_artifact_passes(valid, artifact):
    report = validate(artifact, valid[artifact], **EXPECTED.get(artifact, {}))
    assert report.success, report.summary()
    assert report.evaluated >= 5 and report.rows == len(frame(artifact, valid[artifact])) > 0
    assert report.summary() == f"{artifact}: {report.rows} rows, {report.evaluated} expectations, 0 failed"


def test_undefined_scores_pass_the_bank_suite(valid):
    bank = copy.deepcopy(valid["bank"])
    assert any(math.isnan(row["spearman"]) for row in bank)  # the all-zero vector's row
    bank[0].update(cosine=None, kendall=float("nan"))  # None as well as NaN
    assert validate("bank", bank).success


def test_the_models_suite_keeps_training_steps_only(valid):
    table = frame("models", TRAINING_LOG)
    assert table[ROW_ID].tolist() == ["1", "2", "3"]  # eval and closing summary rows share a step


def test_keep_ties_admits_identical_texts(valid):
    pairs = copy.deepcopy(valid["pairs"])
    pairs[0]["rejected"] = copy.deepcopy(pairs[0]["chosen"])
    assert not validate("pairs", pairs).success
    assert validate("pairs", pairs, keep_ties=True).success


def put(key, value):
    return lambda row: row.update({key: value})


def put_in(key, index, value):
    return lambda row: row[key].__setitem__(index, value)


BETWEEN, IN_SET = "expect_column_values_to_be_between", "expect_column_values_to_be_in_set"
BROKEN = [  # artifact, row, mutation, expected, expectation, column
    ("tasks", 1, put("answer_label", "Z"), {}, IN_SET, "answer_in_choices"),
    ("tasks", 1, lambda r: r.update(choices=r["choices"][:1]), {}, IN_SET, "at_least_two_choices"),
    ("tasks", 1, put("question", "  "), {}, IN_SET, "question_non_empty"),
    ("tasks", 1, put("split", "dev"), {}, IN_SET, "split"),
    ("tasks", 1, put("dataset", "codah"), {"dataset": "arc_easy"}, IN_SET, "dataset"),
    ("tasks", 1, put("id", "arc_easy/q0"), {}, "expect_column_values_to_be_unique", ROW_ID),
    ("generations", 1, put_in("explanations", 1, None), {}, IN_SET, "explanations_are_text"),
    ("generations", 1, put("answer_label", "C"), {}, IN_SET, "answer_in_choices"),
    ("generations", 1, put("parse_status", "unparseable"), {}, IN_SET, "answer_in_choices"),
    ("generations", 1, put("correct", True), {}, IN_SET, "correct_matches_gold"),
    ("generations", 1, put("correct", "yes"), {}, IN_SET, "correct"),
    ("generations", 1, lambda r: r["explanations"].append("More."), {"n_explanations": K}, BETWEEN, "n_explanations"),
    ("attributions", 1, lambda r: r["explanations"][0].pop(), {}, IN_SET, "vector_length_matches_features"),
    ("attributions", 1, put_in("decision", 0, float("nan")), {}, IN_SET, "all_finite"),
    ("attributions", 1, put("method", "shap"), {}, IN_SET, "method"),
    ("bank", 4, put("spearman", 1.5), {}, BETWEEN, "spearman"),
    ("bank", 4, put("cosine", float("inf")), {}, BETWEEN, "cosine"),
    ("bank", 4, put("task_id", None), {}, "expect_column_values_to_not_be_null", "task_id"),
    ("bank", 4, lambda r: r.update(id=r["id"].rsplit("/", 1)[0] + "/0"), {}, "expect_column_values_to_be_unique",
     ROW_ID),
    ("bank", 4, put("kind", "other"), {}, IN_SET, "kind"),
    ("attributions", 1, lambda r: r["controls"][0]["vector"].pop(), {}, IN_SET, "controls_well_formed"),
    ("attributions", 1, lambda r: r["controls"][1].update(kind="random"), {}, IN_SET, "controls_well_formed"),
    ("generations", 1, lambda r: r["counterfactual"].update(label=r["answer_label"]), {}, IN_SET,
     "counterfactual_is_another_option"),
    ("bank", 4, lambda r: r.update(decision_vector=r["decision_vector"][:-1]), {}, IN_SET,
     "vector_length_matches_features"),
    ("pairs", 0, lambda r: r.update(rejected=copy.deepcopy(r["chosen"])), {}, IN_SET, "chosen_differs_from_rejected"),
    ("pairs", 0, lambda r: r["chosen"][0].update(content=""), {}, IN_SET, "texts_non_empty"),
    ("pairs", 0, put("split", "test"), {}, IN_SET, "split"),
    ("pairs", 0, put("margin", 0.5), {}, IN_SET, "margin_is_score_difference"),
    ("pairs", 0, lambda r: r.update(chosen_score=r["rejected_score"] + 0.01, margin=0.01), {"min_margin": 0.02},
     BETWEEN, "margin"),
    ("models", 1, put("loss", float("nan")), {}, IN_SET, "all_finite"),
    ("models", 1, put("rewards/accuracies", 1.5), {}, BETWEEN, "rewards/accuracies"),
    ("models", 3, put("step", 2), {}, "expect_column_values_to_be_increasing", "step"),
    ("report", 0, put("accuracy", 1.2), {}, BETWEEN, "accuracy"),
    ("report", 0, put("spearman_median", -1.5), {}, BETWEEN, "spearman_median"),
    ("report", 0, put("decisions", 0), {}, BETWEEN, "decisions"),
    ("report", 0, put("accuracy_ci95", [0.9, 0.1]), {}, IN_SET, "intervals_ordered"),
]


@pytest.mark.parametrize("artifact, index, mutate, expected, expectation, column", BROKEN,
                         ids=[f"{case[0]}-{case[5]}" for case in BROKEN])
def test_one_bad_row_fails_naming_the_rule_and_the_row(valid, artifact, index, mutate, expected, expectation,
                                                       column):
    rows = copy.deepcopy(valid[artifact])
    mutate(rows[index])
    bad = str(ROW_IDS[artifact](rows[index]))
    report = validate(artifact, rows, **expected)
    assert not report.success
    failure = next((f for f in report.failures if (f.expectation, f.column) == (expectation, column)), None)
    assert failure, report.summary()
    assert set(failure.unexpected_rows) == {bad} and failure.unexpected_count >= 1
    assert failure.message.startswith(f"{expectation} on {column}: ") and bad in failure.message
    assert failure.message in report.summary()


def test_missing_fields_and_empty_artifacts_are_failures_not_crashes(valid):
    empty = validate("tasks", [])
    assert not empty.success and empty.rows == 0
    assert "expect_table_row_count_to_be_between: observed 0" in empty.summary()
    rows = [{k: v for k, v in row.items() if k != "source"} for row in valid["tasks"]]
    assert [(f.expectation, f.column) for f in validate("tasks", rows).failures] == [
        ("expect_column_to_exist", "source")]
    bank = copy.deepcopy(valid["bank"])
    bank[0]["spearman"] = "high"
    failure = next(f for f in validate("bank", bank).failures if f.column == "spearman")
    assert failure.message.startswith(f"{BETWEEN} on spearman: error: ")


def test_unknown_artifact_or_expected_value_is_an_error(valid):
    with pytest.raises(ValueError, match="unknown artifact 'bank2'"):
        validate("bank2", [])
    with pytest.raises(TypeError, match=r"unknown expected value\(s\) \['n_explanation'\]"):
        validate("generations", valid["generations"], n_explanation=3)


def rows_of(artifact, valid, case):
    rows = copy.deepcopy(valid[artifact])
    if case is not None:
        case[2](rows[case[1]])
    return rows


CHUNKED = [(artifact, None, {}) for artifact in SUITES] + [(c[0], c, c[3]) for c in BROKEN]


@pytest.mark.parametrize("artifact, case, expected", CHUNKED,
                         ids=[f"{a}-{c[5] if c else 'valid'}" for a, c, _ in CHUNKED])
def test_validating_in_chunks_gives_the_one_table_report(valid, monkeypatch, artifact, case, expected):
    """Every row validated, a few at a time: the same expectations, counts, rows and messages as one
    validation of the whole table (a duplicate id across two chunks included)."""
    import pipelines.runner.quality as quality

    whole = validate(artifact, rows_of(artifact, valid, case), **expected)
    monkeypatch.setattr(quality, "CHUNK_ROWS", 7 if artifact == "bank" else 2)
    chunked = validate(artifact, iter(rows_of(artifact, valid, case)), **expected)
    assert (chunked.summary(), chunked.failures) == (whole.summary(), whole.failures)


@pytest.mark.parametrize("case", [None] + [c for c in BROKEN if c[0] == "bank"],
                         ids=["valid"] + [c[5] for c in BROKEN if c[0] == "bank"])
def test_a_bank_file_validated_by_row_groups_gives_the_records_report(valid, tmp_path, monkeypatch, case):
    """The stage's path (bank.parquet read as arrow tables, vectors judged over arrays) against its rows read
    back as records."""
    import pyarrow.parquet as pq

    import pipelines.runner.quality as quality
    from pipelines.runner.checked import bank_tables
    from pipelines.runner.quality import validate_tables

    path = tmp_path / "bank.parquet"
    rows = rows_of("bank", valid, case)
    rows[2]["explanation_vector"] = None if case is None else rows[2]["explanation_vector"]  # a null list
    pd.DataFrame(rows).to_parquet(path, index=False)
    records = validate("bank", pd.read_parquet(path).to_dict("records"))
    monkeypatch.setattr(quality, "CHUNK_ROWS", 5)
    pq.write_table(pq.read_table(path), path, row_group_size=3)
    tables = validate_tables("bank", bank_tables(path))
    assert (tables.summary(), tables.failures) == (records.summary(), records.failures)
    assert tables.rows == len(rows) and (case is not None or not tables.success)


def test_a_column_missing_from_some_chunks_is_a_column_with_missing_values(valid, monkeypatch):
    import pipelines.runner.quality as quality

    rows = copy.deepcopy(valid["tasks"])
    del rows[0]["split"], rows[1]["split"]  # the first chunk has no split column at all
    for drop in (rows, [{k: v for k, v in r.items() if k != "source"} for r in rows]):
        whole = validate("tasks", copy.deepcopy(drop))
        monkeypatch.setattr(quality, "CHUNK_ROWS", 2)
        chunked = validate("tasks", copy.deepcopy(drop))
        monkeypatch.setattr(quality, "CHUNK_ROWS", 65536)
        assert chunked.summary() == whole.summary() and not whole.success
