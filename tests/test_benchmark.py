"""The attribution benchmark runs end to end (on the tiny model) and its exactness columns hold."""

import sys

from pipelines.core.config import AttributeParams
from pipelines.core.records import Choice, Task
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import attribution as benchmark  # noqa: E402

TASK = Task("t", "arc_easy", "train", "Which gas do plants absorb?",
            [Choice("A", "oxygen"), Choice("B", "carbon dioxide")], "B")


def test_benchmark_reports_every_case_with_stock_equal_values(tiny_model, tokenizer):
    params = AttributeParams(n_samples=8, ig_steps=3, batch_size=8)
    methods = ["feature_ablation", "lime", "lig"]
    results = benchmark.run(tiny_model, tokenizer, TASK, params, methods, lengths=(6, 12), record_explanations=2,
                            lime_500=False, stock_token_limit=4, batch_sizes=(1, 2))
    assert {(r["method"], r["target"]) for r in results["single"]} == \
        {(m, t) for m in methods for t in ("decision", "explanation-6", "explanation-12")}
    for row in results["single"] + results["record"]:
        assert row["ours_token_forwards"] > 0 and row["fraction_of_peak"] > 0
        if "max_relative_difference" in row:
            assert row["max_relative_difference"] < 1e-3
    assert any("stock_projected_from_tokens" in r for r in results["single"])  # lig on the 12-token target
    assert [r["method"] for r in results["record"]] == ["feature_ablation", "lime"]
    assert results["stock_default_path"]["seconds"] > 0
    assert "| lime |" in benchmark.markdown(results)


def test_fine_tune_benchmark_times_one_and_two_processes_on_the_same_steps(tiny_model_dir, tmp_path):
    import fine_tune

    results = fine_tune.run({"id": str(tiny_model_dir), "device": "cpu"}, [1, 2], steps=2, batch_size=2,
                            workdir=tmp_path)
    one, two = results["runs"]
    assert (one["processes"], two["processes"]) == (1, 2) and one["steps"] == two["steps"] == 2
    assert one["train_runtime_ratio"] == 1.0 and two["train_runtime_ratio"] > 0
    assert one["losses"][0] == two["losses"][0] == 0.6931  # DPO at step 1: the policy is its reference
    assert "| 2 | precomputed once | 2 |" in fine_tune.markdown(
        {**results, "model": {"id": "tiny"}, "machine": {"device": "cpu"}})


def test_fine_tune_benchmark_times_the_reference_pass_every_step_against_once(tiny_model_dir, tmp_path):
    import fine_tune

    results = fine_tune.run({"id": str(tiny_model_dir), "device": "cpu"}, [1], steps=2, batch_size=2,
                            workdir=tmp_path, precompute=(False, True), epochs=2)
    assert (results["pairs"], results["epochs"]) == (2, 2)
    every_step, once = results["runs"]
    assert (every_step["precompute_ref_log_probs"], once["precompute_ref_log_probs"]) == (False, True)
    assert every_step["seconds_per_step"] > 0 and once["train_runtime_ratio"] > 0
    assert every_step["losses"] == once["losses"]  # the same training either way (tests/test_train.py)
