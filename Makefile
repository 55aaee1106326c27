# The two commands README.md opens with. Both (re)build .venv when the lock or
# pyproject.toml changes; installs come from the hashed lock files in
# requirements/, so every machine tests the versions the lock names.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/dev.txt

# The MongoDB-wire-compatible test server (GPL-2.0): a test tool in its own
# virtualenv, never imported by or shipped with Hubbub.
TOOLS_VENV := .venv-secantus
TOOLS_STAMP := $(TOOLS_VENV)/.installed
TOOLS_LOCK := requirements/test-tools.txt

# `make lock` only: the resolver that writes the lock files, pinned itself.
UV_VERSION := 0.13.9
LOCK_VENV := .venv-lock
UV := $(LOCK_VENV)/bin/uv
UV_COMPILE := $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes $(if $(UPGRADE),--upgrade)

.PHONY: run test unit lint venv test-tools lock clean

# --no-deps and --require-hashes: exactly the locked tree, nothing resolved at
# install time; --no-build-isolation builds Hubbub with the locked setuptools.
$(STAMP): $(LOCK) pyproject.toml loadtest/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e ./loadtest
	$(BIN)/python -m pip check --disable-pip-version-check
	touch $(STAMP)

venv: $(STAMP)

$(TOOLS_STAMP): $(TOOLS_LOCK)
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(TOOLS_LOCK)
	touch $(TOOLS_STAMP)

test-tools: $(TOOLS_STAMP)

run: $(STAMP)
	$(BIN)/hubbub serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p build/mypy/hubbub && for d in protocol server storage loadtest; do \
		ln -sfn ../../../$$d build/mypy/hubbub/$$d; done
	$(BIN)/mypy

test: lint $(TOOLS_STAMP)
	$(BIN)/pytest -n 2 --dist loadgroup

# The unit tier alone (tests/unit: no sockets, no databases but the embedded
# one and the machine's Redis), in seconds; `make test` runs it too.
unit: $(STAMP)
	$(BIN)/pytest -q -m unit tests/unit

# Re-resolve the lock files from pyproject.toml's ranges, keeping every pin
# that still satisfies them; `make lock UPGRADE=1` moves every pin to the
# newest allowed release. app.txt is constrained by dev.txt so the image and
# the tests run the same versions.
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(UV_COMPILE) pyproject.toml requirements/build.in --extra dev -o requirements/dev.txt
	$(UV_COMPILE) pyproject.toml requirements/build.in -c requirements/dev.txt -o requirements/app.txt
	$(UV_COMPILE) --prerelease allow requirements/test-tools.in -o requirements/test-tools.txt

clean:
	rm -rf $(VENV) $(TOOLS_VENV) $(LOCK_VENV)
