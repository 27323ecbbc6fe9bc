"""The bank's partitions and where each one lives on disk.

The bank is partitioned by dataset x model: one slice per pair, built by tasks -> generate -> attribute
-> score, so one dataset or one model can be (re)built alone. A slice holds its own copy of the raw
tasks (cheap, deterministic) so that it is self-contained and one partition definition covers all
four stages. Everything after the bank (pairs, fine-tunes, evaluation, report, promotion) is per
model, over all of that model's slices.

    data/<model>/bank/<dataset>/{tasks,generations,attributions}.jsonl, bank.parquet
    data/<model>/bank/<dataset>/shards/   (bank.shards > 1, under Dagster: pipelines/core/shards.py)
    data/<model>/{pairs,models,evaluation,report}/, train_summary.json, promotion.json

Each stage function below takes the whole params and a partition, and calls the stage module with the
params of that partition (one dataset, one model) and the partition's folder: `data_dir` is always the
root every folder is under. The CLI, DVC and Dagster all call these.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.core import shards
from pipelines.core.artifacts import ARTIFACTS, BY_STAGE, StageResult, check, checked_run, exclusive
from pipelines.core.config import Params

BANK_STAGES = tuple(a.stage for a in ARTIFACTS.values() if a.scope == "slice")
MODEL_STAGES = tuple(a.stage for a in ARTIFACTS.values() if a.scope == "model")
STAGES = (*BANK_STAGES, *MODEL_STAGES)


class PartitionError(ValueError):
    pass


def model_names(params: Params) -> tuple[str, ...]:
    return tuple(m.name for m in (params.model, *params.models))


def check_dataset(params: Params, dataset: str) -> str:
    if dataset not in params.tasks.datasets:
        raise PartitionError(f"dataset '{dataset}' is not a partition: tasks.datasets is "
                             f"{list(params.tasks.datasets)}")
    return dataset


def check_model(params: Params, model: str) -> str:
    if model not in model_names(params):
        raise PartitionError(f"model '{model}' is not a partition: the models are {list(model_names(params))} "
                             "(model.name and models[].name)")
    return model


def model_dir(params: Params, model: str) -> Path:
    return Path(params.data_dir) / model


def slice_dir(params: Params, dataset: str, model: str) -> Path:
    return model_dir(params, model) / "bank" / dataset


def rejected_dir(params: Params, model: str) -> Path:
    """Where outputs that failed their suite go: inside no DVC output or dependency."""
    return model_dir(params, model) / "rejected"


def for_model(params: Params, model: str) -> Params:
    """Params whose `model` is that model (data_dir stays the root every partition's folder is under)."""
    chosen = next(m for m in (params.model, *params.models) if m.name == check_model(params, model))
    return params.model_copy(update={"model": chosen, "models": ()})


def for_slice(params: Params, dataset: str, model: str) -> Params:
    own = for_model(params, model)
    only = params.tasks.model_copy(update={"datasets": (check_dataset(params, dataset),)})
    return own.model_copy(update={"tasks": only})


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
    """One bank stage on one slice, its inputs and output validated (pipelines/core/artifacts.py)."""
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
    name = f"{BY_STAGE[stage].asset}-{shard[0]}-of-{shard[1]}.lock"
    return rejected_dir(params, model) / "bank" / dataset / ".locks" / name


def run_bank_shard(stage: str, params: Params, dataset: str, model: str, shard: tuple[int, int]) -> dict[str, Any]:
    """Shard (i, n) of a sharded stage on one slice (pipelines/core/shards.py), its inputs validated, under the
    shard's own lock: into shards/<artifact>-<i>-of-<n>.jsonl. `merge_bank_shards` makes the slice's files."""
    artifact, folder = BY_STAGE[stage], slice_dir(params, dataset, model)
    with exclusive(shard_lock(params, dataset, model, stage, shard), f"shard {shard[0]} of {shard[1]} of "
                   f"{folder / artifact.files[0]}"):
        for name in artifact.reads:
            check(ARTIFACTS[name], params, folder)
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
                                          f"shard {index} of {count} of {folder / artifact.files[0]}"))
        result = checked_run(artifact, params, folder, lambda: _merge_functions()[stage](own, folder, count), inputs,
                             rejected_dir(params, model) / "bank" / dataset)
        for index in range(count):
            for path in shards.files(folder, Path(artifact.files[0]).stem, (index, count)):
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
