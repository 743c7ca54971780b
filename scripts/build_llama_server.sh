#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the sources vendored in the llama-cpp-python sdist
# (the only way to get it offline: PyPI is reachable, GitHub is not).
# The build takes ~5 minutes on 2 cores, so it is cached outside the checkout.
# Usage: scripts/build_llama_server.sh   -> prints the path of the binary
# The version is pinned so that CI builds the server the tests were written against
# (0.3.36, the newest llama-cpp-python when they were; `llama-server --version` of that build
# reports b1-0c1e570). To rebuild another one:
#   rm -rf ~/.cache/curate/llama-server && LLAMA_CPP_PYTHON_VERSION=0.3.x scripts/build_llama_server.sh
# GGML_NATIVE=OFF keeps the cached binary portable; ggml then still enables AVX, AVX2, FMA, F16C.
set -euo pipefail
CACHE="${CURATE_CACHE:-$HOME/.cache/curate}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
BIN="$CACHE/llama-server/bin/llama-server"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
command -v cmake >/dev/null || { echo "cmake is required to build llama-server" >&2; exit 1; }
work="$CACHE/llama-build"
rm -rf "$work" && mkdir -p "$work"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python${VERSION:+==$VERSION}" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
  -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$(dirname "$BIN")"
cp "$work/build/bin/llama-server" "$BIN"
rm -rf "$work"
echo "$BIN"
