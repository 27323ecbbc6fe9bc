"""DVC on a real repository (a temporary copy of this one, tiny model): `dvc repro` from nothing, a Dagster
materialization that leaves `dvc status` clean, `dvc exp run -S`, metrics and plots; and the DVC stage
graph is the Dagster asset graph."""

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from orchestration.assets import ASSET_STAGES
from orchestration.definitions import build_definitions
from tests.conftest import REPO, tiny_params

DVC = REPO / ".venv" / "bin" / "dvc"  # `make install`: DVC in its own venv, stages on this venv's python
UP_TO_DATE = "Data and pipelines are up to date."


def dvc(repo, *args, timeout=900) -> str:
    assert DVC.exists(), f"{DVC} missing: `make install` sets up DVC (in .venv-dvc) and this wrapper"
    done = subprocess.run([str(DVC), *args], cwd=repo, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture
def clone(tmp_path, tiny_model_dir, monkeypatch):
    """This repository's files (committed or not, minus ignored ones) in a fresh git repo, tiny params."""
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    tiny_params(repo, tiny_model_dir, promote={"min_alignment_gain": -2.0, "accuracy_tolerance": 1.0})
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data_dir"], params["mlflow"]["tracking_uri"] = "data", "sqlite:///mlflow.db"  # dvc.yaml's paths
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site-cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the stages use params' store inside the clone
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "clone"], cwd=repo, check=True)
    return repo


def closure(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    reach = set(edges)
    while True:
        more = {(a, d) for a, b in reach for c, d in reach if b == c} - reach
        if not more:
            return reach
        reach |= more


def test_dvc_stage_graph_is_the_dagster_asset_graph():
    dot = subprocess.run([str(DVC), "dag", "--dot"], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"}).stdout
    stage_edges = {(a.split("@")[0], b.split("@")[0]) for a, b in re.findall(r'"([^"]+)" -> "([^"]+)"', dot)}
    stage_edges = {(a, b) for a, b in stage_edges if a != b}  # generate@x -> generate@y never; tasks@x alone
    graph = build_definitions(str(REPO / "params.yaml")).resolve_asset_graph()
    asset_edges = {(ASSET_STAGES[parent.to_user_string()], ASSET_STAGES[key.to_user_string()])
                   for key in graph.get_all_asset_keys() for parent in graph.get(key).parent_keys}
    assert {s for e in stage_edges for s in e} == set(ASSET_STAGES.values())
    assert closure(stage_edges) == closure(asset_edges)


def test_dvc_repro_builds_everything_and_equals_what_dagster_builds(clone, tmp_path, instance, monkeypatch):
    dvc(clone, "repro")
    assert UP_TO_DATE in dvc(clone, "status")
    metrics = json.loads(dvc(clone, "metrics", "show", "--json"))
    files = next(iter(metrics.values()))["data"]
    assert {"data/tiny/promotion.json", "data/tiny/report/metrics.json"} <= set(files)
    dvc(clone, "plots", "show", "--out", str(tmp_path / "plots"))
    assert "spearman_median" in (tmp_path / "plots" / "index.html").read_text()

    # Dagster, in a second clone, builds the same bank and records it in dvc.lock: DVC sees nothing to do
    other = tmp_path / "dagster-clone"
    shutil.copytree(clone, other, ignore=shutil.ignore_patterns("data", "dvc.lock", "mlflow.db", "mlruns"))
    monkeypatch.chdir(other)
    defs = build_definitions("params.yaml", repo=str(other))
    for key in ("arc_easy|tiny", "commonsense_qa|tiny"):
        assert defs.resolve_job_def("build_bank").execute_in_process(partition_key=key, instance=instance).success
    assert defs.resolve_job_def("fine_tune_and_evaluate").execute_in_process(partition_key="tiny",
                                                                           instance=instance).success
    assert UP_TO_DATE in dvc(other, "status")
    for dataset in ("arc_easy", "commonsense_qa"):
        for name in ("tasks.jsonl", "generations.jsonl", "attributions.jsonl", "bank.parquet"):
            ours, theirs = (r / "data" / "tiny" / "bank" / dataset / name for r in (other, clone))
            assert ours.read_bytes() == theirs.read_bytes(), f"{dataset}/{name} differs"

    dvc(other, "exp", "run", "-S", "train.beta=1.0")
    experiments = dvc(other, "exp", "show", "--csv", "--only-changed")
    assert "1.0" in experiments and "train.beta" in experiments
