"""One record's attribution vectors: every method of pipelines/attribution/methods.py over the scorer.

`attribute_sequence` attributes one target on its own; `attribute_record` attributes a decision and its
explanations, sharing the perturbation forwards of the explanations (RecordScorer) where it can. Both
build the forward a method's family needs (catalog.py) and call the method through its one signature
(methods.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.attribution.layout import Sequence
from pipelines.attribution.methods import attribute
from pipelines.attribution.scorer import RecordScorer, TargetScorer, rows_within_budget
from pipelines.core.catalog import METHODS, SAMPLING_METHODS
from pipelines.core.seeds import derive_seed

if TYPE_CHECKING:
    import numpy as np

    from pipelines.core.config import AttributeParams


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


def target_forward(model, sequence: Sequence, method: str, params: AttributeParams, baseline_id: int
                   ) -> TargetScorer:
    """The forward a method's family needs for one target on its own."""
    gradient = METHODS[method].family == "gradient"
    rows = batch_rows(model, len(sequence.prompt_ids) + len(sequence.target_ids), params, backward=gradient)
    if gradient:  # the embedding hook must see every position of every row, and the target is the sequence
        return TargetScorer(model, sequence, baseline_id, rows, share_prefix=False)
    return TargetScorer(model, sequence, baseline_id, rows, params.target)


def attribute_sequence(model, sequence: Sequence, method: str, params: AttributeParams, baseline_id: int,
                       seed: int) -> np.ndarray:
    """(F,) attribution of one target on its own, as a float64 numpy array."""
    import numpy as np

    if not sequence.target_ids:  # an empty output has a log-probability of 0 under every perturbation
        return np.zeros(len(sequence.feature_positions))
    return attribute(method, target_forward(model, sequence, method, params, baseline_id), params, seed)


def record_seeds(seed: int, record_id: str, method: str, masks: str) -> tuple[int, int] | None:
    """(decision seed, explanations seed) of a sampling method; None for the deterministic methods."""
    if method not in SAMPLING_METHODS:
        return None
    explanations = derive_seed(seed, record_id, method, "explanations")
    return (explanations if masks == "shared" else derive_seed(seed, record_id, method, "decision")), explanations


def attribute_record(model, sequences: list[Sequence], method: str, params: AttributeParams, baseline_id: int,
                     seeds: tuple[int, int] | None) -> list[np.ndarray]:
    """Vectors of the decision (sequences[0]) and of every explanation after it, as float64 arrays.

    Explanations share the seeds[1] masks and, for the perturbation methods, the forwards; the decision
    is attributed under seeds[0], which equals seeds[1] only for `masks: shared`."""
    import numpy as np

    decision_seed, explanation_seed = seeds or (0, 0)
    decision, explanations = sequences[0], sequences[1:]
    if METHODS[method].family != "perturbation" or params.target != "sequence" \
            or params.features != "first_user_message":
        return [attribute_sequence(model, decision, method, params, baseline_id, decision_seed)] + [
            attribute_sequence(model, s, method, params, baseline_id, explanation_seed) for s in explanations]
    longest = len(explanations[0].prompt_ids) + max(len(s.target_ids) for s in explanations)
    rows = batch_rows(model, longest, params)
    shared = RecordScorer(model, decision, explanations, baseline_id, rows)
    if decision_seed == explanation_seed:
        decision_forward = shared.target(0)
    else:  # its own masks: a forward over the decision prompt alone, from its first perturbed token; the
        # same rows per pass as the shared forwards, so a record's scores do not depend on how it was split
        decision_forward = TargetScorer(model, decision, baseline_id, rows)
    forwards = [(decision_forward, decision_seed)] + [(shared.target(i), explanation_seed)
                                                      for i in range(1, len(sequences))]
    return [attribute(method, forward, params, seed) if s.target_ids else np.zeros(forward.n_features)
            for (forward, seed), s in zip(forwards, sequences)]
