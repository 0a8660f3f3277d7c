#!/usr/bin/env bash
# Build llama-cpp-python (the binding behind LangChain's LlamaCpp and LlamaIndex's LlamaCPP) as a wheel once per
# machine and install it into the active environment; the llama.cpp backend's tests (tests/llamacpp/) run against it.
# PyPI ships it as source only, and a build takes ~8 min on 2 cores, so the wheel is kept in
# $WIM_BUILD_CACHE (default ~/.cache/wim-integrations/builds), like scripts/build_llama_server.sh keeps llama-server.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
BUILD=avx2  # not -march=native: the AMX kernels it turns on crash on these VMs
PY=${PYTHON:-python3}
PIP="$PY -m pip"
if $PY -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$VERSION')" 2>/dev/null; then
  echo "llama-cpp-python $VERSION is installed"; exit 0
fi
SHARED="${WIM_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wim-integrations/builds}/llama-cpp-python-$VERSION-$BUILD"
wheel() { ls "$SHARED"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1; }
if [ -z "$(wheel)" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  # --no-binary names this one package: ":all:" would also apply to its build requirements (cmake,
  # scikit-build-core), and pip would compile CMake itself from source on a machine with an empty pip cache.
  # --no-cache-dir: pip's own wheel cache is keyed by the source package alone, so after a change of CMAKE_ARGS it
  # would hand back the wheel built with the old flags (seen here: an AVX-512 build that came back AVX2-only).
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="${LLAMA_BUILD_JOBS:-$(nproc)}" \
    $PIP wheel -q --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$WORK" "llama-cpp-python==$VERSION" > "$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; exit 1; }
  mkdir -p "$SHARED.tmp" && cp "$WORK"/llama_cpp_python-*.whl "$SHARED.tmp"/ && rm -rf "$SHARED" && mv "$SHARED.tmp" "$SHARED"
  echo "llama-cpp-python $VERSION built (kept for other checkouts in $SHARED)"
fi
# Its runtime requirements (numpy, jinja2, diskcache, typing-extensions) come from the index as usual.
$PIP install -q "$(wheel)"
echo "llama-cpp-python $VERSION installed from $(wheel)"
