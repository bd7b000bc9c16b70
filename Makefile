# The README's two commands: `make run` (the server on the default model) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: run test test-fast fuzz lint bench generate clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install -e '.[test]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(VENV)/bin/lms server start --foreground

# Tests run in WORKERS processes (pytest-xdist; 2 = the cores of CI's machine; WORKERS=0 runs
# them in this process). worksteal: a worker that runs out takes tests queued for the other, so
# the few long end-to-end tests do not leave one core idle at the end.
WORKERS ?= 2
PYTEST_PARALLEL := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist worksteal)

test: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_PARALLEL)

# Every test that does not need the real model (no `model` marker): plumbing on the scripted
# FakeEngine (tests/fakes.py), unit, CLI and API tests; under a minute on 2 cores.
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not model"

# The property-based fuzz suite at length: 600 generated cases for each of the 17 tests (10,200)
# against one real daemon. SEED=N repeats a run, EXAMPLES=N changes the cases per test; the seed
# is printed first and the figures (cases per route, statuses, failures) last, and kept in
# tests/fuzz/.last-run.json. The per-test limit of `make test` is off (600 cases take minutes);
# each case has its own liveness bound.
fuzz: $(VENV)/.installed-test
	@seed=$${SEED:-$$($(PY) -c 'import secrets; print(secrets.randbelow(2**32))')}; \
	echo "fuzz seed: $$seed (make fuzz SEED=$$seed repeats this run)"; \
	LMS_FUZZ_EXAMPLES=$(EXAMPLES) $(PY) -m pytest tests/fuzz -p no:cacheprovider \
		--hypothesis-profile=fuzz --hypothesis-seed=$$seed -q --timeout=0

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check lms tests bench
	$(VENV)/bin/ruff format --check lms tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m lms.cli.docgen --check

generate: $(VENV)/.installed
	$(PY) -m lms.cli.docgen

bench: $(VENV)/.installed-test
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
