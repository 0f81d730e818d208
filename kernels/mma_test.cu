// A tensor-core GEMM tile through kernels/mma.cuh, so tests can check the fragment layout (and the
// host emulation of it) against an f64 product: tests/cuda_mma_parity.rs. Not used by the model.
#include "mma.cuh"

// One warp: c (16 × N, row-major) = bf16(a) (16 × K, row-major) · bf16(b), b given column-major as
// bt (N × K). K a multiple of 16, N of 8.
extern "C" __global__ void __launch_bounds__(32)
mma_gemm_test(const float* __restrict__ a, const float* __restrict__ bt, int K, int N, float* __restrict__ c) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int n0 = 0; n0 < N; n0 += 8) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int k0 = 0; k0 < K; k0 += 16) {
            const float* r0 = a + (long long)g * K + k0 + 2 * t;
            const float* r1 = a + (long long)(g + 8) * K + k0 + 2 * t;
            const float* bc = bt + (long long)(n0 + g) * K + k0 + 2 * t;
            const uint32_t af[4] = {mma_pack_bf16x2(r0[0], r0[1]), mma_pack_bf16x2(r1[0], r1[1]),
                                    mma_pack_bf16x2(r0[8], r0[9]), mma_pack_bf16x2(r1[8], r1[9])};
            const uint32_t bf[2] = {mma_pack_bf16x2(bc[0], bc[1]), mma_pack_bf16x2(bc[8], bc[9])};
            mma_m16n8k16_bf16(acc, af, bf, acc);
        }
        c[(long long)g * N + n0 + 2 * t] = acc[0];
        c[(long long)g * N + n0 + 2 * t + 1] = acc[1];
        c[(long long)(g + 8) * N + n0 + 2 * t] = acc[2];
        c[(long long)(g + 8) * N + n0 + 2 * t + 1] = acc[3];
    }
}
