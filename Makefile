# `make demo` and `make test` each create or refresh .venv from a fresh clone, then run.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format bench clean browser

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/study demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint browser
	$(PY) -m pytest

# The browser tests (tests/test_browser.py) drive a headless Chromium; they skip without
# one. Where none is on PATH and apt-get is usable (as root, or with passwordless sudo),
# Debian's `chromium` is installed; anywhere else this says so in one line. The names are
# the ones the tests look for.
CHROMIUM_NAMES := chromium chromium-browser google-chrome google-chrome-stable
browser:
	@for name in $(CHROMIUM_NAMES); do command -v $$name >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else sudo=none; fi; \
	if [ "$$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "no chromium on PATH and no usable apt-get: the browser tests will skip"; exit 0; fi; \
	echo "installing chromium with apt-get for the browser tests"; \
	export DEBIAN_FRONTEND=noninteractive; \
	{ $$sudo apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $$sudo apt-get update -qq >/dev/null 2>&1 && \
	    $$sudo apt-get install -y -qq chromium >/dev/null 2>&1; }; } || \
	echo "apt-get could not install chromium: the browser tests will skip"

bench: setup
	$(PY) -m tests.bench.run

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
