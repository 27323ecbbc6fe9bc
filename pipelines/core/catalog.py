"""The attribution methods the pipeline knows: the one table the params schema, the attribute stage,
score, the suites and the benchmark read.

Each entry names the Captum algorithm the method runs and equals (tests/test_attribute_vs_captum.py), its
family, and whether it draws seeded perturbation samples. The implementations, one per entry behind one
signature, are in pipelines/attribution/methods.py. This table is kept apart from them, on the ground floor,
so that the params schema (and through it every stage's DVC deps) depends on which methods exist, not on
how they compute, and so that core/ never imports the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Method:
    captum: str  # the Captum algorithm it runs and equals
    # perturbation: forwards of masked prompts, shared across a record; gradient: forward + backward
    family: Literal["perturbation", "gradient"]
    samples: bool  # draws seeded perturbation samples (attribute.n_samples, attribute.masks)


METHODS: dict[str, Method] = {
    "lime": Method("Lime", "perturbation", samples=True),
    "kernel_shap": Method("KernelShap", "perturbation", samples=True),
    "feature_ablation": Method("FeatureAblation", "perturbation", samples=False),
    "lig": Method("LayerIntegratedGradients", "gradient", samples=False),
    "input_x_gradient": Method("LayerGradientXActivation", "gradient", samples=False),
}
ATTRIBUTION_METHODS = tuple(METHODS)
SAMPLING_METHODS = tuple(name for name, method in METHODS.items() if method.samples)
PERTURBATION_METHODS = tuple(name for name, method in METHODS.items() if method.family == "perturbation")
GRADIENT_METHODS = tuple(name for name, method in METHODS.items() if method.family == "gradient")
