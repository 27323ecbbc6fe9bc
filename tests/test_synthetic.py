"""The known-answer world: the generator, the ground-truth labeler, its params, and the instrument figures on
constructed banks whose answer is known (a working measure, and a control that must fail it)."""

import random

import numpy as np
import pandas as pd
import pytest

from pipelines.analysis.metrics import metric_functions
from pipelines.core.config import Params, ParamsError, SyntheticParams, TasksParams, load_params
from pipelines.stages.tasks import build_tasks, load_rows
from pipelines.synthetic.validation import (
    dose_response,
    pair_precision,
    shuffled_control,
    within_decision_auroc,
)
from pipelines.synthetic.world import label_explanation, make_rows, parse_question

SOURCE = TasksParams(source="synthetic", datasets=("synthetic",))


def test_the_same_seed_makes_the_same_world_and_another_seed_another():
    world = SyntheticParams(questions=50)
    assert make_rows(world, 7) == make_rows(world, 7)
    assert make_rows(world, 7) != make_rows(world, 8)


@pytest.mark.parametrize("facts, options", [(4, 4), (6, 3), (2, 2)])
def test_every_question_has_well_formed_facts_and_exactly_one_cue_among_its_options(facts, options):
    world = SyntheticParams(questions=200, facts=facts, options=options, objects=12, attributes=8)
    for row in make_rows(world, 3):
        stated, cue = parse_question(row["question"])  # raises unless exactly one fact names the asked attribute
        assert len(stated) == facts
        assert len({f.object for f in stated}) == facts and len({f.attribute for f in stated}) == facts
        texts = {c["label"]: c["text"] for c in row["choices"]}
        assert len(texts) == options and set(texts.values()) <= {f.object for f in stated}
        assert texts[row["answerKey"]] == cue.object


def test_the_synthetic_source_gives_tasks_with_the_usual_schema_and_splits():
    tasks, skipped = build_tasks("synthetic", *load_rows("synthetic", SOURCE, SyntheticParams(questions=100), 42),
                                 SOURCE, 42)
    assert not skipped and len(tasks) == 100 and tasks[0].id.startswith("synthetic/")
    assert {t.split for t in tasks} == {"train", "eval", "test"}
    assert tasks[0].source["source"] == "synthetic" and tasks[0].source["seed"] == 42


def test_the_labeler_names_the_fact_an_explanation_restates():
    question = "Which object is red? The cup is red. The box is blue. The pen is green."
    assert label_explanation(question, "The cup is red .") is True
    assert label_explanation(question, "Because the box is blue.") is False
    assert label_explanation(question, "The cup is blue.") is None  # restates no stated fact
    assert label_explanation(question, "The cup is red and the pen is green.") is None  # both kinds
    assert label_explanation(question, "") is None
    with pytest.raises(ValueError, match="not a known-answer question"):
        label_explanation("Which gas do plants absorb?", "Carbon dioxide.")


@pytest.mark.parametrize("values, message", [
    ({"facts": 3, "options": 4}, "synthetic.options"),
    ({"objects": 0}, "synthetic.objects"),
    ({"facts": 9, "attributes": 8}, "synthetic.attributes"),
    ({"objects": 99}, "synthetic.objects"),
])
def test_bad_world_params_are_rejected_with_the_key_path(tmp_path, values, message):
    path = tmp_path / "params.yaml"
    path.write_text("synthetic:\n" + "".join(f"  {k}: {v}\n" for k, v in values.items()))
    with pytest.raises(ParamsError, match=message):
        load_params(path)


def test_the_synthetic_dataset_is_the_synthetic_sources_only_one():
    with pytest.raises(ValueError, match="synthetic dataset is the synthetic source's only one"):
        load_rows("arc_easy", SOURCE)
    assert Params.model_validate({"model": {"id": "synthetic:known-answer"}}).model.world is not None


def constructed_bank(decisions: int, informative: bool, seed: int = 0) -> pd.DataFrame:
    """k = 5 explanations per decision over 12 features; a faithful explanation's vector shares the decision's
    important features (noise otherwise), an unfaithful one puts weight elsewhere."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(decisions):
        d = rng.normal(size=12)
        for i in range(5):
            faithful = [True, False, True, None, False][i] if i != 4 or g % 2 else True
            signal = d if (faithful and informative) else rng.normal(size=12)
            e = signal + 0.5 * rng.normal(size=12)
            rows.append({"generation_id": f"g{g}", "kind": "own", "faithful": faithful,
                         "decision_vector": d.tolist(), "explanation_vector": e.tolist(),
                         "spearman": metric_functions(5)["spearman"](d, e)})
    return pd.DataFrame(rows)


def test_a_measure_that_sees_the_planted_signal_passes_and_its_shuffled_control_falls_to_chance():
    bank = constructed_bank(60, informative=True)
    seen = within_decision_auroc(bank, "spearman", 500, 1)
    assert seen["auroc"] > 0.9 and seen["decisions"] == 60 and seen["ci95"][0] > 0.8
    shuffled = shuffled_control(bank, metric_functions(5)["spearman"], "spearman", 500, 1)
    assert abs(shuffled["auroc"] - 0.5) < 0.15  # the vectors of another decision carry no signal
    blind = within_decision_auroc(constructed_bank(60, informative=False), "spearman", 500, 1)
    assert abs(blind["auroc"] - 0.5) < 0.15
    slope = dose_response(bank, "spearman", 300, 1)
    assert slope["slope"] > 0 and slope["ci95"][0] > 0


def test_pair_precision_counts_faithful_over_unfaithful():
    question = "Which object is red? The cup is red. The box is blue."
    generations = {"t": {"task": {"question": question}}}

    def pair(chosen, rejected):
        return {"task_id": "t", "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    pairs = [pair("The cup is red.", "The box is blue."), pair("The box is blue.", "The cup is red."),
             pair("The cup is red.", "Hm.")]
    random.Random(0).shuffle(pairs)
    assert pair_precision(pairs, generations) == {"pairs": 3, "precision": 0.3333, "reversed": 0.3333}


def test_the_model_build_is_deterministic_and_runs_through_the_stages_unchanged(tmp_path):
    """A few steps of the recipe (the real one takes minutes): the same bytes from the same seed, its own
    tokenizer and chat template, and tasks -> generate -> attribute -> score on it with ground-truth labels."""
    import json
    from pathlib import Path

    from pipelines.core.records import read_records
    from pipelines.stages import attribute, generate, score, tasks
    from pipelines.synthetic.model import known_answer_model
    from pipelines.synthetic.validation import faithful_labels

    world = SyntheticParams(questions=40, model={"steps": 3, "batch_size": 4, "hidden": 32,
                                                 "heads": 2, "layers": 1})
    first, identity = known_answer_model(world, 5, tmp_path / "a")
    again, same = known_answer_model(world, 5, tmp_path / "b")
    assert identity["sha256"] == same["sha256"] and (first / "model.safetensors").read_bytes() == \
        (again / "model.safetensors").read_bytes()
    assert known_answer_model(world.model_copy(update={"p_faithful": 0.9}), 5, tmp_path / "a")[1]["sha256"] != \
        identity["sha256"]  # another recipe, another cached model
    params = Params.model_validate({
        "data_dir": str(tmp_path / "data"), "seed": 5,
        "model": {"id": "synthetic:known-answer", "device": "cpu", "cache_dir": str(tmp_path / "a")},
        "synthetic": world.model_dump(), "tasks": {"source": "synthetic", "datasets": ["synthetic"],
                                                   "max_per_dataset": 4},
        "generate": {"n_explanations": 2, "max_new_tokens_decision": 3, "max_new_tokens_explanation": 6},
        "attribute": {"methods": ["input_x_gradient"], "null_explanations": 1}})
    folder = Path(params.data_dir)
    tasks.run(params, folder)
    generate.run(params, folder)
    attribute.run(params, folder)
    score.run(params, folder)
    generations = {r["id"]: r for r in read_records(folder / "generations.jsonl")}
    assert all(r["model"]["source"] == "synthetic" for r in generations.values())
    bank = faithful_labels(pd.read_parquet(folder / "bank.parquet"), generations)
    assert len(bank) and set(bank["faithful"].map(repr)) <= {"True", "False", "None"}
    own = bank[(bank["kind"] == "own") & (bank["method"] == "input_x_gradient")]
    counted = json.loads((folder / "score_summary.json").read_text())["methods"]["input_x_gradient"]["ground_truth"]
    assert counted == {"faithful": int((own["faithful"] == True).sum()),  # noqa: E712
                       "unfaithful": int((own["faithful"] == False).sum()),  # noqa: E712
                       "neither": int(own["faithful"].isna().sum())}
    assert json.loads((first / "pscb_training.json").read_text())["history"]


# the pilot world of docs/known-answer.md: 3 facts, 3 options, 6 objects, 6 attributes; 500 steps of 32
# questions train it in about 100 s on one thread, with held-out accuracy 1.0 from step 200
PILOT = {"questions": 120, "facts": 3, "options": 3, "objects": 6, "attributes": 6,
         "model": {"steps": 500, "batch_size": 32}}
WORKING_AUROC = 0.9  # what a working instrument reaches with its best method and metric (issue 20)


def test_the_known_answer_bank_sees_the_planted_signal_and_a_shuffled_control_does_not(tmp_path):
    """The real pipeline on a model trained here: its decisions answer through the cue, its explanations restate
    the cue or a distractor, and feature ablation's cosine ranks the faithful ones first within each decision.
    The same bank with every decision's vector swapped for another decision's must fail that threshold
    (docs/known-answer.md)."""
    from pathlib import Path

    from pipelines.core.records import read_records
    from pipelines.stages import attribute, generate, score, tasks
    from pipelines.synthetic.validation import faithful_labels, own_rows

    params = Params.model_validate({
        "data_dir": str(tmp_path / "data"), "seed": 42,
        "model": {"id": "synthetic:known-answer", "device": "cpu", "cache_dir": str(tmp_path / "cache")},
        "synthetic": PILOT, "tasks": {"source": "synthetic", "datasets": ["synthetic"], "max_per_dataset": 40},
        "generate": {"n_explanations": 5, "max_new_tokens_decision": 4, "max_new_tokens_explanation": 6},
        "attribute": {"methods": ["feature_ablation"], "null_explanations": 0}})
    folder = Path(params.data_dir)
    for stage in (tasks, generate, attribute, score):
        stage.run(params, folder)
    generations = {r["id"]: r for r in read_records(folder / "generations.jsonl")}
    assert np.mean([g["correct"] for g in generations.values()]) >= 0.95  # it answers through the cue
    bank = faithful_labels(pd.read_parquet(folder / "bank.parquet"), generations)
    cosine = metric_functions(5)["cosine"]

    own = own_rows(bank, "feature_ablation")
    seen = within_decision_auroc(own, "cosine", 500, 0)
    assert seen["decisions"] >= 15 and seen["auroc"] >= WORKING_AUROC and seen["ci95"][0] > 0.8
    shuffled = shuffled_control(own, cosine, "cosine", 500, 0)
    assert shuffled["decisions"] == seen["decisions"] and shuffled["auroc"] < WORKING_AUROC
    assert abs(shuffled["auroc"] - 0.5) < 0.2
    assert dose_response(own, "cosine", 300, 0)["ci95"][0] > 0
