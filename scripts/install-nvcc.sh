#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler toolchain from PyPI wheels into `.cuda-venv` at the repo root
# (gitignored), so build.rs can compile kernels/*.cu without a system CUDA toolkit or a GPU.
#
# The pins must all come from the 13.0 line: pinning only nvcc pulls 13.x>0 parts (PTX ISA newer than
# ptxas 9.0 understands), and the GPU machines run driver 580 (CUDA 13.0), which cannot JIT newer PTX.
# Idempotent: an existing venv with a working nvcc at the pinned version is left alone.
# Prints the nvcc path on its last line of stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.cuda-venv"
NVCC_VERSION="13.0.88"
PINS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
)
PYTHON="${PYTHON:-python3}"

find_nvcc() {
  local p
  for p in "$VENV"/lib/python*/site-packages/nvidia/cu13/bin/nvcc; do
    [ -x "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}

nvcc_ok() {
  local nvcc="$1"
  "$nvcc" --version 2>/dev/null | grep -q "V${NVCC_VERSION}"
}

if nvcc="$(find_nvcc)" && nvcc_ok "$nvcc"; then
  echo "install-nvcc: $VENV already has nvcc ${NVCC_VERSION}" >&2
else
  if [ ! -x "$VENV/bin/pip" ]; then
    echo "install-nvcc: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  echo "install-nvcc: installing ${PINS[*]}" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
  nvcc="$(find_nvcc)" || { echo "install-nvcc: nvcc not found under $VENV after install" >&2; exit 1; }
  nvcc_ok "$nvcc" || { echo "install-nvcc: $nvcc is not version ${NVCC_VERSION}:" >&2; "$nvcc" --version >&2 || true; exit 1; }
fi
echo "$nvcc"
