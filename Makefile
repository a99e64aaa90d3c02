# Two commands matter: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint setup screenshots bench bench-quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements.txt requirements-agents.txt requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

# The official AsyncAPI parser that tests/test_asyncapi.py runs on docs/asyncapi.yaml,
# exactly as locked (no install scripts: one dependency has a telemetry hook).
ASYNCAPI_TOOLS := tools/asyncapi
$(ASYNCAPI_TOOLS)/node_modules/.package-lock.json: $(ASYNCAPI_TOOLS)/package.json $(ASYNCAPI_TOOLS)/package-lock.json
	cd $(ASYNCAPI_TOOLS) && npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error
	touch $@

# The official AG-UI client (@ag-ui/client's HttpAgent) that tests/agents/agui/ drive the AG-UI
# endpoint with; locked and installed the same way.
AGUI_TOOLS := tools/ag-ui
$(AGUI_TOOLS)/node_modules/.package-lock.json: $(AGUI_TOOLS)/package.json $(AGUI_TOOLS)/package-lock.json
	cd $(AGUI_TOOLS) && npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --loglevel=error
	touch $@

setup: $(VENV)/.installed $(ASYNCAPI_TOOLS)/node_modules/.package-lock.json $(AGUI_TOOLS)/node_modules/.package-lock.json

run: setup
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo_setup --url http://$(HOST):$(PORT)/
	$(BIN)/python -m config.server -b $(HOST) -p $(PORT)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy config notifications agents console tests
	$(BIN)/hadolint Dockerfile

# Regenerate docs/screenshots/ from real runs in Debian's chromium.
screenshots: setup
	SCREENSHOTS_DIR=docs/screenshots $(BIN)/python -m pytest tests/console/test_screenshots.py -q

# The end-to-end benchmark, ours beside the raw limit (bench/RESULTS.md); needs
# redis-server and the local PostgreSQL. bench-quick is the small run CI makes:
# it fails on any lost, duplicated or out-of-order event, never on speed.
bench: setup
	$(BIN)/python bench/run.py --json bench/results.json

bench-quick: setup
	timeout 600 $(BIN)/python bench/run.py --quick --check --json $(or $(BENCH_JSON),/tmp/bench-quick.json)
