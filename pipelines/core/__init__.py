"""The ground floor, imported by every other floor and importing none of them: the params schema (config.py),
the artifact table (artifacts.py), the method catalog (catalog.py) and the shared words (vocabulary.py),
records and storage, partitions and their folders, resume fingerprints (provenance.py), shards, prompts,
seeds and MLflow."""
