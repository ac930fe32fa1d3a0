# Two quickstart targets: `make demo` (set up, run the main job on the shipped dataset) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup demo test lint
setup: $(VENV)/.installed

# torch is pinned to the CPU wheel (an open range would pull several GB of CUDA packages).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[generation,surrogates,dev]"
	@# onnxruntime-node for the Node.js example's parity test (skipped when npm is absent); CPU binaries only
	-command -v npm >/dev/null && cd surrogates_onnx/examples/node && ONNXRUNTIME_NODE_INSTALL=skip npm ci --silent --no-audit --no-fund
	touch $@

demo: setup
	$(VENV)/bin/hwgpt-bench demo --out figures

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
