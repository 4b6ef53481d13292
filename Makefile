# Everything a fresh machine needs: `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# tests/test_observe.py draws `pooly top` in a real terminal: tmux (skipped without it)
	@command -v tmux >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		command -v apt-get >/dev/null 2>&1 \
		&& ($$SUDO apt-get install -y tmux || ($$SUDO apt-get update && $$SUDO apt-get install -y tmux)) \
		|| echo "warning: could not install tmux; the 'pooly top' terminal test will be skipped"; }
	@# tests/test_web_observer.py runs the `pooly observe` page in headless Chromium (skipped without it)
	@test -x /usr/bin/chromium || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		command -v apt-get >/dev/null 2>&1 \
		&& ($$SUDO apt-get install -y chromium || ($$SUDO apt-get update && $$SUDO apt-get install -y chromium)) \
		|| echo "warning: could not install chromium; the 'pooly observe' browser test will be skipped"; }
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pooly demo

test: $(STAMP)
	$(PY) -m pytest

# The suite on every supported Python found here (3.11, 3.12, 3.13; pyenv's too), each in its
# own venv (.venv-3.12, ...; the default interpreter's is .venv). See .ci/test-all.
test-all: $(STAMP)
	PYTHON=$(PYTHON) .ci/test-all

# The chaos soak (issue 3): 5 minutes at a fault every ~50 ms unless CHAOS_ARGS says otherwise.
CHAOS_ARGS ?= --duration 300 --fault-interval 0.05
.PHONY: chaos
chaos: $(STAMP)
	$(VENV)/bin/pooly chaos $(CHAOS_ARGS)

# Issue 10's recycling bar: max_calls=50, max_age=2 s and a worker leaking 5 MiB a call
# under max_memory, under load for 2 minutes (SOAK_ARGS to change it).
SOAK_ARGS ?= --duration 120
.PHONY: soak-recycle
soak-recycle: $(STAMP)
	$(VENV)/bin/pooly soak $(SOAK_ARGS)

bench: $(STAMP)
	$(PY) bench/bench.py

# A venv of its own for an optional part: $(call extra_venv,DIR,EXTRAS), as the rule's recipe
# for DIR/.installed (EXTRAS: up to three of pooly's extras, comma-separated).
extra_venv = $(PYTHON) -m venv $(1) \
	&& $(1)/bin/python -m pip install --quiet --upgrade pip \
	&& $(1)/bin/python -m pip install --quiet -e '.[$(2)$(if $(3),$(comma)$(3))$(if $(4),$(comma)$(4))]' \
	&& touch $(1)/.installed
comma := ,

# pooly.RayBackend's tests (issue 12, tests/ray) on a local simulated Ray cluster. Ray is
# heavy (~240 MiB installed, ~700 MiB of RAM, seconds to start), so it gets its own venv and
# target, kept out of .venv and `make test` (where tests/ray skips); CI runs it after test-all.
# The env keeps Ray off the network: no usage stats, every Ray process on 127.0.0.1
# (tests/ray/__init__.py). faulthandler dumps stacks just before pytest-timeout fires.
RAY_VENV := .venv-ray
RAY_TEST_ENV := POOLY_TEST_RAY=1 RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
RAY_TEST_ARGS ?= --timeout=300 -o faulthandler_timeout=290

$(RAY_VENV)/.installed: pyproject.toml
	$(call extra_venv,$(RAY_VENV),dev,ray)

.PHONY: test-ray
test-ray: $(RAY_VENV)/.installed
	$(RAY_TEST_ENV) $(RAY_VENV)/bin/python -m pytest tests/ray $(RAY_TEST_ARGS)

# Issue 12's bars on a local Ray: lease call vs a bare actor call, SIGKILL -> WorkerCrashed,
# served again with and without a warm spare (bench/bench_ray.py; a minute or two).
.PHONY: bench-ray
bench-ray: $(RAY_VENV)/.installed
	$(RAY_TEST_ENV) $(RAY_VENV)/bin/python bench/bench_ray.py

# Issue 13: pooly side by side with the pools users would pick instead (bench/bench_peers.py).
# The peers, the plots and a real embedding model (torch: a few GiB) live in their own venv.
BENCH_VENV := .venv-bench
PEERS_ARGS ?=

$(BENCH_VENV)/.installed: pyproject.toml
	$(call extra_venv,$(BENCH_VENV),dev,bench,ray)

.PHONY: bench-peers
bench-peers: $(BENCH_VENV)/.installed
	RAY_USAGE_STATS_ENABLED=0 $(BENCH_VENV)/bin/python bench/bench_peers.py $(PEERS_ARGS)

# Issue 13: the documentation site (MkDocs; docs/, mkdocs.yml), built offline into site/.
DOCS_VENV := .venv-docs

$(DOCS_VENV)/.installed: pyproject.toml
	$(call extra_venv,$(DOCS_VENV),docs)

.PHONY: docs
docs: $(DOCS_VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict

# In .venv-bench: the docs' examples that need the examples extra (the embedding model,
# aiohttp), the bench extra or Ray -- the others run in `make test` already -- and the tests of
# `make bench-peers` (tests/test_bench_*.py; skipped in .venv, which has no peers).
EXTRAS_TESTS := tests/test_docs_examples.py $(wildcard tests/test_bench_peers.py tests/test_bench_faults.py)
.PHONY: test-extras
test-extras: $(BENCH_VENV)/.installed
	POOLY_TEST_EXAMPLES=1 RAY_USAGE_STATS_ENABLED=0 $(BENCH_VENV)/bin/python -m pytest $(EXTRAS_TESTS) --timeout=600

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) $(VENV)-3.* $(RAY_VENV) $(BENCH_VENV) $(DOCS_VENV) site build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
