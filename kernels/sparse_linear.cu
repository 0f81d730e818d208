// The first Linear of an encoder on sparse data (the expression counts, the vanilla splicing encoder's
// PSI): y₀ = x·Wᵀ with x a CSR minibatch (covariates appended as extra entries, as ops::Cov does), and
// its weight gradient dW += dy₀ᵀ·x (no input gradient: the input is data). The bias and the rest of
// FCLayers are kernels/dense_epilogue.cu's.
// CPU twin: splicevi::model::ops::linear_sparse_fwd / linear_sparse_bwd (same algorithm: Wᵀ rows, one
// output row per work item forward, one input column per work item backward).
//   sparse_linear_transpose : Wᵀ (n_in × n_out) from W (n_out × n_in), so a nonzero's weights are one
//                             contiguous row (coalesced across the warp's lanes).
//   sparse_linear_fwd       : one warp per cell, lanes over outputs, the row's entries in order.
//   sparse_linear_bwd_w     : one warp per input column, its entries (CSC order) in order, adding into
//                             dW (each element owned by one warp: deterministic, no atomics).
// (Never run on a GPU yet: none was available when it was written; its logic is checked on the host
// through kernels/host_emu.h by tests/cuda_sparse_linear_parity.rs.)
#include <cstdint>
#ifndef __CUDACC__
#include "host_emu.h"
#endif

#define SPL_THREADS 128
#define SPL_WARPS (SPL_THREADS / 32)

extern "C" __global__ void __launch_bounds__(SPL_THREADS)
sparse_linear_transpose(const float* __restrict__ w, int n_out, int n_in, float* __restrict__ wt) {
    const long long n = (long long)n_out * n_in;
    for (long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += (long long)gridDim.x * blockDim.x) {
        const long long c = x / n_out, o = x % n_out;  // wt[c][o], written in order
        wt[x] = w[o * n_in + c];
    }
}

// indptr (rows + 1), indices, values: CSR rows; wt: n_in × n_out; y (rows × n_out) is overwritten.
extern "C" __global__ void __launch_bounds__(SPL_THREADS)
sparse_linear_fwd(const long long* __restrict__ indptr, const unsigned* __restrict__ indices,
                  const float* __restrict__ values, int rows, const float* __restrict__ wt, int n_out,
                  float* __restrict__ y) {
    const int r = blockIdx.x * SPL_WARPS + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (r >= rows) return;
    const long long e0 = indptr[r], e1 = indptr[r + 1];
    for (int o = lane; o < n_out; o += 32) {
        float acc = 0.0f;
        for (long long e = e0; e < e1; ++e) acc += values[e] * wt[(long long)indices[e] * n_out + o];
        y[(long long)r * n_out + o] = acc;
    }
}

// cptr (n_in + 1), row_of, cvalues: the same entries column-major (within a column in row order);
// dy: rows × n_out; gw (n_out × n_in, the model's W layout) += dy₀ᵀ·x.
extern "C" __global__ void __launch_bounds__(SPL_THREADS)
sparse_linear_bwd_w(const long long* __restrict__ cptr, const unsigned* __restrict__ row_of,
                    const float* __restrict__ cvalues, int n_in, const float* __restrict__ dy, int n_out,
                    float* __restrict__ gw) {
    const int c = blockIdx.x * SPL_WARPS + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (c >= n_in) return;
    const long long e0 = cptr[c], e1 = cptr[c + 1];
    for (int o = lane; o < n_out; o += 32) {
        float acc = 0.0f;
        for (long long e = e0; e < e1; ++e) acc += dy[(long long)row_of[e] * n_out + o] * cvalues[e];
        gw[(long long)o * n_in + c] += acc;
    }
}
