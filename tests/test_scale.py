"""benchmarks/scale.py: replicas of a real bank slice through score and pair via the CLI. CI runs the 1K row
(about a minute here); the 10K and 100K rows run outside CI. Figures are checked for their shape, never
their times."""

import json
import sys

from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import load_params
from pipelines.core.records import read_records
from pipelines.runner.checked import check
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import scale  # noqa: E402

SOURCE_DECISIONS = 290  # experiments/results/powered/bank/ecqa


def test_a_replica_has_fresh_ids_and_records_its_params_accept(tmp_path):
    folder = tmp_path / "data" / scale.MODEL / "bank" / scale.DATASET
    sizes = scale.make_replica(folder, 2 * SOURCE_DECISIONS + 20, controls=True)
    generations = list(read_records(folder / "generations.jsonl"))
    attributions = list(read_records(folder / "attributions.jsonl"))
    ids = [g["id"] for g in generations]
    assert len(ids) == len(set(ids)) == 600 and sizes["decisions"] == 600
    assert ids[0].endswith("-r0") and ids[-1].endswith("-r2") and ids[SOURCE_DECISIONS].endswith("-r1")
    assert [a["generation_id"] for a in attributions] == ids and all(g["task"]["id"] == g["id"] for g in generations)
    for attribution in attributions:
        kinds = [c["kind"] for c in attribution["controls"]]
        assert kinds == ["counterfactual", "mismatched"] and attribution["controls"][1]["source"].rsplit("/", 1)[0] in ids
        assert all(len(c["vector"]) == len(attribution["decision"]) for c in attribution["controls"])
    params = load_params(scale.write_params(tmp_path / "params.yaml", tmp_path / "data", controls=True))
    for name in ("generations", "attributions"):  # the suites the score stage runs on what it reads
        assert all(report.success for _, report in check(ARTIFACTS[name], params, folder))
    plain = tmp_path / "plain"
    scale.make_replica(plain, 10, controls=False)
    assert all(not a["controls"] for a in read_records(plain / "attributions.jsonl"))


def test_the_1k_row_runs_score_and_pair_through_the_cli_and_the_figures_have_their_shape(tmp_path):
    row = scale.measure(1000, True, tmp_path / "work", REPO)
    assert (row["decisions"], row["controls"], row["bank_rows"]) == (1000, True, 7000) and row["pairs"] > 0
    assert row["attributions_mb"] > 0
    for stage in scale.STAGES:
        figures = row[stage]
        assert set(figures) == {"seconds", "peak_rss_mb", "ms_per_decision", "rss_over_attributions"}
        assert figures["seconds"] > 0 and figures["peak_rss_mb"] > 0
    assert not (tmp_path / "work" / "1000-controls").exists()  # a replica is removed once measured
    smaller = {**row, "decisions": 500}
    results = {"source": "experiments/results/powered/bank/ecqa", "machine": {"cpus": 2, "python": "3.11"},
               "runs": {"after": {"rows": [smaller, row], "growth": scale.growth([smaller, row])},
                        "before": {"rows": [row], "growth": {}}}}
    results["comparison"] = scale.comparison(results)
    growth = results["runs"]["after"]["growth"]["controls/score/seconds"]
    assert set(growth) == {"all_sizes", "largest_two", "sizes"} and growth["sizes"] == [500, 1000]
    assert results["comparison"][0]["score_speedup"] == 1.0
    table = scale.markdown(results)
    assert "| after | 1,000 | on | " in table and "| before | 1,000 | on | " in table and "| 1,000 | on | 1.0x |" in table


def test_the_committed_figures_hold_the_100k_rows_before_and_after():
    results = json.loads((REPO / "benchmarks" / "results" / "scale.json").read_text())
    assert (REPO / "benchmarks" / "results" / "scale.md").read_text() == scale.markdown(results)
    after = {(r["decisions"], r["controls"]) for r in results["runs"]["after"]["rows"]}
    assert {(n, c) for n in (1000, 10000, 100000) for c in (False, True)} <= after
    assert {(n, c) for n in (1000, 10000) for c in (False, True)} <= {
        (r["decisions"], r["controls"]) for r in results["runs"]["before"]["rows"]}
    assert scale.ISSUE_LABEL in results["runs"] and results["comparison"]
