"""Base vs fine-tuned models on held-out tasks, in-domain and under domain shift (docs/method.md section 7).

    python -m pipelines evaluate [--params params.yaml]
    # data/<model>/models/{dpo,sft}/adapter -> data/<model>/evaluation/{base,dpo,sft}/..., bank.parquet

Every model answers, explains, is attributed and is scored by the very stage functions that built the
bank, on the same tasks: the test split (never paired, never trained on) of the training datasets and
of the shifted datasets, or with `evaluate.split: eval` the eval split, to choose training settings on (the
gate never promotes on it). Each model's evaluation is an MLflow run in `mlflow.evaluation_experiment`; a
tuned model's also says which share of its decisions and explanations differ, token for token, from
the base model's on the same tasks (`changed_*`): a fine-tune that changed nothing proves nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.analysis.movement import changed_outputs
from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import Params, evaluation_datasets
from pipelines.core.records import Task, read_records, write_json, write_records
from pipelines.core.tracking import run_exists, use_experiment
from pipelines.core.vocabulary import OWN
from pipelines.stages import attribute, generate, score
from pipelines.stages.tasks import build_tasks, load_rows

# what it reads (the fine-tunes) and writes (evaluation/<model>/: a bank slice's tasks, generations, attributions,
# bank per evaluated model): pipelines/core/artifacts.py
TASKS, GENERATIONS, BANK, MODELS, EVALUATION = (ARTIFACTS[n] for n in ("tasks", "generations", "bank", "models",
                                                                     "evaluation"))


def evaluation_tasks(params: Params) -> list[Task]:
    """The first `tasks_per_dataset` tasks of `evaluate.split` (test) of every evaluated dataset (same seed as
    the bank)."""
    everything = params.tasks.model_copy(update={"max_per_dataset": None})
    chosen = []
    for dataset in evaluation_datasets(params):
        tasks, _ = build_tasks(dataset, *load_rows(dataset, everything, params.synthetic, params.seed),
                               everything, params.seed)
        chosen.extend([t for t in tasks if t.split == params.evaluate.split][: params.evaluate.tasks_per_dataset])
    return chosen


def model_params(params: Params, data: Path, name: str) -> Params:
    """The params of one evaluated model: the base model plus its adapter (from the model folder `data`)."""
    adapter = None if name == "base" else data / MODELS.path / name / "adapter"
    if adapter is not None and not (adapter / "adapter_model.safetensors").exists():
        raise FileNotFoundError(f"adapter {adapter} not found: run `python -m pipelines {MODELS.stage}` first "
                                f"(with '{name}' in train.algorithms)")
    methods = params.evaluate.methods or params.attribute.methods
    return params.model_copy(update={
        "model": params.model.model_copy(update={"adapter": str(adapter) if adapter else None}),
        "attribute": params.attribute.model_copy(update={"methods": methods})})


def log_evaluation(params: Params, data: Path, name: str, own: Params, summary: dict[str, Any]) -> str:
    import mlflow

    use_experiment(params.mlflow.tracking_uri, params.mlflow.evaluation_experiment)
    with mlflow.start_run(run_name=f"eval-{name}") as run:
        mlflow.set_tags({"model": name, "stage": "evaluate"})
        mlflow.log_params({"adapter": own.model.adapter, "tasks_per_dataset": params.evaluate.tasks_per_dataset,
                           "split": params.evaluate.split,
                           "attribute_methods": ",".join(own.attribute.methods), "seed": params.seed})
        train_summary = data / MODELS.summary
        if name != "base" and train_summary.exists():
            mlflow.set_tag("training_run_id", json.loads(train_summary.read_text())[name]["mlflow_run_id"])
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        return run.info.run_id


def run(params: Params, data: Path) -> dict[str, Any]:
    """Each evaluated model regenerates, attributes and scores the held-out tasks in data/evaluation/<name>/."""
    tasks = evaluation_tasks(params)
    summary_path = data / EVALUATION.summary
    previous = json.loads(summary_path.read_text()).get("models", {}) if summary_path.exists() else {}
    summary: dict[str, Any] = {"tasks": len(tasks), "split": params.evaluate.split,
                               "datasets": evaluation_datasets(params), "models": {}}
    for name in params.evaluate.models:
        own, folder = model_params(params, data, name), data / EVALUATION.path / name  # a bank slice's files
        write_records(folder / TASKS.path, tasks)
        generated = generate.run(own, folder)
        attribute.run(own, folder)
        score.run(own, folder)
        bank = score.read_scores(folder / BANK.path, ["kind", "spearman", "cosine"])
        bank = bank[bank["kind"] == OWN]
        metrics = {"accuracy": generated["accuracy"], "decisions": generated["generations"],
                   **{f"mean_{m}": float(bank[m].mean()) for m in ("spearman", "cosine") if m in bank}}
        base_generations = data / EVALUATION.path / "base" / GENERATIONS.path
        if name != "base" and base_generations.exists():
            changed = changed_outputs(list(read_records(base_generations)),
                                      list(read_records(folder / GENERATIONS.path)))
            metrics.update({f"changed_{k}": v for k, v in changed.items() if k.endswith("_changed")})
        earlier = previous.get(name) or {}
        same = _same({k: v for k, v in earlier.items() if k not in ("bank", "mlflow_run_id")}, metrics)
        # the same generations, attributions and scores as the run that logged them: no duplicate MLflow run
        metrics["mlflow_run_id"] = earlier["mlflow_run_id"] if same and run_exists(
            params.mlflow.tracking_uri, earlier.get("mlflow_run_id")) else log_evaluation(params, data, name, own, metrics)
        summary["models"][name] = {"bank": str(folder / BANK.path), **metrics}
    write_json(summary_path, summary)
    return summary


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN (undefined) equals NaN here
