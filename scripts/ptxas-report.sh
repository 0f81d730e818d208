#!/usr/bin/env bash
# Prints registers / static shared memory / stack / spills of every kernel, per architecture, from the
# ptxas logs build.rs keeps next to the fatbins (the newest set of
# ${CARGO_TARGET_DIR:-target}/<profile>/build/splicevi-*/out/*.ptxas.log), or, with --rerun, by compiling
# kernels/*.cu again with `nvcc -Xptxas -v` (same nvcc lookup as build.rs: $NVCC, $CUDA_HOME/bin/nvcc,
# .cuda-venv, PATH). A kernel that spills is flagged "SPILLS".
#   usage: scripts/ptxas-report.sh [--rerun]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_nvcc() {
  if [ -n "${NVCC:-}" ]; then echo "$NVCC"; return; fi
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then echo "$CUDA_HOME/bin/nvcc"; return; fi
  local p
  for p in .cuda-venv/lib/python*/site-packages/nvidia/cu13/bin/nvcc; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  command -v nvcc || { echo "ptxas-report: no nvcc (run scripts/install-nvcc.sh or set NVCC)" >&2; exit 1; }
}

LOGDIR=""
if [ "${1:-}" = "--rerun" ]; then
  NV="$(find_nvcc)"
  LOGDIR="$(mktemp -d)"
  trap 'rm -rf "$LOGDIR"' EXIT
  for src in kernels/*.cu; do
    stem="$(basename "$src" .cu)"
    "$NV" --fatbin -O3 -std=c++17 -lineinfo -Xptxas=-v \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
      -I kernels -o "$LOGDIR/$stem.fatbin" "$src" 2> "$LOGDIR/$stem.ptxas.log"
  done
else
  # The out/ directory whose logs are newest.
  tdir="${CARGO_TARGET_DIR:-target}"
  newest="$(ls -t "$tdir"/*/build/splicevi-*/out/*.ptxas.log 2>/dev/null | head -n1 || true)"
  if [ -z "$newest" ]; then
    echo "ptxas-report: no ptxas logs under $tdir/ (build with nvcc first, e.g. SPLICEVI_REQUIRE_NVCC=1 cargo build), or use --rerun" >&2
    exit 1
  fi
  LOGDIR="$(dirname "$newest")"
fi
echo "ptxas logs: $LOGDIR"
printf '%-14s %-26s %-6s %5s %9s %7s %9s %9s\n' file kernel arch regs smem_B stack_B spill_st spill_ld
for log in "$LOGDIR"/*.ptxas.log; do
  stem="$(basename "$log" .ptxas.log)"
  awk -v file="$stem" '
    /Compiling entry function/ {
      match($0, /function \x27[^\x27]+\x27/); fn = substr($0, RSTART + 10, RLENGTH - 11)
      match($0, /for \x27[^\x27]+\x27/); arch = substr($0, RSTART + 5, RLENGTH - 6)
      stack = 0; sst = 0; sld = 0
    }
    /bytes stack frame/ {
      for (i = 1; i <= NF; i++) {
        if ($(i+1) == "bytes" && $(i+2) == "stack") stack = $i
        if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) ~ /stores/) sst = $i
        if ($(i+1) == "bytes" && $(i+2) == "spill" && $(i+3) ~ /loads/) sld = $i
      }
    }
    /Used [0-9]+ registers/ {
      regs = 0; smem = 0
      for (i = 1; i <= NF; i++) {
        if ($i == "Used") regs = $(i+1)
        if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) smem = $i
      }
      flag = (sst + sld > 0) ? "  SPILLS" : ""
      printf "%-14s %-26s %-6s %5s %9s %7s %9s %9s%s\n", file, fn, arch, regs, smem, stack, sst, sld, flag
    }
  ' "$log"
done
