// Evaluates the device lgamma / digamma of special.cuh over an array, so tests can compare them with an
// f64 reference (tests/special.rs). CPU twin: the same special.cuh compiled for the host by that test.
#include "special.cuh"

extern "C" __global__ void __launch_bounds__(256)
special_eval(const float* __restrict__ x, float* __restrict__ lgamma_out,
             float* __restrict__ digamma_out, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        lgamma_out[i] = sv::log_gamma(x[i]);
        digamma_out[i] = sv::digamma(x[i]);
    }
}
