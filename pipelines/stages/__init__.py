"""The nine stages, in flow order. Each is `run(params, folder)` in its own module; models.py loads the
model the generate, attribute and train stages run (the embedded SmolLM2, a hub id, a folder, the known-answer
model).

Per slice (dataset x model), the bank:
    tasks -> generate -> attribute -> score
Per model, over all of its slices:
    pair -> train -> evaluate -> report -> promote

Each reads the previous stage's files in its partition's folder (pipelines/core/partitions.py) and
writes its own: pipelines/core/artifacts.py declares them, what each stage reads and their suites, and
pipelines/runner/ runs the stages and validates what they read and write.
"""
