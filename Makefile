# Quick start: `make train` (sets up .venv, trains CartPole) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0
ARGS ?=

.PHONY: install train test lint tensorboard bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# A CPU torch wheel only when no torch is present; an existing (e.g. CUDA) torch is kept.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_CPU)" \
		|| $(PY) -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(VENV)/bin/asyncql train env=CartPole-v1 $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

lint: install
	$(VENV)/bin/ruff check asyncql_cli tests benchmarks

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs

bench: install
	$(VENV)/bin/asyncql bench $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
