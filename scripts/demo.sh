#!/usr/bin/env bash
# The main job on the bundled default dataset: set up, build, simulate the `toy` dataset (seed 0),
# validate it, train the `default` preset on it, and export the latent space.
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
rm -rf "$out/run"
"$bin" train "$out/toy.h5mu" --out "$out/run" --preset default --batch-key batch
"$bin" embed "$out/run" "$out/toy.h5mu" --out "$out/latent.h5ad"
echo "run directory: $out/run (model.safetensors, config.json, metrics.tsv); latent: $out/latent.h5ad"
