#!/usr/bin/env bash
# Headless Chromium (Debian's `chromium` package) for the HTML report's browser test, tests/core/test_html_browser.py.
# Without it that test skips and says so; CI runs this script and requires the browser.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium is installed: $(chromium --version 2>/dev/null || true)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: no apt-get here; install Chromium with your system's package manager." >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
echo "chromium is installed: $(chromium --version 2>/dev/null || true)"
