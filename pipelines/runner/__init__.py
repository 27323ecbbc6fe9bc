"""The floor that runs the stages, above them: the stage dispatch over partitions (dispatch.py), the checked
run every entry point shares (checked.py: inputs validated, the stage run, its output validated or set
aside) and the Great Expectations suites it validates with (quality.py). The CLI, `dvc repro` and the
Dagster assets call dispatch.py."""
