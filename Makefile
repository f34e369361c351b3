# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Both create .venv and install the project (editable, with the dev extra) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test unit lint typecheck pytest fuzz bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python -m devstack

lint: install
	$(BIN)/ruff check .
	$(BIN)/cfn-lint template.yaml
	$(BIN)/hadolint Dockerfile projector/Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml compose.cluster.yaml

typecheck: install
	$(BIN)/mypy

# Every Redis-backed test runs on a single node and again on a real 3-master Redis Cluster it starts itself
# (TEST_REDIS_CLUSTER=0 skips the cluster half while iterating; CI always runs it).
TEST_REDIS_CLUSTER ?= 1
pytest: install
	TEST_REDIS_CLUSTER=$(TEST_REDIS_CLUSTER) $(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The fast tier: every test that needs no server (no Redis, no MongoDB); a test that asks for one fails.
unit: install
	LEDGER_TESTS_OFFLINE=1 $(BIN)/python -m pytest -q -m "not redis and not mongo and not real_mongo" $(PYTEST_ARGS)

# A deeper schemathesis run against a running gateway (start one with `make run` first).
fuzz: install
	$(BIN)/st run openapi.yaml --url $${API_URL:-http://127.0.0.1:8080} --checks all --max-examples 500

# Benchmarks (see bench/): needs redis-server and wrk (apt-get install wrk). Exit status 1 if a target is missed.
bench: install
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) .devstack .pytest_cache .mypy_cache .ruff_cache
