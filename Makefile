# Two commands for a fresh machine: `make test` and `make demo`. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned: the local CPU build, not the CUDA wheels another spec would pull.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/pe-port demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src reference tests scripts

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
