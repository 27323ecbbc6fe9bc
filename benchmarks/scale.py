"""A paper-sized bank: the score and pair stages on replicas of a real slice at 1K, 10K and 100K decisions.

    python benchmarks/scale.py                                   # 1K and 10K, controls off and on
    python benchmarks/scale.py --sizes 1000,10000,100000         # the 100K rows take minutes
    python benchmarks/scale.py --label before --code /tmp/old    # another checkout's pipelines/, same replicas

A replica multiplies the committed slice `experiments/results/powered/bank/ecqa` (290 real decisions of
the embedded SmolLM2, k = 5, input x gradient, no controls) with fresh ids: replica j of task `ecqa/<hash>`
is `ecqa/<hash>-r<j>`, everything else is the real record. With `controls`, every decision also gets the
two controls the embedded default attributes (one counterfactual and one mismatched explanation, k + 2
bank rows per decision): their vectors are copies of the decision's own explanation vectors (reversed),
their texts real explanations (the mismatched one of the previous task), and the records' settings say so
(generate.counterfactual, attribute.null_explanations 1). The maker streams, so it costs little memory.

Each stage runs as a new user runs it, through the CLI (`python -m pipelines score|pair`: the checked run
with its Great Expectations suites on what the stage reads and writes) in a fresh process; per stage the
wall time and the process's peak RSS (`wait4`'s ru_maxrss), against the size of attributions.jsonl. The
growth exponent is the least-squares slope of log(seconds) and log(peak RSS) on log(decisions). Figures
go to benchmarks/results/scale.json (one entry per label, so `before` and `after` sit side by side) and
its .md table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from results_files import write_results  # noqa: E402

SOURCE = REPO / "experiments" / "results" / "powered" / "bank" / "ecqa"
SOURCE_PARAMS = REPO / "experiments" / "powered.yaml"
DATASET, MODEL = "ecqa", "smollm2-135m-instruct"
STAGES = ("score", "pair")
MARK = "@@replica@@"  # stands for the replica suffix in the templates; in no real record


# the figures issue 22 reports for the code before it (same slice, k = 5, input x gradient, no controls, the
# CLI with its checks, this machine on a quieter day): kept beside ours, not rerun (87K needs 14.4 GB)
ISSUE_LABEL = "before (issue 22's table)"
ISSUE_BEFORE = {"code": None, "commit": None, "date": None, "rows": [
    {"decisions": n, "controls": False, "attributions_mb": mb, "generations_mb": None, "bank_rows": 5 * n,
     "bank_mb": None, "pairs": None,
     "score": {"seconds": s, "peak_rss_mb": gb * 1024, "ms_per_decision": round(1000 * s / n, 3),
               "rss_over_attributions": round(gb * 1024 / mb, 2)},
     "pair": {"seconds": ps, "peak_rss_mb": pgb * 1024, "ms_per_decision": round(1000 * ps / n, 3),
              "rss_over_attributions": round(pgb * 1024 / mb, 2)}}
    for n, mb, s, gb, ps, pgb in ((2900, 36, 13, 1.0, 6, 0.8), (29000, 361, 103, 5.2, 25, 2.7),
                                  (87000, 1106, 352, 14.4, 66, 6.0))]}


def _read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _templates(source: Path, controls: bool) -> tuple[list[str], list[str]]:
    """One JSON line per source record with every id of the slice marked for its replica suffix."""
    generations, attributions = _read(source / "generations.jsonl"), _read(source / "attributions.jsonl")
    ids = [g["id"] for g in generations]
    by_id = {g["id"]: g for g in generations}
    if controls:
        for index, generation in enumerate(generations):
            other = next(c["label"] for c in generation["task"]["choices"] if c["label"] != generation["answer_label"])
            generation["counterfactual"] = {"label": other, "decision": f"{other})",
                                            "explanation": generation["explanations"][-1],
                                            "explanation_ids": generation["explanation_ids"][-1],
                                            "seed": generation["seeds"][-1] + 1}
            generation["settings"] = {**generation["settings"], "counterfactual": True}
        for attribution in attributions:
            generation = by_id[attribution["generation_id"]]
            index = ids.index(generation["id"])
            neighbour = by_id[ids[index - 1 if index else 1]]  # written before it, so in every replica
            attribution["controls"] = [
                {"kind": "counterfactual", "source": generation["counterfactual"]["label"],
                 "text": generation["counterfactual"]["explanation"], "vector": attribution["explanations"][0][::-1]},
                {"kind": "mismatched", "source": f"{neighbour['id']}{MARK}/0", "text": neighbour["explanations"][0],
                 "vector": attribution["explanations"][1][::-1]}]
            attribution["settings"] = {**attribution["settings"], "null_explanations": 1}

    def marked(record: dict) -> str:
        line = json.dumps(record, ensure_ascii=False)
        for old in ids:  # every occurrence of a task id (id, generation_id, task.id, record ids)
            line = line.replace(f'"{old}"', f'"{old}{MARK}"').replace(f'"{old}/', f'"{old}{MARK}/')
        return line + "\n"

    return [marked(g) for g in generations], [marked(a) for a in attributions]


def make_replica(folder: Path, decisions: int, controls: bool, source: Path = SOURCE) -> dict:
    """generations.jsonl and attributions.jsonl of `decisions` decisions in `folder`, streamed."""
    generations, attributions = _templates(source, controls)
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("generations.jsonl", generations), ("attributions.jsonl", attributions)):
        with open(folder / name, "w", encoding="utf-8") as handle:
            for n in range(decisions):
                replica, index = divmod(n, len(lines))
                handle.write(lines[index].replace(MARK, f"-r{replica}"))
    return {"decisions": decisions, "attributions_bytes": (folder / "attributions.jsonl").stat().st_size,
            "generations_bytes": (folder / "generations.jsonl").stat().st_size}


def write_params(path: Path, data_dir: Path, controls: bool) -> Path:
    """The powered experiment's params on the replica's data_dir: the records' settings match them."""
    params = yaml.safe_load(SOURCE_PARAMS.read_text())
    params["data_dir"] = str(data_dir)
    params["model"]["name"] = MODEL
    params["tasks"]["datasets"] = [DATASET]
    params["generate"]["counterfactual"] = controls
    params["attribute"]["null_explanations"] = 1 if controls else 0
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(stage: str, params: Path, code: Path, log: Path) -> dict:
    """One stage through the CLI in a fresh process: wall seconds and the process's peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "pipelines", stage, "--params", str(params)], cwd=code,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{stage} exited {process.returncode}: {log.read_text()[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def measure(decisions: int, controls: bool, workdir: Path, code: Path) -> dict:
    folder = workdir / f"{decisions}-{'controls' if controls else 'plain'}"
    if folder.exists():
        shutil.rmtree(folder)
    data = folder / "data"
    slice_folder = data / MODEL / "bank" / DATASET
    sizes = make_replica(slice_folder, decisions, controls)
    params = write_params(folder / "params.yaml", data, controls)
    row = {"decisions": decisions, "controls": controls, "attributions_mb": round(sizes["attributions_bytes"] / 2**20, 1),
           "generations_mb": round(sizes["generations_bytes"] / 2**20, 1)}
    for stage in STAGES:
        figures = run_stage(stage, params, code, folder / f"{stage}.log")
        row[stage] = {**figures, "ms_per_decision": round(1000 * figures["seconds"] / decisions, 3),
                      "rss_over_attributions": round(figures["peak_rss_mb"] / row["attributions_mb"], 2)}
    summary = json.loads((slice_folder / "score_summary.json").read_text())
    pairs = json.loads((data / MODEL / "pairs_summary.json").read_text())
    row["bank_rows"], row["bank_mb"] = summary["rows"], round((slice_folder / "bank.parquet").stat().st_size / 2**20, 1)
    row["pairs"] = pairs["train"]["pairs"] + pairs["eval"]["pairs"]
    print(json.dumps(row), flush=True)
    shutil.rmtree(folder)  # a 100K replica is gigabytes
    return row


def _slope(points: list[tuple[float, float]]) -> float:
    x, y = [math.log(a) for a, _ in points], [math.log(b) for _, b in points]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def growth(rows: list[dict]) -> dict:
    """Per controls setting, stage and figure (seconds, peak RSS): the least-squares slope of its log on
    log(decisions) over every size, and between the two largest sizes (where fixed costs weigh least)."""
    out = {}
    for controls in sorted({r["controls"] for r in rows}):
        same = sorted((r for r in rows if r["controls"] == controls), key=lambda r: r["decisions"])
        if len(same) < 2:
            continue
        for stage in STAGES:
            for key in ("seconds", "peak_rss_mb"):
                points = [(r["decisions"], r[stage][key]) for r in same]
                name = f"{'controls' if controls else 'plain'}/{stage}/{key}"
                out[name] = {"all_sizes": round(_slope(points), 3), "largest_two": round(_slope(points[-2:]), 3),
                             "sizes": [p[0] for p in points]}
    return out


def _runs(results: dict) -> list[tuple[str, dict]]:
    """The entries in reading order: the issue's figures, before, after, then any other label."""
    rank = {ISSUE_LABEL: 0, "before": 1, "after": 2}
    return sorted(results["runs"].items(), key=lambda item: rank.get(item[0], 3))


def comparison(results: dict) -> list[dict]:
    """After against before, per size and controls setting measured by both (the same replicas, the same day):
    score's speed-up per decision and each stage's peak RSS before over after."""
    runs = results["runs"]
    if "before" not in runs or "after" not in runs:
        return []
    before = {(r["decisions"], r["controls"]): r for r in runs["before"]["rows"]}
    out = []
    for r in sorted(runs["after"]["rows"], key=lambda r: (r["controls"], r["decisions"])):
        old = before.get((r["decisions"], r["controls"]))
        if old:
            out.append({"decisions": r["decisions"], "controls": r["controls"],
                        "score_speedup": round(old["score"]["seconds"] / r["score"]["seconds"], 2),
                        "pair_speedup": round(old["pair"]["seconds"] / r["pair"]["seconds"], 2),
                        "score_rss_before_over_after": round(old["score"]["peak_rss_mb"] / r["score"]["peak_rss_mb"], 2),
                        "pair_rss_before_over_after": round(old["pair"]["peak_rss_mb"] / r["pair"]["peak_rss_mb"], 2)})
    return out


def markdown(results: dict) -> str:
    lines = [f"score and pair through the CLI (their Great Expectations suites included) on replicas of "
             f"{results['source']}; {results['machine']['cpus']} CPUs, {results['machine']['python']}", "",
             *([results["notes"], ""] if results.get("notes") else []),
             "| code | decisions | controls | attributions.jsonl | bank rows | score s | score ms/decision | "
             "score peak RSS | RSS / input | pair s | pair peak RSS | RSS / input |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, entry in _runs(results):
        for r in sorted(entry["rows"], key=lambda r: (r["controls"], r["decisions"])):
            lines.append(
                f"| {label} | {r['decisions']:,} | {'on' if r['controls'] else 'off'} | "
                f"{r['attributions_mb']:,} MB | "
                f"{r['bank_rows']:,} | {r['score']['seconds']} | {r['score']['ms_per_decision']} | "
                f"{r['score']['peak_rss_mb'] / 1024:.2f} GB | {r['score']['rss_over_attributions']}x | "
                f"{r['pair']['seconds']} | {r['pair']['peak_rss_mb'] / 1024:.2f} GB | "
                f"{r['pair']['rss_over_attributions']}x |")
    lines += ["", "growth exponent: the slope of log(figure) on log(decisions), over every size and between the two "
              "largest (1 = linear)", "", "| code | controls | stage | figure | sizes | all sizes | two largest |",
              "|---|---|---|---|---|---|---|"]
    for label, entry in _runs(results):
        for key, value in entry["growth"].items():
            controls, stage, figure = key.split("/")
            lines.append(f"| {label} | {'on' if controls == 'controls' else 'off'} | {stage} | {figure} | "
                         f"{', '.join(f'{n:,}' for n in value['sizes'])} | {value['all_sizes']} | {value['largest_two']} |")
    if results.get("comparison"):
        lines += ["", "| decisions | controls | score speed-up | pair speed-up | score peak RSS before / after | "
                  "pair peak RSS before / after |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['decisions']:,} | {'on' if c['controls'] else 'off'} | {c['score_speedup']}x | "
                  f"{c['pair_speedup']}x | {c['score_rss_before_over_after']}x | {c['pair_rss_before_over_after']}x |"
                  for c in results["comparison"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="decisions per replica, comma-separated")
    parser.add_argument("--controls", choices=("off", "on", "both"), default="both")
    parser.add_argument("--code", default=str(REPO), help="the checkout whose pipelines/ runs the stages")
    parser.add_argument("--label", default="after", help="the entry these figures go under (e.g. before)")
    parser.add_argument("--commit", help="the commit --code holds, when it is not a git checkout")
    parser.add_argument("--workdir", default="/tmp/pscb-scale")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    args = parser.parse_args()
    code, workdir, out = Path(args.code).resolve(), Path(args.workdir), Path(args.out)
    controls = {"off": [False], "on": [True], "both": [False, True]}[args.controls]
    rows = [measure(int(size), c, workdir, code) for c in controls for size in args.sizes.split(",")]
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or args.commit
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update(source=str(SOURCE.relative_to(REPO)), machine={
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()})
    results.setdefault("runs", {})
    results["runs"].setdefault(ISSUE_LABEL, {**ISSUE_BEFORE, "growth": growth(ISSUE_BEFORE["rows"])})
    previous = results["runs"].get(args.label, {}).get("rows", [])
    kept = [r for r in previous if (r["decisions"], r["controls"]) not in {(x["decisions"], x["controls"]) for x in rows}]
    merged = sorted(kept + rows, key=lambda r: (r["controls"], r["decisions"]))
    results["runs"][args.label] = {"code": str(code), "commit": commit, "date": time.strftime("%Y-%m-%d"),
                                   "rows": merged, "growth": growth(merged)}
    results["comparison"] = comparison(results)
    write_results(results, markdown(results), "scale", "cpu", str(out))


if __name__ == "__main__":
    main()
