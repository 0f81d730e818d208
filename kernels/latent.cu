// The latent step fused (model.md §4, §5.1, §5.2, §14.3): posterior mixing, reparameterisation, the KL
// of the joint posterior and the modality penalty, forward and backward, one warp per cell.
//   latent_fwd          : (μ_e, v_e, μ_s, v_s, raw mixing weights, masks, ε) → q_z = (qz_m, qz_v),
//                         z = T(qz_m + √qz_v ⊙ ε) (T = row softmax for "ln"), KL_i and the penalty's
//                         row term pen_i (Σ over dims; ‖μ_e − μ_s‖ for MMD; 0 for unpaired cells);
//   latent_bwd          : d z (and d qz_m when the decoders read the mean) → d(μ_e, v_e, μ_s, v_s), the
//                         per-cell d(raw) of the softmax mixings and the per-cell rows of d(w_s) of the
//                         per-dimension mixing; KL and penalty gradients added in the same pass;
//   latent_perdim_raw_bwd : one block: d(raw) of the per-dimension mixing from those rows, summed over
//                         cells in a fixed order (no atomics).
// CPU twin: splicevi::model::latent_step (which composes model::latent exactly as SpliceVae does).
// Deterministic: every reduction is a fixed warp tree or a sequential loop; no atomics.
// The loss reduction (Σ_i KL_i · kl_weight / B, Σ_i pen_i · scale) is left to the caller. The
// gather of the softmax raw weights from their (batch | label | obs) rows and the scatter of d(raw)
// back to them are index operations outside this kernel. MMDRbf (a median over all pairs) is not
// here: the CUDA backend reports it unsupported.
// ptxas reports 8–16 bytes of spills for latent_bwd: the ABI of the IEEE division's slow-path calls;
// harmless in a kernel over B × L entries.
// (Never run on a GPU yet: none was available when it was written; its logic is checked on the host
// through kernels/host_emu.h by tests/cuda_latent_parity.rs.)
#include <cstdint>
#ifndef __CUDACC__
#include "host_emu.h"
#endif

#define LAT_THREADS 128
#define LAT_ROWS_PER_BLOCK (LAT_THREADS / 32)

// Mixing codes (splicevi::cuda::latent::mix_code).
#define MIX_CONCAT 0
#define MIX_SOFTMAX 1
#define MIX_PERDIM 2
#define MIX_ROUTE_EXPR 3
#define MIX_ROUTE_SPL 4
// Penalty codes (splicevi::cuda::latent::penalty_code).
#define PEN_NONE 0
#define PEN_JEFFREYS 1
#define PEN_MMD 2
#define PEN_JEFFREYS_EXACT 3

#define QZV_MIN 1e-6f
#define SOFTMAX_EPS 1e-30f

namespace {

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Per-dimension mixing weight w_s[t] = clamp(σ(raw_t) − mean σ(raw) + 0.5, 1e-4, 1 − 1e-4) (all lanes
// compute the mean; d is small); perdim_pass: whether the clamp lets the gradient through.
__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float perdim_mean(const float* raw, int d) {
    const unsigned lane = threadIdx.x & 31;
    float s = 0.0f;
    for (int t = lane; t < d; t += 32) s += sigmoidf_(raw[t]);
    return warp_sum(s) / (float)d;
}
__device__ __forceinline__ float perdim_ws(const float* raw, int t, float mean) {
    const float v = sigmoidf_(raw[t]) - mean + 0.5f;
    const float lo = 1e-4f, hi = 1.0f - 1e-4f;
    return v < lo ? lo : (v > hi ? hi : v);
}
__device__ __forceinline__ bool perdim_pass(const float* raw, int t, float mean) {
    const float v = sigmoidf_(raw[t]) - mean + 0.5f;
    return !(v < 1e-4f || v > 1.0f - 1e-4f);
}

// Softmax mixing weights of cell i: (e_e, e_s) and (w_e, w_s) as model::latent::mix_softmax_fwd.
__device__ __forceinline__ void softmax_w(const float* raw, const uint8_t* mask_e, const uint8_t* mask_s, int i,
                                          float* ee, float* es, float* we, float* ws) {
    *ee = mask_e[i] ? expf(raw[2 * i]) : SOFTMAX_EPS;
    *es = mask_s[i] ? expf(raw[2 * i + 1]) : SOFTMAX_EPS;
    const float s = *ee + *es + SOFTMAX_EPS;
    *we = *ee / s;
    *ws = *es / s;
}

// The weight of a modality's variance in the softmax mixings' joint variance: √w (the original,
// §12.4) or w² with soft_indep (mixing_variance = independent: the variance of w_e z_e + w_s z_s).
__device__ __forceinline__ float var_coef(float w, int soft_indep) { return soft_indep ? w * w : sqrtf(w); }

// One element of the mixing: (qz_m, qz_v before the clamp) of dim t of joint column c; ce, cs: the
// softmax mixing's variance weights (var_coef).
__device__ __forceinline__ void mix_elem(int mix, int d, int c, long long row, const float* mu_e, const float* v_e,
                                         const float* mu_s, const float* v_s, float we, float ws, float ce,
                                         float cs, bool spl_ok, float* qm, float* vp) {
    if (mix == MIX_CONCAT) {
        const long long k = row * d + (c < d ? c : c - d);
        *qm = c < d ? mu_e[k] : mu_s[k];
        *vp = c < d ? v_e[k] : v_s[k];
        return;
    }
    const long long k = row * d + c;
    if (mix == MIX_ROUTE_EXPR) {
        *qm = mu_e[k];
        *vp = v_e[k];
    } else if (mix == MIX_ROUTE_SPL) {
        *qm = mu_s[k];
        *vp = v_s[k];
    } else if (mix == MIX_SOFTMAX) {
        *qm = we * mu_e[k] + ws * mu_s[k];
        *vp = ce * v_e[k] + cs * v_s[k];
    } else {  // MIX_PERDIM: ws is w_s[t] here, sd → variance
        const float wst = spl_ok ? ws : 0.0f, wet = spl_ok ? 1.0f - ws : 1.0f;
        *qm = wet * mu_e[k] + wst * mu_s[k];
        const float sd = wet * sqrtf(v_e[k]) + wst * sqrtf(v_s[k]);
        *vp = sd * sd;
    }
}

}  // namespace

// mix: MIX_*; raw: B×2 per-cell raw weights (softmax) or d (perdim), else unused; perdim_mask: the
// mask_cells_without_splicing option (perdim only); soft_indep: mixing_variance = independent (softmax
// only). eps: B×L standard normals. kl_row, pen_row: B.
extern "C" __global__ void __launch_bounds__(LAT_THREADS)
latent_fwd(const float* __restrict__ mu_e, const float* __restrict__ v_e, const float* __restrict__ mu_s,
           const float* __restrict__ v_s, int B, int d, int mix, const float* __restrict__ raw,
           const uint8_t* __restrict__ mask_e, const uint8_t* __restrict__ mask_s, int perdim_mask,
           int soft_indep, const float* __restrict__ eps, int ln, int penalty, float* __restrict__ qz_m,
           float* __restrict__ qz_v, float* __restrict__ z, float* __restrict__ kl_row,
           float* __restrict__ pen_row) {
    const int i = blockIdx.x * LAT_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    const int L = mix == MIX_CONCAT ? 2 * d : d;
    float pm = 0.0f;
    if (mix == MIX_PERDIM) pm = perdim_mean(raw, d);  // before the row guard: the whole warp reduces
    if (i >= B) return;
    float ee = 0, es = 0, we = 0, ws = 0;
    if (mix == MIX_SOFTMAX) softmax_w(raw, mask_e, mask_s, i, &ee, &es, &we, &ws);
    const float ce = var_coef(we, soft_indep), cs = var_coef(ws, soft_indep);
    const bool spl_ok = !(perdim_mask && !mask_s[i]);
    const long long r = (long long)i * L;
    float kl = 0.0f, mx = -INFINITY;
    for (int c = lane; c < L; c += 32) {
        const float wsc = mix == MIX_PERDIM ? perdim_ws(raw, c, pm) : ws;
        float qm, vp;
        mix_elem(mix, d, c, i, mu_e, v_e, mu_s, v_s, we, wsc, ce, cs, spl_ok, &qm, &vp);
        // the averaging mixings clamp the variance at 1e-6; concatenate and routing copy it
        const float qv = (mix == MIX_SOFTMAX || mix == MIX_PERDIM) ? fmaxf(vp, QZV_MIN) : vp;
        qz_m[r + c] = qm;
        qz_v[r + c] = qv;
        kl += 0.5f * (qv + qm * qm - 1.0f - logf(qv));
        const float u = qm + sqrtf(qv) * eps[r + c];
        z[r + c] = u;
        mx = fmaxf(mx, u);
    }
    kl = warp_sum(kl);
    if (ln) {  // z = softmax(u) over the row: max, exp, f64 sum, divide (as vae::softmax_rows)
        mx = warp_max(mx);
        double s = 0.0;
        for (int c = lane; c < L; c += 32) {
            const float e = expf(z[r + c] - mx);
            z[r + c] = e;
            s += (double)e;
        }
        const float sf = (float)warp_sum_d(s);
        for (int c = lane; c < L; c += 32) z[r + c] /= sf;
    }
    // Penalty between the modality posteriors (not for concatenate), paired cells only.
    float pen = 0.0f;
    if (mix != MIX_CONCAT && penalty != PEN_NONE && mask_e[i] && mask_s[i]) {
        for (int t = lane; t < d; t += 32) {
            const long long k = (long long)i * d + t;
            const float dd = mu_e[k] - mu_s[k];
            if (penalty == PEN_MMD) {
                pen += dd * dd;
            } else {
                const float a = penalty == PEN_JEFFREYS ? sqrtf(v_e[k]) : v_e[k];
                const float b = penalty == PEN_JEFFREYS ? sqrtf(v_s[k]) : v_s[k];
                pen += 0.5f * (a / b + b / a) + 0.5f * dd * dd * (1.0f / a + 1.0f / b) - 1.0f;
            }
        }
        pen = warp_sum(pen);
        if (penalty == PEN_MMD) pen = sqrtf(pen);
    }
    if (lane == 0) {
        kl_row[i] = kl;
        pen_row[i] = pen;
    }
}

// dz: B×L; dqm_in: B×L or null (added to d qz_m: the decoders read qz_m); qz_v, z: latent_fwd's outputs.
// kl_scale multiplies d KL_i (kl_weight / B); pen_scale multiplies the penalty's gradient (1 for
// Jeffreys and MMD; kl_weight for JeffreysExact, divided here by the number of paired cells).
// Outputs (overwritten): d_mu_e, d_v_e, d_mu_s, d_v_s (B×d); d_raw_cell (B×2, softmax mixing; 0 for a
// masked modality); d_ws_rows (B×d, perdim mixing: each cell's d(w_s) before the clamp).
extern "C" __global__ void __launch_bounds__(LAT_THREADS)
latent_bwd(const float* __restrict__ mu_e, const float* __restrict__ v_e, const float* __restrict__ mu_s,
           const float* __restrict__ v_s, int B, int d, int mix, const float* __restrict__ raw,
           const uint8_t* __restrict__ mask_e, const uint8_t* __restrict__ mask_s, int perdim_mask,
           int soft_indep, const float* __restrict__ eps, int ln, int penalty, const float* __restrict__ qz_m,
           const float* __restrict__ qz_v, const float* __restrict__ z, const float* __restrict__ dz,
           const float* __restrict__ dqm_in, float kl_scale, float pen_scale, float* __restrict__ d_mu_e,
           float* __restrict__ d_v_e, float* __restrict__ d_mu_s, float* __restrict__ d_v_s,
           float* __restrict__ d_raw_cell, float* __restrict__ d_ws_rows) {
    const int i = blockIdx.x * LAT_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31;
    const int L = mix == MIX_CONCAT ? 2 * d : d;
    float pm = 0.0f;
    if (mix == MIX_PERDIM) pm = perdim_mean(raw, d);
    // JeffreysExact averages over the paired cells of the whole minibatch: every warp counts them.
    float n_paired = 0.0f;
    if (mix != MIX_CONCAT && penalty == PEN_JEFFREYS_EXACT) {
        float c = 0.0f;
        for (int k = lane; k < B; k += 32) c += (mask_e[k] && mask_s[k]) ? 1.0f : 0.0f;
        n_paired = warp_sum(c);
    }
    if (i >= B) return;
    const long long r = (long long)i * L;
    // softmax backward of "ln": d u = z ⊙ (d z − Σ z d z)
    float zdz = 0.0f;
    if (ln) {
        for (int c = lane; c < L; c += 32) zdz += z[r + c] * dz[r + c];
        zdz = warp_sum(zdz);
    }
    float ee = 0, es = 0, we = 0, ws = 0;
    if (mix == MIX_SOFTMAX) softmax_w(raw, mask_e, mask_s, i, &ee, &es, &we, &ws);
    const float ce = var_coef(we, soft_indep), cs = var_coef(ws, soft_indep);
    const bool spl_ok = !(perdim_mask && !mask_s[i]);
    float dwe = 0, dws = 0, dce = 0, dcs = 0;
    for (int c = lane; c < L; c += 32) {
        const float g = ln ? z[r + c] * (dz[r + c] - zdz) : dz[r + c];
        const float qm = qz_m[r + c], qv = qz_v[r + c];
        // d qz_m, d qz_v: the decoders' mean path, the reparameterisation, the KL
        float gm = dqm_in ? dqm_in[r + c] : 0.0f;
        float gv = 0.0f;
        gm += g;
        const float sv = sqrtf(qv);
        if (g != 0.0f && sv > 0.0f) gv += g * eps[r + c] * 0.5f / sv;
        gm += kl_scale * qm;
        gv += kl_scale * 0.5f * (1.0f - 1.0f / qv);
        if (mix == MIX_CONCAT) {
            const long long k = (long long)i * d + (c < d ? c : c - d);
            if (c < d) {
                d_mu_e[k] = gm;
                d_v_e[k] = gv;
            } else {
                d_mu_s[k] = gm;
                d_v_s[k] = gv;
            }
            continue;
        }
        const long long k = (long long)i * d + c;
        if (mix == MIX_ROUTE_EXPR || mix == MIX_ROUTE_SPL) {
            const bool e = mix == MIX_ROUTE_EXPR;
            d_mu_e[k] = e ? gm : 0.0f;
            d_v_e[k] = e ? gv : 0.0f;
            d_mu_s[k] = e ? 0.0f : gm;
            d_v_s[k] = e ? 0.0f : gv;
        } else if (mix == MIX_SOFTMAX) {
            // torch.clamp passes the gradient where the input is ≥ min
            const float vp = ce * v_e[k] + cs * v_s[k];
            const float gvc = vp >= QZV_MIN ? gv : 0.0f;
            d_mu_e[k] = gm * we;
            d_mu_s[k] = gm * ws;
            d_v_e[k] = gvc * ce;
            d_v_s[k] = gvc * cs;
            dwe += gm * mu_e[k];
            dws += gm * mu_s[k];
            dce += gvc * v_e[k];
            dcs += gvc * v_s[k];
        } else {  // MIX_PERDIM
            const float w = perdim_ws(raw, c, pm);
            const float wst = spl_ok ? w : 0.0f, wet = spl_ok ? 1.0f - w : 1.0f;
            const float se = sqrtf(v_e[k]), ss = sqrtf(v_s[k]);
            const float sd = wet * se + wst * ss;
            const float gsd = sd * sd >= QZV_MIN ? gv * 2.0f * sd : 0.0f;
            d_mu_e[k] = gm * wet;
            d_mu_s[k] = gm * wst;
            d_v_e[k] = gsd * wet * 0.5f / se;
            d_v_s[k] = gsd * wst * 0.5f / ss;
            d_ws_rows[k] = spl_ok ? gm * (mu_s[k] - mu_e[k]) + gsd * (ss - se) : 0.0f;
        }
    }
    if (mix == MIX_SOFTMAX) {
        dwe = warp_sum(dwe);
        dws = warp_sum(dws);
        dce = warp_sum(dce);
        dcs = warp_sum(dcs);
        if (soft_indep) {  // d(w²)/dw = 2w
            dwe += dce * 2.0f * we;
            dws += dcs * 2.0f * ws;
        } else {  // d√w/dw = 1 / (2√w)
            if (ce > 0.0f) dwe += dce * 0.5f / ce;
            if (cs > 0.0f) dws += dcs * 0.5f / cs;
        }
        // w_k = e_k / S, S = e_e + e_s + eps
        const float s = ee + es + SOFTMAX_EPS;
        const float common = (dwe * ee + dws * es) / (s * s);
        if (lane == 0) {
            d_raw_cell[2 * i] = mask_e[i] ? (dwe / s - common) * ee : 0.0f;
            d_raw_cell[2 * i + 1] = mask_s[i] ? (dws / s - common) * es : 0.0f;
        }
    }
    // Penalty gradient, added to the posteriors' gradients (paired cells, not for concatenate).
    if (mix == MIX_CONCAT || penalty == PEN_NONE || !(mask_e[i] && mask_s[i])) return;
    float nrm = 0.0f;
    if (penalty == PEN_MMD) {
        for (int t = lane; t < d; t += 32) {
            const long long k = (long long)i * d + t;
            const float dd = mu_e[k] - mu_s[k];
            nrm += dd * dd;
        }
        nrm = sqrtf(warp_sum(nrm));
        if (nrm == 0.0f) return;  // torch's norm backward gives 0 at 0
    }
    const float scale = penalty == PEN_JEFFREYS_EXACT ? pen_scale / n_paired : pen_scale;
    for (int t = lane; t < d; t += 32) {
        const long long k = (long long)i * d + t;
        const float dd = mu_e[k] - mu_s[k];
        if (penalty == PEN_MMD) {
            const float g = dd / nrm * pen_scale;
            d_mu_e[k] += g;
            d_mu_s[k] -= g;
            continue;
        }
        const bool sq = penalty == PEN_JEFFREYS;  // the original uses √v as the variance
        const float a = sq ? sqrtf(v_e[k]) : v_e[k];
        const float b = sq ? sqrtf(v_s[k]) : v_s[k];
        const float da = 0.5f * (1.0f / b - b / (a * a)) - 0.5f * dd * dd / (a * a);
        const float db = 0.5f * (1.0f / a - a / (b * b)) - 0.5f * dd * dd / (b * b);
        const float ddd = dd * (1.0f / a + 1.0f / b);
        d_mu_e[k] += scale * ddd;
        d_mu_s[k] -= scale * ddd;
        d_v_e[k] += sq ? scale * da * 0.5f / a : scale * da;
        d_v_s[k] += sq ? scale * db * 0.5f / b : scale * db;
    }
}

// One block of LAT_THREADS: d raw_t = (g_t − mean_t g) σ(raw_t)(1 − σ(raw_t)), g_t = [clamp passed]
// Σ_i d_ws_rows[i, t], the sum over cells sequential in i (deterministic). Requires d ≤ LAT_THREADS.
extern "C" __global__ void __launch_bounds__(LAT_THREADS)
latent_perdim_raw_bwd(const float* __restrict__ d_ws_rows, int B, int d, const float* __restrict__ raw,
                      float* __restrict__ d_raw) {
    __shared__ float red[LAT_ROWS_PER_BLOCK];
    const unsigned t = threadIdx.x, lane = t & 31, w = t >> 5;
    // mean of σ(raw) over d, by the first warp's tree (as latent_fwd's lanes compute it)
    __shared__ float mean_sh;
    if (w == 0) {
        const float m = perdim_mean(raw, d);
        if (lane == 0) mean_sh = m;
    }
    __syncthreads();
    float g = 0.0f, s = 0.0f;
    if ((int)t < d) {
        for (int i = 0; i < B; ++i) g += d_ws_rows[(long long)i * d + t];
        if (!perdim_pass(raw, t, mean_sh)) g = 0.0f;
        s = sigmoidf_(raw[t]);
    }
    float part = warp_sum(g);
    if (lane == 0) red[w] = part;
    __syncthreads();
    float total = 0.0f;
    for (int k = 0; k < LAT_ROWS_PER_BLOCK; ++k) total += red[k];
    if ((int)t < d) d_raw[t] = (g - total / (float)d) * s * (1.0f - s);
}
