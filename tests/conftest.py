"""Shared fixtures: the real SmolLM2 (converted once and cached), a tiny random-weight model with the
same tokenizer and chat template for fast tests, and the dataset subsets in tests/data/datasets (a clone has
no ../shared; PSCB_SHARED_DATASETS points the tests at full local copies instead)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("PSCB_SHARED_DATASETS", REPO / "tests" / "data" / "datasets"))


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path, monkeypatch):
    """No test writes an MLflow store into the repository, whatever code path starts a run."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow-default.db")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from pipelines.core.models import convert_embedded

    return convert_embedded("~/.cache/pscb")[0]


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Llama with random weights, SmolLM2's tokenizer and template: real code paths, in seconds."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from pipelines.core.config import ModelParams
    from pipelines.core.models import load_model

    model, _, _ = load_model(ModelParams(id=str(tiny_model_dir), device="cpu"))
    return model


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    from pipelines.core.config import ModelParams
    from pipelines.core.models import load_model

    model, _, _ = load_model(ModelParams(device="cpu"))
    return model


@pytest.fixture
def shared_datasets() -> Path:
    assert SHARED_DATASETS.is_dir(), f"dataset copies expected at {SHARED_DATASETS} (tests/data/datasets is committed)"
    return SHARED_DATASETS


def tiny_params(tmp_path: Path, tiny_model_dir: Path, **changes) -> Path:
    """params.yaml shrunk to the tiny model and a few tasks (whole flow in seconds), with `changes` per section."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data_dir"] = str(tmp_path / "data")
    params["model"].update(name="tiny", id=str(tiny_model_dir), device="cpu")
    params["tasks"].update(max_per_dataset=6)
    params["generate"].update(n_explanations=3, max_new_tokens_decision=4, max_new_tokens_explanation=6)
    params["attribute"].update(methods=["feature_ablation"], batch_size=16)
    params["train"].update(max_steps=1, batch_size=2, lora_r=2, lora_alpha=4, max_length=256)
    params["evaluate"].update(tasks_per_dataset=1, bootstrap_samples=200)
    params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    for section, values in changes.items():
        params[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def instance(tmp_path, monkeypatch):
    """A real Dagster instance in a temporary DAGSTER_HOME, configured by the project's dagster.yaml."""
    import dagster as dg

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / ".dagster" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as real:
        yield real
