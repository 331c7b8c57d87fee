# Self-Rewarding Language Models — developer and user entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/walkthrough
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build
	$(PY) -m pip install -q -c requirements.lock torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## create the virtual environment (pinned versions from requirements.lock)

test: venv ## run the test suite (creates the venv when absent)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

demo: venv ## run one self-rewarding iteration stage by stage on the tiny model (CPU, minutes)
	RUN_DIR=$(RUN_DIR) PY=$(PY) bash scripts/walkthrough.sh

lint: venv ## static checks (ruff)
	$(VENV)/bin/ruff check src tests

bench: venv ## measure generation, judging and training throughput; writes bench.json
	HF_HUB_OFFLINE=1 $(PY) -m srlm.bench --out bench.json

lock: venv ## refresh requirements.lock from the current venv
	$(PY) -m pip freeze --exclude-editable | grep -v '^srlm' > requirements.lock

clean: ## remove run outputs (keeps the venv)
	rm -rf runs bench.json .pytest_cache

.PHONY: help venv test lint demo bench lock clean
