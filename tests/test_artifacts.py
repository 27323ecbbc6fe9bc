"""The checked run every entry point shares (pipelines/artifacts.py): inputs validated before a stage runs,
its output after; a failed output is set aside and the previous one restored, with one message naming
the file, the expectation and the row."""

import pytest

from pipelines.artifacts import ARTIFACTS, ArtifactInvalid, checked_run
from pipelines.config import Params
from pipelines.records import write_records
from tests.test_quality import make_task

TASKS = ARTIFACTS["raw_tasks"]


def write_tasks(folder, bad_row: int | None = None) -> bytes:
    tasks = [make_task(n) for n in range(3)]
    if bad_row is not None:
        tasks[bad_row].answer_label = "Z"  # not one of its choices
    write_records(folder / "tasks.jsonl", tasks)
    return (folder / "tasks.jsonl").read_bytes()


def test_a_failed_output_is_set_aside_and_the_previous_one_restored(tmp_path):
    folder, rejected = tmp_path / "bank" / "arc_easy", tmp_path / "rejected"
    folder.mkdir(parents=True)
    good = write_tasks(folder)
    result = checked_run(TASKS, Params(), folder, lambda: {"tasks": 3}, [], rejected)
    assert result.summary == {"tasks": 3} and result.reports[0][1].success and result.reports[0][1].rows == 3

    with pytest.raises(ArtifactInvalid) as failed:
        checked_run(TASKS, Params(), folder, lambda: {"bad": write_tasks(folder, bad_row=1)}, [], rejected)
    message = str(failed.value)
    assert message.startswith(f"{folder / 'tasks.jsonl'} failed its Great Expectations suite 'tasks': arc_easy: ")
    assert "answer_in_choices" in message and "rows arc_easy/q1" in message
    assert (folder / "tasks.jsonl").read_bytes() == good  # the next stage still reads the good one
    assert (rejected / "tasks.jsonl").read_bytes() != good and not (rejected / ".previous" / "raw_tasks").exists()


def test_a_failed_output_with_nothing_before_it_leaves_nothing_behind(tmp_path):
    folder, rejected = tmp_path / "arc_easy", tmp_path / "rejected"
    folder.mkdir()
    with pytest.raises(ArtifactInvalid):
        checked_run(TASKS, Params(), folder, lambda: {"bad": write_tasks(folder, bad_row=0)}, [], rejected)
    assert not (folder / "tasks.jsonl").exists() and (rejected / "tasks.jsonl").exists()


def test_a_bad_input_stops_the_stage_before_it_runs(tmp_path):
    folder = tmp_path / "arc_easy"
    folder.mkdir()
    write_tasks(folder, bad_row=2)
    ran = []
    with pytest.raises(ArtifactInvalid, match="rows arc_easy/q2"):
        checked_run(ARTIFACTS["generations"], Params(), folder, lambda: ran.append(1) or {}, [(TASKS, folder)],
                    tmp_path / "rejected")
    assert not ran and (folder / "tasks.jsonl").exists()  # an input is never moved
