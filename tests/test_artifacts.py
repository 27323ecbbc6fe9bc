"""The checked run every entry point shares (pipelines/runner/checked.py): inputs validated before a stage runs,
its output after; a failed output is set aside and the previous one restored, with one message naming
the file, the expectation and the row."""

import json
import subprocess
import sys

import pytest

from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import Params
from pipelines.core.records import (
    Appender,
    repair_tail,
    to_dict,
    torn_tail,
    write_records,
)
from pipelines.runner.checked import ArtifactInvalid, PartitionBusy, check, checked_run
from tests.test_quality import K, make_generation, make_task

TASKS = ARTIFACTS["tasks"]


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
    assert (rejected / "tasks.jsonl").read_bytes() != good and not (rejected / ".previous" / "tasks").exists()


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


GENERATIONS = ARTIFACTS["generations"]


def task_numbered(n: int):
    task = make_task(n % 4)
    task.id = f"arc_easy/q{n}"
    return task


def append_generations(folder, numbers, bad: int | None = None, torn: bytes = b"") -> bytes:
    with Appender(folder / "generations.jsonl") as sink:
        for n in numbers:
            generation = make_generation(task_numbered(n))
            if n == bad:
                generation.answer_label = "Z"  # not one of its choices
            sink.write(generation)
    with open(folder / "generations.jsonl", "ab") as handle:
        handle.write(torn)  # the line a crashed run was writing
    return (folder / "generations.jsonl").read_bytes()


@pytest.mark.parametrize("torn", [b"", b'{"id": "arc_easy/q9", "ta'])
def test_an_appended_output_is_cut_back_to_its_previous_bytes(tmp_path, torn):
    """generate and attribute append: the previous output is kept as its length (and torn tail), not a copy."""
    folder, rejected = tmp_path / "arc_easy", tmp_path / "rejected"
    folder.mkdir()
    params = Params().model_copy(update={"generate": Params().generate.model_copy(update={"n_explanations": K})})
    before = append_generations(folder, range(3), torn=torn)
    with pytest.raises(ArtifactInvalid, match="rows arc_easy/q4"):
        checked_run(GENERATIONS, params, folder, lambda: {"new": append_generations(folder, (3, 4), bad=4)}, [],
                    rejected)
    assert (folder / "generations.jsonl").read_bytes() == before
    assert len((rejected / "generations.jsonl").read_bytes().splitlines()) == 5
    assert not (rejected / ".previous" / "generations").exists()


def test_files_that_passed_are_not_validated_again_until_they_change(tmp_path):
    folder = tmp_path / "arc_easy"
    folder.mkdir()
    write_tasks(folder)
    first = check(TASKS, Params(), folder)
    assert check(TASKS, Params(), folder) is first  # the same reports: no second validation
    with open(folder / "tasks.jsonl", "a") as handle:  # a changed file is validated afresh
        bad = task_numbered(7)
        bad.answer_label = "Z"
        handle.write(json.dumps(to_dict(bad)) + "\n")
    with pytest.raises(ArtifactInvalid, match="rows arc_easy/q7"):
        check(TASKS, Params(), folder)


@pytest.mark.parametrize("chunk", [3, 2**16])
def test_torn_tail_reads_back_to_the_last_newline(tmp_path, chunk):
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3, "te')
    assert torn_tail(path, chunk) == b'{"id": 3, "te'
    path.write_bytes(b"no newline at all")
    assert torn_tail(path, chunk) == b"no newline at all"
    repair_tail(path)
    assert path.read_bytes() == b""


def test_a_partition_being_written_is_refused_to_a_second_writer(tmp_path):
    """Two workers given the same partition: the second is refused at once, naming the first; nothing runs
    twice, and once the first has finished the partition is free again."""
    folder, rejected = tmp_path / "arc_easy", tmp_path / "rejected"
    folder.mkdir()
    lock = rejected / ".locks" / "tasks.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from pipelines.runner.checked import exclusive\n"
        f"with exclusive(Path({str(lock)!r}), 'tasks'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        ran = []
        with pytest.raises(PartitionBusy, match=f"being written by process {holder.pid}"):
            checked_run(TASKS, Params(), folder, lambda: ran.append(1) or {}, [], rejected)
        assert not ran
    finally:
        holder.kill()
        holder.wait()
    result = checked_run(TASKS, Params(), folder, lambda: {"tasks": len(write_tasks(folder))}, [], rejected)
    assert result.reports[0][1].success  # the killed holder's lock went with it


def test_each_stage_reads_and_validates_what_its_artifact_declares(tmp_path, monkeypatch):
    """The dispatch hands checked_run the artifacts the table says a stage reads: promote reads metrics.json and
    train_summary.json (which training run to register), so both are validated before it runs."""
    from pipelines.runner import dispatch

    params = Params(data_dir=str(tmp_path), tasks={"datasets": ["arc_easy", "commonsense_qa"]})
    model = params.model.name
    inputs = {}
    monkeypatch.setattr(dispatch, "checked_run", lambda artifact, params, folder, stage, reads, rejected:
                        inputs.setdefault(artifact.name, [(a.name, where) for a, where in reads]))
    for stage in dispatch.STAGES:
        dispatch.run_stage(stage, params)
    model_dir, slices = tmp_path / model, [tmp_path / model / "bank" / d for d in ("arc_easy", "commonsense_qa")]
    assert inputs["promotion"] == [("report", model_dir), ("models", model_dir)]
    assert inputs["pairs"] == [(name, s) for name in ("bank", "generations") for s in slices]
    for artifact in ARTIFACTS.values():
        assert [name for name, _ in inputs[artifact.name]] == [
            name for name in artifact.reads for _ in (slices if (artifact.scope, ARTIFACTS[name].scope) ==
                                                       ("model", "slice") else [None])]


def test_an_input_is_validated_or_named_missing_before_its_stage_runs(tmp_path):
    from pipelines.runner.checked import check_input

    models, params = ARTIFACTS["models"], Params(train={"algorithms": ["dpo"]})
    with pytest.raises(FileNotFoundError, match="run `python -m pipelines train` first"):
        check_input(models, params, tmp_path)
    (tmp_path / "models").mkdir()
    log = [{"loss": 0.69, "step": 1}, {"loss": float("nan"), "step": 2}]
    (tmp_path / "train_summary.json").write_text(json.dumps({"dpo": {"log_history": log}}))
    with pytest.raises(ArtifactInvalid, match="suite 'models': dpo: models: 2 rows.*all_finite"):
        check_input(models, params, tmp_path)
    log[1]["loss"] = 0.5
    (tmp_path / "train_summary.json").write_text(json.dumps({"dpo": {"log_history": log}}))
    assert check_input(models, params, tmp_path)[0][1].success


def test_a_files_summary_inside_its_folder_is_written_once():
    assert ARTIFACTS["report"].files == ("report",) and ARTIFACTS["evaluation"].files == ("evaluation",)
    assert ARTIFACTS["models"].files == ("models", "train_summary.json")
    assert ARTIFACTS["promotion"].files == ("promotion.json",)
