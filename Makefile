# deepscope developer commands. `make demo` and `make test` work on a fresh machine with Python 3.11
# and the package registries; a second run reuses .venv (stamps record what was installed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
OUT ?= runs/demo
# The dev pins (torch, torchvision) lie on the project machines' local disk.
CONSTRAINTS := -c constraints-dev.txt
# Browser tests drive Debian's chromium through Python playwright (never `playwright install`: it downloads a browser).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-slow test-gpu test-oldest lint bench clean help

help:
	@echo "make demo   - create .venv, install deepscope, run the flagship demo, print the report path"
	@echo "make test   - create .venv with the test extras and run the whole test suite"
	@echo "make test-oldest - the suite against the oldest supported torch (2.3.1) in .venv-oldest (downloads ~2.5 GB)"
	@echo "make lint   - ruff check + format check"
	@echo "make bench  - run the benchmarks in bench/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-stamp: constraints-dev.txt | $(BIN)/python
	$(PIP) install -q $(CONSTRAINTS) torch torchvision
	touch $@

$(VENV)/.base-stamp: pyproject.toml $(VENV)/.torch-stamp
	$(PIP) install -q $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.demo-stamp: pyproject.toml $(VENV)/.base-stamp
	$(PIP) install -q $(CONSTRAINTS) -e '.[vision,hf]'
	touch $@

$(VENV)/.test-stamp: pyproject.toml $(VENV)/.base-stamp
	$(PIP) install -q $(CONSTRAINTS) -e '.[test]'
	touch $@

demo: $(VENV)/.demo-stamp
	$(BIN)/deepscope demo --out $(OUT)

$(CHROMIUM):
	$(SUDO) apt-get update && $(SUDO) apt-get install -y chromium

test: $(VENV)/.test-stamp $(CHROMIUM)
	$(BIN)/python -m pytest -m "not slow and not cuda" $(PYTEST_ARGS)

test-slow: $(VENV)/.test-stamp
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-gpu: $(VENV)/.test-stamp
	$(BIN)/python -m pytest -m cuda $(PYTEST_ARGS)

# The same suite against the oldest supported torch (2.3), in its own venv; downloads about 2.5 GB once.
# OLDEST_PYTHON=python3.10 also takes the oldest supported Python.
OLDEST := .venv-oldest
OLDEST_PYTHON ?= $(PYTHON)

$(OLDEST)/.test-stamp: pyproject.toml constraints-oldest.txt
	$(OLDEST_PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q -c constraints-oldest.txt -e '.[test]'
	touch $@

test-oldest: $(OLDEST)/.test-stamp $(CHROMIUM)
	$(OLDEST)/bin/python -m pytest -m "not slow and not cuda" $(PYTEST_ARGS)

lint: $(VENV)/.test-stamp
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(VENV)/.test-stamp
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(OLDEST) runs build src/*.egg-info .pytest_cache .ruff_cache
