"""DVC on a real repository (a temporary copy of this one, tiny model): `dvc repro` from nothing, a Dagster
materialization that leaves `dvc status` clean, `dvc exp run -S`, metrics and plots; and the DVC stage
graph is the Dagster asset graph."""

import ast
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import pytest
import yaml

from orchestration.assets import ASSET_STAGES
from orchestration.definitions import build_definitions
from pipelines.core.artifacts import ARTIFACTS
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
    for key in graph.get_all_asset_keys():  # an asset's deps are what the table says its stage reads
        assert {p.to_user_string() for p in graph.get(key).parent_keys} == set(ARTIFACTS[key.to_user_string()].reads)


def test_dvc_repro_and_the_main_job_through_dagster_build_the_same_bytes_in_two_clones(clone, tmp_path, instance):
    dvc(clone, "repro")
    assert UP_TO_DATE in dvc(clone, "status")
    metrics = json.loads(dvc(clone, "metrics", "show", "--json"))
    files = next(iter(metrics.values()))["data"]
    assert {"data/tiny/promotion.json", "data/tiny/report/metrics.json"} <= set(files)
    dvc(clone, "plots", "show", "--out", str(tmp_path / "plots"))
    assert "spearman_median" in (tmp_path / "plots" / "index.html").read_text()

    # `make run`'s job (the whole graph through Dagster) in a second clone at another path: every asset of
    # every partition materialized with passing checks, dvc.lock written by the stages (DVC sees nothing
    # to do), and the same bytes as `dvc repro` built in the first clone
    other = tmp_path / "dagster-clone"
    shutil.copytree(clone, other, ignore=shutil.ignore_patterns("data", "dvc.lock", "mlflow.db", "mlruns"))
    done = subprocess.run([sys.executable, "-m", "orchestration.run"], cwd=other, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(other)}, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert UP_TO_DATE in dvc(other, "status")
    materialized, checks = set(), {}
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event and event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                materialized.add((event.asset_key.to_user_string(), event.partition))
            elif event and event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
                evaluation = event.event_specific_data
                checks[(evaluation.asset_key.to_user_string(), evaluation.check_name,
                        run.tags["dagster/partition"])] = evaluation.passed
    slices = [f"{d}|tiny" for d in ("arc_easy", "commonsense_qa")]
    expected = {(a, p) for a, art in ARTIFACTS.items() for p in (slices if art.scope == "slice" else ["tiny"])}
    assert materialized == expected
    assert {(a, p) for a, name, p in checks if name == "great_expectations"} == \
        {(a, p) for a, p in expected if ARTIFACTS[a].suite}
    assert all(checks.values()), checks
    locks = [yaml.safe_load((r / "dvc.lock").read_text())["stages"] for r in (clone, other)]
    for dataset in ("arc_easy", "commonsense_qa"):
        for stage in ("tasks", "generate", "attribute", "score"):
            name = f"{stage}@{dataset}"
            data = [{o["path"]: o["md5"] for o in lock[name]["outs"] if not o["path"].endswith("_summary.json")}
                    for lock in locks]  # the summaries carry timings
            assert data[0] == data[1] and len(data[0]) == 1, name
        for name in ("tasks.jsonl", "generations.jsonl", "attributions.jsonl", "bank.parquet"):
            ours, theirs = (r / "data" / "tiny" / "bank" / dataset / name for r in (other, clone))
            assert ours.read_bytes() == theirs.read_bytes(), f"{dataset}/{name} differs"

    # a queued sweep: two points, two queue workers, each in its own temporary workspace that takes the
    # bank from the DVC cache and reruns train -> evaluate -> report -> promote; both log to one MLflow store
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "add", "dvc.lock"], cwd=other, check=True)
    subprocess.run([*git, "commit", "-qm", "bank built"], cwd=other, check=True)
    store = f"sqlite:///{other / 'mlflow.db'}"
    dvc(other, "exp", "run", "--queue", "-S", "train.beta=1.0,2.0", "-S", f"mlflow.tracking_uri={store}")
    dvc(other, "queue", "start", "-j", "2")
    deadline = time.monotonic() + 1500
    while time.monotonic() < deadline:
        status = dvc(other, "queue", "status")
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(5)
    logs = "".join(f.read_text()[-2000:] for f in (other / ".dvc" / "tmp" / "exps").rglob("*.out"))
    assert status.count("Success") == 2, status + logs
    experiments = list(csv.DictReader(io.StringIO(dvc(other, "exp", "show", "--csv"))))
    swept = {row["train.beta"]: row for row in experiments if row.get("Experiment")}
    assert set(swept) == {"1.0", "2.0"}, experiments
    for row in swept.values():  # each point ran to promote: its gate's figures are the experiment's metrics
        assert any(key.endswith("alignment_gain") and value not in ("", "-") for key, value in row.items()), row
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("pscb-training").experiment_id],
                               "tags.algorithm = 'dpo'")
    betas = [r.data.params["pscb.beta"] for r in runs]
    assert betas.count("1.0") == betas.count("2.0") == 1, betas  # one fine-tune per point, beside the main job's


def module_file(module: str) -> Path:
    """pipelines.stages.score -> pipelines/stages/score.py"""
    return REPO.joinpath(*module.split(".")).with_suffix(".py")


def pipelines_imports(module: str) -> set[str]:
    """The pipelines modules (dotted names) one module imports, at top level or inside functions."""
    tree = ast.parse(module_file(module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipelines."):
            names = {f"{node.module}.{alias.name}" for alias in node.names}
            submodules = {name for name in names if module_file(name).exists()}
            found |= submodules or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipelines.")}
    return found


def imported_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(pipelines_imports(name))
    return seen


def test_package_inits_hold_no_code():
    """Importing a stage runs its package's __init__ too; the closure below leaves them out as deps
    because they are docstrings only."""
    for init in (REPO / "pipelines").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body), init


@pytest.mark.parametrize("stage", list(ASSET_STAGES.values()))
def test_each_dvc_stage_lists_every_module_it_imports_and_every_params_section_it_reads(stage):
    from pipelines.core.config import Params

    body = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    body = body.get("do", body)
    modules = imported_closure(f"pipelines.stages.{stage}")
    files = {module_file(m).relative_to(REPO).as_posix() for m in modules}
    assert files <= set(body["deps"]), f"{stage}: dvc.yaml deps miss {sorted(files - set(body['deps']))}"
    # the schema module's own validators read every section; a stage's sections are what its code reads
    code = "".join(module_file(m).read_text() for m in modules - {"pipelines.core.config"})
    read = set(re.findall(r"\bparams\.(\w+)", code)) & set(Params.model_fields) - {"data_dir"}
    declared = {entry.split(".")[0] for entry in body.get("params", [])}
    assert read <= declared, f"{stage} reads params sections {sorted(read - declared)} that dvc.yaml does not list"


def test_every_params_key_dvc_yaml_lists_is_written_in_params_yaml():
    """dvc reads a listed key from params.yaml itself, not from the schema's defaults: a key only the schema
    holds fails `dvc repro` with 'missing from params.yaml'."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())

    def present(key: str) -> bool:
        node = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    listed = {(name, key) for name, body in stages.items()
              for key in body.get("do", body).get("params", []) if isinstance(key, str)}
    assert {(name, key) for name, key in listed if not present(key)} == set()


def dvc_path(artifact, name: str) -> str:
    """A file of `artifact` (relative to its partition's folder) as dvc.yaml names it."""
    return "data/${model.name}/" + ("bank/${item}/" if artifact.scope == "slice" else "") + name


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def test_dvc_outputs_are_the_declared_artifact_files():
    """dvc.yaml's outs, metrics and plots of a stage are the files pipelines/core/artifacts.py declares for it."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for artifact in ARTIFACTS.values():
        body = stages[artifact.stage].get("do", stages[artifact.stage])
        written = {next(iter(o)) if isinstance(o, dict) else o
                   for key in ("outs", "metrics", "plots") for o in body.get(key, [])}
        declared = {dvc_path(artifact, name) for name in artifact.files}
        assert all(any(inside(w, d) for d in declared) for w in written), (artifact.stage, written - declared)
        assert all(any(inside(w, d) for w in written) for d in declared), (artifact.stage, declared)
        if artifact.summary:  # the summary is a DVC metric, or lies in an out
            assert any(inside(dvc_path(artifact, artifact.summary), w) for w in written), artifact.stage


def test_dvc_data_deps_are_the_artifacts_the_table_says_each_stage_reads():
    """A stage's data deps in dvc.yaml are files of the artifacts its entry in pipelines/core/artifacts.py
    reads, and each of those artifacts is among them: the table is where a stage's inputs are declared (the
    runner validates them, the Dagster assets depend on them). A model's stage may depend on a folder that
    holds them, such as the bank folder of every slice."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for artifact in ARTIFACTS.values():
        body = stages[artifact.stage].get("do", stages[artifact.stage])
        deps = [d for d in body["deps"] if d.startswith("data/")]
        reads = {name: [dvc_path(ARTIFACTS[name], f) for f in (ARTIFACTS[name].path, ARTIFACTS[name].summary) if f]
                 for name in artifact.reads}

        def related(dep: str, files: list[str]) -> bool:
            return any(inside(f, dep) or inside(dep, f) for f in files)

        unread = [d for d in deps if not any(related(d, files) for files in reads.values())]
        assert not unread, f"{artifact.stage} depends on {unread}, which no artifact it reads holds: add it to reads"
        missing = [name for name, files in reads.items() if not any(related(d, files) for d in deps)]
        assert not missing, f"{artifact.stage} reads {missing}, which dvc.yaml's deps lack"


def test_a_corrupted_record_stops_every_entry_point_at_the_same_check(clone, instance, monkeypatch):
    dvc(clone, "repro", "generate@arc_easy")
    folder = clone / "data" / "tiny" / "bank" / "arc_easy"
    rows = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    rows[1]["answer_label"] = "Z"  # not one of the task's choices
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dvc(clone, "commit", "--force", "generate@arc_easy")  # accepted by hand: only the next stage can catch it
    message = (f"data/tiny/bank/arc_easy/generations.jsonl failed its Great Expectations suite 'generations': "
               f"arc_easy: generations: {len(rows)} rows")
    row_named = f"rows {rows[1]['id']}"

    cli = subprocess.run([sys.executable, "-m", "pipelines", "attribute", "--dataset", "arc_easy"], cwd=clone,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(clone)})
    assert cli.returncode == 2 and message in cli.stderr and row_named in cli.stderr, cli.stderr[-2000:]
    line = next(x for x in cli.stderr.splitlines() if message in x).removeprefix("error: ")

    repro = subprocess.run([str(DVC), "repro", "attribute@arc_easy"], cwd=clone, capture_output=True, text=True)
    assert repro.returncode != 0 and line in repro.stdout + repro.stderr

    monkeypatch.chdir(clone)
    result = build_definitions("params.yaml", repo=str(clone)).resolve_job_def("build_bank").execute_in_process(
        partition_key="arc_easy|tiny", instance=instance, asset_selection=[dg.AssetKey("attributions")],
        raise_on_error=False)
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert not result.success and line in failure.step_failure_data.error.message
    assert not (folder / "attributions.jsonl").exists()  # nothing was computed from the bad record


def test_a_params_edit_rebuilds_through_dagster_what_dvc_repro_builds_in_a_clean_clone(clone, tmp_path, instance,
                                                                                      monkeypatch):
    """A record-determining edit recomputes (the stale output set aside), a batch-size edit recomputes nothing,
    and dvc.lock then records what `dvc repro` makes from the same params in a clone that never saw the old."""
    fresh = tmp_path / "fresh"
    shutil.copytree(clone, fresh)
    monkeypatch.chdir(clone)
    generations = [dg.AssetKey("tasks"), dg.AssetKey("generations")]

    def materialize() -> None:
        result = build_definitions("params.yaml", repo=str(clone)).resolve_job_def("build_bank").execute_in_process(
            partition_key="arc_easy|tiny", instance=instance, asset_selection=generations)
        assert result.success

    def edit(repo: Path, **values) -> None:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["generate"].update(values)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    out = clone / "data" / "tiny" / "bank" / "arc_easy" / "generations.jsonl"
    materialize()
    before = out.read_bytes()
    edit(clone, temperature=1.3)
    materialize()
    assert out.read_bytes() != before
    assert (clone / "data" / "tiny" / "rejected" / "stale" / "bank" / "arc_easy" / "generations.jsonl").read_bytes() \
        == before
    edit(clone, batch_size=3, tasks_per_chunk=1)
    after = out.read_bytes()
    materialize()
    assert out.read_bytes() == after
    assert UP_TO_DATE in dvc(clone, "status", "generate@arc_easy")

    # records keep the batch size of the run that wrote them (a provenance field no stage reads), so the clean
    # clone repeats the edit that changes records
    edit(fresh, temperature=1.3)
    dvc(fresh, "repro", "generate@arc_easy")
    locks = [yaml.safe_load((r / "dvc.lock").read_text())["stages"]["generate@arc_easy"] for r in (clone, fresh)]
    md5s = [{o["path"]: o["md5"] for o in lock["outs"] if not o["path"].endswith("_summary.json")} for lock in locks]
    assert md5s[0] == md5s[1]
    assert (fresh / "data" / "tiny" / "bank" / "arc_easy" / "generations.jsonl").read_bytes() == after
