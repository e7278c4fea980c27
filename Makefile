# The two commands of the README: `make demo` (the main job on the embedded default) and
# `make test` (the whole suite). Each creates .venv with the pinned stack on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= outputs/demo

.PHONY: demo test bench clean-venv browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/db3d sweep sweep=demo out=$(DEMO_OUT)

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# Debian's headless Chromium + ChromeDriver for the user-study browser test (root, Debian/Ubuntu).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "could not install chromium + chromium-driver: the browser test will skip"; \
	fi

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_dreambooth.py
	$(BIN)/python benchmarks/bench_nerf.py
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_toyworld.py

clean-venv:
	rm -rf $(VENV)
