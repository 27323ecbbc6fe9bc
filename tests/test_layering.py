"""Floors that only import downward: every module of pipelines/ and orchestration/, read with `ast` (imports
inside functions and under TYPE_CHECKING included), imports nothing from a floor above its own.

    core/  <  attribution/, analysis/, synthetic/  <  stages/  <  runner/  <  orchestration/  <  the CLIs

Modules of one floor may import each other (synthetic/validation.py reads analysis/controls.py). The CLIs
are `python -m pipelines` (its `pscb run` starts orchestration's main job) and `python -m
pipelines.synthetic.build` (it builds the known-answer tasks with the tasks stage): entry points, so above
everything they call. Dagster sits on orchestration's floor, so pipelines/ never imports it.
"""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# the floor of each package or module: the longest prefix of a dotted name decides
FLOORS = {
    "pipelines.core": 0,
    "pipelines.attribution": 1,
    "pipelines.analysis": 1,
    "pipelines.synthetic": 1,
    "pipelines.stages": 2,
    "pipelines.runner": 3,
    "orchestration": 4,
    "dagster": 4,
    "dagster_dask": 4,
    "dagster_k8s": 4,
    "dagster_postgres": 4,
    "pipelines.__main__": 5,
    "pipelines.synthetic.build": 5,
}
NAMES = {0: "core", 1: "attribution/analysis/synthetic", 2: "stages", 3: "runner", 4: "orchestration", 5: "CLI"}


def floor(module: str) -> int | None:
    """The floor of a dotted module name, None for what is not ours (the standard library, third parties)
    and for a package of pipelines/ not in FLOORS. pipelines/__init__.py, a docstring only, is on the ground."""
    if module == "pipelines":
        return 0
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in FLOORS:
            return FLOORS[prefix]
    return None


def module_name(path: Path) -> str:
    """pipelines/stages/score.py -> pipelines.stages.score; a package's __init__.py -> the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(module: str, source: str, package: bool = False) -> list[tuple[int, str]]:
    """(line, dotted name) of everything `source` imports, anywhere in it; `from a import b` gives a.b (b may be
    a module), relative imports resolved against `module`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def upward_imports(module: str, source: str, package: bool = False) -> list[str]:
    """Every import of `source` (the module `module`) from a floor above the module's own."""
    own = floor(module)
    assert own is not None, f"{module} is on no floor: give its package one in FLOORS"
    return [f"{module}:{line} imports {name} ({NAMES[floor(name)]}, above {NAMES[own]})"
            for line, name in imported(module, source, package) if (floor(name) or 0) > own]


def modules() -> list[Path]:
    return sorted(p for folder in ("pipelines", "orchestration") for p in (REPO / folder).rglob("*.py"))


def test_the_checker_flags_an_upward_import_anywhere_in_a_module():
    inside_a_function = "def f():\n    from pipelines.stages import score\n    return score\n"
    assert upward_imports("pipelines.core.records", inside_a_function) == [
        "pipelines.core.records:2 imports pipelines.stages.score (stages, above core)"]
    assert upward_imports("pipelines.stages.pair", "import pipelines.runner.quality\n") != []
    assert upward_imports("pipelines.runner.checked", "import dagster as dg\n") != []
    assert upward_imports("pipelines.analysis.gate", "from ..runner import dispatch\n") != []
    assert upward_imports("pipelines.core", "from .. import __main__\n", package=True) != []
    # downward, sideways on one floor, and what is not ours pass
    assert upward_imports("pipelines.stages.pair", "from pipelines.core.vocabulary import OWN\nimport numpy\n") == []
    assert upward_imports("pipelines.synthetic.validation", "from pipelines.analysis.controls import auroc\n") == []
    assert upward_imports("orchestration.assets", "import dagster\nfrom pipelines.runner import dispatch\n") == []
    with pytest.raises(AssertionError, match="on no floor"):
        upward_imports("pipelines.newpackage.thing", "")


def test_every_module_imports_only_from_its_own_floor_or_below():
    found = modules()
    assert len(found) > 50 and any(p.parent.name == "runner" for p in found)
    upward = [line for path in found
              for line in upward_imports(module_name(path), path.read_text(), path.name == "__init__.py")]
    assert upward == [], "imports from a higher floor:\n" + "\n".join(upward)


def test_the_ground_floor_imports_nothing_else_of_pipelines():
    """core/ is where everything may import from: its own modules, the standard library and third parties."""
    for path in (REPO / "pipelines" / "core").glob("*.py"):
        names = [name for _, name in imported(module_name(path), path.read_text())]
        assert not [n for n in names if n.startswith("pipelines.") and not n.startswith("pipelines.core")], path
