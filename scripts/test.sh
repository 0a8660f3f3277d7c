#!/usr/bin/env bash
# The test command from the README: the whole suite, the embedded-model `slow` tests included. It first builds
# llama.cpp's `llama-server` (once, then reused), which the serving backend's tests run WiM against, and the
# llama-cpp-python binding (built once as a wheel, then installed from the build cache) for tests/llamacpp/. The vLLM
# tests (marker `vllm`, slow: a vLLM server starts in about 1.5 min) run where scripts/setup_vllm.sh has made
# .venv-vllm (CI does: .ci/run), and skip elsewhere unless WIM_REQUIRE_VLLM=1.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
t=$SECONDS
bash scripts/build_llama_server.sh
echo "test.sh: llama-server ready in $((SECONDS - t)) s"
t=$SECONDS
bash scripts/build_llama_cpp_python.sh
echo "test.sh: llama-cpp-python ready in $((SECONDS - t)) s"
python -m pytest -q -p no:cacheprovider "$@"
