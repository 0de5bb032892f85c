# Two commands for a newcomer: `make demo` (install + run a demo study) and `make test`.
# `make check` is the fast loop while editing: unit tests (no servers), ruff and mypy.
PYTHON ?= python3
# Where torch comes from. PyPI's torch for Linux is the CUDA build (several GB); for a CPU-only
# machine use the CPU wheels: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# CI leaves it empty: its machines' package index carries the CPU build of torch 2.13.0.
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test check lint install install-dev

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

install: $(BIN)/activate
	$(BIN)/pip install -q -e '.[worker]'

install-dev: $(BIN)/activate
	$(BIN)/pip install -q -e '.[dev]'

demo: install
	$(BIN)/hpo demo

test: install-dev
	$(BIN)/python -m pytest -q

check: install-dev lint
	$(BIN)/python -m pytest -q tests/unit

lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy
