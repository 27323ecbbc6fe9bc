"""tasks -> generate -> attribute -> score through the CLI, on real tasks with the real SmolLM2."""

import math
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO


@pytest.mark.slow
def test_cli_builds_a_bank_with_smollm2(tmp_path, shared_datasets, smollm2_dir):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data_dir"] = str(tmp_path / "data")
    params["tasks"].update(source="local", local_dir=str(shared_datasets), datasets=["ecqa", "arc_easy"],
                           max_per_dataset=2)
    params["generate"].update(n_explanations=2, max_new_tokens_explanation=40)
    params["attribute"].update(methods=["lime", "lig"], n_samples=16, ig_steps=4)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    for stage in ("tasks", "generate", "attribute", "score"):
        done = subprocess.run([sys.executable, "-m", "pipelines", stage, "--params", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"[{stage} ecqa" in done.stdout and f"[{stage} arc_easy" in done.stdout
    slices = tmp_path / "data" / "smollm2-135m-instruct" / "bank"
    bank = pd.concat([pd.read_parquet(slices / dataset / "bank.parquet") for dataset in ("ecqa", "arc_easy")])
    own = bank[bank["kind"] == "own"]
    assert len(own) == 4 * 2 * 2  # tasks x methods x explanations
    # one counterfactual and one mismatched control per decision and method (each slice has two tasks)
    assert bank["kind"].value_counts().to_dict() == {"own": 16, "counterfactual": 8, "mismatched": 8}
    assert set(bank["dataset"]) == {"ecqa", "arc_easy"} and set(bank["model"]) == {"embedded:smollm2-135m-instruct"}
    expected_columns = {"id", "generation_id", "task_id", "dataset", "split", "method", "explanation_index", "correct",
                        "answer_label", "gold_label", "decision", "explanation", "n_features", "spearman", "cosine",
                        "kind", "control_source", "masks", "decision_seed", "explanation_seed", "n_samples",
                        "l1_dot", "kendall", "top_k_overlap", "decision_vector", "explanation_vector",
                        "feature_tokens", "model"}
    assert expected_columns <= set(bank.columns)
    assert bank["id"].is_unique
    for row in bank.itertuples():
        assert row.n_features > 20  # question, instruction and options of a real task
        assert len(row.decision_vector) == len(row.explanation_vector) == row.n_features
        assert all(math.isfinite(v) for v in [*row.decision_vector, *row.explanation_vector])
        assert any(v != 0 for v in row.decision_vector)
        for metric in ("spearman", "cosine", "l1_dot", "kendall", "top_k_overlap"):
            value = getattr(row, metric)
            assert math.isnan(value) or -1 <= value <= 1
    assert bank["spearman"].notna().all()
