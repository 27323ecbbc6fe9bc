"""A resumed stage never mixes records made under two settings (pipelines/core/provenance.py): a change of a
record-determining value restarts the output, a batch size does not, and a killed run keeps its fingerprint."""

import json
from pathlib import Path

import pytest

from pipelines.core.config import Params
from pipelines.core.provenance import changed_keys, method_settings
from pipelines.core.records import read_records
from pipelines.stages import attribute, generate, tasks


@pytest.fixture
def params(tmp_path, tiny_model_dir, shared_datasets) -> Params:
    return Params.model_validate({
        "data_dir": str(tmp_path / "data"),
        "model": {"name": "tiny", "id": str(tiny_model_dir), "device": "cpu"},
        "tasks": {"source": "local", "local_dir": str(shared_datasets), "datasets": ["arc_challenge"],
                  "max_per_dataset": 3},
        "generate": {"n_explanations": 2, "max_new_tokens_decision": 4, "max_new_tokens_explanation": 5,
                     "tasks_per_chunk": 2},
        "attribute": {"methods": ["input_x_gradient", "feature_ablation"], "null_explanations": 1, "batch_size": 8},
    })


def slice_of(params: Params) -> Path:
    folder = Path(params.data_dir) / "tiny" / "bank" / "arc_challenge"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def edited(params: Params, section: str, **values) -> Params:
    return params.model_copy(update={section: getattr(params, section).model_copy(update=values)})


def test_a_record_determining_change_restarts_generate_and_a_batch_size_does_not(params):
    folder = slice_of(params)
    tasks.run(params, folder)
    first = generate.run(params, folder)
    out = folder / "generations.jsonl"
    made = out.read_bytes()
    faster = generate.run(edited(params, "generate", batch_size=3, tasks_per_chunk=1), folder)
    assert faster["new"] == 0 and faster["restarted_for"] == [] and out.read_bytes() == made
    hotter = edited(params, "generate", temperature=1.3)
    again = generate.run(hotter, folder)
    assert again["new"] == first["generations"] == 3
    assert again["restarted_for"] == ["generate.temperature"]
    assert {r["settings"]["temperature"] for r in read_records(out)} == {1.3}
    stale = Path(params.data_dir) / "tiny" / "rejected" / "stale" / "bank" / "arc_challenge" / "generations.jsonl"
    assert stale.read_bytes() == made  # set aside, not deleted
    # the same bytes as a run that never saw temperature 0.7
    clean = hotter.model_copy(update={"data_dir": str(Path(params.data_dir).parent / "clean")})
    tasks.run(clean, slice_of(clean))
    generate.run(clean, slice_of(clean))
    assert (slice_of(clean) / "generations.jsonl").read_bytes() == out.read_bytes()


def test_attribute_restarts_for_its_methods_settings_and_for_new_generations_only(params):
    folder = slice_of(params)
    tasks.run(params, folder)
    generate.run(params, folder)
    attribute.run(params, folder)
    out = folder / "attributions.jsonl"
    made = out.read_bytes()
    # neither method samples, and neither is LIG: n_samples, lime_alpha and ig_steps change no record
    idle = edited(params, "attribute", n_samples=64, lime_alpha=0.5, ig_steps=7, batch_size=3, memory_budget_mb=100)
    assert attribute.run(idle, folder)["new"] == 0 and out.read_bytes() == made
    moved = attribute.run(edited(params, "attribute", target="first_position"), folder)
    assert moved["restarted_for"] == ["attribute.feature_ablation.target"] and moved["new"] == 6  # feature ablation's target changed
    assert {r["settings"]["target"] for r in read_records(out)} == {"first_position"}
    attribute.run(params, folder)  # back to the sequence target: a restart again, never a mix
    assert out.read_bytes() == made
    generate.run(edited(params, "generate", top_p=0.5), folder)
    regenerated = attribute.run(params, folder)
    assert regenerated["restarted_for"] == ["inputs.generations.jsonl"] and regenerated["new"] == 6


def test_a_run_killed_under_new_settings_is_not_resumed_under_the_old(params):
    folder = slice_of(params)
    tasks.run(params, folder)
    generate.run(params, folder)
    attribute.run(params, folder)
    made = (folder / "attributions.jsonl").read_bytes()
    shared = edited(params, "attribute", baseline_token="eos")
    with pytest.raises(RuntimeError, match="injected failure"):
        attribute.run(shared, folder, fail_after=2)
    assert len(list(read_records(folder / "attributions.jsonl"))) == 2
    resumed = attribute.run(params, folder)
    assert resumed["restarted_for"] == ["attribute.feature_ablation.baseline_token",
                                       "attribute.input_x_gradient.baseline_token"] and (folder / "attributions.jsonl").read_bytes() == made


def test_records_from_before_fingerprints_are_kept_only_when_their_settings_match(params):
    folder = slice_of(params)
    tasks.run(params, folder)
    generate.run(params, folder)
    summary = folder / "generations_summary.json"
    legacy = {k: v for k, v in json.loads(summary.read_text()).items() if k != "fingerprint"}
    summary.write_text(json.dumps(legacy))
    assert generate.run(params, folder)["new"] == 0  # adopted: every record's settings are this run's
    summary.write_text(json.dumps(legacy))
    assert generate.run(edited(params, "generate", n_explanations=3), folder)["restarted_for"] == \
        ["generate.n_explanations"]


def test_method_settings_name_only_what_the_method_reads(params):
    lime = edited(params, "attribute", methods=("lime", "lig"))
    assert {"n_samples", "masks", "lime_alpha", "target"} <= set(method_settings(lime.attribute, lime.seed, "lime"))
    assert "ig_steps" not in method_settings(lime.attribute, lime.seed, "lime")
    assert {"ig_steps"} <= set(method_settings(lime.attribute, lime.seed, "lig")) and "target" not in method_settings(lime.attribute, lime.seed, "lig")
    assert not {"batch_size", "memory_budget_mb", "methods"} & set(method_settings(lime.attribute, lime.seed, "lime"))
    assert changed_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]


def test_a_file_mixed_by_hand_fails_its_suite_naming_the_record(params):
    from pipelines.core.artifacts import ARTIFACTS
    from pipelines.runner.checked import ArtifactInvalid, check

    folder = slice_of(params)
    tasks.run(params, folder)
    generate.run(params, folder)
    out = folder / "generations.jsonl"
    rows = list(read_records(out))
    rows[1]["settings"]["temperature"] = 1.3
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ArtifactInvalid, match=f"settings_match_params: 1 unexpected, rows {rows[1]['id']}"):
        check(ARTIFACTS["generations"], params, folder)


@pytest.mark.parametrize("stage", ["generate", "attribute", "train"])
def test_dvc_reruns_a_resumable_stage_for_record_determining_params_only(stage):
    """dvc.yaml lists the same keys the fingerprint holds: a batch-size edit leaves `dvc status` clean."""
    import yaml

    from pipelines.core.provenance import NOT_RECORD_DETERMINING

    body = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"][stage]
    declared = {p for p in (body.get("do") or body)["params"] if p.startswith(f"{stage}.")}
    section = type(getattr(Params(), stage))
    kept = {"methods", "algorithms"}  # dvc reruns the stage for them; the fingerprint holds them per record
    assert declared == {f"{stage}.{k}" for k in section.model_fields
                        if k not in NOT_RECORD_DETERMINING[stage] or k in kept}


def test_the_cli_recomputes_after_a_record_determining_set_and_not_after_a_batch_size(tmp_path, tiny_model_dir):
    """The issue's reproduction through `python -m pipelines`: --set generate.temperature recomputes (the old
    file set aside), --set generate.batch_size does not."""
    import subprocess
    import sys

    from tests.conftest import REPO, tiny_params

    path = tiny_params(tmp_path, tiny_model_dir, tasks={"datasets": ["arc_easy"], "max_per_dataset": 3})
    out = tmp_path / "data" / "tiny" / "bank" / "arc_easy" / "generations.jsonl"

    def cli(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "pipelines", *args, "--params", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        summary = out.parent / "generations_summary.json"
        return json.loads(summary.read_text()) if summary.exists() else {}

    cli("tasks")
    made = cli("generate")["fingerprint"]
    before = out.read_bytes()
    assert cli("generate", "--set", "generate.batch_size=2")["new"] == 0 and out.read_bytes() == before
    hotter = cli("generate", "--set", "generate.temperature=1.3")
    assert hotter["new"] == 3 and hotter["restarted_for"] == ["generate.temperature"] and hotter["fingerprint"] != made
    assert (tmp_path / "data" / "tiny" / "rejected" / "stale" / "bank" / "arc_easy" / "generations.jsonl"
            ).read_bytes() == before
