# User-facing targets: `make demo`, `make test` (the whole suite, what CI runs),
# `make test-fast` (the edit loop: the tests not marked slow, under 5 minutes on 2 cores) and
# `make docs` (the documentation site from docs/ into site/, offline).
# Each creates .venv when missing and installs the project (editable) into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast docs embedded

$(STAMP): pyproject.toml infra/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The lock file pins every package to the versions the suite passes with, so the
	# resolver has nothing to search and CI installs exactly what was tested.
	$(BIN)/python -m pip install --quiet --constraint infra/constraints.txt -e '.[test,bench,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vip2scan demo

# Two workers, whole files each (module fixtures are built once): many scenario tests spend
# their time waiting on Ray, subprocesses and backoff, so two share 2 cores well.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" --durations=10

# The CLI reference is generated from the typer app (tests/docs/test_site.py checks that the
# committed page is current), then the site is built strictly: a broken link fails the build.
docs: $(STAMP)
	$(BIN)/python -m typer vip2scan.jobs.cli utils docs --name vip2scan --title "Command-line reference" --output docs/reference/cli.md
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

# Rebuild the embedded checkpoint (model/embedded/) from generated data: about 35 minutes on
# 2 cores. The files are committed; this is how they were made (see their provenance.json).
embedded: $(STAMP)
	$(BIN)/vip2scan train-embedded --out model/embedded
