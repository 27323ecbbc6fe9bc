import math
from pathlib import Path

import pytest

from pipelines.core.config import PairParams
from pipelines.stages.pair import choose, make_pairs

NAN = float("nan")


@pytest.mark.parametrize("scores, params, expected", [
    ([(0, 0.1, "a"), (1, 0.9, "b"), (2, -0.3, "c")], PairParams(), (1, 2)),
    ([(0, NAN, "a"), (1, 0.2, "b"), (2, 0.5, "c")], PairParams(), (2, 1)),  # undefined scores never picked
    ([(0, 0.4, "a")], PairParams(), "fewer than two scored explanations"),
    ([(0, 0.4, "a"), (1, NAN, "")], PairParams(), "fewer than two scored explanations"),
    ([(0, 0.4, "a"), (1, 0.4, "b")], PairParams(), "tie"),
    ([(0, 0.4, "a"), (1, 0.4, "b")], PairParams(keep_ties=True), (0, 1)),  # the released code's behaviour
    ([(0, 0.9, "same"), (1, 0.1, " same ")], PairParams(), "tie"),  # identical texts teach nothing
    ([(0, 0.50, "a"), (1, 0.45, "b")], PairParams(min_margin=0.1), "below margin"),
    ([(0, 0.50, "a"), (1, 0.35, "b")], PairParams(min_margin=0.1), (0, 1)),
    ([(0, 0.7, "a"), (1, 0.7, "b"), (2, 0.1, "c")], PairParams(), (0, 2)),  # equal best: the earlier
])
def test_pair_rule(scores, params, expected):
    assert choose(scores, params) == expected


def generation(task_id, split):
    return {"id": task_id, "decision": "A) yes", "correct": True, "model": {"id": "m"},
            "task": {"id": task_id, "dataset": "arc_easy", "split": split, "question": "Q?",
                     "choices": [{"label": "A", "text": "yes"}, {"label": "B", "text": "no"}], "answer_label": "A",
                     "source": {}}}


def bank_rows(task_id, scores, method="lime", kind="own"):
    return [{"generation_id": task_id, "method": method, "kind": kind, "explanation_index": i, "spearman": s,
             "explanation": f"because {task_id} {i}" + ("" if kind == "own" else f" ({kind})")}
            for i, s in enumerate(scores)]


def test_control_rows_are_never_paired():
    generations = {"a": generation("a", "train")}
    rows = bank_rows("a", [0.1, 0.5]) + bank_rows("a", [0.9], kind="counterfactual") + \
        bank_rows("a", [-0.9], kind="mismatched")
    pairs, _ = make_pairs(rows, generations, "lime", PairParams())
    assert [(p["chosen_score"], p["rejected_score"]) for p in pairs] == [(0.5, 0.1)]


def test_pairs_follow_their_task_split_and_test_tasks_give_none():
    generations = {t: generation(t, split) for t, split in [("a", "train"), ("b", "eval"), ("c", "test")]}
    rows = bank_rows("a", [0.1, 0.5]) + bank_rows("b", [0.3, -0.2]) + bank_rows("c", [0.9, 0.0]) + \
        bank_rows("a", [0.0, 0.0], method="lig")
    pairs, dropped = make_pairs(rows, generations, "lime", PairParams())
    assert {(p["task_id"], p["split"]) for p in pairs} == {("a", "train"), ("b", "eval")}
    assert dropped == {"held-out test task": 1}
    train = next(p for p in pairs if p["split"] == "train")
    assert train["chosen"] == [{"role": "assistant", "content": "because a 1"}]
    assert train["rejected"] == [{"role": "assistant", "content": "because a 0"}]
    assert [m["role"] for m in train["prompt"]] == ["user", "assistant", "user"]
    assert train["prompt"][1]["content"] == "A) yes" and math.isclose(train["margin"], 0.4)


def test_empty_bank_and_bank_without_usable_pairs_are_clear_errors(tmp_path):
    import pandas as pd

    from pipelines.core.config import Params
    from pipelines.core.records import write_records
    from pipelines.stages import pair

    params = Params.model_validate({"data_dir": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="run `python -m pipelines score` first"):
        pair.run(params, Path(params.data_dir))
    pd.DataFrame(columns=["generation_id", "method", "explanation_index", "spearman", "explanation"]).to_parquet(
        tmp_path / "bank.parquet")
    with pytest.raises(ValueError, match="bank.parquet is empty"):
        pair.run(params, Path(params.data_dir))
    pd.DataFrame(bank_rows("a", [0.2, 0.2]) + bank_rows("b", [0.5, NAN])).to_parquet(tmp_path / "bank.parquet")
    write_records(tmp_path / "generations.jsonl", [generation("a", "train"), generation("b", "train")])
    with pytest.raises(ValueError, match=r"no usable training pairs \(\{'tie': 1, 'fewer than two scored"):
        pair.run(params, Path(params.data_dir))
    with pytest.raises(ValueError, match="no 'lig' attributions"):
        pair.run(params.model_copy(update={"pair": params.pair.model_copy(update={"method": "lig"})}),
                 Path(params.data_dir))


def test_the_stage_reads_the_bank_by_columns_and_writes_the_pairs_make_pairs_makes(tmp_path):
    """pair.run reads the bank's pairing columns a row group at a time and writes each pair as it is made:
    the files hold what make_pairs gives on the whole bank read as records, in the same order."""
    import json

    import pandas as pd

    from pipelines.core.config import Params
    from pipelines.core.records import read_records
    from pipelines.stages import pair, score
    from tests.test_stages import measured_slice

    params = Params.model_validate({"data_dir": str(tmp_path), "attribute": {"methods": ["feature_ablation"]}})
    folder = measured_slice(tmp_path / "arc_easy")
    score.run(params, folder)
    generations = {g["id"]: g for g in read_records(folder / "generations.jsonl")}
    for preference in ("alignment", "shorter"):
        own = params.model_copy(update={"pair": params.pair.model_copy(update={"preference": preference})})
        summary = pair.run(own, tmp_path / preference, slices=[folder])
        expected, dropped = make_pairs(pd.read_parquet(folder / "bank.parquet").to_dict("records"), generations,
                                       "feature_ablation", own.pair)
        for split in ("train", "eval"):
            written = (tmp_path / preference / "pairs" / f"{split}.jsonl").read_text()
            assert written == "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in expected if p["split"] == split)
            assert summary[split]["pairs"] == sum(p["split"] == split for p in expected) > 0
        assert summary["dropped"] == dict(dropped)
    cosine_less = params.model_copy(update={"score": params.score.model_copy(update={"metrics": ("cosine",)})})
    score.run(cosine_less, folder)
    with pytest.raises(ValueError, match="has no 'spearman' scores: add it to score.metrics"):
        pair.run(cosine_less, tmp_path / "none", slices=[folder])
