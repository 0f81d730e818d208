#!/usr/bin/env bash
# The main job on the bundled default dataset: set up, build, simulate the `toy` dataset (seed 0), validate it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
source scripts/env.sh
cargo build --release --bin splicevi
bin="${CARGO_TARGET_DIR:-target}/release/splicevi"
out="${OUT:-runs/demo}"
mkdir -p "$out"
"$bin" simulate --size toy --seed 0 --out "$out/toy.h5mu"
"$bin" validate "$out/toy.h5mu" --batch-key batch
