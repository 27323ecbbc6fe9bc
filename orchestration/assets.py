"""The pipeline's artifacts as Dagster assets. Each one calls its stage in pipelines/runner/dispatch.py (the
function the CLI and `dvc repro` call, which validates the stage's inputs and output), records what it
built as metadata, reports that validation as its blocking Great Expectations check, and records the
partition in dvc.lock."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration import checks
from orchestration.executor import COMPUTE_TAGS
from orchestration.resources import DvcLock, MlflowTracking, PscbParams
from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import Params, ParamsError
from pipelines.core.partitions import model_dir, model_names, slice_dir
from pipelines.core.records import sha256
from pipelines.core.vocabulary import OWN
from pipelines.runner.checked import ArtifactInvalid, PartitionBusy, StageResult
from pipelines.runner.dispatch import merge_bank_shards, run_bank_shard, run_bank_stage, run_model_stage

# asset -> DVC stage (dvc.yaml): the two graphs are the same graph (tests/test_dvc.py)
ASSET_STAGES = {name: artifact.stage for name, artifact in ARTIFACTS.items()}
BANK_GROUP, MODEL_GROUP = "bank", "fine_tuning"
# After the bank: run when every dataset slice of the model is materialized and newer than the last run,
# and only while their blocking checks pass (a failed Great Expectations suite holds it back).
RETRAIN_WHEN_BANK_CHANGES = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
# The long stages take a slot of the accelerators (or the laptop's cores): the pool bounds the runs that
# hold one (.dagster/dagster.yaml: 1; a cluster: its GPU count), and COMPUTE_TAGS ask Dask or Kubernetes
# for one GPU per step.
COMPUTE_POOL = "pscb_compute"
ON_COMPUTE = {"pool": COMPUTE_POOL, "op_tags": COMPUTE_TAGS}


def bank_partitions(params: Params) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({"dataset": dg.StaticPartitionsDefinition(list(params.tasks.datasets)),
                                         "model": dg.StaticPartitionsDefinition(list(model_names(params)))})


def model_partitions(params: Params) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(model_names(params)))


def scalars(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def load_params(pscb: PscbParams) -> Params:
    try:
        return pscb.load()
    except ParamsError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from err


STAGE_ERRORS = (PartitionBusy, FileNotFoundError, ValueError, KeyError)  # ArtifactInvalid is a ValueError


def failure(name: str, folder: Path, err: Exception) -> dg.Failure:
    """A stage's user error as its step's failure, with the stage's message. Another run writing the partition
    is retried (a retry later finds the work done); the rest would fail again."""
    if isinstance(err, PartitionBusy):
        return dg.Failure(description=f"{name}: {err}", allow_retries=True)
    if isinstance(err, ArtifactInvalid):  # an input that failed its suite
        return dg.Failure(description=str(err), allow_retries=False)
    return dg.Failure(description=f"{name}: {err}", metadata={"folder": dg.MetadataValue.path(str(folder))},
                      allow_retries=False)


def materialize(name: str, run: Callable[[], StageResult], folder: Path, model: str, params: Params,
                dvc_stage: str, context, dvc: DvcLock, extra=None, more_checks=()) -> dg.MaterializeResult:
    """Run a stage (which validates its inputs and output itself) and report what it did.

    An input that fails its suite, or any stage error, fails the step with the stage's message and nothing
    computed lost. An output that fails its suite was moved aside by the stage and the previous output
    restored: reported as the failed blocking check, which stops everything downstream."""
    started = time.perf_counter()
    paths = [folder / f for f in ARTIFACTS[name].files]
    try:
        result = run()
    except ArtifactInvalid as err:
        if err.artifact.name != name:
            raise failure(name, folder, err) from err
        return dg.MaterializeResult(
            metadata={"rejected": str(err), "path": dg.MetadataValue.path(str(paths[0]))},
            data_version=dg.DataVersion(sha256(*paths, names=True)),
            check_results=[checks.quality(name, err.reports)])
    except STAGE_ERRORS as err:
        raise failure(name, folder, err) from err
    metadata: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 2),
                                "data_digest": sha256(*paths, names=True)[:16],
                                "path": dg.MetadataValue.path(str(paths[0])), **scalars(result.summary)}
    if extra:
        metadata.update(extra(folder, result.summary))
    if model == params.model.name:
        metadata["dvc"] = dvc.commit(dvc_stage, context.log)
    results = [checks.quality(name, result.reports)] if ARTIFACTS[name].suite else []
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(metadata["data_digest"]),
                                check_results=results + [c(params, result.summary) for c in more_checks])


def slice_of(context) -> tuple[str, str]:
    """The (dataset, model) of the slice a step of a bank run works on."""
    keys = context.partition_key.keys_by_dimension
    return keys["dataset"], keys["model"]


def materialize_slice(context, name: str, pscb: PscbParams, dvc: DvcLock, extra=None, shards: int = 1
                      ) -> dg.MaterializeResult:
    """One slice's stage in this step, or with `shards` > 1 the merge of its shards (`shard_step`)."""
    params, (dataset, model), stage = load_params(pscb), slice_of(context), ASSET_STAGES[name]
    run = (partial(merge_bank_shards, stage, params, dataset, model, shards) if shards > 1
           else partial(run_bank_stage, stage, params, dataset, model))
    return materialize(name, run, slice_dir(params, dataset, model), model, params, f"{stage}@{dataset}", context,
                       dvc, extra)


def shard_step(name: str, shard: tuple[int, int]) -> dg.OpDefinition:
    """Shard (i, n) of a slice's compute asset as a step of its own, with its own compute slot: the executor
    runs the n shards side by side (on Dask, on n workers) and a failed or killed shard reruns alone."""
    @dg.op(name=f"{name}_shard_{shard[0]}_of_{shard[1]}", ins={"after": dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing),
           pool=COMPUTE_POOL, tags=COMPUTE_TAGS)
    def run_shard(context, pscb: PscbParams) -> dg.Output:
        params, (dataset, model) = load_params(pscb), slice_of(context)
        try:
            summary = run_bank_shard(ASSET_STAGES[name], params, dataset, model, shard)
        except STAGE_ERRORS as err:
            raise failure(name, slice_dir(params, dataset, model), err) from err
        return dg.Output(None, metadata={k: v for k, v in scalars(summary).items() if k != "path"})

    return run_shard


def sharded_slice_asset(name: str, description: str, partitions: dg.PartitionsDefinition,
                        count: int) -> dg.AssetsDefinition:
    """A slice's compute asset as `count` shard steps and one merge step, which writes the slice's files
    (pipelines/runner/dispatch.py: merge_bank_shards), reports them as the asset and runs its blocking check."""
    (upstream,) = ARTIFACTS[name].reads  # a sharded stage reads one artifact of its slice
    check_output = f"{name}_{checks.QUALITY}"  # graph_asset's name for the check's output

    @dg.op(name=f"{name}_merge", ins={f"shard_{i}": dg.In(dg.Nothing) for i in range(count)},
           out={"result": dg.Out(dg.Nothing, is_required=False), check_output: dg.Out(dg.Nothing, is_required=False)})
    def merge(context, pscb: PscbParams, dvc: DvcLock) -> dg.MaterializeResult:
        return materialize_slice(context, name, pscb, dvc, shards=count)

    steps = [shard_step(name, (index, count)) for index in range(count)]

    def compose(upstream_asset):
        return merge(**{f"shard_{index}": step(after=upstream_asset) for index, step in enumerate(steps)})

    return dg.graph_asset(compose, name=name, ins={"upstream_asset": dg.AssetIn(upstream, dagster_type=dg.Nothing)},
                          partitions_def=partitions, group_name=BANK_GROUP, description=description,
                          check_specs=[checks.quality_spec(name)], kinds={"python"})


def materialize_model(context, name: str, pscb: PscbParams, dvc: DvcLock, extra=None,
                      more_checks=()) -> dg.MaterializeResult:
    params, model = load_params(pscb), context.partition_key
    return materialize(name, lambda: run_model_stage(ASSET_STAGES[name], params, model), model_dir(params, model),
                       model, params, ASSET_STAGES[name], context, dvc,
                       partial(extra, params) if extra else None, more_checks)


def bank_means(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    from pipelines.stages.score import read_scores

    table = read_scores(folder / ARTIFACTS["bank"].path, ["kind", "spearman", "cosine"])  # not the vectors: GBs at 100K
    own = table[table["kind"] == OWN]
    out = {"rows": len(table), "own_rows": len(own),
           **{f"mean_{m}": float(own[m].mean()) for m in ("spearman", "cosine")}}
    for method, stats in summary.get("methods", {}).items():  # the trust figures, per method (Spearman)
        floor = stats.get("null_floor", {}).get("all", {}).get("spearman", {}).get("observed_minus_floor", {})
        auroc = stats.get("diagnosticity", {}).get("all", {}).get("spearman", {}).get("auroc", {})
        out |= {f"{method}_spearman_minus_null_floor": floor.get("mean"),
                f"{method}_spearman_diagnosticity_auroc": auroc.get("mean"),
                f"{method}_warnings": len(stats.get("warnings", []))}
    return out


def training_figures(mlflow: MlflowTracking, params: Params, folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"train_pairs": summary["pairs"]["train"], "eval_pairs": summary["pairs"]["eval"]}
    for algorithm in params.train.algorithms:
        last = summary[algorithm]["last_log"]
        moved = summary[algorithm].get("movement", {})
        out |= {f"{algorithm}_heldout_reward_accuracy": moved.get("reward_accuracy"),
                f"{algorithm}_heldout_reward_accuracy_p": moved.get("reward_accuracy_p"),
                f"{algorithm}_heldout_kl_per_token": moved.get("kl_per_token")}
        out |= {f"{algorithm}_steps": summary[algorithm]["steps"], f"{algorithm}_loss": last.get("loss"),
                f"{algorithm}_mlflow_run": dg.MetadataValue.url(
                    mlflow.run_url(params.mlflow.tracking_uri, summary[algorithm]["mlflow_run_id"]))}
        if "rewards/accuracies" in last:
            out[f"{algorithm}_reward_accuracy"] = last["rewards/accuracies"]
    return out


def evaluation_figures(mlflow: MlflowTracking, params: Params, folder: Path, summary: dict[str, Any]
                       ) -> dict[str, Any]:
    out: dict[str, Any] = {"tasks": summary["tasks"]}
    for name, stats in summary["models"].items():
        out |= {f"{name}_accuracy": stats["accuracy"], f"{name}_mean_spearman": stats.get("mean_spearman"),
                f"{name}_mean_cosine": stats.get("mean_cosine"), f"{name}_mlflow_run": dg.MetadataValue.url(
                    mlflow.run_url(params.mlflow.tracking_uri, stats["mlflow_run_id"]))}
    return out


def report_figures(params: Params, folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    metrics = json.loads((folder / ARTIFACTS["report"].summary).read_text())
    out: dict[str, Any] = {"report": dg.MetadataValue.path(summary["report"])}
    for name, stats in metrics["models"].items():
        out |= {f"{name}_accuracy": stats["all"]["accuracy"],
                f"{name}_median_spearman": stats["all"]["spearman_median"]}
    return out


def build_assets(params: Params) -> list[dg.AssetsDefinition]:
    bank_parts, model_parts = bank_partitions(params), model_partitions(params)
    to_model = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="model")
    by_model = {"group_name": MODEL_GROUP, "partitions_def": model_parts, "kinds": {"python"},
                "automation_condition": RETRAIN_WHEN_BANK_CHANGES}

    def deps(name: str) -> list[dg.AssetDep]:
        """What the asset's stage reads (pipelines/core/artifacts.py): a model's asset reads every slice of its bank."""
        scope = ARTIFACTS[name].scope
        return [dg.AssetDep(read, partition_mapping=to_model if (scope, ARTIFACTS[read].scope) == ("model", "slice")
                            else None) for read in ARTIFACTS[name].reads]

    def slice_asset(name: str, description: str, compute: bool = False):
        return dg.asset(name=name, deps=deps(name), partitions_def=bank_parts, group_name=BANK_GROUP,
                        description=description, check_specs=[checks.quality_spec(name)], kinds={"python"},
                        **(ON_COMPUTE if compute else {}))

    def model_asset(name: str, description: str, compute: bool = False, check_specs=None):
        return dg.asset(name=name, deps=deps(name), description=description, check_specs=check_specs or
                        [checks.quality_spec(name)], **by_model, **(ON_COMPUTE if compute else {}))

    @slice_asset("tasks", "Multiple-choice tasks of one dataset, split 70/20/10 by a seeded shuffle.")
    def tasks(context, pscb: PscbParams, dvc: DvcLock) -> dg.MaterializeResult:
        return materialize_slice(context, "tasks", pscb, dvc)

    def compute_slice_asset(name: str, description: str) -> dg.AssetsDefinition:
        """One step per slice, or with `bank.shards` = n > 1 n shard steps and their merge."""
        if params.bank.shards > 1:
            return sharded_slice_asset(name, description, bank_parts, params.bank.shards)

        @slice_asset(name, description, compute=True)
        def compute(context, pscb: PscbParams, dvc: DvcLock) -> dg.MaterializeResult:
            return materialize_slice(context, name, pscb, dvc)

        return compute

    generations = compute_slice_asset("generations", "The model's decision and k post-hoc explanations per task.")
    attributions = compute_slice_asset("attributions", "Captum-exact token attributions over the question tokens, "
                                       "for the decision and each explanation.")

    @slice_asset("bank", "The PSCB: per explanation, the agreement (Spearman, cosine, ...) of its attribution with "
                 "the decision's.")
    def bank(context, pscb: PscbParams, dvc: DvcLock) -> dg.MaterializeResult:
        return materialize_slice(context, "bank", pscb, dvc, bank_means)

    @model_asset("pairs", "Per decision, the most vs the least aligned explanation (train / eval splits).")
    def pairs(context, pscb: PscbParams, dvc: DvcLock) -> dg.MaterializeResult:
        return materialize_model(context, "pairs", pscb, dvc)

    @model_asset("models", "LoRA adapters: DPO on the pairs, and the SFT baseline; MLflow training runs.",
                 compute=True)
    def models(context, pscb: PscbParams, dvc: DvcLock, mlflow: MlflowTracking) -> dg.MaterializeResult:
        return materialize_model(context, "models", pscb, dvc, partial(training_figures, mlflow))

    @model_asset("evaluation", "Base and fine-tuned models on held-out tasks, in-domain and shifted; MLflow runs.",
                 compute=True)
    def evaluation(context, pscb: PscbParams, dvc: DvcLock, mlflow: MlflowTracking) -> dg.MaterializeResult:
        return materialize_model(context, "evaluation", pscb, dvc, partial(evaluation_figures, mlflow))

    @model_asset("report", "Alignment and accuracy with confidence intervals, paired tests; HTML + metrics.json.")
    def report(context, pscb: PscbParams, dvc: DvcLock) -> dg.MaterializeResult:
        return materialize_model(context, "report", pscb, dvc, report_figures)

    @model_asset("promotion", "The promotion decision (promotion.json): the fine-tune registered in MLflow with the "
                 "champion alias only when the evaluation's evidence earned it.", check_specs=[checks.GATE_SPEC])
    def promotion(context, pscb: PscbParams, dvc: DvcLock) -> dg.MaterializeResult:
        return materialize_model(context, "promotion", pscb, dvc,
                                 more_checks=[lambda params, summary: checks.promotion_gate(summary, params.promote)])

    return [tasks, generations, attributions, bank, pairs, models, evaluation, report, promotion]
