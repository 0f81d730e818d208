// A minimal host emulation of the CUDA features the likelihood kernels use, so that the very kernel
// sources (kernels/splicing_lik.cu, kernels/expr_lik.cu) can be compiled by a host C++20 compiler and
// executed on a machine without a GPU (tests/cuda_lik_parity.rs does this: `host_emu_*` tests).
// It checks the kernels' logic (indexing, phases, barriers, reductions, the tile scatter) - not the
// device code generation, not device math accuracy (expf/logf here are the host libm's) and not
// performance. Each CUDA thread of a block is one std::thread; blocks run one after another, so a
// function-static variable is exactly a block's __shared__ memory. Slow (every barrier is a real
// rendezvous of up to 256 OS threads): the tests use small problems.
//   __syncthreads / __syncthreads_count : std::barrier over the block
//   __shfl_xor_sync, __shfl_sync (u64)   : an exchange buffer + std::barrier per warp of 32
//   __ballot_sync / __syncwarp           : the same, per warp of 32
//   atomicOr / __popc                    : std::atomic_ref / the builtin
//   mma.m16n8k16 bf16 (kernels/mma.cuh)  : the warp's fragments posted, each lane sums its outputs
// Not a general emulator: 1-D grids and blocks, blockDim a multiple of 32, full-warp shuffles only.
// (Never included by nvcc: the .cu files include it only when __CUDACC__ is not defined.)
#pragma once
#ifdef __CUDACC__
#error "host_emu.h is for host builds only"
#endif

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(x)
#define __shared__ static

// CUDA's 8-byte vector types (the tensor-core kernels load fragments and accumulator pairs with them).
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(8) float2 {
    float x, y;
};

namespace emu {
struct Dim3 {
    unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3 thread_idx, block_idx;
inline Dim3 block_dim, grid_dim;
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<float> warp_exchange;
inline std::vector<double> warp_exchange_d;
inline std::vector<uint64_t> warp_exchange_u64;
inline std::vector<unsigned> warp_ballot;
inline std::vector<uint32_t> warp_frag;  // per thread: the 4 A and 2 B registers of an mma
inline std::atomic<int> count_acc{0};
inline std::vector<unsigned char> dynamic_smem;

// Runs kernel() on grid x block threads, with `smem` bytes of dynamic shared memory. The block's
// threads are created once and step through the blocks in order, meeting at a barrier between blocks.
template <class F>
void launch(unsigned grid, unsigned block, size_t smem, F kernel) {
    block_dim = {block, 1, 1};
    grid_dim = {grid, 1, 1};
    block_barrier = std::make_unique<std::barrier<>>(block);
    warp_barriers.clear();
    for (unsigned w = 0; w < block / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    warp_exchange.assign(block, 0.0f);
    warp_exchange_d.assign(block, 0.0);
    warp_exchange_u64.assign(block, 0);
    warp_ballot.assign(block, 0u);
    warp_frag.assign((size_t)block * 6, 0u);
    count_acc = 0;
    std::vector<std::thread> ts;
    ts.reserve(block);
    for (unsigned t = 0; t < block; ++t)
        ts.emplace_back([=] {
            thread_idx = {t, 0, 0};
            for (unsigned b = 0; b < grid; ++b) {
                if (t == 0) dynamic_smem.assign(smem + 16, 0xff);  // garbage, like uninitialised memory
                block_barrier->arrive_and_wait();
                block_idx = {b, 0, 0};
                kernel();
                block_barrier->arrive_and_wait();
            }
        });
    for (auto& th : ts) th.join();
}
}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim
#define SV_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_smem.data())

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline int __syncthreads_count(int pred) {
    emu::count_acc += pred ? 1 : 0;
    emu::block_barrier->arrive_and_wait();
    const int c = emu::count_acc.load();
    emu::block_barrier->arrive_and_wait();
    if (threadIdx.x == 0) emu::count_acc = 0;
    emu::block_barrier->arrive_and_wait();
    return c;
}

namespace emu {
// On a GPU only __syncwarp and __syncthreads order the memory accesses of a warp's lanes; a shuffle, a
// ballot or an mma.sync waits for the lanes but is no fence (nvcc may move a shared load above it). Here
// all of them are barriers, which would hide a lane reading what another wrote with only a shuffle
// between them. Under -fsanitize=thread (scripts/emu-sanitize.sh) the warp primitives other than
// __syncwarp therefore tell libtsan to ignore their synchronisation and their own exchange buffers, so
// such a handoff is reported as the race it is on a GPU.
#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateIgnoreSyncBegin(const char*, int);
extern "C" void AnnotateIgnoreSyncEnd(const char*, int);
extern "C" void AnnotateIgnoreReadsBegin(const char*, int);
extern "C" void AnnotateIgnoreReadsEnd(const char*, int);
extern "C" void AnnotateIgnoreWritesBegin(const char*, int);
extern "C" void AnnotateIgnoreWritesEnd(const char*, int);
struct NotAFence {
    NotAFence() {
        AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
        AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
        AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    }
    ~NotAFence() {
        AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
        AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
        AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    }
};
#define EMU_NOT_A_FENCE const emu::NotAFence emu_not_a_fence_
#else
#define EMU_NOT_A_FENCE
#endif

// One warp-wide exchange through `buf` (one slot per thread of the block).
template <class T>
inline T shfl_xor(std::vector<T>& buf, T v, int lane_mask) {
    EMU_NOT_A_FENCE;
    const unsigned t = threadIdx.x, w = t / 32;
    buf[t] = v;
    warp_barriers[w]->arrive_and_wait();
    const T r = buf[t ^ (unsigned)lane_mask];
    warp_barriers[w]->arrive_and_wait();
    return r;
}
}  // namespace emu
inline float __shfl_xor_sync(unsigned /*mask*/, float v, int lane_mask) { return emu::shfl_xor(emu::warp_exchange, v, lane_mask); }
inline double __shfl_xor_sync(unsigned /*mask*/, double v, int lane_mask) { return emu::shfl_xor(emu::warp_exchange_d, v, lane_mask); }
// __shfl_sync of a 64-bit word from lane `src` (full warp).
inline uint64_t __shfl_sync(unsigned /*mask*/, uint64_t v, int src) {
    EMU_NOT_A_FENCE;
    const unsigned t = threadIdx.x, w = t / 32;
    emu::warp_exchange_u64[t] = v;
    emu::warp_barriers[w]->arrive_and_wait();
    const uint64_t r = emu::warp_exchange_u64[w * 32 + ((unsigned)src & 31u)];
    emu::warp_barriers[w]->arrive_and_wait();
    return r;
}

// __ballot_sync: bit l set when lane l's predicate holds (full warp).
inline unsigned __ballot_sync(unsigned /*mask*/, int pred) {
    EMU_NOT_A_FENCE;
    const unsigned t = threadIdx.x, w = t / 32;
    emu::warp_ballot[t] = pred ? 1u : 0u;
    emu::warp_barriers[w]->arrive_and_wait();
    unsigned r = 0;
    for (unsigned l = 0; l < 32; ++l) r |= emu::warp_ballot[w * 32 + l] << l;
    emu::warp_barriers[w]->arrive_and_wait();
    return r;
}
// __syncwarp: a rendezvous of the warp's 32 threads (std::barrier also orders their memory accesses).
inline void __syncwarp(unsigned /*mask*/ = 0xffffffffu) { emu::warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }

template <class T>
inline T __ldcg(const T* p) { return *p; }

namespace emu {
inline float bf16_to_float(uint32_t bits) {
    const uint32_t u = (bits & 0xffffu) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (kernels/mma.cuh has the fragment layout): every
// lane posts its registers, then computes its four outputs from the lanes that hold their row of A and
// column of B. The 16 products are exact in f32; they are summed in k order, then added to c.
inline void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    EMU_NOT_A_FENCE;
    const unsigned t = threadIdx.x, w = t / 32, lane = t % 32, base = w * 32;
    uint32_t* f = warp_frag.data();
    for (int i = 0; i < 4; ++i) f[(size_t)t * 6 + i] = a[i];
    f[(size_t)t * 6 + 4] = b[0];
    f[(size_t)t * 6 + 5] = b[1];
    warp_barriers[w]->arrive_and_wait();
    auto A = [&](int r, int k) {
        const unsigned owner = base + (unsigned)(r % 8) * 4 + (unsigned)(k % 8) / 2;
        const int reg = (r >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
        return bf16_to_float(f[(size_t)owner * 6 + reg] >> (16 * (k & 1)));
    };
    auto B = [&](int k, int n) {
        const unsigned owner = base + (unsigned)n * 4 + (unsigned)(k % 8) / 2;
        const int reg = 4 + (k >= 8 ? 1 : 0);
        return bf16_to_float(f[(size_t)owner * 6 + reg] >> (16 * (k & 1)));
    };
    const int g = (int)lane / 4, tg = (int)lane % 4;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int r = g + (i >= 2 ? 8 : 0), n = 2 * tg + (i & 1);
        float s = 0.0f;
        for (int k = 0; k < 16; ++k) s += A(r, k) * B(k, n);
        out[i] = c[i] + s;
    }
    warp_barriers[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}
}  // namespace emu

// Integer atomics are real atomics here: a block's threads are OS threads.
inline unsigned atomicOr(unsigned* p, unsigned v) { return std::atomic_ref<unsigned>(*p).fetch_or(v); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }

// Compile the harness with -ffp-contract=off: these are then plain IEEE operations.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }

struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t u = (uint32_t)h.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
