# `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test check lint clean

install: $(STAMP)

# torch is installed first, pinned to the CPU build that pip finds locally, so
# the project's range (which admits it) installs no second, CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0" || $(BIN)/python -m pip install --quiet "torch>=2.4,<2.15"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/ftray sweep search_spaces/trigger_tiny.yaml

lint: install
	$(BIN)/ruff check ftray tests bench docs
	$(BIN)/ruff format --check ftray tests bench docs

test: install lint
	$(BIN)/python -m pytest -q tests

# The fast loop: lint and every test that trains nothing and starts no Ray.
check: install lint
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs ray_results mlflow.db mlruns mlartifacts .pytest_cache
