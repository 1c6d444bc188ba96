# Starling: `make run` starts a server on SQLite; `make test` runs lint, types and tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
SERVER_NAME ?= localhost

.PHONY: run test lint typecheck pytest install dev dev-js synapse clean fuzz fuzz-atheris \
	sytest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

# matrix-js-sdk for tests/interop/test_js_sdk.py (needs Node.js and npm), exactly as locked.
JS_DIR := tests/interop/js
# Without npm the JS test is skipped (and fails under CI=true, which must run it).
$(JS_DIR)/node_modules/.installed: $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd $(JS_DIR) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else \
		echo "npm not found: the matrix-js-sdk interop test will be skipped"; \
	fi

dev-js: $(JS_DIR)/node_modules/.installed

# matrix-synapse (pinned in benchmarks/synapse_venv.sh) in its own venv,
# benchmarks/.venv-synapse, for the benchmarks and tests/federation/test_synapse_interop.py.
# Built once, reinstalled only when the pin or pyproject.toml changes.
synapse:
	bash -c 'source benchmarks/synapse_venv.sh'

$(DATA)/starling.yaml: | $(VENV)/.installed
	$(BIN)/starling generate-config --server-name $(SERVER_NAME) --data-dir $(DATA)

run: $(VENV)/.installed $(DATA)/starling.yaml
	$(BIN)/starling serve -c $(DATA)/starling.yaml

lint: dev
	$(BIN)/ruff check starling starling_client tests benchmarks fuzz
	$(BIN)/ruff format --check starling starling_client tests benchmarks fuzz

typecheck: dev
	$(BIN)/mypy

pytest: dev dev-js synapse
	$(BIN)/pytest -q -n 2

test: lint typecheck pytest

# The fuzz properties (tests/fuzz) run ~100 examples each inside `make test`; this runs
# FUZZ_EXAMPLES each (the failures hypothesis finds are kept in .hypothesis/ and replayed).
FUZZ_EXAMPLES ?= 20000
fuzz: dev
	STARLING_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -p no:xdist tests/fuzz

# Coverage-guided fuzzing of one parser with atheris (see fuzz/atheris_targets.py).
TARGET ?= pdu
SECONDS ?= 600
fuzz-atheris: dev
	$(BIN)/python -m pip install --quiet atheris==3.0.0
	$(BIN)/python fuzz/atheris_targets.py $(TARGET) -max_total_time=$(SECONDS)

# SyTest (matrix-org/sytest) against this tree's Starling (tests/sytest/, docs/sytest.md).
# Its runner and sources are in the peer-suites folder next to the repository; the results
# land in $(SYTEST_WORK)/results/latest/. SYTEST_TESTS restricts the run to some test files
# (tests/30rooms/01state.pl ...), SYTEST_DB=postgres runs both servers on PostgreSQL.
PEER_SUITES ?= ../shared/peer-suites
SYTEST_WORK ?= sytest-run
SYTEST_ROOM_VERSION ?= 10
SYTEST_TESTS ?=
SYTEST_DB ?= sqlite
SYTEST_EXPECTED ?= tests/sytest/expected-failures.txt
SYTEST_TIMEOUT ?= 5400
SYTEST_RUN = $(BIN)/python tests/sytest/run.py --peer-suites $(PEER_SUITES) \
	--work $(SYTEST_WORK) $(if $(filter postgres,$(SYTEST_DB)),--postgres) \
	--timeout $(SYTEST_TIMEOUT) \
	--expected-failures $(SYTEST_EXPECTED)

sytest: install
	$(SYTEST_RUN) -- --room-version $(SYTEST_ROOM_VERSION) $(SYTEST_TESTS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(JS_DIR)/node_modules
