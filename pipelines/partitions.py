"""The bank's partitions and where each one lives on disk.

The bank is partitioned by dataset x model: one slice per pair, built by tasks -> generate -> attribute
-> score, so one dataset or one model can be (re)built alone. A slice holds its own copy of the raw
tasks (cheap, deterministic) so that it is self-contained and one partition definition covers all
four stages. Everything after the bank (pairs, fine-tunes, evaluation, report, promotion) is per
model, over all of that model's slices.

    data/<model>/bank/<dataset>/{tasks,generations,attributions}.jsonl, bank.parquet
    data/<model>/{pairs,models,evaluation,report}/, train_summary.json, promotion.json

Each stage function below takes the whole params and a partition, and calls the stage module with the
params of that partition (its own data_dir, one dataset, one model): the CLI, DVC and Dagster all
call these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import Params

BANK_STAGES = ("tasks", "generate", "attribute", "score")
MODEL_STAGES = ("pair", "train", "evaluate", "report", "promote")
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


def for_model(params: Params, model: str) -> Params:
    """Params whose `model` is that model and whose data_dir is its folder."""
    chosen = next(m for m in (params.model, *params.models) if m.name == check_model(params, model))
    return params.model_copy(update={"model": chosen, "models": (), "data_dir": str(model_dir(params, model))})


def for_slice(params: Params, dataset: str, model: str) -> Params:
    own = for_model(params, model)
    return own.model_copy(update={
        "data_dir": str(slice_dir(params, check_dataset(params, dataset), model)),
        "tasks": params.tasks.model_copy(update={"datasets": (dataset,)})})


def run_bank_stage(stage: str, params: Params, dataset: str, model: str) -> dict[str, Any]:
    import importlib

    return importlib.import_module(f"pipelines.{stage}").run(for_slice(params, dataset, model))


def run_model_stage(stage: str, params: Params, model: str) -> dict[str, Any]:
    import importlib

    own = for_model(params, model)
    module = importlib.import_module(f"pipelines.{stage}")
    if stage == "pair":
        return module.run(own, slices=[slice_dir(params, d, model) for d in params.tasks.datasets])
    return module.run(own)


def run_stage(stage: str, params: Params, dataset: str | None = None, model: str | None = None
              ) -> dict[str, dict[str, Any]]:
    """One stage over the given partitions (every one when not given): {partition key: summary}."""
    datasets = [check_dataset(params, dataset)] if dataset else list(params.tasks.datasets)
    models = [check_model(params, model)] if model else list(model_names(params))
    if stage in BANK_STAGES:
        return {f"{d}|{m}": run_bank_stage(stage, params, d, m) for m in models for d in datasets}
    if stage in MODEL_STAGES:
        return {m: run_model_stage(stage, params, m) for m in models}
    raise PartitionError(f"unknown stage '{stage}'; the stages are {list(STAGES)}")
