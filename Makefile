# The two commands a newcomer needs: `make run` and `make test`.
# Each one sets up its own virtualenv in .venv on first use (and again when
# pyproject.toml changes), so a fresh clone needs nothing but python3.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
ARGS   ?=

.PHONY: run test lint typecheck unit clean system-deps build-deps native bench bench-instructions

# Debian packages the tests run for real, as command:package pairs: a Redis
# server, nginx, openssl (test certificates) and systemd-analyze (checks the
# unit file), chromium (the playground's browser test), node and npm (the
# JavaScript SDKs' tests, tests/js). Installed when missing;
# the tests fail rather than skip under CI.
SYSTEM_PACKAGES := redis-server:redis-server nginx:nginx openssl:openssl systemd-analyze:systemd chromium:chromium node:nodejs npm:npm
# promtool checks deploy/prometheus/alerts.yml (Debian ships it in prometheus).
SYSTEM_PACKAGES += promtool:prometheus

# apt-get install of the packages that follow it in a recipe's shell line, as
# root or through sudo.
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq \
	&& DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends

# Runtime dependencies only.
$(VENV)/.run-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	SLUICE_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[native]'
	touch $@

# Runtime plus the official SDKs, pytest and the linters.
$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	SLUICE_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[test,native]'
	touch $@ $(VENV)/.run-installed

# Runtime plus what the benchmark suite needs (matplotlib for its charts, py-spy).
$(VENV)/.bench-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	SLUICE_PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[bench,native]'
	touch $@ $(VENV)/.run-installed

# The request path compiled by mypyc (setup.py), built in place beside the
# sources (proxy/*.so, not committed) and rebuilt whenever a source changes.
# The editable installs above skip it (SLUICE_PURE_PYTHON=1) so that it is
# built once, here, with the venv's mypyc. A C compiler and Python's headers
# are installed when missing. About a minute and a half on two cores.
NATIVE := build/.native-built
PY_SOURCES := $(shell find proxy -name '*.py')
$(NATIVE): $(VENV)/.run-installed setup.py $(PY_SOURCES)
	@$(MAKE) --no-print-directory build-deps
	@mkdir -p build
	@echo "compiling the request path with mypyc (build/native.log)"
	@# Extensions of modules no longer listed in setup.py would shadow their .py.
	@find proxy -name '*.so' -delete
	@$(BIN)/python setup.py build_ext --inplace --build-temp build/inplace >build/native.log 2>&1 \
	  || { tail -30 build/native.log; exit 1; }
	@# setuptools copies an unchanged extension with its old time; proxy/http/native.py
	@# compares times to spot a stale build, so mark them all as built now.
	@find proxy -name '*.so' -exec touch {} +
	@touch $@

native: $(NATIVE)

build-deps:
	@missing=""; command -v cc >/dev/null 2>&1 || missing="gcc"; \
	$(PYTHON) -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(APT_INSTALL) $$missing; \
	fi

# With no provider key configured (environment or .env), Sluice fronts its
# built-in mock provider so the demo streams tokens without any account.
run: $(VENV)/.run-installed $(NATIVE)
	$(BIN)/sluice serve --host $(HOST) --port $(PORT) --mock-if-unconfigured $(ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check proxy tests examples bench setup.py
	$(BIN)/ruff format --check proxy tests examples bench setup.py

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(APT_INSTALL) $$missing; \
	fi

# The whole suite runs the compiled modules, as production does; the tests of
# those modules that run in-process, and failover (where compiled coroutines
# once crashed), run once more interpreted (SLUICE_PURE_PYTHON=1), the build
# without a compiler: about a minute.
PURE_TESTS := tests/test_headers.py tests/test_routing.py tests/test_usage.py tests/test_sse.py \
	tests/test_keys.py tests/test_forwarded.py tests/test_http_native.py tests/test_http_h1server.py \
	tests/test_http_h1client.py tests/test_http_client.py tests/test_http_wire.py tests/test_pump.py \
	tests/test_accesslog_line.py tests/test_limits.py \
	tests/test_limits_window.py tests/test_gatekeeping.py tests/test_http_eventloop.py tests/test_failover.py \
	tests/test_jsonread.py tests/test_metrics.py tests/test_auth.py tests/test_jsonedit.py \
	tests/test_envelope.py tests/test_spend_tracker.py tests/test_spend_prices.py
# The official JavaScript SDKs at the versions tests/js/package-lock.json pins.
JS_DEPS := tests/js/node_modules/.installed
$(JS_DEPS): tests/js/package-lock.json | system-deps
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

unit: $(VENV)/.test-installed system-deps $(NATIVE) $(JS_DEPS)
	$(BIN)/pytest -q
	SLUICE_PURE_PYTHON=1 $(BIN)/pytest -q $(PURE_TESTS)

test: lint typecheck unit

# The benchmark suite (direct vs nginx vs Sluice, pinned to cores; see
# bench/run.py). Results land in bench/results/. About 7.5 minutes on 2 cores
# (bounded below 10 on a busy machine); `make bench BENCH_ARGS=--quick`, about 3.
# BENCH_ARGS="--baseline-tree DIR" adds sluice@baseline, the Sluice checkout DIR
# (built in place: `make native` there) run like sluice, for an A/B in the same
# run: about 1.5 minutes more, 8.5 in all on a quiet machine.
BENCH_ARGS ?=
bench: $(VENV)/.bench-installed system-deps $(NATIVE)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Instructions per request under callgrind: an A/B that machine noise cannot
# move (bench/instructions.py). Compare trees: BENCH_ARGS="/path/to/worktree ."
bench-instructions: $(VENV)/.bench-installed system-deps $(NATIVE)
	@command -v valgrind >/dev/null 2>&1 || { $(APT_INSTALL) valgrind; }
	$(BIN)/python -m bench.instructions $(BENCH_ARGS)

clean:
	find proxy -name "*.so" -delete
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
