"""Every attribution method behind one signature (the methods themselves: pipelines/core/catalog.py).

    attribute("lime", forward, params, seed) -> (F,) float64 numpy array

`forward` is a scorer (pipelines/attribution/scorer.py): (B, F) feature masks (1 = keep) -> (B,)
log-probabilities of one target. It carries what a method may need besides calling it: its `model`,
`n_features`, `batch_size` (rows per pass) and the feature `positions` in the sequence. A method is a
stock Captum algorithm over that forward, which is why each equals Captum's own (tests/test_attribute_vs_captum.py).

The family says which forward a method gets (pipelines/attribution/engine.py): perturbation methods only
call it, so it may share the unperturbed prefix's KV cache and a record's forwards; gradient methods hook
the embedding layer, so it runs every position of every row and keeps activations for the backward pass.

Each imports torch and Captum when called.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pipelines.core.catalog import METHODS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pipelines.core.config import AttributeParams


class Forward(Protocol):
    model: object
    n_features: int
    batch_size: int
    positions: torch.Tensor

    def __call__(self, masks: torch.Tensor) -> torch.Tensor: ...


Attribute = Callable[["Forward", "AttributeParams", int], "np.ndarray"]


def _keep_all(forward: Forward):
    import torch

    return torch.ones(1, forward.n_features, dtype=torch.long, device=forward.model.device)


def _perturb(algorithm, forward: Forward, seed: int, **options) -> np.ndarray:
    import torch

    torch.manual_seed(seed)  # targets given the same seed get the same masks (and share forwards)
    # Lasso on a few hundred samples often stops at max_iter; that is Captum's LIME as published
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        values = algorithm.attribute(_keep_all(forward), perturbations_per_eval=forward.batch_size, **options)
    return values[0].double().cpu().numpy()


def lime(forward: Forward, params: AttributeParams, seed: int) -> np.ndarray:
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import Lime

    return _perturb(Lime(forward, interpretable_model=SkLearnLasso(alpha=params.lime_alpha)), forward, seed,
                    n_samples=params.n_samples)


def kernel_shap(forward: Forward, params: AttributeParams, seed: int) -> np.ndarray:
    from captum.attr import KernelShap

    return _perturb(KernelShap(forward), forward, seed, n_samples=params.n_samples)


def feature_ablation(forward: Forward, params: AttributeParams, seed: int) -> np.ndarray:
    from captum.attr import FeatureAblation

    return _perturb(FeatureAblation(forward), forward, seed)


def _on_features(values, forward: Forward) -> np.ndarray:
    """(1, L, H) attributions of the embedding layer -> (F,): summed over H, at the feature positions."""
    return values.sum(-1)[0, forward.positions].double().detach().cpu().numpy()


def lig(forward: Forward, params: AttributeParams, seed: int) -> np.ndarray:
    import torch
    from captum.attr import LayerIntegratedGradients

    keep_all = _keep_all(forward)
    # internal_batch_size == the forward's batch size: a forward split further would see the layer
    # hook's interpolated embeddings for the whole batch in every chunk
    values = LayerIntegratedGradients(forward, forward.model.get_input_embeddings()).attribute(
        keep_all, baselines=torch.zeros_like(keep_all), n_steps=params.ig_steps,
        internal_batch_size=forward.batch_size)
    return _on_features(values, forward)


def input_x_gradient(forward: Forward, params: AttributeParams, seed: int) -> np.ndarray:
    from captum.attr import LayerGradientXActivation

    values = LayerGradientXActivation(forward, forward.model.get_input_embeddings()).attribute(_keep_all(forward))
    return _on_features(values, forward)


ALGORITHMS: dict[str, Attribute] = {"lime": lime, "kernel_shap": kernel_shap, "feature_ablation": feature_ablation,
                                    "lig": lig, "input_x_gradient": input_x_gradient}
if ALGORITHMS.keys() != METHODS.keys():  # a method in the catalog without an implementation, or the reverse
    raise ImportError(f"catalog {sorted(METHODS)} and implementations {sorted(ALGORITHMS)} differ")


def attribute(method: str, forward: Forward, params: AttributeParams, seed: int) -> np.ndarray:
    """(F,) attribution of the target `forward` scores, by the named method."""
    return ALGORITHMS[method](forward, params, seed)
