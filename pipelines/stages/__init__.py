"""The nine stages, in flow order. Each is `run(params, folder)` in its own module.

Per slice (dataset x model), the bank:
    tasks -> generate -> attribute -> score
Per model, over all of its slices:
    pair -> train -> evaluate -> report -> promote

Each reads the previous stage's files in its partition's folder (pipelines/core/partitions.py) and
writes its own (pipelines/core/artifacts.py declares them and their suites).
"""
