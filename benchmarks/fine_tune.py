"""Data-parallel fine-tuning against the single-process run, side by side in one run; and the reference
model's log-probabilities computed once (TRL's precompute_ref_log_probs) against a reference forward in
every step.

    python benchmarks/fine_tune.py                 # writes benchmarks/results/fine_tune-cpu.{json,md}
    python benchmarks/fine_tune.py --processes 1,2,4 --steps 20 --model meta-llama/Llama-3.2-3B-Instruct
    python benchmarks/fine_tune.py --processes 1 --precompute false,true --batch-size 8 --epochs 3 \
        --out benchmarks/results/fine_tune-precompute-cpu.json   # cost per DPO step before and after

The train stage itself (`pipelines.stages.train.run`, DPO with LoRA) on the embedded SmolLM2 and preference
pairs built from real ARC-Easy questions, once per process count with the same global batch, steps and
seed: wall seconds (model loads and process start included), TRL's own train_runtime and samples per
second, and the per-step losses, with every count's ratio to the single-process run. On a CPU the
processes share the machine's cores (torch threads are split between them), so the figure here says what
the DDP machinery costs; on N GPUs each process has its own device.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

CHOSEN = "Plants take in carbon dioxide through their leaves and turn it into sugar using sunlight."
REJECTED = "Because it is the answer."


def preference_pairs(n: int) -> list[dict]:
    """n pairs in the pair stage's format, prompts from real ARC-Easy questions."""
    from pipelines.core.config import TasksParams
    from pipelines.core.prompts import explanation_conversation
    from pipelines.stages.tasks import build_tasks, load_rows

    tasks = build_tasks("arc_easy", *load_rows("arc_easy", TasksParams()), TasksParams(), 42)[0][:n]
    return [{"id": f"p{i}", "task_id": task.id, "split": "train", "method": "input_x_gradient",
             "prompt": explanation_conversation(task, f"{task.answer_label})"),
             "chosen": [{"role": "assistant", "content": CHOSEN}],
             "rejected": [{"role": "assistant", "content": REJECTED}]} for i, task in enumerate(tasks)]


def run(model: dict, processes: list[int], steps: int, batch_size: int, workdir: Path,
        precompute: tuple[bool, ...] = (True,), epochs: int = 1) -> dict:
    from pipelines.core.config import Params
    from pipelines.core.records import write_records
    from pipelines.stages import train

    # the steps cover the pairs `epochs` times: a precomputed reference pass is paid once, not every epoch
    if (batch_size * steps) % epochs:
        raise ValueError(f"{steps} steps of {batch_size} do not split into {epochs} epochs")
    pairs = preference_pairs(batch_size * steps // epochs)
    rows = []
    for count, ref_once in ((c, r) for c in processes for r in precompute):
        folder = workdir / f"processes-{count}-precompute-{ref_once}"
        write_records(folder / "pairs" / "train.jsonl", pairs)
        params = Params.model_validate({
            "model": model, "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}"},
            "train": {"algorithms": ["dpo"], "max_steps": steps, "epochs": epochs, "batch_size": batch_size, "processes": count,
                      "lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-4, "max_length": 256,
                      "save_steps": 10 * steps, "precompute_ref_log_probs": ref_once}})
        started = time.perf_counter()
        summary = train.run(params, folder)["dpo"]
        wall = time.perf_counter() - started
        final = next(h for h in reversed(summary["log_history"]) if "train_runtime" in h)
        rows.append({"processes": count, "precompute_ref_log_probs": ref_once, "steps": summary["steps"],
                     "wall_seconds": round(wall, 1), "train_runtime": final["train_runtime"],
                     "seconds_per_step": round(final["train_runtime"] / summary["steps"], 2),
                     "train_samples_per_second": final["train_samples_per_second"],
                     "losses": [round(h["loss"], 4) for h in summary["log_history"] if "loss" in h]})
    base = rows[0]
    for row in rows:
        row["train_runtime_ratio"] = round(row["train_runtime"] / base["train_runtime"], 2)
        row["wall_ratio"] = round(row["wall_seconds"] / base["wall_seconds"], 2)
    return {"steps": steps, "global_batch": batch_size, "epochs": epochs, "pairs": len(pairs), "runs": rows}


def markdown(results: dict) -> str:
    lines = [f"DPO (LoRA r 8), {results['steps']} steps, global batch {results['global_batch']}, "
             f"{results.get('pairs', results['steps'] * results['global_batch'])} pairs "
             f"({results.get('epochs', 1)} epoch(s)), "
             f"{results['model']['id']} on {results['machine']['device']}",
             "", "TRL computes precomputed reference log-probs before its train_runtime clock starts: wall seconds "
             "(model load included) hold that pass, train_runtime and s / step do not. Ratios against the first row.",
             "",
             "| processes | reference log-probs | steps | wall s | wall ratio | TRL train_runtime s | s / step | "
             "samples/s | runtime ratio | losses |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["runs"]:
        reference = "precomputed once" if row["precompute_ref_log_probs"] else "every step"
        lines.append(f"| {row['processes']} | {reference} | {row['steps']} | {row['wall_seconds']} | {row['wall_ratio']}x | "
                     f"{row['train_runtime']} | {row['seconds_per_step']} | {row['train_samples_per_second']} | "
                     f"{row['train_runtime_ratio']}x | {row['losses']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="model id (default: the embedded SmolLM2)")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--precompute", default="true", help="precompute_ref_log_probs values, e.g. false,true")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=1, help="passes over the pairs that the steps make")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from results_files import write_results

    from pipelines.core.config import ModelParams
    from pipelines.stages.models import load_model

    model = {"device": args.device, **({"id": args.model} if args.model else {})}
    identity = load_model(ModelParams(**model))[2]  # converts the embedded model once, before any timing
    with tempfile.TemporaryDirectory(prefix="pscb-fine-tune-bench-") as workdir:
        results = {"machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                               "device": args.device, "torch": torch.__version__},
                   "model": identity,
                   **run(model, [int(p) for p in args.processes.split(",")], args.steps, args.batch_size,
                         Path(workdir), tuple(flag.strip().lower() == "true" for flag in args.precompute.split(",")),
                         args.epochs)}
    write_results(results, markdown(results), "fine_tune", args.device, args.out)


if __name__ == "__main__":
    main()
