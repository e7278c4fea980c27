# The two commands of the README: `make demo` (the main job on the embedded default) and
# `make test` (the whole suite). Each creates .venv with the pinned stack on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= outputs/demo

.PHONY: demo test bench clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/db3d sweep sweep=demo out=$(DEMO_OUT)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_dreambooth.py
	$(BIN)/python benchmarks/bench_nerf.py

clean-venv:
	rm -rf $(VENV)
