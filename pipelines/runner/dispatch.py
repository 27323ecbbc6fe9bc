"""The stage dispatch: one stage on one partition, its inputs and output validated (checked.py).

Each function takes the whole params and a partition (a dataset x model slice of the bank, or a model),
and calls the stage module with the params of that partition (one dataset, one model) and the partition's
folder (pipelines/core/partitions.py). The CLI, DVC and Dagster all call these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.core import shards
from pipelines.core.artifacts import ARTIFACTS, BY_STAGE
from pipelines.core.config import Params
from pipelines.core.partitions import (
    PartitionError,
    check_dataset,
    check_model,
    for_model,
    for_slice,
    model_dir,
    model_names,
    rejected_dir,
    slice_dir,
)
from pipelines.runner.checked import StageResult, check_input, checked_run, exclusive

BANK_STAGES = tuple(a.stage for a in ARTIFACTS.values() if a.scope == "slice")
MODEL_STAGES = tuple(a.stage for a in ARTIFACTS.values() if a.scope == "model")
STAGES = (*BANK_STAGES, *MODEL_STAGES)


def _stage_functions() -> dict[str, Callable[..., dict[str, Any]]]:
    from pipelines.stages import (
        attribute,
        evaluate,
        generate,
        pair,
        promote,
        report,
        score,
        tasks,
        train,
    )

    return {"tasks": tasks.run, "generate": generate.run, "attribute": attribute.run, "score": score.run,
            "pair": pair.run, "train": train.run, "evaluate": evaluate.run, "report": report.run,
            "promote": promote.run}


def run_bank_stage(stage: str, params: Params, dataset: str, model: str) -> StageResult:
    """One bank stage on one slice, its inputs and output validated (pipelines/runner/checked.py)."""
    artifact, folder = BY_STAGE[stage], slice_dir(params, dataset, model)
    inputs = [(ARTIFACTS[name], folder) for name in artifact.reads]
    run = _stage_functions()[stage]
    own = for_slice(params, dataset, model)
    return checked_run(artifact, params, folder, lambda: run(own, folder), inputs,
                       rejected_dir(params, model) / "bank" / dataset)


def _merge_functions() -> dict[str, Callable[..., dict[str, Any]]]:
    from pipelines.stages import attribute, generate

    return {"generate": generate.merge, "attribute": attribute.merge}


def shard_lock(params: Params, dataset: str, model: str, stage: str, shard: tuple[int, int]) -> Path:
    """The lock of one shard of one slice's stage: one writer per shard file, while other shards run."""
    name = f"{BY_STAGE[stage].name}-{shard[0]}-of-{shard[1]}.lock"
    return rejected_dir(params, model) / "bank" / dataset / ".locks" / name


def run_bank_shard(stage: str, params: Params, dataset: str, model: str, shard: tuple[int, int]) -> dict[str, Any]:
    """Shard (i, n) of a sharded stage on one slice (pipelines/core/shards.py), its inputs validated, under the
    shard's own lock: into shards/<artifact>-<i>-of-<n>.jsonl. `merge_bank_shards` makes the slice's files."""
    artifact, folder = BY_STAGE[stage], slice_dir(params, dataset, model)
    with exclusive(shard_lock(params, dataset, model, stage, shard), f"shard {shard[0]} of {shard[1]} of "
                   f"{folder / artifact.path}"):
        for name in artifact.reads:
            check_input(ARTIFACTS[name], params, folder)
        return _stage_functions()[stage](for_slice(params, dataset, model), folder, shard=shard)


def merge_bank_shards(stage: str, params: Params, dataset: str, model: str, count: int) -> StageResult:
    """The slice's files from its `count` shards, validated as `run_bank_stage`'s output is: the bytes one
    process writes. Holds every shard's lock, so no shard is being written while it is read. The shard files
    go once the merged artifact passed its suite (a rerun of a shard finds its records in the slice's file)."""
    artifact, folder = BY_STAGE[stage], slice_dir(params, dataset, model)
    inputs = [(ARTIFACTS[name], folder) for name in artifact.reads]
    own = for_slice(params, dataset, model)
    with contextlib.ExitStack() as locks:
        for index in range(count):
            locks.enter_context(exclusive(shard_lock(params, dataset, model, stage, (index, count)),
                                          f"shard {index} of {count} of {folder / artifact.path}"))
        result = checked_run(artifact, params, folder, lambda: _merge_functions()[stage](own, folder, count), inputs,
                             rejected_dir(params, model) / "bank" / dataset)
        for index in range(count):
            for path in shards.files(folder, artifact, (index, count)):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # only when empty: another shard count's files stay
            (folder / shards.FOLDER).rmdir()
    return result


def run_model_stage(stage: str, params: Params, model: str) -> StageResult:
    """One per-model stage over all of the model's slices, its inputs and output validated."""
    artifact, folder, own = BY_STAGE[stage], model_dir(params, model), for_model(params, model)
    inputs = [(ARTIFACTS[name], slice_dir(params, dataset, model)) for name in artifact.reads
              if ARTIFACTS[name].scope == "slice" for dataset in params.tasks.datasets]
    inputs += [(ARTIFACTS[name], folder) for name in artifact.reads if ARTIFACTS[name].scope == "model"]
    run = _stage_functions()[stage]
    if stage == "pair":
        slices = [slice_dir(params, d, model) for d in params.tasks.datasets]
        return checked_run(artifact, params, folder, lambda: run(own, folder, slices=slices), inputs,
                           rejected_dir(params, model))
    return checked_run(artifact, params, folder, lambda: run(own, folder), inputs, rejected_dir(params, model))


def run_stage(stage: str, params: Params, dataset: str | None = None, model: str | None = None
              ) -> dict[str, StageResult]:
    """One stage over the given partitions (every one when not given): {partition key: summary}."""
    datasets = [check_dataset(params, dataset)] if dataset else list(params.tasks.datasets)
    models = [check_model(params, model)] if model else list(model_names(params))
    if stage in BANK_STAGES:
        return {f"{d}|{m}": run_bank_stage(stage, params, d, m) for m in models for d in datasets}
    if stage in MODEL_STAGES:
        return {m: run_model_stage(stage, params, m) for m in models}
    raise PartitionError(f"unknown stage '{stage}'; the stages are {list(STAGES)}")
