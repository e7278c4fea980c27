# The two commands of the README: `make demo` (the main job on the embedded default) and
# `make test` (the whole suite). Each creates .venv with the pinned stack on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= outputs/demo

.PHONY: demo test bench clean-venv browser full-size-cpu gpu-check-dry wheels-gpu

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,tracking]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/db3d sweep sweep=demo out=$(DEMO_OUT)

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

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

# Full-size architectures (random weights) through the real loaders and every stage of `db3d run`, on the
# CPU at reduced steps: per-stage wall time and peak RSS. Slow (SD-1.5: ~30 min on 2 cores); not in `make test`.
FULL_SIZE_WORK ?= outputs/full_size_cpu
full-size-cpu: $(VENV)/.installed
	$(BIN)/python benchmarks/full_size_cpu.py --work $(FULL_SIZE_WORK)

# The one-shot GPU check's CPU-safe parts at tiny widths (seconds; the suite runs it too).
gpu-check-dry: $(VENV)/.installed
	$(BIN)/python benchmarks/gpu_check.py --dry

# Wheels that benchmarks/gpu_check.sh installs on a bare GPU machine (Python 3.12, no network, its own
# torch / transformers / peft): the pure-Python ones, plus scikit-image and imageio-ffmpeg (manylinux,
# cp312) for the export stage. Prints the total size (about 52 MB: under the 64 MiB a check may carry).
GPU_WHEELS ?= build/wheels-gpu
GPU_PYTHON_VERSION ?= 3.12
wheels-gpu: $(VENV)/.installed
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(BIN)/python -m pip wheel -q --no-deps -w $(GPU_WHEELS) diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 \
		antlr4-python3-runtime==4.9.3 imageio importlib_metadata zipp
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d $(GPU_WHEELS) \
		scikit-image imageio-ffmpeg lazy_loader tifffile networkx
	@ls -1 $(GPU_WHEELS)
	@du -ch $(GPU_WHEELS)/*.whl | tail -1

clean-venv:
	rm -rf $(VENV)
