"""The words every floor shares: the datasets, the alignment metrics, the splits and the kinds of bank row.

Declared here once, on the ground floor, so that the params schema, the stages, the analysis and the
Great Expectations suites name the same things without importing one another.
"""

from __future__ import annotations

# the datasets a task source can map (pipelines/stages/tasks.py); `synthetic` is the known-answer world
DATASETS = ("ecqa", "arc_easy", "arc_challenge", "codah", "commonsense_qa", "synthetic")
# the agreement of an explanation's attribution vector with its decision's (pipelines/analysis/metrics.py)
METRICS = ("spearman", "cosine", "l1_dot", "kendall", "top_k_overlap")

# a task's split: the seeded 70/20/10 shuffle of its source split (tasks.split_fractions)
TRAIN, EVAL, TEST = "train", "eval", "test"
SPLITS = (TRAIN, EVAL, TEST)
PAIR_SPLITS = (TRAIN, EVAL)  # the splits preference pairs are made of: test tasks are held out for evaluate

# a bank row's kind: the model's own explanation, an explanation of another task teacher-forced after this
# decision (the null floor), or the model's explanation of a forced other option (diagnosticity)
OWN, MISMATCHED, COUNTERFACTUAL = "own", "mismatched", "counterfactual"
KINDS = (OWN, MISMATCHED, COUNTERFACTUAL)
