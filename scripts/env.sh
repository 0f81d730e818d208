# Sourced by the scripts: puts the project's cmake and python first on PATH.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$root/.pyvenv/bin:$PATH"
export SPLICEVI_PYTHON="${SPLICEVI_PYTHON:-$root/.pyvenv/bin/python}"
# Python children of a test can inherit open HDF5 handles; file locking then blocks reopening in tests.
export HDF5_USE_FILE_LOCKING="${HDF5_USE_FILE_LOCKING:-FALSE}"
