#!/usr/bin/env bash
# Prepare `bench/gpu.py` for a GPU machine without network whose image has torch, transformers, peft, accelerate,
# pyarrow, pyyaml and xxhash but not trl, datasets, pydantic or bitsandbytes (../shared/STACK.md): download those, and
# the transformers and peft versions the CPU suite runs (the image has older ones), as
# Python 3.12 wheels into .whl/ and copy the SmolLM2 tokenizer files into .tok/ (both git-ignored, ~66 MB together: the tree that travels must stay under 64 MiB).
# Then, on the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
#   python3 bench/gpu.py --tokenizer .tok --out gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TOKENIZER=${1:-models/base}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 bitsandbytes==0.50.2 transformers==5.23.0 peft==0.21.2)
rm -rf .whl .tok && mkdir -p .whl .tok
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d .whl "${WHEELS[@]}"
cp "$TOKENIZER"/tokenizer.json "$TOKENIZER"/tokenizer_config.json "$TOKENIZER"/chat_template.jinja .tok/
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.tok/\n' >> .git/info/exclude
du -sh .whl .tok
