"""Our attributions equal stock Captum's on the same model, input, target and perturbation samples.

Stock = `LLMAttribution` (teacher-forced, forward_in_tokens=False: its default token-by-token path is
wrong on transformers 5, see stack-notes) for the perturbation methods, and the sum of
`LLMGradientAttribution`'s per-token rows for the gradient methods (IG is linear in the target).
Features = the templated prompt's non-special tokens, which TextTokenInput expresses with skip_tokens.
"""

import copy

import captum.attr
import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso
from captum.attr import (
    LayerIntegratedGradients,
    Lime,
    LLMAttribution,
    LLMGradientAttribution,
    TextTokenInput,
)

from pipelines.attribution.engine import attribute_sequence
from pipelines.attribution.layout import Sequence, render
from pipelines.core.catalog import METHODS as TABLE
from pipelines.core.config import AttributeParams
from pipelines.core.prompts import decision_conversation
from pipelines.core.records import Choice, Task

# Tolerance: 1e-4 relative, elementwise, plus 1e-4 of the largest |attribution| (a feature-ablation
# value is a difference of two log-probabilities, so float32 rounding of the totals, ~1e-6 relative,
# shows up as an absolute error). The tiny model runs in float64 (Llama's RMSNorm still rounds through
# float32), where both paths agree to 1e-6.
RTOL, ATOL = 1e-4, 1e-4
TASK = Task("t", "arc_easy", "train", "Which gas do plants absorb?",
            [Choice("A", "oxygen"), Choice("B", "carbon dioxide")], "B")


def stock(model, tokenizer, method, text, target, baseline, n_samples, steps):
    """Captum's own LLM attribution with the algorithm the method table names for `method`."""
    inp = TextTokenInput(text, tokenizer, baselines=baseline, skip_tokens=list(tokenizer.all_special_ids))
    target = torch.tensor(target)
    torch.manual_seed(7)
    algorithm_class = getattr(captum.attr, TABLE[method].captum)
    if TABLE[method].family == "gradient":
        algorithm = LLMGradientAttribution(algorithm_class(model, model.get_input_embeddings()), tokenizer)
        options = {"n_steps": steps} if algorithm_class is LayerIntegratedGradients else {}
        return inp, algorithm.attribute(inp, target=target, **options).seq_attr
    algorithm = algorithm_class(model, interpretable_model=SkLearnLasso(alpha=0.01)) if algorithm_class is Lime \
        else algorithm_class(model)
    options = {"n_samples": n_samples} if TABLE[method].samples else {}
    result = LLMAttribution(algorithm, tokenizer).attribute(inp, target=target, forward_in_tokens=False, **options)
    return inp, result.seq_attr


def compare(model, tokenizer, method, target_text, n_samples, steps, rtol=RTOL, atol=ATOL):
    text = render(tokenizer, decision_conversation(TASK))
    target = tokenizer(target_text, add_special_tokens=False).input_ids
    inp, reference = stock(model, tokenizer, method, text, target, 0, n_samples, steps)
    prompt = inp.inp_tensor[0].tolist()
    positions = torch.nonzero(inp.itp_mask[0]).flatten().tolist()
    params = AttributeParams(methods=(method,), n_samples=n_samples, ig_steps=steps, batch_size=16)
    ours = attribute_sequence(model, Sequence(prompt, target, positions), method, params, baseline_id=0, seed=7)
    reference = reference.detach().double().numpy()
    assert ours.shape == reference.shape == (len(positions),)
    assert np.abs(reference).max() > 0
    np.testing.assert_allclose(ours, reference, rtol=rtol, atol=atol * np.abs(reference).max())


METHODS = list(TABLE)  # every method of the table, against the Captum algorithm it names


@pytest.fixture(scope="module")
def tiny_model_fp64(tiny_model):
    return copy.deepcopy(tiny_model).double()


@pytest.mark.parametrize("method", METHODS)
def test_equals_stock_captum_on_tiny_model(tiny_model_fp64, tokenizer, method):
    compare(tiny_model_fp64, tokenizer, method, "B) carbon dioxide, since plants need it", n_samples=40, steps=6,
            rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_equals_stock_captum_on_smollm2(smollm2, tokenizer, method):
    compare(smollm2, tokenizer, method, "B) carbon dioxide", n_samples=24, steps=4)


def record_sequences_of(tokenizer, explanations):
    from pipelines.attribution.layout import record_sequences
    from pipelines.core.prompts import explanation_conversation

    decision = "B) carbon dioxide"
    return record_sequences(
        tokenizer, decision_conversation(TASK), explanation_conversation(TASK, decision),
        tokenizer(decision, add_special_tokens=False).input_ids,
        [tokenizer(e, add_special_tokens=False).input_ids for e in explanations], "first_user_message")


@pytest.mark.parametrize("masks", ["independent", "shared"])
@pytest.mark.parametrize("method", ["feature_ablation", "lime", "kernel_shap"])
def test_record_path_equals_one_attribution_per_target_with_its_seed(tiny_model_fp64, tokenizer, method, masks):
    """Stock-equivalent per target: the decision with its own seed, every explanation with the shared one."""
    from pipelines.attribution.engine import attribute_record, record_seeds

    sequences = record_sequences_of(tokenizer, ["Plants use it for photosynthesis.", "It is what leaves take in.", ""])
    params = AttributeParams(methods=(method,), n_samples=30, batch_size=8, masks=masks)
    seeds = record_seeds(42, "arc_easy/t", method, masks)
    assert (seeds is None) == (method == "feature_ablation")
    assert seeds is None or (seeds[0] == seeds[1]) == (masks == "shared")
    record = attribute_record(tiny_model_fp64, sequences, method, params, 0, seeds)
    for index, (vector, sequence) in enumerate(zip(record, sequences)):
        seed = (seeds or (0, 0))[index > 0]
        alone = attribute_sequence(tiny_model_fp64, sequence, method, params, 0, seed=seed)
        np.testing.assert_allclose(vector, alone, rtol=1e-6, atol=1e-6 * max(np.abs(alone).max(), 1e-12))
    assert not record[-1].any()  # the empty explanation


def test_independent_masks_differ_from_shared_for_the_decision_only(tiny_model_fp64, tokenizer):
    from pipelines.attribution.engine import attribute_record, record_seeds

    sequences = record_sequences_of(tokenizer, ["Plants use it for photosynthesis."])
    params = AttributeParams(methods=("lime",), n_samples=30, batch_size=8)
    shared = attribute_record(tiny_model_fp64, sequences, "lime", params, 0, record_seeds(1, "r", "lime", "shared"))
    independent = attribute_record(tiny_model_fp64, sequences, "lime", params, 0,
                                   record_seeds(1, "r", "lime", "independent"))
    np.testing.assert_allclose(independent[1], shared[1], rtol=1e-9)  # the explanation seed is the same
    assert not np.allclose(independent[0], shared[0])


@pytest.mark.parametrize("method", ["lime", "lig"])
def test_memory_budget_changes_batching_not_values(tiny_model_fp64, tokenizer, method):
    from pipelines.attribution.engine import batch_rows
    from pipelines.attribution.layout import first_user_message_positions

    prompt, positions = first_user_message_positions(tokenizer, decision_conversation(TASK))
    sequence = Sequence(prompt, tokenizer(" carbon dioxide", add_special_tokens=False).input_ids, positions)
    roomy = AttributeParams(methods=(method,), n_samples=20, ig_steps=6, batch_size=16)
    tight = roomy.model_copy(update={"memory_budget_mb": 1})  # below the schema minimum: a 1-row batch here
    length = len(prompt) + len(sequence.target_ids)
    assert batch_rows(tiny_model_fp64, length, tight, backward=True) < batch_rows(tiny_model_fp64, length, roomy,
                                                                                   backward=True)
    np.testing.assert_allclose(attribute_sequence(tiny_model_fp64, sequence, method, tight, 0, seed=3),
                               attribute_sequence(tiny_model_fp64, sequence, method, roomy, 0, seed=3),
                               rtol=1e-6, atol=1e-9)
