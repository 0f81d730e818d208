#!/usr/bin/env bash
# Builds everything a GPU check needs into one folder that can be carried to a GPU machine without Rust
# (e.g. the device tool's `run`, carrying target/gpu-bundle.tar.xz, about 10 MB), and writes
# run-on-gpu.sh into it.
#
#   scripts/gpu-check.sh [OUT_DIR]          default OUT_DIR: target/gpu-bundle
#   env GPU_TESTS="cuda_parity special"     test targets to bundle (default: these two plus every tests/*.rs
#                                           whose name contains cuda, gpu or parity)
#   env PROFILE=dev                         build profile (default release; dev is quicker for trying this out)
#
# On the GPU machine:  bash target/gpu-bundle/run-on-gpu.sh   (logs also go to $OUT when it is set)
# It runs, in this order (the issue's criterion early, so that a run cut short still brings it back):
# `splicevi info --load-kernels`; every bundled test binary (a test that cannot use the GPU prints
# SKIPPED and counts as a failure there; the host-emulation halves are switched off); the fixture checks
# through the CUDA step (bundled copy of ../shared/fixtures); `splicevi bench --device cuda` at the paper
# size with the paper preset, bf16 (dense then sparse splicing decode) then f32 on one simulation
# (`--variants`, 6,400 simulated cells), each with a kernel profile, then bf16 again with one warp per
# block in partial_pair_bwd_tc (SPLICEVI_TC_BWD_WARPS=1) (BENCH_PAPER= leaves them out; PAPER_TIMEOUT,
# default 300 s);
# two epochs of `train --device cuda` next to the CPU's on the toy data, and the analyses; the small and
# medium benches; and, asked for by name, Nsight Compute on the heaviest kernels (`run-on-gpu.sh ncu`) and
# compute-sanitizer over the kernel parity tests (`run-on-gpu.sh sanitize`).
# cuBLAS is looked for where a GPU machine without Rust may keep it (its folder goes on LD_LIBRARY_PATH).
# Each step has a time limit (STEP_TIMEOUT seconds, default 240), so one that hangs cannot take the
# whole device lease.
#
# Kernels are compiled in strict mode (SPLICEVI_REQUIRE_NVCC=1); binaries are stripped of debug info to
# stay well under the 64 MiB a carried folder may have.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-target/gpu-bundle}"

if [ -f scripts/env.sh ]; then source scripts/env.sh; fi
if [ -z "${NVCC:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
  bash scripts/install-nvcc.sh >/dev/null
fi
export SPLICEVI_REQUIRE_NVCC=1

PROFILE="${PROFILE:-release}"
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
echo "[gpu-check] building the $PROFILE binary"
cargo build --profile "$PROFILE" --bin splicevi --message-format=json >"$json"
bin_exe="$(grep '"reason":"compiler-artifact"' "$json" | grep '"name":"splicevi","src_path":"[^"]*main.rs"' |
  grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/' | tail -n1)"
[ -n "$bin_exe" ] || { echo "[gpu-check] could not find the splicevi executable in cargo's output" >&2; exit 1; }

tests="${GPU_TESTS:-}"
if [ -z "$tests" ]; then
  tests="cuda_parity special"
  for f in tests/*.rs; do
    n="$(basename "$f" .rs)"
    case "$n" in *cuda*|*gpu*|*parity*) case " $tests " in *" $n "*) ;; *) tests="$tests $n" ;; esac ;; esac
  done
fi
test_args=()
for t in $tests; do test_args+=(--test "$t"); done
echo "[gpu-check] building test binaries: $tests"
cargo test --profile "$PROFILE" --no-run --message-format=json "${test_args[@]}" >"$json"

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/tests"
strip_copy() { cp "$1" "$2"; strip --strip-debug "$2" 2>/dev/null || true; }
strip_copy "$bin_exe" "$OUT/bin/splicevi"
# Test executables: compiler-artifact lines built with the test harness (profile.test) and an executable.
grep '"reason":"compiler-artifact"' "$json" | grep -E '"profile":\{[^}]*"test":true' |
  grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/' | sort -u |
  while read -r exe; do
    name="$(basename "$exe")"
    name="${name%-*}" # drop cargo's hash suffix
    strip_copy "$exe" "$OUT/tests/$name"
    echo "[gpu-check]   tests/$name"
  done
if [ -d ../shared/fixtures ]; then
  cp -r ../shared/fixtures "$OUT/fixtures"
  chmod -R u+w "$OUT/fixtures"
fi

cat >"$OUT/run-on-gpu.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the bundled GPU checks (made by scripts/gpu-check.sh). Exit status: 0 only if every step passed.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LOG="${OUT:-$HERE}/gpu-check.log"
: >"$LOG"
status=0
T="${STEP_TIMEOUT:-240}"
SECONDS=0
step() {
  echo "=== [${SECONDS}s] $*" | tee -a "$LOG"
  timeout "$T" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== FAILED ($rc): $*" | tee -a "$LOG"; status=1; }
}
# cuBLAS (libcublas.so.13, which loads libcublasLt.so.13) is opened at run time from the loader's path.
# A GPU machine without Rust may hold it elsewhere: a CUDA toolkit's lib64, or the nvidia-cublas wheel
# PyTorch installs under site-packages/nvidia/cu13/lib. Find it and put its folder on LD_LIBRARY_PATH.
blas_on_path() {
  ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.13 ' && return 0
  local d
  for d in $(echo "${LD_LIBRARY_PATH:-}" | tr ':' ' '); do [ -e "$d/libcublas.so.13" ] && return 0; done
  return 1
}
if ! blas_on_path; then
  blas="$(find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -name 'libcublas.so.13' -print -quit 2>/dev/null || true)"
  if [ -n "$blas" ]; then
    export LD_LIBRARY_PATH="$(dirname "$blas")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "=== cuBLAS: $blas (its folder put on LD_LIBRARY_PATH)" | tee -a "$LOG"
  else
    echo "=== cuBLAS: libcublas.so.13 not found on this machine: every CUDA step will fail" | tee -a "$LOG"
  fi
else
  echo "=== cuBLAS: on the loader's path" | tee -a "$LOG"
fi
# A command on the device (every command has a CUDA path; a failure is a failure).
cuda_step() { step "$@"; }
# Phases to run (arguments; default all but ncu and sanitize): tests fixtures paper train bench, ncu
# (Nsight Compute on the heaviest kernels) and sanitize (compute-sanitizer over the parity tests). The device tool allows 10 minutes per command: `run-on-gpu.sh tests
# fixtures`, then `run-on-gpu.sh paper`, then (time left) `run-on-gpu.sh ncu train bench`.
PHASES=" ${*:-tests fixtures paper train bench} "
want() { case "$PHASES" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
echo "=== phases:$PHASES" | tee -a "$LOG"
command -v nvidia-smi >/dev/null && step nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
# The wrapper tests also run under the host emulation elsewhere (CI); here only the GPU counts.
export SPLICEVI_TEST_EMU=0
step "$HERE/bin/splicevi" info --load-kernels
if want tests; then
  for t in "$HERE"/tests/*; do
    step "$t" --test-threads=1 --nocapture
  done
  # On a GPU machine nothing may skip: a SKIPPED line means the GPU path did not run.
  # (The host-compiler builds may skip: GPU machines need not have a C++ compiler.)
  skips="$(grep '^SKIPPED:' "$LOG" | grep -v 'host build\|host emulation' || true)"
  if [ -n "$skips" ]; then
    echo "=== FAILED: GPU tests were skipped:" | tee -a "$LOG"
    echo "$skips" | tee -a "$LOG"
    status=1
  fi
fi
if ! want fixtures; then
  :
elif [ -d "$HERE/fixtures" ] && "$HERE/bin/splicevi" check-fixture --help 2>/dev/null | grep -q -- '--device'; then
  cuda_step "$HERE/bin/splicevi" check-fixture --device cuda "$HERE"/fixtures/*/
  cuda_step "$HERE/bin/splicevi" check-fixture --device cuda --precision bf16 "$HERE"/fixtures/*/
else
  echo "=== (fixture checks not run: no bundled fixtures or check-fixture has no --device option yet)" | tee -a "$LOG"
fi
# The issue's speed criterion: the paper preset at the paper size (bench simulates the first 25,600 of its
# 100,000 cells: the same cells; s/epoch is for all of them), bf16 (the tensor cores) first, then f32;
# --profile-steps: the device time per kernel of three more steps, timed by CUDA events.
# One simulation for the three variants: bf16 with auto (dense) decode, bf16 with the SDDMM, f32.
if want paper && [ -n "${BENCH_PAPER-1}" ]; then
  # 6,400 cells (25 minibatches; a step's cost depends on its minibatch, not on the cells around it):
  # seconds to simulate and upload instead of a minute, within a 15-minute device lease.
  t_save="$T"; T="${PAPER_TIMEOUT:-300}"
  cuda_step "$HERE/bin/splicevi" bench --device cuda --size paper --preset paper --variants bf16:auto,bf16:sparse,f32:auto --sim-cells 6400 --steps 12 --max-seconds 10 --profile-steps 2
  # The partial encoder's per-pair kernels (the tensor-core ones in bf16) instead of the grouped ones
  # (the default): the same bf16 step, for the difference grouping makes on this GPU.
  cuda_step env SPLICEVI_PARTIAL_KERNELS=pairs "$HERE/bin/splicevi" bench --device cuda --size paper --preset paper --variants bf16:auto --sim-cells 6400 --steps 12 --max-seconds 10 --profile-steps 2
  T="$t_save"
fi
# The training step end to end: two epochs of `train --device cuda` (default and robust presets) on the
# toy data, then the CPU's two epochs on the same data for comparison (the metrics must agree closely).
work="$(mktemp -d)"
want train && step "$HERE/bin/splicevi" simulate --size toy --seed 0 --out "$work/toy.h5mu"
want train && for preset in default robust; do
  cuda_step "$HERE/bin/splicevi" train "$work/toy.h5mu" --out "$work/$preset-cuda" --preset $preset --batch-key batch --max-epochs 2 --device cuda --no-plots
  # the same with the minibatches streamed from the host instead of gathered from the resident dataset
  cuda_step "$HERE/bin/splicevi" train "$work/toy.h5mu" --out "$work/$preset-cuda-host" --preset $preset --batch-key batch --max-epochs 2 --device cuda --data-residency host --no-plots
  # bf16 (the h network on the tensor cores): its metrics must stay near the f32 runs'
  cuda_step "$HERE/bin/splicevi" train "$work/toy.h5mu" --out "$work/$preset-cuda-bf16" --preset $preset --batch-key batch --max-epochs 2 --device cuda --precision bf16 --no-plots
  step "$HERE/bin/splicevi" train "$work/toy.h5mu" --out "$work/$preset-cpu" --preset $preset --batch-key batch --max-epochs 2 --device cpu --no-plots
  for r in $preset-cuda $preset-cuda-host $preset-cuda-bf16 $preset-cpu; do [ -f "$work/$r/metrics.tsv" ] && { echo "--- $r/metrics.tsv"; cat "$work/$r/metrics.tsv"; } | tee -a "$LOG"; done
done
# The analyses' encoders and decoders on the device, beside the CPU's, from the device-trained run.
if want train && [ -f "$work/default-cuda/model.safetensors" ]; then
  for dv in cuda cpu; do
    cuda_step "$HERE/bin/splicevi" embed "$work/default-cuda" "$work/toy.h5mu" --out "$work/emb-$dv.h5ad" --no-plots --device $dv
    cuda_step "$HERE/bin/splicevi" impute "$work/default-cuda" "$work/toy.h5mu" --out "$work/imp-$dv.h5ad" --device $dv
  done
fi
# Throughput (cells/s, fraction of the floor) at small and medium; BENCH_ARGS overrides.
if want bench; then
cuda_step "$HERE/bin/splicevi" bench --device cuda ${BENCH_ARGS:---size small,medium --preset default,paper,robust --max-seconds 15}
# the streamed path at medium, for the difference residency makes
cuda_step "$HERE/bin/splicevi" bench --device cuda --data-residency host --size medium --preset paper --max-seconds 15
# bf16 (GEMM operands; the partial encoder's h network on the tensor cores) beside f32
cuda_step "$HERE/bin/splicevi" bench --device cuda --precision bf16 --size medium --preset paper --max-seconds 15 --profile-steps 3
fi
# Nsight Compute on the heaviest kernels of a bf16 paper-preset step at the paper size, its first 2,560
# cells (not in the default phases: `run-on-gpu.sh ncu`): throughput against the roofs, occupancy, memory
# traffic, the warp stalls.
if want ncu; then
  ncu_bin="$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n1 || true)"
  if [ -z "$ncu_bin" ]; then
    echo "=== (ncu not found: the ncu phase did not run)" | tee -a "$LOG"
  else
    cuda_step "$ncu_bin" --clock-control none --launch-skip 10 --launch-count 10 \
      -k 'regex:pgrp_|partial_pair_bwd|partial_pool_fwd|splicing_lik|expr_lik|adamw_step|partial_unfold|partial_slot_sums|glue_scatter' \
      --section SpeedOfLight --section Occupancy --section MemoryWorkloadAnalysis --section WarpStateStats --section LaunchStats \
      "$HERE/bin/splicevi" bench --device cuda --precision bf16 --size paper --sim-cells 2560 --preset paper --steps 3 --max-seconds 5
  fi
fi
# NVIDIA's compute-sanitizer over the kernel parity tests (not in the default phases: `run-on-gpu.sh
# sanitize`): memcheck (out-of-bounds and misaligned accesses), racecheck (shared-memory hazards between
# threads with no barrier between them) and synccheck (barriers some threads of a block or warp miss).
# The same classes of error scripts/emu-sanitize.sh looks for on the host, here in the real code.
if want sanitize; then
  san_bin="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -n1 || true)"
  if [ -z "$san_bin" ]; then
    echo "=== (compute-sanitizer not found: the sanitize phase did not run)" | tee -a "$LOG"
  else
    for tool in memcheck racecheck synccheck; do
      for t in "$HERE"/tests/cuda_*parity; do
        cuda_step "$san_bin" --tool "$tool" --error-exitcode 1 "$t" --test-threads=1
      done
    done
  fi
fi
rm -rf "$work"
echo "=== gpu-check: $([ $status -eq 0 ] && echo PASSED || echo FAILED) after ${SECONDS}s (log: $LOG)" | tee -a "$LOG"
exit $status
RUN
chmod +x "$OUT/run-on-gpu.sh"
echo "[gpu-check] bundle: $OUT ($(du -sh "$OUT" | cut -f1)); on the GPU machine run: bash $OUT/run-on-gpu.sh"
# The device tool carries at most 64 MiB with the working tree. Every test binary embeds the same
# ~11 MB of kernel fatbins: gzip (a 32 KiB window) cannot see the repeats and made a 59 MiB tarball,
# xz (a 64 MiB dictionary) stores them once: about 10 MB. The GPU machine may have no `xz`; its
# python3 reads the tarball too (tarfile's lzma).
rm -f "$OUT.tar.xz" "$OUT.tar.gz"
if command -v xz >/dev/null 2>&1; then
  tarball="$OUT.tar.xz"
  tar -cf - -C "$(dirname "$OUT")" "$(basename "$OUT")" | xz -9 -T2 >"$tarball"
  unpack="(tar -xJf $tarball -C /tmp 2>/dev/null || python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' $tarball /tmp)"
else
  tarball="$OUT.tar.gz"
  tar -czf "$tarball" -C "$(dirname "$OUT")" "$(basename "$OUT")"
  unpack="tar -xzf $tarball -C /tmp"
fi
bytes=$(( $(wc -c <"$tarball") + $(git ls-files -z | xargs -0 cat | wc -c) ))
echo "[gpu-check] or carry $tarball ($(du -sh "$tarball" | cut -f1); with the working tree $((bytes / 1048576)) MiB of the 64 MiB a run carries) and run:"
echo "[gpu-check]   $unpack && bash /tmp/$(basename "$OUT")/run-on-gpu.sh tests fixtures"
if [ "$bytes" -gt $((60 * 1048576)) ]; then
  echo "[gpu-check] WARNING: $((bytes / 1048576)) MiB is close to or over the device tool's 64 MiB" >&2
fi
