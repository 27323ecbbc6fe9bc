"""Cut the small dataset subsets that tests and a clone without ../shared use: tests/data/datasets/.

    python scripts/make_test_datasets.py [--source ../shared/datasets] [--rows 60]

The first `rows` rows of each file the local loader reads (pipelines/stages/tasks.py), in the same layouts, so
`tasks.source: local` works on them unchanged. ECQA's train split is its author ids looked up in
CommonsenseQA, so the CommonsenseQA train subset also holds the rows of the kept ECQA train ids.
Rerunning it reproduces the committed files byte for byte (tests/data/datasets/SHA256SUMS)."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINE_FILES = ["arc_easy/ARC-Easy-train.jsonl", "arc_easy/ARC-Easy-validation.jsonl", "arc_easy/ARC-Easy-test.jsonl",
              "arc_challenge/hf_export/ARC-Challenge-train.jsonl",
              "arc_challenge/hf_export/ARC-Challenge-validation.jsonl",
              "arc_challenge/hf_export/ARC-Challenge-test.jsonl",
              "codah/full_data.tsv"]
CSV_FILES = ["ecqa/cqa_data_val.csv", "ecqa/cqa_data_test.csv"]


def head_lines(path: Path, rows: int) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return "".join(line for _, line in zip(range(rows), handle))


def head_csv(path: Path, rows: int) -> str:
    with open(path, encoding="utf-8", newline="") as handle:  # fields hold newlines: cut by record, not by line
        reader = csv.reader(handle)
        kept = [row for _, row in zip(range(rows + 1), reader)]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(kept)
    return out.getvalue()


def build(source: Path, target: Path, rows: int) -> None:
    if target.exists():
        shutil.rmtree(target)
    files: dict[str, str] = {name: head_lines(source / name, rows) for name in LINE_FILES}
    files |= {name: head_csv(source / name, rows) for name in CSV_FILES}
    train_ids = (source / "ecqa/author_split/train_ids.txt").read_text().split()[:rows]
    files["ecqa/author_split/train_ids.txt"] = "".join(f"{i}\n" for i in train_ids)
    wanted = set(train_ids)
    for name in ("commonsense_qa/train_rand_split.jsonl", "commonsense_qa/dev_rand_split.jsonl"):
        with open(source / name, encoding="utf-8") as handle:
            lines = handle.readlines()
        files[name] = "".join(line for n, line in enumerate(lines) if n < rows or json.loads(line)["id"] in wanted)
    for name, text in files.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text, encoding="utf-8", newline="")
    shutil.copy(source / "ecqa/LICENSE.md", target / "ecqa/LICENSE.md")
    sums = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    (target / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256((target / n).read_bytes()).hexdigest()}  {n}\n" for n in sums))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--target", type=Path, default=REPO / "tests" / "data" / "datasets")
    parser.add_argument("--rows", type=int, default=60)
    args = parser.parse_args()
    readme = args.target / "README.md"
    kept_readme = readme.read_text() if readme.exists() else None
    build(args.source, args.target, args.rows)
    if kept_readme is not None:
        readme.write_text(kept_readme)
