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

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) $(VENV)-3.* build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
