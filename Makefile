# Two quickstart targets: `make demo` (light venv, run the main job on the shipped dataset) and `make test`.
# `make demo` needs the base dependencies only (numpy, pyarrow, polars, datasets, onnxruntime) in its own venv;
# `make test` installs everything (CPU torch, the generation, surrogate and search extras, dev tools, the Node example).
VENV ?= .venv
DEMO_VENV ?= .venv-demo
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
DEMO_PIP := $(DEMO_VENV)/bin/python -m pip --disable-pip-version-check -q

.PHONY: setup setup-demo demo test lint
setup: $(VENV)/.installed
setup-demo: $(DEMO_VENV)/.installed

# torch is pinned to the CPU wheel (an open range would pull several GB of CUDA packages).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[generation,surrogates,search,dev]"
	@# syne-tune's wheel alone: its metadata pulls xgboost and NVIDIA NCCL (~480 MB) that its MO-REA never imports
	$(PIP) install --no-deps syne-tune==0.16.0
	@# onnxruntime-node for the Node.js example's tests (skipped when npm is absent); CPU binaries only
	-command -v npm >/dev/null && cd surrogates_onnx/examples/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci --silent --no-audit --no-fund
	touch $@

# The light install: the package and its base dependencies, nothing else (no torch, no matplotlib: the demo prints
# its tables and says that it skipped the plots; `$(DEMO_PIP) install -e ".[plots]"` adds them).
$(DEMO_VENV)/.installed: pyproject.toml
	python3 -m venv $(DEMO_VENV)
	$(DEMO_PIP) install -e .
	touch $@

demo: setup-demo
	$(DEMO_VENV)/bin/hwgpt-bench demo --out figures

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
