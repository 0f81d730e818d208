// A one-block exclusive prefix sum with coalesced global accesses (scan_rows and scan_counts in
// kernels/gather.cu, partial_pass_ptr in kernels/partial.cu). Integer sums: any order gives the same
// result. Uses __shfl_sync on 64-bit words (kernels/host_emu.h has it for the host emulation).
#pragma once
#include <cstdint>

// Consecutive entries per thread in a tile.
#define SCAN_K 8

// A tile entry's slot in shared memory: one pad slot per SCAN_K, so that the threads' runs (SCAN_K
// consecutive entries each) fall in different banks (2-way conflicts for 8-byte entries, not 32-way).
__device__ __forceinline__ int scan_pad(int e) { return e + e / SCAN_K; }

// out[0..=n] = exclusive prefix of len(0..n) (either output may be null), in one block of T threads,
// by tiles of T·SCAN_K entries: the tile is loaded coalesced into shared memory, each thread takes a
// run of SCAN_K consecutive entries, the runs' sums are scanned over the block (shuffles within a
// warp, then the warps' totals), and the prefixes go back coalesced. (Each thread walking a contiguous
// n / T of the array in global memory instead made every warp access touch 32 cache lines: some 10⁵
// L1 wavefronts for J = 90,000 on the one SM the block runs on.)
template <int T, class Len>
__device__ void block_scan(long long n, Len len, long long* out64, int* out32) {
    __shared__ long long tile[T * SCAN_K + T];  // (scan_pad's slots)
    __shared__ long long wsum[T / 32];
    const int t = threadIdx.x, lane = t & 31, w = t >> 5;
    long long carry = 0;
    for (long long base = 0; base < n; base += T * SCAN_K) {
        for (int k = 0; k < SCAN_K; ++k) {
            const int e = t + T * k;
            tile[scan_pad(e)] = base + e < n ? len(base + e) : 0;
        }
        __syncthreads();
        long long s = 0;
        for (int k = 0; k < SCAN_K; ++k) s += tile[scan_pad(t * SCAN_K + k)];
        long long inc = s;  // inclusive within the warp
        for (int o = 1; o < 32; o <<= 1) {
            const long long v = (long long)__shfl_sync(0xffffffffu, (uint64_t)inc, lane >= o ? lane - o : lane);
            if (lane >= o) inc += v;
        }
        if (lane == 31) wsum[w] = inc;
        __syncthreads();
        long long run = carry + inc - s, total = 0;
        for (int q = 0; q < T / 32; ++q) {
            if (q < w) run += wsum[q];
            total += wsum[q];
        }
        for (int k = 0; k < SCAN_K; ++k) {
            const int e = scan_pad(t * SCAN_K + k);
            const long long v = tile[e];
            tile[e] = run;
            run += v;
        }
        __syncthreads();
        for (int k = 0; k < SCAN_K; ++k) {
            const int e = t + T * k;
            if (base + e < n) {
                const long long v = tile[scan_pad(e)];
                if (out64) out64[base + e] = v;
                if (out32) out32[base + e] = (int)v;
            }
        }
        carry += total;
        __syncthreads();  // (the tile and wsum are rewritten by the next tile)
    }
    if (t == 0) {
        if (out64) out64[n] = carry;
        if (out32) out32[n] = (int)carry;
    }
}
