"""Jobs, the bank's refresh schedule, and the automation that retrains when the bank changes."""

from __future__ import annotations

import dagster as dg

from orchestration.assets import BANK_GROUP, MODEL_GROUP, bank_partitions, model_partitions
from pipelines.core.config import Params


def build_jobs(params: Params) -> tuple[dg.UnresolvedAssetJobDefinition, dg.UnresolvedAssetJobDefinition]:
    bank = dg.define_asset_job("build_bank", selection=dg.AssetSelection.groups(BANK_GROUP),
                               partitions_def=bank_partitions(params),
                               description="One dataset x model slice of the bank: tasks to metrics.")
    model = dg.define_asset_job("fine_tune_and_evaluate", selection=dg.AssetSelection.groups(MODEL_GROUP),
                                partitions_def=model_partitions(params),
                                description="One model: pairs, DPO + SFT, evaluation, report, promotion.")
    return bank, model


def build_schedule(params: Params, bank_job) -> dg.ScheduleDefinition:
    keys = bank_partitions(params).get_partition_keys()

    @dg.schedule(job=bank_job, cron_schedule="0 3 * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
                 description="Nightly: every bank slice; stages resume, so a slice only grows by what is new "
                 "(more tasks, more models). Off until switched on in the UI.")
    def refresh_bank(context: dg.ScheduleEvaluationContext):
        for key in keys:
            yield dg.RunRequest(partition_key=key, run_key=f"{context.scheduled_execution_time:%Y-%m-%d}/{key}")

    return refresh_bank


def build_automation_sensor() -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "retrain_when_bank_changes", target=dg.AssetSelection.groups(MODEL_GROUP),
        default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=60,
        description="Pairs, fine-tunes, evaluation, report and promotion of a model, once its bank changed.")
