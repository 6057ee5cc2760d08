# Two commands for a fresh machine (see README.md):
#   make demo   installs into .venv, then runs prepare | train | eval and predict on the built-in sample
#   make test   installs into .venv (with the test extra), then runs ruff, mypy and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo

.PHONY: install lint test test-all demo man docs clean

$(BIN)/.imgcls-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,plots]'
	touch $@

install: $(BIN)/.imgcls-installed

# ruff and mypy read their settings from pyproject.toml ([tool.ruff], [tool.mypy]).
lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

# Two pytest-xdist workers: the suite is single-threaded per test (OMP_NUM_THREADS=1), and CI has 2 cores.
test: lint
	$(BIN)/python -m pytest -q -n 2

test-all: install
	$(BIN)/python -m pytest -q -n 2 -m ''

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} sh examples/demo.sh $(DEMO)

# The man pages and README's generated tables (imgcls.docgen); tests fail when either is stale.
man: docs
	$(BIN)/python -m imgcls.manpage --write man

docs: install
	$(BIN)/python -m imgcls.docgen --write

clean:
	rm -rf $(VENV) $(DEMO) runs
