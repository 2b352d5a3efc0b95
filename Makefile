# Two commands do all set-up on a fresh machine (Python 3.11 on PATH):
#   make run    install into .venv, prepare model artifacts, serve the reference app on an embedded Ray
#   make test   install into .venv, check generated code and lint, run every test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
GRAPH ?= examples/triage.yaml
STAMP := $(VENV)/.installed

.PHONY: install run test lint protos unit integration e2e bench

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	. $(BIN)/activate && scripts/install_models.sh
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/modelweave run $(GRAPH)

protos: install
	$(BIN)/python scripts/gen_protos.py

lint: install
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/ruff check .
	$(BIN)/mypy modelweave deployments actors

unit: install
	$(BIN)/python -m pytest tests/unit -q

integration: install
	$(BIN)/python -m pytest tests/integration -q

e2e: install
	$(BIN)/python -m pytest tests/e2e -q

test: lint
	$(BIN)/python -m pytest tests -q -ra --durations=15

bench: install
	$(BIN)/python benchmarks/overhead.py
