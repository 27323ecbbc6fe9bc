"""The report page (pipelines/stages/report.py, templates/report.html.j2) on small banks scored by the real score
code: the summary card comes first and carries the metrics' verdicts, the token heatmaps colour the chosen
decisions' tokens by the signs of their vectors, the choice is seeded, and token text is escaped."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from setuptools.config.pyprojecttoml import read_configuration

from pipelines.core.config import Params
from pipelines.stages import promote, report
from pipelines.stages.score import score_attribution
from tests.conftest import REPO

METHOD = "feature_ablation"
# a prompt with markup in it: the page must show these tokens as text
TOKENS = ["Which", "Ġis", "Ġ<b>", "Ġbold", "?", "Ċ", "A", ")", "Ġ&", "Ġ\"quoted\"", "Ċ", "B", ")", "Ġplain"]
TASKS = {"arc_easy": 4, "codah": 3}


def records(model: str, dataset: str, index: int, rng: np.random.Generator, shift: float):
    """One decision's generation and attribution records: three own explanations near the decision's vector
    (by `shift` nearer for a fine-tune), a counterfactual and a mismatched one."""
    decision = rng.normal(0, 1, len(TOKENS))
    explanations = [decision * weight + rng.normal(0, 1 - shift, len(TOKENS)) for weight in (1.0, 0.3, -0.5)]
    texts = [f"{model} reason {i} for task {index}" for i in range(2)] + ["<script>alert(1)</script> & more"]
    generation = {"id": f"{dataset}/t{index}", "task": {"id": f"{dataset}-{index}", "dataset": dataset, "split": "test",
                                                      "answer_label": "A", "question": "Which is bold?"},
                  "correct": bool(rng.random() < 0.6), "answer_label": "A", "decision": "A) <b>bold</b>",
                  "explanations": texts, "model": {"id": model}}
    attribution = {"id": f"{generation['id']}/{METHOD}", "generation_id": generation["id"], "method": METHOD,
                   "features": "first_user_message", "feature_tokens": TOKENS, "decision": decision.tolist(),
                   "explanation_feature_tokens": [TOKENS] * 3, "explanations": [e.tolist() for e in explanations],
                   "controls": [{"kind": "counterfactual", "source": None, "text": "other",
                                 "vector": rng.normal(0, 1, len(TOKENS)).tolist()},
                                {"kind": "mismatched", "source": "elsewhere", "text": "else",
                                 "vector": rng.normal(0, 1, len(TOKENS)).tolist()}],
                   "seeds": {}, "settings": {}, "masks": "none"}
    return attribution, generation


def write_banks(data: Path, params: Params) -> None:
    """data/evaluation/{base,dpo,sft}/bank.parquet, each in row groups of 8 rows (the scan's filter has to skip)."""
    for index, (model, shift) in enumerate((("base", 0.0), ("dpo", 0.4), ("sft", 0.1))):
        rng = np.random.default_rng(index)
        rows = [row for dataset, count in TASKS.items() for i in range(count)
                for row in score_attribution(*records(model, dataset, i, rng, shift), params.score.metrics,
                                             params.score.top_k)]
        folder = data / "evaluation" / model
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False), folder / "bank.parquet",
                       row_group_size=8)
    # what train and evaluate leave beside the banks: DPO moved (reward accuracy above chance), SFT did not
    moves = {"dpo": {"pairs": 40, "reward_accuracy": 0.725, "reward_accuracy_p": 0.003},
             "sft": {"pairs": 40, "reward_accuracy": 0.525, "reward_accuracy_p": 0.44}}
    (data / "train_summary.json").write_text(json.dumps({m: {"movement": v} for m, v in moves.items()}))
    (data / "evaluation" / "evaluate_summary.json").write_text(json.dumps({"models": {
        m: {"changed_decisions_changed": 0.25, "changed_explanations_changed": 0.5} for m in moves}}))


def params_for(data: Path, seed: int = 42) -> Params:
    return Params.model_validate({"seed": seed, "data_dir": str(data), "tasks": {"datasets": ["arc_easy"]},
                                  "attribute": {"methods": [METHOD]},
                                  "evaluate": {"shift_datasets": ["codah"], "bootstrap_samples": 200}})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Params, str, dict]:
    data = tmp_path_factory.mktemp("report") / "data"
    params = params_for(data)
    write_banks(data, params)
    files = report.run(params, data)
    return data, params, Path(files["report"]).read_text(), json.loads(Path(files["metrics"]).read_text())


class Spans(HTMLParser):
    """The token spans of each heatmap panel: (section's decision, panel role, [(text, style, title)])."""

    def __init__(self):
        super().__init__()
        self.panels: list[tuple[str, str, list[tuple[str, str, str]]]] = []
        self.decision, self.token = None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "data-decision" in attrs:
            self.decision = attrs["data-model"], attrs["data-decision"]
        elif tag == "div" and "data-role" in attrs:
            self.panels.append((self.decision, attrs["data-role"], []))
        elif tag == "span" and attrs.get("class") == "tok":
            self.token = [attrs["style"], attrs["title"], ""]

    def handle_data(self, data):
        if self.token is not None:
            self.token[2] += data

    def handle_endtag(self, tag):
        if tag == "span" and self.token is not None:
            style, title, text = self.token
            self.panels[-1][2].append((text, style, title))
            self.token = None


def test_the_page_opens_on_the_summary_card_with_the_metrics_verdicts(built):
    _, params, page, metrics = built
    body = page[page.index("<body>"):]
    card = body[body.index('<section id="summary"'):body.index("</section>")]
    # the card is the first section: nothing but the title and one line of method precede it
    assert "<table" not in body[:body.index('<section id="summary"')] and body.count("<h2") > 3
    assert body.index('<section id="summary"') < body.index("<h2>Figures") < body.index("<h2>Token heatmaps") \
        < body.index("<h2>Tables")
    for name, per in metrics["comparisons"].items():
        alignment = per["all"]["alignment"]
        low, high = alignment["ci95"]
        line = card[card.index(f"<b>{name.replace('-', ' vs ')}</b>"):]
        line = line[:line.index("</li>")]
        assert f"{alignment['mean']:+.3f} <small>[{low:+.3f}, {high:+.3f}]</small>" in line
        verdict = "alignment rose" if low > 0 else "alignment fell" if high < 0 else "no change shown"
        assert verdict in line
        # seven decisions cannot detect 0.05 at 80% power: each comparison says it is a smoke test, and how far off
        assert alignment["smoke_test"] and f"smoke test: power {alignment['power']['value']:.2f}" in line
        assert f"{alignment['power']['decisions_needed']} decisions needed" in line
    assert "Smoke test: supports no claim" in card
    decision = promote.gate(metrics, params.promote)
    assert ("do not promote" not in card) == decision.passed
    assert all(reason.replace("'", "&#39;") in card for reason in decision.reasons)
    assert metrics["movement"]["dpo"]["moved"] and not metrics["movement"]["sft"]["moved"]
    assert '<b>dpo</b>: <span class="verdict up">moved</span>' in card
    assert '<b>sft</b>: <span class="verdict down">did not measurably move</span>' in card
    assert "held-out reward accuracy 0.725 (p 0.003), 50% of explanations changed" in card
    for name, figures in metrics["trust"].items():
        floor = figures["null_floor"]["all"]["spearman"]
        best = max(d["auroc"]["mean"] for d in figures["diagnosticity"]["all"].values())
        line = card[card.index(f"<b>{name}</b>: observed spearman"):]
        line = line[:line.index("</li>")]
        assert f"{floor['observed']['mean']:+.3f}" in line and f"{floor['floor']['mean']:+.3f}" in line
        assert re.search(rf"best counterfactual diagnosticity AUROC\s+{best:.3f} <small>", line)
    # the report's content is all still there, the long tables folded
    assert page.count("data:image/png;base64,") == 4
    for caption in ("accuracy and alignment per model and dataset", "movement per fine-tune", "paired comparisons",
                    "correct vs incorrect", "null floor and diagnosticity"):
        assert f"<summary>{caption} (" in page
    assert "<details><summary>paired comparisons (9 rows)" in page  # 3 comparisons x (all + 2 datasets): folded
    assert "<details open><summary>movement per fine-tune (2 rows)" in page


def test_heatmaps_colour_the_chosen_decisions_tokens_by_sign_and_escape_them(built):
    data, params, page, _ = built
    parser = Spans()
    parser.feed(page)
    picked = list(dict.fromkeys(decision for decision, _, _ in parser.panels))
    assert len(picked) == report.HEATMAP_DECISIONS
    banks = {m: pd.read_parquet(data / "evaluation" / m / "bank.parquet") for m in params.evaluate.models}
    for (model, gid) in picked:
        bank = banks[model]
        own = bank[(bank["generation_id"] == gid) & (bank["kind"] == "own")]
        panels = [(role, spans) for decision, role, spans in parser.panels if decision == (model, gid)]
        assert [role for role, _ in panels] == ["decision", "explanation", "explanation"]
        most, least = own.loc[own["spearman"].idxmax()], own.loc[own["spearman"].idxmin()]
        for (_, spans), vector in zip(panels, (most["decision_vector"], most["explanation_vector"],
                                                  least["explanation_vector"])):
            assert [text for text, _, _ in spans] == [report.display_token(t) for t in TOKENS]
            top = np.abs(vector).max()
            for (_, style, title), value in zip(spans, vector):
                colour = re.fullmatch(r"background:rgba\((\d+,\d+,\d+),([\d.]+)\)", style)
                assert colour and colour[1] == ("220,38,38" if value > 0 else "37,99,235")
                assert float(colour[2]) == pytest.approx(report.MAX_OPACITY * abs(value) / top, abs=0.0006)
                assert float(title) == pytest.approx(value, rel=1e-3)
        section = page[page.index(f'data-decision="{gid}"'):]
        assert f"Spearman {most['spearman']:+.3f}" in section and f"Spearman {least['spearman']:+.3f}" in section
    # markup in tokens, answers and explanations is text on the page
    assert '<span class="tok" style="background:rgba(' in page and " &lt;b&gt;</span>" in page
    assert "<b>bold" not in page and "Answer: A) &lt;b&gt;bold&lt;/b&gt;" in page
    assert " &amp;</span>" in page and "&#34;quoted&#34;" in page
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page


def test_the_heatmaps_choice_is_seeded(built):
    data, params, page, _ = built
    candidates = {m: [f"{d}/t{i}" for d, n in TASKS.items() for i in range(n)] for m in params.evaluate.models}
    first = report.pick_decisions(candidates, params.seed)
    assert first == report.pick_decisions(candidates, params.seed) and len(set(first)) == report.HEATMAP_DECISIONS
    assert len({tuple(report.pick_decisions(candidates, seed)) for seed in range(10)}) > 1
    assert report.pick_decisions(candidates, 0, count=100) == [(m, g) for m, ids in candidates.items() for g in ids]
    sections = re.findall(r'<section class="heatmap" data-model="(\w+)" data-decision="([^"]+)"', page)
    assert sections == first  # the run drew from the banks what the function draws from these ids
    again = report.run(params, data)  # a rerun shows the same decisions, byte for byte
    heat = slice(page.index("<h2>Token heatmaps"), page.index("<h2>Tables"))
    assert Path(again["report"]).read_text()[heat] == page[heat]


def test_only_the_chosen_decisions_rows_are_read_with_their_vectors(built):
    data, params, _, _ = built
    path = data / "evaluation" / "dpo" / "bank.parquet"
    assert pq.ParquetFile(path).num_row_groups > 4
    rows = report.decision_rows(path, METHOD, ["codah/t1", "arc_easy/t3"])
    assert sorted(rows["generation_id"].unique()) == ["arc_easy/t3", "codah/t1"]
    assert set(rows["kind"]) == {"own"} and len(rows) == 2 * 3
    assert list(rows.columns) == [c for c in report.HEATMAP_COLUMNS if c in pq.ParquetFile(path).schema_arrow.names]


def test_render_without_a_gate_or_heatmaps_says_so():
    metrics = {"method": METHOD, "domains": {"arc_easy": "in_domain"}, "models": {}, "comparisons": {},
               "smoke_test": True, "power": {"effect": 0.05, "planning_sd": 0.09, "target": 0.8, "alpha": 0.05,
                                             "how": "t-test"}}
    page = report.render(metrics, [])
    assert "The promotion gate was not evaluated" in page and "No comparison" in page
    assert "No decision with a defined Spearman score" in page


def test_the_template_ships_as_package_data():
    setuptools = read_configuration(REPO / "pyproject.toml")["tool"]["setuptools"]  # what a build reads
    package = Path(*"pipelines.stages".split("."))
    shipped = [p for pattern in setuptools["package-data"]["pipelines.stages"] for p in (REPO / package).glob(pattern)]
    assert report.TEMPLATES / "report.html.j2" in shipped


def test_a_passing_gate_shows_the_bounds_that_cleared():
    from tests.test_stats import constructed_tables

    params = Params.model_validate({"tasks": {"datasets": ["arc_easy"]}, "evaluate": {
        "shift_datasets": ["codah"], "bootstrap_samples": 500}})
    metrics = report.build_metrics(params, constructed_tables(60, gain=0.08, lost=0))
    gate = report.promotion_gate(metrics, params.promote)
    assert gate["passed"] and gate["candidate"] == "dpo"
    card = report.render(metrics, [], gate).split("<h3>Promotion gate</h3>")[1].split("<h3>")[0]
    assert '<b>dpo</b>: <span class="verdict up">promote</span>' in card
    low = metrics["comparisons"]["dpo-base"]["all"]["alignment"]["ci95"][0]
    assert f"95% CI lower bound {low:+.4f} is above promote.min_alignment_gain 0.0" in card
    assert "above -promote.accuracy_tolerance -0.02" in card
    assert "powered: " in report.render(metrics, [], gate) and "Smoke test" not in report.render(metrics, [], gate)


def test_the_comparisons_and_the_gate_judge_the_chosen_alignment_statistic(tmp_path):
    """evaluate.alignment_metric / alignment_aggregate: the paired difference is that statistic's, computed
    here straight from the banks, and the page, the table and the gate's reasons name it."""
    data = tmp_path / "data"
    base = params_for(data)
    params = base.model_copy(update={"evaluate": base.evaluate.model_copy(update={
        "alignment_metric": "cosine", "alignment_aggregate": "mean"}),
        "promote": base.promote.model_copy(update={"min_alignment_gain": 5.0})})  # a gain it cannot reach
    write_banks(data, params)
    files = report.run(params, data)
    metrics, page = json.loads(Path(files["metrics"]).read_text()), Path(files["report"]).read_text()

    def per_decision(model):
        bank = pd.read_parquet(data / "evaluation" / model / "bank.parquet")
        own = bank[(bank["method"] == METHOD) & (bank["kind"] == "own")]
        return own.groupby("task_id")["cosine"].mean()

    expected = (per_decision("dpo") - per_decision("base")).mean()
    assert metrics["comparisons"]["dpo-base"]["all"]["alignment"]["mean"] == pytest.approx(expected, abs=1e-4)
    assert "per-decision mean cosine difference" in metrics["power"]["how"]
    assert "mean cosine difference" in page and "median Spearman difference" not in page
    refused = report.promotion_gate(metrics, params.promote, "mean cosine")
    assert not refused["passed"] and "(mean cosine, dpo - base)" in refused["reasons"][0]
