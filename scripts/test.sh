#!/usr/bin/env bash
# The test command: sets up (idempotent), builds every kernel with nvcc (strict in CI), runs all tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
# In CI every kernel must compile: a missing nvcc or a failing kernel is a build error.
if [ "${CI:-}" = "true" ]; then export SPLICEVI_REQUIRE_NVCC=1; fi
cargo build --release --bin splicevi
if [ -x scripts/ptxas-report.sh ] || [ -f scripts/ptxas-report.sh ]; then bash scripts/ptxas-report.sh || true; fi
cargo test --release "$@"
