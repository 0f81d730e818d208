// The partial splicing encoder's per-pair network and pooling (model.md §2.5 steps 1–6), forward and
// backward, as chunked scatter aggregation over the observed (cell, junction) pairs of a minibatch.
// CPU twin: splicevi::model::partial (partial_forward / partial_backward); the algebra is explained
// there (`Fold`): the first Linear + LayerNorm is folded per junction, so a pair costs two FMAs per
// hidden unit before the second Linear.
// These run the h network once per pair. The step's default is kernels/partial_grouped.cu (once per
// group of pairs with the same input); these run with SPLICEVI_PARTIAL_KERNELS=pairs, and for a
// minibatch whose inputs rarely repeat. The grouped kernels share this file's fold and tail (the
// unfold and the parameter sums, from partial_unfold_du on) and the helpers in partial_common.cuh.
//   partial_transpose_w0: W₀ᵀ, for the fold's coalesced reads.
//   partial_fold_norm   : one warp per junction: F̂_j = e_j/‖e_j‖ (b̃, g₁⊙b̃, s_bb; W₄ᵀ); the launcher's
//                         GEMM F̂·W₀[:,1:]ᵀ, then partial_fold_ln: u_j = W₀[:,0] + W₀[:,1:]·F̂_j and the
//                         folded LayerNorm (ũ_j, g₁⊙ũ_j, s_uu, s_ub).
//   partial_ref_fwd     : one warp: the reference code h(0) (`partial_center_psi`).
//   partial_pool_fwd    : one warp per chunk of PART_POOL_CHUNK pairs of a cell: its pairs through the h
//                         network and into the chunk's share of the cell's pooled code, in pair order;
//                         per-pair activations never leave the warp (only the dropout keep bits, one
//                         bit per hidden unit, for the backward's recompute). (One warp per cell left a
//                         GPU with B warps for millions of pairs.)
//   partial_pool_combine: one thread per (cell, code unit): the chunks in order, centred and divided as
//                         the pool mode says.
//   partial_pair_bwd    : one warp per junction (junction-major walk): recompute each pair, backprop
//                         d(pool) through it; the per-junction sums (Q_j, four scalars) are owned by the
//                         warp, the parameter sums go to the warp's own slot (no atomics).
//   partial_ref_bwd     : one warp: h(0)'s share, into the last slot.
//   partial_unfold_du   : one thread per (chunk of PART_DU_CHUNK junctions, hidden unit): d u_j, and the
//                         chunk's sums over junctions (f64); partial_group_sums sums the chunks by groups.
//                         The launcher runs d F̂ = du·W₀[:,1:] and W₀[:,1:]'s gradient duᵀ·F̂ as cuBLAS
//                         GEMMs; partial_unfold_emb takes d F̂_j → d e_j, one warp per junction.
//   partial_slot_sums   : one thread per (group of PART_GROUP slots, slot element): the slots' sums.
//   partial_bwd_params  : one thread per parameter element: sums the groups in a fixed order (f64) and
//                         adds into the gradient buffers.
//   partial_pool_fwd_tc,
//   partial_pair_bwd_tc : --precision bf16: partial_pool_fwd and partial_pair_bwd with the h network's
//                         products on the tensor cores (kernels/mma.cuh), 16 pairs per pass, same
//                         outputs (their comments say how); the backward's warps take contiguous
//                         junction ranges of equal passes (partial_pass_ptr: one block, their prefix),
//                         and read d(pool) already divided by each cell's pool divisor
//                         (partial_dpool_scale).
// Everything is deterministic: the partition into warps depends only on the sizes and the minibatch's
// pairs per junction, every sum
// has a fixed order, nothing uses float atomics. (The tensor cores' own summation inside one mma is
// fixed on a device but not specified across architectures: bf16 bits may differ between an A100
// and an H100; f32 bits do not.)
//
// Lane layout. A pass processes up to G = 32 / W pairs at once, W = min(Dp, 32) lanes per pair, Dp the
// next power of two ≥ D (D = 16: two pairs per pass; D ≥ 32: one pair, D / 32 code units per lane).
// Lane element e = lane + 32·i (i < OPL) holds code unit t = e % Dp of pass pair g = e / Dp; hidden unit
// k = lane + 32·i (i < HPL) is held by every lane for every pass pair.
// Limits: h_hidden ≤ 256, code_dim ≤ 128 (the launcher checks; the CPU path has none).
// ptxas reports a few bytes of spills for partial_pool_fwd: the IEEE division's slow-path call ABI
// (the pooled sum ÷ the divisor, once per cell), off the per-pair loop.
// (Never run on a GPU yet: none was available when it was written; its logic is checked on the host
// through kernels/host_emu.h by tests/cuda_partial_parity.rs.)
#include <cstdint>
#ifdef __CUDACC__
#define PART_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#else
#include "host_emu.h"
#define PART_SMEM(name) unsigned char* name = emu::dynamic_smem.data()
#endif
#include "block_scan.cuh"
#include "partial_common.cuh"
#include "chunks.cuh"
#include "mma.cuh"

#define PART_THREADS 128
#define PART_HMAX 256
#define PART_DMAX 128
// Pairs per chunk of partial_pool_fwd (one warp per chunk of a cell's pairs; fixed, so the pooled sums'
// order never depends on the device; tests/cuda_partial_parity.rs sets a small one).
#ifndef PART_POOL_CHUNK
#define PART_POOL_CHUNK 256
#endif
// Junctions per thread of partial_unfold_du, and rows per group of partial_group_sums / slots per group
// of partial_slot_sums (fixed: the summation order must not depend on the device;
// tests/cuda_partial_parity.rs sets small ones to span several).
#ifndef PART_DU_CHUNK
#define PART_DU_CHUNK 32
#endif
#ifndef PART_GROUP
#define PART_GROUP 32
#endif
#define HPL_MAX (PART_HMAX / 32)
#define PART_KW_MAX (PART_HMAX / 64)  // u64 dropout keep words per pair
#define OPL_MAX (PART_DMAX / 32)
#define PART_NORM_EPS 1e-8f
// (PART_LN_EPS and POOL_SUM / POOL_MEAN / POOL_FIXED: kernels/partial_common.cuh)
#define DROP_NONE 0
#define DROP_STORE 1
#define DROP_LOAD 2

// Dynamic shared memory per warp of partial_pool_fwd / partial_ref_fwd (bwd = 0) and partial_pair_bwd /
// partial_ref_bwd (bwd = 1); the host emulation harness prints it so the launcher's copy is tested.
__host__ __device__ inline size_t partial_smem_per_warp(int Hh, int D, int bwd) {
    int Dp = 1;
    while (Dp < D) Dp <<= 1;
    const int W = Dp < 32 ? Dp : 32, G = 32 / W;
    size_t floats = (size_t)G * Hh + (size_t)G + (bwd ? (size_t)G * D + (size_t)D * Hh : 0);
    size_t bytes = 16 * (size_t)G + 4 * floats + 4 * 3 * (size_t)G;
    return (bytes + 15) / 16 * 16;
}

namespace {

// Sum over the W lanes of one pass pair (W a power of two ≤ 32).
__device__ __forceinline__ float seg_sum(float v, int W) {
    for (int o = W >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The sum over a quad of lanes (4q .. 4q + 3: one fragment row of an mma tile), in a fixed order.
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v;
}

// The sum over the eight row groups of an mma fragment (lanes l, l + 4, .., l + 28), in a fixed order.
template <class T>
__device__ __forceinline__ T rowgroup_sum(T v) {
    v += __shfl_xor_sync(0xffffffffu, v, 4);
    v += __shfl_xor_sync(0xffffffffu, v, 8);
    v += __shfl_xor_sync(0xffffffffu, v, 16);
    return v;
}

struct Geo {
    int Hh, D, Dp, W, G, HPL, OPL, kw, hh_pad;
};
__device__ __forceinline__ Geo geo(int Hh, int D) {
    Geo g;
    g.Hh = Hh;
    g.D = D;
    g.Dp = 1;
    while (g.Dp < D) g.Dp <<= 1;
    g.W = g.Dp < 32 ? g.Dp : 32;
    g.G = 32 / g.W;
    g.HPL = (Hh + 31) / 32;
    g.OPL = (g.G * g.Dp + 31) / 32;
    g.kw = (Hh + 63) / 64;
    g.hh_pad = (Hh + 3) / 4 * 4;  // dropout index space: pair·Hh_pad + k (4 decisions per hash)
    return g;
}

// A warp's slice of the dynamic shared memory (the launcher's smem_per_warp computes the same size).
struct WarpSmem {
    double* ab;   // G × (α, β)
    float* d1s;   // G × Hh: post-ReLU, post-dropout first block
    float* dh2s;  // G × D: d(second Linear output) (backward)
    float* sw4;   // D × Hh: the warp's d W₄ (backward)
    float* psi;   // G: pass inputs
    int* jn;
    int* pid;
    int* cell;
};
__device__ __forceinline__ WarpSmem warp_smem(unsigned char* base, const Geo& g, int bwd, int warp) {
    unsigned char* p = base + (size_t)warp * partial_smem_per_warp(g.Hh, g.D, bwd);
    WarpSmem s;
    s.ab = (double*)p;
    float* f = (float*)(p + 16 * (size_t)g.G);
    s.d1s = f;
    f += (size_t)g.G * g.Hh;
    s.dh2s = f;
    s.sw4 = f + (bwd ? (size_t)g.G * g.D : 0);
    f = s.sw4 + (bwd ? (size_t)g.D * g.Hh : 0);
    s.psi = f;
    int* i = (int*)(f + g.G);
    s.jn = i;
    s.pid = i + g.G;
    s.cell = i + 2 * g.G;
    return s;
}

// The network's parameters and the fold (read-only in every kernel but the fold's).
struct Net {
    Geo g;
    const float *ug, *bg, *be1, *g1, *w4, *w4t, *b4, *g5, *be5;
    const double *suu, *sub, *sbb;
    uint64_t key;
    uint32_t threshold;
    float scale;  // 1 / (1 − p) when dropout acts, else 1
};

// Per-lane state of one pass after the forward: xhat, a2 of the second LayerNorm, its 1/std.
struct PassAct {
    float xhat[OPL_MAX], a2[OPL_MAX], inv;
};

// Forward of the ng ≤ G pairs staged in s.psi / s.jn / s.pid. drop: DROP_NONE, DROP_STORE (hash the
// decisions and write the keep words of pair s.pid[g]) or DROP_LOAD (read them).
__device__ void pass_fwd(const Net& n, const WarpSmem& s, unsigned lane, int ng, int drop, uint64_t* keep,
                         PassAct& act) {
    const Geo& g = n.g;
    for (int q = 0; q < ng; ++q) {
        const double psi = (double)s.psi[q];
        const int j = s.jn[q];
        double alpha, beta;
        fold_ab(psi, j, n.suu, n.sub, n.sbb, alpha, beta);
        if (lane == 0) {
            s.ab[2 * q] = alpha;
            s.ab[2 * q + 1] = beta;
        }
        const float a = (float)alpha, b = (float)beta;
        const long long p = s.pid[q];
        uint32_t lo = 0;
        KeepGroups kg = {0ull, 0ull};
        if (drop == DROP_STORE) kg = keep_groups(n.key, p, g.hh_pad, lane);
#pragma unroll
        for (int i = 0; i < HPL_MAX; ++i) {
            if (i < g.HPL) {
                const int k = lane + 32 * i;
                bool kept = true;
                const bool kept_h = drop == DROP_STORE ? keep_of(kg, n.threshold, lane, i, g.HPL) : true;
                if (k < g.Hh) {
                    float v = a * n.ug[(long long)j * g.Hh + k] + (b * n.bg[k] + n.be1[k]);
                    v = v > 0.0f ? v : 0.0f;
                    if (drop == DROP_STORE) kept = kept_h;
                    if (drop == DROP_LOAD) kept = (keep[p * g.kw + k / 64] >> (k % 64)) & 1;
                    if (drop != DROP_NONE) v = kept ? v * n.scale : 0.0f;
                    s.d1s[q * g.Hh + k] = v;
                }
                if (drop == DROP_STORE) {
                    const uint32_t bits = __ballot_sync(0xffffffffu, k < g.Hh && kept);
                    if (lane == 0) {
                        if (i & 1)
                            keep[p * g.kw + i / 2] = (uint64_t)lo | ((uint64_t)bits << 32);
                        else
                            lo = bits;
                    }
                }
            }
        }
        if (drop == DROP_STORE && (g.HPL & 1) && lane == 0) keep[p * g.kw + g.HPL / 2] = (uint64_t)lo;
    }
    __syncwarp();
    // Second Linear (+ b₄), LayerNorm over the pair's D units, affine.
    float h[OPL_MAX];
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        h[i] = 0.0f;
        if (i < g.OPL) {
            const int e = lane + 32 * i, q = e / g.Dp, t = e % g.Dp;
            if (q < ng && t < g.D) {
                float acc = 0.0f;
                for (int k = 0; k < g.Hh; ++k) acc += n.w4t[k * g.D + t] * s.d1s[q * g.Hh + k];
                h[i] = acc + n.b4[t];
                sum += h[i];
            }
        }
    }
    const float mean = seg_sum(sum, g.W) / (float)g.D;
    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        if (i < g.OPL) {
            const int e = lane + 32 * i, q = e / g.Dp, t = e % g.Dp;
            if (q < ng && t < g.D) {
                h[i] -= mean;
                sq += h[i] * h[i];
            }
        }
    }
    act.inv = 1.0f / sqrtf(seg_sum(sq, g.W) / (float)g.D + (float)PART_LN_EPS);
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        act.xhat[i] = 0.0f;
        act.a2[i] = 0.0f;
        if (i < g.OPL) {
            const int e = lane + 32 * i, q = e / g.Dp, t = e % g.Dp;
            if (q < ng && t < g.D) {
                act.xhat[i] = h[i] * act.inv;
                act.a2[i] = act.xhat[i] * n.g5[t] + n.be5[t];
            }
        }
    }
}

// Backward accumulators of one warp.
struct Acc {
    float q[HPL_MAX], sbe1[HPL_MAX], sr[HPL_MAX];  // Q_j (this junction), Σ d(a1), Σ β·d(a1)
    float sg5[OPL_MAX], sbe5[OPL_MAX], sb4[OPL_MAX];
    double c[4];  // this junction: Σ ψβm₁, Σ ψβm₂α, Σ ψβm₂β, Σ βm₂α
    double e1, e3;
};

// Backward of the pass whose forward is in s / act, given d(code) of the lane's elements (dc, zero on
// lanes without a pair); accumulates into acc and s.sw4.
__device__ void pass_bwd(const Net& n, const WarpSmem& s, unsigned lane, int ng, const PassAct& act,
                         const float* dc, Acc& acc) {
    const Geo& g = n.g;
    float dx[OPL_MAX];
    float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        dx[i] = 0.0f;
        if (i < g.OPL) {
            const int e = lane + 32 * i, q = e / g.Dp, t = e % g.Dp;
            if (q < ng && t < g.D) {
                const float da = act.a2[i] > 0.0f ? dc[i] : 0.0f;
                acc.sg5[i] += da * act.xhat[i];
                acc.sbe5[i] += da;
                dx[i] = da * n.g5[t];
                s1 += dx[i];
                s2 += dx[i] * act.xhat[i];
            }
        }
    }
    const float m1 = seg_sum(s1, g.W) / (float)g.D, m2 = seg_sum(s2, g.W) / (float)g.D;
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        if (i < g.OPL) {
            const int e = lane + 32 * i, q = e / g.Dp, t = e % g.Dp;
            if (q < ng && t < g.D) {
                const float dh = act.inv * (dx[i] - m1 - act.xhat[i] * m2);
                acc.sb4[i] += dh;
                s.dh2s[q * g.D + t] = dh;
            }
        }
    }
    __syncwarp();
    // W₄ gradient, d(d1) = dh2·W₄, the first block (folded) per pass pair.
    const double inv_h = 1.0 / (double)g.Hh;
    for (int q = 0; q < ng; ++q) {
        const double alpha = s.ab[2 * q], beta = s.ab[2 * q + 1], psi = (double)s.psi[q];
        const float a = (float)alpha, b = (float)beta;
        const int j = s.jn[q];
        float p1 = 0.0f, pu = 0.0f, pb = 0.0f;
#pragma unroll
        for (int i = 0; i < HPL_MAX; ++i) {
            if (i < g.HPL) {
                const int k = lane + 32 * i;
                if (k < g.Hh) {
                    const float d1 = s.d1s[q * g.Hh + k];
                    float dd1 = 0.0f;
                    for (int t = 0; t < g.D; ++t) {
                        const float dh = s.dh2s[q * g.D + t];
                        s.sw4[t * g.Hh + k] += dh * d1;
                        dd1 += dh * n.w4[t * g.Hh + k];
                    }
                    const float da = d1 > 0.0f ? dd1 * n.scale : 0.0f;
                    acc.sbe1[i] += da;
                    acc.sr[i] += b * da;
                    acc.q[i] += a * da;
                    p1 += da * n.g1[k];
                    pu += da * n.ug[(long long)j * g.Hh + k];
                    pb += da * n.bg[k];
                }
            }
        }
        const double m1d = (double)warp_sum(p1) * inv_h;
        const double m2d = (alpha * (double)warp_sum(pu) + beta * (double)warp_sum(pb)) * inv_h;
        acc.c[0] += psi * beta * m1d;
        acc.c[1] += psi * beta * m2d * alpha;
        acc.c[2] += psi * beta * m2d * beta;
        acc.c[3] += beta * m2d * alpha;
        acc.e1 += beta * m1d;
        acc.e3 += beta * m2d * beta;
    }
    __syncwarp();
}

__device__ __forceinline__ void acc_zero(Acc& a) {
#pragma unroll
    for (int i = 0; i < HPL_MAX; ++i) a.q[i] = a.sbe1[i] = a.sr[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) a.sg5[i] = a.sbe5[i] = a.sb4[i] = 0.0f;
    a.c[0] = a.c[1] = a.c[2] = a.c[3] = 0.0;
    a.e1 = a.e3 = 0.0;
}

// Writes the warp's parameter sums to its slot: [R | be1 | W4 | b4 | g5 | be5] floats, (e1, e3).
__device__ void write_slot(const Geo& g, const WarpSmem& s, unsigned lane, Acc& acc, float* slot, double* slot_d) {
    const int Hh = g.Hh, D = g.D;
#pragma unroll
    for (int i = 0; i < HPL_MAX; ++i) {
        if (i < g.HPL) {
            const int k = lane + 32 * i;
            if (k < Hh) {
                slot[k] = acc.sr[i];
                slot[Hh + k] = acc.sbe1[i];
            }
        }
    }
    __syncwarp();
    for (int x = lane; x < D * Hh; x += 32) slot[2 * Hh + x] = s.sw4[x];
    // pass pairs' code-unit sums → group 0 (lanes W, 2W, … apart hold the same unit)
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        if (i < g.OPL) {
            for (int o = g.W; o < 32; o <<= 1) {
                acc.sg5[i] += __shfl_xor_sync(0xffffffffu, acc.sg5[i], o);
                acc.sbe5[i] += __shfl_xor_sync(0xffffffffu, acc.sbe5[i], o);
                acc.sb4[i] += __shfl_xor_sync(0xffffffffu, acc.sb4[i], o);
            }
            const int e = lane + 32 * i;
            if (e < g.Dp && e < D) {
                float* tail = slot + 2 * Hh + D * Hh;
                tail[e] = acc.sb4[i];
                tail[D + e] = acc.sg5[i];
                tail[2 * D + e] = acc.sbe5[i];
            }
        }
    }
    if (lane == 0) {
        slot_d[0] = acc.e1;
        slot_d[1] = acc.e3;
    }
}

__device__ __forceinline__ Net make_net(int Hh, int D, const float* ug, const float* bg, const float* be1,
                                        const float* g1, const float* w4, const float* w4t, const float* b4,
                                        const float* g5, const float* be5, const double* suu, const double* sub,
                                        const double* sbb, unsigned long long key, unsigned threshold, float scale) {
    Net n;
    n.g = geo(Hh, D);
    n.ug = ug;
    n.bg = bg;
    n.be1 = be1;
    n.g1 = g1;
    n.w4 = w4;
    n.w4t = w4t;
    n.b4 = b4;
    n.g5 = g5;
    n.be5 = be5;
    n.suu = suu;
    n.sub = sub;
    n.sbb = sbb;
    n.key = key;
    n.threshold = threshold;
    n.scale = scale;
    return n;
}

}  // namespace

// w0t ((D + 1) × Hh) = W₀ᵀ (W₀: Hh × (D + 1)): its row 0 is W₀[:,0], which partial_fold_ln's lanes
// (hidden units) read at consecutive addresses, and its rows 1..D are W₀[:,1:]ᵀ, contiguous and aligned,
// the B operand of the launcher's GEMMs F̂·W₀[:,1:]ᵀ and du·W₀[:,1:].
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_transpose_w0(const float* __restrict__ w0, int Hh, int D, float* __restrict__ w0t) {
    const long long n = (long long)Hh * (D + 1);
    for (long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x; x < n; x += (long long)gridDim.x * blockDim.x) {
        const long long c = x / Hh, k = x % Hh;  // w0t[c][k], written in order
        w0t[x] = w0[k * (D + 1) + c];
    }
}

// The tensor-core kernels' B fragments of W₄ in bf16 (u32 words; a tile's 32 lanes × 2 words lie
// lane-major, so a warp loads a fragment as 256 consecutive bytes, one uint2 per lane, instead of four
// scattered f32 loads from eight rows and two conversions per mma). First the forward's h1·W₄ᵀ tiles
// (B[k][t] = W₄[t][k]; tile nt·(Hh/16) + ks for nt < D/8, ks < Hh/16), then the backward's dh·W₄ tiles
// (B[t][k] = W₄[t][k]; tile nt·⌈D/16⌉ + ks for nt < Hh/8, ks < ⌈D/16⌉; code units ≥ D zero).
__host__ __device__ inline long long partial_w4frag_fwd_words(int Hh, int D) {
    return 64LL * (D / 8) * (Hh / 16);
}
__host__ __device__ inline long long partial_w4frag_words(int Hh, int D) {
    return partial_w4frag_fwd_words(Hh, D) + 64LL * (Hh / 8) * ((D + 15) / 16);
}

// The fold, in three steps: partial_fold_norm (one warp per junction: F̂_j = e_j / max(‖e_j‖, ε)), the
// launcher's cuBLAS GEMM F̂·W₀[:,1:]ᵀ (J × D · D × Hh, into ut), and partial_fold_ln (one warp per
// junction: u_j = that row + W₀[:,0] and its folded LayerNorm). (One warp per junction computing u_j
// itself issued an L1 load of W₀ᵀ and a shared-memory load per multiply-add: 23 M warp-FMAs, about
// 46 M L1 wavefronts per step at the paper size.)
//
// emb: J × D; b0, g1: Hh; w4: D × Hh. Outputs: fhat (J × D), fnorm (J), bt, bg (Hh), sbb (1) (junction
// 0's warp), w4t (Hh × D), and where w4frag is not null (the tensor-core kernels' runs) W₄'s bf16
// fragments (partial_w4frag_words), these two by every thread, grid-stride.
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_fold_norm(const float* __restrict__ emb, const float* __restrict__ b0, const float* __restrict__ g1,
                  const float* __restrict__ w4, int J, int Hh, int D, float* __restrict__ fhat,
                  float* __restrict__ fnorm, float* __restrict__ bt, float* __restrict__ bg,
                  double* __restrict__ sbb, float* __restrict__ w4t, uint32_t* __restrict__ w4frag,
                  const float* __restrict__ b4, const float* __restrict__ g5, const float* __restrict__ be5,
                  float* __restrict__ lnp) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wpb = blockDim.x >> 5;
    if (lnp) {
        // [g₁ | b₄ | g₅ | be₅] copied into an aligned step buffer for the tensor-core kernels, which read
        // them two units at a time (8-byte loads; the parameters sit at any offset of the flat buffer)
        for (long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x; x < Hh + 3LL * D;
             x += (long long)gridDim.x * blockDim.x) {
            const long long y = x - Hh;
            lnp[x] = y < 0 ? g1[x] : y < D ? b4[y] : y < 2LL * D ? g5[y - D] : be5[y - 2LL * D];
        }
    }
    for (long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x; x < (long long)D * Hh;
         x += (long long)gridDim.x * blockDim.x) {
        const int t = (int)(x / Hh), k = (int)(x % Hh);
        w4t[k * D + t] = w4[x];
    }
    if (w4frag) {
        // Rounded exactly as the kernels rounded W₄ when they read it in f32 (the same values, the same
        // mma_pack_bf16x2), so the products are the same bits.
        const int KS = Hh / 16, KD = (D + 15) / 16;
        const long long nf = partial_w4frag_fwd_words(Hh, D), n_all = partial_w4frag_words(Hh, D);
        for (long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x; x < n_all;
             x += (long long)gridDim.x * blockDim.x) {
            const bool fwd = x < nf;
            const long long y = fwd ? x : x - nf, tile = y >> 6;
            const int word = (int)(y & 1), ln = (int)((y >> 1) & 31), fr = ln >> 2, fq = ln & 3;
            uint32_t v = 0u;
            if (fwd) {
                const int nt = (int)(tile / KS), ks = (int)(tile % KS);
                const float* wr = w4 + (long long)(nt * 8 + fr) * Hh + ks * 16 + 2 * fq + 8 * word;
                v = mma_pack_bf16x2(wr[0], wr[1]);
            } else {
                const int nt = (int)(tile / KD), ks = (int)(tile % KD);
                const int t0 = ks * 16 + 2 * fq + 8 * word, k = nt * 8 + fr;
                if (t0 < D) v = mma_pack_bf16x2(w4[(long long)t0 * Hh + k], w4[(long long)(t0 + 1) * Hh + k]);
            }
            w4frag[x] = v;
        }
    }
    const int j = blockIdx.x * wpb + warp;
    if (j >= J) return;
    const double inv_h = 1.0 / (double)Hh;
    if (j == 0) {  // b̃ = b₀ − mean(b₀), g₁⊙b̃, s_bb
        double bs = 0.0;
        for (int k = lane; k < Hh; k += 32) bs += (double)b0[k];
        const double bmean = warp_sum_d(bs) * inv_h;
        double bb = 0.0;
        for (int k = lane; k < Hh; k += 32) {
            const float b = (float)((double)b0[k] - bmean);
            bb += (double)b * (double)b;
            bt[k] = b;
            bg[k] = b * g1[k];
        }
        bb = warp_sum_d(bb) * inv_h;
        if (lane == 0) sbb[0] = bb;
    }
    // F̂_j
    float ss = 0.0f;
    for (int c = lane; c < D; c += 32) {
        const float v = emb[(long long)j * D + c];
        ss += v * v;
    }
    const float nrm = sqrtf(warp_sum(ss));
    const float den = nrm > PART_NORM_EPS ? nrm : PART_NORM_EPS;
    for (int c = lane; c < D; c += 32) {
        fhat[(long long)j * D + c] = emb[(long long)j * D + c] / den;
    }
    if (lane == 0) fnorm[j] = nrm;
}

// One warp per junction: u_j = (F̂·W₀[:,1:]ᵀ)_j + W₀[:,0] (ut holds the GEMM's row on entry), then the
// folded LayerNorm: ũ_j = u_j − mean(u_j) (into ut), g₁⊙ũ_j (ug), s_uu = mean(ũ_j²), s_ub = mean(ũ_j·b̃)
// (b̃ from partial_fold_norm). w0t: W₀ᵀ ((D + 1) × Hh, partial_transpose_w0), its row 0 W₀[:,0].
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_fold_ln(const float* __restrict__ w0t, const float* __restrict__ bt, const float* __restrict__ g1,
                int J, int Hh, float* __restrict__ ut, float* __restrict__ ug, double* __restrict__ suu,
                double* __restrict__ sub) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int j = blockIdx.x * (int)(blockDim.x >> 5) + (int)warp;
    if (j >= J) return;
    const double inv_h = 1.0 / (double)Hh;
    // u_j, its mean, ũ_j, g₁⊙ũ_j, s_uu, s_ub
    float u[HPL_MAX];
    double us = 0.0;
#pragma unroll
    for (int i = 0; i < HPL_MAX; ++i) {
        const int k = lane + 32 * i;
        u[i] = 0.0f;
        if (k < Hh) {
            u[i] = ut[(long long)j * Hh + k] + w0t[k];
            us += (double)u[i];
        }
    }
    const double umean = warp_sum_d(us) * inv_h;
    double a = 0.0, cb = 0.0;
#pragma unroll
    for (int i = 0; i < HPL_MAX; ++i) {
        const int k = lane + 32 * i;
        if (k < Hh) {
            const float v = (float)((double)u[i] - umean);
            const float b = bt[k];
            ut[(long long)j * Hh + k] = v;
            ug[(long long)j * Hh + k] = v * g1[k];
            a += (double)v * (double)v;
            cb += (double)v * (double)b;
        }
    }
    a = warp_sum_d(a);
    cb = warp_sum_d(cb);
    if (lane == 0) {
        suu[j] = a * inv_h;
        sub[j] = cb * inv_h;
    }
}

// One warp: h(0), the code of a pair with ψ = 0 (no dropout), D values.
extern "C" __global__ void __launch_bounds__(32)
partial_ref_fwd(const float* __restrict__ ug, const float* __restrict__ bg, const float* __restrict__ be1,
                const float* __restrict__ g1, const float* __restrict__ w4, const float* __restrict__ w4t,
                const float* __restrict__ b4, const float* __restrict__ g5, const float* __restrict__ be5,
                const double* __restrict__ suu, const double* __restrict__ sub, const double* __restrict__ sbb,
                int Hh, int D, float* __restrict__ h0) {
    PART_SMEM(smem);
    const unsigned lane = threadIdx.x & 31;
    const Net n = make_net(Hh, D, ug, bg, be1, g1, w4, w4t, b4, g5, be5, suu, sub, sbb, 0, 0, 1.0f);
    const WarpSmem s = warp_smem(smem, n.g, 0, 0);
    if (lane == 0) {
        s.psi[0] = 0.0f;
        s.jn[0] = 0;
        s.pid[0] = 0;
    }
    __syncwarp();
    PassAct act;
    pass_fwd(n, s, lane, 1, DROP_NONE, nullptr, act);
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        const int e = lane + 32 * i;
        if (i < n.g.OPL && e < n.g.Dp && e < D) h0[e] = act.a2[i] > 0.0f ? act.a2[i] : 0.0f;
    }
}

// indptr (B + 1), junction, psi (nnz): the minibatch's observed pairs, cell-major. center (J, or null):
// `partial_center_psi`; h0 (D): its reference code. pool (B × D) out; keep (nnz × ⌈Hh/64⌉) written when
// dropout != 0.
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_pool_fwd(const float* __restrict__ ug, const float* __restrict__ bg, const float* __restrict__ be1,
                 const float* __restrict__ g1, const float* __restrict__ w4, const float* __restrict__ w4t,
                 const float* __restrict__ b4, const float* __restrict__ g5, const float* __restrict__ be5,
                 const double* __restrict__ suu, const double* __restrict__ sub, const double* __restrict__ sbb,
                 int Hh, int D, int B, int n_chunks, const int* __restrict__ indptr, const int* __restrict__ junction,
                 const float* __restrict__ psi, const float* __restrict__ center, int dropout,
                 unsigned long long drop_key, unsigned drop_threshold, float dropout_scale, float* __restrict__ part,
                 unsigned long long* __restrict__ keep) {
    PART_SMEM(smem);
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = blockIdx.x * (blockDim.x >> 5) + warp;
    if (c >= n_chunks) return;
    const ChunkRange r = chunk_range(c, indptr, B, PART_POOL_CHUNK);
    if (r.empty()) return;  // past the cell's last chunk
    const int e0 = (int)r.lo, e1 = (int)r.hi;
    const Net n = make_net(Hh, D, ug, bg, be1, g1, w4, w4t, b4, g5, be5, suu, sub, sbb, drop_key, drop_threshold,
                           dropout ? dropout_scale : 1.0f);
    const Geo& g = n.g;
    const WarpSmem s = warp_smem(smem, g, 0, warp);
    float acc[OPL_MAX];
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) acc[i] = 0.0f;
    for (int p0 = e0; p0 < e1; p0 += g.G) {
        const int ng = e1 - p0 < g.G ? e1 - p0 : g.G;
        if ((int)lane < ng) {
            const int p = p0 + lane, j = junction[p];
            s.psi[lane] = center ? psi[p] - center[j] : psi[p];
            s.jn[lane] = j;
            s.pid[lane] = p;
        }
        __syncwarp();
        PassAct act;
        pass_fwd(n, s, lane, ng, dropout ? DROP_STORE : DROP_NONE, (uint64_t*)keep, act);
#pragma unroll
        for (int i = 0; i < OPL_MAX; ++i) acc[i] += act.a2[i] > 0.0f ? act.a2[i] : 0.0f;
        __syncwarp();
    }
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        if (i < g.OPL) {
            for (int o = g.W; o < 32; o <<= 1) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
            const int e = lane + 32 * i;
            if (e < g.Dp && e < D) part[(long long)c * D + e] = acc[i];
        }
    }
}

// The two tensor-core kernels' forward of a pass (both call these, so the backward recomputes the
// forward's very bits).
// tc_h1_tile: the first block of ng ≤ 16 pairs as pass_fwd computes it (f32), rounded to bf16 into tile
// (16 × Hh, row stride ld; rows ≥ ng zero). Row r: α, β in ab[2r], ab[2r + 1]; junction jn[r] (j0 for
// every row when jn is null); pair id pid[r]. drop: DROP_NONE, DROP_STORE (hash the decisions and write
// the keep words) or DROP_LOAD (read them from row_keep: row r's words at row_keep[PART_KW_MAX·r + w],
// which the caller staged in shared memory with one round of loads for all 16 rows; read from global
// memory row by row, each row's word waited for a separate miss: the pairs are visited junction-major,
// the words were written cell-major).
__device__ void tc_h1_tile(const Net& n, unsigned lane, int ng, const double* ab, const int* jn, int j0,
                           const int* pid, int drop, uint64_t* keep, const uint64_t* row_keep, uint16_t* tile, int ld) {
    const Geo& g = n.g;
    // The lane's b̃·g₁ and be₁ (every row's), and u_j·g₁ too when the rows share junction j0 (the
    // backward): loaded once, not once per row (the tile and keep stores between rows could alias them
    // for the compiler, which then reloads).
    float bgk[HPL_MAX], be1k[HPL_MAX], ugk[HPL_MAX];
#pragma unroll
    for (int i = 0; i < HPL_MAX; ++i) {
        const int k = (int)lane + 32 * i;
        const bool in = i < g.HPL && k < g.Hh;
        bgk[i] = in ? n.bg[k] : 0.0f;
        be1k[i] = in ? n.be1[k] : 0.0f;
        ugk[i] = in && !jn && ng > 0 ? n.ug[(long long)j0 * g.Hh + k] : 0.0f;
    }
    for (int r = 0; r < 16; ++r) {
        const bool live = r < ng;
        const float a = live ? (float)ab[2 * r] : 0.0f, b = live ? (float)ab[2 * r + 1] : 0.0f;
        const int j = live ? (jn ? jn[r] : j0) : 0;
        const long long p = live && drop == DROP_STORE ? pid[r] : 0;
        uint32_t lo = 0;
        const bool hash = drop == DROP_STORE && live;  // (the same for every lane)
        KeepGroups kg = {0ull, 0ull};
        if (hash) kg = keep_groups(n.key, p, g.hh_pad, lane);
#pragma unroll
        for (int i = 0; i < HPL_MAX; ++i) {
            if (i < g.HPL) {
                const int k = (int)lane + 32 * i;
                bool kept = true;
                float v = 0.0f;
                const bool kept_h = hash ? keep_of(kg, n.threshold, lane, i, g.HPL) : true;
                if (live && k < g.Hh) {
                    v = a * (jn ? n.ug[(long long)j * g.Hh + k] : ugk[i]) + (b * bgk[i] + be1k[i]);
                    v = v > 0.0f ? v : 0.0f;
                    if (drop == DROP_STORE) kept = kept_h;
                    if (drop == DROP_LOAD) kept = (row_keep[PART_KW_MAX * r + k / 64] >> (k % 64)) & 1;
                    if (drop != DROP_NONE) v = kept ? v * n.scale : 0.0f;
                }
                if (k < g.Hh) tile[r * ld + k] = (uint16_t)mma_bf16_bits(v);
                if (drop == DROP_STORE && live) {
                    const uint32_t bits = __ballot_sync(0xffffffffu, k < g.Hh && kept);
                    if (lane == 0) {
                        if (i & 1)
                            keep[p * g.kw + i / 2] = (uint64_t)lo | ((uint64_t)bits << 32);
                        else
                            lo = bits;
                    }
                }
            }
        }
        if (drop == DROP_STORE && live && (g.HPL & 1) && lane == 0) keep[p * g.kw + g.HPL / 2] = (uint64_t)lo;
    }
}

// tc_h2_xhat: the second Linear h = tile·W₄ᵀ + b₄ as 16 × 8 × 16 mma tiles (B[k][t] = W₄[t][k], from
// the fold's bf16 fragments w4f: partial_w4frag_fwd_words), then the LayerNorm's x̂ over each pair's D
// units, in the lane's fragment layout: rows gr → h[·][0..1], gr + 8 → h[·][2..3], column nt·8 + 2tq +
// x; a row is held by the quad of lanes 4gr .. 4gr + 3. inv0, inv1: the two rows' 1 / std.
template <int NTMAX>
__device__ __forceinline__ void tc_h2_xhat(const uint16_t* tile, int ld, const uint2* __restrict__ w4f, const float* b4,
                                           int Hh, int D, int gr, int tq, float (&h)[NTMAX][4], float& inv0,
                                           float& inv1) {
    const int lane = 4 * gr + tq, KS = Hh / 16;
    const int NT = D / 8;
#pragma unroll
    for (int nt = 0; nt < NTMAX; ++nt) h[nt][0] = h[nt][1] = h[nt][2] = h[nt][3] = 0.0f;
    for (int ks = 0; ks < Hh / 16; ++ks) {
        const int k0 = ks * 16 + 2 * tq;
        const uint32_t af[4] = {*(const uint32_t*)(tile + gr * ld + k0), *(const uint32_t*)(tile + (gr + 8) * ld + k0),
                                *(const uint32_t*)(tile + gr * ld + k0 + 8), *(const uint32_t*)(tile + (gr + 8) * ld + k0 + 8)};
#pragma unroll
        for (int nt = 0; nt < NTMAX; ++nt) {
            if (nt < NT) {
                const uint2 fr = w4f[(nt * KS + ks) * 32 + lane];
                const uint32_t bf[2] = {fr.x, fr.y};
                mma_m16n8k16_bf16(h[nt], af, bf, h[nt]);
            }
        }
    }
    float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NTMAX; ++nt) {
        if (nt < NT) {
            const float2 b4v = *(const float2*)(b4 + nt * 8 + 2 * tq);  // (b4 aligned: partial_fold_norm's lnp)
#pragma unroll
            for (int x = 0; x < 2; ++x) {
                const float bb = x ? b4v.y : b4v.x;
                h[nt][x] += bb;
                h[nt][2 + x] += bb;
                s0 += h[nt][x];
                s1 += h[nt][2 + x];
            }
        }
    }
    s0 = quad_sum(s0);
    s1 = quad_sum(s1);
    const float mean0 = s0 / (float)D, mean1 = s1 / (float)D;
    float q0 = 0.0f, q1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < NTMAX; ++nt) {
        if (nt < NT) {
#pragma unroll
            for (int x = 0; x < 2; ++x) {
                h[nt][x] -= mean0;
                h[nt][2 + x] -= mean1;
                q0 += h[nt][x] * h[nt][x];
                q1 += h[nt][2 + x] * h[nt][2 + x];
            }
        }
    }
    q0 = quad_sum(q0);
    q1 = quad_sum(q1);
    inv0 = 1.0f / sqrtf(q0 / (float)D + (float)PART_LN_EPS);
    inv1 = 1.0f / sqrtf(q1 / (float)D + (float)PART_LN_EPS);
#pragma unroll
    for (int nt = 0; nt < NTMAX; ++nt) {
        if (nt < NT) {
#pragma unroll
            for (int x = 0; x < 2; ++x) {
                h[nt][x] *= inv0;
                h[nt][2 + x] *= inv1;
            }
        }
    }
}

// Dynamic shared memory per warp of partial_pool_fwd_tc: the bf16 tile of 16 pairs' first-block
// activations (rows padded by 8 so the fragment loads of the 8 rows fall in distinct banks), then α, β
// (f64), junction and pair id of the 16 pairs.
__host__ __device__ inline size_t partial_tc_smem_per_warp(int Hh) {
    const size_t tile = ((size_t)16 * (Hh + 8) * 2 + 15) / 16 * 16;
    return tile + 16 * 16 + 16 * 4 * 2;
}

// partial_pool_fwd on tensor cores, for --precision bf16 (same arguments, same chunks, same part
// layout; the launcher uses it when Hh % 16 == 0 and D % 8 == 0). A pass takes 16 pairs of the chunk:
// their first block exactly as pass_fwd computes it (f32, dropout hashed and its keep bits written
// the same way), rounded to bf16 into a 16 × Hh tile; the second Linear as 16 × D tensor-core tiles
// (A = the tile, B = W₄'s bf16 fragments from partial_fold_norm, f32 accumulation: kernels/mma.cuh); then + b₄,
// the LayerNorm over each pair's D units (a row is held by the four lanes of a quad), the affine, the
// ReLU and the chunk's sum, in f32. Differs from partial_pool_fwd by the bf16 rounding of the two
// operands (relative 2⁻⁹ each) and the summation order. The backward (partial_pair_bwd) recomputes in
// f32 from the same keep bits. (Never run on a GPU: checked on the host by tests/cuda_partial_parity.rs.)
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_pool_fwd_tc(const float* __restrict__ ug, const float* __restrict__ bg, const float* __restrict__ be1,
                    const float* __restrict__ g1, const float* __restrict__ w4, const float* __restrict__ w4t,
                    const float* __restrict__ b4, const float* __restrict__ g5, const float* __restrict__ be5,
                    const double* __restrict__ suu, const double* __restrict__ sub, const double* __restrict__ sbb,
                    int Hh, int D, int B, int n_chunks, const int* __restrict__ indptr, const int* __restrict__ junction,
                    const float* __restrict__ psi, const float* __restrict__ center, int dropout,
                    unsigned long long drop_key, unsigned drop_threshold, float dropout_scale, float* __restrict__ part,
                    unsigned long long* __restrict__ keep, const uint2* __restrict__ w4frag) {
    PART_SMEM(smem);
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int c = blockIdx.x * (blockDim.x >> 5) + warp;
    if (c >= n_chunks) return;
    const ChunkRange r = chunk_range(c, indptr, B, PART_POOL_CHUNK);
    if (r.empty()) return;  // past the cell's last chunk
    const int e0 = (int)r.lo, e1 = (int)r.hi;
    const Net n = make_net(Hh, D, ug, bg, be1, g1, w4, w4t, b4, g5, be5, suu, sub, sbb, drop_key, drop_threshold,
                           dropout ? dropout_scale : 1.0f);
    const int ld = Hh + 8, NT = D / 8;
    unsigned char* base = smem + (size_t)warp * partial_tc_smem_per_warp(Hh);
    uint16_t* tile = (uint16_t*)base;
    double* ab = (double*)(base + ((size_t)16 * ld * 2 + 15) / 16 * 16);
    int* sjn = (int*)(ab + 32);
    int* spid = sjn + 16;
    const int gr = (int)lane >> 2, tq = (int)lane & 3;  // fragment row group and column pair
    float acc[PART_DMAX / 8][2];
#pragma unroll
    for (int nt = 0; nt < PART_DMAX / 8; ++nt) acc[nt][0] = acc[nt][1] = 0.0f;
    for (int p0 = e0; p0 < e1; p0 += 16) {
        const int ng = e1 - p0 < 16 ? e1 - p0 : 16;
        if ((int)lane < ng) {
            const int p = p0 + lane, j = junction[p];
            const float x = center ? psi[p] - center[j] : psi[p];
            fold_ab((double)x, j, suu, sub, sbb, ab[2 * lane], ab[2 * lane + 1]);
            sjn[lane] = j;
            spid[lane] = p;
        }
        __syncwarp();
        tc_h1_tile(n, lane, ng, ab, sjn, 0, spid, dropout ? DROP_STORE : DROP_NONE, (uint64_t*)keep, nullptr, tile, ld);
        __syncwarp();
        float h[PART_DMAX / 8][4], inv0, inv1;
        tc_h2_xhat(tile, ld, w4frag, b4, Hh, D, gr, tq, h, inv0, inv1);
        const bool live0 = gr < ng, live1 = gr + 8 < ng;
#pragma unroll
        for (int nt = 0; nt < PART_DMAX / 8; ++nt) {
            if (nt < NT) {
                // (g₅, be₅ aligned: partial_fold_norm's lnp)
                const float2 g5v = *(const float2*)(g5 + nt * 8 + 2 * tq), be5v = *(const float2*)(be5 + nt * 8 + 2 * tq);
#pragma unroll
                for (int x = 0; x < 2; ++x) {
                    const float g5t = x ? g5v.y : g5v.x, be5t = x ? be5v.y : be5v.x;
                    const float a0 = h[nt][x] * g5t + be5t, a1 = h[nt][2 + x] * g5t + be5t;
                    if (live0) acc[nt][x] += a0 > 0.0f ? a0 : 0.0f;
                    if (live1) acc[nt][x] += a1 > 0.0f ? a1 : 0.0f;
                }
            }
        }
        __syncwarp();
    }
    // The chunk's sum over its pairs: the eight row groups (lanes 4 apart) hold the same columns.
#pragma unroll
    for (int nt = 0; nt < PART_DMAX / 8; ++nt) {
        if (nt < NT) {
            for (int x = 0; x < 2; ++x) {
                float v = acc[nt][x];
                v += __shfl_xor_sync(0xffffffffu, v, 4);
                v += __shfl_xor_sync(0xffffffffu, v, 8);
                v += __shfl_xor_sync(0xffffffffu, v, 16);
                if (gr == 0) part[(long long)c * D + nt * 8 + 2 * tq + x] = v;
            }
        }
    }
}

// One thread per (cell, code unit): the cell's chunk sums in order, minus n_obs · h(0) when centring,
// divided as the pool mode says.
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_pool_combine(const float* __restrict__ part, const int* __restrict__ indptr, int B, int D,
                     const float* __restrict__ h0, int pool_mode, float divisor, float* __restrict__ pool) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)B * D) return;
    const int cell = (int)(t / D), e = (int)(t % D);
    const int n_obs = indptr[cell + 1] - indptr[cell];
    const long long base = chunk_base(cell, indptr, PART_POOL_CHUNK), nk = (n_obs + PART_POOL_CHUNK - 1) / PART_POOL_CHUNK;
    float v = 0.0f;
    for (long long k = 0; k < nk; ++k) v += part[(base + k) * D + e];
    if (h0) v -= (float)n_obs * h0[e];
    const float den = pool_den(pool_mode, n_obs, divisor);
    if (den != 1.0f) v /= den;
    pool[(long long)cell * D + e] = v;
}

// jptr (J + 1), order (nnz): the pairs junction-major (pair ids into the cell-major arrays); cell_of
// (nnz, by pair id). dpool: B × D. Per junction out: q (J × Hh), cj (J × 4). Per warp out: slots
// (n_warps × S floats, S = 2Hh + D·Hh + 3D), slot_d (n_warps × 2). Junction j belongs to warp j mod n_warps.
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_pair_bwd(const float* __restrict__ ug, const float* __restrict__ bg, const float* __restrict__ be1,
                 const float* __restrict__ g1, const float* __restrict__ w4, const float* __restrict__ w4t,
                 const float* __restrict__ b4, const float* __restrict__ g5, const float* __restrict__ be5,
                 const double* __restrict__ suu, const double* __restrict__ sub, const double* __restrict__ sbb,
                 int Hh, int D, int J, int n_warps, const int* __restrict__ indptr, const int* __restrict__ jptr,
                 const int* __restrict__ order, const int* __restrict__ cell_of, const float* __restrict__ psi,
                 const float* __restrict__ center, const float* __restrict__ dpool, int pool_mode, float divisor,
                 int dropout, float dropout_scale, const unsigned long long* __restrict__ keep,
                 float* __restrict__ q, double* __restrict__ cj, float* __restrict__ slots,
                 double* __restrict__ slot_d) {
    PART_SMEM(smem);
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gw = blockIdx.x * (blockDim.x >> 5) + warp;
    if (gw >= n_warps) return;
    const Net n = make_net(Hh, D, ug, bg, be1, g1, w4, w4t, b4, g5, be5, suu, sub, sbb, 0, 0,
                           dropout ? dropout_scale : 1.0f);
    const Geo& g = n.g;
    const WarpSmem s = warp_smem(smem, g, 1, warp);
    for (int x = lane; x < D * Hh; x += 32) s.sw4[x] = 0.0f;
    Acc acc;
    acc_zero(acc);
    for (int j = gw; j < J; j += n_warps) {
#pragma unroll
        for (int i = 0; i < HPL_MAX; ++i) acc.q[i] = 0.0f;
        acc.c[0] = acc.c[1] = acc.c[2] = acc.c[3] = 0.0;
        const int s0 = jptr[j], s1 = jptr[j + 1];
        for (int p0 = s0; p0 < s1; p0 += g.G) {
            const int ng = s1 - p0 < g.G ? s1 - p0 : g.G;
            if ((int)lane < ng) {
                const int p = order[p0 + lane];
                s.psi[lane] = center ? psi[p] - center[j] : psi[p];
                s.jn[lane] = j;
                s.pid[lane] = p;
                s.cell[lane] = cell_of[p];
            }
            __syncwarp();
            PassAct act;
            pass_fwd(n, s, lane, ng, dropout ? DROP_LOAD : DROP_NONE, (uint64_t*)keep, act);
            float dc[OPL_MAX];
#pragma unroll
            for (int i = 0; i < OPL_MAX; ++i) {
                dc[i] = 0.0f;
                const int e = lane + 32 * i, qq = e / g.Dp, t = e % g.Dp;
                if (i < g.OPL && qq < ng && t < D) {
                    const int c = s.cell[qq];
                    const float den = pool_den(pool_mode, indptr[c + 1] - indptr[c], divisor);
                    const float v = dpool[(long long)c * D + t];
                    dc[i] = den != 1.0f ? v / den : v;
                }
            }
            pass_bwd(n, s, lane, ng, act, dc, acc);
        }
#pragma unroll
        for (int i = 0; i < HPL_MAX; ++i) {
            const int k = lane + 32 * i;
            if (i < g.HPL && k < Hh) q[(long long)j * Hh + k] = acc.q[i];
        }
        if (lane == 0)
            for (int c = 0; c < 4; ++c) cj[4 * (long long)j + c] = acc.c[c];
    }
    const long long S = 2LL * Hh + (long long)D * Hh + 3LL * D;
    write_slot(g, s, lane, acc, slots + gw * S, slot_d + 2 * gw);
}

// partial_pair_bwd on tensor cores, for --precision bf16 (same arguments and outputs; the launcher uses
// it where tensor_cores_bwd_fit: Hh % 16 == 0, D % 8 == 0, D ≤ PART_TC_DMAX and the shared memory
// below, for one warp per block, within 48 KiB; where D % 16 == 8 the products over D run on D16 = D
// rounded up to 16, the extra code units zero). Each warp takes a contiguous range of junctions with an
// equal share of the passes (pass_ptr, from partial_pass_ptr; partial_pair_bwd takes junction j mod
// n_warps), and the W = blockDim / 32 warps of a block share one d W₄ accumulator: each warp
// owns a quarter of its tiles, and the warps advance in rounds of one pass each, meeting
// at two block barriers per round (a warp with no pass left still meets them). A pass takes 16 pairs
// of the warp's junction:
//   1. their first block (f32, the forward's keep bits), rounded to bf16 into the tile h1 (16 × Hh);
//   2. the second Linear h1·W₄ᵀ as mma tiles, + b₄, the LayerNorm and its backward in f32 from the
//      fragments (a row is a quad of lanes), giving d(h2), rounded to bf16 into dh (16 × D) and dhᵀ;
//   3. (between the barriers) d W₄ += Σ_s dhᵀ_s·h1_s over the block's warps s that had a pass, in
//      warp order, as the mma tiles this warp owns (tc_dw4_round), whose accumulator is the block's f32
//      d W₄ in shared memory: read once, W multiply-adds, written back once. One warp per block
//      (W = 1) reads and writes it once per pass, as this kernel did before; four share that cost by
//      four, and the shared accumulator (35 KiB at 128 × 64) lets twice as many warps run per SM;
//   4. d(d1) = dh·W₄ (16 × Hh, B = W₄'s bf16 fragments from the fold) as mma tiles; da = d(d1) where the pair's unit
//      was active (the h1 tile's nonzero bits, read into registers before da overwrites the tile),
//      its per-pair sums (Σ da·g₁, Σ da·u, Σ da·b̃) from the fragments, and da itself into an f32 tile
//      that overlays h1 / dh / dhᵀ;
//   5. the sums over the pass's pairs per hidden unit (Q_j, Σ da, Σ β·da) from that tile, lanes over
//      units as in partial_pair_bwd.
// Per-column sums of the LayerNorm (b₄, g₅, be₅) stay in the lanes' fragment registers until the slot
// is written; d W₄'s columns go to the slot of the warp that owns them (zero in the other warps' slots).
// Differs from partial_pair_bwd by the bf16 rounding of the products' operands and the summation orders;
// deterministic for a given W (fixed partition and rounds, no atomics); only d W₄'s f32 summation
// grouping depends on W. (Never run on a GPU: checked on the host
// by tests/cuda_partial_parity.rs.)
#define PART_TC_DMAX 64

// Dynamic shared memory of a partial_pair_bwd_tc block of W warps: the block's d W₄ (D × Hh f32, rows
// Hh + 8 floats apart so that the accumulator pairs an mma reads and writes back fall in distinct banks:
// with rows Hh apart the eight row groups of a fragment hit the same banks, eight-way conflicts on every
// access), 16 bytes of per-warp flags, then per warp a region holding either [h1 (16 × (Hh + 8)) | dh
// (16 × (D16 + 8)) | dhᵀ (D16 × 24)] (bf16) or da (16 × (Hh + 4), f32), then per pass pair α, β (f64), ψ,
// cell and dropout keep words. At 128 × 64: 44 KiB for W = 1, 76 KiB for W = 4 (past
// 48 KiB: the launch opts in, CudaDevice::opt_in_smem).
__host__ __device__ inline size_t partial_tc_bwd_tiles(int Hh, int D) {
    const int D16 = (D + 15) / 16 * 16;
    const size_t bf = ((size_t)16 * (Hh + 8) + (size_t)16 * (D16 + 8) + (size_t)D16 * 24) * 2;
    const size_t da = (size_t)16 * (Hh + 4) * 4;
    return ((bf > da ? bf : da) + 15) / 16 * 16;
}
__host__ __device__ inline size_t partial_tc_bwd_warp_bytes(int Hh, int D) {
    return partial_tc_bwd_tiles(Hh, D) + 16 * (16 + 4 + 4) + 16 * PART_KW_MAX * 8;
}
__host__ __device__ inline size_t partial_tc_bwd_smem(int Hh, int D, int W) {
    return (size_t)D * (Hh + 8) * 4 + 16 + (size_t)W * partial_tc_bwd_warp_bytes(Hh, D);
}

// One block of PART_PASS_THREADS: pass_ptr[j] = Σ_{i<j} ⌈(jptr[i + 1] − jptr[i]) / 16⌉ (J + 1 entries), the
// 16-pair passes of partial_pair_bwd_tc before junction j, from which each of its warps finds a contiguous
// range of junctions holding an equal share of the passes (kernels/block_scan.cuh: integers, exact).
#define PART_PASS_THREADS 256
namespace {
struct JunctionPasses {
    const int* jptr;
    __device__ long long operator()(long long j) const { return (jptr[j + 1] - jptr[j] + 15) / 16; }
};
}  // namespace
extern "C" __global__ void __launch_bounds__(PART_PASS_THREADS)
partial_pass_ptr(const int* __restrict__ jptr, int J, int* __restrict__ pass_ptr) {
    block_scan<PART_PASS_THREADS>((long long)J, JunctionPasses{jptr}, nullptr, pass_ptr);
}

// The first j in [0, J] with pass_ptr[j] ≥ x (pass_ptr nondecreasing).
__device__ __forceinline__ int pass_lower_bound(const int* __restrict__ pass_ptr, int J, long long x) {
    int lo = 0, hi = J;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if ((long long)pass_ptr[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

// d(pool) ÷ the pool divisor of each cell, for partial_pair_bwd_tc: one thread per (cell, code unit),
// the division partial_pair_bwd does per element and pair (the same IEEE division of the same values:
// the same bits), done once per cell instead of once per pair, and without the pair's two indptr loads.
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_dpool_scale(const float* __restrict__ dpool, const int* __restrict__ indptr, int B, int D, int pool_mode,
                    float divisor, float* __restrict__ dps) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)B * D) return;
    const int cell = (int)(i / D);
    const float den = pool_den(pool_mode, indptr[cell + 1] - indptr[cell], divisor);
    float v = dpool[i];
    if (den != 1.0f) v /= den;
    dps[i] = v;
}

// One round's d W₄ update of partial_pair_bwd_tc, for the tiles a warp owns (row tiles [m0, m1) of 16 code
// units, column tiles [n0, n1) of 8 hidden units): d W₄ += Σ_s dhᵀ_s·h1_s over the block's warps s in
// live_mask, in warp order (A = dhᵀ_s, row-major, K = the pass's 16 pairs; B[k][n] = h1_s[k][n]). The
// accumulator, the block's f32 d W₄ in shared memory, is read and written once per tile. The A fragments
// of WN warps × MG row tiles stay in registers while the column tiles go by. With one warp per block
// each tile gets one mma per pass between its read and its write, as in the former per-warp kernel.
template <int WN, int MG>
__device__ __forceinline__ void tc_dw4_round(float* sw4, int ldw, const unsigned char* regions, size_t region_bytes,
                                             unsigned live_mask, int ldh, int ldd, int D, int m0, int m1, int n0,
                                             int n1, int gr, int tq) {
    const int ldt = 24;
    for (int mg = m0; mg < m1; mg += MG) {
        uint32_t at[WN][MG][4];
#pragma unroll
        for (int w = 0; w < WN; ++w) {
            if ((live_mask >> w) & 1u) {
                const uint16_t* dht = (const uint16_t*)(regions + (size_t)w * region_bytes) + 16 * ldh + 16 * ldd;
#pragma unroll
                for (int m = 0; m < MG; ++m) {
                    if (mg + m < m1) {
                        const uint16_t* r0 = dht + ((mg + m) * 16 + gr) * ldt + 2 * tq;
                        const uint16_t* r1 = dht + ((mg + m) * 16 + gr + 8) * ldt + 2 * tq;
                        at[w][m][0] = *(const uint32_t*)r0;
                        at[w][m][1] = *(const uint32_t*)r1;
                        at[w][m][2] = *(const uint32_t*)(r0 + 8);
                        at[w][m][3] = *(const uint32_t*)(r1 + 8);
                    }
                }
            }
        }
        for (int nt = n0; nt < n1; ++nt) {
            const int n = nt * 8 + gr, col = nt * 8 + 2 * tq;
            float cf[MG][4];
#pragma unroll
            for (int m = 0; m < MG; ++m) {
                if (mg + m < m1) {
                    // rows mt·16 + gr + 8 ≥ D (D % 16 == 8) are padding: not read, not written
                    const int r = (mg + m) * 16 + gr;
                    const float2 v0 = *(const float2*)(sw4 + (long long)r * ldw + col);
                    const float2 v1 = r + 8 < D ? *(const float2*)(sw4 + (long long)(r + 8) * ldw + col) : float2{0.0f, 0.0f};
                    cf[m][0] = v0.x;
                    cf[m][1] = v0.y;
                    cf[m][2] = v1.x;
                    cf[m][3] = v1.y;
                }
            }
#pragma unroll
            for (int w = 0; w < WN; ++w) {
                if ((live_mask >> w) & 1u) {
                    const uint16_t* h1 = (const uint16_t*)(regions + (size_t)w * region_bytes);
                    const uint32_t bf[2] = {(uint32_t)h1[(2 * tq) * ldh + n] | ((uint32_t)h1[(2 * tq + 1) * ldh + n] << 16),
                                            (uint32_t)h1[(2 * tq + 8) * ldh + n] | ((uint32_t)h1[(2 * tq + 9) * ldh + n] << 16)};
#pragma unroll
                    for (int m = 0; m < MG; ++m)
                        if (mg + m < m1) mma_m16n8k16_bf16(cf[m], at[w][m], bf, cf[m]);
                }
            }
#pragma unroll
            for (int m = 0; m < MG; ++m) {
                if (mg + m < m1) {
                    const int r = (mg + m) * 16 + gr;
                    *(float2*)(sw4 + (long long)r * ldw + col) = float2{cf[m][0], cf[m][1]};
                    if (r + 8 < D) *(float2*)(sw4 + (long long)(r + 8) * ldw + col) = float2{cf[m][2], cf[m][3]};
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_pair_bwd_tc(const float* __restrict__ ug, const float* __restrict__ bg, const float* __restrict__ be1,
                    const float* __restrict__ g1, const float* __restrict__ w4, const float* __restrict__ w4t,
                    const float* __restrict__ b4, const float* __restrict__ g5, const float* __restrict__ be5,
                    const double* __restrict__ suu, const double* __restrict__ sub, const double* __restrict__ sbb,
                    int Hh, int D, int J, int n_warps, const int* __restrict__ jptr,
                    const int* __restrict__ order, const int* __restrict__ cell_of, const float* __restrict__ psi,
                    const float* __restrict__ center, const float* __restrict__ dps,
                    int dropout, float dropout_scale, const unsigned long long* __restrict__ keep,
                    float* __restrict__ q, double* __restrict__ cj, float* __restrict__ slots,
                    double* __restrict__ slot_d, const uint2* __restrict__ w4frag, const int* __restrict__ pass_ptr) {
    PART_SMEM(smem);
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int W = (int)(blockDim.x >> 5);
    const int gw = blockIdx.x * W + (int)warp;
    // The block's warps below n_warps (n_own of them) own d W₄'s tiles (below); a warp past n_warps (the
    // last block's padding) has no junction and owns none, but meets the barriers.
    const int n_own = n_warps - blockIdx.x * W < W ? n_warps - (int)blockIdx.x * W : W;
    const Net n = make_net(Hh, D, ug, bg, be1, g1, w4, w4t, b4, g5, be5, suu, sub, sbb, 0, 0,
                           dropout ? dropout_scale : 1.0f);
    const Geo& g = n.g;
    const float scale = n.scale;
    const int gr = (int)lane >> 2, tq = (int)lane & 3;
    const int NT = D / 8, KD = (D + 15) / 16, NH = Hh / 8;
    const int ldh = Hh + 8, ldd = 16 * KD + 8, ldt = 24, lda = Hh + 4, ldw = Hh + 8;
    // the backward's dh·W₄ fragments, after the forward's
    const uint2* w4frag_b = w4frag + partial_w4frag_fwd_words(Hh, D) / 2;
    // d W₄'s tiles (KD row tiles of 16 code units × NH column tiles of 8 hidden units) split over the n_own
    // warps: a 2 × 2 grid of quarters for four (half the row tiles each, so that tc_dw4_round<4, 2>
    // holds their A fragments in one group), column slices otherwise.
    const int own_m = n_own == 4 && KD >= 2 ? 2 : 1, own_n = n_own / own_m;
    const bool owner = (int)warp < n_own;
    const int wm = owner ? (int)warp / own_n : 0, wn = owner ? (int)warp % own_n : 0;
    const int m0 = owner ? wm * KD / own_m : 0, m1 = owner ? (wm + 1) * KD / own_m : 0;
    const int nt0 = owner ? wn * NH / own_n : 0, nt1 = owner ? (wn + 1) * NH / own_n : 0;
    float* sw4 = (float*)smem;  // the block's d W₄
    int* live = (int*)(smem + (size_t)D * ldw * 4);  // per warp: whether its tiles hold a pass this round
    unsigned char* regions = smem + (size_t)D * ldw * 4 + 16;
    const size_t region_bytes = partial_tc_bwd_warp_bytes(Hh, D);
    unsigned char* region = regions + (size_t)warp * region_bytes;
    uint16_t* h1 = (uint16_t*)region;
    uint16_t* dh = h1 + 16 * ldh;
    uint16_t* dht = dh + 16 * ldd;
    float* da = (float*)region;
    double* ab = (double*)(region + partial_tc_bwd_tiles(Hh, D));
    float* spsi = (float*)(ab + 32);
    int* scell = (int*)(spsi + 16);
    uint64_t* srowkeep = (uint64_t*)(scell + 16);  // the pass pairs' keep words (16 × PART_KW_MAX)
    // (the owned rows: code units m0·16 .. min(m1·16, D))
    const int own_r0 = m0 * 16, own_r1 = m1 * 16 < D ? m1 * 16 : D, own_cols = (nt1 - nt0) * 8;
    for (int x = lane; x < (own_r1 - own_r0) * own_cols; x += 32)
        sw4[(own_r0 + x / own_cols) * ldw + nt0 * 8 + x % own_cols] = 0.0f;
    // Per-lane accumulators: lanes over hidden units (as partial_pair_bwd's Acc) ...
    float aq[HPL_MAX], asbe1[HPL_MAX], asr[HPL_MAX];
#pragma unroll
    for (int i = 0; i < HPL_MAX; ++i) aq[i] = asbe1[i] = asr[i] = 0.0f;
    // ... and, for the LayerNorm's columns t = nt·8 + 2·tq + x, over the lane's two rows of every pass.
    float ab4[PART_TC_DMAX / 8][2], ag5[PART_TC_DMAX / 8][2], abe5[PART_TC_DMAX / 8][2];
#pragma unroll
    for (int nt = 0; nt < PART_TC_DMAX / 8; ++nt)
        ab4[nt][0] = ab4[nt][1] = ag5[nt][0] = ag5[nt][1] = abe5[nt][0] = abe5[nt][1] = 0.0f;
    double e1 = 0.0, e3 = 0.0;  // lanes tq == 0, their rows
    // The warp walks its junctions' passes, one per round; the block's warps meet twice a round (their
    // tiles are read by the d W₄ owners between the two barriers).
    // The warp's junctions: [j, j_end), contiguous, those whose first pass falls in the warp's share
    // [gw·P / n_warps, (gw + 1)·P / n_warps) of the P passes (partial_pass_ptr), so that every warp has
    // within one junction's passes of P / n_warps (junction j mod n_warps, as in partial_pair_bwd, left
    // the busiest warp 29% above the mean at the paper size).
    int j = J, j_end = J;
    if (gw < n_warps) {
        const long long P = pass_ptr[J];
        j = pass_lower_bound(pass_ptr, J, (P * gw + n_warps - 1) / n_warps);
        j_end = gw + 1 < n_warps ? pass_lower_bound(pass_ptr, J, (P * (gw + 1) + n_warps - 1) / n_warps) : J;
    }
    int p0 = j < j_end ? jptr[j] : 0, s1 = j < j_end ? jptr[j + 1] : 0;
    // The junction's Σψβm₁, Σψβm₂α, Σψβm₂β, Σβm₂α (lanes tq == 0, over their rows).
    double c0 = 0.0, c1 = 0.0, c2 = 0.0, c3 = 0.0;
    __syncwarp();
    for (;;) {
        // Close the junctions the warp has finished (and empty ones), then open the next.
        while (j < j_end && p0 >= s1) {
#pragma unroll
            for (int i = 0; i < HPL_MAX; ++i) {
                const int k = (int)lane + 32 * i;
                if (i < g.HPL && k < Hh) q[(long long)j * Hh + k] = aq[i];
                aq[i] = 0.0f;
            }
            // the junction's scalars: lanes tq == 0 of the eight row groups
            c0 = rowgroup_sum(c0);
            c1 = rowgroup_sum(c1);
            c2 = rowgroup_sum(c2);
            c3 = rowgroup_sum(c3);
            if (lane == 0) {
                cj[4 * (long long)j] = c0;
                cj[4 * (long long)j + 1] = c1;
                cj[4 * (long long)j + 2] = c2;
                cj[4 * (long long)j + 3] = c3;
            }
            c0 = c1 = c2 = c3 = 0.0;
            ++j;
            if (j < j_end) {
                p0 = jptr[j];
                s1 = jptr[j + 1];
            }
        }
        const bool has = j < j_end;  // warp-uniform
        const int ng = has ? (s1 - p0 < 16 ? s1 - p0 : 16) : 0;
        if (has) {
            if (lane < 16) {
                double al = 0.0, be = 0.0;
                float x = 0.0f;
                int cell = 0;
                if ((int)lane < ng) {
                    const int p = order[p0 + lane];
                    // the pair's dropout keep words, for tc_h1_tile (issued with the loads below)
                    if (dropout)
                        for (int w = 0; w < g.kw; ++w) srowkeep[PART_KW_MAX * lane + w] = (uint64_t)keep[(long long)p * g.kw + w];
                    cell = cell_of[p];
                    x = center ? psi[p] - center[j] : psi[p];
                    fold_ab((double)x, j, suu, sub, sbb, al, be);
                }
                ab[2 * lane] = al;
                ab[2 * lane + 1] = be;
                spsi[lane] = x;
                scell[lane] = cell;
            }
            __syncwarp();
            // 1. h1, rows ≥ ng zero.
            tc_h1_tile(n, lane, ng, ab, nullptr, j, order + p0, dropout ? DROP_LOAD : DROP_NONE, nullptr, srowkeep, h1, ldh);
            __syncwarp();
            // 2. h2 = h1·W₄ᵀ + b₄ as x̂ (rows gr: [·][0..1], gr + 8: [·][2..3]), then the LayerNorm's backward.
            float hx[PART_TC_DMAX / 8][4], inv0, inv1;
            tc_h2_xhat(h1, ldh, w4frag, b4, Hh, D, gr, tq, hx, inv0, inv1);
            // dx = d(a2)·g₅ (d(a2) = d(code) where the ReLU passed); row sums of dx, dx·x̂.
            const bool live0 = gr < ng, live1 = gr + 8 < ng;
            const int cell0 = scell[gr], cell1 = scell[gr + 8];
            float dxv[PART_TC_DMAX / 8][4];
            float s10 = 0.0f, s11 = 0.0f, s20 = 0.0f, s21 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < PART_TC_DMAX / 8; ++nt) {
                if (nt < NT) {
                    // d(code) ÷ the pool divisor (dps, partial_dpool_scale) of the two rows' cells at the
                    // lane's columns t0, t0 + 1: one 8-byte load per row (the eight row groups' cells are
                    // eight cache lines, so a load per column cost twice the L1 wavefronts; dps is 8-byte
                    // aligned and D even)
                    const int t0 = nt * 8 + 2 * tq;
                    const float2 dp0 = live0 ? *(const float2*)(dps + (long long)cell0 * D + t0) : float2{0.0f, 0.0f};
                    const float2 dp1 = live1 ? *(const float2*)(dps + (long long)cell1 * D + t0) : float2{0.0f, 0.0f};
                    // (g₅, be₅ aligned: partial_fold_norm's lnp)
                    const float2 g5v = *(const float2*)(g5 + t0), be5v = *(const float2*)(be5 + t0);
#pragma unroll
                    for (int x = 0; x < 2; ++x) {
                        const float g5t = x ? g5v.y : g5v.x, be5t = x ? be5v.y : be5v.x;
                        const float a20 = hx[nt][x] * g5t + be5t, a21 = hx[nt][2 + x] * g5t + be5t;
                        const float dc0 = x ? dp0.y : dp0.x;
                        const float dc1 = x ? dp1.y : dp1.x;
                        const float d0 = a20 > 0.0f ? dc0 : 0.0f, d1 = a21 > 0.0f ? dc1 : 0.0f;
                        ag5[nt][x] += d0 * hx[nt][x] + d1 * hx[nt][2 + x];
                        abe5[nt][x] += d0 + d1;
                        dxv[nt][x] = d0 * g5t;
                        dxv[nt][2 + x] = d1 * g5t;
                        s10 += dxv[nt][x];
                        s11 += dxv[nt][2 + x];
                        s20 += dxv[nt][x] * hx[nt][x];
                        s21 += dxv[nt][2 + x] * hx[nt][2 + x];
                    }
                }
            }
            s10 = quad_sum(s10);
            s11 = quad_sum(s11);
            s20 = quad_sum(s20);
            s21 = quad_sum(s21);
            s10 /= (float)D;
            s11 /= (float)D;
            s20 /= (float)D;
            s21 /= (float)D;
#pragma unroll
            for (int nt = 0; nt < PART_TC_DMAX / 8; ++nt) {
                if (nt < NT) {
#pragma unroll
                    for (int x = 0; x < 2; ++x) {
                        const int t = nt * 8 + 2 * tq + x;
                        const float g0 = inv0 * (dxv[nt][x] - s10 - hx[nt][x] * s20);
                        const float g1v = inv1 * (dxv[nt][2 + x] - s11 - hx[nt][2 + x] * s21);
                        ab4[nt][x] += g0 + g1v;
                        const uint16_t b0 = (uint16_t)mma_bf16_bits(g0), b1 = (uint16_t)mma_bf16_bits(g1v);
                        dh[gr * ldd + t] = b0;
                        dh[(gr + 8) * ldd + t] = b1;
                        dht[t * ldt + gr] = b0;
                        dht[t * ldt + gr + 8] = b1;
                    }
                }
            }
            if (D % 16) {  // the code units D .. D16 − 1 of dh and dhᵀ are zero
                for (int x = lane; x < 16 * 8; x += 32) {
                    dh[(x / 8) * ldd + D + x % 8] = 0;
                    dht[(D + x % 8) * ldt + x / 8] = 0;
                }
            }
            __syncwarp();
        }
        if (lane == 0) live[warp] = has ? 1 : 0;
        // Barrier A: the live warps' h1 and dhᵀ tiles are written. The block stops when no warp has a pass.
        if (__syncthreads_count(has ? 1 : 0) == 0) break;
        // 3. d W₄ += Σ_s dhᵀ_s·h1_s over the warps s of the block that had a pass, for this warp's tiles.
        unsigned live_mask = 0u;
        for (int w = 0; w < W; ++w) live_mask |= live[w] ? 1u << w : 0u;
        // (one instance for every block size: a second inlined copy makes ptxas spill)
        tc_dw4_round<PART_THREADS / 32, 2>(sw4, ldw, regions, region_bytes, live_mask, ldh, ldd, D, m0, m1, nt0, nt1, gr, tq);
        // Barrier B: every owner has read the tiles; the da tile may overwrite them.
        __syncthreads();
        if (has) {
            // act: the active units of the lane's fragment positions (rows gr, gr + 8; columns nt·8 + 2tq
            // + x); adh: dh's A fragments. Both read from the warp's own tiles before da overwrites them.
            uint32_t act[PART_HMAX / 64];
#pragma unroll
            for (int w = 0; w < PART_HMAX / 64; ++w) act[w] = 0u;
            for (int nt = 0; nt < NH; ++nt) {
#pragma unroll
                for (int y = 0; y < 4; ++y) {
                    const int r = gr + (y >= 2 ? 8 : 0), k = nt * 8 + 2 * tq + (y & 1);
                    if (h1[r * ldh + k] != 0 && !(h1[r * ldh + k] & 0x8000u)) act[(nt * 4 + y) / 32] |= 1u << ((nt * 4 + y) % 32);
                }
            }
            uint32_t adh[PART_TC_DMAX / 16][4];
#pragma unroll
            for (int ks = 0; ks < PART_TC_DMAX / 16; ++ks) {
                if (ks < KD) {
                    const int k0 = ks * 16 + 2 * tq;
                    adh[ks][0] = *(const uint32_t*)(dh + gr * ldd + k0);
                    adh[ks][1] = *(const uint32_t*)(dh + (gr + 8) * ldd + k0);
                    adh[ks][2] = *(const uint32_t*)(dh + gr * ldd + k0 + 8);
                    adh[ks][3] = *(const uint32_t*)(dh + (gr + 8) * ldd + k0 + 8);
                }
            }
            __syncwarp();  // every lane has read h1 and dh before any writes da over them
            // 4. d(d1) = dh·W₄ (B[t][k] = W₄[t][k]: column k of B is row k of W₄ᵀ), da, its per-pair sums.
            float p10 = 0.0f, p11 = 0.0f, pu0 = 0.0f, pu1 = 0.0f, pb0 = 0.0f, pb1 = 0.0f;
            for (int nt = 0; nt < NH; ++nt) {
                float cf[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int ks = 0; ks < PART_TC_DMAX / 16; ++ks) {
                    if (ks < KD) {
                        // (D % 16 == 8: the fragments of code units ≥ D are zero)
                        const uint2 fr = w4frag_b[(nt * KD + ks) * 32 + lane];
                        const uint32_t bf[2] = {fr.x, fr.y};
                        mma_m16n8k16_bf16(cf, adh[ks], bf, cf);
                    }
                }
                // u_j·g₁, b̃·g₁ and g₁ at the lane's two columns, one 8-byte load each (fold outputs and
                // partial_fold_norm's aligned copy of g₁; Hh even)
                const int kp = nt * 8 + 2 * tq;
                const float2 gu2 = *(const float2*)(ug + (long long)j * Hh + kp), bg2 = *(const float2*)(bg + kp);
                const float2 g12 = *(const float2*)(g1 + kp);
#pragma unroll
                for (int y = 0; y < 4; ++y) {
                    const int r = gr + (y >= 2 ? 8 : 0), k = kp + (y & 1);
                    const bool on = (act[(nt * 4 + y) / 32] >> ((nt * 4 + y) % 32)) & 1u;
                    const float v = on ? cf[y] * scale : 0.0f;
                    da[r * lda + k] = v;
                    const float gu = y & 1 ? gu2.y : gu2.x, bgk = y & 1 ? bg2.y : bg2.x, g1k = y & 1 ? g12.y : g12.x;
                    if (y < 2) {
                        p10 += v * g1k;
                        pu0 += v * gu;
                        pb0 += v * bgk;
                    } else {
                        p11 += v * g1k;
                        pu1 += v * gu;
                        pb1 += v * bgk;
                    }
                }
            }
            p10 = quad_sum(p10);
            p11 = quad_sum(p11);
            pu0 = quad_sum(pu0);
            pu1 = quad_sum(pu1);
            pb0 = quad_sum(pb0);
            pb1 = quad_sum(pb1);
            if (tq == 0) {
                const double inv_h = 1.0 / (double)Hh;
#pragma unroll
                for (int y = 0; y < 2; ++y) {
                    const int r = gr + 8 * y;
                    const double alpha = ab[2 * r], beta = ab[2 * r + 1], ps = (double)spsi[r];
                    const double m1d = (double)(y ? p11 : p10) * inv_h;
                    const double m2d = (alpha * (double)(y ? pu1 : pu0) + beta * (double)(y ? pb1 : pb0)) * inv_h;
                    c0 += ps * beta * m1d;
                    c1 += ps * beta * m2d * alpha;
                    c2 += ps * beta * m2d * beta;
                    c3 += beta * m2d * alpha;
                    e1 += beta * m1d;
                    e3 += beta * m2d * beta;
                }
            }
            __syncwarp();
            // 5. Sums over the pass's pairs per hidden unit, pairs outer so that each pair's α, β are read
            // (and converted) once for all the lane's units; each unit's sums run in pair order.
            float sq[HPL_MAX], sb[HPL_MAX], ss[HPL_MAX];
#pragma unroll
            for (int i = 0; i < HPL_MAX; ++i) sq[i] = sb[i] = ss[i] = 0.0f;
            for (int r = 0; r < ng; ++r) {
                const float al = (float)ab[2 * r], be = (float)ab[2 * r + 1];
#pragma unroll
                for (int i = 0; i < HPL_MAX; ++i) {
                    const int k = (int)lane + 32 * i;
                    if (i < g.HPL && k < Hh) {
                        const float v = da[r * lda + k];
                        ss[i] += v;
                        sb[i] += be * v;
                        sq[i] += al * v;
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < HPL_MAX; ++i) {
                if (i < g.HPL && (int)lane + 32 * i < Hh) {
                    asbe1[i] += ss[i];
                    asr[i] += sb[i];
                    aq[i] += sq[i];
                }
            }
            __syncwarp();
            p0 += 16;
        }
    }
    if (gw >= n_warps) return;
    // The warp's slot: [R | be₁ | W₄ | b₄ | g₅ | be₅], (e₁, e₃).
    const long long S = 2LL * Hh + (long long)D * Hh + 3LL * D;
    float* slot = slots + gw * S;
#pragma unroll
    for (int i = 0; i < HPL_MAX; ++i) {
        const int k = (int)lane + 32 * i;
        if (i < g.HPL && k < Hh) {
            slot[k] = asr[i];
            slot[Hh + k] = asbe1[i];
        }
    }
    // d W₄: the block's sums, each entry by the warp that owns it, into the slot of the block's first
    // warp; the other warps' slots hold no d W₄ (partial_slot_sums reads it from the first ones only).
    float* w4slot = slots + (long long)blockIdx.x * W * S + 2 * Hh;
    for (int x = lane; x < (own_r1 - own_r0) * own_cols; x += 32) {
        const int r = own_r0 + x / own_cols, c = nt0 * 8 + x % own_cols;
        w4slot[r * Hh + c] = sw4[r * ldw + c];
    }
    float* tail = slot + 2 * Hh + (long long)D * Hh;
#pragma unroll
    for (int nt = 0; nt < PART_TC_DMAX / 8; ++nt) {
        if (nt < NT) {
#pragma unroll
            for (int x = 0; x < 2; ++x) {
                float vb = ab4[nt][x], vg = ag5[nt][x], ve = abe5[nt][x];
                for (int o = 4; o < 32; o <<= 1) {
                    vb += __shfl_xor_sync(0xffffffffu, vb, o);
                    vg += __shfl_xor_sync(0xffffffffu, vg, o);
                    ve += __shfl_xor_sync(0xffffffffu, ve, o);
                }
                const int t = nt * 8 + 2 * tq + x;
                if (gr == 0) {
                    tail[t] = vb;
                    tail[D + t] = vg;
                    tail[2 * D + t] = ve;
                }
            }
        }
    }
    for (int o = 4; o < 32; o <<= 1) {
        e1 += __shfl_xor_sync(0xffffffffu, e1, o);
        e3 += __shfl_xor_sync(0xffffffffu, e3, o);
    }
    if (lane == 0) {
        slot_d[2 * gw] = e1;
        slot_d[2 * gw + 1] = e3;
    }
}

// One warp: h(0)'s share of the backward (`partial_center_psi`): d h(0) = −Σ_i n_i·d(code)_i through the
// reference pair, into slot `slot` (its Q_j and per-junction scalars are zero: ψ = 0).
extern "C" __global__ void __launch_bounds__(32)
partial_ref_bwd(const float* __restrict__ ug, const float* __restrict__ bg, const float* __restrict__ be1,
                const float* __restrict__ g1, const float* __restrict__ w4, const float* __restrict__ w4t,
                const float* __restrict__ b4, const float* __restrict__ g5, const float* __restrict__ be5,
                const double* __restrict__ suu, const double* __restrict__ sub, const double* __restrict__ sbb,
                int Hh, int D, int B, const int* __restrict__ indptr, const float* __restrict__ dpool, int pool_mode,
                float divisor, int slot, float* __restrict__ slots, double* __restrict__ slot_d) {
    PART_SMEM(smem);
    const unsigned lane = threadIdx.x & 31;
    const Net n = make_net(Hh, D, ug, bg, be1, g1, w4, w4t, b4, g5, be5, suu, sub, sbb, 0, 0, 1.0f);
    const Geo& g = n.g;
    const WarpSmem s = warp_smem(smem, g, 1, 0);
    for (int x = lane; x < D * Hh; x += 32) s.sw4[x] = 0.0f;
    if (lane == 0) {
        s.psi[0] = 0.0f;
        s.jn[0] = 0;
        s.pid[0] = 0;
    }
    __syncwarp();
    PassAct act;
    pass_fwd(n, s, lane, 1, DROP_NONE, nullptr, act);
    float dc[OPL_MAX];
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        dc[i] = 0.0f;
        const int e = lane + 32 * i;
        if (i < g.OPL && e < g.Dp && e < D) {
            float d = 0.0f;
            for (int c = 0; c < B; ++c) {
                const int n_obs = indptr[c + 1] - indptr[c];
                const float den = pool_den(pool_mode, n_obs, divisor);
                const float v = dpool[(long long)c * D + e];
                d -= (float)n_obs * (den != 1.0f ? v / den : v);
            }
            dc[i] = d;
        }
    }
    Acc acc;
    acc_zero(acc);
    pass_bwd(n, s, lane, 1, act, dc, acc);
    const long long S = 2LL * Hh + (long long)D * Hh + 3LL * D;
    write_slot(g, s, lane, acc, slots + slot * S, slot_d + 2 * slot);
}

// The backward's tail, after the pair walk (all deterministic, all sums in a fixed order):
//   partial_unfold_du   : d u_j for every junction, and its sums over junctions by chunks;
//   partial_group_sums  : those chunk sums by fixed groups of chunks;
//   (a cuBLAS GEMM d F̂ = du·W₀[:,1:] and one duᵀ·F̂ for W₀[:,1:]'s gradient, in the launcher)
//   partial_unfold_emb  : d F̂_j through the row normalisation into the embedding's gradient;
//   partial_slot_sums   : the pair walk's per-warp slots by fixed groups of slots;
//   partial_bwd_params  : the groups in order, into the gradient buffers.
// (Before, one warp per junction also did d F̂_j = d u_j·W₀[:,1:] as a loop of two L1 loads per
// multiply-add, and the sums over junctions and slots ran as a few thousand threads walking 10³
// junctions or slots each: latency-bound by count, some 0.3 ms per step at the paper size.)

// One thread per (chunk of PART_DU_CHUNK junctions, hidden unit k): for the chunk's junctions in order,
// d u_j = g₁⊙Q_j − Σψβm₁ − (Σψβm₂α)·ũ_j − (Σψβm₂β)·b̃ (into du, J × Hh), and the chunk's f64 sums
//   jpart[ch] = [W₀[:,0]: Σ du (Hh) | b₀: −Σ (Σβm₂α)_j·ũ_j (Hh) | g₁: Σ ũ_j⊙Q_j (Hh)].
// Every element of q, ut and du is touched once, coalesced over k.
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_unfold_du(const float* __restrict__ q, const double* __restrict__ cj, const float* __restrict__ ut,
                  const float* __restrict__ bt, const float* __restrict__ g1, int J, int Hh,
                  float* __restrict__ du, double* __restrict__ jpart) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n_chunks = (J + PART_DU_CHUNK - 1) / PART_DU_CHUNK;
    if (t >= n_chunks * Hh) return;
    const long long ch = t / Hh;
    const int k = (int)(t % Hh);
    const int j0 = (int)(ch * PART_DU_CHUNK), j1 = j0 + PART_DU_CHUNK < J ? j0 + PART_DU_CHUNK : J;
    const double gk = (double)g1[k], bk = (double)bt[k];
    double s_du = 0.0, s_b0 = 0.0, s_g1 = 0.0;
    for (int j = j0; j < j1; ++j) {
        const long long x = (long long)j * Hh + k;
        const double* c = cj + 4 * (long long)j;
        const double qv = (double)q[x], uv = (double)ut[x];
        const float v = (float)(gk * qv - c[0] - c[1] * uv - c[2] * bk);
        du[x] = v;
        s_du += (double)v;
        s_b0 -= c[3] * uv;
        s_g1 += uv * qv;
    }
    double* out = jpart + ch * 3 * Hh;
    out[k] = s_du;
    out[Hh + k] = s_b0;
    out[2 * Hh + k] = s_g1;
}

// Column sums of a rows × cols f64 matrix by fixed groups of PART_GROUP rows, each group's rows in order:
// out[g·cols + x] = Σ_{r ∈ group g} in[r·cols + x]. One thread per (group, column).
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_group_sums(const double* __restrict__ in, int rows, int cols, double* __restrict__ out) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n_groups = (rows + PART_GROUP - 1) / PART_GROUP;
    if (t >= n_groups * cols) return;
    const long long g = t / cols, x = t % cols;
    const int r0 = (int)(g * PART_GROUP), r1 = r0 + PART_GROUP < rows ? r0 + PART_GROUP : rows;
    double v = 0.0;
    for (int r = r0; r < r1; ++r) v += in[(long long)r * cols + x];
    out[t] = v;
}

// One warp per junction: d e_j from d F̂_j (dfh, J × D: the GEMM du·W₀[:,1:]) through the row
// normalisation F̂_j = e_j / max(‖e_j‖, ε), added into g_emb.
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_unfold_emb(const float* __restrict__ dfh, const float* __restrict__ fhat, const float* __restrict__ fnorm,
                   int J, int D, float* __restrict__ g_emb) {
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int j = blockIdx.x * (blockDim.x >> 5) + warp;
    if (j >= J) return;
    float dfv[OPL_MAX], fh[OPL_MAX];
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        const int c = lane + 32 * i;
        dfv[i] = 0.0f;
        fh[i] = 0.0f;
        if (c < D) {
            dfv[i] = dfh[(long long)j * D + c];
            fh[i] = fhat[(long long)j * D + c];
            dot += fh[i] * dfv[i];
        }
    }
    dot = warp_sum(dot);
    const float nrm = fnorm[j];
#pragma unroll
    for (int i = 0; i < OPL_MAX; ++i) {
        const int c = lane + 32 * i;
        if (c < D) {
            const float add = nrm > PART_NORM_EPS ? (dfv[i] - fh[i] * dot) / nrm : dfv[i] / PART_NORM_EPS;
            g_emb[(long long)j * D + c] += add;
        }
    }
}

// The pair walk's parameter-sum slots (n_slots × S floats, S = 2Hh + D·Hh + 3D, and slot_d, n_slots × 2)
// by fixed groups of PART_GROUP slots, each group's slots in order, in f64: slot_part[g·(S + 2) + x]
// (x = S, S + 1: e₁, e₃). One thread per (group, element). d W₄'s entries (slot offsets 2Hh .. 2Hh + D·Hh)
// come only from the slots w % w4_stride == 0 below n_warps and from the reference's at or past it:
// partial_pair_bwd_tc's warps share d W₄ in blocks of w4_stride and write it into their first warp's
// slot alone (the other slots' d W₄ is never written, so it is never read).
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_slot_sums(const float* __restrict__ slots, const double* __restrict__ slot_d, int n_slots, int n_warps,
                  int w4_stride, int Hh, int D, double* __restrict__ slot_part) {
    const long long S = 2LL * Hh + (long long)D * Hh + 3LL * D, E = S + 2;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n_groups = (n_slots + PART_GROUP - 1) / PART_GROUP;
    if (t >= n_groups * E) return;
    const long long g = t / E, x = t % E;
    const int w0 = (int)(g * PART_GROUP), w1 = w0 + PART_GROUP < n_slots ? w0 + PART_GROUP : n_slots;
    double v = 0.0;
    if (x >= S) {
        for (int w = w0; w < w1; ++w) v += slot_d[2 * (long long)w + (x - S)];
    } else if (x >= 2LL * Hh && x < 2LL * Hh + (long long)D * Hh) {
        for (int w = w0; w < w1; ++w)
            if (w >= n_warps || w % w4_stride == 0) v += (double)slots[w * S + x];
    } else {
        for (int w = w0; w < w1; ++w) v += (double)slots[w * S + x];
    }
    slot_part[t] = v;
}

// One thread per parameter element, in the index space
//   [W₀[:,0] (Hh) | W₀[:,1:] (Hh·D) | b₀ (Hh) | g₁ (Hh) | be₁ (Hh) | W₄ (D·Hh) | b₄ | g₅ | be₅ (D each)],
// adding into the gradient buffers (each may be null: frozen). The sums over junctions come from
// jgroups (n_jgroups × 3Hh: partial_group_sums of partial_unfold_du's chunks), those over the slots from
// slot_part (n_slot_groups × (S + 2): partial_slot_sums), each added group by group in order, in f64;
// W₀[:,1:]'s is w0_prod (Hh × D, the GEMM duᵀ·F̂); w4_prod (D × Hh, or null) is added to W₄'s (the
// grouped kernels' GEMM Sᵀ·A over the groups, kernels/partial_grouped.cu).
extern "C" __global__ void __launch_bounds__(PART_THREADS)
partial_bwd_params(const float* __restrict__ bt, const float* __restrict__ g1, const double* __restrict__ slot_part,
                   int n_slot_groups, const double* __restrict__ jgroups, int n_jgroups,
                   const float* __restrict__ w0_prod, const float* __restrict__ w4_prod, int Hh, int D,
                   float* __restrict__ g_w0, float* __restrict__ g_b0,
                   float* __restrict__ g_g1, float* __restrict__ g_be1, float* __restrict__ g_w4,
                   float* __restrict__ g_b4, float* __restrict__ g_g5, float* __restrict__ g_be5) {
    const long long x = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long HD = (long long)Hh * D, S = 2LL * Hh + HD + 3LL * D;
    const long long total = 4LL * Hh + 2 * HD + 3LL * D;
    if (x >= total) return;
    auto j_sum = [&](long long off) {
        double v = 0.0;
        for (int g = 0; g < n_jgroups; ++g) v += jgroups[g * 3LL * Hh + off];
        return v;
    };
    auto slot_sum = [&](long long off) {
        double v = 0.0;
        for (int g = 0; g < n_slot_groups; ++g) v += slot_part[g * (S + 2) + off];
        return v;
    };
    if (x < Hh) {  // W₀[:,0]
        const int k = (int)x;
        const double v = j_sum(k);
        if (g_w0) g_w0[(long long)k * (D + 1)] += (float)v;
        return;
    }
    long long y = x - Hh;
    if (y < HD) {  // W₀[:,1:]
        const int k = (int)(y / D), c = (int)(y % D);
        if (g_w0) g_w0[(long long)k * (D + 1) + 1 + c] += w0_prod[y];
        return;
    }
    y -= HD;
    if (y < Hh) {  // b₀ = g₁⊙R − Σβm₁ − Σ_j (Σβm₂α)_j·ũ_j − (Σβm₂β)·b̃
        const int k = (int)y;
        const double v = j_sum(Hh + k) + (double)g1[k] * slot_sum(k) - slot_sum(S) - slot_sum(S + 1) * (double)bt[k];
        if (g_b0) g_b0[k] += (float)v;
        return;
    }
    y -= Hh;
    if (y < Hh) {  // g₁ = Σ_j ũ_j⊙Q_j + b̃⊙R
        const int k = (int)y;
        const double v = j_sum(2 * Hh + k) + (double)bt[k] * slot_sum(k);
        if (g_g1) g_g1[k] += (float)v;
        return;
    }
    y -= Hh;
    // the slot tail [be₁ | W₄ | b₄ | g₅ | be₅] (slot offsets Hh ..)
    const double v = slot_sum(Hh + y);
    if (y < Hh) {
        if (g_be1) g_be1[y] += (float)v;
        return;
    }
    y -= Hh;
    if (y < HD) {
        if (g_w4) g_w4[y] += (float)(w4_prod ? v + (double)w4_prod[y] : v);
        return;
    }
    y -= HD;
    float* dst = y < D ? g_b4 : (y < 2 * D ? g_g5 : g_be5);
    if (dst) dst[y % D] += (float)v;
}
