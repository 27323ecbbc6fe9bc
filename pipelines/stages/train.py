"""Preference pairs -> LoRA adapters: DPO and the SFT baseline, tracked in MLflow (docs/method.md section 6).

    python -m pipelines train [--params params.yaml]
    # data/pairs/{train,eval}.jsonl -> data/models/{dpo,sft}/adapter, data/train_summary.json, MLflow runs

DPO: TRL's DPOTrainer with a PEFT LoRA adapter; the reference model is the base with the adapter
disabled. SFT: TRL's SFTTrainer on the chosen explanation, loss on the completion only. Each run logs
its params, TRL's training curves, the preference data's identity, the held-out movement of the policy
(pipelines/analysis/movement.py: reward accuracy with a binomial test, margin, log-probability shifts, KL to the
reference; `heldout/*` metrics) and the adapter (not the base weights) to the MLflow store of
`mlflow.tracking_uri`. A run killed midway resumes from its last
checkpoint.

With `train.processes: N > 1` each fine-tune runs data-parallel under `accelerate launch` (DDP: one process
per GPU, or gloo on CPU): this module is the launched program, every rank trains, and rank 0 alone logs to
MLflow, measures the movement and saves the adapter, so one fine-tune is one MLflow run and one adapter.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.analysis.movement import policy_movement
from pipelines.core import provenance
from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import Params, TrainParams
from pipelines.core.records import read_stage_input, sha256, write_json
from pipelines.core.tracking import run_exists, use_experiment
from pipelines.core.vocabulary import EVAL, PAIR_SPLITS, TRAIN

PAIRS, MODELS = ARTIFACTS["pairs"], ARTIFACTS["models"]  # what it reads and writes: core/artifacts.py


def lora_config(params: TrainParams):
    from peft import LoraConfig

    return LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=list(params.lora_target_modules), task_type="CAUSAL_LM")


def trainer_arguments(algorithm: str, params: TrainParams, output_dir: Path, seed: int, has_eval: bool,
                      on_gpu: bool) -> dict[str, Any]:
    # bf16 only on a GPU: on CPU TRL's bf16 default ran 25x slower (stack-notes)
    per_process = params.batch_size // params.processes  # batch_size is the global batch
    common = dict(output_dir=str(output_dir), learning_rate=params.learning_rate, num_train_epochs=params.epochs,
                  max_steps=params.max_steps, per_device_train_batch_size=per_process,
                  per_device_eval_batch_size=per_process,
                  gradient_accumulation_steps=params.gradient_accumulation_steps, max_length=params.max_length,
                  bf16=on_gpu, use_cpu=not on_gpu, seed=seed, logging_steps=1, report_to=["mlflow"],
                  save_strategy="steps", save_steps=params.save_steps, save_total_limit=2,
                  eval_strategy="epoch" if has_eval else "no", activation_checkpointing=params.gradient_checkpointing,
                  run_name=algorithm, ddp_find_unused_parameters=False)  # LoRA trains every adapter weight
    if algorithm == "dpo":
        return {**common, "beta": params.beta, "loss_type": params.loss_type.split("+"),
                "precompute_ref_log_probs": params.precompute_ref_log_probs}
    return {**common, "completion_only_loss": True}


def as_dataset(algorithm: str, pairs: list[dict[str, Any]]):
    from datasets import Dataset

    if algorithm == "dpo":
        return Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                                  for p in pairs])
    return Dataset.from_list([{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs])


def stage_datasets(algorithm: str, train_pairs: list[dict[str, Any]], eval_pairs: list[dict[str, Any]],
                   home: Path) -> None:
    """The pairs on disk in the fine-tune's folder (`home`), once, before any rank starts. TRL caches the
    reference log-probs it precomputes beside a dataset's files: every rank reads rank 0's, and a restart after
    a crash reads them back instead of recomputing them (a quarter of an hour for 500 pairs of SmolLM2 on a
    CPU). An in-memory dataset's cache lies in each process's own temporary folder. A changed fingerprint sets
    the folder aside with them."""
    if home.exists():
        return
    partial = home.with_name(home.name + ".partial")  # renamed once whole: a crash mid-write leaves no half set
    shutil.rmtree(partial, ignore_errors=True)
    as_dataset(algorithm, train_pairs).save_to_disk(str(partial / "train"))
    if eval_pairs:
        as_dataset(algorithm, eval_pairs).save_to_disk(str(partial / "eval"))
    partial.rename(home)


def datasets_for(algorithm: str, train_pairs: list[dict[str, Any]], eval_pairs: list[dict[str, Any]],
                 home: Path | None):
    if home is None:
        return as_dataset(algorithm, train_pairs), as_dataset(algorithm, eval_pairs) if eval_pairs else None
    from datasets import load_from_disk

    return load_from_disk(str(home / "train")), load_from_disk(str(home / "eval")) if eval_pairs else None


def train(algorithm: str, model, tokenizer, train_pairs: list[dict[str, Any]], eval_pairs: list[dict[str, Any]],
          params: TrainParams, output_dir: Path, seed: int, datasets_home: Path | None = None):
    """Fit one LoRA adapter; return the trainer (its state holds TRL's logs). Resumes from a checkpoint.
    `datasets_home`: where `stage_datasets` put the pairs (None: in memory)."""
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    on_gpu = model.device.type == "cuda"
    arguments = trainer_arguments(algorithm, params, output_dir / "checkpoints", seed, bool(eval_pairs), on_gpu)
    config_class, trainer_class = (DPOConfig, DPOTrainer) if algorithm == "dpo" else (SFTConfig, SFTTrainer)
    train_dataset, eval_dataset = datasets_for(algorithm, train_pairs, eval_pairs, datasets_home)
    trainer = trainer_class(model=model, args=config_class(**arguments), train_dataset=train_dataset,
                            eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=lora_config(params))
    checkpoint = get_last_checkpoint(arguments["output_dir"]) if Path(arguments["output_dir"]).exists() else None
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer


def pairs_file(folder: Path, split: str) -> Path:
    """One split's pairs (pipelines/stages/pair.py writes pairs/{train,eval}.jsonl)."""
    return folder / PAIRS.path / f"{split}.jsonl"


def read_pairs(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    train_path, eval_path = pairs_file(folder, TRAIN), pairs_file(folder, EVAL)
    train_pairs = read_stage_input(train_path, PAIRS.stage)
    eval_pairs = read_stage_input(eval_path, PAIRS.stage) if eval_path.exists() else []
    if not train_pairs:
        raise ValueError(f"{train_path} holds no pairs: run `python -m pipelines {PAIRS.stage}` on a bank with train "
                         "tasks")
    return train_pairs, eval_pairs


def fit(params: Params, folder: Path, algorithm: str) -> dict[str, Any] | None:
    """One fine-tune, alone or as one rank of a data-parallel launch; its summary (None on ranks > 0)."""
    import mlflow

    from pipelines.stages.models import load_model

    train_pairs, eval_pairs = read_pairs(folder)
    main = int(os.environ.get("RANK", "0")) == 0
    started = time.perf_counter()
    model, tokenizer, identity = load_model(params.model)
    output_dir = folder / MODELS.path / algorithm
    datasets_home = output_dir / "datasets"
    if main:  # a launch staged them before its ranks started
        stage_datasets(algorithm, train_pairs, eval_pairs, datasets_home)
        use_experiment(params.mlflow.tracking_uri, params.mlflow.training_experiment)
    # our run stays open through training, so TRL's MLflow callback (rank 0 only) logs into it
    with mlflow.start_run(run_name=algorithm) if main else contextlib.nullcontext() as active:
        if main:
            mlflow.set_tags({"algorithm": algorithm, "stage": "train", "base_model": identity["id"]})
            mlflow.log_params({f"pscb.{k}": v for k, v in params.train.model_dump().items()})
            mlflow.log_params({"pscb.base_model_sha256": identity.get("sha256") or identity.get("revision"),
                               "pscb.pairs_train_sha256": sha256(pairs_file(folder, TRAIN)),
                               "pscb.pairs_train": len(train_pairs), "pscb.pairs_eval": len(eval_pairs),
                               "pscb.pair_method": train_pairs[0]["method"], "pscb.seed": params.seed})
        trainer = train(algorithm, model, tokenizer, train_pairs, eval_pairs, params.train, output_dir, params.seed,
                        datasets_home)
        if not main:
            return None
        # before any evaluation claim: did the policy move, on pairs it never trained on?
        movement = policy_movement(trainer.model, tokenizer, eval_pairs, params.train.beta, params.train.max_length)
        mlflow.log_metrics({f"heldout/{k}": v for k, v in movement.items()
                            if isinstance(v, (int, float)) and v is not None})
        adapter = output_dir / "adapter"
        trainer.save_model(str(adapter))  # a PEFT model saves its adapter only
        tokenizer.save_pretrained(adapter)
        write_json(adapter / "pscb_base_model.json", identity)
        mlflow.log_artifacts(str(adapter), artifact_path="adapter")
        return {"adapter": str(adapter), "mlflow_run_id": active.info.run_id, "processes": params.train.processes,
                "steps": trainer.state.global_step, "movement": movement,
                "seconds": round(time.perf_counter() - started, 1),
                "last_log": next((h for h in reversed(trainer.state.log_history) if "loss" in h), {}),
                "log_history": trainer.state.log_history}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(params: Params, folder: Path, algorithm: str) -> dict[str, Any]:
    """`fit` on `train.processes` data-parallel processes under `accelerate launch`; rank 0's summary."""
    with tempfile.TemporaryDirectory(prefix="pscb-train-") as scratch:
        spec, result = Path(scratch) / "params.json", Path(scratch) / "result.json"
        spec.write_text(params.model_dump_json())
        stage_datasets(algorithm, *read_pairs(folder), folder / MODELS.path / algorithm / "datasets")
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                   "--num_processes", str(params.train.processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                   # the cores split between the processes: each torch otherwise starts one thread per core
                   "--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // params.train.processes)),
                   "-m", "pipelines.stages.train", str(spec), str(folder), algorithm, str(result)]
        finished = subprocess.run(command)
        if finished.returncode != 0 or not result.exists():
            raise RuntimeError(f"{algorithm} on {params.train.processes} processes failed (exit code "
                               f"{finished.returncode}); the launch was: {' '.join(command)}")
        return json.loads(result.read_text())


def training_fingerprint(params: Params, folder: Path, algorithm: str) -> dict[str, Any]:
    """What a fine-tune's checkpoints and adapter depend on: its algorithm, the record-determining train
    params, the seed, the base model and the pairs."""
    from pipelines.stages.models import model_fingerprint

    pairs = {f"{PAIRS.path}/{split}.jsonl": pairs_file(folder, split) for split in PAIR_SPLITS
             if pairs_file(folder, split).exists()}
    return provenance.fingerprint({"algorithm": algorithm, "train": provenance.section_settings("train", params.train),
                                   "seed": params.seed, "model": model_fingerprint(params.model)}, pairs)


def prepare(params: Params, folder: Path, algorithm: str, current: dict[str, Any],
            previous: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """(the finished fine-tune to reuse, or None; the keys that made an earlier one stale). Checkpoints of
    other settings move to rejected/stale, so `train` never resumes them; the fingerprint is written before
    training, so a killed run's checkpoints carry theirs."""
    place = folder / MODELS.path / algorithm
    marker = place / "fingerprint.json"
    recorded = json.loads(marker.read_text()) if marker.exists() else None
    changed: list[str] = []
    if place.exists() and recorded != current:
        changed = [k.removeprefix("params.") for k in provenance.changed_keys(recorded, current)] \
            if recorded is not None else ["fingerprint"]  # checkpoints from before fingerprints
        provenance.set_aside([place], provenance.stale_place(params, folder) / MODELS.path)
    done = previous.get(algorithm) or {}
    if not changed and done.get("fingerprint") == current and (place / "adapter" / "adapter_model.safetensors").exists() \
            and run_exists(params.mlflow.tracking_uri, done.get("mlflow_run_id")):
        return done, []
    write_json(marker, current)
    return None, changed


def run(params: Params, folder: Path) -> dict[str, Any]:
    """Each fine-tune, or the finished one from an earlier run with the same fingerprint (no new MLflow run)."""
    train_path, summary_path = pairs_file(folder, TRAIN), folder / MODELS.summary
    train_pairs, eval_pairs = read_pairs(folder)
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary: dict[str, Any] = {"pairs": {"train": len(train_pairs), "eval": len(eval_pairs),
                                         "train_sha256": sha256(train_path)}}
    for algorithm in params.train.algorithms:
        current = training_fingerprint(params, folder, algorithm)
        reused, changed = prepare(params, folder, algorithm, current, previous)
        if reused is not None:
            summary[algorithm] = {**reused, "reused": True}
            continue
        made = fit(params, folder, algorithm) if params.train.processes == 1 else launch(params, folder, algorithm)
        summary[algorithm] = {**made, "fingerprint": current, "restarted_for": changed, "reused": False}
    write_json(summary_path, summary)
    return summary


if __name__ == "__main__":  # one rank of `launch`: python -m pipelines.stages.train PARAMS FOLDER ALGORITHM RESULT
    spec, folder, algorithm, result = sys.argv[1:]
    outcome = fit(Params.model_validate_json(Path(spec).read_text()), Path(folder), algorithm)
    if outcome is not None:
        write_json(Path(result), outcome)
