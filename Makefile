# Each target sets itself up: the first run creates .venv and installs rsnjax with its test extras.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test test-fast bench install docs docs-serve clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## the main job: train an RSN on the double peak, sample 10 000 reservoir chains, write metrics and a figure
demo: $(VENV)/.installed
	$(VENV)/bin/rsnjax demo --out results/demo --overwrite

## the whole test suite, slow statistical checks included
test: $(VENV)/.installed
	$(PY) -m pytest -q

## the suite without the slow statistical checks
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $@

## the documentation site into site/ (a broken link, anchor or API reference fails the build)
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

## the site at http://127.0.0.1:8000, rebuilt on every change
docs-serve: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV) results .pytest_cache site
