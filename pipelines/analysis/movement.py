"""Did the fine-tune move the policy? Checked on held-out pairs before any evaluation claim.

On the eval pairs (tasks never trained on), for the policy (adapter on) and the reference (adapter off):
sequence log-probabilities of the chosen and the rejected explanation, tokenized as TRL tokenizes a
conversational preference (the prompt's chat template with the generation prompt, then the rest of the
full conversation's template). From them: DPO's implicit rewards beta * (log pi - log pi_ref), the reward
accuracy with a one-sided binomial test against 0.5, the mean margin, the mean log-probability shift of
chosen and rejected, and the per-token KL(policy || reference) over the chosen completions. The reward
accuracy is the quantity TRL logs as eval `rewards/accuracies` (tests/test_movement.py checks one
against the other). `changed_outputs` compares what two models wrote on the same tasks at evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pair_tokens(tokenizer, prompt: list[dict], completion: list[dict], max_length: int) -> tuple[list[int], int]:
    """(prompt + completion ids, where the completion starts), as TRL's DPO tokenizes a conversational
    example: the completion starts where the templated prompt and prompt + completion diverge; keep_start
    truncation at max_length."""
    prompt_ids = _ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
    full_ids = _ids(tokenizer.apply_chat_template(prompt + completion, tokenize=True))
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), min(len(prompt_ids),
                                                                                          len(full_ids)))
    return full_ids[:max_length], start


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def completion_logprobs(model, ids: list[int], start: int):
    """Per-token log-probabilities of ids[start:] and the next-token log-distributions that produced them."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0, start - 1:-1].float()
    distributions = torch.log_softmax(logits, -1)
    targets = torch.tensor(ids[start:], device=model.device)
    return distributions.gather(1, targets[:, None])[:, 0], distributions


def policy_movement(model, tokenizer, pairs: list[dict[str, Any]], beta: float, max_length: int) -> dict[str, Any]:
    """Held-out movement of a PEFT policy against its own base (the adapter disabled)."""
    from scipy.stats import binomtest

    chosen_shift, rejected_shift, margins, kl_tokens = [], [], [], []
    model.eval()
    for pair in pairs:
        logps = {}
        for side in ("chosen", "rejected"):
            ids, start = pair_tokens(tokenizer, pair["prompt"], pair[side], max_length)
            policy, policy_dist = completion_logprobs(model, ids, start)
            with model.disable_adapter():
                reference, reference_dist = completion_logprobs(model, ids, start)
            logps[side] = float(policy.sum() - reference.sum())
            if side == "chosen":
                kl = (policy_dist.exp() * (policy_dist - reference_dist)).sum(-1)
                kl_tokens.extend(kl.tolist())
        chosen_shift.append(logps["chosen"])
        rejected_shift.append(logps["rejected"])
        margins.append(beta * (logps["chosen"] - logps["rejected"]))
    n = len(margins)
    if not n:
        return {"pairs": 0}
    wins = int(sum(m > 0 for m in margins))
    return {"pairs": n, "reward_accuracy": wins / n,
            "reward_accuracy_p": float(binomtest(wins, n, 0.5, alternative="greater").pvalue),
            "reward_margin": float(np.mean(margins)),
            "logp_shift_chosen": float(np.mean(chosen_shift)), "logp_shift_rejected": float(np.mean(rejected_shift)),
            "kl_per_token": float(np.mean(kl_tokens)) if kl_tokens else None}


def changed_outputs(reference: list[dict[str, Any]], tuned: list[dict[str, Any]]) -> dict[str, Any]:
    """Of the tasks both generations cover: the share of decisions and of explanations whose tokens differ."""
    by_task = {g["task"]["id"]: g for g in reference}
    decisions = explanations = changed_decisions = changed_explanations = 0
    for generation in tuned:
        base = by_task.get(generation["task"]["id"])
        if base is None:
            continue
        decisions += 1
        changed_decisions += base["decision_ids"] != generation["decision_ids"]
        for mine, theirs in zip(generation["explanation_ids"], base["explanation_ids"]):
            explanations += 1
            changed_explanations += mine != theirs
    return {"decisions": decisions, "decisions_changed": changed_decisions / decisions if decisions else None,
            "explanations": explanations,
            "explanations_changed": changed_explanations / explanations if explanations else None}
