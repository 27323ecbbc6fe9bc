import ast
from pathlib import Path

from tests.conftest import REPO


def test_pipelines_never_imports_dagster():
    for path in (REPO / "pipelines").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "dagster" for n in names), f"{path} imports dagster"


def test_cli_import_is_light():
    import subprocess
    import sys

    code = "import sys, pipelines.__main__, pipelines.core.config; print(sorted(m for m in ('torch', 'transformers', 'captum') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"
    assert Path(REPO / "params.yaml").exists()
