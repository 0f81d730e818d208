// The minibatch assembled on the device from the dataset resident there (design.md §4): a minibatch is
// a list of cells; its CSRs are gathered and its index structures built here, so that a training step
// copies B cell ids and the cell-level covariates instead of every observed entry.
//   scan_rows     : one block. The minibatch's row pointers: the exclusive prefix of its cells' row
//                   lengths in a dataset CSR (i64, and i32 when asked).
//   scan_counts   : one block. Exclusive prefix of n counts (a CSC's column pointers), by tiles of
//                   2,048 loaded coalesced into shared memory (kernels/block_scan.cuh).
//   gather_rows   : a block per cell. Copies the cell's row of up to four 32-bit arrays; writes each
//                   entry's row.
//   gather_groups : a block per cell. The Dirichlet-multinomial's ATSE groups (model::spl_lik::AtseGroups)
//                   from the dataset's per-cell groups (computed once at upload): group starts and the
//                   entries' order, made absolute.
//   csc_mark, csc_tiles, csc_place : a stable CSR → CSC (each column's entries in row order) without a
//                   sort, for matrices with at most one entry per (row, column). Rows are tiled by 32;
//                   one word per (column, tile) has bit r set when row r of the tile holds the column
//                   (atomicOr: the words do not depend on the order of the ORs). The entry of row r in
//                   column c lands at cptr[c] + (entries of c in earlier tiles) + popcount(the word's bits
//                   below r): deterministic, no float atomics.
//   group_entries : one warp per ATSE. The entries grouped by ATSE (the per-ATSE concentration
//                   targets) from the groups' CSC: each ATSE's groups in cell order, each group's entries
//                   in entry order.
//   count_group_entries : one warp per ATSE, the sizes for that grouping. iota_i32: 0..n.
// THESE KERNELS HAVE NEVER RUN ON A GPU: written and compiled without one; tests/cuda_gather_parity.rs
// runs them under the host emulation (src/cuda/emu.rs) and on a GPU where one exists.
// CPU twin: splicevi::cuda::gather::twin (and, for the whole minibatch, the host's HostBatch::build).
#include <cstdint>
#ifndef __CUDACC__
#include "host_emu.h"
#endif

#include "block_scan.cuh"

#define GATHER_THREADS 256

namespace {
// Row length of minibatch row i: cells[i]'s row in the dataset CSR `ptr`.
struct RowLen {
    const long long* ptr;
    const unsigned* cells;
    __device__ long long operator()(long long i) const { return ptr[cells[i] + 1] - ptr[cells[i]]; }
};

struct Count {
    const int* count;
    __device__ long long operator()(long long i) const { return count[i]; }
};

}  // namespace

extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
scan_rows(const long long* __restrict__ src_ptr, const unsigned* __restrict__ cells, int B, long long* out64, int* out32) {
    block_scan<GATHER_THREADS>((long long)B, RowLen{src_ptr, cells}, out64, out32);
}

extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
scan_counts(const int* __restrict__ count, int n, long long* out64, int* out32) {
    block_scan<GATHER_THREADS>((long long)n, Count{count}, out64, out32);
}

// dst_ptr: the minibatch's row pointers (scan_rows). s_k / d_k: 32-bit arrays (f32 or u32 bits) of the
// dataset and the minibatch; a null pair is skipped. row_of (nullable): each entry's row.
extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
gather_rows(const long long* __restrict__ src_ptr, const unsigned* __restrict__ cells, int B, const long long* __restrict__ dst_ptr,
            const unsigned* s0, const unsigned* s1, const unsigned* s2, const unsigned* s3, unsigned* d0, unsigned* d1, unsigned* d2,
            unsigned* d3, int* row_of) {
    const int i = blockIdx.x;
    if (i >= B) return;
    const long long from = src_ptr[cells[i]], len = src_ptr[cells[i] + 1] - from, to = dst_ptr[i];
    for (long long q = threadIdx.x; q < len; q += GATHER_THREADS) {
        if (d0) d0[to + q] = s0[from + q];
        if (d1) d1[to + q] = s1[from + q];
        if (d2) d2[to + q] = s2[from + q];
        if (d3) d3[to + q] = s3[from + q];
        if (row_of) row_of[to + q] = i;
    }
}

// The dataset's groups: cell c's are grp_src_ptr[c]..grp_src_ptr[c + 1], each starting grp_start_rel
// entries into the cell's row, of ATSE grp_atse; ord_rel (per entry) is the cell's entries in (ATSE,
// entry) order, relative to its row. g_cell: the minibatch's group pointers (scan_rows over
// grp_src_ptr); s_src_ptr / s_dst_ptr: the entries' row pointers in the dataset and the minibatch.
// Out: g_grp (n_groups + 1 entry offsets), g_ord (absolute entry ids), and (nullable) each group's row
// and ATSE.
extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
gather_groups(const long long* __restrict__ grp_src_ptr, const unsigned* __restrict__ cells, int B, const long long* __restrict__ g_cell,
              const long long* __restrict__ s_src_ptr, const long long* __restrict__ s_dst_ptr, const unsigned* __restrict__ grp_start_rel,
              const unsigned* __restrict__ grp_atse, const unsigned* __restrict__ ord_rel, long long* g_grp, unsigned* g_ord, int* grp_row,
              unsigned* grp_atse_out) {
    const int i = blockIdx.x;
    if (i >= B) return;
    const unsigned c = cells[i];
    const long long gfrom = grp_src_ptr[c], ng = grp_src_ptr[c + 1] - gfrom, gto = g_cell[i];
    const long long base = s_dst_ptr[i];
    for (long long q = threadIdx.x; q < ng; q += GATHER_THREADS) {
        g_grp[gto + q] = base + grp_start_rel[gfrom + q];
        if (grp_row) grp_row[gto + q] = i;
        if (grp_atse_out) grp_atse_out[gto + q] = grp_atse[gfrom + q];
    }
    const long long efrom = s_src_ptr[c], ne = s_src_ptr[c + 1] - efrom;
    for (long long q = threadIdx.x; q < ne; q += GATHER_THREADS) g_ord[base + q] = (unsigned)(base + ord_rel[efrom + q]);
    if (i == B - 1 && threadIdx.x == 0) g_grp[g_cell[B]] = s_dst_ptr[B];
}

// mask: cols × nt words, zeroed by the caller (nt = ⌈rows / 32⌉).
extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
csc_mark(const int* __restrict__ row_of, const unsigned* __restrict__ col, long long n, int nt, unsigned* mask) {
    for (long long e = (long long)blockIdx.x * GATHER_THREADS + threadIdx.x; e < n; e += (long long)gridDim.x * GATHER_THREADS) {
        const int r = row_of[e];
        atomicOr(&mask[(long long)col[e] * nt + (r >> 5)], 1u << (r & 31));
    }
}

// Per column: tile_off (cols × nt) = entries of the column in earlier tiles; count = the column's entries.
extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
csc_tiles(const unsigned* __restrict__ mask, int cols, int nt, int* tile_off, int* count) {
    const int c = blockIdx.x * GATHER_THREADS + threadIdx.x;
    if (c >= cols) return;
    int run = 0;
    for (int t = 0; t < nt; ++t) {
        tile_off[(long long)c * nt + t] = run;
        run += __popc(mask[(long long)c * nt + t]);
    }
    count[c] = run;
}

// cptr: the column pointers (scan_counts of csc_tiles' count). Out (each nullable), at each entry's CSC
// position: its row, its value, its CSR entry id.
extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
csc_place(const int* __restrict__ row_of, const unsigned* __restrict__ col, const float* __restrict__ val, long long n, int nt,
          const unsigned* __restrict__ mask, const int* __restrict__ tile_off, const long long* __restrict__ cptr, unsigned* out_row,
          float* out_val, int* out_ord) {
    for (long long e = (long long)blockIdx.x * GATHER_THREADS + threadIdx.x; e < n; e += (long long)gridDim.x * GATHER_THREADS) {
        const int r = row_of[e];
        const long long w = (long long)col[e] * nt + (r >> 5);
        const long long pos = cptr[col[e]] + tile_off[w] + __popc(mask[w] & ((1u << (r & 31)) - 1u));
        if (out_row) out_row[pos] = (unsigned)r;
        if (out_val) out_val[pos] = val[e];
        if (out_ord) out_ord[pos] = (int)e;
    }
}

// One warp per ATSE (the groups of a minibatch are scattered over the dataset's cells, so a thread per
// ATSE walked ~10² groups with every warp access on 32 cache lines): count[a] = the entries of ATSE
// a's groups (gcptr / gorder: the groups' CSC by ATSE, csc_place's out_ord; g_grp: each group's entries).
extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
count_group_entries(const long long* __restrict__ gcptr, const int* __restrict__ gorder, const long long* __restrict__ g_grp, int n_atse,
                    int* count) {
    const int lane = (int)threadIdx.x & 31, a = blockIdx.x * (GATHER_THREADS / 32) + ((int)threadIdx.x >> 5);
    if (a >= n_atse) return;
    long long s = 0;
    for (long long p = gcptr[a] + lane; p < gcptr[a + 1]; p += 32) s += g_grp[gorder[p] + 1] - g_grp[gorder[p]];
    for (int o = 16; o > 0; o >>= 1) s += (long long)__shfl_sync(0xffffffffu, (uint64_t)s, lane ^ o);
    if (lane == 0) count[a] = (int)s;
}

// One warp per ATSE: ids[ptr[a]..ptr[a + 1]] = ATSE a's entries, its groups in cell order, each group's in
// entry order. The lanes take 32 groups at a time; an exclusive scan of their sizes places each group.
extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
group_entries(const long long* __restrict__ gcptr, const int* __restrict__ gorder, const long long* __restrict__ g_grp,
              const unsigned* __restrict__ g_ord, const int* __restrict__ ptr, int n_atse, int* ids) {
    const int lane = (int)threadIdx.x & 31, a = blockIdx.x * (GATHER_THREADS / 32) + ((int)threadIdx.x >> 5);
    if (a >= n_atse) return;
    long long at = ptr[a];
    const long long end = gcptr[a + 1];
    for (long long base = gcptr[a]; base < end; base += 32) {
        const long long p = base + lane;
        long long q0 = 0, len = 0;
        if (p < end) {
            const int g = gorder[p];
            q0 = g_grp[g];
            len = g_grp[g + 1] - q0;
        }
        long long inc = len;  // inclusive scan of the sizes over the lanes
        for (int o = 1; o < 32; o <<= 1) {
            const long long v = (long long)__shfl_sync(0xffffffffu, (uint64_t)inc, lane >= o ? lane - o : lane);
            if (lane >= o) inc += v;
        }
        const long long total = (long long)__shfl_sync(0xffffffffu, (uint64_t)inc, 31);
        for (long long q = 0; q < len; ++q) ids[at + inc - len + q] = (int)g_ord[q0 + q];
        at += total;
    }
}

extern "C" __global__ void __launch_bounds__(GATHER_THREADS)
iota_i32(long long n, int* out) {
    for (long long e = (long long)blockIdx.x * GATHER_THREADS + threadIdx.x; e < n; e += (long long)gridDim.x * GATHER_THREADS) out[e] = (int)e;
}
