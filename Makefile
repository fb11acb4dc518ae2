# Two commands set everything up: `make run` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint bench install clean

$(VENV)/.installed: requirements.txt requirements-dev.txt hpcsera_agent/pyproject.toml hpcsera_client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

run: install
	VENV=$(VENV) scripts/run-local.sh

test: install
	VENV=$(VENV) scripts/test.sh $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/roundtrip.py

clean:
	rm -rf $(VENV) var
