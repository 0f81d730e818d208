// The dense decode of the analyses (imputed PSI, normalised expression): from the decoders' B × J
// splicing logits and B × G expression scale logits to probabilities, as SpliceVae::decode_dense.
//   decode_psi_dense   : one thread per (cell, ATSE): p = sigmoid(logit) per junction, or for the
//                        Dirichlet-multinomial the ATSE's within-group softmax of the clamped sigmoids'
//                        logits (spl_lik::dm_probs: clamp to [1e-6, 1 − 1e-6], logit, max, Σ exp in
//                        order, + 1e-8 inside the log). Junctions of an ATSE need not be adjacent
//                        (atse_junc lists them).
//   decode_row_softmax : one warp per cell: softmax over the row (vae::softmax_rows: max, exp, the sum
//                        in f64; the warp's lane sums are combined in a fixed tree, so the order differs
//                        from the CPU's serial sum by rounding only).
// THESE KERNELS HAVE NEVER RUN ON A GPU: written and compiled without one; tests/cuda_decode_parity.rs
// runs them under the host emulation (src/cuda/emu.rs) and on a GPU where one exists.
// CPU twin: splicevi::cuda::decode::twin (model::spl_lik::dm_probs and vae::softmax_rows' loops).
#include <cstdint>
#ifndef __CUDACC__
#include "host_emu.h"
#endif

#define DEC_THREADS 256
#define DM_Q_EPS 1e-6f

namespace {
__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

// dm_probs' first step: the logit of the clamped sigmoid.
__device__ __forceinline__ float dm_logit(float x) {
    const float q = fminf(fmaxf(sigm(x), DM_Q_EPS), 1.0f - DM_Q_EPS);
    return logf(q / (1.0f - q));
}
}  // namespace

// logits, p: B × J row-major (p may alias logits). dm = 0: sigmoid per junction (a thread per
// (cell, ATSE) still, over the ATSE's junctions). atse_ptr: A + 1 offsets into atse_junc.
extern "C" __global__ void __launch_bounds__(DEC_THREADS)
decode_psi_dense(const float* __restrict__ logits, int B, int J, int A, const long long* __restrict__ atse_ptr,
                 const unsigned* __restrict__ atse_junc, int dm, float lse_eps, float* p) {
    const long long t = (long long)blockIdx.x * DEC_THREADS + threadIdx.x;
    if (t >= (long long)B * A) return;
    const long long i = t / A;
    const int a = (int)(t % A);
    const float* row = logits + i * J;
    float* out = p + i * J;
    const long long g0 = atse_ptr[a], g1 = atse_ptr[a + 1];
    if (!dm) {
        for (long long q = g0; q < g1; ++q) out[atse_junc[q]] = sigm(row[atse_junc[q]]);
        return;
    }
    if (g1 == g0) return;
    // max of the logits (the CPU folds from the first with max)
    float mx = dm_logit(row[atse_junc[g0]]);
    for (long long q = g0 + 1; q < g1; ++q) mx = fmaxf(mx, dm_logit(row[atse_junc[q]]));
    float s = 0.0f;
    for (long long q = g0; q < g1; ++q) s += expf(dm_logit(row[atse_junc[q]]) - mx);
    const float lse = mx + logf(s + lse_eps);  // the original's 1e-8, or 0 (dm_exact_softmax)
    // (the outputs last: p may alias logits)
    for (long long q = g0; q < g1; ++q) {
        const unsigned j = atse_junc[q];
        out[j] = expf(dm_logit(row[j]) - lse);
    }
}

// x, y: B × n row-major (y may alias x).
extern "C" __global__ void __launch_bounds__(DEC_THREADS)
decode_row_softmax(const float* x, int B, int n, float* y) {
    const int warp = (int)((blockIdx.x * DEC_THREADS + threadIdx.x) >> 5);
    const int lane = threadIdx.x & 31;
    if (warp >= B) return;
    const float* xr = x + (long long)warp * n;
    float* yr = y + (long long)warp * n;
    float mx = -INFINITY;
    for (int c = lane; c < n; c += 32) mx = fmaxf(mx, xr[c]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    double s = 0.0;
    for (int c = lane; c < n; c += 32) s += (double)expf(xr[c] - mx);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const float sf = (float)s;
    __syncwarp();
    for (int c = lane; c < n; c += 32) yr[c] = expf(xr[c] - mx) / sf;
}
