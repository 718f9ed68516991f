# wxgate — the two commands of the README quick start are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell .ci/find-python)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit deps bench soak check docs clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "no Python >= 3.12 found" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

deps:
	@.ci/install-system-deps

## run: the sidecar (./proxy.yaml, embedded sqlite store) in front of the demo legacy backend
run: $(STAMP)
	@mkdir -p /tmp/wxgate-demo
	@$(BIN)/wxgate demo-backend --listen 127.0.0.1:9000 & backend=$$!; \
	  trap 'kill $$backend 2>/dev/null' EXIT INT TERM; \
	  $(BIN)/wxgate -c proxy.yaml run

check: $(STAMP)
	$(BIN)/wxgate -c proxy.yaml check

## docs: regenerate docs/configuration.md and docs/proxy.schema.json from the schema (tests fail when they are stale)
docs: $(STAMP)
	$(BIN)/python -m proxy.config.reference > docs/configuration.md
	$(BIN)/wxgate check --schema > docs/proxy.schema.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check proxy addons

typecheck: $(STAMP)
	$(BIN)/mypy

## test: lint, type-check and the whole suite (real redis-server, prometheus, wxgate and backend processes)
test: $(STAMP) deps lint typecheck
	$(BIN)/pytest -q

## bench: the benchmark, ~10 minutes; the tables go to stdout, the charts to docs/ (docs/benchmarks.md)
bench: $(STAMP) deps
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	$(BIN)/python bench/run.py --charts docs

## soak: the reliability suite, then chaos, fuzzing and rejections for SOAK_SECONDS (default 300); writes docs/reliability.md
soak: $(STAMP) deps
	$(BIN)/python -m tests.reliability.soak $(if $(SOAK_SECONDS),--seconds $(SOAK_SECONDS))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
