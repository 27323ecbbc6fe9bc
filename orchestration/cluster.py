"""A Dask cluster on this machine for Dagster's steps: one scheduler and N workers, one GPU slot each.

    python -m orchestration.cluster up --workers 2     # prints the DASK_SCHEDULER_ADDRESS to export
    python -m orchestration.cluster down

Each worker is one process with one thread (Dagster steps are not thread-safe) and the Dask resource
GPU=1, so it runs one compute step at a time; on a machine with GPUs worker i sees only GPU i
(CUDA_VISIBLE_DEVICES), so N GPUs are N slots; without GPUs the workers split the CPU cores
(OMP_NUM_THREADS). Workers start in this directory with this environment
plus PSCB_EXECUTOR=dask, so they load the same code location (and PSCB_PARAMS) as the daemon. On
several machines run the same `dask scheduler` / `dask worker --resources GPU=1` commands by hand, or
dask-kubernetes; the executor only needs the scheduler's address.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from orchestration.executor import GPU_RESOURCE, connect

STATE = Path(".cluster")  # pids and logs of `up`, for `down`; ignored by git


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def dask_command(name: str) -> list[str]:
    return [sys.executable, "-m", f"distributed.cli.dask_{name}"]


def start(workers: int, port: int, folder: Path, env: dict[str, str] | None = None) -> tuple[str, list[int]]:
    """Scheduler and workers as background processes logging into `folder`; returns (address, pids)."""
    folder.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{port}"
    env = {**(env or os.environ), "PSCB_EXECUTOR": "dask", "DASK_SCHEDULER_ADDRESS": address}
    gpus = gpu_count()
    commands = [(dask_command("scheduler") + ["--host", "127.0.0.1", "--port", str(port),
                                              "--dashboard-address", ":0"], env, "scheduler")]
    if not gpus and "OMP_NUM_THREADS" not in env:  # CPU workers split the cores instead of each taking all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    for i in range(workers):
        worker_env = {**env, "CUDA_VISIBLE_DEVICES": str(i)} if gpus else env
        commands.append((dask_command("worker") + [address, "--name", f"worker-{i}", "--nthreads", "1",
                                                   "--resources", f"{GPU_RESOURCE}=1", "--memory-limit", "0",
                                                   "--local-directory", str(folder / f"worker-{i}")],
                         worker_env, f"worker-{i}"))
    pids = []
    for command, command_env, name in commands:
        with open(folder / f"{name}.log", "ab") as log:
            pids.append(subprocess.Popen(command, env=command_env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True).pid)
    return address, pids


def wait_for_workers(address: str, workers: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with connect(address, 5) as client:
                client.wait_for_workers(workers, timeout=max(1.0, deadline - time.monotonic()))
                return
        except Exception:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} Dask workers did not join {address} in {timeout_s:.0f}s") from None
            time.sleep(1)


def stop(pids: list[int]) -> None:
    """SIGTERM each process group (started with start_new_session), SIGKILL what is left after 20 s."""
    for pid in reversed(pids):  # workers first, so none reconnects to a new scheduler
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def local_cluster(workers: int, port: int, folder: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """A cluster for the length of a `with` (tests, benchmarks): yields the scheduler address."""
    address, pids = start(workers, port, folder, env)
    try:
        wait_for_workers(address, workers)
        yield address
    finally:
        stop(pids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--workers", type=int, help="default: one per GPU, or 1")
    parser.add_argument("--port", type=int, default=8786)
    args = parser.parse_args(argv)
    pid_file = STATE / "pids.json"
    if args.action == "down":
        if not pid_file.exists():
            print("no cluster started from this directory", file=sys.stderr)
            return 1
        stop(json.loads(pid_file.read_text())["pids"])
        pid_file.unlink()
        print("cluster stopped")
        return 0
    if pid_file.exists():
        print(f"a cluster is already up ({pid_file}); `python -m orchestration.cluster down` first", file=sys.stderr)
        return 1
    workers = args.workers or max(1, gpu_count())  # only `up` pays for importing torch
    address, pids = start(workers, args.port, STATE)
    pid_file.write_text(json.dumps({"address": address, "pids": pids}))
    try:
        wait_for_workers(address, workers)
    except TimeoutError as err:
        stop(pids)
        pid_file.unlink()
        print(f"error: {err}; logs in {STATE}/", file=sys.stderr)
        return 1
    print(f"{workers} workers at {address} (logs in {STATE}/). For Dagster:\n"
          f"  export PSCB_EXECUTOR=dask DASK_SCHEDULER_ADDRESS={address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
