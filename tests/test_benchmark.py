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
