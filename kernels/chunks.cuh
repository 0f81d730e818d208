// Chunk ids of segmented work split into fixed-size chunks (one warp per chunk): segment i (a cell, a
// row, a target) of a CSR `ptr` owns the ⌈n_i / chunk⌉ ids from chunk_base(i) = i + ⌊ptr[i] / chunk⌋.
// Distinct segments' ids never collide and every id is < n + ⌊ptr[n] / chunk⌋ + 1 (the host's
// `cuda::chunk_ids`), so a launch over that many warps needs no table. Used by partial_pool_fwd (and its
// tensor-core and grouped forms), sparse_linear_fwd, glue_gather_rows_part and splicing_lik; the combine
// kernels sum a segment's chunks in order.
#pragma once

template <class P>
__device__ __forceinline__ long long chunk_base(int i, const P* ptr, long long chunk) {
    return (long long)i + (long long)ptr[i] / chunk;
}

// The segment owning chunk id c: the last i < n with chunk_base(i) ≤ c (chunk_base is non-decreasing).
template <class P>
__device__ __forceinline__ int chunk_owner(long long c, const P* ptr, int n, long long chunk) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (chunk_base(mid, ptr, chunk) <= c) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// Chunk id c's segment and its items [lo, hi) (at most `chunk` of them). An id past its segment's last
// chunk (the ids are not dense: a segment of n items owns ⌈n / chunk⌉ of its 1 + ⌊n / chunk⌋) is
// empty: lo == hi, and the caller returns.
struct ChunkRange {
    int seg;
    long long lo, hi;
    __device__ __forceinline__ bool empty() const { return lo >= hi; }
};

template <class P>
__device__ __forceinline__ ChunkRange chunk_range(long long c, const P* ptr, int n, long long chunk) {
    const int seg = chunk_owner(c, ptr, n, chunk);
    const long long lo = (long long)ptr[seg] + (c - chunk_base(seg, ptr, chunk)) * chunk, end = ptr[seg + 1];
    const long long hi = lo + chunk < end ? lo + chunk : end;
    return {seg, lo, hi > lo ? hi : lo};
}
