"""Tasks -> decisions + k post-hoc explanations (docs/method.md section 3).

    python -m pipelines generate [--params params.yaml]   # data/<model>/bank/<dataset>/tasks.jsonl -> generations.jsonl

Sampling runs in our own batched decode loop with the KV cache, so that each sequence draws from its
own seeded generator: a decision or an explanation is the same whatever batch it was decoded in, and
a resumed run reproduces what an uninterrupted one would have written.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.attribution.layout import chat_ids
from pipelines.core import provenance, shards
from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import GenerateParams, Params
from pipelines.core.prompts import (
    decision_conversation,
    explanation_conversation,
    parse_answer,
)
from pipelines.core.records import (
    Appender,
    Choice,
    Generation,
    Task,
    existing_ids,
    read_records,
    read_stage_input,
    write_json,
)
from pipelines.core.seeds import derive_seed

log = logging.getLogger(__name__)
TASKS, GENERATIONS = ARTIFACTS["tasks"], ARTIFACTS["generations"]  # what it reads and writes: core/artifacts.py


def stop_token_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def sample(model, prompts: list[list[int]], seeds: list[int], max_new_tokens: int, temperature: float,
           top_p: float, stop_ids: set[int], pad_id: int) -> list[list[int]]:
    """Sample one continuation per prompt (left-padded batch, KV cache); stop tokens are not returned.

    A sequence that stops leaves the batch (and the cache) at once, so the batch costs what its
    live sequences cost, not max_new_tokens times its size."""
    import torch
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    device = model.device
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]
    outputs: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))  # rows still sampling, in the cache's batch order
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                    logits_to_keep=1)
        for step in range(max_new_tokens):
            scores = out.logits[:, -1].float()
            for warp in warpers:
                scores = warp(None, scores)  # neither warper looks at the ids
            probs = scores.softmax(-1)
            chosen = [int(torch.multinomial(probs[n], 1, generator=generators[row])) for n, row in enumerate(live)]
            going = [n for n, token in enumerate(chosen) if token not in stop_ids]
            for n in going:
                outputs[live[n]].append(chosen[n])
            if not going or step == max_new_tokens - 1:
                break
            cache = out.cache
            if len(going) < len(live):
                keep = torch.tensor(going, device=device)
                cache.batch_select_indices(keep)
                attention, positions = attention[keep], positions[keep]
                live, chosen = [live[n] for n in going], [chosen[n] for n in going]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=torch.tensor(chosen, device=device)[:, None], attention_mask=attention,
                        position_ids=positions, cache=cache, use_cache=True)
    return outputs


def sample_batched(model, prompts: list[list[int]], seeds: list[int], max_new_tokens: int,
                   params: GenerateParams, stop_ids: set[int], pad_id: int) -> list[list[int]]:
    """`sample` over batches of similar length (less padding), results in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), params.batch_size):
        chunk = order[start:start + params.batch_size]
        outs = sample(model, [prompts[i] for i in chunk], [seeds[i] for i in chunk], max_new_tokens,
                      params.temperature, params.top_p, stop_ids, pad_id)
        for i, ids in zip(chunk, outs):
            results[i] = ids
    return results


def counterfactual_option(task: Task, answer_label: str | None, seed: int) -> Choice | None:
    """A seeded option other than the model's answer (any option when the answer was unparseable)."""
    import random

    others = [c for c in task.choices if c.label != answer_label]
    if len(task.choices) < 2 or not others:
        return None
    return random.Random(derive_seed(seed, task.id, "counterfactual")).choice(others)


def forced_decision(option: Choice) -> str:
    return f"{option.label}) {option.text}"  # the form the decision prompt asks for


def generate(model, tokenizer, tasks: list[Task], params: GenerateParams, seed: int,
             identity: dict[str, Any]) -> list[Generation]:
    """One decision and k explanations per task, with the parsed answer and its correctness, and (when
    `params.counterfactual`) one explanation written after a forced other option."""
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    prompts = [chat_ids(tokenizer, decision_conversation(t)) for t in tasks]
    decision_ids = sample_batched(model, prompts, [seed] * len(tasks), params.max_new_tokens_decision,
                                  params, stop_ids, pad_id)
    decisions = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in decision_ids]
    parsed = [parse_answer(d, t) for d, t in zip(decisions, tasks)]
    k = params.n_explanations
    options = [counterfactual_option(t, label, seed) if params.counterfactual else None
               for t, (label, _) in zip(tasks, parsed)]
    forced = [(n, o) for n, o in enumerate(options) if o is not None]
    why_prompts = [chat_ids(tokenizer, explanation_conversation(t, d)) for t, d in zip(tasks, decisions)]
    # the counterfactual explanations decode in the same batches; every sequence has its own generator
    flat = sample_batched(
        model, [p for p in why_prompts for _ in range(k)]
        + [chat_ids(tokenizer, explanation_conversation(tasks[n], forced_decision(o))) for n, o in forced],
        [seed + i for _ in tasks for i in range(k)] + [seed + k] * len(forced),
        params.max_new_tokens_explanation, params, stop_ids, pad_id)
    counterfactual_ids = dict(zip((n for n, _ in forced), flat[len(tasks) * k:]))
    settings = {**params.model_dump(), "seed": seed, "chat_template_sha256": _template_digest(tokenizer)}
    records = []
    for n, task in enumerate(tasks):
        label, how = parsed[n]
        explanation_ids = flat[n * k:(n + 1) * k]
        counterfactual = None
        if params.counterfactual:
            counterfactual = {"label": None, "reason": "no other option"} if options[n] is None else {
                "label": options[n].label, "decision": forced_decision(options[n]),
                "explanation": tokenizer.decode(counterfactual_ids[n], skip_special_tokens=True).strip(),
                "explanation_ids": counterfactual_ids[n], "seed": seed + k}
        records.append(Generation(
            id=task.id, task=task, decision=decisions[n], decision_ids=decision_ids[n], answer_label=label,
            parse_status=how, correct=None if task.answer_label is None else label == task.answer_label,
            explanations=[tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in explanation_ids],
            explanation_ids=explanation_ids, seeds=[seed] + [seed + i for i in range(k)], model=identity,
            settings=settings, counterfactual=counterfactual))
    return records


def _counterfactual_counts(made: list[dict[str, Any] | None]) -> dict[str, int]:
    formed = [c for c in made if c and c["label"]]
    return {"formed": len(formed), "not_formed": sum(bool(c) and not c["label"] for c in made),
            "empty": sum(not c["explanation"] for c in formed)}


def _template_digest(tokenizer) -> str:
    import hashlib

    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()


def run(params: Params, folder: Path, shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Generate every task of the slice not yet in generations.jsonl. `shard=(i, n)` generates shard i of n
    instead (pipelines/core/shards.py: every n-th chunk of `tasks_per_chunk` tasks) into its own file, and
    `merge` then appends the shards to generations.jsonl: the bytes one process writes."""
    from tqdm import tqdm

    from pipelines.stages.models import load_model

    source = folder / TASKS.path
    out, summary_path = shards.files(folder, GENERATIONS, shard)
    tasks = [Task.from_dict(row) for row in read_stage_input(source, TASKS.stage)]
    current = _fingerprint(params, source)
    restarted = provenance.resume_or_restart(out, summary_path, current, provenance.stale_place(params, out.parent),
                                             lambda rows: legacy_changes(rows, params, current))
    done = existing_ids(out)
    if shard[1] > 1:
        done |= shards.done_in_slice(*shards.files(folder, GENERATIONS, (0, 1)), current,
                                     lambda rows: legacy_changes(rows, params, current))
    mine = shards.members(tasks, shard, params.generate.tasks_per_chunk)
    todo = [t for t in mine if t.id not in done]
    started = time.perf_counter()
    if todo:
        provenance.claim(summary_path, current)
        model, tokenizer, identity = load_model(params.model)
        size = params.generate.tasks_per_chunk
        with Appender(out) as sink, tqdm(total=len(mine), initial=len(mine) - len(todo), desc="generate",
                                         unit="task") as bar:
            for start in range(0, len(todo), size):
                for record in generate(model, tokenizer, todo[start:start + size], params.generate,
                                       params.seed, identity):
                    sink.write(record)
                bar.update(len(todo[start:start + size]))
    summary = _summary(out, len(todo), current, restarted, time.perf_counter() - started)
    write_json(summary_path, summary)
    return summary


def merge(params: Params, folder: Path, count: int) -> dict[str, Any]:
    """Append the generations of shards 0..count-1 that generations.jsonl lacks, in task order."""
    source, (out, summary_path) = folder / TASKS.path, shards.files(folder, GENERATIONS, (0, 1))
    order = [row["id"] for row in read_stage_input(source, TASKS.stage)]
    current = _fingerprint(params, source)
    restarted = provenance.resume_or_restart(out, summary_path, current, provenance.stale_place(params, folder),
                                             lambda rows: legacy_changes(rows, params, current))
    started = time.perf_counter()
    provenance.claim(summary_path, current)
    parts = [shards.files(folder, GENERATIONS, (i, count)) for i in range(count)]
    new = shards.merge(out, order, parts, current)
    summary = {**_summary(out, new, current, restarted, time.perf_counter() - started),
               "shards": {"count": count, "seconds": [_seconds(made) for _, made in parts]}}
    write_json(summary_path, summary)
    return summary


def _fingerprint(params: Params, source: Path) -> dict[str, Any]:
    from pipelines.stages.models import model_fingerprint

    return provenance.fingerprint({"generate": provenance.record_settings("generate", params.generate, params.seed),
                                   "model": model_fingerprint(params.model)}, {TASKS.path: source})


def _summary(out: Path, new: int, current: dict[str, Any], restarted: list[str], seconds: float) -> dict[str, Any]:
    rows = list(read_records(out))
    graded = [r for r in rows if r["correct"] is not None]
    return {
        "path": str(out), "generations": len(rows), "new": new, "fingerprint": current,
        "restarted_for": restarted,
        "seconds": round(seconds, 2),
        "accuracy": sum(r["correct"] for r in graded) / len(graded) if graded else None,
        "unparseable": sum(r["parse_status"] == "unparseable" for r in rows),
        "empty_explanations": sum(not e for r in rows for e in r["explanations"]),
        "counterfactuals": _counterfactual_counts([r.get("counterfactual") for r in rows]),
    }


def _seconds(summary: Path) -> float | None:
    """A shard's own time, from its summary (None when it made nothing)."""
    return json.loads(summary.read_text()).get("seconds") if summary.exists() else None


def legacy_changes(rows: list[dict[str, Any]], params: Params, current: dict[str, Any]) -> list[str]:
    """Keys in which records written before fingerprints differ from this run (their own settings and model)."""
    model, expected = current["params"]["model"], provenance.record_settings("generate", params.generate, params.seed)
    changed = {f"generate.{key}" for _, keys in provenance.mismatched_settings(rows, lambda _: expected)
               for key in keys}
    changed |= {f"model.{key}" for row in rows for key in ("sha256", "dtype") if row["model"].get(key) != model.get(key)}
    return sorted(changed)

