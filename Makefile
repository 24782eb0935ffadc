# `make demo` and `make test` each create or update .venv first, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_CONFIG ?= configs/compare/strait_vs_maskgit_cascade.yaml

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/stratagen compare $(DEMO_CONFIG)

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
