"""The stages end to end on the tiny model: outputs, resume after a crash, and the documented handling
of empty explanations and undefined metrics."""

import argparse
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.attribution.engine import baseline_token_id
from pipelines.core.config import Params
from pipelines.core.records import Generation, read_records
from pipelines.stages import attribute, generate, score, tasks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params(tmp_path, tiny_model_dir, shared_datasets) -> Params:
    return Params.model_validate({
        "data_dir": str(tmp_path / "data"),
        "model": {"id": str(tiny_model_dir), "device": "cpu"},
        "tasks": {"source": "local", "local_dir": str(shared_datasets), "datasets": ["arc_challenge", "codah"],
                  "max_per_dataset": 3},
        "generate": {"n_explanations": 2, "max_new_tokens_decision": 5, "max_new_tokens_explanation": 6,
                     "tasks_per_chunk": 2},
        "attribute": {"methods": ["feature_ablation", "lime"], "n_samples": 10, "batch_size": 8},
    })


def test_stages_write_a_bank_pandas_reads(params):
    assert tasks.run(params, Path(params.data_dir))["tasks"] == 6
    assert generate.run(params, Path(params.data_dir))["generations"] == 6
    assert attribute.run(params, Path(params.data_dir))["attributions"] == 12
    summary = score.run(params, Path(params.data_dir))
    bank = pd.read_parquet(f"{params.data_dir}/bank.parquet")
    own = bank[bank["kind"] == "own"]
    assert len(own) == 6 * 2 * 2  # decisions x explanations x methods
    # per decision and method one counterfactual (every task has another option) and one mismatched control
    assert bank["kind"].value_counts().to_dict() == {"own": 24, "counterfactual": 12, "mismatched": 12}
    assert len(bank) == summary["rows"]
    lime = bank[bank["method"] == "lime"]
    assert set(lime["masks"]) == {"independent"} and (lime["decision_seed"] != lime["explanation_seed"]).all()
    assert lime.groupby("generation_id")["decision_seed"].nunique().eq(1).all()
    assert lime["decision_seed"].nunique() == 6  # one mask set per record, not one for the whole bank
    assert set(bank.loc[bank["method"] == "feature_ablation", "masks"]) == {"none"}
    mismatched = bank[bank["kind"] == "mismatched"]
    assert (mismatched["control_source"].str.rsplit("/", n=1).str[0] != mismatched["generation_id"]).all()
    assert set(bank["method"]) == {"feature_ablation", "lime"} and set(bank["dataset"]) == {"arc_challenge", "codah"}
    for row in bank.itertuples():
        assert len(row.decision_vector) == len(row.explanation_vector) == row.n_features == len(row.feature_tokens)
    for metric in ("spearman", "cosine", "l1_dot", "kendall", "top_k_overlap"):
        defined = bank[metric].dropna()
        assert defined.between(-1, 1).all()
    written = json.loads((Path(params.data_dir) / "score_summary.json").read_text())
    assert set(written["methods"]["lime"]) >= {"mean", "by_correctness", "spread", "undefined", "by_dataset",
                                                "null_floor", "diagnosticity", "warnings", "masks"}
    floor = written["methods"]["lime"]["null_floor"]["all"]["spearman"]
    scored = lime.dropna(subset=["spearman"]).groupby("generation_id")["kind"].agg(set)
    assert floor["observed_minus_floor"]["decisions"] == sum({"own", "mismatched"} <= kinds for kinds in scored) >= 4
    auroc = written["methods"]["lime"]["diagnosticity"]["all"]["spearman"]["auroc"]
    assert auroc["decisions"] == sum({"own", "counterfactual"} <= kinds for kinds in scored) >= 1
    assert 0 <= auroc["mean"] <= 1
    assert written["methods"]["lime"]["warnings"]  # 10 samples for ~50 features is below the stable level


def test_attribute_resumes_after_a_crash_with_every_record_once(params):
    tasks.run(params, Path(params.data_dir))
    generate.run(params, Path(params.data_dir))
    out = Path(params.data_dir) / "attributions.jsonl"
    with pytest.raises(RuntimeError, match="injected failure"):
        attribute.run(params, Path(params.data_dir), fail_after=5)
    first = list(read_records(out))
    assert len(first) == 5
    with open(out, "a") as handle:  # a kill in the middle of a write leaves a torn line
        handle.write('{"id": "arc_challenge/x/li')
    summary = attribute.run(params, Path(params.data_dir))
    rows = list(read_records(out))
    assert summary["new"] == 7 and len(rows) == 12
    assert len({r["id"] for r in rows}) == 12
    assert rows[:5] == first  # nothing already computed was lost or redone
    uninterrupted = params.model_copy(update={"data_dir": str(Path(params.data_dir).parent / "again")})
    Path(uninterrupted.data_dir).mkdir()
    for name in ("tasks.jsonl", "generations.jsonl"):
        (Path(uninterrupted.data_dir) / name).write_bytes((Path(params.data_dir) / name).read_bytes())
    attribute.run(uninterrupted, Path(uninterrupted.data_dir))
    assert (Path(uninterrupted.data_dir) / "attributions.jsonl").read_bytes() == out.read_bytes()


def test_sharded_attribute_merges_to_the_file_one_process_writes(params, tmp_path):
    """experiments/attribute_shard.py spreads a slice over processes; records depend only on their seeds."""
    spec = importlib.util.spec_from_file_location("attribute_shard", ROOT / "experiments" / "attribute_shard.py")
    sharding = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sharding)
    tasks.run(params, Path(params.data_dir))
    generate.run(params, Path(params.data_dir))
    data = Path(params.data_dir)
    files = []
    for index in range(2):
        shard = params.model_copy(update={"data_dir": str(tmp_path / f"shard-{index}")})
        Path(shard.data_dir).mkdir()
        (Path(shard.data_dir) / "generations.jsonl").write_bytes((data / "generations.jsonl").read_bytes())
        # 6 generations x 2 methods, halved
        assert attribute.run(shard, Path(shard.data_dir), shard=(index, 2))["new"] == 6
        files.append(str(Path(shard.data_dir) / "shards" / f"attributions-{index}-of-2.jsonl"))
    attribute.run(params, Path(params.data_dir))
    merged = tmp_path / "merged.jsonl"
    sharding.merge(argparse.Namespace(into=str(merged), order=str(data / "generations.jsonl"), shards=files))
    assert merged.read_bytes() == (data / "attributions.jsonl").read_bytes()


def test_generate_skips_tasks_already_written(params):
    tasks.run(params, Path(params.data_dir))
    first = generate.run(params, Path(params.data_dir))
    again = generate.run(params, Path(params.data_dir))
    assert first["new"] == 6 and again["new"] == 0 and again["generations"] == 6


def test_missing_input_says_what_to_run_first(params):
    with pytest.raises(FileNotFoundError, match="run `python -m pipelines tasks` first"):
        generate.run(params, Path(params.data_dir))
    with pytest.raises(FileNotFoundError, match="run `python -m pipelines generate` first"):
        attribute.run(params, Path(params.data_dir))


def test_empty_explanation_is_kept_with_a_zero_vector_and_undefined_metrics(params, tiny_model, tokenizer):
    tasks.run(params, Path(params.data_dir))
    generate.run(params, Path(params.data_dir))
    row = next(read_records(Path(params.data_dir) / "generations.jsonl"))
    generation = Generation.from_dict({**row, "explanations": ["", row["explanations"][1]],
                                       "explanation_ids": [[], row["explanation_ids"][1]]})
    record = attribute.attribute_generation(tiny_model, tokenizer, generation, "feature_ablation",
                                            params.attribute, params.seed)
    assert record.explanations[0] == [0.0] * len(record.decision)
    scored = score.score_attribution(record.__dict__, row | {"explanations": generation.explanations},
                                     params.score.metrics, params.score.top_k)
    assert all(math.isnan(scored[0][m]) for m in params.score.metrics)
    assert not math.isnan(scored[1]["cosine"])


def test_unknown_baseline_and_mismatched_vectors_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        baseline_token_id(tokenizer, 10**9)
    bad = {"id": "g/lime", "features": "first_user_message", "method": "lime", "feature_tokens": ["a", "b"],
           "decision": [1.0, 2.0], "explanation_feature_tokens": [["a"]], "explanations": [[1.0]]}
    generation = {"id": "g", "task": {"id": "t", "dataset": "d", "split": "train", "answer_label": "A"},
                  "correct": True, "answer_label": "A", "decision": "A", "explanations": ["x"], "model": {"id": "m"}}
    with pytest.raises(ValueError, match="record g/lime: explanation 0 has 1 features, the decision 2"):
        score.score_attribution(bad, generation, ("spearman",), 5)
    assert np.isnan(score.score_attribution({**bad, "explanations": [[3.0, 3.0]]}, generation, ("spearman",), 5)[0]["spearman"])


def test_released_code_modes_run_through_attribute_and_score(params):
    tasks.run(params, Path(params.data_dir))
    generate.run(params, Path(params.data_dir))
    compat = params.model_copy(update={"attribute": params.attribute.model_copy(
        update={"target": "first_position", "features": "string_aligned", "methods": ("feature_ablation",)})})
    attribute.run(compat, Path(compat.data_dir))
    rows = list(read_records(Path(params.data_dir) / "attributions.jsonl"))
    for row in rows:
        assert (row["target"], row["features"]) == ("first_position", "string_aligned")
        assert all(len(t) > len(row["feature_tokens"]) for t in row["explanation_feature_tokens"])  # whole prompts
        assert row["model"]["source"] == "local"
    score.run(compat, Path(compat.data_dir))
    bank = pd.read_parquet(Path(params.data_dir) / "bank.parquet")
    assert (bank["kind"] == "own").sum() == 12 and (bank["n_features"] == bank["feature_tokens"].map(len)).all()
    assert (bank["n_features"] == bank["decision_vector"].map(len)).all()
    assert bank["spearman"].dropna().between(-1, 1).all()


MEASURED = ROOT / "experiments" / "results" / "measurement" / "bank" / "arc_easy"


def measured_slice(folder: Path) -> Path:
    """The committed measurement slice (4 methods, controls) as the score stage reads it."""
    folder.mkdir(parents=True)
    (folder / "generations.jsonl").write_bytes((MEASURED / "generations.jsonl").read_bytes())
    (folder / "attributions.jsonl").write_bytes(b"".join(p.read_bytes()
                                                         for p in sorted(MEASURED.glob("attributions-*.jsonl"))))
    return folder


def test_a_bank_scored_in_chunks_is_the_frame_one_chunk_gives(tmp_path, monkeypatch):
    """Chunks of bank rows become row groups: the same frame, schema and summary as one chunk (the file
    `DataFrame.to_parquet` writes), and every seed exact (63-bit ints, never through a float column)."""
    import pyarrow.parquet as pq

    params = Params.model_validate({"data_dir": str(tmp_path)})
    whole, chunked = measured_slice(tmp_path / "whole"), measured_slice(tmp_path / "chunked")
    first = score.run(params, whole)
    monkeypatch.setattr(score, "CHUNK_ROWS", 97)
    second = score.run(params, chunked)
    a, b = pd.read_parquet(whole / "bank.parquet"), pd.read_parquet(chunked / "bank.parquet")
    pd.testing.assert_frame_equal(a, b)
    files = pq.ParquetFile(whole / "bank.parquet"), pq.ParquetFile(chunked / "bank.parquet")
    assert files[0].schema_arrow.equals(files[1].schema_arrow, check_metadata=True)
    assert files[0].num_row_groups == 1 and files[1].num_row_groups == 10 and len(a) == first["rows"] == 980
    assert {k: v for k, v in first.items() if k not in ("path", "seconds")} == \
        {k: v for k, v in second.items() if k not in ("path", "seconds")}
    seeds = {r["id"]: r["seeds"] or {} for r in read_records(whole / "attributions.jsonl")}
    record = a["id"].str.rsplit("/", n=1).str[0]
    for column, key in (("decision_seed", "decision"), ("explanation_seed", "explanations")):
        assert [None if pd.isna(v) else int(v) for v in a[column]] == [seeds[r].get(key) for r in record]


def test_a_bank_whose_first_chunk_has_no_controls_takes_their_type_from_a_later_one(tmp_path, monkeypatch):
    """A column all None in the first chunk (arrow's null type) is widened once a chunk has values: the rows
    already written are rewritten, and the file is the one a single chunk gives."""
    import pyarrow.parquet as pq

    params = Params.model_validate({"data_dir": str(tmp_path)})
    folders = measured_slice(tmp_path / "whole"), measured_slice(tmp_path / "chunked")
    for folder in folders:
        records = list(read_records(folder / "attributions.jsonl"))
        for record in records[:60]:
            record["controls"] = []
        (folder / "attributions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    score.run(params, folders[0])
    monkeypatch.setattr(score, "CHUNK_ROWS", 150)
    score.run(params, folders[1])
    pd.testing.assert_frame_equal(*(pd.read_parquet(f / "bank.parquet") for f in folders))
    schemas = [pq.ParquetFile(f / "bank.parquet").schema_arrow for f in folders]
    assert schemas[0].equals(schemas[1], check_metadata=True) and str(schemas[1].field("control_source").type) != "null"
