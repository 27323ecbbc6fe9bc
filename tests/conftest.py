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
    from pipelines.stages.models import convert_embedded

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
    from pipelines.stages.models import load_model

    model, _, _ = load_model(ModelParams(id=str(tiny_model_dir), device="cpu"))
    return model


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    from pipelines.core.config import ModelParams
    from pipelines.stages.models import load_model

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


# ---------------------------------------------------------------- the fast tier: `make test-fast` (-m "not slow")
# Tests over about 10 s on the project's 2 CPU cores get the `slow` marker here, without touching their files:
# every test of SLOW_MODULES, and the tests SLOW_TESTS names per module: a function name (all its parameters)
# or one parametrized test (name[id]).
# `make test` (and CI) runs everything; `make test-fast` leaves these out. Measured with
# `pytest -m "not slow" --durations=30`: move a test here when it passes 10 s.
SLOW_MODULES = {
    "test_integration.py",  # the CLI through subprocesses on the real SmolLM2
    "test_distributed.py",  # a real Dask cluster and dagster-daemon
    "test_webserver.py",  # dagster dev, and a run launched through it
    "test_benchmark.py",  # the benchmark scripts end to end (one of them on two training processes)
    "test_sweep.py",  # a training sweep
}
SLOW_TESTS = {
    "test_attribute_vs_captum.py": {  # the fast tier keeps one case of each comparison with stock Captum
        "test_equals_stock_captum_on_smollm2",  # the real SmolLM2
        *(f"test_equals_stock_captum_on_tiny_model[{m}]" for m in ("lime", "kernel_shap", "feature_ablation", "lig")),
        *(f"test_record_path_equals_one_attribution_per_target_with_its_seed[{m}-{masks}]"
          for m in ("feature_ablation", "lime", "kernel_shap") for masks in ("independent", "shared")
          if (m, masks) != ("kernel_shap", "independent")),
    },
    # every broken case validated a second and third way (in chunks; bank.parquet by row groups) against the
    # one-table report; test_one_bad_row_fails_naming_the_rule_and_the_row keeps each case in the fast tier
    "test_quality.py": {
        "test_validating_in_chunks_gives_the_one_table_report",
        "test_a_bank_file_validated_by_row_groups_gives_the_records_report",
    },
    "test_stages.py": {  # the bank stages on the tiny model, several times over
        "test_stages_write_a_bank_pandas_reads",
        "test_attribute_resumes_after_a_crash_with_every_record_once",
        "test_sharded_attribute_merges_to_the_file_one_process_writes",
        "test_generate_skips_tasks_already_written",
        "test_empty_explanation_is_kept_with_a_zero_vector_and_undefined_metrics",
        "test_released_code_modes_run_through_attribute_and_score",
    },
    "test_shards.py": {  # a slice built by one process and again in shards, and once through Dagster
        "test_two_shards_merge_to_the_bytes_one_process_writes",
        "test_a_killed_shard_resumes_only_its_own_missing_records",
        "test_shards_resume_a_slice_one_process_left_unfinished",
        "test_a_shard_being_written_is_refused_to_a_second_writer_and_to_the_merge",
        "test_the_dagster_graph_runs_each_shard_as_a_step_and_materializes_the_merged_slice",
    },
    "test_provenance.py": {  # generate and attribute runs under changed settings
        "test_a_record_determining_change_restarts_generate_and_a_batch_size_does_not",
        "test_attribute_restarts_for_its_methods_settings_and_for_new_generations_only",
        "test_a_run_killed_under_new_settings_is_not_resumed_under_the_old",
        "test_records_from_before_fingerprints_are_kept_only_when_their_settings_match",
        "test_a_file_mixed_by_hand_fails_its_suite_naming_the_record",
        "test_the_cli_recomputes_after_a_record_determining_set_and_not_after_a_batch_size",  # CLI subprocesses
    },
    "test_metrics.py": {"test_metric_rows_equal_the_one_pair_functions_bit_for_bit"},  # many hypothesis examples
    "test_scale.py": {"test_the_1k_row_runs_score_and_pair_through_the_cli_and_the_figures_have_their_shape"},
    "test_dvc.py": {  # dvc repro and the main job in temporary clones of the repository
        "test_dvc_repro_and_the_main_job_through_dagster_build_the_same_bytes_in_two_clones",
        "test_a_corrupted_record_stops_every_entry_point_at_the_same_check",
        "test_a_params_edit_rebuilds_through_dagster_what_dvc_repro_builds_in_a_clean_clone",
    },
    "test_orchestration.py": {  # whole-graph materializations on a real instance
        "test_whole_graph_materializes_with_metadata_and_passing_checks",
        "test_a_failing_expectation_blocks_everything_downstream",
        "test_retraining_waits_for_the_whole_bank_and_its_checks",
    },
    "test_security.py": {  # real clusters, read from /proc/net/tcp
        "test_make_cluster_listens_on_loopback_only",
        "test_a_tls_cluster_runs_a_dagster_step_and_refuses_clients_without_its_certificate",
    },
    "test_train.py": {  # DPO / SFT training runs
        "test_dpo_and_sft_log_to_mlflow_and_save_loadable_adapters",
        "test_training_resumes_from_its_last_checkpoint",
        "test_two_processes_make_one_run_and_one_adapter_with_the_single_process_curve",
        "test_a_rerun_reuses_a_finished_fine_tune_and_never_resumes_other_settings",
        "test_reference_log_probs_computed_once_give_the_per_step_losses",
        "test_losses_joined_by_plus_are_trls_sum_of_each",
    },
    "test_evaluate.py": {"test_pair_train_evaluate_report"},
    "test_movement.py": {"test_heldout_movement_equals_trl_eval_logs_and_the_positive_control_is_learnt"},
    "test_synthetic.py": {  # trains the pilot world's model (about 80 s), then the bank stages on it
        "test_the_known_answer_bank_sees_the_planted_signal_and_a_shuffled_control_does_not",
    },
}


# The longest tests (CI log, `make test` on 2 workers: 672, 404, 128, 111, 79 s) start first: collected in file
# order they came last, and one worker ran the SmolLM2 integration test alone for five minutes at the end.
LONGEST_FIRST = (
    "test_dvc.py::test_dvc_repro_and_the_main_job_through_dagster_build_the_same_bytes_in_two_clones",
    "test_integration.py::test_cli_builds_a_bank_with_smollm2",
    "test_synthetic.py::test_the_known_answer_bank_sees_the_planted_signal_and_a_shuffled_control_does_not",
    "test_distributed.py::test_backfill_of_four_partitions_on_two_dask_workers_survives_a_killed_worker",
    "test_distributed.py::test_one_slice_in_two_shards_keeps_two_workers_busy_and_a_killed_shard_resumes",
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        module, function = item.path.name, getattr(item, "originalname", item.name)
        if module in SLOW_MODULES or {function, item.name} & SLOW_TESTS.get(module, set()):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # a stable sort: every other test keeps pytest's order, and every xdist worker collects the same list
    items.sort(key=lambda item: rank.get(f"{item.path.name}::{item.name}", len(rank)))
