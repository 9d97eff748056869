# Development tasks. `make test` is what CI runs (through .ci/run).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo broker containers test lint

# The venv is (re)installed only when pyproject.toml is newer than the last install.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/producer --backend local --count 1000 --kind echo --payload '{"n": 1}' --workers 2

broker:
	bash scripts/broker.sh start

containers:
	bash scripts/containers.sh setup

# The broker of the contract and integration suites is a container wherever a Docker engine can
# be had, else Debian's rabbitmq-server (scripts/test.sh says which, and stops what it started).
test: install
	PY=$(PY) bash scripts/test.sh

lint: install
	$(VENV)/bin/ruff check .
