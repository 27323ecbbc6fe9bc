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

from pipelines.attribution.layout import Sequence

LOGIT_BUDGET_BYTES = 256 * 2**20  # cap on one chunk's fp32 (rows, target, vocab) logits


def perturbed_ids(ids: torch.Tensor, positions: torch.Tensor, masks: torch.Tensor, baseline_id: int) -> torch.Tensor:
    """(L,) ids and (B, F) masks -> (B, L) ids with the removed features replaced by the baseline token."""
    batch = ids.expand(masks.shape[0], -1).clone()
    features = batch[:, positions]
    removed = masks.to(ids.device) != 1
    batch[:, positions] = torch.where(removed, torch.full_like(features, baseline_id), features)
    return batch


class UnperturbedPrefix:
    """Run a batch of perturbed copies of one sequence from its first perturbed position only.

    The tokens before the first position any row of the batch removes (the chat template's header and
    system block always; for feature ablation, every feature before the ablated ones) are the same in
    every row and in the unperturbed sequence: their keys and values are computed once and shared."""

    def __init__(self, model, ids: torch.Tensor, positions: torch.Tensor):
        self.model, self.ids, self.positions = model, ids, positions
        self._state = None

    def _unperturbed(self):
        if self._state is None:
            out = self.model.get_decoder()(input_ids=self.ids[None], use_cache=True)
            self._state = ([(layer.keys, layer.values) for layer in out.cache.layers], out.last_hidden_state)
        return self._state

    def forward(self, ids: torch.Tensor, masks: torch.Tensor):
        """(B, L) perturbed ids and their (B, F) masks -> (B, L, H) hidden states, the cache, tokens run."""
        from transformers import DynamicCache

        layers, hidden = self._unperturbed()
        touched = (masks.to(self.ids.device) != 1).any(0)
        # at least the last token runs, so that the cache and the hidden states cover the whole batch
        start = min(int(self.positions[touched].min()) if bool(touched.any()) else len(self.ids), len(self.ids) - 1)
        rows = ids.shape[0]
        cache = DynamicCache(config=self.model.config)
        for index, (keys, values) in enumerate(layers):
            cache.update(keys[:, :, :start].expand(rows, -1, -1, -1), values[:, :, :start].expand(rows, -1, -1, -1),
                         index)
        out = self.model.get_decoder()(input_ids=ids[:, start:], cache=cache, use_cache=True)
        full = torch.cat([hidden[:, :start].expand(rows, -1, -1), out.last_hidden_state], dim=1)
        return full, out.cache, rows * (ids.shape[1] - start)


class TargetScorer:
    def __init__(self, model, sequence: Sequence, baseline_id: int, batch_size: int = 32,
                 target: Literal["sequence", "first_position"] = "sequence", share_prefix: bool = True):
        self.model = model
        self.device = model.device
        self.prompt_len = len(sequence.prompt_ids)
        ids = sequence.prompt_ids + (sequence.target_ids if target == "sequence" else [])
        self.ids = torch.tensor(ids, device=self.device)
        self.targets = torch.tensor(sequence.target_ids, dtype=torch.long, device=self.device)
        self.positions = torch.tensor(sequence.feature_positions, dtype=torch.long, device=self.device)
        self.n_features = len(sequence.feature_positions)
        self.baseline_id = baseline_id
        self.batch_size = batch_size
        self.target = target
        # gradient methods hook the embedding layer, which must then see every position of every row
        self.prefix = UnperturbedPrefix(model, self.ids, self.positions) if share_prefix else None
        self.forwards = 0  # perturbed sequences scored
        self.tokens = 0  # token positions run through the decoder, for throughput accounting

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.dim() == 1:
            masks = masks.unsqueeze(0)
        return torch.cat([self._score(masks[i:i + self.batch_size]) for i in range(0, masks.shape[0], self.batch_size)])

    def _score(self, masks: torch.Tensor) -> torch.Tensor:
        ids = perturbed_ids(self.ids, self.positions, masks, self.baseline_id)
        self.forwards += ids.shape[0]
        if self.prefix is None:
            hidden = self.model.get_decoder()(input_ids=ids).last_hidden_state
            self.tokens += ids.numel()
        else:
            hidden, _, tokens = self.prefix.forward(ids, masks)
            self.tokens += tokens
        if self.target == "first_position":
            # released code: every target token scored at the first output position (a bag of tokens)
            logits = _at_least_fp32(self.model.get_output_embeddings()(hidden[:, self.prompt_len - 1]))
            return logits.log_softmax(-1)[:, self.targets].sum(-1)
        # position t predicts token t + 1: the head runs only where a target token is predicted
        steps = hidden[:, self.prompt_len - 1: self.prompt_len - 1 + len(self.targets)]
        return _sum_log_probs(self.model.get_output_embeddings(), steps, self.targets)


def rows_within_budget(model, length: int, budget_bytes: float, backward: bool = False) -> int:
    """How many sequences of `length` tokens one forward (and backward) may take within the budget.

    Counts the KV cache of every layer (kept for the shared prefix), one layer's transient tensors
    (attention scores included), and for gradient methods the activations autograd keeps per layer.
    Logits are chunked separately (LOGIT_BUDGET_BYTES)."""
    config = model.config
    size = next(model.parameters()).element_size()
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_token = layers * 2 * kv * head_dim + 4 * hidden + 3 * inter + heads * length
    if backward:
        per_token += layers * (10 * hidden + 4 * inter)
    return max(1, int(budget_bytes // (length * per_token * size)))


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    # bf16 log-softmax loses the small differences attribution is made of; fp64 (tests) stays fp64
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class RecordScorer:
    """All targets of one record (decision + k explanations) under the same masks, sharing the work.

    The explanation prompt [question; decision; why-turn] holds the decision prompt and the decision's
    own tokens as its prefix, so one forward over the perturbed explanation prompt yields the
    decision's log-probability, and its KV cache serves the k explanation continuations. Scores are
    memoised by mask: Captum runs once per target with the same seed, and only the first run computes.
    """

    def __init__(self, model, decision: Sequence, explanations: list[Sequence], baseline_id: int, batch_size: int):
        prompt = explanations[0].prompt_ids
        if any(e.prompt_ids != prompt or e.feature_positions != decision.feature_positions for e in explanations):
            raise ValueError("explanations of one record must share their prompt and features")
        self.model, self.device = model, model.device
        self.decision_len = len(decision.prompt_ids)
        self.decision_inside = prompt[: self.decision_len + len(decision.target_ids)] == \
            decision.prompt_ids + decision.target_ids
        self.decision_alone = None if self.decision_inside else TargetScorer(model, decision, baseline_id, batch_size)
        self.prompt = torch.tensor(prompt, device=self.device)
        self.positions = torch.tensor(decision.feature_positions, dtype=torch.long, device=self.device)
        self.baseline_id = baseline_id
        self.prefix = UnperturbedPrefix(model, self.prompt, self.positions)
        self.decision_targets = torch.tensor(decision.target_ids, dtype=torch.long, device=self.device)
        self.explanation_targets = [torch.tensor(e.target_ids, dtype=torch.long, device=self.device)
                                    for e in explanations]
        self.batch_size = batch_size
        self.memo: dict[bytes, torch.Tensor] = {}
        self.forwards = 0
        self.tokens = 0

    def target(self, index: int) -> RecordTarget:
        """Forward for Captum: (B, F) masks -> (B,) log-probs of target `index` (0 = decision)."""
        return RecordTarget(self, index)

    def scores(self, masks: torch.Tensor) -> list[torch.Tensor]:
        """(B, F) masks -> one (1 + k,) row of scores per mask, computing only masks not seen before."""
        keys = [bytes(row) for row in (masks.to("cpu") == 1).to(torch.uint8).numpy()]
        missing = [i for i, key in enumerate(keys) if key not in self.memo]
        for start in range(0, len(missing), self.batch_size):
            rows = missing[start:start + self.batch_size]
            for i, scores in zip(rows, self.all_targets(masks[rows])):
                self.memo[keys[i]] = scores
        return [self.memo[key] for key in keys]

    def all_targets(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, F) masks -> (B, 1 + k) log-probs: the decision, then each explanation."""
        ids = perturbed_ids(self.prompt, self.positions, masks, self.baseline_id)
        self.forwards += ids.shape[0]
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        hidden, cache, tokens = self.prefix.forward(ids, masks)
        self.tokens += tokens + ids.shape[0] * sum(max(0, len(t) - 1) for t in self.explanation_targets)
        if self.decision_inside:
            steps = hidden[:, self.decision_len - 1: self.decision_len - 1 + len(self.decision_targets)]
            decision = _sum_log_probs(head, steps, self.decision_targets)
        else:
            decision = self.decision_alone(masks)
        scores = [decision]
        last = hidden[:, -1:]
        prefix_len = ids.shape[1]
        for targets in self.explanation_targets:
            if len(targets) == 0:
                scores.append(torch.zeros_like(decision))
                continue
            steps = last
            if len(targets) > 1:  # teacher forcing from the shared prefix's cache
                more = decoder(input_ids=targets[:-1].expand(ids.shape[0], -1), cache=cache, use_cache=True)
                steps = torch.cat([last, more.last_hidden_state], dim=1)
                cache.crop(-(cache.get_seq_length() - prefix_len))
            scores.append(_sum_log_probs(head, steps, targets))
        return torch.stack(scores, dim=1)


class RecordTarget:
    """One target of a RecordScorer, with the attributes every attribution method reads from its forward."""

    def __init__(self, record: RecordScorer, index: int):
        self.record, self.index = record, index
        self.model, self.device, self.batch_size = record.model, record.device, record.batch_size
        self.positions = record.positions
        self.n_features = len(record.positions)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.dim() == 1:
            masks = masks.unsqueeze(0)
        return torch.stack([row[self.index] for row in self.record.scores(masks)]).to(self.device)


def _sum_log_probs(head, steps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T, H) hidden states predicting (T,) targets -> (B,) summed log-probs, in row chunks so that
    the (rows, T, vocab) logits stay under LOGIT_BUDGET_BYTES."""
    rows = max(1, LOGIT_BUDGET_BYTES // max(1, steps.shape[1] * head.weight.shape[0] * 4))
    sums = []
    for start in range(0, steps.shape[0], rows):
        logits = _at_least_fp32(head(steps[start:start + rows]))
        picked = logits.gather(-1, targets.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)
        sums.append((picked - logits.logsumexp(-1)).sum(-1))
    return torch.cat(sums)
