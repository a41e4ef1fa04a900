# Two user-facing targets: `make demo` and `make test`.
# Each creates .venv when missing and installs the project (editable) into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test

$(STAMP): pyproject.toml infra/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The lock file pins every package to the versions the suite passes with, so the
	# resolver has nothing to search and CI installs exactly what was tested.
	$(BIN)/python -m pip install --quiet --constraint infra/constraints.txt -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vip2scan demo

test: $(STAMP)
	$(BIN)/python -m pytest
