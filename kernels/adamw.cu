// Fused optimizer steps over the flat f32 parameter buffer (one thread per entry, grid-stride).
//   adamw_step   : torch.optim.AdamW (decoupled decay p *= 1 - lr*wd, then Adam with bias correction).
//                  CPU twin: splicevi::optim::Adam::step with AdamConfig::adamw(..).
//   adam_l2_step : torch.optim.Adam with L2 decay (g += wd*p), the adversarial classifier's optimizer.
//                  CPU twin: splicevi::optim::Adam::step with AdamConfig::adam_l2(..).
// Both read the gradient-clipping scale from device memory (written by grad_norm_finalize, so no host
// round trip between the norm and the step); a null pointer means scale 1. Entries whose mask byte is 0
// (or all entries when mask is null: none) are left untouched, moments included. A non-null `guard`
// (the gradient's f64 sum of squares, written by grad_norm_finalize) that is not finite skips the whole
// step: a training step that enqueues the optimizer before the host has seen the gradient
// (DeviceModel::train_step) leaves parameters and moments as they were on a bad gradient.
// Every scalar is computed on the host in f64 and rounded to f32 exactly as the CPU twin does
// (optim::StepScalars), and the update uses explicitly rounded intrinsics (__fmul_rn/__fadd_rn: no FMA
// contraction), so the kernel executes the same IEEE f32 operations in the same order as the Rust twin
// and the results are bit-identical.
#include <cstdint>

// Threads per block (src/cuda/optim.rs launches with this many).
#define ADAM_THREADS 256

namespace {

__device__ __forceinline__ void adam_update(float& p, float g, float& m, float& v, float w1, float beta2,
                                            float w2, float eps, float step_size, float bc2_sqrt) {
    // exp_avg.lerp_(g, 1 - beta1): torch's lerp for weight < 0.5 is self + w * (end - self).
    m = __fadd_rn(m, __fmul_rn(w1, __fsub_rn(g, m)));
    // exp_avg_sq.mul_(beta2).addcmul_(g, g, value = 1 - beta2)
    v = __fmul_rn(v, beta2);
    v = __fadd_rn(v, __fmul_rn(w2, __fmul_rn(g, g)));
    // denom = exp_avg_sq.sqrt() / sqrt(bias_correction2) + eps; p.addcdiv_(m, denom, -lr / bias_correction1)
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), bc2_sqrt), eps);
    p = __fadd_rn(p, __fmul_rn(-step_size, __fdiv_rn(m, denom)));
}

// The loop both kernels share: clip scale, then the weight decay (DECOUPLED: AdamW's p *= decay before
// the update; else Adam's L2, g += decay · p), then adam_update.
template <bool DECOUPLED>
__device__ __forceinline__ void adam_steps(float* __restrict__ params, const float* __restrict__ grads,
                                           float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                           const uint8_t* __restrict__ mask, const float* __restrict__ grad_scale,
                                           const double* __restrict__ guard, long long n, float decay, float w1,
                                           float beta2, float w2, float eps, float step_size, float bc2_sqrt) {
    if (guard && !isfinite(*guard)) return;
    const float scale = grad_scale ? *grad_scale : 1.0f;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        if (mask && mask[i] == 0) continue;
        float p = params[i];
        float g = __fmul_rn(grads[i], scale);  // clip_grad_norm_ multiplies the gradient in place
        if (DECOUPLED)
            p = __fmul_rn(p, decay);  // decoupled weight decay comes first
        else
            g = __fadd_rn(g, __fmul_rn(decay, p));  // grad.add(param, alpha = weight_decay)
        float m = exp_avg[i], v = exp_avg_sq[i];
        adam_update(p, g, m, v, w1, beta2, w2, eps, step_size, bc2_sqrt);
        params[i] = p;
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(ADAM_THREADS)
adamw_step(float* __restrict__ params, const float* __restrict__ grads,
           float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
           const uint8_t* __restrict__ mask, const float* __restrict__ grad_scale,
           const double* __restrict__ guard, long long n, float decay_factor, float w1, float beta2, float w2,
           float eps, float step_size, float bc2_sqrt) {
    adam_steps<true>(params, grads, exp_avg, exp_avg_sq, mask, grad_scale, guard, n, decay_factor, w1, beta2, w2, eps,
                     step_size, bc2_sqrt);
}

extern "C" __global__ void __launch_bounds__(ADAM_THREADS)
adam_l2_step(float* __restrict__ params, const float* __restrict__ grads,
             float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
             const uint8_t* __restrict__ mask, const float* __restrict__ grad_scale,
             const double* __restrict__ guard, long long n, float weight_decay, float w1, float beta2, float w2,
             float eps, float step_size, float bc2_sqrt) {
    adam_steps<false>(params, grads, exp_avg, exp_avg_sq, mask, grad_scale, guard, n, weight_decay, w1, beta2, w2, eps,
                      step_size, bc2_sqrt);
}
