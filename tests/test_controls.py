"""The trust figures: seeds that name their draw, the null floor and the diagnosticity AUROC, checked
against scipy / scikit-learn on constructed banks, and the counterfactual explanation of generate."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from pipelines.analysis.controls import (
    auroc,
    bootstrap_ci,
    control_summary,
    diagnosticity,
    null_floor,
)
from pipelines.attribution.engine import record_seeds
from pipelines.core.records import Choice, Generation, Task
from pipelines.core.seeds import derive_seed
from pipelines.stages.attribute import control_targets


def test_seeds_depend_on_the_draw_only():
    assert derive_seed(42, "arc_easy/q1", "lime", "decision") == derive_seed(42, "arc_easy/q1", "lime", "decision")
    seeds = {derive_seed(s, r, m, role) for s in (42, 43) for r in ("a/1", "a/2") for m in ("lime", "kernel_shap")
             for role in ("decision", "explanations")}
    assert len(seeds) == 16 and all(0 <= s < 2**63 for s in seeds)
    assert record_seeds(42, "a/1", "feature_ablation", "independent") is None
    shared, independent = record_seeds(42, "a/1", "lime", "shared"), record_seeds(42, "a/1", "lime", "independent")
    assert shared[0] == shared[1] == independent[1] != independent[0]


def test_auroc_equals_scikit_learn_and_mann_whitney():
    rng = np.random.default_rng(0)
    for _ in range(20):
        own, other = rng.integers(0, 4, 5).astype(float), rng.integers(0, 4, 3).astype(float)  # ties included
        expected = roc_auc_score([1] * 5 + [0] * 3, np.concatenate([own, other]))
        assert auroc(own, other) == pytest.approx(expected)
        assert auroc(own, other) == pytest.approx(mannwhitneyu(own, other).statistic / 15)
    assert np.isnan(auroc(np.array([0.1]), np.array([np.nan])))


def bank(rows_per_decision):
    rows = []
    for n, (own, mismatched, counterfactual) in enumerate(rows_per_decision):
        for kind, values in (("own", own), ("mismatched", mismatched), ("counterfactual", counterfactual)):
            rows += [{"generation_id": f"g{n}", "dataset": "arc_easy" if n % 2 else "ecqa", "kind": kind,
                      "spearman": v} for v in values]
    return pd.DataFrame(rows)


def test_null_floor_and_diagnosticity_on_a_constructed_bank():
    rng = np.random.default_rng(1)
    decisions = [(rng.normal(0.3, 0.1, 5), rng.normal(0.1, 0.1, 2), rng.normal(0.0, 0.1, 1)) for _ in range(40)]
    table = bank(decisions)
    floor = null_floor(table, "spearman", 500, 0)
    differences = [own.mean() - mismatched.mean() for own, mismatched, _ in decisions]
    assert floor["observed_minus_floor"]["mean"] == pytest.approx(np.mean(differences), abs=1e-4)
    assert floor["observed"]["mean"] == pytest.approx(np.mean([o.mean() for o, _, _ in decisions]), abs=1e-4)
    low, high = floor["observed_minus_floor"]["ci95"]
    assert low < np.mean(differences) < high and low > 0
    expected = np.mean([roc_auc_score([1] * 5 + [0], np.concatenate([o, c])) for o, _, c in decisions])
    result = diagnosticity(table, "spearman", 500, 0)["auroc"]
    assert result["mean"] == pytest.approx(expected, abs=1e-4) and result["decisions"] == 40
    assert result["ci95"][0] > 0.5


def test_a_metric_blind_to_the_explanation_has_auroc_near_one_half_and_no_margin_over_its_floor():
    rng = np.random.default_rng(2)
    table = bank([(rng.normal(0.3, 0.1, 5), rng.normal(0.3, 0.1, 1), rng.normal(0.3, 0.1, 1)) for _ in range(200)])
    summary = control_summary(table, ("spearman",), 500, 0)
    floor = summary["null_floor"]["all"]["spearman"]["observed_minus_floor"]
    auc = summary["diagnosticity"]["all"]["spearman"]["auroc"]
    assert floor["ci95"][0] < 0 < floor["ci95"][1]
    assert auc["ci95"][0] < 0.5 < auc["ci95"][1]
    assert set(summary["null_floor"]) == {"all", "arc_easy", "ecqa"}


def test_decisions_without_controls_or_scores_are_left_out_not_zero():
    table = bank([([0.2, np.nan], [], []), ([0.4, 0.5], [0.1], [0.6])])
    assert null_floor(table, "spearman", 200, 0)["observed_minus_floor"]["decisions"] == 1
    # own 0.4 and 0.5 both below the counterfactual 0.6
    assert diagnosticity(table, "spearman", 200, 0)["auroc"] == {"mean": 0.0, "ci95": None, "decisions": 1}
    assert control_summary(table[table["kind"] == "own"], ("spearman",), 200, 0) == {"controls": 0}
    assert bootstrap_ci(np.array([1.0, np.nan]), 200, 0) is None


TASK = Task("arc_easy/q1", "arc_easy", "train", "Which gas?", [Choice("A", "oxygen"), Choice("B", "carbon dioxide")],
            "B")


def generation(task, explanations, counterfactual=None):
    return Generation(id=task.id, task=task, decision="B) carbon dioxide", decision_ids=[1], answer_label="B",
                      parse_status="letter", correct=True, explanations=explanations,
                      explanation_ids=[[7] * len(e.split()) for e in explanations], seeds=[42, 42],
                      model={"id": "tiny"}, settings={}, counterfactual=counterfactual)


def test_controls_are_chosen_by_identity_not_by_order():
    others = [generation(Task(f"arc_easy/q{n}", "arc_easy", "train", "Q?", TASK.choices, "A"), [f"text {n}", ""])
              for n in range(2, 8)]
    own = generation(TASK, ["mine"], {"label": "A", "decision": "A) oxygen", "explanation": "because air",
                                      "explanation_ids": [3, 4], "seed": 43})
    controls = control_targets(own, others, 2, seed=42)
    assert [c["kind"] for c in controls] == ["counterfactual", "mismatched", "mismatched"]
    assert controls[0]["source"] == "A" and controls[0]["ids"] == [3, 4]
    assert control_targets(own, list(reversed(others)) + [own], 2, seed=42) == controls
    assert all(c["text"] for c in controls[1:])  # an empty explanation is never a null control
    assert control_targets(generation(TASK, ["mine"]), others, 0, seed=42) == []


def test_counterfactual_explanations_follow_a_forced_other_option(tiny_model, tokenizer):
    from pipelines.core.config import GenerateParams
    from pipelines.stages.generate import generate

    one_option = Task("arc_easy/q9", "arc_easy", "train", "Only one?", [Choice("A", "yes")], "A")
    params = GenerateParams(n_explanations=2, max_new_tokens_decision=4, max_new_tokens_explanation=5, batch_size=4)
    records = generate(tiny_model, tokenizer, [TASK, one_option], params, seed=42, identity={"id": "tiny"})
    made = records[0].counterfactual
    assert made["label"] in {"A", "B"} and made["label"] != records[0].answer_label
    assert made["decision"] == f"{made['label']}) " + {"A": "oxygen", "B": "carbon dioxide"}[made["label"]]
    assert made["seed"] == 44 and made["explanation"] == tokenizer.decode(made["explanation_ids"],
                                                                          skip_special_tokens=True).strip()
    assert records[1].counterfactual == {"label": None, "reason": "no other option"}
    alone = generate(tiny_model, tokenizer, [TASK], params, seed=42, identity={"id": "tiny"})[0]
    assert alone.counterfactual == made  # the same whatever else is in the batch
    off = generate(tiny_model, tokenizer, [TASK], params.model_copy(update={"counterfactual": False}), seed=42,
                   identity={"id": "tiny"})[0]
    assert off.counterfactual is None and off.explanations == records[0].explanations


def reference_summary(table, metric, samples, seed):
    """The null floor and diagnosticity decision by decision, as the score stage computed them before they
    ran over arrays: the vectorized ones must give the same figures."""
    def estimate(values):
        values = np.asarray(values, float)
        defined = values[~np.isnan(values)]
        ci = None
        if len(defined) >= 2:
            means = np.random.default_rng(seed).choice(defined, (samples, len(defined))).mean(1)
            ci = round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)
        return {"mean": round(float(defined.mean()), 4) if len(defined) else None, "ci95": ci,
                "decisions": int(len(defined))}

    own, floor, difference, aurocs = [], [], [], []
    for _, rows in table.groupby("generation_id"):
        a = rows.loc[rows["kind"] == "own", metric].mean()
        b = rows.loc[rows["kind"] == "mismatched", metric].mean()
        aurocs.append(auroc(rows.loc[rows["kind"] == "own", metric].to_numpy(float),
                            rows.loc[rows["kind"] == "counterfactual", metric].to_numpy(float)))
        if not (np.isnan(a) or np.isnan(b)):
            own.append(a), floor.append(b), difference.append(a - b)
    return ({"observed": estimate(own), "floor": estimate(floor), "observed_minus_floor": estimate(difference)},
            {"auroc": estimate(aurocs)})


@pytest.mark.parametrize("decisions", [3, 60])
def test_controls_over_arrays_equal_the_decision_by_decision_figures(decisions):
    rng = np.random.default_rng(decisions)
    rows = []
    for g in range(decisions):
        for kind, count in (("own", 5), ("counterfactual", rng.integers(0, 3)), ("mismatched", rng.integers(0, 3))):
            rows += [{"generation_id": f"g{g:03d}", "dataset": "ecqa" if g % 3 else "arc_easy", "kind": kind,
                      "spearman": np.nan if rng.random() < 0.1 else float(rng.choice([0.5, rng.normal()]))}
                     for _ in range(count)]
    table = pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)  # rows in any order
    summary = control_summary(table, ("spearman",), 300, 7)
    for part, rows in {"all": table, **dict(list(table.groupby("dataset")))}.items():
        floor, diagnostic = reference_summary(rows, "spearman", 300, 7)
        assert summary["null_floor"][part]["spearman"] == floor
        assert summary["diagnosticity"][part]["spearman"] == diagnostic


def test_a_bootstrap_drawn_in_blocks_is_choice_drawn_at_once(monkeypatch):
    import pipelines.analysis.controls as controls

    values = np.random.default_rng(3).normal(size=997)
    expected = np.random.default_rng(11).choice(values, (300, len(values))).mean(1)
    monkeypatch.setattr(controls, "BOOTSTRAP_BLOCK", 3 * len(values) + 5)  # blocks of 3 resamples
    assert np.array_equal(controls._resample_means([values], 300, 11)[0], expected)
    one = bootstrap_ci(values, 300, 11)
    monkeypatch.setattr(controls, "BOOTSTRAP_BLOCK", 2**24)
    assert bootstrap_ci(values, 300, 11) == one
