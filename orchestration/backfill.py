"""A backfill through Dagster's run queue, waited for, with its throughput: the distributed main job.

    export DAGSTER_HOME=$PWD/.dagster PSCB_EXECUTOR=dask DASK_SCHEDULER_ADDRESS=tcp://127.0.0.1:8786
    python -m orchestration.backfill [--job build_bank] [--partitions a|m,b|m] [--figures out.json]

A TLS cluster (`python -m orchestration.cluster certs DIR`, then `up` with PSCB_DASK_TLS_DIR=DIR) has a
tls:// address; with PSCB_DASK_TLS_DIR=DIR here too, this check, the daemon it starts and every run's Dask
executor connect with that folder's certificate (docs/security.md).

Submits one run per partition with `dagster job backfill` (a backfill the UI lists), so the instance's
queued run coordinator launches them under its limits; the `pscb_compute` pool is first set to the
cluster's GPU slots (as `dagster instance concurrency set` would), so as many runs hold compute steps as
there are GPU workers, and each run's steps go to the Dask workers. Starts a `dagster-daemon` for the length of the backfill unless
one is already heartbeating (`dagster dev` runs one). Before submitting anything it checks that the Dask
scheduler answers: a cluster that is down fails here, with the command that starts it, and no run is
created. Ends with, per run, its time in the queue and what the run spent outside its steps, and the
partitions per hour of the whole backfill.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from orchestration.assets import COMPUTE_POOL
from orchestration.cluster import stop
from orchestration.executor import CLUSTER_COMMAND, GPU_RESOURCE, TLS_DIR_ENV, ClusterUnavailable, connect, tls_dir

MODULE = "orchestration.definitions"
DAEMON_BEAT_S = 30


def dagster_command(name: str) -> list[str]:
    return [str(Path(sys.executable).parent / name)]


def cluster_gpu_slots() -> int | None:
    """The Dask cluster's GPU slots (None when steps run in-process); fails fast when it is down."""
    if os.environ.get("PSCB_EXECUTOR") != "dask":
        return None
    address = os.environ.get("DASK_SCHEDULER_ADDRESS", "")
    if not address:
        raise ClusterUnavailable(f"PSCB_EXECUTOR=dask needs DASK_SCHEDULER_ADDRESS (`{CLUSTER_COMMAND}` prints it)")
    with connect(address, 5) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    slots = int(sum(worker.get("resources", {}).get(GPU_RESOURCE, 0) for worker in workers))
    if not slots:
        raise ClusterUnavailable(f"the Dask scheduler at {address} has no worker with a {GPU_RESOURCE} slot: "
                                 f"start them with `{CLUSTER_COMMAND}`")
    return slots


def daemon_running(instance: dg.DagsterInstance) -> bool:
    """A daemon beats every 30 s; a stopped one leaves its last beat behind, so a recent beat only counts
    once a newer one arrives."""
    def latest() -> float:
        return max((beat.timestamp for beat in instance.get_daemon_heartbeats().values()), default=0.0)

    last = latest()
    deadline = time.monotonic() + DAEMON_BEAT_S + 10
    while time.time() - last < DAEMON_BEAT_S + 10 and time.monotonic() < deadline:
        time.sleep(2)
        if latest() > last:
            return True
    return False


@contextlib.contextmanager
def daemon(instance: dg.DagsterInstance, log: Path) -> Iterator[None]:
    if daemon_running(instance):
        yield
        return
    with open(log, "ab") as out:
        process = subprocess.Popen(dagster_command("dagster-daemon") + ["run", "-m", MODULE], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield
    finally:
        stop([process.pid])  # its process group: the code server it started goes with it


def submit(job: str, partitions: list[str] | None) -> str:
    selection = ["--partitions", ",".join(partitions)] if partitions else ["--all", "all"]
    done = subprocess.run(dagster_command("dagster") + ["job", "backfill", "-m", MODULE, "-j", job, "--noprompt",
                                                        *selection], capture_output=True, text=True)
    found = re.search(r"Launched backfill job `([^`]+)`", done.stdout)
    if done.returncode or not found:
        raise RuntimeError(f"dagster job backfill failed: {(done.stderr or done.stdout).strip()[-2000:]}")
    return found.group(1)


def backfill_runs(instance: dg.DagsterInstance, backfill_id: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id})))


def wait(instance: dg.DagsterInstance, backfill_id: str, expected: int, timeout_s: float) -> list[dg.DagsterRun]:
    deadline, seen = time.monotonic() + timeout_s, {}
    while True:
        runs = backfill_runs(instance, backfill_id)
        for run in runs:
            if seen.get(run.run_id) != run.status:
                seen[run.run_id] = run.status
                print(f"[{run.tags.get('dagster/partition')}] run {run.run_id[:8]} {run.status.value}", flush=True)
        if len(runs) == expected and all(run.status in FINISHED_STATUSES for run in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError(f"backfill {backfill_id}: not finished after {timeout_s:.0f}s")
        time.sleep(2)


def run_timing(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict:
    """Seconds from the event log: queued (enqueued until the coordinator launches it: limits and pool
    slots), launch (to the run worker's start: a process and the code location's import), steps (the
    union of step intervals, a step's last attempt) and overhead (the rest of the run: hand-offs)."""
    times: dict[str, float] = {}
    starts: dict[str, float] = {}
    steps: list[tuple[float, float]] = []
    for record in instance.all_logs(run.run_id):
        event = record.dagster_event
        if event is None:
            continue
        kind = event.event_type_value
        if kind in ("PIPELINE_ENQUEUED", "PIPELINE_STARTING", "PIPELINE_START", "PIPELINE_SUCCESS",
                    "PIPELINE_FAILURE"):
            times.setdefault(kind, record.timestamp)
        elif kind == "STEP_START":
            starts[event.step_key] = record.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in starts:
            steps.append((starts.pop(event.step_key), record.timestamp))
    enqueued = times.get("PIPELINE_ENQUEUED", times.get("PIPELINE_STARTING", 0.0))
    starting = times.get("PIPELINE_STARTING", enqueued)
    started = times.get("PIPELINE_START", starting)
    end = times.get("PIPELINE_SUCCESS", times.get("PIPELINE_FAILURE", started))
    step_s = sum(b - a for a, b in merge(steps))
    return {"partition": run.tags.get("dagster/partition"), "status": run.status.value, "enqueued": enqueued,
            "end": end, "queued_s": starting - enqueued, "launch_s": started - starting, "steps_s": step_s,
            "overhead_s": end - started - step_s, "step_intervals": sorted(steps)}


def merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def throughput(timings: list[dict]) -> dict:
    first, last = min(t["enqueued"] for t in timings), max(t["end"] for t in timings)
    in_flight = sum(t["end"] - t["enqueued"] for t in timings)
    return {"runs": len(timings), "wall_s": last - first,
            "partitions_per_hour": len(timings) / (last - first) * 3600,
            "queue_share": sum(t["queued_s"] for t in timings) / in_flight,
            "mean_launch_s": sum(t["launch_s"] for t in timings) / len(timings),
            "mean_overhead_s": sum(t["overhead_s"] for t in timings) / len(timings)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.backfill", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default="build_bank")
    parser.add_argument("--partitions", default="", help="comma-separated keys; default every partition")
    parser.add_argument("--timeout", type=float, default=24 * 3600)
    parser.add_argument("--figures", type=Path, help="write the per-run timings and throughput here (JSON)")
    args = parser.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        print("error: set DAGSTER_HOME (the instance whose queue runs the backfill)", file=sys.stderr)
        return 2
    try:
        if (folder := tls_dir()) is not None:  # absolute: the daemon's runs start in other directories
            os.environ[TLS_DIR_ENV] = str(folder)
        slots = cluster_gpu_slots()
    except ClusterUnavailable as err:
        print(f"error: {err}; no run was submitted", file=sys.stderr)
        return 2
    # a stopped backfill stops the daemon it started (the runs it launched stay in the instance)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with dg.DagsterInstance.get() as instance:
        if slots is not None:  # as `dagster instance concurrency set`: the UI's Pools page shows it
            instance.event_log_storage.set_concurrency_slots(COMPUTE_POOL, slots)
            print(f"pool {COMPUTE_POOL}: {slots} slots, one per GPU worker of the cluster", flush=True)
        with daemon(instance, Path(instance.root_directory) / "daemon.log"):
            backfill_id = submit(args.job, [p for p in args.partitions.split(",") if p] or None)
            expected = len(backfill_runs(instance, backfill_id))
            print(f"backfill {backfill_id}: {expected} runs queued", flush=True)
            runs = wait(instance, backfill_id, expected, args.timeout)
        timings = [run_timing(instance, run) for run in runs]
    summary = throughput(timings)
    for t in sorted(timings, key=lambda t: t["enqueued"]):
        print(f"[{t['partition']}] {t['status']}: queued {t['queued_s']:.1f}s, launch {t['launch_s']:.1f}s, "
              f"steps {t['steps_s']:.1f}s, overhead {t['overhead_s']:.1f}s")
    print(f"{summary['runs']} runs in {summary['wall_s']:.0f}s: {summary['partitions_per_hour']:.1f} partitions/hour, "
          f"{summary['queue_share']:.0%} of run time in the queue", flush=True)
    if args.figures:
        args.figures.write_text(json.dumps({"backfill": backfill_id, "summary": summary, "runs": timings},
                                           indent=2) + "\n")
    return 0 if all(t["status"] == "SUCCESS" for t in timings) else 1


if __name__ == "__main__":
    sys.exit(main())
