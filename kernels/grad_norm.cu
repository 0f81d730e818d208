// Global L2 norm of the (masked) flat gradient buffer and torch's clip_grad_norm_ scale, in two passes
// with a fixed reduction order (deterministic for a given n and grid size, no atomics):
//   grad_norm_partial  : block b sums g[i]^2 (mask[i] != 0) over its grid-stride share in f64 and writes
//                        partials[b];
//   grad_norm_finalize : one block reduces the partials and writes out[0] = ||g|| (f32), out[1] = the clip
//                        scale min(max_norm / (norm + 1e-6), 1) (NaN propagates like torch.clamp), and
//                        sumsq[0] = the f64 sum of squares.
// CPU twin: splicevi::optim::grad_sumsq / grad_norm / clip_scale. The f32 values agree with the twin up
// to the f64 summation order (in practice bit-identical after rounding to f32).
// Both kernels assume blockDim.x == GN_THREADS (a power of two); the Rust wrapper launches them so.
#include <cstdint>

#define GN_THREADS 256

namespace {

__device__ __forceinline__ double block_reduce_sum(double x, double* shared) {
    const unsigned t = threadIdx.x;
    shared[t] = x;
    __syncthreads();
    for (unsigned s = GN_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) shared[t] += shared[t + s];
        __syncthreads();
    }
    return shared[0];
}

}  // namespace

extern "C" __global__ void __launch_bounds__(GN_THREADS)
grad_norm_partial(const float* __restrict__ grads, const uint8_t* __restrict__ mask, long long n,
                  double* __restrict__ partials) {
    __shared__ double shared[GN_THREADS];
    double acc = 0.0;
    const long long stride = (long long)gridDim.x * GN_THREADS;
    for (long long i = (long long)blockIdx.x * GN_THREADS + threadIdx.x; i < n; i += stride) {
        if (mask && mask[i] == 0) continue;
        const double g = (double)grads[i];
        acc += g * g;
    }
    const double total = block_reduce_sum(acc, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

extern "C" __global__ void __launch_bounds__(GN_THREADS)
grad_norm_finalize(const double* __restrict__ partials, int num_partials, float max_norm,
                   float* __restrict__ out, double* __restrict__ sumsq) {
    __shared__ double shared[GN_THREADS];
    double acc = 0.0;
    for (int i = threadIdx.x; i < num_partials; i += GN_THREADS) acc += partials[i];
    const double total = block_reduce_sum(acc, shared);
    if (threadIdx.x == 0) {
        const float norm = (float)sqrt(total);
        // torch: clip_coef = max_norm / (total_norm + 1e-6); grads *= clamp(clip_coef, max = 1.0)
        const float coef = __fdiv_rn(max_norm, __fadd_rn(norm, 1e-6f));
        const float scale = isnan(coef) ? coef : fminf(coef, 1.0f);
        out[0] = norm;
        out[1] = scale;
        if (sumsq) sumsq[0] = total;
    }
}
