// One warp-wide tensor-core product, D = A·B + C with A 16 × 16 (bf16, row-major), B 16 × 8 (bf16,
// column-major), C and D 16 × 8 (f32): PTX `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`
// (sm_80 and later). Fragments, with g = lane / 4 and t = lane % 4 (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"); each 32-bit register holds two bf16, the lower column /
// row index in the low half:
//   a[0] = A[g][2t, 2t+1]    a[1] = A[g+8][2t, 2t+1]    a[2] = A[g][2t+8, 2t+9]   a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]    b[1] = B[2t+8, 2t+9][g]
//   c[0..1] = C[g][2t, 2t+1]   c[2..3] = C[g+8][2t, 2t+1]
// The host emulation (kernels/host_emu.h, emu::mma_m16n8k16_bf16) gathers the same elements from the
// warp's lanes and sums the 16 exact products in order in f32; the hardware's summation order and
// rounding inside the tensor core differ, so the two agree to f32 rounding of the sums, not bitwise.
// tests/cuda_mma_parity.rs checks the layout against an f64 product (kernels/mma_test.cu).
#pragma once
#include <cstdint>
#ifndef __CUDACC__
#include "host_emu.h"
#endif

// f32 → bf16 bits, rounding to nearest even (NaN stays a quiet NaN): what half::bf16::from_f32 does
// (also the GEMM operands' rounding, kernels/glue.cu glue_to_bf16).
__device__ __forceinline__ uint32_t mma_bf16_bits(float x) {
#ifdef __CUDACC__
    uint32_t u = __float_as_uint(x);
#else
    uint32_t u;
    std::memcpy(&u, &x, 4);
#endif
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x0040u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}

// Two bf16 in one register: lo in the low half (the lower k index of a fragment pair).
__device__ __forceinline__ uint32_t mma_pack_bf16x2(float lo, float hi) {
    return mma_bf16_bits(lo) | (mma_bf16_bits(hi) << 16);
}

// d = a·b + c for one warp (every lane calls it, convergent). d may alias c.
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
#ifdef __CUDACC__
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#else
    // (no tensor cores before sm_80: the build targets sm_80 and sm_90 only)
    __trap();
#endif
#else
    emu::mma_m16n8k16_bf16(d, a, b, c);
#endif
}
