// The partial splicing encoder's h network run once per group of pairs with the same input, as the CPU
// twin does (splicevi::model::partial, `Groups`): the folded first block of a pair depends only on its
// junction j and its input x (ψ, or ψ − ψ̄_j centred), and not on j at all when x = 0. So the pairs
// of a minibatch fall into groups (group 0: every pair with x = 0; then one group per distinct
// (j, x ≠ 0)), and the Hh-wide work runs once per group:
//   forward : a_g = scale·ReLU(first block) (G × Hh), then y_g = W₄·a_g for every group as one GEMM
//             (the launcher's cuBLAS call), then per pair only what its own dropout mask changes:
//             h2 = y_g + b₄ − Σ over its dropped units k with a_gk > 0 of a_gk·W₄[:,k] (about p·Hh/2
//             units), the LayerNorm, ReLU and pool: D-wide work per pair instead of Hh × D.
//   backward: per pair D-wide: d(code) → d h2, summed per group (S, G × D), with each dropped unit's
//             share taken out of d a_g and of d W₄; then d W₄ += Sᵀ·A and d A = S·W₄ as two GEMMs, and
//             the first block's backward once per group.
// At the paper size (`paper` preset, batch 256) a minibatch's 4.6 M pairs form about 250,000 groups
// (`splicevi bench` prints the count), so the h network's products shrink about 18× against the
// per-pair kernels of kernels/partial.cu.
//
//   pgrp_find      : one warp per junction: each position's group leader (the first position of the
//                    junction with the same input; −1 for input 0), and the junction's leader count.
//   pgrp_ptr       : one block: the leader counts' exclusive prefix (group ids 1.. in junction order,
//                    then first appearance, as the twin numbers them) and the group count.
//   pgrp_assign    : one warp per junction: the group id of every position (junction-major) and pair
//                    (cell-major), each group's junction and input, the positions ordered by group.
//   (the launcher reads the group count back: cuBLAS takes the GEMM's size from the host)
//   pgrp_rows      : one warp per group: its (α, β), a_g and the units with a_gk > 0.
//   pgrp_codes     : one warp per group (after the GEMM): its code without dropped units. A pair that
//                    drops none of the group's positive units ("clean": every pair without dropout,
//                    about half at the paper preset's p = 0.01) has exactly that code, so the forward
//                    adds it, and the backward sums such pairs' d(code) and runs the code's backward
//                    once per group (it is linear in d(code) at a shared x̂).
//   pgrp_pool_fwd  : one warp per chunk of PART_POOL_CHUNK pairs of a cell (the chunks of
//                    partial_pool_fwd): the keep bits (hashed exactly as there), h2, the LayerNorm, ReLU,
//                    the chunk's pooled sum; partial_pool_combine (kernels/partial.cu) finishes the pool.
//   pgrp_pair_bwd  : one warp per junction j ≡ w (mod n_warps), the junction-major walk of
//                    partial_pair_bwd with each junction's pairs by group: per pair d h2, summed into its
//                    group's S row (group 0's into the warp's own partial), the dropped units'
//                    corrections, the warp's b₄, g₅, be₅ sums in its slot.
//   pgrp_zero_sums : one warp per element of group 0's S row and d A row: the warps' partials, in order.
//   pgrp_group_bwd : one warp per junction (the same partition) and one for group 0: d(a1) of each group,
//                    Q_j and the junction's four scalars, the warp's R, be₁, e₁, e₃ in its slot. The
//                    unfold and the parameter sums are then partial.cu's (partial_unfold_du ..
//                    partial_bwd_params), unchanged.
// Deterministic: every partition depends only on the sizes and the minibatch, every sum has a fixed
// order (pairs of a junction in position order, groups of a junction in id order, warps in order), no
// float atomics. Layouts: slots as in kernels/partial.cu ([R | be₁ | W₄ | b₄ | g₅ | be₅], e₁, e₃), warp
// w's at slot w, group 0's at slot n_warps.
// (Never run on a GPU yet: none was available when it was written; its logic is checked on the host
// through kernels/host_emu.h by tests/cuda_partial_parity.rs.)
#include <cstdint>
#ifndef __CUDACC__
#include <cstring>
#include "host_emu.h"
#endif
#include "block_scan.cuh"
#include "chunks.cuh"
#include "partial_common.cuh"

#define PGRP_THREADS 128
// (the same chunks as partial_pool_fwd: partial_pool_combine sums them)
#ifndef PART_POOL_CHUNK
#define PART_POOL_CHUNK 256
#endif
#define PGRP_HPL 8    // hidden units per lane: Hh ≤ 256
#define PGRP_OPL 4    // code units per lane: D ≤ 128
#define PGRP_KW 4     // dropout keep words per pair
#define PGRP_SCAN_THREADS 256

namespace {

__device__ __forceinline__ uint32_t f32_bits(float x) {
#ifdef __CUDACC__
    return __float_as_uint(x);
#else
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return u;
#endif
}

__device__ __forceinline__ int low_bit(uint64_t x) {
#ifdef __CUDACC__
    return __ffsll((long long)x) - 1;
#else
    return __builtin_ctzll(x);
#endif
}

__device__ __forceinline__ float pair_input(const float* psi, const float* center, int e, int j) {
    return center ? psi[e] - center[j] : psi[e];
}

// The keep words of pair e (cell-major id), as partial_pool_fwd's pass_fwd writes them: word w holds
// units 64w .. 64w + 63, bit set when kept. Every lane gets every word (ballots); call convergent.
__device__ __forceinline__ void keep_words_of(uint64_t key, uint32_t threshold, long long e, int Hh, unsigned lane,
                                              uint64_t* words) {
    const int hpl = (Hh + 31) / 32, hh_pad = (Hh + 3) / 4 * 4;
    const KeepGroups kg = keep_groups(key, e, hh_pad, lane);
#pragma unroll
    for (int w = 0; w < PGRP_KW; ++w) words[w] = 0ull;
#pragma unroll
    for (int i = 0; i < PGRP_HPL; ++i) {
        if (i < hpl) {
            const int k = (int)lane + 32 * i;
            const bool kept = keep_of(kg, threshold, lane, i, hpl);
            const uint32_t bits = __ballot_sync(0xffffffffu, k < Hh && kept);
            words[i / 2] |= (uint64_t)bits << (32 * (i & 1));
        }
    }
}

// The units of word w that exist (k < Hh).
__device__ __forceinline__ uint64_t unit_mask(int Hh, int w) {
    const int n = Hh - 64 * w;
    return n >= 64 ? ~0ull : (n <= 0 ? 0ull : ((1ull << n) - 1ull));
}

// The lane's code units t = lane + 32i of a D-vector (zero past D), kept in registers across pairs.
__device__ __forceinline__ void lane_units(const float* __restrict__ v, int D, unsigned lane, float* out) {
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) {
        const int t = (int)lane + 32 * i;
        out[i] = t < D ? v[t] : 0.0f;
    }
}

// y_g + b₄ at the lane's code units t = lane + 32i (zero past D): a pair's h2 before its dropped units,
// loaded once per group by a walk over the group's pairs. b4: the lane's units of b₄ (lane_units).
__device__ __forceinline__ void group_h2(int D, unsigned lane, long long grp, const float* __restrict__ Y,
                                         const float* b4, float* h) {
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) {
        const int t = (int)lane + 32 * i;
        h[i] = t < D ? Y[grp * D + t] + b4[i] : 0.0f;
    }
}

// A pair's h2 from its group's (group_h2's `base`) less its dropped units' shares a_gk·W₄[:,k] for the
// units with a_gk > 0, in ascending k as the twin's pair_h2, then its LayerNorm: x̂ into xh (the lane's
// code units, zero past D); returns 1/σ. `words`: the pair's keep words when dropout acts, else null.
__device__ __forceinline__ float pair_xhat_from(int Hh, int D, unsigned lane, long long grp, const float* __restrict__ A,
                                                const float* __restrict__ w4t, const float* base, const uint64_t* words,
                                                float* xh) {
    float h[PGRP_OPL];
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) h[i] = base[i];
    if (words) {
        const int kw = (Hh + 63) / 64;
        for (int w = 0; w < kw; ++w) {
            uint64_t dropped = ~words[w] & unit_mask(Hh, w);
            while (dropped) {
                const int k = 64 * w + low_bit(dropped);
                dropped &= dropped - 1;
                const float a = A[grp * Hh + k];
                if (a > 0.0f) {
#pragma unroll
                    for (int i = 0; i < PGRP_OPL; ++i) {
                        const int t = (int)lane + 32 * i;
                        if (t < D) h[i] -= a * w4t[(long long)k * D + t];
                    }
                }
            }
        }
    }
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) sum += h[i];
    const float mean = warp_sum(sum) / (float)D;
    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) {
        const int t = (int)lane + 32 * i;
        h[i] = t < D ? h[i] - mean : 0.0f;
        sq += h[i] * h[i];
    }
    const float inv = 1.0f / sqrtf(warp_sum(sq) / (float)D + (float)PART_LN_EPS);
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) xh[i] = h[i] * inv;
    return inv;
}

// group_h2, then pair_xhat_from: one pair on its own (the forward's cell-major walk).
__device__ __forceinline__ float pair_xhat(int Hh, int D, unsigned lane, long long grp, const float* __restrict__ A,
                                           const float* __restrict__ Y, const float* __restrict__ w4t,
                                           const float* b4, const uint64_t* words, float* xh) {
    float base[PGRP_OPL];
    group_h2(D, lane, grp, Y, b4, base);
    return pair_xhat_from(Hh, D, lane, grp, A, w4t, base, words, xh);
}

// Whether a pair of group grp drops none of the units with a_gk > 0 (rpos: the group's, ⌈Hh/64⌉ words):
// its h2 is then y_g + b₄ and its code the group's. Every pair without dropout; about half at p = 0.01
// and Hh = 128. Warp-uniform.
__device__ __forceinline__ bool pair_is_clean(int Hh, long long grp, const uint64_t* __restrict__ rpos,
                                              const uint64_t* words) {
    if (!words) return true;
    const int kw = (Hh + 63) / 64;
    uint64_t hit = 0ull;
    for (int w = 0; w < kw; ++w) hit |= ~words[w] & unit_mask(Hh, w) & rpos[grp * kw + w];
    return hit == 0ull;
}

// The backward of a code = ReLU(x̂·g₅ + be₅), x̂ = LayerNorm(h2), given d(code) `dc` at the lane's code
// units: adds to the g₅, be₅, b₄ sums and returns d h2 in dh. Linear in dc, so the d(code) of pairs
// with the same x̂ may be summed first.
__device__ __forceinline__ void code_bwd(int D, unsigned lane, const float* xh, float inv, const float* dc,
                                         const float* g5r, const float* be5r, float* sg5, float* sbe5, float* sb4,
                                         float* dh) {
    float dx[PGRP_OPL], s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) {
        const int t = (int)lane + 32 * i;
        dx[i] = 0.0f;
        if (t < D) {
            const float a2 = xh[i] * g5r[i] + be5r[i];
            const float da = a2 > 0.0f ? dc[i] : 0.0f;
            sg5[i] += da * xh[i];
            sbe5[i] += da;
            dx[i] = da * g5r[i];
            s1 += dx[i];
            s2 += dx[i] * xh[i];
        }
    }
    const float m1 = warp_sum(s1) / (float)D, m2 = warp_sum(s2) / (float)D;
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) {
        const int t = (int)lane + 32 * i;
        dh[i] = 0.0f;
        if (t < D) {
            dh[i] = inv * (dx[i] - m1 - xh[i] * m2);
            sb4[i] += dh[i];
        }
    }
}

// The index of this warp across the grid.
__device__ __forceinline__ int grid_warp() { return (int)(blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)); }

}  // namespace

// One warp per junction j: the inputs of its positions p (junction-major: pair order[p]) compared 32 at a
// time; lead[p] = the first position of j with the same input bits (p itself for a group's first pair),
// −1 for input 0 (group 0); gcount[j] = the junction's groups.
extern "C" __global__ void __launch_bounds__(PGRP_THREADS)
pgrp_find(const int* __restrict__ jptr, const int* __restrict__ order, const float* __restrict__ psi,
          const float* __restrict__ center, int J, int* __restrict__ lead, int* __restrict__ gcount) {
    const unsigned lane = threadIdx.x & 31;
    const int j = grid_warp();
    if (j >= J) return;
    const int p0 = jptr[j], p1 = jptr[j + 1];
    int leaders = 0;
    for (int base = p0; base < p1; base += 32) {
        const int p = base + (int)lane;
        const bool live = p < p1;
        const float x = live ? pair_input(psi, center, order[p], j) : 0.0f;
        const uint32_t xb = f32_bits(x);
        bool searching = live && x != 0.0f;
        int found = searching ? p : -1;
        // earlier positions (and this chunk's), 32 at a time, until every lane has met its first equal
        for (int qb = p0; qb <= base; qb += 32) {
            if (__ballot_sync(0xffffffffu, searching) == 0u) break;
            const int q = qb + (int)lane;
            const uint32_t qbits = q < p1 ? f32_bits(pair_input(psi, center, order[q], j)) : 0u;
            for (int s = 0; s < 32; ++s) {
                const uint32_t v = (uint32_t)__shfl_sync(0xffffffffu, (uint64_t)qbits, s);
                if (searching && qb + s < p && v == xb) {
                    found = qb + s;
                    searching = false;
                }
            }
        }
        if (live) lead[p] = found;
        leaders += __popc(__ballot_sync(0xffffffffu, live && found == p));
    }
    if (lane == 0) gcount[j] = leaders;
}

namespace {
struct GroupCounts {
    const int* gcount;
    __device__ long long operator()(long long j) const { return gcount[j]; }
};
}  // namespace

// One block: gptr (J + 1) = exclusive prefix of gcount; n_groups[0] = 1 + gptr[J] (group 0 first).
extern "C" __global__ void __launch_bounds__(PGRP_SCAN_THREADS)
pgrp_ptr(const int* __restrict__ gcount, int J, int* __restrict__ gptr, int* __restrict__ n_groups) {
    block_scan<PGRP_SCAN_THREADS>((long long)J, GroupCounts{gcount}, nullptr, gptr);
    if (threadIdx.x == 0) n_groups[0] = 1 + gptr[J];  // (thread 0 wrote gptr[J])
}

// One warp per junction: group ids 1 + gptr[j] + (rank of the leader among the junction's leaders, in
// position order); every position's id (gid_at, junction-major) and pair's (gid_of_pair, cell-major);
// each group's junction and input (group 0's: junction 0 as a stand-in, input 0, by junction 0's warp);
// the junction's positions ordered by (group, position) into sorted, for the backward's walk (a group's
// pairs in a row: its y loaded once, its d h2 summed in registers and written once).
extern "C" __global__ void __launch_bounds__(PGRP_THREADS)
pgrp_assign(const int* __restrict__ jptr, const int* __restrict__ order, const float* __restrict__ psi,
            const float* __restrict__ center, int J, const int* __restrict__ lead, const int* __restrict__ gptr,
            int* __restrict__ gid_at, int* __restrict__ gid_of_pair, int* __restrict__ g_jn,
            float* __restrict__ g_x, int* __restrict__ sorted) {
    const unsigned lane = threadIdx.x & 31;
    const int j = grid_warp();
    if (j >= J) return;
    const int p0 = jptr[j], p1 = jptr[j + 1];
    if (j == 0 && lane == 0) {
        g_jn[0] = 0;
        g_x[0] = 0.0f;
    }
    int next = 1 + gptr[j];
    // the leaders first (a later position's leader may sit in an earlier chunk)
    for (int base = p0; base < p1; base += 32) {
        const int p = base + (int)lane;
        const bool is_lead = p < p1 && lead[p] == p;
        const uint32_t ballot = __ballot_sync(0xffffffffu, is_lead);
        if (is_lead) {
            const int g = next + __popc(ballot & ((1u << lane) - 1u));
            gid_at[p] = g;
            g_jn[g] = j;
            g_x[g] = pair_input(psi, center, order[p], j);
        }
        next += __popc(ballot);
    }
    __syncwarp();
    for (int p = p0 + (int)lane; p < p1; p += 32) {
        const int l = lead[p];
        // (a leader's id is read by other lanes, so only the others' entries are written here)
        const int g = l < 0 ? 0 : gid_at[l];
        if (l != p) gid_at[p] = g;
        gid_of_pair[order[p]] = g;
    }
    __syncwarp();
    // each position's rank by (group, position) among the junction's, 32 against 32 at a time
    for (int base = p0; base < p1; base += 32) {
        const int p = base + (int)lane;
        const bool live = p < p1;
        const int gp = live ? gid_at[p] : 0;
        int rank = 0;
        for (int qb = p0; qb < p1; qb += 32) {
            const int q = qb + (int)lane;
            const int gq = q < p1 ? gid_at[q] : 0;
            for (int s = 0; s < 32; ++s) {
                const int v = (int)(int64_t)__shfl_sync(0xffffffffu, (uint64_t)(int64_t)gq, s);
                if (qb + s < p1 && (v < gp || (v == gp && qb + s < p))) ++rank;
            }
        }
        if (live) sorted[p0 + rank] = p;
    }
}

// One warp per group g < G: (α, β) of its input at its junction (the folded first LayerNorm) into g_ab,
// a_g = scale·ReLU(α·(g₁⊙ũ_j) + β·(g₁⊙b̃) + be₁) into A (G × Hh), and the units with a_gk > 0 into rpos
// (G × ⌈Hh/64⌉ words). Group 0 (α = 0) reads no junction.
extern "C" __global__ void __launch_bounds__(PGRP_THREADS)
pgrp_rows(int G, int Hh, const int* __restrict__ g_jn, const float* __restrict__ g_x, const float* __restrict__ ug,
          const float* __restrict__ bg, const float* __restrict__ be1, const double* __restrict__ suu,
          const double* __restrict__ sub, const double* __restrict__ sbb, float scale, double* __restrict__ g_ab,
          float* __restrict__ A, unsigned long long* __restrict__ rpos) {
    const unsigned lane = threadIdx.x & 31;
    const int g = grid_warp();
    if (g >= G) return;
    const int j = g_jn[g];
    double alpha, beta;
    fold_ab((double)g_x[g], j, suu, sub, sbb, alpha, beta);
    if (lane == 0) {
        g_ab[2 * (long long)g] = alpha;
        g_ab[2 * (long long)g + 1] = beta;
    }
    const float a = (float)alpha, b = (float)beta;
    const int hpl = (Hh + 31) / 32, kw = (Hh + 63) / 64;
    uint64_t words[PGRP_KW] = {0ull, 0ull, 0ull, 0ull};
    for (int i = 0; i < hpl; ++i) {
        const int k = (int)lane + 32 * i;
        bool pos = false;
        if (k < Hh) {
            const float base = b * bg[k] + be1[k];
            const float v = alpha == 0.0 ? base : a * ug[(long long)j * Hh + k] + base;
            A[(long long)g * Hh + k] = v > 0.0f ? v * scale : 0.0f;
            pos = v > 0.0f;
        }
        words[i / 2] |= (uint64_t)__ballot_sync(0xffffffffu, pos) << (32 * (i & 1));
    }
    if (lane == 0)
        for (int w = 0; w < kw; ++w) rpos[(long long)g * kw + w] = words[w];
}

// One warp per group g < G: its code without dropped units, ReLU(LayerNorm(y_g + b₄)·g₅ + be₅), into
// code (G × D): every clean pair's (pair_is_clean).
extern "C" __global__ void __launch_bounds__(PGRP_THREADS)
pgrp_codes(int G, int Hh, int D, const float* __restrict__ Y, const float* __restrict__ b4, const float* __restrict__ g5,
           const float* __restrict__ be5, float* __restrict__ code) {
    const unsigned lane = threadIdx.x & 31;
    const int g = grid_warp();
    if (g >= G) return;
    float b4r[PGRP_OPL], base[PGRP_OPL], xh[PGRP_OPL];
    lane_units(b4, D, lane, b4r);
    group_h2(D, lane, g, Y, b4r, base);
    pair_xhat_from(Hh, D, lane, g, nullptr, nullptr, base, nullptr, xh);
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) {
        const int t = (int)lane + 32 * i;
        if (t < D) {
            const float a2 = xh[i] * g5[t] + be5[t];
            code[(long long)g * D + t] = a2 > 0.0f ? a2 : 0.0f;
        }
    }
}

// One warp per chunk of PART_POOL_CHUNK pairs of a cell (partial_pool_fwd's chunk ids): each pair's keep
// bits (written to keep, nnz × ⌈Hh/64⌉, when dropout acts); its code, the group's (pgrp_codes) for a
// clean pair, else from h2 = its group's y (Y = A·W₄ᵀ, G × D) less its dropped units, the LayerNorm,
// affine and ReLU; summed in pair order into part[chunk] (D).
extern "C" __global__ void __launch_bounds__(PGRP_THREADS)
pgrp_pool_fwd(int Hh, int D, int B, int n_chunks, const int* __restrict__ indptr, const int* __restrict__ gid_of_pair,
              const float* __restrict__ A, const unsigned long long* __restrict__ rpos, const float* __restrict__ code,
              const float* __restrict__ Y, const float* __restrict__ w4t,
              const float* __restrict__ b4, const float* __restrict__ g5, const float* __restrict__ be5, int dropout,
              unsigned long long drop_key, unsigned drop_threshold, float* __restrict__ part,
              unsigned long long* __restrict__ keep) {
    const unsigned lane = threadIdx.x & 31;
    const int c = grid_warp();
    if (c >= n_chunks) return;
    const ChunkRange r = chunk_range(c, indptr, B, PART_POOL_CHUNK);
    if (r.empty()) return;  // past the cell's last chunk
    const int e0 = (int)r.lo, e1 = (int)r.hi;
    const int kw = (Hh + 63) / 64;
    float acc[PGRP_OPL], b4r[PGRP_OPL], g5r[PGRP_OPL], be5r[PGRP_OPL];
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) acc[i] = 0.0f;
    lane_units(b4, D, lane, b4r);
    lane_units(g5, D, lane, g5r);
    lane_units(be5, D, lane, be5r);
    for (int e = e0; e < e1; ++e) {
        const long long grp = gid_of_pair[e];
        uint64_t words[PGRP_KW];
        if (dropout) {
            keep_words_of(drop_key, drop_threshold, e, Hh, lane, words);
            if (lane == 0)
                for (int w = 0; w < kw; ++w) keep[(long long)e * kw + w] = words[w];
        }
        if (pair_is_clean(Hh, grp, (const uint64_t*)rpos, dropout ? words : nullptr)) {
#pragma unroll
            for (int i = 0; i < PGRP_OPL; ++i) {
                const int t = (int)lane + 32 * i;
                if (t < D) acc[i] += code[grp * D + t];
            }
            continue;
        }
        float xh[PGRP_OPL];
        pair_xhat(Hh, D, lane, grp, A, Y, w4t, b4r, words, xh);
#pragma unroll
        for (int i = 0; i < PGRP_OPL; ++i) {
            const int t = (int)lane + 32 * i;
            if (t < D) {
                const float a2 = xh[i] * g5r[i] + be5r[i];
                acc[i] += a2 > 0.0f ? a2 : 0.0f;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) {
        const int t = (int)lane + 32 * i;
        if (t < D) part[(long long)c * D + t] = acc[i];
    }
}

namespace {
// A pair's d h2 into its group's sum: group 0's (s0) runs over all of the warp's junctions, another
// group's (sacc) over its run of one junction's positions only.
__device__ __forceinline__ void add_to_group_sum(long long grp, const float* dh, float* s0, float* sacc) {
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) {
        if (grp == 0) s0[i] += dh[i];
        else sacc[i] += dh[i];
    }
}

// The end of group cur's run in pgrp_pair_bwd: its n_clean clean pairs' summed d(code) (dsum) through
// one code backward at the group's x̂ (from base = y_g + b₄), added to the group's d h2 sum (s0 for group
// 0, else sacc), then the group's S row written (not group 0's).
__device__ __forceinline__ void finish_group(int Hh, int D, unsigned lane, long long cur, int n_clean, const float* base,
                                             const float* dsum, const float* g5r, const float* be5r, float* sg5,
                                             float* sbe5, float* sb4, float* s0, float* sacc, float* __restrict__ S) {
    if (n_clean > 0) {
        float xh[PGRP_OPL], dh[PGRP_OPL];
        const float inv = pair_xhat_from(Hh, D, lane, cur, nullptr, nullptr, base, nullptr, xh);
        code_bwd(D, lane, xh, inv, dsum, g5r, be5r, sg5, sbe5, sb4, dh);
        add_to_group_sum(cur, dh, s0, sacc);
    }
    if (cur > 0)
#pragma unroll
        for (int i = 0; i < PGRP_OPL; ++i)
            if ((int)lane + 32 * i < D) S[cur * D + lane + 32 * i] = sacc[i];
}
}  // namespace

// One warp w < n_warps per junction j ≡ w (mod n_warps), the junction's positions by (group, position)
// (pgrp_assign's sorted): each pair's h2 and LayerNorm recomputed (y_g loaded once per group, keep bits
// from the forward), d(code) = dps[cell] (d(pool) ÷ the cell's divisor, partial_dpool_scale) back
// through ReLU, affine and LayerNorm to d h2, summed over the group's pairs in registers and written to
// its S row (G × D) once; group 0's to the warp's partial g0part[w] = [Σ d h2 (D) | Σ corrections (Hh)].
// A clean pair (pair_is_clean: its code is the group's) only adds its d(code) to the group's sum, which
// goes through the code backward once per group (finish_group): linear in d(code) at a shared x̂.
// With dropout the junction's groups' d A rows are zeroed first by this warp. For each dropped unit k with a_gk > 0:
// ⟨W₄[:,k], d h2⟩ taken from d A[g,k] (group 0: added to the partial, negated later) and a_gk·d h2 from
// the warp's slot's d W₄ (the GEMM Sᵀ·A counts every unit as kept). The slot's b₄, g₅, be₅ sums too.
extern "C" __global__ void __launch_bounds__(PGRP_THREADS)
pgrp_pair_bwd(int Hh, int D, int J, int n_warps, const int* __restrict__ jptr, const int* __restrict__ order,
              const int* __restrict__ cell_of, const int* __restrict__ gid_at, const int* __restrict__ sorted,
              const int* __restrict__ gptr, const float* __restrict__ A, const unsigned long long* __restrict__ rpos,
              const float* __restrict__ Y, const float* __restrict__ w4t,
              const float* __restrict__ b4, const float* __restrict__ g5, const float* __restrict__ be5,
              const float* __restrict__ dps, int dropout, const unsigned long long* __restrict__ keep,
              float* __restrict__ S, float* __restrict__ dA, float* __restrict__ slots, float* __restrict__ g0part) {
    const unsigned lane = threadIdx.x & 31;
    const int w = grid_warp();
    if (w >= n_warps) return;
    const long long SL = 2LL * Hh + (long long)D * Hh + 3LL * D;
    float* slot = slots + w * SL;
    float* sw4 = slot + 2 * Hh;  // D × Hh
    float* g0 = g0part + (long long)w * (D + Hh);
    for (long long x = lane; x < (long long)D * Hh; x += 32) sw4[x] = 0.0f;
    for (int x = (int)lane; x < Hh; x += 32) g0[D + x] = 0.0f;
    const int kw = (Hh + 63) / 64;
    float sb4[PGRP_OPL], sg5[PGRP_OPL], sbe5[PGRP_OPL], s0[PGRP_OPL], b4r[PGRP_OPL], g5r[PGRP_OPL], be5r[PGRP_OPL];
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) sb4[i] = sg5[i] = sbe5[i] = s0[i] = 0.0f;
    lane_units(b4, D, lane, b4r);
    lane_units(g5, D, lane, g5r);
    lane_units(be5, D, lane, be5r);
    for (int j = w; j < J; j += n_warps) {
        if (dropout) {
            // (the dropped units' corrections are added to d A's rows; without dropout the GEMM writes them)
            const long long g_lo = 1 + gptr[j], g_hi = 1 + gptr[j + 1];
            for (long long x = g_lo * Hh + lane; x < g_hi * Hh; x += 32) dA[x] = 0.0f;
        }
        __syncwarp();
        // the junction's positions by (group, position): group 0's first, then each group's in a row
        long long cur = -1;
        int n_clean = 0;
        float base[PGRP_OPL], sacc[PGRP_OPL], dsum[PGRP_OPL];
        for (int q = jptr[j]; q < jptr[j + 1]; ++q) {
            const int p = sorted[q];
            const int e = order[p], cell = cell_of[e];
            const long long grp = gid_at[p];
            if (grp != cur) {
                if (cur >= 0) finish_group(Hh, D, lane, cur, n_clean, base, dsum, g5r, be5r, sg5, sbe5, sb4, s0, sacc, S);
                cur = grp;
                group_h2(D, lane, grp, Y, b4r, base);
                n_clean = 0;
#pragma unroll
                for (int i = 0; i < PGRP_OPL; ++i) sacc[i] = dsum[i] = 0.0f;
            }
            uint64_t words[PGRP_KW];
            if (dropout)
                for (int x = 0; x < kw; ++x) words[x] = keep[(long long)e * kw + x];
            float dc[PGRP_OPL];
            lane_units(dps + (long long)cell * D, D, lane, dc);
            if (pair_is_clean(Hh, grp, (const uint64_t*)rpos, dropout ? words : nullptr)) {
                // the group's code: its d(code) joins the group's one backward (finish_group)
#pragma unroll
                for (int i = 0; i < PGRP_OPL; ++i) dsum[i] += dc[i];
                ++n_clean;
                continue;
            }
            float xh[PGRP_OPL], dh[PGRP_OPL];
            const float inv = pair_xhat_from(Hh, D, lane, grp, A, w4t, base, words, xh);
            code_bwd(D, lane, xh, inv, dc, g5r, be5r, sg5, sbe5, sb4, dh);
            add_to_group_sum(grp, dh, s0, sacc);
            // (a pair that is not clean drops units: dropout acts)
            for (int x = 0; x < kw; ++x) {
                uint64_t dropped = ~words[x] & unit_mask(Hh, x);
                while (dropped) {
                    const int k = 64 * x + low_bit(dropped);
                    dropped &= dropped - 1;
                    const float a = A[grp * Hh + k];
                    if (!(a > 0.0f)) continue;
                    float pr = 0.0f;
#pragma unroll
                    for (int i = 0; i < PGRP_OPL; ++i) {
                        const int t = (int)lane + 32 * i;
                        if (t < D) {
                            pr += w4t[(long long)k * D + t] * dh[i];
                            sw4[(long long)t * Hh + k] -= a * dh[i];
                        }
                    }
                    pr = warp_sum(pr);
                    if (lane == 0) {
                        if (grp == 0) g0[D + k] += pr;
                        else dA[grp * Hh + k] -= pr;
                    }
                }
            }
        }
        if (cur >= 0) finish_group(Hh, D, lane, cur, n_clean, base, dsum, g5r, be5r, sg5, sbe5, sb4, s0, sacc, S);
    }
    // the slot's [b₄ | g₅ | be₅] (R, be₁ and e₁, e₃ are pgrp_group_bwd's), group 0's Σ d h2
    float* tail = slot + 2 * Hh + (long long)D * Hh;
#pragma unroll
    for (int i = 0; i < PGRP_OPL; ++i) {
        const int t = (int)lane + 32 * i;
        if (t < D) {
            tail[t] = sb4[i];
            tail[D + t] = sg5[i];
            tail[2 * D + t] = sbe5[i];
            g0[t] = s0[i];
        }
    }
}

// One warp per element x of group 0's rows: the n_warps partials g0part[w][x] summed in warp order (f64,
// lanes over warps, then a fixed tree): S[0][x] for x < D, d A[0][x − D] = −(the corrections) after.
extern "C" __global__ void __launch_bounds__(PGRP_THREADS)
pgrp_zero_sums(int Hh, int D, int n_warps, const float* __restrict__ g0part, float* __restrict__ S,
               float* __restrict__ dA) {
    const unsigned lane = threadIdx.x & 31;
    const int x = grid_warp();
    if (x >= D + Hh) return;
    double v = 0.0;
    for (int w = (int)lane; w < n_warps; w += 32) v += (double)g0part[(long long)w * (D + Hh) + x];
    v = warp_sum_d(v);
    if (lane == 0) {
        if (x < D) S[x] = (float)v;
        else dA[x - D] = (float)-v;
    }
}

namespace {
// One group's first-block backward (the twin's groups_bwd for one group): d(a1) = d A·scale where
// a_g > 0, its sums (be₁: sbe1, R: Σ β·d(a1), the junction's Q: Σ α·d(a1)) and the LayerNorm
// backward's means into the junction's four scalars c and e₁, e₃. u: g₁⊙ũ_j (g₁⊙b̃ for group 0).
__device__ __forceinline__ void group_bwd_one(int Hh, unsigned lane, long long g, double alpha, double beta,
                                              double psi, const float* __restrict__ A, const float* __restrict__ dA,
                                              const float* __restrict__ u, const float* __restrict__ bg,
                                              const float* __restrict__ g1, float scale, float* sbe1, float* sr,
                                              float* qa, double* c, double& e1, double& e3) {
    const float a = (float)alpha, b = (float)beta;
    float p1 = 0.0f, pu = 0.0f, pb = 0.0f;
#pragma unroll
    for (int i = 0; i < PGRP_HPL; ++i) {
        const int k = (int)lane + 32 * i;
        if (k < Hh) {
            const float d = A[g * Hh + k] > 0.0f ? dA[g * Hh + k] * scale : 0.0f;
            sbe1[i] += d;
            sr[i] += b * d;
            qa[i] += a * d;
            p1 += d * g1[k];
            pu += d * u[k];
            pb += d * bg[k];
        }
    }
    const double inv_h = 1.0 / (double)Hh;
    const double m1 = (double)warp_sum(p1) * inv_h;
    const double m2 = (alpha * (double)warp_sum(pu) + beta * (double)warp_sum(pb)) * inv_h;
    c[0] += psi * beta * m1;
    c[1] += psi * beta * m2 * alpha;
    c[2] += psi * beta * m2 * beta;
    c[3] += beta * m2 * alpha;
    e1 += beta * m1;
    e3 += beta * m2 * beta;
}
}  // namespace

// Warps w < n_warps: the junctions j ≡ w (mod n_warps), each one's groups in id order: Q_j (q, J × Hh)
// and its four scalars (cj, J × 4) written for every junction (zero without groups), and the warp's
// R, be₁ (slot w) and e₁, e₃ (slot_d). Warp n_warps: group 0 (α = 0: no junction's sums), into slot
// n_warps, whose d W₄, b₄, g₅, be₅ it zeroes (group 0's pairs are in the walk's slots and in S).
extern "C" __global__ void __launch_bounds__(PGRP_THREADS)
pgrp_group_bwd(int Hh, int D, int J, int n_warps, const int* __restrict__ gptr, const float* __restrict__ g_x,
               const double* __restrict__ g_ab, const float* __restrict__ A, const float* __restrict__ dA,
               const float* __restrict__ ug, const float* __restrict__ bg, const float* __restrict__ g1, float scale,
               float* __restrict__ q, double* __restrict__ cj, float* __restrict__ slots, double* __restrict__ slot_d) {
    const unsigned lane = threadIdx.x & 31;
    const int w = grid_warp();
    if (w > n_warps) return;
    float sr[PGRP_HPL], sbe1[PGRP_HPL];
#pragma unroll
    for (int i = 0; i < PGRP_HPL; ++i) sr[i] = sbe1[i] = 0.0f;
    double e1 = 0.0, e3 = 0.0;
    const long long SL = 2LL * Hh + (long long)D * Hh + 3LL * D;
    float* slot = slots + w * SL;
    if (w < n_warps) {
        for (int j = w; j < J; j += n_warps) {
            float qa[PGRP_HPL];
#pragma unroll
            for (int i = 0; i < PGRP_HPL; ++i) qa[i] = 0.0f;
            double c[4] = {0.0, 0.0, 0.0, 0.0};
            for (long long g = 1 + gptr[j]; g < 1 + gptr[j + 1]; ++g)
                group_bwd_one(Hh, lane, g, g_ab[2 * g], g_ab[2 * g + 1], (double)g_x[g], A, dA, ug + (long long)j * Hh, bg,
                              g1, scale, sbe1, sr, qa, c, e1, e3);
#pragma unroll
            for (int i = 0; i < PGRP_HPL; ++i) {
                const int k = (int)lane + 32 * i;
                if (k < Hh) q[(long long)j * Hh + k] = qa[i];
            }
            if (lane < 4) cj[4 * (long long)j + lane] = c[lane];
        }
    } else {
        float qa[PGRP_HPL];  // (α = ψ = 0: nothing reaches a junction)
#pragma unroll
        for (int i = 0; i < PGRP_HPL; ++i) qa[i] = 0.0f;
        double c[4] = {0.0, 0.0, 0.0, 0.0};
        group_bwd_one(Hh, lane, 0, 0.0, g_ab[1], 0.0, A, dA, bg, bg, g1, scale, sbe1, sr, qa, c, e1, e3);
        for (long long x = lane; x < (long long)D * Hh + 3LL * D; x += 32) slot[2 * Hh + x] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < PGRP_HPL; ++i) {
        const int k = (int)lane + 32 * i;
        if (k < Hh) {
            slot[k] = sr[i];
            slot[Hh + k] = sbe1[i];
        }
    }
    if (lane == 0) {
        slot_d[2 * (long long)w] = e1;
        slot_d[2 * (long long)w + 1] = e3;
    }
}
