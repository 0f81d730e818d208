#!/usr/bin/env bash
# The kernel tests under the host emulation with a sanitizer compiled into the kernels: the failures a
# GPU would show and the plain emulation can miss.
#   ubsan: -fsanitize=undefined. A vector, fragment or double access at an address a GPU would fault
#          on as misaligned (x86 does not care), signed overflow in index arithmetic, shifts ≥ the
#          width, null arguments.
#   tsan : -fsanitize=thread. Two lanes (or warps) touching the same memory, one of them writing, with
#          no barrier between them: a race that a GPU's independent thread scheduling can turn into
#          wrong numbers, and that the emulation's OS threads only show when their timing happens to
#          expose it. (The emulation's shuffles, ballots and mma are barriers too, so a race that only
#          a shuffle separates is not reported here; on a GPU only __syncwarp / __syncthreads order
#          memory.) The Rust test process itself is not instrumented, so its own frames are
#          suppressed (libtsan cannot see std's futexes).
# Usage: scripts/emu-sanitize.sh ubsan|tsan [TEST_NAME ...] [-- libtest args]
#   TEST_NAME: tests/TEST_NAME.rs (default: every tests/cuda_*.rs).
# Not part of CI: tsan is slow (about 2x on the parity tests, far more on cuda_step, whose tests it runs
# one at a time). What passed, and when: benches/RESULTS.md ("eighth session").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/env.sh
mode="${1:-}"
shift || true
case "$mode" in
ubsan) flags="-fsanitize=undefined -fno-sanitize-recover=all" ;;
tsan) flags="-fsanitize=thread" ;;
*)
    echo "usage: $0 ubsan|tsan [TEST_NAME ...] [-- libtest args]" >&2
    exit 2
    ;;
esac
names=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    names+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
if [ ${#names[@]} -eq 0 ]; then
    for f in tests/cuda_*.rs; do names+=("$(basename "$f" .rs)"); done
fi
args=()
for n in "${names[@]}"; do args+=(--test "$n"); done
# The test executables cargo builds (one per name).
mapfile -t bins < <(cargo test --release --no-run --message-format=json "${args[@]}" |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
export SPLICEVI_EMU_CXXFLAGS="$flags"
export SPLICEVI_FIXTURES="${SPLICEVI_FIXTURES:-$root/../shared/fixtures}"
cxx="${CXX:-c++}"
failed=()
for bin in "${bins[@]}"; do
    echo "== $mode: $(basename "$bin")"
    if [ "$mode" = tsan ]; then
        supp="$(mktemp)"
        # the test binary's own (uninstrumented Rust) frames
        printf 'race:%s\n' "$(basename "$bin")" >"$supp"
        if ! LD_PRELOAD="$("$cxx" -print-file-name=libtsan.so)" \
            TSAN_OPTIONS="halt_on_error=1 report_signal_unsafe=0 suppressions=$supp" \
            "$bin" --test-threads=1 "$@"; then
            failed+=("$(basename "$bin")")
        fi
        rm -f "$supp"
    else
        "$bin" "$@" || failed+=("$(basename "$bin")")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "emu-sanitize $mode: FAILED in ${failed[*]}" >&2
    exit 1
fi
echo "emu-sanitize $mode: every test passed"
