# medfoundry: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint typecheck layers serve clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# reference packages the tests compare against that cannot be plain dependencies (see pyproject's extras)
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --quiet --no-build-isolation "sam2>=1.1" "hydra-core>=1.3" "iopath>=0.1.10"
	$(BIN)/python -m pip install --quiet --no-deps "medclip==0.0.3"
	touch $@

demo: setup
	$(BIN)/medfoundry demo --out demo-output --overwrite

test: setup lint typecheck layers
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

# mypy over io, registry and predict (files and settings in pyproject.toml's [tool.mypy])
typecheck: setup
	$(BIN)/python -m mypy

# the layer contract io → registry → models → predict → tasks → train/eval → cli/serve ([tool.importlinter])
layers: setup
	$(BIN)/lint-imports

serve: setup
	$(BIN)/medfoundry serve --demo demo-output

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
