// Expression decode + ZINB / NB / Poisson likelihood + gradient, one row per block (design.md §3
// kernel 4; model.md §2.7 a/b, §3.1). THIS KERNEL HAS NEVER RUN ON A GPU: it was written and compiled
// (nvcc 13.0, sm_80/sm_90) on a machine without one; tests/cuda_lik_parity.rs checks it against its CPU
// twin where a GPU exists. No performance numbers exist for it.
//
// CPU twin: splicevi::model::expr_lik::expr_row, which uses lik::{zinb, nb, poisson} (the model's own
// per-entry likelihoods, eps = 1e-8) and the model's chain rule. The formulas below mirror lik.rs.
//
// Per row i (cell), with G genes:
//   rho_g = softplus(raw_g)  or  softmax_g(raw)  (max, exp, f64 sum, divide: vae::softmax_rows)
//   mu_g  = exp(library_i) * rho_g
//   ll_g  = log ZINB(x; mu, theta, pi) | log NB(x; mu, theta) | log Poisson(x; mu)
//   rl[i] = -sum_g ll_g (f64 sum; unmasked), and, with w = grad_weight[i] (1 when null):
//   d_raw = d(w rl_i)/d raw, d_log_theta = d(w rl_i)/d log theta (= dtheta * theta), d_pi = d(w rl_i)/d pi,
//   d_library[i] = d(w rl_i)/d library.
// theta has a row stride (0: one theta per gene shared by all rows, G: per cell); the column sums that
// a per-gene dispersion needs are left to a separate (deterministic) reduction.
// Counts are a CSR row (x_ptr, x_idx, x_val) with strictly ascending gene indices: genes are processed
// in tiles of EXPR_THREADS, the tile's nonzeros are scattered into shared memory (at most EXPR_THREADS
// of them fall in a tile, so thread t takes nonzero lo + t) and every other gene is a zero count,
// handled by the closed-form zero-count branch.
//
// Launch: grid.x = B rows, EXPR_THREADS threads, no dynamic shared memory. Deterministic: no atomics,
// each output written by one thread, fixed-order tree reductions (max: exact; sums: f64).
// All math in f32 (design.md §4: likelihood math in f32), sums over genes in f64.
#include <cstdint>
#ifndef __CUDACC__
#include "host_emu.h"  // host build of this very source (tests/cuda_lik_parity.rs, host_emu_* tests)
#endif
#include "special.cuh"

#define EXPR_THREADS 256

namespace {

// lik: 0 = ZINB, 1 = NB, 2 = Poisson (cuda::expr_lik::lik_code)
constexpr int LIK_ZINB = 0, LIK_NB = 1, LIK_POISSON = 2;
constexpr int ACT_SOFTMAX = 1;  // act: 0 = softplus, 1 = softmax
constexpr float NB_EPS = 1e-8f;  // lik::NB_EPS

__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float softplus_grad(float x) { return x > 20.0f ? 1.0f : sigm(x); }
// lik::lgamma_xp1: lgamma(x + 1), exactly 0 for x == 0.
__device__ __forceinline__ float lgamma_xp1(float x) { return x == 0.0f ? 0.0f : sv::log_gamma(x + 1.0f); }

struct Ll {
    float ll, d_mu, d_theta, d_pi;
};

// lik::nb
__device__ __forceinline__ Ll nb(float x, float mu, float theta) {
    const float tme = theta + mu + NB_EPS;
    const float log_tme = logf(tme);
    const float log_te = logf(theta + NB_EPS);
    Ll r;
    r.ll = theta * (log_te - log_tme) + x * (logf(mu + NB_EPS) - log_tme) + sv::log_gamma(x + theta) -
           sv::log_gamma(theta) - lgamma_xp1(x);
    r.d_mu = x / (mu + NB_EPS) - (theta + x) / tme;
    r.d_theta = log_te - log_tme + theta / (theta + NB_EPS) - (theta + x) / tme + sv::digamma(x + theta) -
                sv::digamma(theta);
    r.d_pi = 0.0f;
    return r;
}

// lik::zinb (pi = zero-inflation logits)
__device__ __forceinline__ Ll zinb(float x, float mu, float theta, float pi) {
    const float sp = softplus(-pi);
    const float sp_g = softplus_grad(-pi);
    const float tme = theta + mu + NB_EPS;
    const float log_tme = logf(tme);
    const float log_te = logf(theta + NB_EPS);
    const float pth = -pi + theta * (log_te - log_tme);
    const float dpth_dtheta = log_te - log_tme + theta / (theta + NB_EPS) - theta / tme;
    const float dpth_dmu = -theta / tme;
    Ll r;
    if (x < NB_EPS) {
        r.ll = softplus(pth) - sp;
        const float s = softplus_grad(pth);
        r.d_mu = s * dpth_dmu;
        r.d_theta = s * dpth_dtheta;
        r.d_pi = -s + sp_g;
    } else if (x > NB_EPS) {
        r.ll = -sp + pth + x * (logf(mu + NB_EPS) - log_tme) + sv::log_gamma(x + theta) - sv::log_gamma(theta) -
               lgamma_xp1(x);
        r.d_mu = dpth_dmu + x / (mu + NB_EPS) - x / tme;
        r.d_theta = dpth_dtheta - x / tme + sv::digamma(x + theta) - sv::digamma(theta);
        r.d_pi = sp_g - 1.0f;
    } else {
        r.ll = 0.0f; r.d_mu = 0.0f; r.d_theta = 0.0f; r.d_pi = 0.0f;
    }
    return r;
}

// lik::poisson (0 * log mu = 0)
__device__ __forceinline__ Ll poisson(float x, float mu) {
    Ll r;
    const float xlogy = x == 0.0f ? 0.0f : x * logf(mu);
    r.ll = xlogy - mu - lgamma_xp1(x);
    r.d_mu = x == 0.0f ? -1.0f : x / mu - 1.0f;
    r.d_theta = 0.0f;
    r.d_pi = 0.0f;
    return r;
}

// Fixed-order tree sum over the block of up to three doubles (all threads get the results).
__device__ __forceinline__ void block_sum3(double& a, double& b, double& c, double (*sh)[EXPR_THREADS]) {
    const int t = threadIdx.x;
    sh[0][t] = a; sh[1][t] = b; sh[2][t] = c;
    __syncthreads();
    for (int s = EXPR_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) {
            sh[0][t] += sh[0][t + s];
            sh[1][t] += sh[1][t + s];
            sh[2][t] += sh[2][t + s];
        }
        __syncthreads();
    }
    a = sh[0][0]; b = sh[1][0]; c = sh[2][0];
    __syncthreads();  // the buffer may be reused right after
}

}  // namespace

extern "C" __global__ void __launch_bounds__(EXPR_THREADS)
expr_lik(const float* __restrict__ raw, const float* __restrict__ pi, const float* __restrict__ theta,
         long long theta_stride, const float* __restrict__ library, const long long* __restrict__ x_ptr,
         const unsigned* __restrict__ x_idx, const float* __restrict__ x_val, const float* __restrict__ grad_weight,
         int G, int lik, int act, float* __restrict__ rl, float* __restrict__ d_raw,
         float* __restrict__ d_log_theta, float* __restrict__ d_pi, float* __restrict__ d_library) {
    __shared__ double sh[3][EXPR_THREADS];
    __shared__ float smax[EXPR_THREADS];
    __shared__ float sx[EXPR_THREADS];
    const int t = threadIdx.x;
    const long long row = blockIdx.x;
    const float* r_raw = raw + row * G;
    const float* r_th = theta ? theta + row * theta_stride : nullptr;
    const float* r_pi = pi ? pi + row * G : nullptr;
    float* o_raw = d_raw + row * G;
    float* o_th = d_log_theta ? d_log_theta + row * G : nullptr;
    float* o_pi = d_pi ? d_pi + row * G : nullptr;
    const float w = grad_weight ? grad_weight[row] : 1.0f;

    // softmax statistics: row max (exact in any order), then the f64 sum of exp(raw - max)
    float mx = 0.0f, s = 1.0f;
    if (act == ACT_SOFTMAX && G > 0) {
        float m = -INFINITY;
        for (int g = t; g < G; g += EXPR_THREADS) m = fmaxf(m, r_raw[g]);
        smax[t] = m;
        __syncthreads();
        for (int k = EXPR_THREADS / 2; k > 0; k >>= 1) {
            if (t < k) smax[t] = fmaxf(smax[t], smax[t + k]);
            __syncthreads();
        }
        mx = smax[0];
        double acc = 0.0, u1 = 0.0, u2 = 0.0;
        for (int g = t; g < G; g += EXPR_THREADS) acc += (double)expf(r_raw[g] - mx);
        block_sum3(acc, u1, u2, sh);
        s = (float)acc;
    }
    const float ls = expf(library[row]);

    double acc_ll = 0.0, acc_lib = 0.0, acc_dot = 0.0;
    long long lo = x_ptr[row];
    const long long hi = x_ptr[row + 1];
    for (int g0 = 0; g0 < G; g0 += EXPR_THREADS) {
        // this tile's counts: zeros, then the nonzeros with index in [g0, g0 + EXPR_THREADS)
        sx[t] = 0.0f;
        __syncthreads();
        const long long e = lo + t;
        const bool in_tile = e < hi && x_idx[e] < (unsigned)(g0 + EXPR_THREADS);
        if (in_tile) sx[x_idx[e] - g0] = x_val[e];
        lo += __syncthreads_count(in_tile);  // also the barrier after the scatter
        const int g = g0 + t;
        if (g < G) {
            const float x = sx[t];
            const float v = r_raw[g];
            const float rho = act == ACT_SOFTMAX ? expf(v - mx) / s : softplus(v);
            const float mu = ls * rho;
            Ll r;
            if (lik == LIK_ZINB) r = zinb(x, mu, r_th[g], r_pi[g]);
            else if (lik == LIK_NB) r = nb(x, mu, r_th[g]);
            else r = poisson(x, mu);
            acc_ll += (double)r.ll;
            const float dmu = -r.d_mu * w;
            acc_lib += (double)(dmu * mu);
            const float drho = dmu * ls;
            if (act == ACT_SOFTMAX) {
                acc_dot += (double)(drho * rho);
                o_raw[g] = drho;  // finished below, once the row's dot product is known
            } else {
                o_raw[g] = drho * softplus_grad(v);
            }
            if (o_th) o_th[g] = lik == LIK_POISSON ? 0.0f : -r.d_theta * w * r_th[g];
            if (o_pi) o_pi[g] = lik == LIK_ZINB ? -r.d_pi * w : 0.0f;
        }
        __syncthreads();  // sx is rewritten by the next tile
    }
    block_sum3(acc_ll, acc_lib, acc_dot, sh);
    if (act == ACT_SOFTMAX) {
        const float dot = (float)acc_dot;
        // each thread rewrites the genes it wrote above (same g = g0 + t), so no barrier is needed
        for (int g = t; g < G; g += EXPR_THREADS) {
            const float rho = expf(r_raw[g] - mx) / s;
            o_raw[g] = rho * (o_raw[g] - dot);
        }
    }
    if (t == 0) {
        rl[row] = (float)(-acc_ll);
        d_library[row] = (float)acc_lib;
    }
}
