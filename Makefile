# One-command set-up for this repository (see README.md).
#   make demo   create .venv, build and install frod_rt, run the main demo
#   make test   create .venv, build and install frod_rt, run the test suite
#   make dev    fast in-tree rebuild of frod_rt._C for development (PYTHONPATH=python)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.deps: requirements/dev.txt | $(BIN)/python
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements/dev.txt
	touch $@

setup: $(VENV)/.deps
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps .

demo: setup
	GOMP_SPINCOUNT=20000 $(BIN)/python examples/demo.py

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning, so test processes
# (and the server subprocesses some tests start) do not starve each other on small machines.
test: setup
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

dev: $(VENV)/.deps
	PYTHON=$(BIN)/python tools/dev_build.sh

clean:
	rm -rf build $(VENV) python/frod_rt/_C*.so
