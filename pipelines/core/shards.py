"""A bank slice's generate or attribute stage split into shards, and the merge of the shards into its file.

Shard i of n owns a fixed share of the slice's records, whatever is already done: every n-th block of the
order one process writes, from the i-th (generate: chunks of `generate.tasks_per_chunk` tasks, so a shard
decodes the very batches one process decodes; attribute: (generation, method) records one by one). It
writes its own file with its own summary, fingerprint and lock,

    data/<model>/bank/<dataset>/shards/<artifact>-<i>-of-<n>.jsonl, <artifact>-<i>-of-<n>_summary.json

so a shard resumes and restarts exactly as the slice's own file does (pipelines/core/provenance.py), and
skips what the slice's file already holds under the same fingerprint. Records depend on their own identity
and seeds only (pipelines/core/seeds.py), never on which shard made them, so `merge`, which appends to the
slice's file each record it lacks in that order, writes the bytes one process writes (tests/test_shards.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pipelines.core.artifacts import Artifact
from pipelines.core.provenance import made_otherwise, recorded_fingerprint
from pipelines.core.records import existing_ids, repair_tail, torn_tail

T = TypeVar("T")
FOLDER = "shards"


def files(folder: Path, artifact: Artifact, shard: tuple[int, int]) -> tuple[Path, Path]:
    """The records file and the summary that shard (i, n) of `artifact` in the slice `folder` writes: the
    slice's own two (the artifact's path and summary) for n = 1."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count}: a shard is (i, n) with 0 <= i < n")
    if count == 1:
        return folder / artifact.path, folder / artifact.summary
    name = f"{artifact.name}-{index}-of-{count}"
    return folder / FOLDER / f"{name}.jsonl", folder / FOLDER / f"{name}_summary.json"


def members(items: list[T], shard: tuple[int, int], block: int = 1) -> list[T]:
    """Shard (i, n)'s items: every n-th block of `block` items, from the i-th block."""
    index, count = shard
    return [item for position, item in enumerate(items) if position // block % count == index]


def done_in_slice(out: Path, summary: Path, current: dict[str, Any],
                  legacy_changes: Callable[[list[dict[str, Any]]], list[str]]) -> set[str]:
    """The ids the slice's own file holds, when it was made under `current`: a shard does not make them again.
    A file made under other settings counts for nothing (the merge sets it aside)."""
    return set() if made_otherwise(out, summary, current, legacy_changes) else existing_ids(out)


def merge(out: Path, order: list[str], parts: list[tuple[Path, Path]], current: dict[str, Any]) -> int:
    """Append to `out`, in `order`, every record it lacks, copied byte for byte from the shards' files `parts`
    ((records, summary) pairs); return how many. Nothing is written unless every missing record is in a shard
    made under `current`. Only the shards' ids and line offsets are held, never their records."""
    done = existing_ids(out)
    wanted = [record_id for record_id in order if record_id not in done]
    if not wanted:
        return 0
    where: dict[str, tuple[Path, int]] = {}
    for path, summary in parts:
        if not path.exists() or path.stat().st_size == len(torn_tail(path)):
            continue  # no complete record
        if recorded_fingerprint(summary) != current:
            raise ValueError(f"{path} was made under other settings than {out} is being merged for: rerun its shard "
                             "(it starts afresh)")
        with open(path, "rb") as handle:
            offset = 0
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # the line being written when the shard's process died
                where.setdefault(json.loads(line)["id"], (path, offset))
                offset += len(line)
    missing = [record_id for record_id in wanted if record_id not in where]
    if missing:
        raise ValueError(f"{out}: {len(missing)} records are in no shard's file (the first: {missing[0]}); run "
                         f"every shard of the slice before merging")
    repair_tail(out)
    handles: dict[Path, Any] = {}
    try:
        with open(out, "ab") as sink:
            for record_id in wanted:
                path, offset = where[record_id]
                source = handles.setdefault(path, open(path, "rb"))
                source.seek(offset)
                sink.write(source.readline())
            sink.flush()
            os.fsync(sink.fileno())
    finally:
        for handle in handles.values():
            handle.close()
    return len(wanted)
