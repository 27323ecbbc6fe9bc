"""One record type per artifact, and the JSON Lines storage every stage shares.

Records are appended one line at a time and flushed, so a stage killed midway keeps what it wrote;
`read_records` drops a torn last line (the only line a kill can leave half-written), and a rerun skips
ids already present. Schema of the bank: docs/stages.md (the score stage).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Choice:
    label: str
    text: str


@dataclass
class Task:
    id: str
    dataset: str
    split: str  # train | eval | test (our seeded 70/20/10 split)
    question: str
    choices: list[Choice]
    answer_label: str | None
    source: dict[str, Any] = field(default_factory=dict)  # origin, source split, file digest or hub revision

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Task:
        return cls(**{**row, "choices": [Choice(**c) for c in row["choices"]]})


@dataclass
class Generation:
    id: str  # == task id: one decision per task
    task: Task
    decision: str
    decision_ids: list[int]
    answer_label: str | None  # parsed from the decision; None when unparseable
    parse_status: str  # letter | text | unparseable
    correct: bool
    explanations: list[str]
    explanation_ids: list[list[int]]
    seeds: list[int]  # decision seed, then one per explanation
    model: dict[str, Any]
    settings: dict[str, Any]
    # the diagnosticity control: an explanation written after a forced other option, {label, decision,
    # explanation, explanation_ids, seed}; {label: None, reason} when none can be formed; None = not asked
    counterfactual: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Generation:
        return cls(**{**row, "task": Task.from_dict(row["task"])})


@dataclass
class Attribution:
    id: str  # f"{generation id}/{method}"
    generation_id: str
    method: str
    target: str  # sequence | first_position
    features: str  # first_user_message | string_aligned
    feature_tokens: list[str]  # the decision's features
    decision: list[float]
    explanation_feature_tokens: list[list[str]]  # equals feature_tokens unless string_aligned
    explanations: list[list[float]]
    baseline_token_id: int
    baseline_token: str
    model: dict[str, Any]  # identity of the model attributed (the generating model's)
    settings: dict[str, Any]
    masks: str = "none"  # independent | shared (LIME, KernelSHAP); none: the method draws no samples
    seeds: dict[str, int] | None = None  # {decision, explanations}: the seeds of the two mask sets
    # the null floor and diagnosticity controls: {kind: counterfactual | mismatched, source, text, vector},
    # over the explanations' features
    controls: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Attribution:
        # banks written before timing moved to the summary carry `seconds`; records stay reproducible bytes
        return cls(**{k: v for k, v in row.items() if k != "seconds"})


def to_dict(record: Any) -> dict[str, Any]:
    return asdict(record)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the complete lines of a JSON Lines file (a torn last line is ignored)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith("\n"):
                return  # the line being written when the process died
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON record ({err})") from None


def torn_tail(path: Path, chunk: int = 2**16) -> bytes:
    """The bytes after the last newline: a line being written when a process died (usually none).
    Reads backwards from the end, so a large file costs one chunk."""
    with open(path, "rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        tail = b""
        while end > 0:
            start = max(0, end - chunk)
            handle.seek(start)
            tail = handle.read(end - start) + tail
            if b"\n" in tail:
                return tail[tail.rfind(b"\n") + 1:]
            end = start
        return tail


def repair_tail(path: Path) -> None:
    """Cut a torn last line so that appends start on a fresh line."""
    if not path.exists():
        return
    torn = len(torn_tail(path))
    if torn:
        with open(path, "rb+") as handle:
            handle.truncate(handle.seek(0, os.SEEK_END) - torn)


def read_stage_input(path: Path, producer: str) -> list[dict[str, Any]]:
    """The records a stage consumes; a missing file says which stage to run first."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m pipelines {producer}` first")
    return list(read_records(path))


def existing_ids(path: Path) -> set[str]:
    return {row["id"] for row in read_records(path)}


class Appender:
    """Append records to a JSON Lines file, one flushed line each."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(path)
        self._handle = open(path, "a", encoding="utf-8")

    def write(self, record: Any) -> None:
        row = record if isinstance(record, dict) else to_dict(record)
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_records(path: Path, records: Iterable[Any]) -> int:
    """Write a whole file atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    count = 0
    with open(partial, "w", encoding="utf-8") as handle:
        for record in records:
            row = record if isinstance(record, dict) else to_dict(record)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(partial, path)
    return count


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(partial, path)


def sha256(*paths: Path, names: bool = False) -> str:
    """The one content digest: files in the order given, a folder's files recursively in path order.

    With `names`, each file's path (relative to its argument's parent) goes in before its bytes, so a
    folder's layout is part of the digest (Dagster's data versions); without, the digest of one file is
    `sha256sum`'s."""
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if not file.is_file():
                continue
            if names:
                digest.update(file.relative_to(path.parent).as_posix().encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()
