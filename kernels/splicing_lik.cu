// Sparse splicing decode + likelihood + gradient in one pass (design.md §3 kernel 3; model.md §2.7 e,
// §3.2-§3.5, §14.2 BCE). THIS KERNEL HAS NEVER RUN ON A GPU: it was written and compiled (nvcc 13.0,
// sm_80/sm_90) on a machine without one; tests/cuda_lik_parity.rs checks it against its CPU twin where
// a GPU exists. No performance numbers exist for it.
//
// CPU twin: splicevi::model::spl_lik::{sparse_logits, AtseGroups, splicing_loss} (the code the CPU model
// itself runs). Every formula, clamp and epsilon below mirrors that file line by line.
//
// Launch: one block of SPL_THREADS threads per chunk of a cell (kernels/chunks.cuh): SPL_GCHUNK ATSE
// groups for the Dirichlet-multinomial (a group's entries stay in one block), SPL_ECHUNK entries for
// the other losses. (One block per cell gave a GPU B blocks for millions of entries: at the paper size
// about 14,000 entries per block, two blocks per SM.) Dynamic shared memory K floats (the cell's decoder
// input row S_i, converted to f32).
//   phase 1 (SDDMM): warp w takes the chunk's entries w, w + nwarps, ... (DM: the entries of its groups,
//            through ord); its lanes sum S_ik * W_jk over k = lane, lane + 32, ... in f32 and reduce with
//            a fixed xor-butterfly; logit = sum + b_j is written to logits[e]. With `dense` (the dense
//            decode: the B × J products S·Wᵀ from a GEMM, for minibatches dense enough that reading a
//            W row per entry costs more than the product) each thread takes its entries' products from
//            it instead: logit = dense[cell][j] + b_j.
//   phase 2 (likelihood): DM: thread t takes the chunk's ATSE groups t, t + SPL_THREADS, ... (groups
//            from AtseGroups: cell_grp, grp_ptr, ord); binomial / beta-binomial / BCE: thread t takes
//            entries. Each thread accumulates its log-likelihood in f64; a fixed-order tree reduction
//            gives the chunk's sum, written once by thread 0 to rl_part[chunk].
//   splicing_lik_rl: one thread per cell: rl = -w * (the cell's chunk sums in order), f64. A cell of one
//            chunk gets the bits one block per cell gave.
// Deterministic: no atomics; every output element is written by exactly one thread, and all reductions
// have a fixed order (the result does not depend on scheduling, only on blockDim, which is fixed).
// Outputs per entry: logits, g_logit = d rl_i / d logit_e, g_conc = the entry's contribution to
// d rl_i / d phi (phi = softplus(log_phi[target]); zero for binomial/BCE), p = the probability used.
// Reducing g_conc into d/d log_phi (a segmented sum by target) and g_logit into dS / dW / db is left to
// other kernels (deterministic segmented reductions).
//
// Rounding: where the CPU twin's result depends on exact cancellation (the softmax backward
// p_t dp_t - sum_u p_u dp_u * dlse_t is exactly 0 for a one-junction ATSE) or on a sum the twin rounds
// term by term, explicitly rounded intrinsics (__fmul_rn / __fadd_rn / __fsub_rn) keep nvcc from
// contracting a*b + c into an FMA, so both sides execute the same f32 operations there.
//
// Operands: S and W in f32 (splicing_lik_f32) or bf16 (splicing_lik_bf16); bias, counts and all
// likelihood math in f32 (design.md §4), sums of log-likelihood terms in f64.
#include <cstdint>
#ifdef __CUDACC__
#include <cuda_bf16.h>
#define SV_DYNAMIC_SMEM(T, name) extern __shared__ T name[]
#else
#include "host_emu.h"  // host build of this very source (tests/cuda_lik_parity.rs, host_emu_* tests)
#endif
#include "special.cuh"

#include "chunks.cuh"

#define SPL_THREADS 128
// Items per block (fixed, so the summation order never depends on the device; tests/cuda_lik_parity.rs
// sets small ones): ATSE groups for the Dirichlet-multinomial, entries otherwise.
#ifndef SPL_GCHUNK
#define SPL_GCHUNK 256
#endif
#ifndef SPL_ECHUNK
#define SPL_ECHUNK 1024
#endif

namespace {

// kind: 0 = Dirichlet-multinomial, 1 = beta-binomial, 2 = binomial, 3 = BCE (cuda::splicing_lik::kind_code)
constexpr int KIND_DM = 0, KIND_BINOMIAL = 2, KIND_BCE = 3;
// conc_mode: 0 = one scalar, 1 = per ATSE (junc2atse[j]), 2 = per junction (cuda::splicing_lik::conc_code)
constexpr int CONC_ATSE = 1, CONC_JUNCTION = 2;
constexpr float DM_Q_EPS = 1e-6f;    // spl_lik::DM_Q_EPS
constexpr float P_EPS = 1e-8f;       // lik::P_EPS (1 - P_EPS rounds to 1 in f32, as on the CPU)

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// real::sigmoid: 1 / (1 + exp(-x)).
__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }
// real::softplus (torch, threshold 20).
__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// lik::clamp_p with bound lo: returns the clamped value, `pass` = inside the bounds.
__device__ __forceinline__ float clamp_lo_hi(float p, float lo, bool& pass) {
    const float hi = 1.0f - lo;
    pass = true;
    if (p < lo) { pass = false; return lo; }
    if (p > hi) { pass = false; return hi; }
    return p;
}

// lik::nbetaln: lgamma(a) + lgamma(n+1) - lgamma(a+n) and its derivative in a (0 when n == 0).
__device__ __forceinline__ void nbetaln(float n, float a, float& l, float& d) {
    if (n == 0.0f) { l = 0.0f; d = 0.0f; return; }
    l = (sv::log_gamma(a) + sv::log_gamma(n + 1.0f)) - sv::log_gamma(a + n);
    d = sv::digamma(a) - sv::digamma(a + n);
}

__device__ __forceinline__ int conc_index(int mode, unsigned j, const unsigned* junc2atse) {
    return mode == CONC_ATSE ? (int)junc2atse[j] : (mode == CONC_JUNCTION ? (int)j : 0);
}

// Phase 2 reads the logits phase 1 wrote (other warps of the block, before a __syncthreads). They are
// loaded with ld.global.cg (L2, coherent) and through a pointer without __restrict__, so the compiler
// can never turn them into non-coherent read-only-cache loads (ld.global.nc), which are only valid for
// data that no thread writes during the kernel.
__device__ __forceinline__ float ld_logit(const float* logits, long long e) { return __ldcg(logits + e); }

// lg_t of spl_lik::dm_group: sigmoid, clamp to [1e-6, 1 - 1e-6], logit.
__device__ __forceinline__ float dm_lg(float logit, float& praw, float& q, bool& qpass) {
    praw = sigm(logit);
    q = clamp_lo_hi(praw, DM_Q_EPS, qpass);
    return logf(q / (1.0f - q));
}

// One ATSE group (entries ord[g0..g1)) of the Dirichlet-multinomial: spl_lik::dm_group. g_logit is used
// as scratch for dp_t between the passes (each entry belongs to this thread only).
__device__ double dm_group(const unsigned* __restrict__ ord, long long g0, long long g1,
                           const float* logits, const float* __restrict__ kc,
                           const float* __restrict__ nc, float c, float w, float lse_eps, float* __restrict__ g_logit,
                           float* __restrict__ g_conc, float* __restrict__ p_out) {
    float praw, q;
    bool qpass;
    // pass 1: logits of the clamped sigmoids, their max (first arg-max, as the CPU's strict >)
    float mx = 0.0f;
    long long amax = g0;
    for (long long t = g0; t < g1; ++t) {
        const float lg = dm_lg(ld_logit(logits, ord[t]), praw, q, qpass);
        if (t == g0 || lg > mx) { mx = lg; amax = t; }
    }
    // pass 2: s = sum exp(lg - mx) in f32, in entry order
    float s = 0.0f;
    for (long long t = g0; t < g1; ++t) s += expf(dm_lg(ld_logit(logits, ord[t]), praw, q, qpass) - mx);
    const float se = s + lse_eps;  // the original's 1e-8 (spl_lik::DM_LSE_EPS), or 0 (dm_exact_softmax)
    const float lse = mx + logf(se);
    // pass 3: p, clamped p, alpha = pc * c, their sum, N = max n
    float s_alpha = 0.0f, big_n = 0.0f;
    for (long long t = g0; t < g1; ++t) {
        const unsigned e = ord[t];
        const float p = expf(dm_lg(ld_logit(logits, e), praw, q, qpass) - lse);
        bool ps;
        const float pc = clamp_lo_hi(p, P_EPS, ps);
        s_alpha = __fadd_rn(s_alpha, __fmul_rn(pc, c));
        big_n = fmaxf(big_n, nc[e]);
    }
    double ll = 0.0;
    float l_atse = 0.0f, d_atse = 0.0f;
    if (big_n > 0.0f) nbetaln(big_n, s_alpha, l_atse, d_atse);
    ll += (double)l_atse;
    // pass 4: junction terms, d rl / d alpha, g_conc, dp (into g_logit), p
    float spdp = 0.0f;
    for (long long t = g0; t < g1; ++t) {
        const unsigned e = ord[t];
        const float p = expf(dm_lg(ld_logit(logits, e), praw, q, qpass) - lse);
        bool pcpass;
        const float pc = clamp_lo_hi(p, P_EPS, pcpass);
        const float alpha = pc * c;
        float lj, dj;
        nbetaln(kc[e], alpha, lj, dj);
        ll -= (double)lj;
        const float dalpha = -w * (d_atse - dj);
        g_conc[e] = dalpha * pc;
        const float dp = pcpass ? dalpha * c : 0.0f;
        g_logit[e] = dp;
        p_out[e] = p;
        spdp = __fadd_rn(spdp, __fmul_rn(p, dp));
    }
    // pass 5: back through the softmax, the clamp and the sigmoid
    const float tail = 1.0f - s / se;
    for (long long t = g0; t < g1; ++t) {
        const unsigned e = ord[t];
        const float lg = dm_lg(ld_logit(logits, e), praw, q, qpass);
        const float ex = expf(lg - mx);
        const float p = expf(lg - lse);
        float dlse = ex / se;
        if (t == amax) dlse += tail;
        const float dlg = __fsub_rn(__fmul_rn(p, g_logit[e]), __fmul_rn(spdp, dlse));
        const float dq = dlg / (q * (1.0f - q));
        const float dpr = qpass ? dq : 0.0f;
        g_logit[e] = dpr * praw * (1.0f - praw);
    }
    return ll;
}

template <typename TW>
__device__ __forceinline__ void splicing_lik_impl(
    const TW* __restrict__ S, int K, const TW* __restrict__ W, const float* __restrict__ bias,
    const long long* __restrict__ indptr, const unsigned* __restrict__ junction,
    const float* __restrict__ kc, const float* __restrict__ nc, const float* __restrict__ psi,
    const long long* __restrict__ cell_grp, const long long* __restrict__ grp_ptr,
    const unsigned* __restrict__ ord, const unsigned* __restrict__ junc2atse,
    const float* __restrict__ log_phi, int kind, int conc_mode, float w, float lse_eps, int B, int n_chunks,
    float* __restrict__ logits, double* __restrict__ rl_part, float* __restrict__ g_logit,
    float* __restrict__ g_conc, float* __restrict__ p_out, const float* __restrict__ dense, int J) {
    SV_DYNAMIC_SMEM(float, s_row);
    __shared__ double red[SPL_THREADS];
    const int chunk = blockIdx.x;
    if (chunk >= n_chunks || B == 0) return;
    // The chunk's items [i0, i1) of its cell: groups (DM) or entries.
    const bool dm = kind == KIND_DM;
    const long long* seg = dm ? cell_grp : indptr;
    const long long ch = dm ? SPL_GCHUNK : SPL_ECHUNK;
    const ChunkRange r = chunk_range(chunk, seg, B, ch);
    if (r.empty()) return;  // past the cell's last chunk (the whole block: no barrier is reached)
    const int cell = r.seg;
    const long long i0 = r.lo, i1 = r.hi;
    const int tid = threadIdx.x;
    // phase 1's entries: [e0, e1) itself, or the positions [e0, e1) of ord (DM)
    const long long e0 = dm ? grp_ptr[i0] : i0, e1 = dm ? grp_ptr[i1] : i1;

    // ---- phase 1: the observed entries' logits (the SDDMM, or the dense decode's products) ----
    if (dense) {
        // The dense decode: the products S·Wᵀ are the B × J GEMM's; read the entries' own, + b_j.
        for (long long t = e0 + tid; t < e1; t += SPL_THREADS) {
            const long long e = dm ? (long long)ord[t] : t;
            const unsigned j = junction[e];
            logits[e] = dense[(long long)cell * J + j] + bias[j];
        }
        __syncthreads();
    } else {
        for (int k = tid; k < K; k += SPL_THREADS) s_row[k] = to_f(S[(long long)cell * K + k]);
        __syncthreads();
        const int lane = tid & 31, warp = tid >> 5;
        for (long long t = e0 + warp; t < e1; t += SPL_THREADS / 32) {
            const long long e = dm ? (long long)ord[t] : t;
            const unsigned j = junction[e];
            const TW* wj = W + (long long)j * K;
            float acc = 0.0f;
            for (int k = lane; k < K; k += 32) acc += s_row[k] * to_f(wj[k]);
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
            if (lane == 0) logits[e] = acc + bias[j];
        }
        __syncthreads();  // the logits (global memory) are visible to the whole block from here
    }

    // ---- phase 2: likelihood and gradients ----
    double ll = 0.0;
    if (dm) {
        for (long long g = i0 + tid; g < i1; g += SPL_THREADS) {
            const long long g0 = grp_ptr[g], g1 = grp_ptr[g + 1];
            const float c = softplus(log_phi[conc_index(conc_mode, junction[ord[g0]], junc2atse)]);
            ll += dm_group(ord, g0, g1, logits, kc, nc, c, w, lse_eps, g_logit, g_conc, p_out);
        }
    } else {
        for (long long e = i0 + tid; e < i1; e += SPL_THREADS) {
            const float praw = sigm(ld_logit(logits, e));
            p_out[e] = praw;
            const float k = kc[e], n = nc[e];
            bool pass;
            const float pc = clamp_lo_hi(praw, P_EPS, pass);
            float l1, dp, gc = 0.0f;
            if (kind == KIND_BINOMIAL) {  // lik::binomial
                l1 = k * logf(pc) + (n - k) * logf(1.0f - pc);
                dp = pass ? k / pc - (n - k) / (1.0f - pc) : 0.0f;
            } else if (kind == KIND_BCE) {  // lik::bce
                const float y = psi[e];
                l1 = y * logf(pc) + (1.0f - y) * logf(1.0f - pc);
                dp = pass ? y / pc - (1.0f - y) / (1.0f - pc) : 0.0f;
            } else {  // kind 1: lik::beta_binomial
                const float phi = softplus(log_phi[conc_index(conc_mode, junction[e], junc2atse)]);
                const float a = pc * phi, b = (1.0f - pc) * phi, nk = n - k;
                l1 = sv::log_gamma(n + 1.0f) - sv::log_gamma(k + 1.0f) - sv::log_gamma(nk + 1.0f) +
                     sv::log_gamma(k + a) + sv::log_gamma(nk + b) - sv::log_gamma(n + a + b) - sv::log_gamma(a) -
                     sv::log_gamma(b) + sv::log_gamma(a + b);
                const float psi_nab = sv::digamma(n + a + b), psi_ab = sv::digamma(a + b);
                const float da = sv::digamma(k + a) - psi_nab - sv::digamma(a) + psi_ab;
                const float db = sv::digamma(nk + b) - psi_nab - sv::digamma(b) + psi_ab;
                dp = pass ? phi * (da - db) : 0.0f;
                gc = -w * __fadd_rn(__fmul_rn(pc, da), __fmul_rn(1.0f - pc, db));
            }
            g_conc[e] = gc;
            ll += (double)l1;
            g_logit[e] = -w * dp * praw * (1.0f - praw);
        }
    }

    // ---- the chunk's log-likelihood: fixed-order tree reduction ----
    red[tid] = ll;
    __syncthreads();
    for (int s = SPL_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) red[tid] += red[tid + s];
        __syncthreads();
    }
    if (tid == 0) rl_part[chunk] = red[0];
}

}  // namespace

#define SPL_ARGS(TW)                                                                                          \
    const TW *__restrict__ S, int K, const TW *__restrict__ W, const float *__restrict__ bias,                \
        const long long *__restrict__ indptr, const unsigned *__restrict__ junction,                          \
        const float *__restrict__ kc, const float *__restrict__ nc, const float *__restrict__ psi,            \
        const long long *__restrict__ cell_grp, const long long *__restrict__ grp_ptr,                        \
        const unsigned *__restrict__ ord, const unsigned *__restrict__ junc2atse,                             \
        const float *__restrict__ log_phi, int kind, int conc_mode, float w, float lse_eps, int B, int n_chunks, \
        float *__restrict__ logits, double *__restrict__ rl_part, float *__restrict__ g_logit,                 \
        float *__restrict__ g_conc, float *__restrict__ p_out, const float *__restrict__ dense, int J
#define SPL_PASS S, K, W, bias, indptr, junction, kc, nc, psi, cell_grp, grp_ptr, ord, junc2atse, log_phi, kind, \
                 conc_mode, w, lse_eps, B, n_chunks, logits, rl_part, g_logit, g_conc, p_out, dense, J

extern "C" __global__ void __launch_bounds__(SPL_THREADS) splicing_lik_f32(SPL_ARGS(float)) {
    splicing_lik_impl<float>(SPL_PASS);
}

extern "C" __global__ void __launch_bounds__(SPL_THREADS) splicing_lik_bf16(SPL_ARGS(__nv_bfloat16)) {
    splicing_lik_impl<__nv_bfloat16>(SPL_PASS);
}

// rl (B) = -w * each cell's chunk sums (rl_part, from the kernels above) in order, one thread per cell.
extern "C" __global__ void __launch_bounds__(SPL_THREADS)
splicing_lik_rl(const double* __restrict__ rl_part, const long long* __restrict__ indptr,
                const long long* __restrict__ cell_grp, int kind, int B, float w, float* __restrict__ rl) {
    const int cell = blockIdx.x * SPL_THREADS + threadIdx.x;
    if (cell >= B) return;
    const bool dm = kind == KIND_DM;
    const long long* seg = dm ? cell_grp : indptr;
    const long long ch = dm ? SPL_GCHUNK : SPL_ECHUNK;
    const long long base = chunk_base(cell, seg, ch), nk = (seg[cell + 1] - seg[cell] + ch - 1) / ch;
    double v = nk > 0 ? rl_part[base] : 0.0;
    for (long long k = 1; k < nk; ++k) v += rl_part[base + k];
    rl[cell] = (float)(-(double)w * v);
}
