# One task runner. `make demo` and `make test` are the two commands README.md promises.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_ARGS ?=
CHAOS_ARGS ?=
# The fast tiers wait on loopback HTTP more than they compute: more workers than cores pays.
FAST_WORKERS ?= 4

.PHONY: install demo run test test-fast test-integration test-unit lint bench clean chaos

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

test: test-fast test-integration  ## the whole suite: the fast tiers, then the real services

test-fast: $(STAMP)  ## unit and service tiers: SQLite, in-process broker, simulators; no Postgres or RabbitMQ
	./scripts/ensure-tools.sh
	$(BIN)/python -m pytest tests/unit tests/service -m "not integration" -n $(FAST_WORKERS)

test-integration: $(STAMP)  ## the tier that needs the real Postgres and RabbitMQ (and chromium)
	./scripts/ensure-services.sh
	./scripts/ensure-browser.sh
	$(BIN)/python -m pytest tests/integration -m integration

test-unit: $(STAMP)  ## the pure tier alone: no I/O
	./scripts/ensure-tools.sh
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
