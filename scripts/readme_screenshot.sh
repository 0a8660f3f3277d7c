#!/usr/bin/env bash
# Regenerate docs/img/reading-report.png: the notebook example's report (embedded model, bundled document) in headless
# Chromium, top of the page, reduced to a 256-colour PNG. Needs .venv (scripts/setup.sh) and chromium
# (scripts/install_chromium.sh). Takes a few minutes on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" examples/html_report.py "$work/report.html"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size=1280,"${HEIGHT:-1400}" --screenshot="$work/report.png" "file://$work/report.html" 2>/dev/null
"$PY" -c 'import sys; from PIL import Image
Image.open(sys.argv[1]).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(sys.argv[2], optimize=True)' \
    "$work/report.png" docs/img/reading-report.png
echo "wrote docs/img/reading-report.png"
