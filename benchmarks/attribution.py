"""Attribution speed and exactness against stock Captum, side by side in one run.

    python benchmarks/attribution.py                  # CPU, writes benchmarks/results/attribution-cpu.{json,md}
    python benchmarks/attribution.py --device cuda    # on a GPU, writes ...-cuda.{json,md}

On SmolLM2-135M (the embedded model) and a real ARC-Easy question, per method (LIME, KernelSHAP,
feature ablation, LIG, input x gradient) and per target (a <=5-token decision, a 40-token and a
200-token explanation): seconds per attribution for ours, for stock Captum (`LLMAttribution` with
forward_in_tokens=False / `LLMGradientAttribution`) with the same model, input, target and
perturbation samples, and for the released code's first-position approximation; the ratios; the
largest difference between our values and stock's (relative to stock's largest value); the
token-forwards computed and the throughput reached against the machine's measured peak. Then a whole
record (1 decision + 5 explanations of 40 tokens) ours vs stock, LIME-500 on a record, and stock's
default token-by-token path on one case.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from collections.abc import Callable

import numpy as np
import torch

TEXT = ("Plants absorb carbon dioxide from the air through small openings in their leaves and use the energy "
        "of sunlight to turn it, together with water, into sugar and oxygen. ") * 12


class TokenCounter:
    """Token positions entering the model (ours and stock alike), via a hook on the embedding layer."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.get_input_embeddings().register_forward_hook(self._add)

    def _add(self, module, inputs, output) -> None:
        self.count += inputs[0].numel()

    def measure(self, work: Callable[[], object]) -> tuple[float, int, object]:
        start_count, started = self.count, time.perf_counter()
        result = work()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - started, self.count - start_count, result


def stock_input(tokenizer, sequence):
    """TextTokenInput holding exactly our prompt ids and features (decode/encode need not round-trip)."""
    from captum.attr import TextTokenInput

    inp = TextTokenInput("x", tokenizer, baselines=0)
    inp.inp_tensor = torch.tensor([sequence.prompt_ids])
    inp.itp_mask = torch.zeros(1, len(sequence.prompt_ids), dtype=torch.bool)
    inp.itp_mask[0, sequence.feature_positions] = True
    inp.itp_tensor = inp.inp_tensor[inp.itp_mask].unsqueeze(0)
    inp.n_itp_features = len(sequence.feature_positions)
    inp.values = tokenizer.convert_ids_to_tokens([sequence.prompt_ids[p] for p in sequence.feature_positions])
    return inp


def stock_attribution(model, tokenizer, method, sequence, params, forward_in_tokens=False, seed=11) -> np.ndarray:
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import (
        FeatureAblation,
        KernelShap,
        LayerGradientXActivation,
        LayerIntegratedGradients,
        Lime,
        LLMAttribution,
        LLMGradientAttribution,
    )

    inp, target = stock_input(tokenizer, sequence), torch.tensor(sequence.target_ids)
    torch.manual_seed(seed)
    if method in ("lig", "input_x_gradient"):
        layer = model.get_input_embeddings()
        algorithm = LayerIntegratedGradients(model, layer) if method == "lig" else LayerGradientXActivation(model, layer)
        kwargs = {"n_steps": params.ig_steps} if method == "lig" else {}
        values = LLMGradientAttribution(algorithm, tokenizer).attribute(inp, target=target, **kwargs).seq_attr
    else:
        algorithm = {"lime": lambda: Lime(model, interpretable_model=SkLearnLasso(alpha=params.lime_alpha)),
                     "kernel_shap": lambda: KernelShap(model),
                     "feature_ablation": lambda: FeatureAblation(model)}[method]()
        kwargs = {} if method == "feature_ablation" else {"n_samples": params.n_samples}
        values = LLMAttribution(algorithm, tokenizer).attribute(
            inp, target=target, forward_in_tokens=forward_in_tokens, **kwargs).seq_attr
    return values.detach().double().cpu().numpy()


def relative_difference(ours: np.ndarray, stock: np.ndarray) -> float:
    return float(np.abs(ours - stock).max() / max(np.abs(stock).max(), 1e-12))


def peak_throughput(model, length: int, batch_sizes: list[int], repeats: int = 2) -> dict[int, float]:
    """Decoder forward tokens/s at each batch size (no LM head: the most favourable measure)."""
    ids = torch.randint(100, 1000, (max(batch_sizes), length), device=model.device)
    rates = {}
    with torch.inference_mode():
        for batch in batch_sizes:
            model.get_decoder()(input_ids=ids[:batch])  # warm-up
            started = time.perf_counter()
            for _ in range(repeats):
                model.get_decoder()(input_ids=ids[:batch])
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            rates[batch] = round(repeats * batch * length / (time.perf_counter() - started), 1)
    return rates


def build_sequences(tokenizer, task, explanation_lengths: list[int]):
    from pipelines.attribution.layout import record_sequences
    from pipelines.core.prompts import decision_conversation, explanation_conversation

    answer = next(c for c in task.choices if c.label == task.answer_label)
    decision = f"{answer.label}) {answer.text}"
    decision_ids = tokenizer(decision, add_special_tokens=False).input_ids[:5]
    text_ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    return record_sequences(tokenizer, decision_conversation(task),
                            explanation_conversation(task, tokenizer.decode(decision_ids)), decision_ids,
                            [text_ids[i: i + n] for i, n in enumerate(explanation_lengths)], "first_user_message")


def single_cases(model, tokenizer, counter, cases, methods, params, stock_token_limit, peak) -> list[dict]:
    from pipelines.attribution.engine import attribute_sequence
    from pipelines.core.catalog import PERTURBATION_METHODS

    rows = []
    for method in methods:
        for name, sequence in cases.items():
            run_params = params.model_copy(update={"methods": (method,)})
            ours_s, ours_tokens, ours = counter.measure(
                lambda: attribute_sequence(model, sequence, method, run_params, 0, seed=11))
            row = {"method": method, "target": name, "target_tokens": len(sequence.target_ids),
                   "ours_seconds": round(ours_s, 3), "ours_token_forwards": ours_tokens,
                   "ours_tokens_per_second": round(ours_tokens / ours_s, 1),
                   "fraction_of_peak": round(ours_tokens / ours_s / peak, 3)}
            if method in ("lig", "input_x_gradient") and len(sequence.target_ids) > stock_token_limit:
                # stock runs one gradient pass per target token: time a prefix, scale by the length
                part = type(sequence)(sequence.prompt_ids, sequence.target_ids[:stock_token_limit],
                                      sequence.feature_positions)
                stock_s, _, _ = counter.measure(lambda: stock_attribution(model, tokenizer, method, part, run_params))
                row["stock_seconds"] = round(stock_s * len(sequence.target_ids) / stock_token_limit, 3)
                row["stock_projected_from_tokens"] = stock_token_limit
            else:
                stock_s, stock_tokens, stock = counter.measure(
                    lambda: stock_attribution(model, tokenizer, method, sequence, run_params))
                row.update(stock_seconds=round(stock_s, 3), stock_token_forwards=stock_tokens,
                           max_relative_difference=relative_difference(ours, stock))
            row["speedup_vs_stock"] = round(row["stock_seconds"] / ours_s, 2)
            if method in PERTURBATION_METHODS:
                first = run_params.model_copy(update={"target": "first_position"})
                first_s, _, _ = counter.measure(lambda: attribute_sequence(model, sequence, method, first, 0, seed=11))
                row.update(first_position_seconds=round(first_s, 3), ratio_to_first_position=round(ours_s / first_s, 2))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def record_cases(model, tokenizer, counter, record, methods, params, peak) -> list[dict]:
    """Whole records: ours with independent masks (the default: the decision's own samples, 12; the
    explanations', 11), ours with one shared set, stock Captum per target with the same seeds, and the
    released code's first-position approximation."""
    from pipelines.attribution.engine import attribute_record, attribute_sequence
    from pipelines.core.catalog import PERTURBATION_METHODS, SAMPLING_METHODS

    rows = []
    for method in [m for m in methods if m in PERTURBATION_METHODS]:
        run_params = params.model_copy(update={"methods": (method,)})
        first = run_params.model_copy(update={"target": "first_position"})
        seeds = (12, 11) if method in SAMPLING_METHODS else None
        ours_s, ours_tokens, ours = counter.measure(lambda: attribute_record(model, record, method, run_params, 0,
                                                                             seeds))
        stock_s, stock_tokens, stock = counter.measure(
            lambda: [stock_attribution(model, tokenizer, method, s, run_params, seed=(seeds or (11, 11))[i > 0])
                     for i, s in enumerate(record)])
        first_s, _, _ = counter.measure(lambda: [attribute_sequence(model, s, method, first, 0, 11) for s in record])
        row = {"method": method, "record": f"1 decision ({len(record[0].target_ids)} tokens) + {len(record) - 1} "
               f"explanations ({len(record[1].target_ids)} tokens)", "ours_seconds": round(ours_s, 2),
               "stock_seconds": round(stock_s, 2), "speedup_vs_stock": round(stock_s / ours_s, 2),
               "first_position_seconds": round(first_s, 2), "ratio_to_first_position": round(ours_s / first_s, 2),
               "ours_token_forwards": ours_tokens, "stock_token_forwards": stock_tokens,
               "fraction_of_peak": round(ours_tokens / ours_s / peak, 3),
               "max_relative_difference": max(relative_difference(a, b) for a, b in zip(ours, stock))}
        if seeds:  # what independent masks cost over one shared set
            shared_s, shared_tokens, _ = counter.measure(
                lambda: attribute_record(model, record, method, run_params, 0, (11, 11)))
            row.update(shared_masks_seconds=round(shared_s, 2), shared_masks_token_forwards=shared_tokens,
                       independent_over_shared=round(ours_s / shared_s, 2))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(results: dict) -> str:
    lines = ["| method | target | ours s | stock s | speed-up | first-position s | max diff | % of peak |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["single"]:
        stock = f"{r['stock_seconds']}" + (" (proj.)" if "stock_projected_from_tokens" in r else "")
        diff = f"{r['max_relative_difference']:.1e}" if "max_relative_difference" in r else "-"
        lines.append(f"| {r['method']} | {r['target']} | {r['ours_seconds']} | {stock} | {r['speedup_vs_stock']}x | "
                     f"{r.get('first_position_seconds', '-')} | {diff} | {100 * r['fraction_of_peak']:.0f}% |")
    lines += ["", "| method | whole record | ours s | shared masks s | stock s | speed-up | first-position s | max diff "
              "| % of peak |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["record"]:
        shared = f"{r['shared_masks_seconds']} ({r['independent_over_shared']}x)" if "shared_masks_seconds" in r else "-"
        lines.append(f"| {r['method']} | {r['record']} | {r['ours_seconds']} | {shared} | {r['stock_seconds']} | "
                     f"{r['speedup_vs_stock']}x | {r['first_position_seconds']} | {r['max_relative_difference']:.1e} | "
                     f"{100 * r['fraction_of_peak']:.0f}% |")
    return "\n".join(lines) + "\n"


def run(model, tokenizer, task, params, methods, lengths=(40, 200), record_explanations=5, lime_500=True,
        stock_token_limit=20, batch_sizes=(1, 4, 16, 32)) -> dict:
    counter = TokenCounter(model)
    sequences = build_sequences(tokenizer, task, list(lengths))
    cases = {"decision": sequences[0], **{f"explanation-{n}": s for n, s in zip(lengths, sequences[1:])}}
    record = build_sequences(tokenizer, task, [lengths[0]] * record_explanations)
    length = len(record[1].prompt_ids) + lengths[0]
    rates = peak_throughput(model, length, list(batch_sizes))
    peak = max(rates.values())
    results = {"peak_tokens_per_second": {"length": length, "by_batch_size": rates, "best": peak},
               "features": len(sequences[0].feature_positions), "decision_prompt_tokens": len(sequences[0].prompt_ids),
               "explanation_prompt_tokens": len(sequences[1].prompt_ids),
               "single": single_cases(model, tokenizer, counter, cases, methods, params, stock_token_limit, peak),
               "record": record_cases(model, tokenizer, counter, record, methods, params, peak)}
    if "feature_ablation" in methods:  # stock's default path: token by token with its KV cache
        run_params = params.model_copy(update={"methods": ("feature_ablation",)})
        seconds, _, values = counter.measure(lambda: stock_attribution(
            model, tokenizer, "feature_ablation", sequences[0], run_params, forward_in_tokens=True))
        seq_seconds, _, exact = counter.measure(lambda: stock_attribution(
            model, tokenizer, "feature_ablation", sequences[0], run_params))
        results["stock_default_path"] = {
            "method": "feature_ablation", "target": "decision", "seconds": round(seconds, 3),
            "forward_in_tokens_false_seconds": round(seq_seconds, 3),
            "max_relative_difference_to_exact": relative_difference(values, exact)}
    if lime_500 and "lime" in methods:
        run_params = params.model_copy(update={"methods": ("lime",), "n_samples": 500})
        from pipelines.attribution.engine import attribute_record

        seconds, _, _ = counter.measure(lambda: attribute_record(model, record, "lime", run_params, 0, (12, 11)))
        stock_50 = next(r["stock_seconds"] for r in results["record"] if r["method"] == "lime")
        results["lime_500_record"] = {"ours_seconds": round(seconds, 2),
                                      "stock_seconds_projected": round(stock_50 * 500 / params.n_samples, 1)}
    if torch.cuda.is_available():
        results["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    results["peak_process_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    counter.handle.remove()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="model id (default: the embedded SmolLM2)")
    parser.add_argument("--n-samples", type=int, default=50, help="LIME / KernelSHAP samples")
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--methods", default="feature_ablation,lime,kernel_shap,lig,input_x_gradient")
    parser.add_argument("--no-lime-500", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from results_files import write_results

    from pipelines.core.config import AttributeParams, ModelParams, TasksParams
    from pipelines.stages.models import load_model
    from pipelines.stages.tasks import build_tasks, load_rows

    model_params = ModelParams(device=args.device, **({"id": args.model} if args.model else {}))
    model, tokenizer, identity = load_model(model_params)
    task = build_tasks("arc_easy", *load_rows("arc_easy", TasksParams()), TasksParams(), 42)[0][0]
    params = AttributeParams(n_samples=args.n_samples, ig_steps=args.ig_steps)
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                           "torch_threads": torch.get_num_threads(), "device": args.device, "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
               "model": identity, "task": task.id, "n_samples": args.n_samples, "ig_steps": args.ig_steps,
               **run(model, tokenizer, task, params, args.methods.split(","), lime_500=not args.no_lime_500)}
    write_results(results, markdown(results), "attribution", args.device, args.out)


if __name__ == "__main__":
    main()
