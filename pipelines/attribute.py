"""Generations -> attribution vectors over the question tokens (method.md section 4).

    python -m pipelines attribute [--params params.yaml]   # data/generations.jsonl -> data/attributions.jsonl

Each method is a stock Captum algorithm whose forward function is our batched scorer. One record per
(generation, method) holds the decision's vector, one vector per explanation, and the controls: the
counterfactual explanation (written after a forced other option) and `null_explanations` explanations
of other tasks, each teacher-forced after this decision (method.md section 4, controls).

Sampling (LIME, KernelSHAP): with `masks: independent` (the default) the decision draws its own
perturbation samples and the explanations and controls share a second set, so the surrogate's errors
are not shared between the two vectors a metric compares; the shared set lets `RecordScorer` score all
explanations of one mask from one forward over the perturbed explanation prompt. Both seeds derive from
(seed, record id, method, role): no record's masks depend on another record or on the order of work.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from pipelines.config import PERTURBATION_METHODS, SAMPLING_METHODS, AttributeParams, Params
from pipelines.layout import Sequence, record_sequences
from pipelines.prompts import decision_conversation, explanation_conversation
from pipelines.records import (Appender, Attribution, Generation, existing_ids, read_records, read_stage_input,
                               write_json)
from pipelines.scorer import RecordScorer, TargetScorer, rows_within_budget
from pipelines.seeds import derive_seed

log = logging.getLogger(__name__)



def baseline_token_id(tokenizer, choice: str | int) -> int:
    if isinstance(choice, int):
        if not 0 <= choice < len(tokenizer):
            raise ValueError(f"baseline_token {choice} is outside the vocabulary (size {len(tokenizer)})")
        return choice
    named = {"pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
             "unk": tokenizer.unk_token_id, "eos": tokenizer.eos_token_id, "bos": tokenizer.bos_token_id}[choice]
    if named is None:
        raise ValueError(f"baseline_token '{choice}': this tokenizer has no such token; set a token id instead")
    return named


def batch_rows(model, length: int, params: AttributeParams, backward: bool = False) -> int:
    """Sequences per forward: batch_size, unless the memory budget (or free GPU memory) allows fewer."""
    import torch

    budget = params.memory_budget_mb * 2**20
    if model.device.type == "cuda":
        budget = min(budget, 0.9 * torch.cuda.mem_get_info(model.device)[0])
    return min(params.batch_size, rows_within_budget(model, length, budget, backward))


def perturbation_attribution(forward, n_features: int, method: str, params: AttributeParams, seed: int, device,
                             rows: int):
    """(F,) Captum LIME / KernelSHAP / feature ablation of `forward`: (B, F) masks -> (B,) scores."""
    import torch
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import FeatureAblation, KernelShap, Lime

    keep_all = torch.ones(1, n_features, dtype=torch.long, device=device)
    torch.manual_seed(seed)  # targets given the same seed get the same masks (and share forwards)
    # Lasso on a few hundred samples often stops at max_iter; that is Captum's LIME as published
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        if method == "lime":
            values = Lime(forward, interpretable_model=SkLearnLasso(alpha=params.lime_alpha)).attribute(
                keep_all, n_samples=params.n_samples, perturbations_per_eval=rows)
        elif method == "kernel_shap":
            values = KernelShap(forward).attribute(keep_all, n_samples=params.n_samples,
                                                   perturbations_per_eval=rows)
        else:
            values = FeatureAblation(forward).attribute(keep_all, perturbations_per_eval=rows)
    return values[0].double().cpu().numpy()


def gradient_attribution(model, sequence: Sequence, method: str, params: AttributeParams, baseline_id: int):
    """(F,) Captum layer IG / gradient x activation on the embedding layer, summed over its dimension."""
    import torch
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    rows = batch_rows(model, len(sequence.prompt_ids) + len(sequence.target_ids), params, backward=True)
    scorer = TargetScorer(model, sequence, baseline_id, rows, share_prefix=False)
    keep_all = torch.ones(1, len(sequence.feature_positions), dtype=torch.long, device=model.device)
    layer = model.get_input_embeddings()
    if method == "lig":
        # internal_batch_size == the scorer's batch size: a forward split further would see the layer
        # hook's interpolated embeddings for the whole batch in every chunk
        values = LayerIntegratedGradients(scorer, layer).attribute(
            keep_all, baselines=torch.zeros_like(keep_all), n_steps=params.ig_steps,
            internal_batch_size=rows)
    else:  # input_x_gradient
        values = LayerGradientXActivation(scorer, layer).attribute(keep_all)
    return values.sum(-1)[0, scorer.positions].double().detach().cpu().numpy()


def attribute_sequence(model, sequence: Sequence, method: str, params: AttributeParams, baseline_id: int,
                       seed: int):
    """(F,) attribution of one target on its own, as a float64 numpy array."""
    import numpy as np

    if not sequence.target_ids:  # an empty output has a log-probability of 0 under every perturbation
        return np.zeros(len(sequence.feature_positions))
    if method in PERTURBATION_METHODS:
        rows = batch_rows(model, len(sequence.prompt_ids) + len(sequence.target_ids), params)
        scorer = TargetScorer(model, sequence, baseline_id, rows, params.target)
        return perturbation_attribution(scorer, len(sequence.feature_positions), method, params, seed, model.device,
                                        rows)
    return gradient_attribution(model, sequence, method, params, baseline_id)


def record_seeds(seed: int, record_id: str, method: str, masks: str) -> tuple[int, int] | None:
    """(decision seed, explanations seed) of a sampling method; None for the deterministic methods."""
    if method not in SAMPLING_METHODS:
        return None
    explanations = derive_seed(seed, record_id, method, "explanations")
    return (explanations if masks == "shared" else derive_seed(seed, record_id, method, "decision")), explanations


def attribute_record(model, sequences: list[Sequence], method: str, params: AttributeParams, baseline_id: int,
                     seeds: tuple[int, int] | None) -> list:
    """Vectors of the decision (sequences[0]) and of every explanation after it, as float64 arrays.

    Explanations share the seeds[1] masks and, for the perturbation methods, the forwards; the decision
    is attributed under seeds[0], which equals seeds[1] only for `masks: shared`."""
    import numpy as np

    decision_seed, explanation_seed = seeds or (0, 0)
    decision, explanations = sequences[0], sequences[1:]
    if method not in PERTURBATION_METHODS or params.target != "sequence" or params.features != "first_user_message":
        return [attribute_sequence(model, decision, method, params, baseline_id, decision_seed)] + [
            attribute_sequence(model, s, method, params, baseline_id, explanation_seed) for s in explanations]
    longest = len(explanations[0].prompt_ids) + max(len(s.target_ids) for s in explanations)
    rows = batch_rows(model, longest, params)
    shared = RecordScorer(model, decision, explanations, baseline_id, rows)
    n_features = len(decision.feature_positions)
    if decision_seed == explanation_seed:
        decision_forward = shared.target(0)
    else:  # its own masks: a forward over the decision prompt alone, from its first perturbed token
        decision_forward = TargetScorer(model, decision, baseline_id, batch_rows(
            model, len(decision.prompt_ids) + len(decision.target_ids), params))
    forwards = [(decision_forward, decision_seed)] + [(shared.target(i), explanation_seed)
                                                      for i in range(1, len(sequences))]
    return [perturbation_attribution(forward, n_features, method, params, seed, model.device, rows)
            if s.target_ids else np.zeros(n_features) for (forward, seed), s in zip(forwards, sequences)]


def control_targets(generation: Generation, others: list[Generation], n_null: int, seed: int) -> list[dict]:
    """The counterfactual explanation, then `n_null` explanations of other tasks (seeded choice; the
    other task and which of its explanations depend only on the two ids, not on the order of records)."""
    controls = []
    counterfactual = generation.counterfactual or {}
    if counterfactual.get("label"):
        controls.append({"kind": "counterfactual", "source": counterfactual["label"],
                         "text": counterfactual["explanation"], "ids": counterfactual["explanation_ids"]})
    candidates = sorted((o for o in others if o.id != generation.id and any(o.explanations)),
                        key=lambda o: derive_seed(seed, generation.id, o.id, "null"))
    for other in candidates[:n_null]:
        written = [i for i, text in enumerate(other.explanations) if text]
        index = written[derive_seed(seed, generation.id, other.id, "null-index") % len(written)]
        controls.append({"kind": "mismatched", "source": f"{other.id}/{index}", "text": other.explanations[index],
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
        if method in PERTURBATION_METHODS else "sequence", features=params.features, feature_tokens=tokens[0],
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
    """Attribute every (generation, method) not yet in the output. `fail_after` exists for crash tests.
    `shard=(i, n)` takes every n-th missing record from the i-th, so that n processes can share one slice,
    each writing its own folder (which must hold the whole slice's generations: controls draw from it)."""
    from tqdm import tqdm

    from pipelines.models import load_model

    data = folder
    source, out = data / "generations.jsonl", data / "attributions.jsonl"
    generations = [Generation.from_dict(row) for row in read_stage_input(source, "generate")]
    done = existing_ids(out)
    todo = [(g, m) for g in generations for m in params.attribute.methods if f"{g.id}/{m}" not in done]
    todo = todo[shard[0]::shard[1]]
    started, timings = time.perf_counter(), {m: [] for m in params.attribute.methods}
    if todo:
        model, tokenizer, _ = load_model(params.model)
        with Appender(out) as sink, tqdm(total=len(done) + len(todo), initial=len(done),
                                         desc="attribute", unit="record") as bar:
            for count, (generation, method) in enumerate(todo):
                if fail_after is not None and count == fail_after:
                    raise RuntimeError(f"injected failure after {count} records")
                began = time.perf_counter()
                sink.write(attribute_generation(model, tokenizer, generation, method, params.attribute,
                                                params.seed, generations))
                timings[method].append(time.perf_counter() - began)
                bar.update()
    rows = list(read_records(out))
    summary = {"path": str(out), "attributions": len(rows), "new": len(todo),
               "seconds": round(time.perf_counter() - started, 2),
               # timing stays out of the records, so that a rerun reproduces them byte for byte
               "seconds_per_new_record": {m: _mean(t) for m, t in timings.items()}}
    write_json(data / "attributions_summary.json", summary)
    return summary


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None
