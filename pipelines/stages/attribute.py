"""Generations -> attribution vectors over the question tokens (docs/method.md section 4).

    python -m pipelines attribute [--params params.yaml]   # data/generations.jsonl -> data/attributions.jsonl

Each method is a stock Captum algorithm whose forward function is our batched scorer. One record per
(generation, method) holds the decision's vector, one vector per explanation, and the controls: the
counterfactual explanation (written after a forced other option) and `null_explanations` explanations
of other tasks, each teacher-forced after this decision (docs/method.md section 4, controls).

Sampling (LIME, KernelSHAP): with `masks: independent` (the default) the decision draws its own
perturbation samples and the explanations and controls share a second set, so the surrogate's errors
are not shared between the two vectors a metric compares; the shared set lets `RecordScorer` score all
explanations of one mask from one forward over the perturbed explanation prompt. Both seeds derive from
(seed, record id, method, role): no record's masks depend on another record or on the order of work.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.core.catalog import METHODS
from pipelines.attribution.engine import (
    attribute_record,
    baseline_token_id,
    record_seeds,
)
from pipelines.attribution.layout import record_sequences
from pipelines.core import provenance, shards
from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import AttributeParams, Params
from pipelines.core.prompts import decision_conversation, explanation_conversation
from pipelines.core.records import (
    Appender,
    Attribution,
    Generation,
    existing_ids,
    read_records,
    read_stage_input,
    write_json,
)
from pipelines.core.seeds import derive_seed
from pipelines.core.vocabulary import COUNTERFACTUAL, MISMATCHED

log = logging.getLogger(__name__)
GENERATIONS, ATTRIBUTIONS = ARTIFACTS["generations"], ARTIFACTS["attributions"]  # read, written: core/artifacts.py



def control_targets(generation: Generation, others: list[Generation], n_null: int, seed: int) -> list[dict]:
    """The counterfactual explanation, then `n_null` explanations of other tasks (seeded choice; the
    other task and which of its explanations depend only on the two ids, not on the order of records)."""
    controls = []
    counterfactual = generation.counterfactual or {}
    if counterfactual.get("label"):
        controls.append({"kind": COUNTERFACTUAL, "source": counterfactual["label"],
                         "text": counterfactual["explanation"], "ids": counterfactual["explanation_ids"]})
    candidates = sorted((o for o in others if o.id != generation.id and any(o.explanations)),
                        key=lambda o: derive_seed(seed, generation.id, o.id, "null"))
    for other in candidates[:n_null]:
        written = [i for i, text in enumerate(other.explanations) if text]
        index = written[derive_seed(seed, generation.id, other.id, "null-index") % len(written)]
        controls.append({"kind": MISMATCHED, "source": f"{other.id}/{index}", "text": other.explanations[index],
                         "ids": other.explanation_ids[index]})
    return controls


def attribute_generation(model, tokenizer, generation: Generation, method: str, params: AttributeParams,
                         seed: int, others: list[Generation] = ()) -> Attribution:
    import numpy as np

    baseline = baseline_token_id(tokenizer, params.baseline_token)
    task = generation.task
    controls = control_targets(generation, list(others), params.null_explanations, seed)
    sequences = record_sequences(tokenizer, decision_conversation(task),
                                 explanation_conversation(task, generation.decision), generation.decision_ids,
                                 generation.explanation_ids + [c["ids"] for c in controls], params.features,
                                 generation.id)
    seeds = record_seeds(seed, generation.id, method, params.masks)
    vectors = attribute_record(model, sequences, method, params, baseline, seeds)
    k = len(generation.explanations)
    names = ["decision"] + [f"explanation {i}" for i in range(k)] + [f"{c['kind']} control" for c in controls]
    for which, vector in zip(names, vectors):
        if not np.isfinite(vector).all():
            raise FloatingPointError(f"record {generation.id}, {method}, {which}: non-finite attribution")
    tokens = [tokenizer.convert_ids_to_tokens([s.prompt_ids[p] for p in s.feature_positions]) for s in sequences]
    return Attribution(
        id=f"{generation.id}/{method}", generation_id=generation.id, method=method, target=params.target
        if METHODS[method].family == "perturbation" else "sequence", features=params.features, feature_tokens=tokens[0],
        decision=vectors[0].tolist(), explanation_feature_tokens=tokens[1:k + 1],
        explanations=[v.tolist() for v in vectors[1:k + 1]], baseline_token_id=baseline,
        baseline_token=tokenizer.convert_ids_to_tokens(baseline), model=generation.model,
        settings={**params.model_dump(), "seed": seed},
        masks=params.masks if seeds else "none",
        seeds={"decision": seeds[0], "explanations": seeds[1]} if seeds else None,
        controls=[{"kind": c["kind"], "source": c["source"], "text": c["text"], "vector": v.tolist()}
                  for c, v in zip(controls, vectors[k + 1:])])


def run(params: Params, folder: Path, fail_after: int | None = None, shard: tuple[int, int] = (0, 1)
        ) -> dict[str, Any]:
    """Attribute every (generation, method) not yet in attributions.jsonl. `fail_after` exists for crash tests.
    `shard=(i, n)` attributes shard i of n instead (pipelines/core/shards.py: every n-th record from the i-th)
    into its own file, and `merge` then appends the shards to attributions.jsonl: the bytes one process
    writes. Every shard reads the whole slice's generations (controls draw from all of them)."""
    from tqdm import tqdm

    from pipelines.stages.models import load_model

    source = folder / GENERATIONS.path
    out, summary_path = shards.files(folder, ATTRIBUTIONS, shard)
    generations = [Generation.from_dict(row) for row in read_stage_input(source, GENERATIONS.stage)]
    current = _fingerprint(params, source)
    restarted = provenance.resume_or_restart(out, summary_path, current, provenance.stale_place(params, out.parent),
                                             lambda rows: legacy_changes(rows, params))
    done = existing_ids(out)
    if shard[1] > 1:
        done |= shards.done_in_slice(*shards.files(folder, ATTRIBUTIONS, (0, 1)), current,
                                     lambda rows: legacy_changes(rows, params))
    methods = params.attribute.methods  # their order is the records' order
    mine = shards.members([(g, m) for g in generations for m in methods], shard)
    todo = [(g, m) for g, m in mine if f"{g.id}/{m}" not in done]
    started, timings = time.perf_counter(), {m: [] for m in methods}
    if todo:
        provenance.claim(summary_path, current)
        model, tokenizer, _ = load_model(params.model)
        with Appender(out) as sink, tqdm(total=len(mine), initial=len(mine) - len(todo),
                                         desc="attribute", unit="record") as bar:
            for count, (generation, method) in enumerate(todo):
                if fail_after is not None and count == fail_after:
                    raise RuntimeError(f"injected failure after {count} records")
                began = time.perf_counter()
                sink.write(attribute_generation(model, tokenizer, generation, method, params.attribute,
                                                params.seed, generations))
                timings[method].append(time.perf_counter() - began)
                bar.update()
    summary = {**_summary(out, len(todo), current, restarted, time.perf_counter() - started),
               # timing stays out of the records, so that a rerun reproduces them byte for byte
               "seconds_per_new_record": {m: _mean(t) for m, t in timings.items()}}
    write_json(summary_path, summary)
    return summary


def merge(params: Params, folder: Path, count: int) -> dict[str, Any]:
    """Append the attributions of shards 0..count-1 that attributions.jsonl lacks, in the order of the
    generations and of `attribute.methods`."""
    source, (out, summary_path) = folder / GENERATIONS.path, shards.files(folder, ATTRIBUTIONS, (0, 1))
    order = [f"{row['id']}/{m}" for row in read_stage_input(source, GENERATIONS.stage)
             for m in params.attribute.methods]
    current = _fingerprint(params, source)
    restarted = provenance.resume_or_restart(out, summary_path, current, provenance.stale_place(params, folder),
                                             lambda rows: legacy_changes(rows, params))
    started = time.perf_counter()
    provenance.claim(summary_path, current)
    parts = [shards.files(folder, ATTRIBUTIONS, (i, count)) for i in range(count)]
    new = shards.merge(out, order, parts, current)
    made = [json.loads(summary.read_text()) if summary.exists() else {} for _, summary in parts]
    summary = {**_summary(out, new, current, restarted, time.perf_counter() - started),
               "seconds_per_new_record": {m: _weighted(made, m) for m in params.attribute.methods},
               "shards": {"count": count, "seconds": [shard.get("seconds") for shard in made]}}
    write_json(summary_path, summary)
    return summary


def _fingerprint(params: Params, source: Path) -> dict[str, Any]:
    from pipelines.stages.models import model_fingerprint

    methods = params.attribute.methods
    return provenance.fingerprint({"attribute": {"methods": list(methods), **{
                                       m: provenance.method_settings(params.attribute, params.seed, m) for m in methods}},
                                   "model": model_fingerprint(params.model)}, {GENERATIONS.path: source})


def _summary(out: Path, new: int, current: dict[str, Any], restarted: list[str], seconds: float) -> dict[str, Any]:
    return {"path": str(out), "attributions": sum(1 for _ in read_records(out)), "new": new, "fingerprint": current,
            "restarted_for": restarted, "seconds": round(seconds, 2)}


def _weighted(shards_made: list[dict[str, Any]], method: str) -> float | None:
    """The mean seconds per new record of `method` over the shards, each weighted by its new records."""
    pairs = [(s["seconds_per_new_record"][method], s["new"]) for s in shards_made
             if (s.get("seconds_per_new_record") or {}).get(method) is not None and s.get("new")]
    total = sum(n for _, n in pairs)
    return round(sum(t * n for t, n in pairs) / total, 3) if total else None


def legacy_changes(rows: list[dict[str, Any]], params: Params) -> list[str]:
    """Keys in which records written before fingerprints differ from this run's settings for their method."""
    methods = params.attribute.methods
    changed = {"attribute.methods" for row in rows if row["method"] not in methods}
    known = [row for row in rows if row["method"] in methods]
    changed |= {f"attribute.{key}" for _, keys in provenance.mismatched_settings(
        known, lambda row: provenance.method_settings(params.attribute, params.seed, row["method"])) for key in keys}
    return sorted(changed)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None

