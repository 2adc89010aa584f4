# Quick start: `make demo` (a local Synapse, a bot, messages disappearing) and `make test`.
# While working: `make test-unit` (no homeserver, the fast loop) and `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
# tests/interop: matrix-js-sdk (Element's SDK) and the Node.js 22 it needs, from npm.
INTEROP := tests/interop
INTEROP_STAMP := $(INTEROP)/node_modules/.installed

.PHONY: demo test test-unit lint bench bench-postgres install interop clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# pip and setuptools talk even with --quiet (e.g. setuptools' note on every editable
# install): their output goes to a log, shown only when the install fails.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "installing Lethe and its test tools into $(VENV), once (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install --quiet -e '.[test,demo]' > $(VENV)/install.log 2>&1 \
		|| { cat $(VENV)/install.log >&2; exit 1; }
	@touch $(STAMP)

install: $(STAMP)

$(INTEROP_STAMP): $(INTEROP)/package.json $(INTEROP)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed for $(INTEROP) (Debian: apt-get install npm)" >&2; exit 1; }
	npm ci --prefix $(INTEROP) --no-audit --no-fund --loglevel=error
	touch $(INTEROP_STAMP)

interop: $(INTEROP_STAMP)

demo: $(STAMP)
	$(BIN)/lethe demo

test: $(STAMP) $(INTEROP_STAMP)
	$(BIN)/python -m pytest -q

# The tests that start no homeserver (tests/conftest.py marks the others `synapse`).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not synapse"

# Benchmarks are not tests: each prints a table and writes bench/results/NAME.json.
bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python -m bench.$$(basename $$b .py) || exit 1; done

# Benchmarks 1 to 3 against Synapse on PostgreSQL (a throwaway server from the machine's
# binaries, as the tests start it); they write bench/results/NAME-postgres.json.
bench-postgres: $(STAMP)
	for b in throughput lag after_read; do \
		$(BIN)/python -m bench.bench_$$b --synapse-db postgres || exit 1; done

# mypy reads its settings (strict, bot and bridge) from pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info $(INTEROP)/node_modules
