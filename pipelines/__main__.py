"""pscb, the project's command line (also `python -m pipelines`):

    pscb <stage> [--dataset D] [--model M] [--params FILE] [--set key=value ...]
    pscb all ...                  every stage in turn, in flow order
    pscb run [--params FILE]      the main job through Dagster, on the project's instance (what `make run` does)
    pscb ui [--port 3000]         the Dagster UI on 127.0.0.1 (what `make ui` does)

Stages run in flow order, each reading the previous stage's output in its partition's folder under `data_dir`:
tasks -> generate -> attribute -> score (per dataset x model: the bank) -> pair -> train -> evaluate ->
report -> promote (per model). Without --dataset / --model a stage runs every partition. DVC's stages and
Dagster's assets call the same functions. `run` and `ui` use DAGSTER_HOME when it is set, else ./.dagster:
run them from the repository root.

Exit status: 0 done; 2 a user error, printed as one line `error: ...` on stderr (bad params or --set, a
malformed dataset row, an artifact that failed its Great Expectations suite, a missing input or model, an
unknown or busy partition); 1 anything else: a bug, shown with its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from pipelines.runner.dispatch import STAGES

# one line per stage for `--help`; a stage missing here still runs, under a generic line
STAGE_HELP = {
    "tasks": "datasets -> tasks.jsonl: one canonical record per question, seeded 70/20/10 train/eval/test split",
    "generate": "tasks -> generations.jsonl: the model's decision and k post-hoc explanations (and a "
                "counterfactual one)",
    "attribute": "generations -> attributions.jsonl: attribution vectors of the decision and of each explanation "
                 "over the question's tokens (Captum)",
    "score": "attributions -> bank.parquet: agreement of decision and explanation vectors (Spearman, cosine, ...), "
             "null floor and diagnosticity",
    "pair": "bank -> pairs/{train,eval}.jsonl: per decision the most (chosen) and least (rejected) aligned "
            "explanation",
    "train": "pairs -> models/{dpo,sft}/adapter: DPO and SFT LoRA fine-tunes, tracked in MLflow",
    "evaluate": "adapters -> evaluation/: base, DPO and SFT regenerate, attribute and score held-out tasks "
                "(in-domain and shifted)",
    "report": "evaluation -> report/report.html, metrics.json: intervals and paired tests, the decision as the unit",
    "promote": "report -> promotion.json: the promotion gate; registers the candidate as MLflow's champion if it "
               "passes",
}


class UsageError(Exception):
    """A command that cannot run as given (not a bug): reported as one `error:` line, exit status 2."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's to fix, not bugs. Imported when needed: the CLI's import stays light."""
    from pipelines.core.config import ParamsError
    from pipelines.core.partitions import PartitionError
    from pipelines.runner.checked import ArtifactInvalid, PartitionBusy
    from pipelines.stages.tasks import BadRowError

    return (UsageError, ParamsError, BadRowError, ArtifactInvalid, FileNotFoundError, PartitionError, PartitionBusy)


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects key=value, got {pair!r}")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise UsageError(f"--set {key}: the value is not valid YAML: {value!r} ({err.problem or err})") from None
    return overrides


def run_stages(args: argparse.Namespace) -> int:
    from pipelines.core.artifacts import ARTIFACTS
    from pipelines.core.config import load_params
    from pipelines.core.partitions import model_dir, slice_dir
    from pipelines.runner.dispatch import run_stage

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params(args.params, parse_overrides(args.set))
    for stage in STAGES if args.stage == "all" else (args.stage,):
        started = time.perf_counter()
        results = run_stage(stage, params, args.dataset, args.model)
        for key, result in results.items():
            short = {k: v for k, v in result.summary.items() if not isinstance(v, (dict, list))}
            checked = sum(report.evaluated for _, report in result.reports)
            print(f"[{stage} {key}] {json.dumps(short, default=str)} checks: {checked} expectations passed",
                  flush=True)
        print(f"[{stage}] {len(results)} partition(s) in {time.perf_counter() - started:.1f}s", flush=True)
    if args.stage in ("all", "score"):
        print(f"bank: {slice_dir(params, '<dataset>', params.model.name) / ARTIFACTS['bank'].path}")
    if args.stage in ("all", "report", "promote"):
        model, report = model_dir(params, params.model.name), ARTIFACTS["report"]
        print(f"report: {model / report.path}/report.html  metrics: {model / report.summary}  "
              f"runs: mlflow ui --backend-store-uri {params.mlflow.tracking_uri}")
    return 0


def print_params(args: argparse.Namespace) -> int:
    from pipelines.core.config import load_params

    params = load_params(args.params, parse_overrides(args.set))
    print(yaml.safe_dump(json.loads(params.model_dump_json()), sort_keys=False), end="")
    return 0


def dagster_environment(params: str | None) -> dict[str, str]:
    """The environment `make run` / `make ui` give Dagster: the project instance (./.dagster unless DAGSTER_HOME
    is set), telemetry off, and the params file (PSCB_PARAMS) when one is given."""
    env = dict(os.environ)
    if not env.get("DAGSTER_HOME"):
        home = Path.cwd() / ".dagster"
        if not (home / "dagster.yaml").is_file():
            raise UsageError(f"no Dagster instance at {home} (.dagster/dagster.yaml): run this from the repository "
                             "root, or set DAGSTER_HOME")
        env["DAGSTER_HOME"] = str(home)
    env.setdefault("DO_NOT_TRACK", "1")
    if params is not None:
        env["PSCB_PARAMS"] = params
    return env


def run_main_job(args: argparse.Namespace) -> int:
    os.environ.update(dagster_environment(args.params))
    from orchestration.run import main as materialize  # dagster: imported only for this command

    return materialize(["--params", os.environ.get("PSCB_PARAMS", "params.yaml")])


def run_ui(args: argparse.Namespace) -> int:
    env = dagster_environment(args.params)
    beside = Path(sys.executable).parent / "dagster"  # the venv's, as `make ui` runs it
    dagster = str(beside) if beside.is_file() else shutil.which("dagster")
    if not dagster:
        raise UsageError("the `dagster` command is not installed in this environment (make install)")
    command = [dagster, "dev", "-h", "127.0.0.1", "-p", str(args.port)]
    print(f"Dagster UI: http://127.0.0.1:{args.port} (DAGSTER_HOME={env['DAGSTER_HOME']})", flush=True)
    os.execve(dagster, command, env)  # replaces this process: Ctrl-C goes to dagster dev itself
    return 0  # not reached


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def stage_command(name: str, help_text: str) -> None:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--dataset", help="one dataset partition (default: every one in tasks.datasets)")
        sub.add_argument("--model", help="one model partition, by name (default: every model)")
        sub.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override one value, e.g. --set attribute.n_samples=64 (repeatable)")
        sub.set_defaults(handler=run_stages, stage=name)

    for stage in STAGES:
        stage_command(stage, STAGE_HELP.get(stage, f"the {stage} stage"))
    stage_command("all", "every stage above in turn, in flow order (the whole flow without Dagster)")

    resolved = commands.add_parser(
        "params", help="every value a params file resolves to, defaults included, as YAML (what DVC needs in "
        "params.yaml)", description="Prints the validated params, every key with its value or default, as YAML. "
        "DVC reads the keys dvc.yaml lists from params.yaml and needs each written there: `python -m pipelines "
        "params --params experiments/known_answer.yaml --set data_dir=data > params.yaml` makes a file for `dvc "
        "repro` (dvc.yaml's paths are under data/).")
    resolved.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    resolved.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one value")
    resolved.set_defaults(handler=print_params)

    run = commands.add_parser(
        "run", help="the main job (make run): every asset of every partition through Dagster, on the project's "
        "instance", description="Every asset of every partition through Dagster (python -m orchestration.run), "
        "in the instance DAGSTER_HOME names (default: ./.dagster, the one `pscb ui` shows), telemetry off. Run it "
        "from the repository root. Exit status 1 when a run failed.")
    run.add_argument("--params", default=None, help="params file (default: $PSCB_PARAMS or params.yaml)")
    run.set_defaults(handler=run_main_job)

    ui = commands.add_parser(
        "ui", help="the Dagster UI (make ui): dagster dev on http://127.0.0.1:3000 with the project's instance",
        description="`dagster dev` (webserver and daemon) on 127.0.0.1 only, with the instance DAGSTER_HOME names "
        "(default: ./.dagster), telemetry off. Run it from the repository root (pyproject.toml names the code "
        "location).")
    ui.add_argument("--port", type=int, default=3000, help="port on 127.0.0.1 (default: 3000)")
    ui.add_argument("--params", default=None, help="params file the code location loads (default: $PSCB_PARAMS "
                    "or params.yaml)")
    ui.set_defaults(handler=run_ui)
    return parser


def one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    prog = "pscb" if Path(sys.argv[0]).name == "pscb" else "python -m pipelines"
    args = build_parser(prog).parse_args(argv)
    try:
        return args.handler(args)
    except Exception as err:
        if not isinstance(err, user_errors()):
            raise  # a bug: its traceback, exit status 1
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
