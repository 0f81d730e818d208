// Single-precision log-gamma and digamma for the likelihood kernels (lgamma terms of the NB/ZINB/DM
// likelihoods and their digamma gradients). For x > 0 (up to 1e6 and beyond) the error is within a few
// f32 ulp of max(|f(x)|, 1), and relative accuracy is kept near the zeros (lgamma at 1 and 2, digamma at
// 1.4616...) by polynomial fits around them; measured on the host build: <= 2 eps * max(|f|, 1).
// tests/special.rs checks this against an f64 reference over 1e-4 .. 1e6. Negative arguments work by
// reflection, accurate relative to the size of the terms of the reflection formula.
// The functions are __host__ __device__ so that the very same source can be compiled by a host C++
// compiler: tests/special.rs does that to check the algorithm on machines without a GPU.
// CPU counterpart for the model code: the lgamma/digamma in src/model (written separately, in f64/f32).
#pragma once

#ifdef __CUDACC__
#define SV_HD __host__ __device__ __forceinline__
#else
#include <math.h>
#include <cmath>
#define SV_HD inline
#endif

namespace sv {

// lgamma(2 + t) = t * P(t) on t in [-0.5, 0.5]; P is a degree-9 Chebyshev-interpolated fit of the Taylor
// series (1 - gamma) + sum_k (-1)^k (zeta(k) - 1) / k t^(k-1) (relative error < 5e-10 before rounding).
SV_HD float lgamma_2p(float t) {
    float p = 1.15003557080690060e-04f;
    p = p * t + -2.53861846440821650e-04f;
    p = p * t + 5.05657420847909866e-04f;
    p = p * t + -1.18583769809599694e-03f;
    p = p * t + 2.89095619123608347e-03f;
    p = p * t + -7.38617763719569536e-03f;
    p = p * t + 2.05807883317551156e-02f;
    p = p * t + -6.73522812986560582e-02f;
    p = p * t + 3.22467033676928305e-01f;
    p = p * t + 4.22784334999111500e-01f;
    return t * p;
}

#ifdef __CUDACC__
SV_HD float sinpi(float x) { return sinpif(x); }
SV_HD float cospi(float x) { return cospif(x); }
#else
// Host build (tests only): exact argument reduction, then double precision.
inline float sinpi(float x) {
    double r = (double)x - 2.0 * std::nearbyint((double)x * 0.5);
    return (float)std::sin(3.14159265358979323846 * r);
}
inline float cospi(float x) {
    double r = (double)x - 2.0 * std::nearbyint((double)x * 0.5);
    return (float)std::cos(3.14159265358979323846 * r);
}
#endif

// log|Gamma(x)| for x > 0.
SV_HD float lgamma_pos(float x) {
    if (x >= 8.0f) {
        // Stirling: (x - 1/2) log x - x + log(2 pi)/2 + 1/(12x) - 1/(360x^3) + 1/(1260x^5); the first
        // dropped term is 1/(1680 x^7) < 3e-10. Written as (x - 1/2)(log x - 1) + (log(2 pi) - 1)/2.
        const float r = 1.0f / x;
        const float r2 = r * r;
        const float series = r * (8.33333333333333333e-02f + r2 * (-2.77777777777777778e-03f + r2 * 7.93650793650793651e-04f));
        return (x - 0.5f) * (logf(x) - 1.0f) + (4.18938533204672742e-01f + series);
    }
    if (x < 0.5f) {
        // lgamma(x) = lgamma(2 + x) - log(1 + x) - log(x); t = x stays exact.
        return lgamma_2p(x) - log1pf(x) - logf(x);
    }
    if (x < 1.5f) {
        // lgamma(x) = lgamma(2 + t) - log1p(t) with t = x - 1 exact: relative accuracy near the zero at 1.
        const float t = x - 1.0f;
        return lgamma_2p(t) - log1pf(t);
    }
    // 1.5 <= x < 8: shift down into [1.5, 2.5) (each x - 1 is exact here), multiplying the factors.
    float z = 1.0f;
    while (x >= 2.5f) {
        x -= 1.0f;
        z *= x;
    }
    return logf(z) + lgamma_2p(x - 2.0f);
}

// log|Gamma(x)|: +inf at the poles (0, -1, -2, ...), NaN for NaN.
SV_HD float log_gamma(float x) {
    if (!(x == x)) return x;
    if (x > 0.0f) return lgamma_pos(x);
    if (x == floorf(x)) return INFINITY;
    // Reflection with the exact -x: Gamma(x) Gamma(-x) = -pi / (x sin(pi x)).
    const float s = fabsf(x * sinpi(x));
    return 1.14472988584940017f - logf(s) - lgamma_pos(-x);  // log(pi) - log|x sin(pi x)| - lgamma(-x)
}

// psi(1 + t) for t in [0, 1]: (t - t0) * Q(t - 1/2), t0 = 0.46163214496836234... the positive root of
// psi minus 1, split in two floats so that t - t0 keeps relative accuracy near the root. Q is a degree-12
// Chebyshev-interpolated fit (relative error < 2e-10 before rounding).
SV_HD float digamma_1p(float t) {
    const float s = t - 0.5f;
    float q = 5.28458501634403079e-03f;
    q = q * s + -7.70345876858119158e-03f;
    q = q * s + 7.26943654486001539e-03f;
    q = q * s + -1.10916559529619999e-02f;
    q = q * s + 1.80238844408433067e-02f;
    q = q * s + -2.71029746293766707e-02f;
    q = q * s + 4.07503801443063404e-02f;
    q = q * s + -6.19126468581838799e-02f;
    q = q * s + 9.49891671133399618e-02f;
    q = q * s + -1.48405224060432772e-01f;
    q = q * s + 2.40542477243458397e-01f;
    q = q * s + -4.23627418564278435e-01f;
    q = q * s + 9.51055876049841764e-01f;
    return ((t - 0.4616321325302124f) - 1.2438149843418955e-08f) * q;
}

// digamma psi(x) for x > 0.
SV_HD float digamma_pos(float x) {
    if (x >= 6.0f) {
        // psi(x) ~ log x - 1/(2x) - 1/(12x^2) + 1/(120x^4) - 1/(252x^6) + 1/(240x^8); the first dropped
        // term is 1/(132 x^10) < 2e-10 at x = 6.
        const float r = 1.0f / x;
        const float r2 = r * r;
        const float series = r2 * (8.33333333333333333e-02f - r2 * (8.33333333333333333e-03f - r2 * (3.96825396825396825e-03f - r2 * 4.16666666666666667e-03f)));
        return logf(x) - 0.5f * r - series;
    }
    if (x < 1.0f) {
        // psi(x) = psi(1 + x) - 1/x with t = x exact.
        return digamma_1p(x) - 1.0f / x;
    }
    // 1 <= x < 6: psi(x) = psi(x - 1) + 1/(x - 1) down into [1, 2) (each x - 1 is exact here).
    float acc = 0.0f;
    while (x >= 2.0f) {
        x -= 1.0f;
        acc += 1.0f / x;
    }
    return digamma_1p(x - 1.0f) + acc;
}

// digamma psi(x): -inf at +0, +inf at -0, NaN at -1, -2, ... (the conventions of torch.digamma).
SV_HD float digamma(float x) {
    if (!(x == x)) return x;
    if (x > 0.0f) return digamma_pos(x);
    if (x == 0.0f) return copysignf(INFINITY, -x);
    if (x == floorf(x)) return NAN;
    // psi(x) = psi(-x) - 1/x - pi cot(pi x), with the exact -x.
    return digamma_pos(-x) - 1.0f / x - 3.14159265358979324f * cospi(x) / sinpi(x);
}

}  // namespace sv
