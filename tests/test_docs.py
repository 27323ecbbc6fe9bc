"""The docs travel with the repository: every relative link in the markdown resolves to a file in it, every
citation of the method in the code is `docs/method.md section N` with N one of its sections, and nothing the
docs or the code's docstrings point a reader at lies outside the repository (a clone has nothing beside it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)  # [label]: target
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # https:, mailto:, //host

ALLOWED_OUTSIDE: dict[str, list[str]] = {}  # a mention of ../shared that points at nothing a user needs
SHARED_REFERENCE = "shared" + "/reference"  # the folder the method and GPU notes came from; this file names it


def markdown_files() -> list[Path]:
    """README.md, docs/*.md, and every other markdown file git tracks or would track."""
    files = {REPO / "README.md", *(REPO / "docs").glob("*.md")}
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
                                cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
        files |= {REPO / name for name in listed}
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: README and docs/ only
        pass
    return sorted(path for path in files if path.is_file())


def relative_links(text: str) -> list[str]:
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = LINK.findall(prose) + REFERENCE.findall(prose)
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def test_the_link_finder_sees_inline_reference_and_image_links_but_not_code():
    text = ("See [a](docs/a.md#part), ![b](img/b.png \"title\"), [c](https://x.org/c), [d](#top), `[e](no.md)`\n"
            "```\n[f](no-either.md)\n```\n[g]: other/g.md\n")
    assert relative_links(text) == ["docs/a.md#part", "img/b.png", "other/g.md"]


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves_to_a_file_in_the_repository(doc):
    broken = []
    for target in relative_links(doc.read_text(encoding="utf-8")):
        part = target.split("#", 1)[0].split("?", 1)[0]
        path = (doc.parent / part).resolve()
        if not path.exists() or not path.is_relative_to(REPO):
            broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)}: links to nothing in the repository: {broken}"


def test_docs_carry_the_method_reference_with_its_numbered_sections():
    text = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    numbered = [int(n) for n in re.findall(r"^## (\d+)\. ", text, re.MULTILINE)]
    assert numbered == list(range(1, 9)), numbered
    for mode in ("first_position", "string_aligned", "l1_dot", "keep_ties"):
        assert mode in text, f"docs/method.md does not name the compatibility mode {mode}"


def method_sections() -> set[str]:
    text = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    return set(re.findall(r"^## (\d+)\. ", text, re.MULTILINE))


def python_files() -> list[Path]:
    return sorted(p for folder in ("pipelines", "orchestration", "experiments", "benchmarks", "scripts", "tests")
                  for p in (REPO / folder).rglob("*.py"))


def test_every_method_md_citation_is_docs_method_md_and_names_one_of_its_sections():
    sections, wrong = method_sections(), []
    for path in python_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            cited = re.findall(r"(\S*)method\.md section (\d+)", line)  # a citation: "docs/method.md section 4"
            bare = re.search(r"(?<![\w/\"'])method\.md", line)  # named without its folder (a quoted path in code is fine)
            if bare or any(not prefix.endswith("docs/") or n not in sections for prefix, n in cited):
                wrong.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not wrong, "cite the method as `docs/method.md section N`, N a section of it:\n" + "\n".join(wrong)


def test_no_doc_or_docstring_points_outside_the_repository():
    """../shared (the project machines' shared folder) is not beside a clone. Only tests/ and scripts/ may name
    it: they read full dataset copies from there when asked (PSCB_SHARED_DATASETS, make_test_datasets.py)."""
    found = []
    places = [p for p in markdown_files() if not p.is_relative_to(REPO / "tests")]
    places += [p for folder in ("pipelines", "orchestration", "experiments", "benchmarks")
               for p in (REPO / folder).rglob("*.py")]
    for path in places:
        name = path.relative_to(REPO).as_posix()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ("../shared" in line or "/work/shared" in line) and not any(
                    allowed in line for allowed in ALLOWED_OUTSIDE.get(name, ())):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "points outside the repository:\n" + "\n".join(found)


def test_nothing_anywhere_cites_the_shared_reference_folder():
    """The method and the GPU measurements are docs/method.md and docs/gpu-measurements.md now."""
    found = []
    for path in [*markdown_files(), *python_files(), *(REPO / "experiments").glob("*.yaml"), REPO / "params.yaml"]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SHARED_REFERENCE in line:
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
