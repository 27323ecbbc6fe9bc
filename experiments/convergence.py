"""Convergence study: how many perturbation samples make LIME and KernelSHAP reproducible on real decisions.

    python experiments/convergence.py --params experiments/measurement.yaml              # runs (resumable)
    python experiments/convergence.py --params experiments/measurement.yaml --analyze    # results.{json,md}

For the first `--decisions` generations of the params' bank (split evenly over its slices, in file
order), each sampling method and each n_samples in --samples: independent masks under two params seeds
(seed, seed + 1) and shared masks under the first; `--large-decisions` of them also at the largest n.
Every attribution goes through `pipelines.attribution.engine.attribute_record`, the bank's own code path, with
no controls. One JSON line per run in runs*.jsonl under --out, so an interrupted study resumes, and
`--shard i/N` splits the work over N processes (one file each).

The analysis, per method and n, with bootstrap 95% intervals over decisions:
- vector agreement: Spearman between the two seeds' vectors of the same target (decision or explanation);
- score ICC: ICC(1,1) of the explanations' alignment scores (Spearman of |d| and |e|) across the seeds;
- pick stability: how often the chosen (max) and the rejected (min) explanation are the same under both
  seeds (chance 1/k);
- masks bias: mean alignment under shared minus independent masks, same seed, paired by decision.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.analysis.controls import bootstrap_ci  # noqa: E402
from pipelines.analysis.metrics import spearman  # noqa: E402
from pipelines.core.catalog import SAMPLING_METHODS  # noqa: E402
from pipelines.core.config import load_params  # noqa: E402
from pipelines.core.partitions import model_names, slice_dir  # noqa: E402
from pipelines.core.records import Appender, Generation, read_records  # noqa: E402

RESULTS = Path("experiments/results/convergence")
ICC_STABLE = 0.5  # the level STABLE_SAMPLES_PER_FEATURE in pipelines/stages/score.py takes from this study
# below this many decisions a row is listed but labelled, and never names a stable level: a bootstrap over
# a handful of decisions gives intervals that mean nothing
MIN_DECISIONS = 10


def chosen_generations(params, decisions: int) -> list[Generation]:
    model = model_names(params)[0]
    slices = [slice_dir(params, d, model) for d in params.tasks.datasets]
    per_slice = -(-decisions // len(slices))
    chosen = []
    for folder in slices:
        rows = [Generation.from_dict(r) for r in read_records(folder / "generations.jsonl")]
        chosen.extend(rows[:per_slice])
    return chosen[:decisions]


def work_items(generations, samples, large_decisions, methods):
    """(generation, method, n, masks, seed offset), the small n first so that a cut-short run has them all,
    and within an n the two independent seeds of every decision before the shared-mask runs."""
    items = []
    for n in samples:
        subset = generations if n != max(samples) else generations[:large_decisions]
        for masks, offsets in (("independent", (0, 1)), ("shared", (0,))):
            items += [(generation, method, n, masks, offset) for generation in subset for method in methods
                      for offset in offsets]
    return items


def run_study(args) -> None:
    from pipelines.attribution.engine import (
        attribute_record,
        baseline_token_id,
        record_seeds,
    )
    from pipelines.attribution.layout import record_sequences
    from pipelines.core.prompts import decision_conversation, explanation_conversation
    from pipelines.stages.models import load_model

    params = load_params(args.params)
    out = Path(args.out)
    shard, shards = (int(x) for x in args.shard.split("/"))
    path = out / f"runs-{shard}.jsonl"
    done = {row["id"] for file in out.glob("runs*.jsonl") for row in read_records(file)}
    generations = chosen_generations(params, args.decisions)
    items = work_items(generations, args.samples, args.large_decisions, args.methods)[shard::shards]
    model, tokenizer, _ = load_model(params.model)
    baseline = baseline_token_id(tokenizer, params.attribute.baseline_token)
    started = time.perf_counter()
    with Appender(path) as sink:
        for count, (generation, method, n, masks, offset) in enumerate(items):
            seed = params.seed + offset
            key = f"{generation.id}/{method}/{n}/{masks}/{seed}"
            if key in done:
                continue
            task = generation.task
            sequences = record_sequences(tokenizer, decision_conversation(task),
                                         explanation_conversation(task, generation.decision), generation.decision_ids,
                                         generation.explanation_ids, params.attribute.features, generation.id)
            run_params = params.attribute.model_copy(update={"methods": (method,), "n_samples": n, "masks": masks})
            vectors = attribute_record(model, sequences, method, run_params, baseline,
                                       record_seeds(seed, generation.id, method, masks))
            sink.write({"id": key, "generation_id": generation.id, "dataset": task.dataset, "method": method,
                        "n_samples": n, "masks": masks, "seed": seed, "n_features": len(vectors[0]),
                        "decision": vectors[0].tolist(), "explanations": [v.tolist() for v in vectors[1:]],
                        "explanation_empty": [not ids for ids in generation.explanation_ids]})
            print(f"[{shard}/{shards}] {count + 1}/{len(items)} {key} {time.perf_counter() - started:.0f}s", flush=True)


def icc_1_1(pairs: np.ndarray) -> float:
    """ICC(1,1), one-way random effects, of (items, 2) measurements."""
    pairs = pairs[~np.isnan(pairs).any(1)]
    if len(pairs) < 3:
        return float("nan")
    k = pairs.shape[1]
    grand = pairs.mean()
    between = k * ((pairs.mean(1) - grand) ** 2).sum() / (len(pairs) - 1)
    within = ((pairs - pairs.mean(1, keepdims=True)) ** 2).sum() / (len(pairs) * (k - 1))
    return float((between - within) / (between + (k - 1) * within))


def decision_figures(a: dict, b: dict, shared: dict | None) -> dict:
    """Per-decision figures for one method and n: seed A vs seed B (independent), shared vs A."""
    own = [i for i, empty in enumerate(a["explanation_empty"]) if not empty]
    d_a, d_b = np.asarray(a["decision"]), np.asarray(b["decision"])
    vectors = [spearman(d_a, d_b)] + [spearman(np.asarray(a["explanations"][i]), np.asarray(b["explanations"][i]))
                                      for i in own]
    scores = np.array([[spearman(d_a, np.asarray(a["explanations"][i])),
                        spearman(d_b, np.asarray(b["explanations"][i]))] for i in own]).reshape(-1, 2)
    out = {"vector_agreement": float(np.nanmean(vectors)) if not np.isnan(vectors).all() else float("nan"),
           "scores": scores, "k": len(own)}
    defined = scores[~np.isnan(scores).any(1)]
    if len(defined) >= 2:
        out["same_chosen"] = float(np.argmax(defined[:, 0]) == np.argmax(defined[:, 1]))
        out["same_rejected"] = float(np.argmin(defined[:, 0]) == np.argmin(defined[:, 1]))
        out["chance"] = 1 / len(defined)
    if shared is not None:
        d_s = np.asarray(shared["decision"])
        shared_scores = [spearman(d_s, np.asarray(shared["explanations"][i])) for i in own]
        out["shared_mean"] = float(np.nanmean(shared_scores)) if own else float("nan")
        out["independent_mean"] = float(np.nanmean(scores[:, 0])) if own else float("nan")
    return out


def analyze(out: Path, samples_ci: int = 2000, seed: int = 0) -> dict:
    runs: dict[tuple, dict] = {}
    for file in sorted(out.glob("runs*.jsonl")):
        for row in read_records(file):
            runs[(row["generation_id"], row["method"], row["n_samples"], row["masks"], row["seed"])] = row
    seeds = sorted({key[4] for key in runs})
    first, second = seeds[0], seeds[1] if len(seeds) > 1 else None
    results: dict = {"icc_stable": ICC_STABLE, "methods": {}}
    for method in sorted({key[1] for key in runs}):
        results["methods"][method] = {}
        for n in sorted({key[2] for key in runs if key[1] == method}):
            figures, features = [], []
            for (generation, m, size, masks, s), a in runs.items():
                if (m, size, masks, s) != (method, n, "independent", first):
                    continue
                b = runs.get((generation, method, n, "independent", second))
                if b is None:
                    continue
                figures.append(decision_figures(a, b, runs.get((generation, method, n, "shared", first))))
                features.append(a["n_features"])
            if not figures:
                continue
            results["methods"][method][str(n)] = summarize_figures(figures, features, n, samples_ci, seed)
    results["stable_samples_per_feature"] = {
        method: next((by_n[n]["samples_per_feature"] for n in sorted(by_n, key=int)
                      if by_n[n]["supports_claim"] and (by_n[n]["score_icc"]["value"] or -1) >= ICC_STABLE), None)
        for method, by_n in results["methods"].items()}
    return results


def summarize_figures(figures: list[dict], features: list[int], n: int, samples_ci: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    score_blocks = [f["scores"] for f in figures]
    icc = icc_1_1(np.concatenate(score_blocks))
    boot = [icc_1_1(np.concatenate([score_blocks[i] for i in rng.integers(0, len(figures), len(figures))]))
            for _ in range(min(samples_ci, 1000))]
    boot = np.asarray(boot)[~np.isnan(boot)]

    def estimate(key: str) -> dict:
        values = np.array([f[key] for f in figures if key in f], float)
        return {"mean": round(float(np.nanmean(values)), 4) if len(values) else None,
                "ci95": bootstrap_ci(values, samples_ci, seed), "decisions": int((~np.isnan(values)).sum())}

    bias = np.array([f["shared_mean"] - f["independent_mean"] for f in figures if "shared_mean" in f], float)
    return {"decisions": len(figures), "supports_claim": len(figures) >= MIN_DECISIONS,
            "median_features": int(np.median(features)),
            "samples_per_feature": round(n / float(np.median(features)), 2),
            "vector_agreement": estimate("vector_agreement"),
            "score_icc": {"value": round(icc, 4), "ci95": [round(float(np.percentile(boot, 2.5)), 4),
                                                           round(float(np.percentile(boot, 97.5)), 4)]
                          if len(boot) > 10 else None},
            "same_chosen": estimate("same_chosen"), "same_rejected": estimate("same_rejected"),
            "chance": round(float(np.mean([f["chance"] for f in figures if "chance" in f])), 4),
            "shared_mean_alignment": estimate("shared_mean"),
            "independent_mean_alignment": estimate("independent_mean"),
            "shared_minus_independent": {"mean": round(float(np.nanmean(bias)), 4) if len(bias) else None,
                                         "ci95": bootstrap_ci(bias, samples_ci, seed),
                                         "decisions": int((~np.isnan(bias)).sum())}}


def markdown(results: dict) -> str:
    def ci(e):
        return f"{e['mean']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]" if e.get("ci95") else str(e.get("mean"))

    lines = ["| method | n_samples | decisions | samples / feature | vector Spearman (seed vs seed) | score ICC | "
             "same chosen | same rejected | chance | shared - independent mean Spearman |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method, by_n in results["methods"].items():
        for n, r in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            icc = r["score_icc"]
            icc_text = f"{icc['value']:+.3f}" + (f" [{icc['ci95'][0]:+.3f}, {icc['ci95'][1]:+.3f}]" if icc["ci95"] else "")
            decisions = f"{r['decisions']}" + ("" if r["supports_claim"] else " (too few for a claim)")
            lines.append(f"| {method} | {n} | {decisions} | {r['samples_per_feature']} | "
                         f"{ci(r['vector_agreement'])} | {icc_text} | {ci(r['same_chosen'])} | {ci(r['same_rejected'])} "
                         f"| {r['chance']:.2f} | {ci(r['shared_minus_independent'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="experiments/measurement.yaml")
    parser.add_argument("--decisions", type=int, default=30)
    parser.add_argument("--large-decisions", type=int, default=10, help="decisions also run at the largest n")
    parser.add_argument("--samples", type=lambda s: [int(x) for x in s.split(",")], default=[32, 128, 500])
    parser.add_argument("--methods", type=lambda s: tuple(s.split(",")), default=SAMPLING_METHODS,
                        help="comma-separated subset of the sampling methods (default: all)")
    parser.add_argument("--shard", default="0/1", help="i/N: this process takes every N-th run from the i-th")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--analyze", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.analyze:
        results = analyze(out)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "results.md").write_text(markdown(results))
        print(markdown(results))
        print(json.dumps(results["stable_samples_per_feature"]))
    else:
        run_study(args)


if __name__ == "__main__":
    main()
