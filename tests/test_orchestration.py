"""The Dagster code location on a real instance (temporary DAGSTER_HOME with the project's dagster.yaml):
the whole asset graph on the tiny model, blocking checks, bad input, and the retraining automation."""

import json

import dagster as dg
import mlflow
import pytest

from orchestration.assets import ASSET_STAGES
from orchestration.definitions import build_definitions
from tests.conftest import tiny_params

MODEL = "tiny"
BANK_KEYS = [f"{dataset}|{MODEL}" for dataset in ("arc_easy", "commonsense_qa")]


def run(defs, job: str, key: str, instance, **kwargs) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(partition_key=key, instance=instance, **kwargs)


def checks_of(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in result.get_asset_check_evaluations()}


def test_project_instance_config_has_telemetry_off_and_a_compute_pool(instance):
    assert instance.telemetry_enabled is False
    pools = instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 1 and pools.pool_granularity.value == "run"


def test_whole_graph_materializes_with_metadata_and_passing_checks(tmp_path, tiny_model_dir, instance):
    # a lenient gate, so that this run shows the promotion too (tests/test_evaluate.py shows a refusal)
    path = tiny_params(tmp_path, tiny_model_dir, promote={"min_alignment_gain": -2.0, "accuracy_tolerance": 1.0})
    defs = build_definitions(str(path), repo=str(tmp_path))
    assert {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()} == set(ASSET_STAGES)
    results = [run(defs, "build_bank", key, instance) for key in BANK_KEYS]
    results.append(run(defs, "fine_tune_and_evaluate", MODEL, instance))
    assert all(r.success for r in results)

    evaluations = {k: v for r in results for k, v in checks_of(r).items()}
    quality = {k for k in evaluations if k.endswith(":great_expectations")}
    assert quality == {f"{a}:great_expectations" for a in ASSET_STAGES if a != "promotion"}
    assert all(e.passed for e in evaluations.values()), {k: e.description for k, e in evaluations.items()}
    assert evaluations["bank:great_expectations"].metadata["expectations"].value >= 4

    for asset in ASSET_STAGES:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        metadata = event.asset_materialization.metadata
        assert {"seconds", "data_digest", "path", "dvc"} <= set(metadata), asset
        assert metadata["dvc"].value == "no DVC repository"  # tmp_path is none; tests/test_dvc.py has one
        assert event.asset_materialization.tags["dagster/data_version"] == metadata["data_digest"].value
    bank = instance.get_latest_materialization_event(dg.AssetKey("bank")).asset_materialization.metadata
    assert bank["own_rows"].value == 6 * 3 and -1 <= bank["mean_spearman"].value <= 1  # tasks x k
    assert bank["rows"].value == 6 * (3 + 2)  # and one counterfactual and one mismatched control per task
    assert 0 <= bank["feature_ablation_spearman_diagnosticity_auroc"].value <= 1
    evaluation = instance.get_latest_materialization_event(dg.AssetKey("evaluation")).asset_materialization
    assert 0 <= evaluation.metadata["dpo_accuracy"].value <= 1
    assert "/#/experiments/" in evaluation.metadata["dpo_mlflow_run"].value
    training = instance.get_latest_materialization_event(dg.AssetKey("models")).asset_materialization
    assert training.metadata["dpo_steps"].value == 1

    promotion = json.loads((tmp_path / "data" / MODEL / "promotion.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    champion = client.get_model_version_by_alias(promotion["registered_model"], "champion")
    assert promotion["promoted"] and int(champion.version) == promotion["version"] == 1


def test_a_failing_expectation_blocks_everything_downstream(tmp_path, tiny_model_dir, instance):
    defs = build_definitions(str(tiny_params(tmp_path, tiny_model_dir)), repo=str(tmp_path))
    key = BANK_KEYS[0]
    assert run(defs, "build_bank", key, instance).success
    folder = tmp_path / "data" / MODEL / "bank" / "arc_easy"
    # a corrupted record on disk: generate resumes (keeps it), its suite catches it
    rows = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    rows[1]["answer_label"] = "Z"  # not one of the task's choices
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = instance.get_latest_materialization_event(dg.AssetKey("bank")).timestamp

    result = run(defs, "build_bank", key, instance, raise_on_error=False)
    assert not result.success
    check = checks_of(result)["generations:great_expectations"]
    assert not check.passed and rows[1]["id"] in check.metadata["failures"].value
    assert rows[1]["id"] in check.description
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"tasks", "generations"}  # attributions and bank did not run
    assert instance.get_latest_materialization_event(dg.AssetKey("bank")).timestamp == before


def test_bad_input_fails_with_a_message_and_runs_nothing_downstream(tmp_path, tiny_model_dir, instance):
    missing = tmp_path / "no-such-folder"
    defs = build_definitions(str(tiny_params(tmp_path, tiny_model_dir, tasks={"source": "local",
                                                                              "local_dir": str(missing)})))
    result = run(defs, "build_bank", BANK_KEYS[0], instance, raise_on_error=False)
    assert not result.success and not result.get_asset_materialization_events()
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert str(missing) in failure.step_failure_data.error.message
    with pytest.raises(dg.DagsterUnknownPartitionError, match="nope"):
        run(defs, "build_bank", "nope|tiny", instance)
    from pipelines.core.config import ParamsError
    with pytest.raises(ParamsError, match="tasks.datasets"):
        build_definitions(str(tiny_params(tmp_path, tiny_model_dir, tasks={"datasets": ["imagenet"]})))


def test_retraining_waits_for_the_whole_bank_and_its_checks(tmp_path, tiny_model_dir, instance):
    defs = build_definitions(str(tiny_params(tmp_path, tiny_model_dir)), repo=str(tmp_path))
    pairs = dg.AssetKey("pairs")
    assert run(defs, "build_bank", BANK_KEYS[0], instance).success
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.get_requested_partitions(pairs) == set()  # one dataset slice is still missing
    assert run(defs, "build_bank", BANK_KEYS[1], instance).success
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.get_requested_partitions(pairs) == {MODEL}
