"""PSCB's ML core (never imports Dagster). `python -m pipelines <stage>` runs one stage (__main__.py).

Floors, each importing only the ones below it (tests/test_layering.py):

    __main__.py   the CLI (`pscb`)
    runner/       the stage dispatch, the checked run, the Great Expectations suites
    stages/       the nine stages in flow order: tasks, generate, attribute, score, pair, train,
                  evaluate, report, promote; model loading
    attribution/  the attribution engine: methods behind one signature, scorer, token layout
    analysis/     metrics, controls, statistics, policy movement
    synthetic/    the known-answer world and its model
    core/         params schema, artifact table, method catalog, shared vocabulary, records and storage,
                  partitions, provenance, shards, prompts, seeds, MLflow
"""
