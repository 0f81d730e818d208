#!/bin/bash
# Reproduces the ablation table of docs/robust.md. Usage: scripts/robust_ablation.sh SIZE SEEDS [OUTDIR]
#   SIZE: small | medium | CELLSxGENESxJUNCTIONS (e.g. 2000x300x2000); SEEDS: e.g. 0,1,2
# ONLY="robust default" restricts the rows (names as below).
# Each row: simulate(seed) → mask 25% of each cell's ATSEs → train → scorecard (src/analysis/scorecard.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --example robust_ablation >&2
E="$CARGO_TARGET_DIR/release/examples/robust_ablation"
SIZE=${1:-small}; SEEDS=${2:-0,1,2}; OUT=${3:-robust_ablation_out}
mkdir -p "$OUT"
run() { local name=$1; shift; "$E" "$name" "$@" > "$OUT/$name.$SIZE.tsv" 2> "$OUT/$name.$SIZE.err"; tail -n1 "$OUT/$name.$SIZE.tsv"; }
B256="batch_size=256 max_epochs=100"
ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
row() { want "$1" && run "$@" || true; }
row default               default "$SIZE" "$SEEDS" $B256
row default+14.3          default "$SIZE" "$SEEDS" $B256 modality_penalty=JeffreysExact warmup_routing=mix mask_cells_without_splicing=true restore_best=true
row default+14.3+lr       default "$SIZE" "$SEEDS" $B256 modality_penalty=JeffreysExact warmup_routing=mix mask_cells_without_splicing=true restore_best=true lr=0.003 n_epochs_kl_warmup=20
row robust                robust  "$SIZE" "$SEEDS"
row robust-nlatent        robust  "$SIZE" "$SEEDS" n_latent=null   # robust(n_latent=6) in docs/robust.md
row robust-concat         robust  "$SIZE" "$SEEDS" modality_weights=equal
row robust-partial-levers robust  "$SIZE" "$SEEDS" partial_center_psi=false partial_linear_output=false pool_mode=mean
row robust-pca            robust  "$SIZE" "$SEEDS" initialize_embeddings_from_pca=false
row robust+vanilla-enc    robust  "$SIZE" "$SEEDS" splicing_encoder_architecture=vanilla
row robust-bias           robust  "$SIZE" "$SEEDS" splicing_bias_from_data=false
row robust-log1p          robust  "$SIZE" "$SEEDS" expression_input=raw
row robust-lr             robust  "$SIZE" "$SEEDS" lr=0.001
row robust-xdec           robust  "$SIZE" "$SEEDS" cross_decoding=both   # both decoders read across (before 2026-12-08)
