"""Shared by every stage: the params schema, record schema and storage, the artifact table with its
Great Expectations suites, the partitions and their folders, model loading, prompts, seeds and MLflow."""
