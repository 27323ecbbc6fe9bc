"""A bank slice split into shards (pipelines/core/shards.py, `bank.shards`), on the tiny model: the merged
files are the bytes one process writes, a killed shard resumes only its own records, a shard has its own
lock, and the Dagster graph runs the shards as steps of their own and reports the merged slice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import Params
from pipelines.core.partitions import for_slice, slice_dir
from pipelines.core.records import read_records
from pipelines.core.shards import files, members
from pipelines.runner.checked import PartitionBusy, exclusive
from pipelines.runner.dispatch import merge_bank_shards, run_bank_shard, run_bank_stage, shard_lock
from pipelines.stages import attribute
from tests.conftest import SHARED_DATASETS, tiny_params

DATASET, MODEL = "arc_challenge", "tiny"
SLICE_FILES = ("generations.jsonl", "attributions.jsonl")


def slice_params(root: Path, tiny_model_dir: Path) -> Params:
    # 5 tasks in chunks of 2: shard 0 of 2 takes chunks 0 and 2 (3 tasks), shard 1 chunk 1 (2 tasks);
    # 5 generations x 2 methods = 10 attribution records, 5 per shard
    return Params.model_validate({
        "data_dir": str(root / "data"),
        "model": {"name": MODEL, "id": str(tiny_model_dir), "device": "cpu"},
        "tasks": {"source": "local", "local_dir": str(SHARED_DATASETS), "datasets": [DATASET], "max_per_dataset": 5},
        "generate": {"n_explanations": 2, "max_new_tokens_decision": 5, "max_new_tokens_explanation": 6,
                     "tasks_per_chunk": 2},
        "attribute": {"methods": ["input_x_gradient", "lime"], "n_samples": 10, "batch_size": 8},
    })


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir) -> Path:
    """The slice as one process writes it: the reference every sharded run must equal byte for byte."""
    params = slice_params(tmp_path_factory.mktemp("one-process"), tiny_model_dir)
    for stage in ("tasks", "generate", "attribute"):
        run_bank_stage(stage, params, DATASET, MODEL)
    return slice_dir(params, DATASET, MODEL)


def fresh_slice(root: Path, tiny_model_dir: Path, reference: Path, *names: str) -> tuple[Params, Path]:
    """A slice folder holding `names` copied from the reference slice (its inputs)."""
    params = slice_params(root, tiny_model_dir)
    folder = slice_dir(params, DATASET, MODEL)
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(reference / name, folder / name)
    return params, folder


def ids(path: Path) -> list[str]:
    return [row["id"] for row in read_records(path)]


def test_members_are_every_nth_block_and_cover_the_list_once():
    items = list(range(7))
    assert members(items, (0, 2), block=2) == [0, 1, 4, 5] and members(items, (1, 2), block=2) == [2, 3, 6]
    assert sorted(x for i in range(3) for x in members(items, (i, 3))) == items
    assert members(items, (0, 1), block=4) == items
    with pytest.raises(ValueError, match="0 <= i < n"):
        files(Path("x"), ARTIFACTS["generations"], (2, 2))


def test_two_shards_merge_to_the_bytes_one_process_writes(tmp_path, tiny_model_dir, one_process):
    params, folder = fresh_slice(tmp_path, tiny_model_dir, one_process, "tasks.jsonl")
    made = [run_bank_shard("generate", params, DATASET, MODEL, (i, 2)) for i in range(2)]
    assert [m["new"] for m in made] == [3, 2]
    shard_ids = [ids(files(folder, ARTIFACTS["generations"], (i, 2))[0]) for i in range(2)]
    assert not set(shard_ids[0]) & set(shard_ids[1]) and not (folder / "generations.jsonl").exists()
    merged = merge_bank_shards("generate", params, DATASET, MODEL, 2)
    assert merged.summary["new"] == 5 and merged.reports[0][1].success
    assert (folder / "generations.jsonl").read_bytes() == (one_process / "generations.jsonl").read_bytes()

    made = [run_bank_shard("attribute", params, DATASET, MODEL, (i, 2)) for i in range(2)]
    assert [m["new"] for m in made] == [5, 5]
    merged = merge_bank_shards("attribute", params, DATASET, MODEL, 2)
    assert merged.summary["new"] == 10 and merged.summary["shards"]["count"] == 2
    assert set(merged.summary["seconds_per_new_record"]) == {"input_x_gradient", "lime"}
    for name in SLICE_FILES:
        assert (folder / name).read_bytes() == (one_process / name).read_bytes(), name
    assert not (folder / "shards").exists()  # merged, validated, and the shard files gone
    # the slice is complete: one process finds nothing to do, and neither does a shard
    assert run_bank_stage("attribute", params, DATASET, MODEL).summary["new"] == 0
    assert run_bank_shard("attribute", params, DATASET, MODEL, (1, 2))["new"] == 0


def test_a_killed_shard_resumes_only_its_own_missing_records(tmp_path, tiny_model_dir, one_process):
    params, folder = fresh_slice(tmp_path, tiny_model_dir, one_process, "tasks.jsonl", "generations.jsonl",
                                 "generations_summary.json")
    with pytest.raises(RuntimeError, match="injected failure"):
        attribute.run(for_slice(params, DATASET, MODEL), folder, fail_after=2, shard=(0, 2))  # killed after 2 of its 5 records
    killed = files(folder, ARTIFACTS["attributions"], (0, 2))[0]
    with open(killed, "a") as handle:  # a kill in the middle of a write leaves a torn line
        handle.write('{"id": "arc_challenge/x/li')
    first = list(read_records(killed))
    assert len(first) == 2
    assert run_bank_shard("attribute", params, DATASET, MODEL, (1, 2))["new"] == 5  # the other shard: unaffected
    with pytest.raises(ValueError, match="in no shard's file"):  # nothing merged while a shard is unfinished
        merge_bank_shards("attribute", params, DATASET, MODEL, 2)
    assert not (folder / "attributions.jsonl").exists() or not ids(folder / "attributions.jsonl")
    resumed = run_bank_shard("attribute", params, DATASET, MODEL, (0, 2))
    assert resumed["new"] == 3 and resumed["attributions"] == 5  # only its own 3 missing records
    assert list(read_records(killed))[:2] == first
    assert run_bank_shard("attribute", params, DATASET, MODEL, (1, 2))["new"] == 0
    merge_bank_shards("attribute", params, DATASET, MODEL, 2)
    assert (folder / "attributions.jsonl").read_bytes() == (one_process / "attributions.jsonl").read_bytes()


def test_shards_resume_a_slice_one_process_left_unfinished(tmp_path, tiny_model_dir, one_process):
    """A slice killed under one process, then sharded: the shards skip what its file holds, and the merge
    appends the rest as the resumed process would."""
    params, folder = fresh_slice(tmp_path, tiny_model_dir, one_process, "tasks.jsonl")
    lines = (one_process / "generations.jsonl").read_bytes().splitlines(keepends=True)
    (folder / "generations.jsonl").write_bytes(b"".join(lines[:3]))
    shutil.copy(one_process / "generations_summary.json", folder / "generations_summary.json")  # its fingerprint
    made = [run_bank_shard("generate", params, DATASET, MODEL, (i, 2)) for i in range(2)]
    assert [m["new"] for m in made] == [1, 1]  # tasks 4 (chunk 2: shard 0) and 3 (chunk 1: shard 1)
    assert merge_bank_shards("generate", params, DATASET, MODEL, 2).summary["new"] == 2
    assert (folder / "generations.jsonl").read_bytes() == (one_process / "generations.jsonl").read_bytes()


def test_a_shard_being_written_is_refused_to_a_second_writer_and_to_the_merge(tmp_path, tiny_model_dir, one_process):
    params, folder = fresh_slice(tmp_path, tiny_model_dir, one_process, "tasks.jsonl")
    lock = shard_lock(params, DATASET, MODEL, "generate", (0, 2))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from pathlib import Path; from pipelines.runner.checked import exclusive\n"
        f"with exclusive(Path({str(lock)!r}), 'shard'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PartitionBusy, match=f"shard 0 of 2 .* being written by process {holder.pid}"):
            run_bank_shard("generate", params, DATASET, MODEL, (0, 2))
        assert not files(folder, ARTIFACTS["generations"], (0, 2))[0].exists()  # refused before it wrote anything
        assert run_bank_shard("generate", params, DATASET, MODEL, (1, 2))["new"] == 2  # another shard runs
        with pytest.raises(PartitionBusy, match=f"being written by process {holder.pid}"):
            merge_bank_shards("generate", params, DATASET, MODEL, 2)
    finally:
        holder.kill()
        holder.wait()
    with exclusive(lock, "shard"):  # the killed holder's lock went with it
        pass
    assert run_bank_shard("generate", params, DATASET, MODEL, (0, 2))["new"] == 3


def test_the_dagster_graph_runs_each_shard_as_a_step_and_materializes_the_merged_slice(tmp_path, tiny_model_dir,
                                                                                      instance):
    from orchestration.definitions import build_definitions

    roots = {count: tmp_path / f"shards-{count}" for count in (1, 2)}
    folders = {}
    for count, root in roots.items():
        root.mkdir()
        defs = build_definitions(str(tiny_params(root, tiny_model_dir, bank={"shards": count})), repo=str(root))
        result = defs.resolve_job_def("build_bank").execute_in_process(partition_key=f"arc_easy|{MODEL}",
                                                                        instance=instance)
        assert result.success
        steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
        checks = {e.asset_key.to_user_string(): e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {a: True for a in ("tasks", "generations", "attributions", "bank")}
        materialized = [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]
        assert sorted(materialized) == ["attributions", "bank", "generations", "tasks"]  # each once
        folders[count] = root / "data" / MODEL / "bank" / "arc_easy"
        if count == 2:
            assert {f"{a}.{a}_shard_{i}_of_2" for a in ("generations", "attributions") for i in range(2)} | {
                "generations.generations_merge", "attributions.attributions_merge"} <= steps
            event = instance.get_latest_materialization_event(dg.AssetKey("attributions")).asset_materialization
            assert event.metadata["new"].value == 6 and "data_digest" in event.metadata
            shard_outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"
                             and e.step_key.startswith("generations.generations_shard")]
            assert sorted(e.event_specific_data.metadata["new"].value for e in shard_outputs) == [2, 4]
    for name in SLICE_FILES:
        assert (folders[2] / name).read_bytes() == (folders[1] / name).read_bytes(), name
    summary = json.loads((folders[2] / "attributions_summary.json").read_text())
    assert summary["shards"]["count"] == 2 and summary["attributions"] == 6
