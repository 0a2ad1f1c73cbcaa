# The two commands a newcomer needs: `make run` and `make test`.
# Each one sets up its own virtualenv in .venv on first use (and again when
# pyproject.toml changes), so a fresh clone needs nothing but python3.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
ARGS   ?=

.PHONY: run test lint typecheck unit clean system-deps bench bench-instructions

# Debian packages the tests run for real, as command:package pairs: a Redis
# server, nginx, openssl (test certificates) and systemd-analyze (checks the
# unit file), chromium (the playground's browser test). Installed when missing;
# the tests fail rather than skip under CI.
SYSTEM_PACKAGES := redis-server:redis-server nginx:nginx openssl:openssl systemd-analyze:systemd chromium:chromium

# Runtime dependencies only.
$(VENV)/.run-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# Runtime plus the official SDKs, pytest and the linters.
$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

# Runtime plus what the benchmark suite needs (matplotlib for its charts, py-spy).
$(VENV)/.bench-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.run-installed

# With no provider key configured (environment or .env), Sluice fronts its
# built-in mock provider so the demo streams tokens without any account.
run: $(VENV)/.run-installed
	$(BIN)/sluice serve --host $(HOST) --port $(PORT) --mock-if-unconfigured $(ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check proxy tests examples bench
	$(BIN)/ruff format --check proxy tests examples bench

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

unit: $(VENV)/.test-installed system-deps
	$(BIN)/pytest -q

test: lint typecheck unit

# The benchmark suite (direct vs nginx vs Sluice, pinned to cores; see
# bench/run.py). Results land in bench/results/. About 5 minutes on 2 cores
# (bounded below 10 on a busy machine); `make bench BENCH_ARGS=--quick`, about 2.
BENCH_ARGS ?=
bench: $(VENV)/.bench-installed system-deps
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Instructions per request under callgrind: an A/B that machine noise cannot
# move (bench/instructions.py). Compare trees: BENCH_ARGS="/path/to/worktree ."
bench-instructions: $(VENV)/.bench-installed system-deps
	@command -v valgrind >/dev/null 2>&1 || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends valgrind; }
	$(BIN)/python -m bench.instructions $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
