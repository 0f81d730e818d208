// The epilogue of one FCLayers block after its GEMM (model.md §2.1), forward and backward, on a B × H
// row-major matrix: + bias → BatchNorm → LayerNorm (no affine) → ReLU / LeakyReLU → dropout.
// The GEMMs (y0 = x·Wᵀ; dW = dy0ᵀ·x and dx = dy0·W in the backward) are cuBLAS's; these kernels are
// what FCLayers adds around them.
//   dense_bn_stats      : per column: batch mean, 1/√(var + ε) and the running-statistics update
//                         (training), or the running statistics' mean and 1/std (evaluation).
//   dense_epilogue_fwd  : one warp per row: bias, BatchNorm, LayerNorm, activation, dropout (the
//                         hash of model::rng::DropStream, so the masks are the CPU's); keeps the
//                         activation input and the LayerNorm 1/std for the backward.
//   dense_epilogue_bwd_rows : one warp per row: dropout, activation and LayerNorm backward → g (B × H).
//   dense_epilogue_bwd_cols : per column: BatchNorm backward (dγ, dβ, dx) and d(bias).
// The two column kernels run a block of EPI_COL_THREADS per strip of 32 columns: each of its
// EPI_ROW_LANES warps sums rows rl, rl + 8, ... of the strip in f64, and a fixed tree adds the lanes
// (col_rows_sum), so the order depends on B alone, never on the device, and no float atomics. (One
// thread per column walking all B rows made a chain of B dependent loads per column: at H = 128 one
// block of latency-bound threads per layer.)
// CPU twin: splicevi::model::dense_epilogue (built from ops::{bn_*, layernorm_fwd, ln_row_bwd, act_*}).
// (Never run on a GPU yet: none was available when it was written; its logic is checked on the host
// through kernels/host_emu.h by tests/cuda_dense_epilogue_parity.rs.)
#include <cstdint>
#ifndef __CUDACC__
#include "host_emu.h"
#endif

#define EPI_THREADS 128
#define EPI_ROWS_PER_BLOCK (EPI_THREADS / 32)
#define EPI_COL_THREADS 256
#define EPI_ROW_LANES (EPI_COL_THREADS / 32)

#define BN_NONE 0
#define BN_BATCH 1
#define BN_RUNNING 2
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_LEAKY 2

#define BN_EPS 1e-3
#define BN_MOMENTUM 0.01
#define LN_EPS 1e-5f
#define LEAKY_SLOPE 0.01f

namespace {

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// model::rng::mix64 / DropStream::keep
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ bool keep(uint64_t key, uint32_t threshold, uint64_t idx) {
    const uint64_t h = mix64(key ^ ((idx >> 2) * 0x9E3779B97F4A7C15ull));
    return (uint32_t)((h >> (16 * (idx & 3))) & 0xFFFF) >= threshold;
}

__device__ __forceinline__ float act_fwd(int act, float v) {
    if (act == ACT_RELU) return v > 0.0f ? v : 0.0f;
    if (act == ACT_LEAKY) return v > 0.0f ? v : v * LEAKY_SLOPE;
    return v;
}
__device__ __forceinline__ float act_grad(int act, float v) {
    if (act == ACT_RELU) return v > 0.0f ? 1.0f : 0.0f;
    if (act == ACT_LEAKY) return v > 0.0f ? 1.0f : LEAKY_SLOPE;
    return 1.0f;
}

// The column's sum over the block's EPI_ROW_LANES row lanes (each thread's `v` is its lane's sum for
// column lane & 31): a fixed tree in shared memory; every thread of the column gets it. All threads of
// the block must call it.
__device__ double col_rows_sum(double v, double* part) {
    const int t = (int)threadIdx.x, rl = t >> 5;
    part[t] = v;
    __syncthreads();
    for (int h = EPI_ROW_LANES / 2; h > 0; h >>= 1) {
        if (rl < h) part[t] += part[t + 32 * h];
        __syncthreads();
    }
    const double total = part[t & 31];
    __syncthreads();  // (part is reused by the next call)
    return total;
}

}  // namespace

// y0: B × H GEMM output; bias: H. training (bn_mode BN_BATCH): mean, inv_std of y0 + bias, and, when
// running_mean_out is given, the updated running statistics (f32, as the buffers are stored);
// BN_RUNNING: mean = running_mean, inv_std = 1/√(running_var + ε).
extern "C" __global__ void __launch_bounds__(EPI_COL_THREADS)
dense_bn_stats(const float* __restrict__ y0, const float* __restrict__ bias, int B, int H, int bn_mode,
               const float* __restrict__ running_mean, const float* __restrict__ running_var,
               float* __restrict__ mean, float* __restrict__ inv_std, float* __restrict__ running_mean_out,
               float* __restrict__ running_var_out) {
    __shared__ double part[EPI_COL_THREADS];
    const int rl = (int)threadIdx.x >> 5, c = blockIdx.x * 32 + ((int)threadIdx.x & 31);
    const bool col = c < H;
    if (bn_mode == BN_RUNNING) {  // (uniform over the block)
        if (rl == 0 && col) {
            mean[c] = running_mean[c];
            inv_std[c] = 1.0f / sqrtf(running_var[c] + (float)BN_EPS);
        }
        return;
    }
    const float bc = col ? bias[c] : 0.0f;
    double m = 0.0;
    if (col)
        for (int r = rl; r < B; r += EPI_ROW_LANES) m += (double)(y0[(long long)r * H + c] + bc);
    m = col_rows_sum(m, part) / (double)B;
    double v = 0.0;
    if (col)
        for (int r = rl; r < B; r += EPI_ROW_LANES) {
            const double d = (double)(y0[(long long)r * H + c] + bc) - m;
            v += d * d;
        }
    v = col_rows_sum(v, part) / (double)B;
    if (rl != 0 || !col) return;
    const float mf = (float)m;
    mean[c] = mf;
    inv_std[c] = (float)(1.0 / sqrt(v + BN_EPS));
    if (running_mean_out) {
        const double unb = (double)B / ((double)B - 1.0);
        running_mean_out[c] = (float)((1.0 - BN_MOMENTUM) * (double)running_mean[c] + BN_MOMENTUM * (double)mf);
        running_var_out[c] = (float)((1.0 - BN_MOMENTUM) * (double)running_var[c] + BN_MOMENTUM * v * unb);
    }
}

// out, pre_act: B × H; ln_inv: B (written when ln). keep_threshold = 0 with dropout_scale = 1: no
// dropout (every element kept). gamma/beta/mean/inv_std: H, read when bn_mode != BN_NONE.
extern "C" __global__ void __launch_bounds__(EPI_THREADS)
dense_epilogue_fwd(const float* __restrict__ y0, const float* __restrict__ bias, int B, int H, int bn_mode,
                   const float* __restrict__ mean, const float* __restrict__ inv_std,
                   const float* __restrict__ gamma, const float* __restrict__ beta, int ln, int act,
                   unsigned long long drop_key, unsigned drop_threshold, float dropout_scale, int dropout,
                   float* __restrict__ out, float* __restrict__ pre_act, float* __restrict__ ln_inv) {
    const int r = blockIdx.x * EPI_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (r >= B) return;
    const long long row = (long long)r * H;
    // bias and BatchNorm; the row is staged in `out`
    float s = 0.0f;
    for (int c = lane; c < H; c += 32) {
        float v = y0[row + c] + bias[c];
        if (bn_mode != BN_NONE) v = (v - mean[c]) * inv_std[c] * gamma[c] + beta[c];
        out[row + c] = v;
        s += v;
    }
    if (ln) {  // as ops::ln_row: mean, centred second moment, 1/√(var + ε)
        const float mu = warp_sum(s) / (float)H;
        float q = 0.0f;
        for (int c = lane; c < H; c += 32) {
            const float d = out[row + c] - mu;
            out[row + c] = d;
            q += d * d;
        }
        const float inv = 1.0f / sqrtf(warp_sum(q) / (float)H + LN_EPS);
        for (int c = lane; c < H; c += 32) out[row + c] *= inv;
        if (lane == 0) ln_inv[r] = inv;
    }
    for (int c = lane; c < H; c += 32) {
        const float a = out[row + c];
        pre_act[row + c] = a;
        float v = act_fwd(act, a);
        if (dropout) v = keep(drop_key, drop_threshold, (uint64_t)(row + c)) ? v * dropout_scale : 0.0f;
        out[row + c] = v;
    }
}

// dout, pre_act: B × H; g (out): d(BatchNorm output), or d(y0 + bias) without BatchNorm.
extern "C" __global__ void __launch_bounds__(EPI_THREADS)
dense_epilogue_bwd_rows(const float* __restrict__ dout, const float* __restrict__ pre_act,
                        const float* __restrict__ ln_inv, int B, int H, int ln, int act,
                        unsigned long long drop_key, unsigned drop_threshold, float dropout_scale, int dropout,
                        float* __restrict__ g) {
    const int r = blockIdx.x * EPI_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    if (r >= B) return;
    const long long row = (long long)r * H;
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < H; c += 32) {
        float d = dout[row + c];
        if (dropout) d = keep(drop_key, drop_threshold, (uint64_t)(row + c)) ? d * dropout_scale : 0.0f;
        const float a = pre_act[row + c];
        d *= act_grad(act, a);
        g[row + c] = d;
        s1 += d;
        s2 += d * a;
    }
    if (!ln) return;
    // ops::ln_row_bwd with x̂ = pre_act: inv·(d − mean(d) − x̂·mean(d·x̂))
    const float m1 = warp_sum(s1) / (float)H, m2 = warp_sum(s2) / (float)H;
    const float inv = ln_inv[r];
    for (int c = lane; c < H; c += 32) g[row + c] = inv * (g[row + c] - m1 - pre_act[row + c] * m2);
}

// g: B × H from dense_epilogue_bwd_rows. dy0 (out): B × H; d_bias: H; d_gamma, d_beta: H (BatchNorm).
// y0, bias, mean, inv_std recompute the BatchNorm x̂.
extern "C" __global__ void __launch_bounds__(EPI_COL_THREADS)
dense_epilogue_bwd_cols(const float* __restrict__ g, const float* __restrict__ y0, const float* __restrict__ bias,
                        int B, int H, int bn_mode, const float* __restrict__ mean,
                        const float* __restrict__ inv_std, const float* __restrict__ gamma,
                        float* __restrict__ dy0, float* __restrict__ d_bias, float* __restrict__ d_gamma,
                        float* __restrict__ d_beta) {
    __shared__ double part[EPI_COL_THREADS];
    const int rl = (int)threadIdx.x >> 5, c = blockIdx.x * 32 + ((int)threadIdx.x & 31);
    const bool col = c < H;
    if (bn_mode == BN_NONE) {  // (uniform over the block)
        double sb = 0.0;
        if (col)
            for (int r = rl; r < B; r += EPI_ROW_LANES) {
                const float d = g[(long long)r * H + c];
                dy0[(long long)r * H + c] = d;
                sb += (double)d;
            }
        sb = col_rows_sum(sb, part);
        if (rl == 0 && col) d_bias[c] = (float)sb;
        return;
    }
    const float m = col ? mean[c] : 0.0f, inv = col ? inv_std[c] : 0.0f, gm = col ? gamma[c] : 0.0f, bc = col ? bias[c] : 0.0f;
    double s1 = 0.0, s2 = 0.0;
    if (col)
        for (int r = rl; r < B; r += EPI_ROW_LANES) {
            const long long k = (long long)r * H + c;
            const float xh = (y0[k] + bc - m) * inv;
            s1 += (double)g[k];
            s2 += (double)g[k] * (double)xh;
        }
    s1 = col_rows_sum(s1, part);
    s2 = col_rows_sum(s2, part);
    const float sdy = (float)s1, sdx = (float)s2, bt = (float)B;
    double sb = 0.0;
    if (col)
        for (int r = rl; r < B; r += EPI_ROW_LANES) {
            const long long k = (long long)r * H + c;
            float dx;
            if (bn_mode == BN_BATCH) {
                const float xh = (y0[k] + bc - m) * inv;
                dx = gm * inv * (g[k] - sdy / bt - xh * sdx / bt);
            } else {
                dx = g[k] * gm * inv;
            }
            dy0[k] = dx;
            sb += (double)dx;
        }
    sb = col_rows_sum(sb, part);
    if (rl != 0 || !col) return;
    d_gamma[c] = sdx;
    d_beta[c] = sdy;
    d_bias[c] = (float)sb;
}
