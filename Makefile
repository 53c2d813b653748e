# `make run` and `make test` set everything up themselves (a .venv beside this file).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench live clean

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/issue-platform run

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

live: $(STAMP)
	$(BIN)/issue-platform live $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench.py $(ARGS)

clean:
	rm -rf out bench/data .pytest_cache
