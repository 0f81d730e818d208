#!/usr/bin/env bash
# Installs what building and testing splicevi needs on a fresh Debian 12 machine with Rust:
#   .pyvenv     cmake >= 3.26 (the static HDF5 build needs it) and numpy/scipy/h5py/anndata/mudata (tests)
#   .cuda-venv  the pinned CUDA 13.0 nvcc from PyPI (scripts/install-nvcc.sh), unless a toolkit is present
# Idempotent: a second run only checks. Source it or read PATH from scripts/env.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

py="${PYTHON:-python3}"
if [ ! -x .pyvenv/bin/python ]; then
  echo "[setup] creating .pyvenv (cmake, anndata, mudata)"
  "$py" -m venv .pyvenv
fi
if ! .pyvenv/bin/python -c 'import anndata, mudata, h5py, scipy, numpy' 2>/dev/null || [ ! -x .pyvenv/bin/cmake ]; then
  .pyvenv/bin/pip install -q --disable-pip-version-check 'cmake>=3.26,<4' numpy scipy h5py pandas anndata mudata
fi

if [ -z "${NVCC:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
  bash scripts/install-nvcc.sh
fi
echo "[setup] ok: $(.pyvenv/bin/cmake --version | head -1); python $(.pyvenv/bin/python -c 'import anndata, mudata; print("anndata", anndata.__version__, "mudata", mudata.__version__)')"
