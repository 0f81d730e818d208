// The first Linear of an encoder on sparse data (the expression counts, the vanilla splicing encoder's
// PSI): y₀ = x·Wᵀ with x a CSR minibatch (covariates appended as extra entries, as ops::Cov does), and
// its weight gradient dW += dy₀ᵀ·x (no input gradient: the input is data). The bias and the rest of
// FCLayers are kernels/dense_epilogue.cu's.
// CPU twin: splicevi::model::ops::linear_sparse_fwd / linear_sparse_bwd (same algorithm: Wᵀ rows, one
// output row per work item forward, one input column per work item backward).
//   sparse_linear_transpose : Wᵀ (n_in × n_out) from W (n_out × n_in), so a nonzero's weights are one
//                             contiguous row (coalesced across the warp's lanes).
//   sparse_linear_fwd       : one warp per chunk of SPL_CHUNK entries of a cell, lanes over outputs, the
//                             chunk's entries in order; sparse_linear_combine sums a cell's chunks in
//                             order (a cell of at most SPL_CHUNK entries: the twin's bits).
//   sparse_linear_bwd_w     : one warp per input column, its entries (CSC order) in order, adding into
//                             dW (each element owned by one warp: deterministic, no atomics).
// (Never run on a GPU yet: none was available when it was written; its logic is checked on the host
// through kernels/host_emu.h by tests/cuda_sparse_linear_parity.rs.)
#include <cstdint>
#ifndef __CUDACC__
#include "host_emu.h"
#endif
#include "chunks.cuh"

#define SPL_THREADS 128
#define SPL_WARPS (SPL_THREADS / 32)
// Entries per warp of the forward (fixed, so the sums' order never depends on the device;
// tests/cuda_sparse_linear_parity.rs sets a small one).
#ifndef SPL_CHUNK
#define SPL_CHUNK 256
#endif

extern "C" __global__ void __launch_bounds__(SPL_THREADS)
sparse_linear_transpose(const float* __restrict__ w, int n_out, int n_in, float* __restrict__ wt) {
    const long long n = (long long)n_out * n_in;
    for (long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += (long long)gridDim.x * blockDim.x) {
        const long long c = x / n_out, o = x % n_out;  // wt[c][o], written in order
        wt[x] = w[o * n_in + c];
    }
}

// indptr (rows + 1), indices, values: CSR rows; wt: n_in × n_out. One warp per chunk of SPL_CHUNK entries
// of a row (one warp per row left a GPU with B warps for the whole minibatch): its entries in order
// into part (n_chunks × n_out).
extern "C" __global__ void __launch_bounds__(SPL_THREADS)
sparse_linear_fwd(const long long* __restrict__ indptr, const unsigned* __restrict__ indices,
                  const float* __restrict__ values, int rows, int n_chunks, const float* __restrict__ wt, int n_out,
                  float* __restrict__ part) {
    const int c = blockIdx.x * SPL_WARPS + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (c >= n_chunks || rows == 0) return;
    const ChunkRange r = chunk_range(c, indptr, rows, SPL_CHUNK);
    if (r.empty()) return;  // past the row's last chunk
    const long long e0 = r.lo, e1 = r.hi;
    for (int o = lane; o < n_out; o += 32) {
        float acc = 0.0f;
        for (long long e = e0; e < e1; ++e) acc += values[e] * wt[(long long)indices[e] * n_out + o];
        part[(long long)c * n_out + o] = acc;
    }
}

// y (rows × n_out, overwritten) = each row's chunks summed in order: one thread per (row, output).
extern "C" __global__ void __launch_bounds__(SPL_THREADS)
sparse_linear_combine(const float* __restrict__ part, const long long* __restrict__ indptr, int rows, int n_out,
                      float* __restrict__ y) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)rows * n_out) return;
    const int r = (int)(t / n_out), o = (int)(t % n_out);
    const long long base = chunk_base(r, indptr, SPL_CHUNK), nk = (indptr[r + 1] - indptr[r] + SPL_CHUNK - 1) / SPL_CHUNK;
    float v = 0.0f;
    for (long long k = 0; k < nk; ++k) v += part[(base + k) * n_out + o];
    y[t] = v;
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
