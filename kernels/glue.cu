// Small kernels that join the big ones in the CUDA training step (src/cuda/step.rs): strided column
// copies (concatenating covariates, splitting a head's output, taking a gradient's first columns),
// elementwise maps (exp, softplus, their chain-rule products), column sums (bias and dispersion
// gradients), segmented sums and weighted row gathers over the minibatch's observed splicing entries
// (the splicing output layer's gradients and the concentration gradient), and the bf16 rounding of GEMM
// operands.
// THESE KERNELS HAVE NEVER RUN ON A GPU: written and compiled without one; tests/cuda_glue_parity.rs
// runs them under the host emulation (src/cuda/emu.rs) and on a GPU where one exists.
//
// CPU twins: splicevi::cuda::glue::twin (one function per kernel, the same loops in the same order).
// Deterministic: no atomics; every output element is written by one thread (or one warp, whose lane
// sums are combined in a fixed tree); sums over rows or entries run in order, in f64.
#include <cstdint>
#ifndef __CUDACC__
#include "host_emu.h"
#endif
#include "chunks.cuh"
#include "mma.cuh"  // mma_bf16_bits: the one f32 → bf16 rounding of every kernel

#define GLUE_THREADS 256

namespace {

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

// torch.nn.functional.softplus (threshold 20) and its derivative (1 above the threshold).
__device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float softplus_gradf_(float x) { return x > 20.0f ? 1.0f : sigmoidf_(x); }

}  // namespace

// dst[r, c] = alpha * src[r, c] (+ beta * dst[r, c] when beta != 0), r < rows, c < cols; row strides
// ld_src, ld_dst (the caller offsets the pointers to the first column). With beta = 0 dst is not read.
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_copy_cols(const float* __restrict__ src, long long ld_src, float* __restrict__ dst, long long ld_dst, int rows,
               int cols, float alpha, float beta) {
    const long long n = (long long)rows * cols;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += (long long)gridDim.x * blockDim.x) {
        const long long r = t / cols, c = t - r * cols;
        const float v = alpha * src[r * ld_src + c];
        float* d = dst + r * ld_dst + c;
        *d = beta != 0.0f ? v + beta * *d : v;
    }
}

// dst[r, c] = bf16(src[r, c]) for a rows × cols window with row strides ld_src, ld_dst (the GEMM
// operands of --precision bf16).
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_to_bf16(const float* __restrict__ src, long long ld_src, uint16_t* __restrict__ dst, long long ld_dst, int rows,
             int cols) {
    const long long n = (long long)rows * cols;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += (long long)gridDim.x * blockDim.x) {
        const long long r = t / cols, c = t - r * cols;
        dst[r * ld_dst + c] = (uint16_t)mma_bf16_bits(src[r * ld_src + c]);
    }
}

// Elementwise y = f(x[, a]) over n entries:
//   0 EXP            y = exp(x)
//   1 SOFTPLUS_EPS   y = softplus(x) + eps
//   2 MUL            y = x * a
//   3 MUL_SOFTPLUS'  y = x * softplus'(a)
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_map(int op, const float* __restrict__ x, const float* __restrict__ a, float* __restrict__ y, long long n, float eps) {
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += (long long)gridDim.x * blockDim.x) {
        const float v = x[t];
        float r;
        switch (op) {
            case 0: r = expf(v); break;
            case 1: r = softplusf_(v) + eps; break;
            case 2: r = v * a[t]; break;
            case 3: r = v * softplus_gradf_(a[t]); break;
            // LeakyReLU (slope 0.01, as ops::act_fwd) and d · its derivative at a (the library encoder)
            case 4: r = v > 0.0f ? v : v * 0.01f; break;
            default: r = v * (a[t] > 0.0f ? 1.0f : 0.01f); break;
        }
        y[t] = r;
    }
}

// out[c] = alpha * Σ_r x[r * ld + c] (+ beta * out[c] when beta != 0), in f64, in an order fixed by the
// shape alone: a block takes a strip of cw columns (a power of two ≤ 32, from the launcher:
// glue::col_sum_strip); its GLUE_THREADS / cw row lanes sum rows rl, rl + lanes, ... of each column, then a
// fixed tree adds the lanes. (One thread per column walking every row left Σ log φ² over the ATSEs to a
// single thread: a chain of 10⁴ dependent loads per step at the paper size.)
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_col_sum(const float* __restrict__ x, long long ld, int rows, int cols, int cw, float alpha, float beta, float* __restrict__ out) {
    __shared__ double part[GLUE_THREADS];
    const int t = (int)threadIdx.x, cl = t % cw, rl = t / cw, lanes = GLUE_THREADS / cw;
    const int c = blockIdx.x * cw + cl;
    double s = 0.0;
    if (c < cols)
        for (int r = rl; r < rows; r += lanes) s += (double)x[(long long)r * ld + c];
    part[t] = s;
    __syncthreads();
    for (int h = lanes / 2; h > 0; h >>= 1) {
        if (rl < h) part[t] += part[t + h * cw];
        __syncthreads();
    }
    if (rl != 0 || c >= cols) return;
    const float v = alpha * (float)part[t];
    out[c] = beta != 0.0f ? v + beta * out[c] : v;
}

// Segmented sums: out[t] = alpha * f_t * Σ_{m = ptr[t]}^{ptr[t+1]-1} vals[ids[m]] (+ beta * out[t] when
// beta != 0), f_t = softplus'(sg[t]) when sg is given, else 1 (ids null: ids[m] = m). One thread per
// target, its entries in order, in f64.
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_seg_sum(const int* __restrict__ ptr, const int* __restrict__ ids, const float* __restrict__ vals,
             const float* __restrict__ sg, int n_targets, float alpha, float beta, float* __restrict__ out) {
    const int t = blockIdx.x * GLUE_THREADS + threadIdx.x;
    if (t >= n_targets) return;
    double s = 0.0;
    for (int m = ptr[t]; m < ptr[t + 1]; ++m) s += (double)vals[ids ? ids[m] : m];
    float v = alpha * (float)s;
    if (sg) v *= softplus_gradf_(sg[t]);
    out[t] = beta != 0.0f ? v + beta * out[t] : v;
}

// Weighted row gathers: out[t, :] = alpha * Σ_{m = ptr[t]}^{ptr[t+1]-1} w[e] * src[rows_of[e], :]
// (+ beta * out[t, :] when beta != 0), e = ids ? ids[m] : m, rows K wide. One warp per target; each
// lane owns columns lane, lane + 32, ... and sums the entries in order in f64.
//   d(decoder input) of the sparse splicing decode: t = cell, entries in CSR order, rows_of = junction,
//   src = W (J × K); d W: t = junction, ids = the junction-major entry order, rows_of = cell, src = S.
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_gather_rows(const int* __restrict__ ptr, const int* __restrict__ ids, const int* __restrict__ rows_of,
                 const float* __restrict__ w, const float* __restrict__ src, int K, int n_targets, float alpha,
                 float beta, float* __restrict__ out) {
    const int t = blockIdx.x * (GLUE_THREADS / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (t >= n_targets) return;
    const int m0 = ptr[t], m1 = ptr[t + 1];
    for (int c0 = 0; c0 < K; c0 += 32) {
        const int c = c0 + lane;
        double s = 0.0;
        if (c < K) {
            for (int m = m0; m < m1; ++m) {
                const int e = ids ? ids[m] : m;
                s += (double)w[e] * (double)src[(long long)rows_of[e] * K + c];
            }
            const float v = alpha * (float)s;
            float* o = out + (long long)t * K + c;
            *o = beta != 0.0f ? v + beta * *o : v;
        }
    }
}

// glue_gather_rows for long segments (a minibatch's cells, thousands of entries each): one warp per
// chunk of `chunk` entries of a target (ids as kernels/chunks.cuh), each lane's
// columns summed over the chunk's entries in order in f64 into part (n_chunks × K); then
// glue_gather_rows_combine sums each target's chunks in order (f64) and applies α, β as glue_gather_rows.
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_gather_rows_part(const int* __restrict__ ptr, const int* __restrict__ ids, const int* __restrict__ rows_of,
                      const float* __restrict__ w, const float* __restrict__ src, int K, int n_targets, int chunk,
                      int n_chunks, double* __restrict__ part) {
    const int c = blockIdx.x * (GLUE_THREADS / 32) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (c >= n_chunks || n_targets == 0) return;
    const ChunkRange r = chunk_range(c, ptr, n_targets, chunk);
    if (r.empty()) return;  // past the target's last chunk
    const long long m0 = r.lo, m1 = r.hi;
    for (int c0 = 0; c0 < K; c0 += 32) {
        const int col = c0 + lane;
        if (col < K) {
            double s = 0.0;
            for (long long m = m0; m < m1; ++m) {
                const int e = ids ? ids[m] : (int)m;
                s += (double)w[e] * (double)src[(long long)rows_of[e] * K + col];
            }
            part[(long long)c * K + col] = s;
        }
    }
}

extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_gather_rows_combine(const double* __restrict__ part, const int* __restrict__ ptr, int K, int n_targets, int chunk,
                         float alpha, float beta, float* __restrict__ out) {
    const long long x = (long long)blockIdx.x * GLUE_THREADS + threadIdx.x;
    if (x >= (long long)n_targets * K) return;
    const int t = (int)(x / K), col = (int)(x % K);
    const long long base = chunk_base(t, ptr, chunk), nk = ((long long)ptr[t + 1] - ptr[t] + chunk - 1) / chunk;
    double s = 0.0;
    for (long long k = 0; k < nk; ++k) s += part[(base + k) * K + col];
    const float v = alpha * (float)s;
    out[x] = beta != 0.0f ? v + beta * out[x] : v;
}

// Scatter of sparse entries into a dense row-major matrix: out[rows_of[e] · ld + cols[e]] = alpha · vals[e]
// for e < n, one thread per entry (grid-stride). The dense splicing decode's d(logits): a minibatch's
// (cell, junction) entries are distinct, so every element is written by at most one thread (no atomics,
// deterministic); the elements no entry names keep what they held (zero them first).
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_scatter(const int* __restrict__ rows_of, const int* __restrict__ cols, const float* __restrict__ vals,
             long long n, long long ld, float alpha, float* __restrict__ out) {
    for (long long e = (long long)blockIdx.x * GLUE_THREADS + threadIdx.x; e < n; e += (long long)gridDim.x * GLUE_THREADS)
        out[(long long)rows_of[e] * ld + cols[e]] = alpha * vals[e];
}

// glue_scatter into bf16: out[rows_of[e] · ld + cols[e]] = bf16(alpha · vals[e]), rounded to nearest even
// as glue_to_bf16 rounds. The dense splicing decode's d(logits) in --precision bf16, scattered straight
// into the bf16 operand of its two GEMMs: the bits of scattering in f32 and converting, with half the
// bytes and no conversion pass over the B × J matrix.
extern "C" __global__ void __launch_bounds__(GLUE_THREADS)
glue_scatter_bf16(const int* __restrict__ rows_of, const int* __restrict__ cols, const float* __restrict__ vals,
                  long long n, long long ld, float alpha, uint16_t* __restrict__ out) {
    for (long long e = (long long)blockIdx.x * GLUE_THREADS + threadIdx.x; e < n; e += (long long)gridDim.x * GLUE_THREADS)
        out[(long long)rows_of[e] * ld + cols[e]] = (uint16_t)mma_bf16_bits(alpha * vals[e]);
}
