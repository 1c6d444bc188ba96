# Starling: `make run` starts a server on SQLite; `make test` runs lint, types and tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
SERVER_NAME ?= localhost

.PHONY: run test lint typecheck pytest install dev dev-js clean

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

$(DATA)/starling.yaml: | $(VENV)/.installed
	$(BIN)/starling generate-config --server-name $(SERVER_NAME) --data-dir $(DATA)

run: $(VENV)/.installed $(DATA)/starling.yaml
	$(BIN)/starling serve -c $(DATA)/starling.yaml

lint: dev
	$(BIN)/ruff check starling tests benchmarks
	$(BIN)/ruff format --check starling tests benchmarks

typecheck: dev
	$(BIN)/mypy

pytest: dev dev-js
	$(BIN)/pytest -q -n 2

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis $(JS_DIR)/node_modules
