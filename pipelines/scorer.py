"""The forward function every Captum algorithm calls: teacher-forced log p(target | perturbed prompt).

`TargetScorer(model, sequence, baseline_id)(masks)` maps a (B, F) batch of feature masks (1 = keep,
anything else = replace by the baseline token, Captum's TextTokenInput semantics) to (B,) total
log-probabilities, one forward pass over [prompt ; target] per row, many rows per pass. The language
model head runs at the target positions only: for a 40-token target after a 150-token prompt that is
a quarter of the head's work, and the (B, T, vocab) logits are all that is ever materialised.
"""

from __future__ import annotations

from typing import Literal

import torch

from pipelines.layout import Sequence

LOGIT_BUDGET_BYTES = 256 * 2**20  # cap on one chunk's fp32 (rows, target, vocab) logits


class TargetScorer:
    def __init__(self, model, sequence: Sequence, baseline_id: int, batch_size: int = 32,
                 target: Literal["sequence", "first_position"] = "sequence"):
        self.model = model
        self.device = model.device
        self.prompt_len = len(sequence.prompt_ids)
        ids = sequence.prompt_ids + (sequence.target_ids if target == "sequence" else [])
        self.ids = torch.tensor(ids, device=self.device)
        self.targets = torch.tensor(sequence.target_ids, dtype=torch.long, device=self.device)
        self.positions = torch.tensor(sequence.feature_positions, dtype=torch.long, device=self.device)
        self.baseline_id = baseline_id
        self.batch_size = batch_size
        self.target = target
        vocab = model.config.vocab_size
        per_row = max(1, len(sequence.target_ids) if target == "sequence" else 1) * vocab * 4
        self.rows_per_chunk = max(1, min(batch_size, LOGIT_BUDGET_BYTES // per_row))
        self.forwards = 0  # perturbed sequences scored, for throughput accounting

    def token_ids(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, F) masks -> (B, L) ids with removed features replaced by the baseline token."""
        ids = self.ids.expand(masks.shape[0], -1).clone()
        removed = masks.to(self.device) != 1
        feature_ids = ids[:, self.positions]
        ids[:, self.positions] = torch.where(removed, torch.full_like(feature_ids, self.baseline_id), feature_ids)
        return ids

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.dim() == 1:
            masks = masks.unsqueeze(0)
        return torch.cat([self._score(masks[i:i + self.rows_per_chunk])
                          for i in range(0, masks.shape[0], self.rows_per_chunk)])

    def _score(self, masks: torch.Tensor) -> torch.Tensor:
        ids = self.token_ids(masks)
        self.forwards += ids.shape[0]
        hidden = self.model.get_decoder()(input_ids=ids).last_hidden_state
        if self.target == "first_position":
            # released code: every target token scored at the first output position (a bag of tokens)
            logits = _at_least_fp32(self.model.get_output_embeddings()(hidden[:, self.prompt_len - 1]))
            return logits.log_softmax(-1)[:, self.targets].sum(-1)
        # position t predicts token t + 1: the head runs only where a target token is predicted
        steps = hidden[:, self.prompt_len - 1: self.prompt_len - 1 + len(self.targets)]
        logits = _at_least_fp32(self.model.get_output_embeddings()(steps))
        picked = logits.gather(-1, self.targets.expand(ids.shape[0], -1).unsqueeze(-1)).squeeze(-1)
        return (picked - logits.logsumexp(-1)).sum(-1)


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    # bf16 log-softmax loses the small differences attribution is made of; fp64 (tests) stays fp64
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
