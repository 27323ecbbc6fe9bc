"""One slice's attribute stage spread over N processes, and the merge of their outputs.

    python experiments/attribute_shard.py run --params P --dataset D --shard i/N --data-dir DIR [--set k=v ...]
    python experiments/attribute_shard.py merge --into FILE --order GENERATIONS SHARD_FILE...

On one GPU, a 135M model in float32 leaves the card idle between one process's batches, so the measurement
study (experiments/gpu/measure.sh) runs several processes per slice. Shard i of N is the attribute stage's
own (pipelines/core/shards.py): every N-th record from the i-th, those the slice's attributions.jsonl does
not hold yet, written to <slice>/shards/attributions-<i>-of-<N>.jsonl. Each shard's data_dir holds the whole
slice's generations (the mismatched controls draw from every task of the slice); it may be the same folder
for all shards or one per shard. Records depend only on (seed, record id, method, role), never on which
process made them, so the merge (deduplicated by id, in the order of generations.jsonl and of the methods)
is the file one process would have written. Inside the pipeline, `bank.shards` does the same through
Dagster (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.__main__ import parse_overrides  # noqa: E402
from pipelines.core.config import load_params  # noqa: E402
from pipelines.core.partitions import for_slice, model_names, slice_dir  # noqa: E402
from pipelines.core.records import read_records, write_records  # noqa: E402


def run_shard(args) -> None:
    from pipelines.stages import attribute

    overrides = {**parse_overrides(args.set), "data_dir": args.data_dir}
    params = load_params(args.params, overrides)
    shard = tuple(int(x) for x in args.shard.split("/"))
    model = model_names(params)[0]
    summary = attribute.run(for_slice(params, args.dataset, model), slice_dir(params, args.dataset, model),
                            shard=shard)
    print(json.dumps({k: v for k, v in summary.items() if k != "path"}))


def merge(args) -> None:
    order = [row["id"] for row in read_records(Path(args.order))]
    records = {}
    for file in args.shards:
        for row in read_records(Path(file)):
            records.setdefault(row["id"], row)
    methods = sorted({row["method"] for row in records.values()}, key=lambda m: min(
        i for i, row in enumerate(records.values()) if row["method"] == m))
    ids = [f"{g}/{m}" for g in order for m in methods if f"{g}/{m}" in records]
    count = write_records(Path(args.into), (records[i] for i in ids))
    print(f"{args.into}: {count} records of {len(order)} generations")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--params", default="experiments/measurement.yaml")
    one.add_argument("--dataset", required=True)
    one.add_argument("--shard", default="0/1", help="i/N")
    one.add_argument("--data-dir", required=True)
    one.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    joined = sub.add_parser("merge")
    joined.add_argument("--into", required=True)
    joined.add_argument("--order", required=True, help="the slice's generations.jsonl")
    joined.add_argument("shards", nargs="+")
    args = parser.parse_args()
    run_shard(args) if args.command == "run" else merge(args)


if __name__ == "__main__":
    main()
