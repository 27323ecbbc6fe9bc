"""The `pscb` command (pipelines/__main__.py): its help, and its two ways to fail. A user error (bad params, a
missing input, an unknown partition, ...) is one `error:` line on stderr and exit status 2; anything else is a
bug and keeps its traceback (exit status 1). Run through the installed entry point as a user runs it; a venv
installed before the script existed falls back to `python -m pipelines`, the same function."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.runner.dispatch import STAGES
from tests.conftest import REPO, SLOW_MODULES, SLOW_TESTS

SCRIPT = Path(sys.executable).parent / "pscb"
PSCB = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "pipelines"]


def pscb(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PSCB, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]


def test_help_names_every_stage_and_run_and_ui(capsys):
    done = pscb("--help")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert set(STAGES) | {"all", "run", "ui", "params"} <= listed, done.stdout
    assert "make run" in done.stdout and "make ui" in done.stdout and "exit status" in done.stdout.lower()
    from pipelines.__main__ import main

    for command, says in (("run", "DAGSTER_HOME"), ("ui", "127.0.0.1"), ("attribute", "--set")):
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0 and says in capsys.readouterr().out, command


def params_file(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\n{text}")
    return path


def test_a_user_error_is_one_error_line_and_exit_status_2(tmp_path):
    done = pscb("tasks", "--params", str(params_file(tmp_path)), "--set", "generate.no_such_key=1")
    assert done.returncode == 2, done.stderr
    lines = error_lines(done)
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "generate.no_such_key: Extra inputs are not permitted (unknown key)" in lines[0], done.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "generate"], "--set expects key=value, got 'generate'"),
    (["--set", "generate.top_p=[1"], "--set generate.top_p: the value is not valid YAML"),
    (["--dataset", "no_such_dataset"], "dataset 'no_such_dataset' is not a partition"),
    (["--model", "no_such_model"], "no_such_model"),
], ids=["set-without-value", "set-bad-yaml", "unknown-dataset", "unknown-model"])
def test_bad_arguments_are_user_errors(tmp_path, capsys, args, message):
    from pipelines.__main__ import main

    assert main(["tasks", "--params", str(params_file(tmp_path)), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_bad_params_file_names_the_key_in_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\nattribute:\n  n_samples: lots\n")
    done = pscb("attribute", "--params", str(params))
    assert done.returncode == 2 and error_lines(done) == [
        f"error: {params}: attribute.n_samples: Input should be a valid integer, unable to parse string as an "
        "integer (got 'lots')"], done.stderr


def test_a_bug_keeps_its_traceback_and_exit_status_1(tmp_path):
    """A stage that raises what a bug raises: a KeyError, once taken for a user error."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import pipelines.runner.dispatch as dispatch\n\n"
        "def run_stage(*args, **kwargs):\n"
        "    return {}['injected']\n\n"
        "dispatch.run_stage = run_stage\n")
    path = os.pathsep.join(p for p in (str(inject), str(REPO), os.environ.get("PYTHONPATH")) if p)
    done = pscb("tasks", "--params", str(params_file(tmp_path)), env={"PYTHONPATH": path})
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" in done.stderr and "sitecustomize.py" in done.stderr, done.stderr
    assert error_lines(done)[-1] == "KeyError: 'injected'", done.stderr
    assert not any(line.startswith("error: ") for line in done.stderr.splitlines()), done.stderr


def test_errors_are_sorted_in_process(monkeypatch, capsys):
    """Every user error class gives exit status 2 and one line; other exceptions propagate unchanged."""
    from pipelines import __main__ as cli
    from pipelines.core.artifacts import ARTIFACTS
    from pipelines.core.config import ParamsError
    from pipelines.core.partitions import PartitionError
    from pipelines.runner.checked import ArtifactInvalid, PartitionBusy
    from pipelines.stages.tasks import BadRowError

    user = [ParamsError("p.yaml: seed: bad"), BadRowError("arc_easy", 3, "question", "missing"),
            ArtifactInvalid(next(iter(ARTIFACTS.values())), Path("data/x"), []),
            FileNotFoundError("data/x/bank.parquet not found: run `python -m pipelines score` first"),
            PartitionError("model 'm' is not a partition"), PartitionBusy("data/x is being written\nby 42")]
    for raised in [*user, KeyError("k"), ValueError("v"), RuntimeError("r"), AttributeError("a")]:
        def run_stages(args, raised=raised):
            raise raised

        monkeypatch.setattr(cli, "run_stages", run_stages)
        if raised in user:
            assert cli.main(["tasks"]) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1, err
        else:
            with pytest.raises(type(raised)):
                cli.main(["tasks"])


def test_run_and_ui_need_the_project_instance(tmp_path, monkeypatch, capsys):
    """Outside the repository root, without DAGSTER_HOME, both say where the instance is looked for."""
    from pipelines.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for command in ("run", "ui"):
        assert main([command]) == 2
        assert capsys.readouterr().err == (
            f"error: no Dagster instance at {tmp_path / '.dagster'} (.dagster/dagster.yaml): run this from the "
            "repository root, or set DAGSTER_HOME\n")


def test_the_slow_list_names_tests_that_exist():
    """tests/conftest.py marks tests slow by name: a renamed test must not silently join the fast tier."""
    assert any((REPO / "tests" / module).is_file() for module in SLOW_MODULES | set(SLOW_TESTS))
    for module, names in SLOW_TESTS.items():
        if not (REPO / "tests" / module).is_file():  # a module not (yet) in this checkout
            continue
        tree = ast.parse((REPO / "tests" / module).read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        functions = {name.split("[")[0] for name in names}
        assert functions <= defined, f"{module}: {sorted(functions - defined)} are not tests there"


def test_params_prints_every_value_dvc_needs_and_reads_back_as_the_same_params(tmp_path):
    """`pscb params` writes a params file whose every key dvc.yaml lists is present (DVC needs each in
    params.yaml), and which loads to the very params the short file and its overrides gave."""
    import yaml

    from pipelines.core.config import load_params

    done = pscb("params", "--params", "experiments/known_answer.yaml", "--set", "data_dir=data")
    assert done.returncode == 0, done.stderr
    full = tmp_path / "params.yaml"
    full.write_text(done.stdout)
    assert load_params(full) == load_params(REPO / "experiments/known_answer.yaml", {"data_dir": "data"})
    written = yaml.safe_load(done.stdout)
    listed = set()
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        listed.update(key for key in stage.get("do", stage).get("params", []) if isinstance(key, str))
    missing = []
    for key in listed:
        node = written
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is KeyError:
            missing.append(key)
    assert listed and not missing, missing
