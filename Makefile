# One-command entry points. Each target creates the virtual environment on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.engineforge-installed

.PHONY: demo test lint unit integration benchmark venv clean

venv: $(STAMP)

# torch==2.13.0 is pinned: pip takes the local CPU build instead of GBs of CUDA wheels.
# The tensorrt extra is TensorRT-RTX: it parses and builds engines without a GPU (running them needs one).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,tensorrt]"
	touch $@

## demo: fine-tune the demo model (cached), build-engine, serve with Triton, load-test, print the report
demo: venv
	$(BIN)/engineforge demo

## test: lint, then the whole test suite (unit + integration against a real Triton server)
test: venv lint
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

unit: venv
	$(BIN)/python -m pytest tests/unit

integration: venv
	$(BIN)/python -m pytest tests/integration

clean:
	rm -rf $(VENV) .setuptools-build *.egg-info artifacts reports
