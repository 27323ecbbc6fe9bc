"""pair -> train -> evaluate -> report on a tiny bank built by the real stages with the tiny model."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipelines.core.config import Params, PromoteParams
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


@pytest.fixture
def params(tmp_path, tiny_model_dir, shared_datasets) -> Params:
    return Params.model_validate({
        "data_dir": str(tmp_path / "data"),
        "model": {"id": str(tiny_model_dir), "device": "cpu"},
        "tasks": {"source": "local", "local_dir": str(shared_datasets), "datasets": ["arc_easy"],
                  "max_per_dataset": 8},
        "generate": {"n_explanations": 3, "max_new_tokens_decision": 4, "max_new_tokens_explanation": 6},
        "attribute": {"methods": ["feature_ablation"], "batch_size": 16},
        "train": {"max_steps": 1, "batch_size": 2, "lora_r": 2, "lora_alpha": 4, "max_length": 256},
        "evaluate": {"shift_datasets": ["codah"], "tasks_per_dataset": 2, "bootstrap_samples": 200},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    })


def test_pair_train_evaluate_report(params):
    for stage in (tasks, generate, attribute, score, pair, train):
        stage.run(params, Path(params.data_dir))
    summary = evaluate.run(params, Path(params.data_dir))
    assert set(summary["models"]) == {"base", "dpo", "sft"} and summary["tasks"] == 4
    for name, model in summary["models"].items():
        assert model["decisions"] == 4 and 0 <= model["accuracy"] <= 1
    # a rerun that finds nothing to do logs no second training or evaluation run to compare against
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    runs = {e: len(client.search_runs([client.get_experiment_by_name(e).experiment_id]))
            for e in (params.mlflow.training_experiment, params.mlflow.evaluation_experiment)}
    assert all(train.run(params, Path(params.data_dir))[a]["reused"] for a in ("dpo", "sft"))
    again = evaluate.run(params, Path(params.data_dir))
    assert {n: m["mlflow_run_id"] for n, m in again["models"].items()} == \
        {n: m["mlflow_run_id"] for n, m in summary["models"].items()}
    assert runs == {e: len(client.search_runs([client.get_experiment_by_name(e).experiment_id])) for e in runs}
    held_out = {json.loads(line)["id"] for line in open(Path(params.data_dir) / "evaluation" / "base" / "tasks.jsonl")}
    trained = {json.loads(line)["task_id"] for line in open(Path(params.data_dir) / "pairs" / "train.jsonl")}
    assert held_out and not held_out & trained

    files = report.run(params, Path(params.data_dir))
    metrics = json.loads(Path(files["metrics"]).read_text())
    assert metrics["domains"] == {"arc_easy": "in_domain", "codah": "shifted"}
    for name in ("base", "dpo", "sft"):
        stats = metrics["models"][name]
        assert set(stats) == {"all", "arc_easy", "codah"}
        for key in ("spearman_best", "spearman_median", "spearman_worst", "cosine_median"):
            value = stats["all"][key]
            assert value is None or -1 <= value <= 1
        assert stats["all"]["spearman_best"] >= stats["all"]["spearman_worst"]
        assert stats["all"]["accuracy_ci95"][0] <= stats["all"]["accuracy"] <= stats["all"]["accuracy_ci95"][1]
    assert set(metrics["comparisons"]) == {"dpo-base", "sft-base", "dpo-sft"}
    assert metrics["comparisons"]["dpo-base"]["all"]["tasks"] == 4
    assert metrics["smoke_test"]  # 4 decisions cannot detect 0.05 at 80% power
    for name in ("dpo", "sft"):  # held-out movement from training, changed outputs from evaluation
        moved = metrics["movement"][name]
        assert moved["pairs"] == summary_pairs(params) and 0 <= moved["reward_accuracy"] <= 1
        assert 0 <= moved["changed_explanations_changed"] <= 1 and isinstance(moved["moved"], bool)
    page = Path(files["report"]).read_text()
    assert page.count("data:image/png;base64,") == 4 and "Smoke test: supports no claim" in page
    assert "<script" not in page and "http" not in page.replace("<!doctype html>", "")  # self-contained
    table = pd.read_csv(Path(params.data_dir) / "report" / "alignment.csv")
    assert set(table["model"]) == {"base", "dpo", "sft"} and len(table) == 3 * 3
    check_promotion(params, metrics)

    # the eval split chooses training settings: its report says so, and the gate never promotes on it
    assert "split" not in metrics
    on_eval = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"split": "eval"}),
                                        "promote": PromoteParams(min_alignment_gain=-2.0, accuracy_tolerance=1.0)})
    assert evaluate.run(on_eval, Path(params.data_dir))["split"] == "eval"
    report.run(on_eval, Path(params.data_dir))
    assert json.loads(Path(files["metrics"]).read_text())["split"] == "eval"
    refused = promote.run(on_eval, Path(params.data_dir))
    assert not refused["promoted"] and refused["reasons"] == [r for r in refused["reasons"] if "eval split" in r]


def summary_pairs(params) -> int:
    return json.loads((Path(params.data_dir) / "train_summary.json").read_text())["pairs"]["eval"]


def check_promotion(params, metrics):
    """The gate on the report's intervals decides; only a passing candidate reaches the registry."""
    low = metrics["comparisons"]["dpo-base"]["all"]["alignment"]["ci95"][0]
    refused = promote.run(params.model_copy(update={"promote": PromoteParams(min_alignment_gain=low + 0.1)}),
                          Path(params.data_dir))
    assert not refused["promoted"] and "alignment gain" in refused["reasons"][0]
    assert refused["alignment_gain_ci95"][0] == pytest.approx(low)
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    assert not client.search_registered_models()

    lenient = PromoteParams(min_alignment_gain=low - 0.1, accuracy_tolerance=1.0)
    promoted = promote.run(params.model_copy(update={"promote": lenient}), Path(params.data_dir))
    assert promoted["promoted"] and promoted["version"] == 1 and promoted["alias"] == "champion"
    champion = client.get_model_version_by_alias(promoted["registered_model"], "champion")
    training = json.loads((Path(params.data_dir) / "train_summary.json").read_text())["dpo"]["mlflow_run_id"]
    assert int(champion.version) == 1 and champion.run_id == training
    assert client.list_artifacts(training, "adapter")  # the version's source: the adapter the run logged
    written = json.loads((Path(params.data_dir) / "promotion.json").read_text())
    assert written["promoted"] and written["version"] == 1
    assert written["source"] == f"runs:/{training}/adapter"  # no path of this machine in the artifact
    fetched = Path(params.data_dir).parent / "fetched"
    fetched.mkdir()
    assert (Path(mlflow.artifacts.download_artifacts(written["source"], dst_path=str(fetched),
                                                     tracking_uri=params.mlflow.tracking_uri))
            / "adapter_model.safetensors").exists()
    assert str(Path.cwd()) not in json.dumps(written) and params.data_dir not in json.dumps(written)


def test_report_and_evaluate_say_what_to_run_first(params):
    with pytest.raises(FileNotFoundError, match="run `python -m pipelines evaluate` first"):
        report.run(params, Path(params.data_dir))
    with pytest.raises(FileNotFoundError, match="run `python -m pipelines train` first"):
        evaluate.model_params(params, Path(params.data_dir), "dpo")


def test_the_evaluation_banks_use_evaluate_methods_and_must_keep_the_pair_method(tmp_path):
    from pipelines.core.config import ParamsError, load_params

    base = {"attribute": {"methods": ["feature_ablation", "lime"]}, "pair": {"method": "feature_ablation"}}
    chosen = Params.model_validate({**base, "evaluate": {"methods": ["feature_ablation"]}})
    assert evaluate.model_params(chosen, tmp_path, "base").attribute.methods == ("feature_ablation",)
    every = Params.model_validate(base)  # unset: the bank's methods
    assert evaluate.model_params(every, tmp_path, "base").attribute.methods == ("feature_ablation", "lime")
    path = tmp_path / "params.yaml"
    path.write_text("attribute: {methods: [feature_ablation, lime]}\nevaluate: {methods: [lime]}\n")
    with pytest.raises(ParamsError, match="evaluate.methods .* must include the pair method 'feature_ablation'"):
        load_params(path)


def test_the_eval_split_chooses_training_settings_without_touching_the_test_tasks():
    """evaluate.split: eval evaluates tasks of the eval split (never trained on), none of the test split's."""
    from pipelines.stages.evaluate import evaluation_tasks

    held_out = {}
    for split in ("test", "eval"):
        params = Params.model_validate({"tasks": {"source": "synthetic", "datasets": ["synthetic"]},
                                        "evaluate": {"shift_datasets": [], "tasks_per_dataset": 20, "split": split}})
        held_out[split] = evaluation_tasks(params)
        assert len(held_out[split]) == 20 and {t.split for t in held_out[split]} == {split}
    assert not {t.id for t in held_out["test"]} & {t.id for t in held_out["eval"]}
    with pytest.raises(ValueError, match="split"):
        Params.model_validate({"evaluate": {"split": "train"}})
