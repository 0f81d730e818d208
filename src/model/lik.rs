//! Likelihoods (model.md §3) as elementwise functions returning the log-likelihood and its partial
//! derivatives. Formulas follow scvi-tools 1.4.1 / torch exactly, including their epsilons.

use super::real::{sigmoid, softplus_and_grad, softplus_and_grad_v, Real};

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

/// ln(x!) for the integers below this come from a table (the same values the call gives).
const FACT_TABLE: usize = 4096;

/// x as an index when it is an integer in [0, limit).
#[inline]
fn small_count(x: f64, limit: usize) -> Option<usize> {
    // A cast and back instead of floor(), which is a libm call on baseline x86-64.
    (x >= 0.0 && x < limit as f64 && (x as usize) as f64 == x).then_some(x as usize)
}

fn ln_factorials() -> &'static [f64] {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..FACT_TABLE).map(|k| super::real::lgamma(k as f64 + 1.0)).collect())
}

#[inline]
fn lgamma_xp1<T: Real>(x: T) -> T {
    // lgamma(1) = 0 exactly; skip the call for zero counts.
    if x == T::ZERO {
        return T::ZERO;
    }
    match small_count(x.to_f64(), FACT_TABLE) {
        // x + 1 is exact for these integers in f32 and f64, so this is (x + 1).lgamma() rounded.
        Some(k) => T::from_f64(ln_factorials()[k]),
        None => (x + T::ONE).lgamma(),
    }
}

/// The terms of log NB / log ZINB that depend on θ alone (one per gene with gene dispersion), and
/// lgamma(x + θ), ψ(x + θ) for the count at hand: [`nb`] and [`zinb`] compute them per entry,
/// [`GeneTerms`] once per gene and count. Same operations either way, so the same bits.
#[derive(Clone, Copy, Debug)]
pub struct ThetaTerms<T> {
    /// ln(θ + ε)
    pub log_te: T,
    /// θ / (θ + ε)
    pub frac: T,
    pub lgamma: T,
    pub digamma: T,
}

impl<T: Real> ThetaTerms<T> {
    #[inline]
    pub fn new(theta: T) -> Self {
        let eps = T::from_f64(NB_EPS);
        ThetaTerms { log_te: (theta + eps).ln(), frac: theta / (theta + eps), lgamma: theta.lgamma(), digamma: theta.digamma() }
    }
}

/// log NB(x; μ, θ) (scvi `log_nb_positive`).
#[inline]
pub fn nb<T: Real>(x: T, mu: T, theta: T) -> ExprLl<T> {
    nb_with(x, mu, theta, &ThetaTerms::new(theta), ((x + theta).lgamma(), (x + theta).digamma()))
}

/// [`nb`] with the θ terms and (lgamma, ψ)(x + θ) given.
#[inline]
pub fn nb_with<T: Real>(x: T, mu: T, theta: T, tt: &ThetaTerms<T>, xt: (T, T)) -> ExprLl<T> {
    let eps = T::from_f64(NB_EPS);
    let tme = theta + mu + eps;
    let log_tme = tme.ln();
    let log_te = tt.log_te;
    let ll = theta * (log_te - log_tme) + x * ((mu + eps).ln() - log_tme) + xt.0 - tt.lgamma - lgamma_xp1(x);
    let d_mu = x / (mu + eps) - (theta + x) / tme;
    let d_theta = log_te - log_tme + tt.frac - (theta + x) / tme + xt.1 - tt.digamma;
    ExprLl { ll, d_mu, d_theta, d_pi: T::ZERO }
}

/// log ZINB(x; μ, θ, π) with π the zero-inflation logits (scvi `log_zinb_positive`).
#[inline]
pub fn zinb<T: Real>(x: T, mu: T, theta: T, pi: T) -> ExprLl<T> {
    let xt = if x > T::from_f64(NB_EPS) { ((x + theta).lgamma(), (x + theta).digamma()) } else { (T::ZERO, T::ZERO) };
    zinb_with(x, mu, theta, pi, &ThetaTerms::new(theta), xt)
}

/// [`zinb`] with the θ terms and (lgamma, ψ)(x + θ) given (unused for x = 0).
#[inline]
pub fn zinb_with<T: Real>(x: T, mu: T, theta: T, pi: T, tt: &ThetaTerms<T>, xt: (T, T)) -> ExprLl<T> {
    let eps = T::from_f64(NB_EPS);
    let (sp, sp_g) = softplus_and_grad(-pi); // softplus(−π) and d softplus(−π) / d(−π)
    let tme = theta + mu + eps;
    let log_tme = tme.ln();
    let pth = -pi + theta * (tt.log_te - log_tme);
    zinb_combine(x, mu, theta, tt, xt, [sp, sp_g, tme, log_tme, pth], softplus_and_grad)
}

/// The rest of [`zinb_with`] once its per-entry transcendental terms are known:
/// `terms` = [softplus(−π), its derivative, θ+μ+ε, ln(θ+μ+ε), the zero-count logit pth];
/// `zero(pth)` gives softplus(pth) and its derivative (only called for a zero count).
#[inline(always)]
fn zinb_combine<T: Real>(x: T, mu: T, theta: T, tt: &ThetaTerms<T>, xt: (T, T), terms: [T; 5], zero: impl FnOnce(T) -> (T, T)) -> ExprLl<T> {
    let eps = T::from_f64(NB_EPS);
    let [sp, sp_g, tme, log_tme, pth] = terms;
    let dpth_dtheta = tt.log_te - log_tme + tt.frac - theta / tme;
    let dpth_dmu = -theta / tme;
    if x < eps {
        let (ll0, s) = zero(pth);
        let ll = ll0 - sp;
        ExprLl { ll, d_mu: s * dpth_dmu, d_theta: s * dpth_dtheta, d_pi: -s + sp_g }
    } else if x > eps {
        let ll = -sp + pth + x * ((mu + eps).ln() - log_tme) + xt.0 - tt.lgamma - lgamma_xp1(x);
        let d_mu = dpth_dmu + x / (mu + eps) - x / tme;
        let d_theta = dpth_dtheta - x / tme + xt.1 - tt.digamma;
        ExprLl { ll, d_mu, d_theta, d_pi: sp_g - T::ONE }
    } else {
        ExprLl::default()
    }
}

/// Counts below this get their lgamma(x + θ_g), ψ(x + θ_g) from [`GeneTerms`]'s table.
pub const COUNT_TABLE: usize = 64;

/// Per-gene NB / ZINB terms for one minibatch with gene dispersion: the θ terms of each gene and
/// lgamma(x + θ_g), ψ(x + θ_g) for every count x < [`COUNT_TABLE`] that occurs in the gene, so that
/// the transcendental work scales with the distinct (gene, count) pairs rather than the entries.
pub struct GeneTerms<T> {
    pub theta: Vec<ThetaTerms<T>>,
    /// ln(θ_g + ε) of every gene, contiguous (for [`zinb_row`]'s vectorised pass).
    pub log_te: Vec<T>,
    /// θ_g / (θ_g + ε) of every gene, contiguous (likewise).
    pub frac: Vec<T>,
    /// G × COUNT_TABLE of (lgamma, ψ)(x + θ_g); filled where the count occurs.
    table: Vec<(T, T)>,
}

impl<T: Real> GeneTerms<T> {
    /// `theta` per gene; `present[g]` has bit x set when count x (< 64) occurs in gene g.
    pub fn new(theta: &[T], present: &[u64]) -> Self {
        use rayon::prelude::*;
        let tt: Vec<ThetaTerms<T>> = theta.par_iter().map(|&t| ThetaTerms::new(t)).collect();
        let mut table = vec![(T::ZERO, T::ZERO); theta.len() * COUNT_TABLE];
        table.par_chunks_mut(COUNT_TABLE).enumerate().for_each(|(g, row)| {
            let mut bits = present[g] & !1; // x = 0 is θ's own terms
            while bits != 0 {
                let x = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let v = T::from_f64(x as f64) + theta[g];
                row[x] = (v.lgamma(), v.digamma());
            }
        });
        let log_te = tt.iter().map(|t| t.log_te).collect();
        let frac = tt.iter().map(|t| t.frac).collect();
        GeneTerms { theta: tt, log_te, frac, table }
    }

    /// (lgamma, ψ)(x + θ_g).
    #[inline]
    pub fn xt(&self, g: usize, x: T, theta: T) -> (T, T) {
        match small_count(x.to_f64(), COUNT_TABLE) {
            Some(0) => (self.theta[g].lgamma, self.theta[g].digamma), // 0 + θ = θ exactly
            Some(k) => self.table[g * COUNT_TABLE + k],
            None => {
                let v = x + theta;
                (v.lgamma(), v.digamma())
            }
        }
    }
}

/// Per-row buffers of [`zinb_row`] (reused across rows).
#[derive(Default)]
pub struct ZinbScratch<T> {
    ll: Vec<T>,
    sp: Vec<T>,
    sp_g: Vec<T>,
    tme: Vec<T>,
    log_tme: Vec<T>,
    pth: Vec<T>,
}

/// ZINB of one row with gene dispersion (the training loss): [`zinb_with`]'s formulas in two passes.
/// The first treats every entry as a zero count (the cheaper formula) in a loop that vectorises
/// ([`softplus_and_grad_v`], [`Real::ln_v`]) and keeps the terms a non-zero count shares with it; the
/// second walks only the row's non-zero counts (`idx`, `counts`: the sparse row) and overwrites their
/// outputs. So the count-dependent lookups (lgamma, ψ, ln x!) and their branches run for the stored
/// entries alone. For f64 that is [`zinb_with`] bit for bit; for f32 it differs from libm's rounding by a
/// few ulp (tests/gradcheck.rs bounds it). An entry whose θ+μ+ε is not a finite positive normal number
/// takes [`zinb_with`]. Returns Σ ll (summed in gene order) and writes the local gradients of −ll to
/// `gm`, `gth`, `gp`.
#[allow(clippy::too_many_arguments)]
pub fn zinb_row<T: Real>(idx: &[u32], counts: &[f32], mu: &[T], theta: &[T], pi: &[T], gt: &GeneTerms<T>, sc: &mut ZinbScratch<T>, gm: &mut [T], gth: &mut [T], gp: &mut [T]) -> f64 {
    let g = mu.len();
    let eps = T::from_f64(NB_EPS);
    for v in [&mut sc.ll, &mut sc.sp, &mut sc.sp_g, &mut sc.tme, &mut sc.log_tme, &mut sc.pth] {
        v.clear();
        v.resize(g, T::ZERO);
    }
    let (theta, pi, log_te, frac) = (&theta[..g], &pi[..g], &gt.log_te[..g], &gt.frac[..g]);
    let (gm, gth, gp) = (&mut gm[..g], &mut gth[..g], &mut gp[..g]);
    {
        let (ll, sp, sp_g) = (&mut sc.ll[..g], &mut sc.sp[..g], &mut sc.sp_g[..g]);
        let (tme, log_tme, pth) = (&mut sc.tme[..g], &mut sc.log_tme[..g], &mut sc.pth[..g]);
        let out = ZeroPass { ll, sp, sp_g, tme, log_tme, pth, gm, gth, gp };
        zero_pass(&mu[..g], theta, pi, log_te, frac, out);
    }
    // The non-zero counts: zinb_combine's other branches, from the kept terms.
    for (&c, &xf) in idx.iter().zip(counts) {
        let k = c as usize;
        let x = T::from_f32(xf);
        if x < eps {
            continue; // the zero-count formula, already there
        }
        let (th, tt) = (theta[k], &gt.theta[k]);
        let r = if x > eps {
            let terms = [sc.sp[k], sc.sp_g[k], sc.tme[k], sc.log_tme[k], sc.pth[k]];
            zinb_combine(x, mu[k], th, tt, gt.xt(k, x, th), terms, |_| unreachable!("a non-zero count"))
        } else {
            ExprLl::default()
        };
        (sc.ll[k], gm[k], gth[k], gp[k]) = (r.ll, -r.d_mu, -r.d_theta, -r.d_pi);
    }
    // θ+μ+ε outside ln_v's domain (rare): the whole entry again through zinb_with.
    let tiny = T::from_f64(f32::MIN_POSITIVE as f64);
    if sc.tme.iter().any(|&t| !(t >= tiny && t.is_finite())) {
        let mut x = vec![T::ZERO; g];
        for (&c, &v) in idx.iter().zip(counts) {
            x[c as usize] = T::from_f32(v);
        }
        for k in (0..g).filter(|&k| !(sc.tme[k] >= tiny && sc.tme[k].is_finite())) {
            let (xk, th) = (x[k], theta[k]);
            let xt = if xk > T::ZERO { gt.xt(k, xk, th) } else { (T::ZERO, T::ZERO) };
            let r = zinb_with(xk, mu[k], th, pi[k], &gt.theta[k], xt);
            (sc.ll[k], gm[k], gth[k], gp[k]) = (r.ll, -r.d_mu, -r.d_theta, -r.d_pi);
        }
    }
    sc.ll.iter().map(|v| v.to_f64()).sum()
}

/// The outputs of [`zinb_row`]'s first pass: its per-entry terms and the zero-count results.
struct ZeroPass<'a, T> {
    ll: &'a mut [T],
    sp: &'a mut [T],
    sp_g: &'a mut [T],
    tme: &'a mut [T],
    log_tme: &'a mut [T],
    pth: &'a mut [T],
    gm: &'a mut [T],
    gth: &'a mut [T],
    gp: &'a mut [T],
}

/// [`zinb_row`]'s first pass, in the AVX-512 or AVX2 instance where the CPU has one (no FMA: the same bits).
#[inline]
fn zero_pass<T: Real>(mu: &[T], theta: &[T], pi: &[T], log_te: &[T], frac: &[T], out: ZeroPass<'_, T>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above).
        return unsafe { zero_pass_avx512(mu, theta, pi, log_te, frac, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { zero_pass_avx2(mu, theta, pi, log_te, frac, out) };
    }
    zero_pass_any(mu, theta, pi, log_te, frac, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn zero_pass_avx512<T: Real>(mu: &[T], theta: &[T], pi: &[T], log_te: &[T], frac: &[T], out: ZeroPass<'_, T>) {
    zero_pass_any(mu, theta, pi, log_te, frac, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn zero_pass_avx2<T: Real>(mu: &[T], theta: &[T], pi: &[T], log_te: &[T], frac: &[T], out: ZeroPass<'_, T>) {
    zero_pass_any(mu, theta, pi, log_te, frac, out)
}

#[inline(always)]
fn zero_pass_any<T: Real>(mu: &[T], theta: &[T], pi: &[T], log_te: &[T], frac: &[T], out: ZeroPass<'_, T>) {
    let g = mu.len();
    let eps = T::from_f64(NB_EPS);
    let (theta, pi, log_te, frac) = (&theta[..g], &pi[..g], &log_te[..g], &frac[..g]);
    let ZeroPass { ll, sp, sp_g, tme, log_tme, pth, gm, gth, gp } = out;
    let (ll, sp, sp_g) = (&mut ll[..g], &mut sp[..g], &mut sp_g[..g]);
    let (tme, log_tme, pth) = (&mut tme[..g], &mut log_tme[..g], &mut pth[..g]);
    let (gm, gth, gp) = (&mut gm[..g], &mut gth[..g], &mut gp[..g]);
    for k in 0..g {
        let (a, b) = softplus_and_grad_v(-pi[k]);
        let th = theta[k];
        let t = th + mu[k] + eps;
        let lt = t.ln_v();
        let p = -pi[k] + th * (log_te[k] - lt);
        let (l0, s) = softplus_and_grad_v(p);
        // zinb_combine's zero-count branch (−θ/t is −(θ/t) exactly)
        let q = th / t;
        let dpth_dtheta = log_te[k] - lt + frac[k] - q;
        let dpth_dmu = -q;
        ll[k] = l0 - a;
        gm[k] = -(s * dpth_dmu);
        gth[k] = -(s * dpth_dtheta);
        gp[k] = -(-s + b);
        (sp[k], sp_g[k], tme[k], log_tme[k], pth[k]) = (a, b, t, lt, p);
    }
}

/// Bit x of the result is set when some entry of the batch has the count x (an integer below 64).
pub fn count_bit(x: f32) -> u64 {
    small_count(x as f64, COUNT_TABLE).map_or(0, |k| 1u64 << k)
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

/// Integer counts up to this take [`nbetaln`]'s product form.
pub const NBETALN_PRODUCT_MAX: usize = 32;

/// nbetaln(n, α) = lgamma(α) + lgamma(n+1) − lgamma(α+n) and its derivative in α.
///
/// For an integer n ≤ [`NBETALN_PRODUCT_MAX`] (the common case: junction and ATSE read counts) and
/// 0 < α < 1e8 it uses Γ(α+n)/Γ(α) = P = Π_{i<n} (α+i), so lgamma(α) − lgamma(α+n) = −ln P and
/// ψ(α) − ψ(α+n) = −P′/P, with P′ carried by the product rule: one log and one division in f64
/// instead of three lgamma and two digamma calls, and no cancellation between large lgamma values
/// (so it is more accurate than the general form, which the other inputs still take). With α < 1e8
/// and n ≤ 32, P < (1e8 + 31)³² ≈ 1e256 stays inside f64's range.
#[inline]
pub fn nbetaln<T: Real>(n: T, a: T) -> (T, T) {
    if n == T::ZERO {
        return (T::ZERO, T::ZERO);
    }
    let af = a.to_f64();
    if af > 0.0 && af < 1e8 {
        if let Some(k) = small_count(n.to_f64(), NBETALN_PRODUCT_MAX + 1) {
            let (mut prod, mut dprod) = (1.0f64, 0.0f64);
            for i in 0..k {
                let v = af + i as f64;
                dprod = dprod * v + prod;
                prod *= v;
            }
            return (T::from_f64(ln_factorials()[k] - prod.ln()), T::from_f64(-dprod / prod));
        }
    }
    (a.lgamma() + (n + T::ONE).lgamma() - (a + n).lgamma(), a.digamma() - (a + n).digamma())
}

/// sigmoid re-exported for the splicing decoders.
#[inline(always)]
pub fn sig<T: Real>(x: T) -> T {
    sigmoid(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::real::{digamma, lgamma};

    /// The general form of nbetaln, in f64.
    fn nbetaln_general(n: f64, a: f64) -> (f64, f64) {
        (lgamma(a) + lgamma(n + 1.0) - lgamma(a + n), digamma(a) - digamma(a + n))
    }

    #[test]
    fn nbetaln_product_form_matches_the_general_form() {
        // Every count the product form takes, α across the range the DM sees (p·φ: tiny to large).
        for k in 1..=NBETALN_PRODUCT_MAX {
            for &a in &[1e-7, 3e-4, 0.05, 0.7, 1.0, 2.5, 9.99, 10.0, 37.3, 480.0, 1e4, 9.9e7] {
                let (l, d) = nbetaln(k as f64, a);
                let (lw, dw) = nbetaln_general(k as f64, a);
                // The general form loses digits to cancellation between lgamma values of size
                // |lgamma(α + n)| (and ψ values of size |ψ(α)|); the product form does not.
                let lscale = lgamma(a + k as f64).abs().max(lgamma(a).abs()).max(1.0);
                let dscale = digamma(a).abs().max(1.0);
                assert!((l - lw).abs() <= 1e-13 * lscale, "value at n={k}, a={a}: {l} vs {lw}");
                assert!((d - dw).abs() <= 1e-13 * dscale, "derivative at n={k}, a={a}: {d} vs {dw}");
            }
        }
    }

    /// A row of ZINB inputs with zero and non-zero counts (some above the count table), extreme
    /// logits on both sides of softplus's threshold, and one entry whose θ + μ + ε is subnormal in f32.
    fn zinb_inputs(g: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        use rand::{Rng, SeedableRng};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let x: Vec<f64> = (0..g).map(|k| if k % 3 == 0 { r.gen_range(1..90) as f64 } else { 0.0 }).collect();
        let mut mu: Vec<f64> = (0..g).map(|_| (r.gen_range(-8.0..6.0f64)).exp()).collect();
        let mut theta: Vec<f64> = (0..g).map(|_| (r.gen_range(-4.0..4.0f64)).exp()).collect();
        let pi: Vec<f64> = (0..g).map(|k| if k % 17 == 5 { 30.0 } else if k % 17 == 6 { -30.0 } else { r.gen_range(-6.0..6.0) }).collect();
        mu[7] = 1e-45;
        theta[7] = 1e-45;
        (x, mu, theta, pi)
    }

    fn zinb_row_and_reference<T: Real>(g: usize) -> (Vec<[T; 4]>, Vec<[T; 4]>, f64, f64) {
        let (x, mu, theta, pi) = zinb_inputs(g);
        let cv = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
        let (x, mu, theta, pi) = (cv(&x), cv(&mu), cv(&theta), cv(&pi));
        // GeneTerms wants one θ per gene; the same genes' counts mark the table.
        let present: Vec<u64> = x.iter().map(|&v| count_bit(v.to_f32())).collect();
        let gt = GeneTerms::new(&theta, &present);
        let (mut gm, mut gth, mut gp) = (vec![T::ZERO; g], vec![T::ZERO; g], vec![T::ZERO; g]);
        // The sparse row: the non-zero counts (the zeros stay implicit, as in a CSR row).
        let idx: Vec<u32> = (0..g as u32).filter(|&k| x[k as usize] != T::ZERO).collect();
        let counts: Vec<f32> = idx.iter().map(|&k| x[k as usize].to_f32()).collect();
        let ll = zinb_row(&idx, &counts, &mu, &theta, &pi, &gt, &mut ZinbScratch::default(), &mut gm, &mut gth, &mut gp);
        let mut want = Vec::new();
        let mut want_ll = 0f64;
        for k in 0..g {
            let xt = if x[k] > T::ZERO { gt.xt(k, x[k], theta[k]) } else { (T::ZERO, T::ZERO) };
            let r = zinb_with(x[k], mu[k], theta[k], pi[k], &gt.theta[k], xt);
            want_ll += r.ll.to_f64();
            want.push([r.ll, -r.d_mu, -r.d_theta, -r.d_pi]);
        }
        let got = (0..g).map(|k| [T::ZERO, gm[k], gth[k], gp[k]]).collect();
        (got, want, ll, want_ll)
    }

    #[test]
    fn zinb_row_is_zinb_with_in_f64_and_close_in_f32() {
        let g = 600;
        let (got, want, ll, want_ll) = zinb_row_and_reference::<f64>(g);
        assert_eq!(ll.to_bits(), want_ll.to_bits(), "f64 row log-likelihood");
        for k in 0..g {
            for t in 1..4 {
                assert_eq!(got[k][t].to_bits(), want[k][t].to_bits(), "f64 entry {k}, output {t}");
            }
        }
        // f32: against the f64 values, the row is about as accurate as the libm path (vmath is a few
        // ulp off libm; the outputs combine terms that cancel, so both carry rounding of the terms).
        let truth = want;
        let (got, want, ll, want_ll) = zinb_row_and_reference::<f32>(g);
        assert!((ll - want_ll).abs() <= 1e-6 * want_ll.abs().max(1.0), "f32 row log-likelihood {ll} vs {want_ll}");
        let mut worst = 0.0f64;
        for k in 0..g {
            for t in 1..4 {
                let (a, b, w) = (got[k][t] as f64, want[k][t] as f64, truth[k][t]);
                assert!(a.is_finite(), "f32 entry {k}, output {t} is {a}");
                let bound = 4.0 * (b - w).abs() + 1e-6 * (1.0 + w.abs());
                assert!((a - w).abs() <= bound, "f32 entry {k}, output {t}: {a} vs libm path {b}, f64 {w}");
                worst = worst.max((a - w).abs() / bound);
            }
        }
        println!("zinb_row f32: worst error / bound {worst:.3}");
    }

    #[test]
    fn nbetaln_outside_the_product_form_is_the_general_form() {
        for &(n, a) in &[(33.0, 2.0), (1000.0, 5.0), (2.5, 3.0), (4.0, 2e8)] {
            assert_eq!(nbetaln(n, a), nbetaln_general(n, a), "n={n}, a={a}");
        }
        assert_eq!(nbetaln(0.0, 3.0), (0.0, 0.0));
    }
}
