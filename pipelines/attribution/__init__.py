"""The attribution engine: the methods of the catalog (pipelines/core/catalog.py) behind one signature over a
forward (methods.py), a record's vectors (engine.py), the forward itself (scorer.py: teacher-forced
log-probability of a target under masked prompts) and the token layout that says which positions are
features (layout.py)."""
