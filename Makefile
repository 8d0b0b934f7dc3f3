# Entry points. `make demo` and `make test` each set up .venv first (idempotent).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test test-gpu lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[all]'
	touch $@

demo: setup
	$(BIN)/gvr demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-gpu: setup
	$(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check gvr flows tests benchmarks
