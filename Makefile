PYTHON ?= python3

.PHONY: install test lint format

install:
	$(PYTHON) -m pip install -e .

# Installs the test dependencies and runs the whole suite (what CI runs).
test:
	$(PYTHON) -m pip install -q -e ".[test]"
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check delib tests
	$(PYTHON) -m ruff format --check delib tests

format:
	$(PYTHON) -m ruff format delib tests
	$(PYTHON) -m ruff check --fix delib tests
