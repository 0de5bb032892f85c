# Two commands for a newcomer: `make demo` (install + run a demo study) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install install-dev lint

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0

install: $(BIN)/activate
	$(BIN)/pip install -q -e '.[worker]'

install-dev: $(BIN)/activate
	$(BIN)/pip install -q -e '.[dev]'

demo: install
	$(BIN)/hpo demo

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
