# The two commands README.md opens with. Both (re)build .venv when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The MongoDB-wire-compatible test server (GPL-2.0): a test tool in its own
# virtualenv, never imported by or shipped with Hubbub.
TOOLS_VENV := .venv-secantus
TOOLS_STAMP := $(TOOLS_VENV)/.installed
SECANTUSDB := secantusdb==0.7.0b3

.PHONY: run test lint venv test-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

$(TOOLS_STAMP): Makefile
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install --quiet "$(SECANTUSDB)"
	touch $(TOOLS_STAMP)

test-tools: $(TOOLS_STAMP)

run: $(STAMP)
	$(BIN)/hubbub serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint $(TOOLS_STAMP)
	$(BIN)/pytest -n 2 --dist loadgroup
