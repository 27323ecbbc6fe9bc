"""The checked run every entry point shares: validate what a stage reads, run it, validate what it wrote.

The CLI, `dvc repro` and Dagster run a stage through `checked_run` (pipelines/runner/dispatch.py): it
validates the artifacts the stage reads (pipelines/core/artifacts.py declares them), runs it, and validates
what it wrote before reporting success. A failing suite raises `ArtifactInvalid` naming the file, the
expectation, the column and the row ids, the same message from every entry point; the rejected output is
moved to `<model>/rejected/` (kept for inspection: move it back once the cause is fixed to keep its work)
and the output that was there before the run is restored, so neither the next stage nor `dvc status` takes
a failed artifact for a good one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.artifacts import ARTIFACTS, Artifact
from pipelines.core.config import Params
from pipelines.core.provenance import method_settings, record_settings
from pipelines.core.records import read_records, torn_tail
from pipelines.runner.quality import QualityReport, validate, validate_tables


class PartitionBusy(RuntimeError):
    """Another process is writing this artifact of this partition."""


@contextlib.contextmanager
def exclusive(lock: Path, what: str) -> Iterator[None]:
    """Hold an exclusive OS lock on `lock` for the block, or refuse at once if another process holds it: two
    writers of one partition's files would interleave their records. The lock goes with the process, so a
    killed writer never leaves its partition locked."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise PartitionBusy(f"{what} is being written by {holder}: not started a second time; rerun once it "
                            "has finished (the stage resumes)") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


class ArtifactInvalid(ValueError):
    """An artifact failed its suite; `reports` are per part (a file, a fine-tune, a model)."""

    def __init__(self, artifact: Artifact, where: Path, reports: list[tuple[str, QualityReport]]):
        self.artifact, self.where, self.reports = artifact, where, reports
        failed = "; ".join(f"{part}: {report.summary()}" for part, report in reports if not report.success)
        super().__init__(f"{where / artifact.path} failed its Great Expectations suite '{artifact.suite}': "
                         f"{failed}")


def bank_tables(path: Path) -> Iterator[Any]:
    """A bank.parquet as arrow tables of at most quality.CHUNK_ROWS rows each, read one after the other."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.runner.quality import CHUNK_ROWS

    file = pq.ParquetFile(path)
    for batch in file.iter_batches(batch_size=CHUNK_ROWS):
        yield pa.Table.from_batches([batch], schema=file.schema_arrow)


def parts(artifact: Artifact, params: Params, folder: Path) -> list[tuple[str, Any, dict[str, Any]]]:
    """(part, rows, expected values) for each table the artifact holds in `folder` (its partition's). The rows
    are read as they are validated: records one at a time (an iterable of dicts), a bank by row groups (an
    iterable of arrow tables, `BankTables`), so no part is ever held whole."""
    name = artifact.name
    if name in ("tasks", "generations", "attributions"):
        expected = {"tasks": {"dataset": folder.name},
                    "attributions": {"settings": {m: method_settings(params.attribute, params.seed, m)
                                                  for m in params.attribute.methods}},
                    "generations": {"n_explanations": params.generate.n_explanations,
                                    "settings": record_settings("generate", params.generate, params.seed)}}[name]
        return [(folder.name, read_records(folder / artifact.path), expected)]
    if name == "bank":
        return [(folder.name, BankTables(folder / artifact.path), {})]
    if name == "pairs":
        rows = (r for f in sorted((folder / artifact.path).glob("*.jsonl")) for r in read_records(f))
        return [("pairs", rows, {"min_margin": params.pair.min_margin, "keep_ties": params.pair.keep_ties})]
    if name == "models":
        summary = json.loads((folder / artifact.summary).read_text())  # each fine-tune's TRL log
        return [(a, summary[a]["log_history"], {}) for a in params.train.algorithms]
    if name == "evaluation":  # a bank per evaluated model
        return [(model, BankTables(folder / artifact.path / model / ARTIFACTS["bank"].path), {})
                for model in params.evaluate.models]
    from pipelines.stages.report import metric_rows

    return [("report", metric_rows(json.loads((folder / artifact.summary).read_text())), {})]


@dataclass(frozen=True)
class BankTables:
    """A bank.parquet's rows as arrow tables (bank_tables), for the bank suite's vectorized validation."""
    path: Path

    def __iter__(self) -> Iterator[Any]:
        return bank_tables(self.path)


# files that passed their suite in this process, by what they are on disk: a stage's output is the next
# stage's input, and a bank of tens of thousands of records should not be validated twice in one run
_passed: dict[tuple, list[tuple[str, QualityReport]]] = {}


def fingerprint(artifact: Artifact, params: Params, folder: Path) -> tuple:
    """What the artifact's files are on disk (path, size, mtime, inode of each) and the params it is judged by."""
    entries = []
    for name in artifact.files:
        path = folder / name
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                stat = file.stat()
                entries.append((file.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return artifact.name, str(folder.resolve()), params.model_dump_json(), tuple(entries)


def check(artifact: Artifact, params: Params, folder: Path) -> list[tuple[str, QualityReport]]:
    """Run the artifact's suite on what `folder` holds; raise ArtifactInvalid when any part fails. Files
    unchanged since they last passed in this process are not validated again."""
    if artifact.suite is None:
        return []
    key = fingerprint(artifact, params, folder)
    if key in _passed:
        return _passed[key]
    reports = [(part, (validate_tables if isinstance(rows, BankTables) else validate)(artifact.suite, rows, **expected))
               for part, rows, expected in parts(artifact, params, folder)]
    if any(not report.success for _, report in reports):
        raise ArtifactInvalid(artifact, folder, reports)
    _passed[key] = reports
    return reports


def check_input(artifact: Artifact, params: Params, folder: Path) -> list[tuple[str, QualityReport]]:
    """`check` on an artifact a stage reads; a missing one says which stage to run first."""
    if not (folder / artifact.path).exists():
        raise FileNotFoundError(f"{folder / artifact.path} not found: run `python -m pipelines {artifact.stage}` first")
    return check(artifact, params, folder)


@dataclass
class StageResult:
    summary: dict[str, Any]
    reports: list[tuple[str, QualityReport]]  # the written artifact's validation, per part


def _move(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))


class Previous:
    """The output a partition held before its stage ran, kept as cheaply as the way the stage writes allows:
    an appended file by its length and torn tail (its old content is a prefix of the new one), a file the
    stage replaces atomically by a hard link (the stage's rename leaves the linked inode untouched), a
    folder by a copy (third-party writers rewrite files in place)."""

    def __init__(self, artifact: Artifact, folder: Path, staging: Path):
        self.artifact, self.folder, self.staging = artifact, folder, staging
        self.appended: dict[str, tuple[int, bytes, int]] = {}
        self.kept: list[str] = []
        if staging.exists():
            shutil.rmtree(staging)
        for name in artifact.files:
            path = folder / name
            if not path.exists():
                continue
            if artifact.appended and name == artifact.path:
                tail = torn_tail(path)  # a torn last line, which the Appender will cut
                self.appended[name] = (path.stat().st_size - len(tail), tail, path.stat().st_ino)
                continue
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, staging / name)  # a copy, not a move: resumable stages continue from it
            else:
                try:
                    os.link(path, staging / name)
                except OSError:  # a filesystem without hard links
                    shutil.copy2(path, staging / name)
            self.kept.append(name)

    def reject_and_restore(self, rejected: Path) -> None:
        """Move the failed output to `rejected` and put the previous output back in its place. An appended
        file the stage started afresh (its previous one made under other settings, now in rejected/stale:
        pipelines/core/provenance.py) has no valid previous output to restore."""
        restarted = any((self.folder / name).exists() and (self.folder / name).stat().st_ino != inode
                        for name, (_, _, inode) in self.appended.items())
        if restarted:
            for name in self.artifact.files:
                if (self.folder / name).exists():
                    _move(self.folder / name, rejected / name)
            return
        for name in self.artifact.files:
            path = self.folder / name
            if not path.exists():
                continue
            if name in self.appended:
                length, tail, _ = self.appended[name]
                if path.stat().st_size < length:
                    raise RuntimeError(f"{path} was rewritten, not appended to: its previous content is lost")
                rejected.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, rejected / name)
                with open(path, "rb+") as handle:
                    handle.truncate(length)
                    handle.seek(length)
                    handle.write(tail)
            else:
                _move(path, rejected / name)
        for name in self.kept:
            _move(self.staging / name, self.folder / name)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def checked_run(artifact: Artifact, params: Params, folder: Path, stage: Callable[[], dict[str, Any]],
                inputs: list[tuple[Artifact, Path]], rejected: Path) -> StageResult:
    """Validate the inputs, run the stage, validate its output; on failure restore the previous output.

    `folder` is the partition's folder, `inputs` the (artifact, folder) pairs the stage reads, `rejected`
    where a failed output goes (outside every DVC output and dependency)."""
    with exclusive(rejected / ".locks" / f"{artifact.name}.lock", f"{folder / artifact.path}"):
        for upstream, where in inputs:
            check_input(upstream, params, where)
        previous = Previous(artifact, folder, rejected / ".previous" / artifact.name)
        try:
            summary = stage()  # a crash leaves its partial output in place: the stages resume from it
            try:
                reports = check(artifact, params, folder)
            except ArtifactInvalid:
                previous.reject_and_restore(rejected)
                raise
        finally:
            previous.discard()
    return StageResult(summary, reports)
