"""The bank's partitions and where each one lives on disk.

The bank is partitioned by dataset x model: one slice per pair, built by tasks -> generate -> attribute
-> score, so one dataset or one model can be (re)built alone. A slice holds its own copy of the raw
tasks (cheap, deterministic) so that it is self-contained and one partition definition covers all
four stages. Everything after the bank (pairs, fine-tunes, evaluation, report, promotion) is per
model, over all of that model's slices.

    data/<model>/bank/<dataset>/{tasks,generations,attributions}.jsonl, bank.parquet
    data/<model>/bank/<dataset>/shards/   (bank.shards > 1, under Dagster: pipelines/core/shards.py)
    data/<model>/{pairs,models,evaluation,report}/, train_summary.json, promotion.json

`data_dir` is always the root every folder is under. The stages run on these folders through the runner
(pipelines/runner/dispatch.py), which the CLI, DVC and Dagster all call.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.core.config import Params


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
