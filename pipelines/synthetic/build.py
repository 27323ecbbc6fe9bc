"""Build the known-answer model (cached) and report its held-out accuracy.

    python -m pipelines.synthetic.build --params experiments/known_answer.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipelines.core.config import SyntheticParams, load_params
from pipelines.synthetic.model import known_answer_model


def held_out_accuracy(folder: Path, world: SyntheticParams, seed: int, count: int = 200) -> dict[str, Any]:
    """Greedy decisions on questions of the bank's own stream (the `synthetic` dataset's): accuracy and the
    faithful share of greedy explanations."""
    from pipelines.core.prompts import decision_conversation, parse_answer
    from pipelines.stages.tasks import build_tasks, load_rows
    from pipelines.core.config import TasksParams
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    source = TasksParams(source="synthetic", datasets=("synthetic",))
    tasks, _ = build_tasks("synthetic", *load_rows("synthetic", source, world, seed), source, seed)
    tasks = tasks[:count]
    correct = 0
    for task in tasks:
        ids = tokenizer.apply_chat_template(decision_conversation(task), add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=4, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        correct += parse_answer(text, task)[0] == task.answer_label
    return {"questions": len(tasks), "accuracy": correct / len(tasks)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.synthetic.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="experiments/known_answer.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    folder, identity = known_answer_model(params.synthetic, params.seed, params.model.cache_dir)
    report = {"folder": str(folder), **identity, **held_out_accuracy(folder, params.synthetic, params.seed)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
