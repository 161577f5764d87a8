# rustaid developer and CI entry points. The README and .ci/run call these targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR := $(CURDIR)/.demo
DEMO_ADDRESS := unix://$(DEMO_DIR)/rustaid.sock
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup system-deps node-deps demo demo-stop serve proto lint typecheck test test-all bench bench-quick dist deb clean

## setup: virtualenv with rustaid, its client and the dev tools (builds llama-cpp-python once, ~7 min on 2 cores; pip caches the wheel)
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(PY) -m pip install -e '.[dev]' -e clients/python
	touch $@

## system-deps: Node.js and npm for the Node client and buf; dbus-daemon, python3-dbusmock
## and umockdev (+ its GObject bindings) for the power tests (apt, when missing); the real
## upowerd unpacked into $(UPOWER_DIR) (installing the upower package would pull udev/systemd);
## gdbus, busctl, systemd-analyze, lintian, dpkg-dev and python3-venv for the D-Bus, unit
## and package tests
UPOWER_DIR := $(VENV)/opt/upower
system-deps:
	@command -v node >/dev/null && command -v npm >/dev/null \
	  && command -v dbus-daemon >/dev/null && command -v umockdev-wrapper >/dev/null \
	  && /usr/bin/python3 -c 'import dbusmock, gi; gi.require_version("UMockdev", "1.0")' 2>/dev/null \
	  && command -v gdbus >/dev/null && command -v busctl >/dev/null \
	  && command -v systemd-analyze >/dev/null && command -v lintian >/dev/null \
	  && command -v dpkg-shlibdeps >/dev/null && command -v setpriv >/dev/null \
	  && /usr/bin/python3 -c 'import ensurepip, dbus' 2>/dev/null || { \
	  echo "installing nodejs, npm, dbus, python3-dbusmock, umockdev, libglib2.0-bin, systemd, lintian, dpkg-dev and python3-venv with apt-get"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm \
	    dbus python3-dbusmock umockdev gir1.2-umockdev-1.0 python3-gi \
	    libglib2.0-bin systemd lintian dpkg-dev util-linux python3-venv python3-dbus; }
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
