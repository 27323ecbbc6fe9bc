"""What made an output, so that a resumed stage never mixes records made under two settings.

A resumable stage (generate, attribute, and train's checkpoints) appends to what an earlier run left. Its
output is only a valid resume point if that earlier run had the same *fingerprint*: the params that
determine the records' content and order (the stage's own section without its batch sizes, memory budget
and progress settings, the seed, the model's identity) and the digests of the files the stage read. The
fingerprint is written into the stage's summary before the first record is appended, so a killed run
leaves the fingerprint of the records it wrote.

A rerun under a different fingerprint starts that output afresh: the old files move to
`<data_dir>/<model>/rejected/stale/...` (outside every DVC output, as a failed output's do) and the
summary names the changed keys. We start afresh rather than refuse because `make run` and `dvc repro` after
a params edit must both succeed and give the bytes a clean run gives; nothing is deleted, so a user who
edited by mistake moves the old file back.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipelines.core.catalog import METHODS
from pipelines.core.config import AttributeParams, GenerateParams, Params, TrainParams
from pipelines.core.records import read_records, sha256, torn_tail

log = logging.getLogger(__name__)

# Params that change how fast records are made, never what they hold (batching is exact: each sequence has
# its own generator, each perturbation its own row) and so never force a recompute.
NOT_RECORD_DETERMINING: dict[str, tuple[str, ...]] = {
    "generate": ("batch_size", "tasks_per_chunk"),
    "attribute": ("batch_size", "memory_budget_mb", "methods"),  # per method: method_settings
    # the global batch is what the optimizer sees; DDP over `processes` gives the single process's losses
    "train": ("save_steps", "processes", "gradient_checkpointing", "algorithms", "precompute_ref_log_probs"),
}


def section_settings(name: str, section: GenerateParams | AttributeParams | TrainParams) -> dict[str, Any]:
    """A stage section's record-determining values (JSON types)."""
    values = json.loads(section.model_dump_json())
    return {k: v for k, v in values.items() if k not in NOT_RECORD_DETERMINING[name]}


def record_settings(name: str, section: GenerateParams | AttributeParams | TrainParams, seed: int) -> dict[str, Any]:
    """What every record of the stage `name` holds in its `settings` for this run's section and seed."""
    return {**section_settings(name, section), "seed": seed}


def method_settings(section: AttributeParams, seed: int, method: str) -> dict[str, Any]:
    """The settings an attribution record of `method` depends on: a sampling method's n_samples and masks,
    LIME's alpha, LIG's steps, a perturbation method's target; the rest apply to every method."""
    entry = METHODS[method]
    unused = set()
    if not entry.samples:
        unused |= {"n_samples", "masks"}
    if method != "lime":
        unused.add("lime_alpha")
    if method != "lig":
        unused.add("ig_steps")
    if entry.family != "perturbation":
        unused.add("target")  # gradient methods always take the sequence objective
    return {k: v for k, v in record_settings("attribute", section, seed).items() if k not in unused}


def mismatched_settings(rows: Iterable[dict[str, Any]], expected: Callable[[dict[str, Any]], dict[str, Any]]
                        ) -> Iterable[tuple[str, list[str]]]:
    """(record id, keys whose recorded value differs from `expected(row)`) for each record that differs."""
    for row in rows:
        recorded = row.get("settings") or {}
        keys = [k for k, v in expected(row).items() if recorded.get(k, _MISSING) != v]
        if keys:
            yield row.get("id"), keys


_MISSING = object()


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths at which two fingerprints differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new), key=str)
                for key in changed_keys(old.get(name, _MISSING), new.get(name, _MISSING), f"{prefix}{name}.")]
    return [] if old == new else [prefix.rstrip(".") or "fingerprint"]


def fingerprint(settings: dict[str, Any], inputs: dict[str, Path]) -> dict[str, Any]:
    """The fingerprint of an output: its record-determining settings and its inputs' digests."""
    return {"params": settings, "inputs": {name: sha256(path) for name, path in sorted(inputs.items())}}


def stale_place(params: Params, folder: Path) -> Path:
    """Where a stale output of `folder` goes: the model's rejected/ folder, mirroring the folder's place."""
    model = Path(params.data_dir) / params.model.name
    try:
        return model / "rejected" / "stale" / folder.relative_to(model)
    except ValueError:  # a folder outside the data root (a caller's own): its stale output stays beside it
        return folder / "rejected" / "stale"


def recorded_fingerprint(summary: Path) -> dict[str, Any] | None:
    if not summary.exists():
        return None
    try:
        return json.loads(summary.read_text()).get("fingerprint")
    except (json.JSONDecodeError, AttributeError):
        return None


def set_aside(paths: Iterable[Path], place: Path) -> None:
    place.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.exists():
            target = place / path.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            shutil.move(str(path), str(target))


def made_otherwise(out: Path, summary: Path, current: dict[str, Any],
                   legacy_changes: Callable[[list[dict[str, Any]]], list[str]]) -> list[str]:
    """The keys in which `out` was made under other settings than `current`: empty when it was made under the
    same fingerprint or holds no complete record. An output from before fingerprints (records, no fingerprint
    in its summary) counts as the same when `legacy_changes(records)` finds nothing: its records' own
    settings match this run's."""
    if not out.exists() or out.stat().st_size == len(torn_tail(out)):
        return []  # no complete record: nothing to keep or to set aside
    recorded = recorded_fingerprint(summary)
    return [key.removeprefix("params.") for key in changed_keys(recorded, current)] if recorded is not None \
        else legacy_changes(list(read_records(out)))  # only outputs from before fingerprints are read whole


def resume_or_restart(out: Path, summary: Path, current: dict[str, Any], place: Path,
                      legacy_changes: Callable[[list[dict[str, Any]]], list[str]]) -> list[str]:
    """Leave `out` as a valid resume point for `current`: keep it when it was made under the same fingerprint
    (`made_otherwise`), else move it and its summary to `place`. Returns the changed keys (empty when kept or
    absent)."""
    changed = made_otherwise(out, summary, current, legacy_changes)
    if changed:
        set_aside([out, summary], place)
        log.warning("%s was made with other settings (%s): starting it afresh; the old one is in %s",
                    out, ", ".join(changed), place)
    return changed


def claim(summary: Path, current: dict[str, Any]) -> None:
    """Record the fingerprint before the first record is appended: a killed run leaves it with its records."""
    from pipelines.core.records import write_json

    previous = json.loads(summary.read_text()) if summary.exists() else {}
    if previous.get("fingerprint") != current:
        write_json(summary, {**previous, "fingerprint": current})
