"""deploy/ as far as it can be exercised without a cluster: the code location loads with the k8s executor,
a compute step's Kubernetes job is rendered by dagster-k8s's own code and is a valid Kubernetes 1.37 Job
(strict schema), the instance configuration passes Dagster's config schemas, and every Kubernetes object
in the Helm values and deploy/storage.yaml passes the Kubernetes schemas (kubernetes-validate, offline)."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO, tiny_params

DEPLOY = REPO / "deploy"
K8S_VERSION = "1.37.0"


def test_definitions_load_with_the_k8s_executor_and_compute_steps_render_as_gpu_jobs(tmp_path, tiny_model_dir,
                                                                                     monkeypatch):
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config
    from kubernetes.client import ApiClient

    from orchestration.definitions import build_definitions

    monkeypatch.setenv("PSCB_EXECUTOR", "k8s")
    defs = build_definitions(str(tiny_params(tmp_path, tiny_model_dir)), repo=str(tmp_path))
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    rendered = {}
    for job_name in ("build_bank", "fine_tune_and_evaluate"):
        job = defs.resolve_job_def(job_name)
        assert job.executor_def.name == "k8s"
        for node in job.graph.node_defs:
            config = DagsterK8sJobConfig(job_image="registry.example.com/pscb:test",
                                         dagster_home="/opt/dagster/dagster_home", image_pull_policy="IfNotPresent",
                                         env_secrets=instance["env_secrets"], env_vars=instance["env_vars"],
                                         volume_mounts=instance["volume_mounts"], volumes=instance["volumes"])
            manifest = ApiClient().sanitize_for_serialization(construct_dagster_k8s_job(
                config, ["dagster", "api", "execute_step"], f"pscb-{node.name.replace('_', '-')}",
                user_defined_k8s_config=get_user_defined_k8s_config(node.tags), component="step_worker"))
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
            rendered[node.name] = manifest["spec"]["template"]["spec"]
    compute = {"generations", "attributions", "models", "evaluation"}
    for name, pod in rendered.items():
        gpus = pod["containers"][0].get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        assert (gpus == "1") == (name in compute), name
        assert (pod.get("node_selector") or pod.get("nodeSelector") or {}).get("pscb.io/accelerator") == (
            "gpu" if name in compute else None), name
    assert set(rendered) >= compute | {"tasks", "bank", "pairs", "report"}


def test_an_unknown_executor_is_refused_by_name(monkeypatch):
    from orchestration.executor import executor_from_env

    monkeypatch.setenv("PSCB_EXECUTOR", "celery")
    with pytest.raises(ValueError, match="PSCB_EXECUTOR='celery'"):
        executor_from_env()


def test_the_instance_configuration_passes_dagsters_schemas(monkeypatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-a-secret")
    config, _ = dagster_instance_config(str(DEPLOY))  # raises on any key the instance schema lacks
    for klass, section in ((DagsterPostgresStorage, config["storage"]["postgres"]),
                           (QueuedRunCoordinator, config["run_coordinator"].get("config") or {}),
                           (K8sRunLauncher, config["run_launcher"]["config"])):
        result = process_config(klass.config_type(), section)
        assert result.success, (klass.__name__, [e.message for e in result.errors])
    assert config["run_launcher"]["class"] == "K8sRunLauncher" and config["run_monitoring"]["enabled"]


def test_helm_values_and_storage_manifests_hold_valid_kubernetes_objects():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    run_resources = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]
    # the chart puts these fields into the code location's pod and, inherited, every run and step pod
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pscb"},
           "spec": {"volumes": deployment["volumes"],
                    "containers": [{"name": "pscb", "image": "registry.example.com/pscb:test",
                                    "env": deployment["env"], "volumeMounts": deployment["volumeMounts"],
                                    "envFrom": [{"secretRef": source} for source in deployment["envSecrets"]],
                                    "resources": deployment["resources"]},
                                   {"name": "run", "image": "registry.example.com/pscb:test",
                                    "resources": run_resources}]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "orchestration.definitions"]

    # the Helm deployment and the plain instance file describe the same instance
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert values["additionalInstanceConfig"]["concurrency"] == instance["concurrency"]
    assert instance["run_launcher"]["config"]["volumes"] == deployment["volumes"]
    assert instance["run_launcher"]["config"]["volume_mounts"] == deployment["volumeMounts"]
    assert {e["name"]: e["value"] for e in deployment["env"]} == dict(
        v.split("=", 1) for v in instance["run_launcher"]["config"]["env_vars"])

    manifests = list(yaml.safe_load_all((DEPLOY / "storage.yaml").read_text()))
    assert {m["kind"] for m in manifests} == {"PersistentVolumeClaim", "Job"}  # the password's Secret: the user's
    for manifest in manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    claims = {m["metadata"]["name"] for m in manifests if m["kind"] == "PersistentVolumeClaim"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"] if "persistentVolumeClaim" in v
            } <= claims


def test_every_pod_takes_the_database_password_from_the_one_secret_the_user_creates():
    """No manifest holds the password (tests/test_security.py scans for literals): the chart generates
    no Secret, and Dagster, its PostgreSQL, the code location, runs and the MLflow job read the same one."""
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    job = next(m for m in yaml.safe_load_all((DEPLOY / "storage.yaml").read_text()) if m["kind"] == "Job")
    name = values["global"]["postgresqlSecretName"]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["existingSecret"] == name and not values["postgresql"]["postgresqlPassword"]
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["envSecrets"] == [{"name": name}]
    launcher = instance["run_launcher"]["config"]
    assert launcher["env_secrets"] == [name] and launcher["postgres_password_secret"] == name
    assert instance["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": name}}]
    # the command that creates it, with the keys those readers take
    header = (DEPLOY / "storage.yaml").read_text().split("apiVersion", 1)[0]
    assert f"create secret generic {name}" in header and "openssl rand" in header
    for key in ("postgresql-password", "PGPASSWORD", "postgresql-postgres-password"):
        assert f"--from-literal={key}=" in header, key
