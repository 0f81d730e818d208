#!/usr/bin/env bash
# The main job on the bundled default dataset: set up, build, simulate the `toy` dataset (seed 0),
# validate it, train on it (preset `robust` unless PRESET is set, e.g. PRESET=default), export the latent
# space, and run differential splicing between two splicing-only subtypes; each step draws its pictures.
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
preset="${PRESET:-robust}"
"$bin" train "$out/toy.h5mu" --out "$out/run" --preset "$preset" --batch-key batch
"$bin" embed "$out/run" "$out/toy.h5mu" --out "$out/latent.h5ad" --color-by subtype
"$bin" diff-splicing "$out/run" "$out/toy.h5mu" --groupby subtype --group1 T0_a --group2 T0_b --out "$out/ds_T0.tsv"
echo "run directory: $out/run (model.safetensors, config.json, metrics.tsv, curves.png)"
echo "latent: $out/latent.h5ad (+ latent.embedding.png); differential splicing: $out/ds_T0.tsv (+ ds_T0.volcano.png)"
