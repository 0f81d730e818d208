//! Likelihoods (model.md §3) as elementwise functions returning the log-likelihood and its partial
//! derivatives. Formulas follow scvi-tools 1.4.1 / torch exactly, including their epsilons.

use super::real::{sigmoid, softplus, softplus_grad, Real};

/// scvi's eps inside the NB / ZINB logs.
pub const NB_EPS: f64 = 1e-8;
/// Splicing probabilities are clamped to [P_EPS, 1 − P_EPS] inside the splicing losses.
pub const P_EPS: f64 = 1e-8;

/// Expression log-likelihood of one count and its derivatives.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExprLl<T> {
    pub ll: T,
    pub d_mu: T,
    pub d_theta: T,
    pub d_pi: T,
}

#[inline]
fn lgamma_xp1<T: Real>(x: T) -> T {
    // lgamma(1) = 0 exactly; skip the call for zero counts.
    if x == T::ZERO {
        T::ZERO
    } else {
        (x + T::ONE).lgamma()
    }
}

/// log NB(x; μ, θ) (scvi `log_nb_positive`).
#[inline]
pub fn nb<T: Real>(x: T, mu: T, theta: T) -> ExprLl<T> {
    let eps = T::from_f64(NB_EPS);
    let tme = theta + mu + eps;
    let log_tme = tme.ln();
    let log_te = (theta + eps).ln();
    let ll = theta * (log_te - log_tme) + x * ((mu + eps).ln() - log_tme) + (x + theta).lgamma()
        - theta.lgamma()
        - lgamma_xp1(x);
    let d_mu = x / (mu + eps) - (theta + x) / tme;
    let d_theta =
        log_te - log_tme + theta / (theta + eps) - (theta + x) / tme + (x + theta).digamma() - theta.digamma();
    ExprLl { ll, d_mu, d_theta, d_pi: T::ZERO }
}

/// log ZINB(x; μ, θ, π) with π the zero-inflation logits (scvi `log_zinb_positive`).
#[inline]
pub fn zinb<T: Real>(x: T, mu: T, theta: T, pi: T) -> ExprLl<T> {
    let eps = T::from_f64(NB_EPS);
    let sp = softplus(-pi);
    let sp_g = softplus_grad(-pi); // d softplus(−π) / d(−π)
    let tme = theta + mu + eps;
    let log_tme = tme.ln();
    let log_te = (theta + eps).ln();
    let pth = -pi + theta * (log_te - log_tme);
    let dpth_dtheta = log_te - log_tme + theta / (theta + eps) - theta / tme;
    let dpth_dmu = -theta / tme;
    if x < eps {
        let ll = softplus(pth) - sp;
        let s = softplus_grad(pth);
        ExprLl { ll, d_mu: s * dpth_dmu, d_theta: s * dpth_dtheta, d_pi: -s + sp_g }
    } else if x > eps {
        let ll = -sp + pth + x * ((mu + eps).ln() - log_tme) + (x + theta).lgamma() - theta.lgamma() - lgamma_xp1(x);
        let d_mu = dpth_dmu + x / (mu + eps) - x / tme;
        let d_theta = dpth_dtheta - x / tme + (x + theta).digamma() - theta.digamma();
        ExprLl { ll, d_mu, d_theta, d_pi: sp_g - T::ONE }
    } else {
        ExprLl::default()
    }
}

/// log Poisson(x; μ) (torch: x·log μ − μ − lgamma(x+1), with 0·log μ = 0).
#[inline]
pub fn poisson<T: Real>(x: T, mu: T) -> ExprLl<T> {
    let xlogy = if x == T::ZERO { T::ZERO } else { x * mu.ln() };
    let ll = xlogy - mu - lgamma_xp1(x);
    let d_mu = if x == T::ZERO { -T::ONE } else { x / mu - T::ONE };
    ExprLl { ll, d_mu, d_theta: T::ZERO, d_pi: T::ZERO }
}

/// Clamp p to [P_EPS, 1 − P_EPS]; returns (clamped, passes-gradient).
#[inline(always)]
pub fn clamp_p<T: Real>(p: T) -> (T, bool) {
    let lo = T::from_f64(P_EPS);
    let hi = T::ONE - lo;
    if p < lo {
        (lo, false)
    } else if p > hi {
        (hi, false)
    } else {
        (p, true)
    }
}

/// Binomial without the coefficient: k log p + (n−k) log(1−p); returns (ll, d/dp) at clamped p.
#[inline]
pub fn binomial<T: Real>(k: T, n: T, p: T) -> (T, T) {
    let (pc, pass) = clamp_p(p);
    let ll = k * pc.ln() + (n - k) * (T::ONE - pc).ln();
    let d = if pass { k / pc - (n - k) / (T::ONE - pc) } else { T::ZERO };
    (ll, d)
}

/// BCE on PSI (§14.2): ψ log p + (1−ψ) log(1−p); returns (ll, d/dp).
#[inline]
pub fn bce<T: Real>(psi: T, p: T) -> (T, T) {
    let (pc, pass) = clamp_p(p);
    let ll = psi * pc.ln() + (T::ONE - psi) * (T::ONE - pc).ln();
    let d = if pass { psi / pc - (T::ONE - psi) / (T::ONE - pc) } else { T::ZERO };
    (ll, d)
}

/// Beta-binomial log pmf (with the binomial coefficient) at α = p φ, β = (1−p) φ.
/// Returns (ll, d/dp, d/dφ).
#[inline]
pub fn beta_binomial<T: Real>(k: T, n: T, p: T, phi: T) -> (T, T, T) {
    let (pc, pass) = clamp_p(p);
    let a = pc * phi;
    let b = (T::ONE - pc) * phi;
    let nk = n - k;
    let ll = (n + T::ONE).lgamma() - (k + T::ONE).lgamma() - (nk + T::ONE).lgamma() + (k + a).lgamma()
        + (nk + b).lgamma()
        - (n + a + b).lgamma()
        - a.lgamma()
        - b.lgamma()
        + (a + b).lgamma();
    let psi_nab = (n + a + b).digamma();
    let psi_ab = (a + b).digamma();
    let da = (k + a).digamma() - psi_nab - a.digamma() + psi_ab;
    let db = (nk + b).digamma() - psi_nab - b.digamma() + psi_ab;
    let dp = if pass { phi * (da - db) } else { T::ZERO };
    let dphi = pc * da + (T::ONE - pc) * db;
    (ll, dp, dphi)
}

/// nbetaln(n, α) = lgamma(α) + lgamma(n+1) − lgamma(α+n) and its derivative in α.
#[inline]
pub fn nbetaln<T: Real>(n: T, a: T) -> (T, T) {
    if n == T::ZERO {
        return (T::ZERO, T::ZERO);
    }
    (a.lgamma() + (n + T::ONE).lgamma() - (a + n).lgamma(), a.digamma() - (a + n).digamma())
}

/// sigmoid re-exported for the splicing decoders.
#[inline(always)]
pub fn sig<T: Real>(x: T) -> T {
    sigmoid(x)
}
