# `make demo` and `make test` each create or refresh .venv from a fresh clone, then run.
# .venv holds exactly what uv.lock pins (`make lock` refreshes it); `make check-latest`
# tries the newest releases in a venv of its own.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
# uv installs the lock; the first one comes from pip, at the version uv.lock pins.
UV_VERSION := $(shell awk '/^name = "uv"$$/ {getline; gsub(/[^0-9.]/, ""); print}' uv.lock)
# Never a Python of uv's own: the machine's $(PYTHON), or the venv made from it.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup demo test lint format bench clean browser lock check-latest check-oldest \
	reproductions readme-tables

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# --locked: a pyproject.toml changed without `make lock` stops here, with uv's reason.
# --compile-bytecode: uv writes no .pyc, and where Python may not write them either
# (PYTHONDONTWRITEBYTECODE, a read-only venv: this machine and CI) every command, test
# subprocess and Ray worker compiled its imports again: 5 of `study status`'s 11 s. 27 s once.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --quiet --locked --compile-bytecode --python $(PY) --extra dev --extra s3
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

# Two workers: CI and this project's machine have two cores, and a third of the suite's
# wall time is waiting (Ray and servers starting, subprocesses). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: lint browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

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

# Every published figure, from the code as it is: each reproduction preset at its own
# settings on MNIST (runs kept under runs/reproductions, so a rerun resumes), then the
# summaries and figures into docs/reproductions and the README's published blocks.
# `make readme-tables` redraws those blocks alone from the committed summaries.
MNIST_DIR ?= ../shared/data/mnist
reproductions: setup
	$(VENV)/bin/study reproduce --all --data-dir $(MNIST_DIR) --out runs/reproductions \
		--docs docs/reproductions --readme README.md

readme-tables: setup
	$(VENV)/bin/study reproduce --readme-only --docs docs/reproductions --readme README.md

# Every dependency at its newest release that pyproject's ranges allow (the lock ignored;
# torch too): run `make lock` after it, and commit uv.lock when `make test` passes.
lock: $(UV)
	$(UV) lock --upgrade

# The releases pyproject's ranges allow, lock ignored, in a venv of their own, and the
# sweep, resume and analysis tests there:
#   check-latest  the newest of everything, torch included (--no-config: [tool.uv]'s
#                 torch pins left out);
#   check-oldest  every direct dependency at its lower bound (torch at the lock's).
# CHECK_PINS adds requirements, e.g. `make check-latest CHECK_PINS=optuna==5.0.0`.
CHECK_VENV ?= .venv-check
CHECK_PINS ?=
CHECK_TESTS ?= tests/test_sweep.py tests/test_seed_sweep.py tests/test_reliability.py \
	tests/test_shared_storage.py tests/test_optuna_record.py tests/test_records.py \
	tests/test_analysis.py tests/test_seed_analysis.py tests/test_importance.py
check-latest: RESOLVE := --no-config --resolution highest
check-oldest: RESOLVE := --resolution lowest-direct
check-latest check-oldest: $(UV)
	rm -rf $(CHECK_VENV)
	$(UV) venv --quiet --python $(PYTHON) $(CHECK_VENV)
	$(UV) pip install --quiet $(RESOLVE) --python $(CHECK_VENV)/bin/python \
		-e '.[dev,s3]' $(CHECK_PINS)
	@echo "$@: $(CHECK_VENV) has"
	@$(UV) pip list --python $(CHECK_VENV)/bin/python | grep -E -i \
		'^(torch|torchvision|ray|optuna|optuna-dashboard|mlflow|numpy|pandas|pyarrow|scikit-learn|sqlalchemy|matplotlib) '
	$(CHECK_VENV)/bin/python -m pytest -p no:cacheprovider $(CHECK_TESTS)

clean:
	rm -rf $(VENV) $(CHECK_VENV) .pytest_cache .ruff_cache *.egg-info
