"""PSCB's ML core (never imports Dagster). `python -m pipelines <stage>` runs one stage (__main__.py).

    stages/       the nine stages in flow order: tasks, generate, attribute, score, pair, train,
                  evaluate, report, promote
    attribution/  the attribution engine: method catalog and implementations, scorer, token layout
    analysis/     metrics, controls, statistics, policy movement
    core/         params schema, records and storage, artifacts and their checks, partitions,
                  models, prompts, seeds, MLflow
"""
