# rustaid developer and CI entry points. The README and .ci/run call these targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR := $(CURDIR)/.demo
DEMO_ADDRESS := unix://$(DEMO_DIR)/rustaid.sock
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup system-deps node-deps demo demo-stop serve proto lint typecheck test test-all bench clean

## setup: virtualenv with rustaid, its client and the dev tools (builds llama-cpp-python once, ~7 min on 2 cores; pip caches the wheel)
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(PY) -m pip install -e '.[dev]' -e clients/python
	touch $@

## system-deps: Node.js and npm for the Node client and buf (apt, when missing)
system-deps:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "installing nodejs and npm with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm; }

## node-deps: @grpc/grpc-js, @grpc/proto-loader and buf for clients/node and proto lint
node-deps: system-deps clients/node/node_modules/.installed
clients/node/node_modules/.installed: clients/node/package.json clients/node/package-lock.json
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## demo: the main job: start the daemon in the background with a model and stream an answer
demo: setup
	@$(PY) -m rustaid.testing.demo_model $(DEMO_DIR)
	@$(MAKE) --no-print-directory demo-stop >/dev/null 2>&1 || true
	@$(VENV)/bin/rustaid serve --user --data-dir $(DEMO_DIR) --listen $(DEMO_ADDRESS) \
	  > $(DEMO_DIR)/daemon.log 2>&1 & echo $$! > $(DEMO_DIR)/daemon.pid
	@for i in $$(seq 100); do [ -S $(DEMO_DIR)/rustaid.sock ] && break; sleep 0.1; done
	$(VENV)/bin/rustaictl --address $(DEMO_ADDRESS) health
	$(VENV)/bin/rustaictl --address $(DEMO_ADDRESS) models list
	$(VENV)/bin/rustaictl --address $(DEMO_ADDRESS) generate "Once upon a time" --max-tokens 64 --stats
	@echo "daemon running in the background (pid $$(cat $(DEMO_DIR)/daemon.pid), log $(DEMO_DIR)/daemon.log)"
	@echo "try: $(VENV)/bin/rustaictl --address $(DEMO_ADDRESS) chat    |    stop it: make demo-stop"

demo-stop:
	@[ -f $(DEMO_DIR)/daemon.pid ] && kill $$(cat $(DEMO_DIR)/daemon.pid) && rm -f $(DEMO_DIR)/daemon.pid && echo "daemon stopped"

## serve: run the daemon in the foreground on the demo data dir
serve: setup
	$(VENV)/bin/rustaid serve --user --data-dir $(DEMO_DIR) --listen $(DEMO_ADDRESS) --log-level debug

## proto: regenerate the committed Python stubs from proto/
proto: setup
	cd proto && ../$(PY) -m grpc_tools.protoc -I . --python_out=.. --pyi_out=.. --grpc_python_out=.. \
	  $$(find rustaid -name '*.proto' | sort)

lint: setup
	$(VENV)/bin/ruff check rustaid clients/python tests
	$(VENV)/bin/ruff format --check rustaid clients/python tests

typecheck: setup
	$(VENV)/bin/mypy

## test: everything the tests need, then lint, types and the test suite (slow tests excluded)
test: setup node-deps lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

## test-all: including tests marked slow
test-all: PYTEST_ARGS =
test-all: test

## bench: speed and memory benchmarks (not timed tests; print ratios)
bench: setup
	$(PY) tests/bench/generate.py
	$(PY) tests/bench/idle.py

clean:
	rm -rf $(VENV) clients/node/node_modules .demo .mypy_cache .ruff_cache .pytest_cache
