# Each target sets itself up: the first run creates .venv and installs rsnjax with its test extras.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test test-fast bench install clean

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

bench: $(VENV)/.installed
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV) results .pytest_cache
