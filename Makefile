# Two commands do all set-up on a fresh machine:
#   make train   create .venv, install the package, fetch Fashion-MNIST, run the main job
#   make test    create .venv, install the package with its dev extra, run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: train test test-all gpu-check data browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist where apt is available and we are root; otherwise the data
# layer searches --data-dir, $$ALEXNET_DATA, ./data and tries torchvision's downloader.
data:
	@if [ ! -f $(FMNIST)/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

# The tests also want Debian's chromium: the HTML report is checked in a headless browser
# (tests/test_report.py). Installed the same way; where it cannot be, those tests are skipped
# and say why.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "could not install chromium; the browser tests will be skipped"; \
	fi

train: $(STAMP) data
	$(BIN)/alexnet train --preset quick --out runs/quick

test: $(STAMP) data browser
	$(BIN)/python -m pytest -q

test-all: $(STAMP) data browser
	$(BIN)/python -m pytest -q -m ''

# On a machine with a GPU: every device path for real, then a throughput table (benchmarks/gpu_check.py).
# GPU_PYTHON=python3 runs it with a Python whose torch already has CUDA, without .venv.
GPU_PYTHON ?= $(BIN)/python
gpu-check: $(if $(filter $(BIN)/python,$(GPU_PYTHON)),$(STAMP))
	PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
