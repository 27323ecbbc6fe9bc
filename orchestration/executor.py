"""Where a run's steps execute: in the run's process (default), on a Dask cluster, or as Kubernetes jobs.

    PSCB_EXECUTOR=in_process | dask | k8s        (default in_process)
    DASK_SCHEDULER_ADDRESS=tcp://127.0.0.1:8786  (dask: the scheduler `python -m orchestration.cluster` starts)
    PSCB_DASK_TLS_DIR=<folder>                   (dask, between hosts: `python -m orchestration.cluster certs`
                                                  writes it; the address is then tls://...)

The code location reads these when it loads, so the webserver, the daemon, every run worker and every
Dask worker must be started with the same values (the cluster command and deploy/ do). Compute steps
(generate, attribute, train, evaluate) carry COMPUTE_TAGS: on Dask they need one `GPU` worker resource,
so a worker runs one of them at a time and N workers with GPU=1 are N slots; on Kubernetes they request
one `nvidia.com/gpu` on a GPU node.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path

import dagster as dg
from dagster._core.errors import raise_execution_interrupts
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode
from dagster._utils import iterate_with_context

DASK_RESOURCES = "dagster-dask/resource_requirements"  # dagster_dask.executor.DASK_RESOURCE_REQUIREMENTS_KEY
K8S_CONFIG = "dagster-k8s/config"
GPU_RESOURCE = "GPU"
COMPUTE_TAGS = {
    DASK_RESOURCES: json.dumps({GPU_RESOURCE: 1}),
    K8S_CONFIG: json.dumps({"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}},
                            "pod_spec_config": {"node_selector": {"pscb.io/accelerator": "gpu"},
                                                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                                 "effect": "NoSchedule"}]}}),
}
CLUSTER_COMMAND = "python -m orchestration.cluster up --workers N"


TLS_DIR_ENV = "PSCB_DASK_TLS_DIR"
TLS_FILES = {"ca": "ca.pem", "cert": "cert.pem", "key": "key.pem"}  # what `cluster certs DIR` writes


class ClusterUnavailable(dg.DagsterError):
    """The Dask scheduler did not answer: no step was submitted, so nothing was written."""


def tls_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The certificate folder PSCB_DASK_TLS_DIR names (absolute), or None: the cluster speaks plain TCP."""
    value = (os.environ if env is None else env).get(TLS_DIR_ENV, "")
    if not value:
        return None
    folder = Path(value).expanduser().resolve()
    missing = [name for name in TLS_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise ClusterUnavailable(f"{TLS_DIR_ENV}={value}: {', '.join(missing)} missing; make the folder with "
                                 f"`python -m orchestration.cluster certs {value}`")
    return folder


def security(env: Mapping[str, str] | None = None):
    """Dask's Security for a client, the scheduler and the workers: the cluster's CA, its one certificate
    (every member presents it, and is refused without it: mutual TLS), encryption required. With
    PSCB_DASK_TLS_DIR unset, Dask's own configuration (distributed.comm.tls.*, default: none)."""
    from distributed.security import Security

    folder = tls_dir(env)
    if folder is None:
        return Security()
    ca, cert, key = (str(folder / TLS_FILES[name]) for name in ("ca", "cert", "key"))
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, tls_scheduler_cert=cert,
                    tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key, require_encryption=True)


def connect(address: str, timeout_s: float, env: Mapping[str, str] | None = None):
    import dask.distributed

    settings = security(env)
    if address.startswith("tls://") and settings.get_connection_args("client")["ssl_context"] is None:
        raise ClusterUnavailable(f"the Dask scheduler at {address} speaks TLS: set {TLS_DIR_ENV} to the folder "
                                 f"with the cluster's certificates (`python -m orchestration.cluster certs`)")
    if settings.require_encryption and not address.startswith("tls://"):
        raise ClusterUnavailable(f"{TLS_DIR_ENV} is set, so the cluster speaks TLS only: the scheduler address "
                                 f"must be tls://..., not {address}")
    try:
        return dask.distributed.Client(address, timeout=timeout_s, set_as_default=False, security=settings)
    except (OSError, TimeoutError) as err:
        raise ClusterUnavailable(
            f"the Dask scheduler at {address} did not answer within {timeout_s:.0f}s ({err.__class__.__name__}); "
            f"start it with `{CLUSTER_COMMAND}` (or `make cluster`), or unset PSCB_EXECUTOR to run in-process"
        ) from None


class RunScopedDaskExecutor(dg.Executor):
    """dagster-dask's executor (0.29.27) with three of its behaviours changed; each step still runs
    through dagster-dask's own worker function.

    - Task keys carry the run id. dagster-dask keys a step `<job>.<step>` and Dask merges tasks with equal
      keys, so of two partition runs of one job in flight the second was reported successful without
      running (dagster-io/dagster#21418).
    - A step's arguments are bound in a partial, outside Dask's view: dask 2026 walks into task
      arguments and fails on Dagster's run records, so every run failed.
    - A step is submitted once its upstream steps succeeded, with no Dask dependencies, and its result is
      taken and released at once. dagster-dask passed upstream futures as arguments, so a worker killed
      during a step also lost the finished upstream results it held and Dask ran those steps again (a
      second materialization each). Now only the step a dead worker was running is resubmitted (the
      scheduler's allowed-failures), and its stage resumes from what that worker appended. Steps
      downstream of a failed one are not run, so the run fails."""

    def __init__(self, address: str, timeout_s: float):
        self.address = address
        self.timeout_s = timeout_s

    @property
    def retries(self) -> RetryMode:
        return RetryMode.DISABLED

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
                ) -> Iterator[dg.DagsterEvent]:
        import dask.distributed
        from dagster_dask.executor import get_dask_resource_requirements, query_on_dask_worker

        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError("Dask execution needs a persistent instance (DAGSTER_HOME)")
        run = plan_context.dagster_run
        steps = {step.key: step for level in execution_plan.get_steps_to_execute_by_level() for step in level}
        upstream = {key: {k for step_input in step.step_inputs for k in step_input.dependency_keys} & set(steps)
                    for key, step in steps.items()}
        succeeded: set[str] = set()
        with connect(self.address, self.timeout_s) as client:
            running = dask.distributed.as_completed([], with_results=True, loop=client.loop)
            submitted: dict[str, str] = {}  # Dask task key -> step key

            def submit_ready() -> None:
                for key in [k for k in steps if k not in submitted.values() and upstream[k] <= succeeded]:
                    # bound in a partial: Dask walks into a task's arguments, and Dagster's records
                    # refuse iteration ("Iteration is not allowed on `@record` RunOpConcurrency")
                    work = partial(query_on_dask_worker, None, recon_job=plan_context.reconstructable_job,
                                   dagster_run=run, run_config=plan_context.run_config, step_keys=[key],
                                   instance_ref=plan_context.instance.get_ref(),
                                   known_state=execution_plan.known_state)
                    task = f"{run.job_name}.{key}.{run.run_id}"
                    submitted[task] = key
                    running.add(client.submit(work, key=task, pure=False,
                                              resources=get_dask_resource_requirements(steps[key].tags)))

            submit_ready()
            for future, events in iterate_with_context(raise_execution_interrupts, running):
                future.release()
                yield from events
                if not any(event.is_step_failure for event in events):
                    succeeded.add(submitted[future.key])
                    submit_ready()


@dg.executor(name="dask", requirements=dg.multiple_process_executor_requirements(),
             config_schema={"address": dg.Field(dg.StringSource, is_required=False,
                                                description="Scheduler address; default DASK_SCHEDULER_ADDRESS"),
                            "connect_timeout_s": dg.Field(float, default_value=10.0)})
def run_scoped_dask_executor(init_context) -> RunScopedDaskExecutor:
    address = init_context.executor_config.get("address") or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        raise ClusterUnavailable(f"PSCB_EXECUTOR=dask needs DASK_SCHEDULER_ADDRESS (`{CLUSTER_COMMAND}` prints it)")
    return RunScopedDaskExecutor(address, init_context.executor_config["connect_timeout_s"])


def executor_from_env() -> dg.ExecutorDefinition:
    """Steps in the run's own process by default: a run waiting for the compute pool then sleeps (the
    multiprocess executor polled at about half a core per waiting run on 2 cores), and no step pays a
    new interpreter."""
    choice = os.environ.get("PSCB_EXECUTOR", "in_process")
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "dask":
        return run_scoped_dask_executor
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"PSCB_EXECUTOR={choice!r}: expected in_process, dask or k8s")
