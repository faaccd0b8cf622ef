# Quick start: `make train` (sets up .venv, trains CartPole) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_CPU := torch==2.13.0
ARGS ?=
ITERATIONS ?= 200

.PHONY: install train test stress lint tensorboard bench gpu-check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# A CPU torch wheel only when no torch is present; an existing (e.g. CUDA) torch is kept.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_CPU)" \
		|| $(PY) -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	# compat: the source tree on sys.path, so Hydra finds hydra_plugins/asyncql_ray_launcher (a namespace package)
	$(PY) -m pip install --quiet -e ".[dev]" --config-settings editable_mode=compat
	touch $@

install: $(VENV)/.installed

train: install
	$(VENV)/bin/asyncql train env=CartPole-v1 $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

# the multi-process race tests (memory ordering, replay, prioritized replay, parameter store), repeated
stress: install
	$(PY) -m pytest -q -m stress --stress-iterations=$(ITERATIONS) $(ARGS)

lint: install
	$(VENV)/bin/ruff check asyncql_cli tests benchmarks
	$(VENV)/bin/lint-imports

tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs

bench: install
	$(VENV)/bin/asyncql bench $(ARGS)

# The learner's CUDA path on a GPU machine, at most 9 minutes: benchmarks/results/gpu_check.json.
# Without CUDA it says so and runs the CPU parts; exit 0 unless a check that ran failed.
# ARGS: --quick, --only STEP,..., --json PATH, --budget-seconds S
gpu-check: install
	$(PY) benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info
