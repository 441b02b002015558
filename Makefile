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

.PHONY: all venv system-deps node-deps demo test lint typecheck unit clean-venv

all: test

# The environment: created when missing, refreshed when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# llama-cpp-python compiles from source when pip has no wheel cached (about 10 minutes once);
	# GGML_NATIVE=OFF keeps the build portable across the CPUs a venv may be copied to.
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install -q -e '.[dev,train,llm]'
	# Sparkplug B payload library; --no-deps because it pins paho-mqtt<2 (see pyproject.toml).
	$(PIP) install -q --no-deps 'pysparkplug==0.6.1'
	touch $@

venv: $(VENV)/.installed

# System packages the tests and the demo use: Mosquitto (MQTT 5 broker), Chromium (console tests).
# Installed with apt when we are root and they are missing; otherwise a clear message.
system-deps:
	@bash scripts/system-deps.sh

# TimescaleDB for the store tests: PGlite (WASM PostgreSQL + TimescaleDB) served on the wire protocol.
TSDB := tests/store/timescale
$(TSDB)/node_modules/.installed: $(TSDB)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(TSDB) && npm ci --legacy-peer-deps --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "lineguard: npm not found; TimescaleDB tests will be skipped" >&2; fi

node-deps: $(TSDB)/node_modules/.installed

demo: venv system-deps
	$(VENV)/bin/lineguard demo $(DEMO_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

# A private --basetemp: pytest prunes old folders under the shared /tmp/pytest-of-$USER, which
# would delete a live test database when two suites run side by side.
unit: venv system-deps node-deps
	$(VENV)/bin/pytest -q $(PYTEST_MARK) --basetemp="$$(mktemp -d -t lineguard-pytest-XXXXXX)"

test: lint typecheck unit

clean-venv:
	rm -rf $(VENV)
