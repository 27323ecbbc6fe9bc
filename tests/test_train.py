"""DPO and SFT on the tiny model: TRL's metrics in a real MLflow store, LoRA weights that moved, and an
adapter that loads back and generates."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipelines.core.config import Params
from pipelines.core.records import write_records
from pipelines.core.tracking import use_experiment
from pipelines.stages import train

QUESTION = "Which gas do plants absorb?\nA) oxygen\nB) carbon dioxide"


def pairs(n, split):
    return [{"id": f"{split}{i}", "task_id": f"t-{split}{i}", "split": split, "method": "lime",
             "prompt": [{"role": "user", "content": f"{QUESTION} ({i})"}, {"role": "assistant", "content": "B"},
                        {"role": "user", "content": "Why did you make that choice? Explain briefly."}],
             "chosen": [{"role": "assistant", "content": "Plants take in carbon dioxide for photosynthesis."}],
             "rejected": [{"role": "assistant", "content": "Because B is a nice letter."}]} for i in range(n)]


@pytest.fixture
def params(tmp_path, tiny_model_dir) -> Params:
    data = tmp_path / "data"
    write_records(data / "pairs" / "train.jsonl", pairs(4, "train"))
    write_records(data / "pairs" / "eval.jsonl", pairs(2, "eval"))
    return Params.model_validate({
        "data_dir": str(data), "model": {"id": str(tiny_model_dir), "device": "cpu"},
        "train": {"max_steps": 3, "batch_size": 2, "lora_r": 4, "lora_alpha": 8, "learning_rate": 1e-3,
                  "max_length": 128},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    })


def test_dpo_and_sft_log_to_mlflow_and_save_loadable_adapters(params, tiny_model_dir, tokenizer):
    summary = train.run(params, Path(params.data_dir))
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(params.mlflow.training_experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs
    for algorithm in ("dpo", "sft"):
        run = client.get_run(summary[algorithm]["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["algorithm"] == algorithm
        assert run.data.params["pscb.pairs_train_sha256"] == summary["pairs"]["train_sha256"]
        assert run.data.params["pscb.beta"] == "5.0"
        curves = {"loss"} | ({"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
                             if algorithm == "dpo" else set())
        assert curves <= set(run.data.metrics), sorted(run.data.metrics)
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 3  # one point per step
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
        assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= artifacts
        assert not any(a.endswith("model.safetensors") and "adapter" not in a.split("/")[-1] for a in artifacts)

        adapter = summary[algorithm]["adapter"]
        weights = load_file(f"{adapter}/adapter_model.safetensors")
        lora_b = [w for name, w in weights.items() if "lora_B" in name]
        assert lora_b and any(w.abs().max() > 0 for w in lora_b)  # B starts at zero: training moved it
        assert json.loads(open(f"{adapter}/adapter_config.json").read())["r"] == 4

        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
        prompt = tokenizer.apply_chat_template(pairs(1, "x")[0]["prompt"], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = tuned.generate(**prompt, max_new_tokens=4, do_sample=False)
        assert out.shape[1] == prompt["input_ids"].shape[1] + 4


def test_training_without_pairs_says_what_to_run(params, tmp_path):
    empty = params.model_copy(update={"data_dir": str(tmp_path / "elsewhere")})
    with pytest.raises(FileNotFoundError, match="run `python -m pipelines pair` first"):
        train.run(empty, Path(empty.data_dir))
    write_records(tmp_path / "elsewhere" / "pairs" / "train.jsonl", [])
    with pytest.raises(ValueError, match="holds no pairs"):
        train.run(empty, Path(empty.data_dir))


def test_training_resumes_from_its_last_checkpoint(params, tmp_path, tiny_model, tokenizer):
    import copy

    use_experiment(params.mlflow.tracking_uri, "resume")
    short = params.train.model_copy(update={"max_steps": 2, "save_steps": 1})
    out = tmp_path / "resume"
    first = train.train("dpo", copy.deepcopy(tiny_model), tokenizer, pairs(4, "train"), [], short, out, seed=1)
    assert first.state.global_step == 2 and (out / "checkpoints" / "checkpoint-2").is_dir()
    longer = short.model_copy(update={"max_steps": 3})
    second = train.train("dpo", copy.deepcopy(tiny_model), tokenizer, pairs(4, "train"), [], longer, out, seed=1)
    steps = [h["step"] for h in second.state.log_history if "loss" in h]
    assert second.state.global_step == 3 and steps == [1, 2, 3]  # steps 1-2 come from the checkpoint's log
    mlflow.end_run()


def test_two_processes_make_one_run_and_one_adapter_with_the_single_process_curve(params, tmp_path):
    """train.processes: 2 runs DPO data-parallel under `accelerate launch` (gloo on CPU). The global batch is
    train.batch_size either way, so both runs take the same steps; rank 0 alone logs and saves."""
    import shutil

    runs = {}
    for processes in (1, 2):
        folder = tmp_path / f"processes{processes}"
        shutil.copytree(Path(params.data_dir) / "pairs", folder / "pairs")
        own = params.model_copy(update={"train": params.train.model_copy(
            update={"processes": processes, "algorithms": ("dpo",)})})
        runs[processes] = train.run(own, folder)["dpo"]
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    one, two = runs[1], runs[2]
    assert two["processes"] == 2 and two["steps"] == one["steps"] == 3
    run = client.get_run(two["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["algorithm"] == "dpo"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3  # logged by one process, once per step
    experiment = client.get_experiment_by_name(params.mlflow.training_experiment)
    assert len(client.search_runs([experiment.experiment_id])) == 2  # one run per fine-tune, not per process
    assert sorted(p.name for p in (tmp_path / "processes2" / "models" / "dpo" / "adapter").iterdir()
                  if p.suffix == ".safetensors") == ["adapter_model.safetensors"]
    losses = {n: [h["loss"] for h in r["log_history"] if "loss" in h] for n, r in runs.items()}
    print("losses per step, 1 process:", losses[1], "2 processes:", losses[2])
    # step 1: the policy is the reference (LoRA B = 0), so DPO's loss is ln 2 whatever the batch
    assert losses[1][0] == pytest.approx(0.6931, abs=1e-3) and losses[2][0] == pytest.approx(0.6931, abs=1e-3)
    assert np.allclose(losses[1], losses[2], atol=0.05)


def test_each_rank_of_a_data_parallel_launch_loads_on_its_own_gpu(monkeypatch):
    from pipelines.stages.models import resolve_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("cuda") == "cuda" and resolve_device("cpu") == "cpu"
    monkeypatch.setenv("LOCAL_RANK", "3")  # what accelerate launch sets for the fourth process
    assert resolve_device("cuda") == "cuda:3" and resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"


def test_a_rerun_reuses_a_finished_fine_tune_and_never_resumes_other_settings(params):
    """No new MLflow run when nothing changed; checkpoints of another learning rate are set aside, not resumed."""
    dpo_only = params.model_copy(update={"train": params.train.model_copy(update={"algorithms": ("dpo",)})})
    data = Path(params.data_dir)
    first = train.run(dpo_only, data)["dpo"]
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(params.mlflow.training_experiment)
    again = train.run(dpo_only.model_copy(update={"train": dpo_only.train.model_copy(update={"save_steps": 2})}),
                      data)["dpo"]
    assert again["reused"] and again["mlflow_run_id"] == first["mlflow_run_id"]
    assert len(client.search_runs([experiment.experiment_id])) == 1
    faster = dpo_only.model_copy(update={"train": dpo_only.train.model_copy(update={"learning_rate": 5e-3})})
    changed = train.run(faster, data)["dpo"]
    assert not changed["reused"] and changed["restarted_for"] == ["train.learning_rate"]
    steps = [h["step"] for h in changed["log_history"] if "loss" in h]
    assert steps == [1, 2, 3]  # trained from step 1: no checkpoint of the old learning rate was resumed
    assert (data / "rejected" / "stale" / "models" / "dpo" / "fingerprint.json").exists()
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_reference_log_probs_computed_once_give_the_per_step_losses(params, tiny_model, tokenizer, tmp_path):
    """TRL's precompute_ref_log_probs (the default) against the reference forward in every step: same losses."""
    import copy

    use_experiment(params.mlflow.tracking_uri, "reference")
    losses = {}
    for precompute in (False, True):
        spec = params.train.model_copy(update={"max_steps": 3, "precompute_ref_log_probs": precompute})
        trainer = train.train("dpo", copy.deepcopy(tiny_model), tokenizer, pairs(4, "train"), pairs(2, "eval"), spec,
                              tmp_path / f"precompute-{precompute}", seed=1)
        losses[precompute] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    mlflow.end_run()
    assert len(losses[True]) == 3 and np.allclose(losses[True], losses[False], rtol=1e-5, atol=1e-6), losses


def test_a_restart_reads_the_precomputed_reference_log_probs_back(params, tmp_path):
    """Alone, the pairs go on disk in the model's folder, where TRL caches the reference log-probs it computed;
    a rerun after a crash (here: the adapter never saved) reads that cache instead of recomputing it."""
    import shutil

    from datasets import Dataset, load_from_disk

    folder = tmp_path / "bank"
    shutil.copytree(Path(params.data_dir) / "pairs", folder / "pairs")
    dpo_only = params.model_copy(update={"train": params.train.model_copy(update={"algorithms": ("dpo",)})})
    train.run(dpo_only, folder)
    home = folder / "models" / "dpo" / "datasets" / "train"
    caches = {path: path.stat().st_mtime_ns for path in home.glob("cache-*.arrow")}  # TRL's maps, each cached
    reference = [path for path in caches if "ref_chosen_logps" in Dataset.from_file(str(path)).column_names]
    assert reference, sorted(caches)
    cached = Dataset.from_file(str(reference[0]))
    assert "ref_rejected_logps" in cached.column_names
    train_pairs = (folder / "pairs" / "train.jsonl").read_text().splitlines()
    assert len(cached) == len(load_from_disk(str(home))) == len(train_pairs) > 0
    shutil.rmtree(folder / "models" / "dpo" / "adapter")
    (folder / "train_summary.json").unlink()
    again = train.run(dpo_only, folder)["dpo"]
    assert not again["reused"]
    assert {path: path.stat().st_mtime_ns for path in home.glob("cache-*.arrow")} == caches  # read, not rewritten


def test_losses_joined_by_plus_are_trls_sum_of_each(params, tiny_model, tokenizer, tmp_path):
    """loss_type 'sigmoid+sft' (RPO) is TRL's multi-loss: its first logged loss, before any update, is the sum of
    the plain DPO loss and the chosen explanation's NLL on the same batch, each from TRL's own log."""
    import copy

    from pipelines.core.config import ParamsError, load_params

    use_experiment(params.mlflow.tracking_uri, "combined")
    first = {}
    for loss in ("sigmoid", "sft", "sigmoid+sft"):
        spec = params.train.model_copy(update={"max_steps": 1, "loss_type": loss})
        assert train.trainer_arguments("dpo", spec, tmp_path, 1, False, False)["loss_type"] == loss.split("+")
        trainer = train.train("dpo", copy.deepcopy(tiny_model), tokenizer, pairs(4, "train"), [], spec,
                              tmp_path / loss, seed=1)
        first[loss] = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    mlflow.end_run()
    assert first["sigmoid+sft"] == pytest.approx(first["sigmoid"] + first["sft"], rel=1e-5), first
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {loss_type: 'sigmoid+'}\n")
    with pytest.raises(ParamsError, match="train.loss_type"):
        load_params(bad)
