# trainbench: `make run ARGS="..."` trains, `make test` runs the test suite; both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch pair that installs from local disk on the course machines; override on your own: make TORCH=torch
TORCH  ?= torch==2.14.1 torchvision==0.29.1
ARGS   ?=

.PHONY: venv run test test-all lint format bench mutation gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev,launchers]"
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) train.py $(ARGS)

# The fast suite: tests that time nothing on 2 xdist workers (one torch thread each), then the timing tests
# (marker `timing`) alone, so that no clock they check shares the cores with another test.
PYTEST_FAST := -m "not slow and not timing" -n 2 --dist worksteal
test: venv
	$(PY) -m pytest -q $(PYTEST_FAST)
	$(PY) -m pytest -q -m "timing and not slow"

test-all: venv
	$(PY) -m pytest -q -m "not timing" -n 2
	$(PY) -m pytest -q -m timing

lint: venv
	$(PY) -m ruff check src tests benchmarks mutation examples train.py
	$(PY) -m ruff format --check src tests benchmarks mutation examples train.py

format: venv
	$(PY) -m ruff format src tests benchmarks mutation examples train.py
	$(PY) -m ruff check --fix src tests benchmarks mutation examples train.py

bench: venv
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/train_step.py --batch-size 128
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/phase_clocks.py
	$(PY) benchmarks/tune.py
	$(PY) benchmarks/ddp.py
	$(PY) benchmarks/own_model_data.py

# On a machine with CUDA: the gpu-marked tests and short real GPU measurements into gpu-check/results.md (+ .csv),
# under 8 minutes on one H100/H200; without CUDA it writes "no CUDA device: skipped" there and exits 0.
gpu-check: venv
	$(PY) benchmarks/gpu_check.py --out gpu-check

# Mutation testing (slow, not part of `make test`): mutmut on config/records/checkpoint/summarize with the
# in-process tests that cover them, then the curated semantic mutants of mutation/semantic.py.
MUTMUT_MODULES ?= "trainbench.config*" "trainbench.store.records*" "trainbench.store.checkpoint*" "trainbench.report.runs*"
mutation: venv
	$(PY) -m pip install --quiet -e ".[mutation]"
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2 $(MUTMUT_MODULES) > mutmut.log 2>&1 || (tail -c 2000 mutmut.log; exit 1)
	$(PY) mutation/mutmut_report.py --min 85 schema.py records.py checkpoint.py
	$(PY) mutation/semantic.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache mutants mutmut.log gpu-check
