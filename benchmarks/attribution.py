"""Attribution speed and exactness against stock Captum, side by side in one run.

    python benchmarks/attribution.py [--device cuda] [--n-samples 50] [--out benchmarks/results/attribution-cpu.json]

On SmolLM2-135M (the embedded model), for a real ARC-Easy question: per method, the seconds of one
whole record (1 decision + 5 explanations of ~40 tokens) with our shared-prefix path and with stock
Captum `LLMAttribution(forward_in_tokens=False)` / `LLMGradientAttribution` computing the same six
attributions, their ratio, and the largest difference between the two (relative to the largest value).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def explanation_ids(tokenizer, length: int, seed: int) -> list[int]:
    text = ("Plants absorb carbon dioxide from the air through small openings in their leaves and use the "
            "energy of sunlight to turn it, together with water, into sugar and oxygen. ") * 8
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids[seed: seed + length]


def stock_attribution(model, tokenizer, method, prompt_ids, positions, target, params):
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import (FeatureAblation, KernelShap, LayerIntegratedGradients, Lime, LLMAttribution,
                             LLMGradientAttribution, TextTokenInput)

    text = tokenizer.decode(prompt_ids)
    inp = TextTokenInput(text, tokenizer, baselines=0, skip_tokens=list(tokenizer.all_special_ids))
    inp.inp_tensor = torch.tensor([prompt_ids])  # exactly our ids and features, whatever decode/encode does
    mask = torch.zeros(1, len(prompt_ids), dtype=torch.bool)
    mask[0, positions] = True
    inp.itp_mask, inp.itp_tensor = mask, inp.inp_tensor[mask].unsqueeze(0)
    inp.n_itp_features = len(positions)
    inp.values = tokenizer.convert_ids_to_tokens([prompt_ids[p] for p in positions])
    target = torch.tensor(target)
    torch.manual_seed(11)
    if method == "lig":
        algorithm = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
        return algorithm.attribute(inp, target=target, n_steps=params.ig_steps).seq_attr
    algorithm = {"lime": lambda: Lime(model, interpretable_model=SkLearnLasso(alpha=params.lime_alpha)),
                 "kernel_shap": lambda: KernelShap(model), "feature_ablation": lambda: FeatureAblation(model)}[method]()
    kwargs = {} if method == "feature_ablation" else {"n_samples": params.n_samples}
    return LLMAttribution(algorithm, tokenizer).attribute(inp, target=target, forward_in_tokens=False, **kwargs).seq_attr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-samples", type=int, default=50)
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--explanations", type=int, default=5)
    parser.add_argument("--methods", default="feature_ablation,lime,kernel_shap,lig")
    parser.add_argument("--out", default="benchmarks/results/attribution-cpu.json")
    args = parser.parse_args()

    from pipelines.attribute import attribute_record, attribute_sequence
    from pipelines.config import AttributeParams, ModelParams, TasksParams
    from pipelines.layout import record_sequences
    from pipelines.models import load_model
    from pipelines.prompts import decision_conversation, explanation_conversation
    from pipelines.tasks import build_tasks, load_rows

    model, tokenizer, identity = load_model(ModelParams(device=args.device))
    task = build_tasks("arc_easy", *load_rows("arc_easy", TasksParams()), TasksParams(), 42)[0][0]
    answer = next(c for c in task.choices if c.label == task.answer_label)
    decision = f"{answer.label}) {answer.text}"
    sequences = record_sequences(
        tokenizer, decision_conversation(task), explanation_conversation(task, decision),
        tokenizer(decision, add_special_tokens=False).input_ids,
        [explanation_ids(tokenizer, 40, i) for i in range(args.explanations)], "first_user_message")
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "threads": torch.get_num_threads(), "device": args.device,
                           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
               "model": identity, "task": task.id, "features": len(sequences[0].feature_positions),
               "decision_tokens": len(sequences[0].target_ids), "explanation_tokens": 40,
               "n_samples": args.n_samples, "ig_steps": args.ig_steps, "record": {}}
    for method in args.methods.split(","):
        params = AttributeParams(methods=(method,), n_samples=args.n_samples, ig_steps=args.ig_steps, batch_size=32)
        started = time.perf_counter()
        ours = attribute_record(model, sequences, method, params, 0, seed=11)
        ours_s = time.perf_counter() - started
        started = time.perf_counter()
        stock = [stock_attribution(model, tokenizer, method, s.prompt_ids, s.feature_positions, s.target_ids, params)
                 .detach().double().cpu().numpy() for s in sequences]
        stock_s = time.perf_counter() - started
        started = time.perf_counter()
        single = attribute_sequence(model, sequences[1], method, params, 0, seed=11)
        single_s = time.perf_counter() - started
        difference = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) for a, b in zip(ours, stock))
        results["record"][method] = {
            "ours_seconds": round(ours_s, 2), "stock_seconds": round(stock_s, 2),
            "speedup": round(stock_s / ours_s, 2), "max_relative_difference": difference,
            "ours_single_40_token_seconds": round(single_s, 2),
            "single_speedup": round(stock_s / len(sequences) / single_s, 2)}
        print(method, json.dumps(results["record"][method]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
