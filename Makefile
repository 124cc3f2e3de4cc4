# telltale — entry points. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help demo test test-fast fuzz check lint typecheck contracts bench shim clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py $(wildcard proto/telltale/v1/*.proto) $(wildcard shim/*.c shim/*.h shim/shim.map shim/Makefile) $(wildcard native/*.c)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: $(STAMP) ## set up and run the local demo (etcd, controller, agent, a workload raising alerts)
	$(BIN)/telltale demo

test: $(STAMP) ## set up and run the whole test suite
	$(BIN)/pytest -q

test-fast: $(STAMP) ## run the tests that start no daemons
	$(BIN)/pytest -q -m "not e2e"

fuzz: $(STAMP) ## long fuzzing of records and policies: 100,000 cases per target (docs/hostile-input.md)
	TELLTALE_FUZZ=long $(BIN)/pytest -q tests/fuzz --timeout=0 --hypothesis-show-statistics

check: lint typecheck contracts ## ruff, mypy (strict) and the import contracts

lint: $(STAMP) ## ruff: lint rules and formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy --strict on the packages
	$(BIN)/mypy

contracts: $(STAMP) ## import-linter: controller and nodeagent independent, a pure engine
	$(BIN)/lint-imports

bench: $(STAMP) ## run the benchmarks under bench/ and print their results
	$(BIN)/python bench/run.py

NODES ?= 3
.PHONY: cluster-up cluster-down cluster-status
cluster-up: $(STAMP) ## (root) multi-node harness: NODES=3 node namespaces, 3 etcd, 2 controllers
	$(BIN)/python -m telltale.netcluster up --nodes $(NODES)

cluster-down: $(STAMP) ## (root) stop and remove everything cluster-up made
	$(BIN)/python -m telltale.netcluster down

cluster-status: $(STAMP) ## (root) the harness's processes, namespaces and nodes
	$(BIN)/python -m telltale.netcluster status

shim: $(STAMP) ## rebuild the shim into the installed package
	$(MAKE) -C shim OUT=$(CURDIR)/telltale/_native/libtelltale_shim.so

clean: ## remove the virtualenv and build products
	rm -rf $(VENV) build dist *.egg-info shim/build telltale/v1 telltale/_native/*.so
