// Device helpers shared by the partial encoder's kernel files (kernels/partial.cu, the per-pair
// kernels, and kernels/partial_grouped.cu, the grouped ones): warp sums, the dropout keep-bit hash
// (the CPU twin's model::rng scheme, so both give the same bits), the folded first LayerNorm's
// coefficients and the pool divisor. Included once per file; everything is file-local.
#pragma once
#include <cstdint>

#ifndef PART_LN_EPS
#define PART_LN_EPS 1e-5
#endif
#ifndef POOL_SUM
#define POOL_SUM 0
#define POOL_MEAN 1
#define POOL_FIXED 2
#endif

namespace {

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
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
// Dropout decisions: unit index idx = p·hh_pad + k of pair p (hh_pad % 4 == 0) is kept when bits
// 16·(idx & 3) .. +15 of mix64(key ^ (idx >> 2)·0x9E3779B97F4A7C15) are ≥ threshold (the CPU twin's
// scheme). One hash holds four units' decisions, so for the units k = lane + 32 i of one pair lane l
// hashes the pair's 4-unit groups l and l + 32 (where Hh > 128), and the lanes that hold a group's
// units read its hash by shuffle: one mix64 per lane per pair instead of one per unit (which dominated
// the forward's instructions in training). keep_groups once per pair, then keep_of for each i, by every
// lane of the warp (convergent).
struct KeepGroups {
    uint64_t h0, h1;
};
__device__ __forceinline__ KeepGroups keep_groups(uint64_t key, long long p, int hh_pad, unsigned lane) {
    const int n4 = hh_pad >> 2;
    const uint64_t base = (uint64_t)p * (uint64_t)n4;
    KeepGroups kg;
    kg.h0 = (int)lane < n4 ? mix64(key ^ ((base + lane) * 0x9E3779B97F4A7C15ull)) : 0ull;
    kg.h1 = (int)lane + 32 < n4 ? mix64(key ^ ((base + lane + 32) * 0x9E3779B97F4A7C15ull)) : 0ull;
    return kg;
}
__device__ __forceinline__ bool keep_of(const KeepGroups& kg, uint32_t threshold, unsigned lane, int i, int hpl) {
    const int src = (int)(lane >> 2) + 8 * i;  // the group of unit lane + 32 i
    uint64_t h = __shfl_sync(0xffffffffu, kg.h0, src & 31);
    if (hpl > 4) {
        const uint64_t h1 = __shfl_sync(0xffffffffu, kg.h1, src & 31);
        if (src >= 32) h = h1;
    }
    return (uint32_t)((h >> (16 * (lane & 3))) & 0xFFFF) >= threshold;
}

// A pair's folded first LayerNorm (`Fold`): β = 1 / √(ψ²·s_uu,j + 2ψ·s_ub,j + s_bb + ε), α = ψ·β.
__device__ __forceinline__ void fold_ab(double psi, int j, const double* suu, const double* sub, const double* sbb,
                                        double& alpha, double& beta) {
    double var = psi * psi * suu[j] + 2.0 * psi * sub[j] + sbb[0];
    var = var > 0.0 ? var : 0.0;
    beta = 1.0 / sqrt(var + PART_LN_EPS);
    alpha = psi * beta;
}

__device__ __forceinline__ float pool_den(int mode, int n_obs, float divisor) {
    if (mode == POOL_MEAN) return (float)(n_obs > 1 ? n_obs : 1);
    if (mode == POOL_FIXED) return divisor > 1e-6f ? divisor : 1e-6f;
    return 1.0f;
}

}  // namespace
