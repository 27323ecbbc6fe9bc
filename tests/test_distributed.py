"""Distributed execution for real: a Dask cluster of 2 worker processes on localhost, a Dagster daemon and
its queued run coordinator, a backfill of 4 bank partitions (2 datasets x 2 models, the tiny model)
through `python -m orchestration.backfill`; one worker is killed in the middle of an attribution."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration.cluster import local_cluster
from orchestration.executor import connect
from orchestration.webserver import free_port
from tests.conftest import REPO, tiny_params

BANK_ASSETS = ["tasks", "generations", "attributions", "bank"]
COMPUTE_STEPS = {"generations", "attributions"}


def project_instance(home: Path) -> Path:
    """A DAGSTER_HOME with the project's instance configuration (compute pool of 1 until the backfill sizes it)."""
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / ".dagster" / "dagster.yaml").read_text())
    return home


def four_partition_params(tmp_path: Path, tiny_model_dir: Path) -> Path:
    # enough records that an attribution lasts a few seconds: time to kill its worker in the middle
    path = tiny_params(tmp_path, tiny_model_dir, tasks={"max_per_dataset": 8})
    params = yaml.safe_load(path.read_text())
    params["models"] = [{"name": "tiny2", "id": str(tiny_model_dir), "device": "cpu"}]
    path.write_text(yaml.safe_dump(params))
    return path


def environment(home: Path, params: Path, address: str) -> dict[str, str]:
    return {**os.environ, "DAGSTER_HOME": str(home), "PSCB_PARAMS": str(params), "PSCB_EXECUTOR": "dask",
            "DASK_SCHEDULER_ADDRESS": address, "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}


def kill_a_worker_mid_attribution(address: str, home: Path, data: Path, backfill: subprocess.Popen,
                                  timeout_s: float = 600) -> str:
    """SIGKILL the worker process running an attribution step once that step has records on disk."""
    deadline = time.monotonic() + timeout_s
    with connect(address, 10) as client, dg.DagsterInstance.from_config(str(home)) as instance:
        while time.monotonic() < deadline and backfill.poll() is None:
            for worker, keys in client.processing().items():
                for key in map(str, keys):
                    if ".attributions." not in key:
                        continue
                    dataset, model = instance.get_run_by_id(key.rsplit(".", 1)[1]).tags["dagster/partition"].split("|")
                    records = data / model / "bank" / dataset / "attributions.jsonl"
                    if records.exists() and records.stat().st_size > 0:
                        pid = client.run(os.getpid, workers=[worker])[worker]
                        os.kill(pid, signal.SIGKILL)
                        return f"{worker} ({dataset}|{model})"
            time.sleep(0.05)
    raise AssertionError("no attribution step was caught running with records on disk")


@pytest.mark.slow
def test_backfill_of_four_partitions_on_two_dask_workers_survives_a_killed_worker(tmp_path, tiny_model_dir):
    home = project_instance(tmp_path / "dagster_home")
    params = four_partition_params(tmp_path, tiny_model_dir)
    port = free_port()
    env = environment(home, params, f"tcp://127.0.0.1:{port}")
    figures = tmp_path / "backfill.json"
    with local_cluster(2, port, tmp_path / "cluster", env) as address:
        backfill = subprocess.Popen([sys.executable, "-m", "orchestration.backfill", "--figures", str(figures),
                                     "--timeout", "1200"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        killed = kill_a_worker_mid_attribution(address, home, tmp_path / "data", backfill)
        output, _ = backfill.communicate(timeout=1500)
    assert backfill.returncode == 0, output
    report = json.loads(figures.read_text())
    partitions = {f"{d}|{m}" for d in ("arc_easy", "commonsense_qa") for m in ("tiny", "tiny2")}
    assert {run["partition"] for run in report["runs"]} == partitions, output
    assert all(run["status"] == "SUCCESS" for run in report["runs"])

    # concurrently, within the 2 GPU slots: compute steps of two runs overlapped, never three
    compute = sorted((start, end) for run in report["runs"] for start, end in run["step_intervals"])
    overlap = max(sum(1 for s, e in compute if s <= t < e) for t, _ in compute)
    assert overlap == 2, (killed, compute)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": report["backfill"]}))
        assert len(runs) == 4
        assert instance.event_log_storage.get_concurrency_info("pscb_compute").slot_count == 2
        for asset in BANK_ASSETS:  # each partition exactly once, with its blocking check passed
            records = instance.fetch_materializations(dg.AssetKey(asset), limit=100).records
            assert Counter(r.partition_key for r in records) == {p: 1 for p in partitions}, asset
            checks = [r.event_log_entry.dagster_event.event_specific_data
                      for run in runs for r in instance.get_records_for_run(
                          run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
                      if r.event_log_entry.dagster_event.event_specific_data.asset_key == dg.AssetKey(asset)]
            assert len(checks) == 4 and all(c.passed for c in checks), asset
        retried = [run for run in runs if Counter(
            r.event_log_entry.dagster_event.step_key for r in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.STEP_START).records)["attributions"] == 2]
        assert len(retried) == 1, "the killed worker's attribution step ran again on a live worker"

    # the stages resumed: every (generation, method) once, none lost, and the killed slice resumed
    resumed = 0
    folders = [path.parent for path in (tmp_path / "data").rglob("attributions.jsonl")]
    assert len(folders) == 4
    for folder in folders:
        generations = [json.loads(line)["id"] for line in (folder / "generations.jsonl").read_text().splitlines()]
        ids = [json.loads(line)["id"] for line in (folder / "attributions.jsonl").read_text().splitlines()]
        assert len(ids) == len(set(ids)) and set(ids) == {f"{g}/feature_ablation" for g in generations}, folder
        summary = json.loads((folder / "attributions_summary.json").read_text())
        resumed += summary["new"] < summary["attributions"]
    assert resumed == 1
    assert "pool pscb_compute: 2 slots" in output and "partitions/hour" in output


def test_a_cluster_that_is_down_fails_before_any_run_is_created(tmp_path, tiny_model_dir):
    home = project_instance(tmp_path / "dagster_home")
    env = environment(home, tiny_params(tmp_path, tiny_model_dir), f"tcp://127.0.0.1:{free_port()}")
    done = subprocess.run([sys.executable, "-m", "orchestration.backfill"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "did not answer" in done.stderr and "python -m orchestration.cluster up" in done.stderr
    assert "no run was submitted" in done.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs_count() == 0


def test_a_run_whose_cluster_is_gone_fails_with_the_command_and_materializes_nothing(tmp_path, tiny_model_dir):
    """The path a queued run takes when the cluster went down after it was submitted: its run worker."""
    home = project_instance(tmp_path / "dagster_home")
    env = environment(home, tiny_params(tmp_path, tiny_model_dir), f"tcp://127.0.0.1:{free_port()}")
    script = ("import dagster as dg\n"
              "from dagster._core.definitions.reconstruct import ReconstructableRepository\n"
              "job = ReconstructableRepository.for_module('orchestration.definitions', 'defs', '.')"
              ".get_reconstructable_job('build_bank')\n"
              "with dg.DagsterInstance.get() as instance:\n"
              "    result = dg.execute_job(job, instance, tags={'dagster/partition': 'arc_easy|tiny', "
              "'dagster/partition/dataset': 'arc_easy', 'dagster/partition/model': 'tiny'})\n"
              "    print('SUCCESS' if result.success else 'FAILED')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.strip().endswith("FAILED"), done.stdout + done.stderr
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        failures = [r.event_log_entry for r in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records]
        errors = [r.event_log_entry for r in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records]
        text = " ".join(str(e.dagster_event.event_specific_data) + (e.message or "") for e in failures + errors)
        assert "did not answer" in text and "python -m orchestration.cluster up" in text, text[-3000:]
        assert instance.fetch_materializations(dg.AssetKey("tasks"), limit=10).records == []
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.jsonl"))


def kill_a_worker_mid_shard(address: str, data: Path, backfill: subprocess.Popen, timeout_s: float = 600) -> str:
    """SIGKILL the worker running an attribution shard step once that shard has records on disk; its step key."""
    deadline = time.monotonic() + timeout_s
    with connect(address, 10) as client:
        while time.monotonic() < deadline and backfill.poll() is None:
            for worker, keys in client.processing().items():
                for key in map(str, keys):
                    found = re.search(r"\.attributions\.attributions_shard_(\d+)_of_2\.", key)
                    records = found and next(data.rglob(f"shards/attributions-{found.group(1)}-of-2.jsonl"), None)
                    if records and records.stat().st_size > 0:
                        os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
                        return f"attributions.attributions_shard_{found.group(1)}_of_2"
            time.sleep(0.05)
    raise AssertionError("no attribution shard was caught running with records on disk")


def test_one_slice_in_two_shards_keeps_two_workers_busy_and_a_killed_shard_resumes(tmp_path, tiny_model_dir):
    """bank.shards: 2 and one dataset: `make backfill`'s path on 2 workers runs both shards of each compute
    step at once; a worker killed mid-shard reruns only that shard, which resumes from its own file."""
    home = project_instance(tmp_path / "dagster_home")
    params = tiny_params(tmp_path, tiny_model_dir, tasks={"max_per_dataset": 12, "datasets": ["arc_easy"]},
                         bank={"shards": 2})
    port = free_port()
    env = environment(home, params, f"tcp://127.0.0.1:{port}")
    figures = tmp_path / "backfill.json"
    with local_cluster(2, port, tmp_path / "cluster", env) as address:
        backfill = subprocess.Popen([sys.executable, "-m", "orchestration.backfill", "--figures", str(figures),
                                     "--timeout", "1200"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        killed = kill_a_worker_mid_shard(address, tmp_path / "data", backfill)
        output, _ = backfill.communicate(timeout=1500)
    assert backfill.returncode == 0, output
    (run,) = json.loads(figures.read_text())["runs"]
    assert run["status"] == "SUCCESS" and run["partition"] == "arc_easy|tiny"
    steps = run["step_intervals"]  # two shards at once, never more: the workers' GPU slots
    assert max(sum(1 for s, e in steps if s <= t < e) for t, _ in steps) == 2, (killed, steps)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        # the daemon the backfill starts also ticks the retrain automation, which may launch its own run
        (dagster_run,) = instance.get_runs(filters=dg.RunsFilter(
            tags={"dagster/backfill": json.loads(figures.read_text())["backfill"]}))
        records = instance.get_records_for_run(dagster_run.run_id).records
        events = [r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event]
        starts = Counter(e.step_key for e in events if e.event_type_value == "STEP_START")
        assert starts[killed] == 2 and {k: n for k, n in starts.items() if k != killed} == {k: 1 for k in starts
                                                                                             if k != killed}
        (resumed,) = [e.event_specific_data.metadata for e in events
                      if e.event_type_value == "STEP_OUTPUT" and e.step_key == killed]
        assert resumed["new"].value < resumed["attributions"].value == 6  # its own missing records only
        for asset in ("generations", "attributions"):
            (materialized,) = instance.fetch_materializations(dg.AssetKey(asset), limit=10).records
            assert materialized.partition_key == "arc_easy|tiny"
    folder = tmp_path / "data" / "tiny" / "bank" / "arc_easy"
    generations = [json.loads(line)["id"] for line in (folder / "generations.jsonl").read_text().splitlines()]
    ids = [json.loads(line)["id"] for line in (folder / "attributions.jsonl").read_text().splitlines()]
    assert ids == [f"{g}/feature_ablation" for g in generations]  # each once, in the one-process order
    assert not (folder / "shards").exists()
