# One task runner. `make demo` and `make test` are the two commands README.md promises.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_ARGS ?=
CHAOS_ARGS ?=

.PHONY: install demo run test test-unit lint bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## replay the fixtures through the whole path on the embedded default
	$(BIN)/ownersync demo

run: $(STAMP)  ## all roles in one process on the embedded default
	$(BIN)/ownersync run --tenant services/demo/fixtures/salesforce/tenant.json

test: $(STAMP)  ## the whole suite against the real Postgres and RabbitMQ
	./scripts/ensure-services.sh
	$(BIN)/python -m pytest

test-unit: $(STAMP)  ## the fast tier: pure tests, no services
	$(BIN)/python -m pytest tests/unit

bench: $(STAMP)  ## the benchmark against the real Postgres and RabbitMQ (prints figures, not a test)
	./scripts/ensure-services.sh
	$(BIN)/python -m bench $(BENCH_ARGS)

chaos: $(STAMP)  ## every role as a process under faults, then the owner checker (CHAOS_ARGS=--short: 3 min)
	./scripts/ensure-services.sh
	$(BIN)/python -m chaos $(CHAOS_ARGS)

lint: $(STAMP)  ## style, the layer contracts and the types (configured in pyproject.toml)
	$(BIN)/ruff check services tests bench chaos
	$(BIN)/ruff format --check services tests bench chaos
	$(BIN)/lint-imports
	$(BIN)/mypy

clean:
	rm -rf $(VENV) ownersync.db* .pytest_cache
