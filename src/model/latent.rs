//! Posterior mixing (model.md §4), KL (§5.1) and modality penalties (§5.2, §14.3), with backward passes.
//! All matrices are B × d (per modality) or B × L (joint).

use super::real::{sigmoid, Real};
use super::tensor::Mat;

pub const QZV_MIN: f64 = 1e-6;
const SOFTMAX_EPS: f64 = 1e-30;

/// Gradients flowing back to the per-modality posteriors.
#[derive(Clone, Debug)]
pub struct PostGrads<T> {
    pub mu_e: Mat<T>,
    pub v_e: Mat<T>,
    pub mu_s: Mat<T>,
    pub v_s: Mat<T>,
}

impl<T: Real> PostGrads<T> {
    pub fn zeros(b: usize, d: usize) -> Self {
        PostGrads { mu_e: Mat::zeros(b, d), v_e: Mat::zeros(b, d), mu_s: Mat::zeros(b, d), v_s: Mat::zeros(b, d) }
    }
    pub fn add(&mut self, o: &PostGrads<T>) {
        for (a, b) in [(&mut self.mu_e, &o.mu_e), (&mut self.v_e, &o.v_e), (&mut self.mu_s, &o.mu_s), (&mut self.v_s, &o.v_s)]
        {
            a.data.iter_mut().zip(&b.data).for_each(|(x, &y)| *x += y);
        }
    }
}

/// MultiVI masked-softmax mixing ("equal", "universal", "cell").
/// `raw` is B × 2 (expr, spl) raw weights of each cell.
pub struct SoftmaxMix<T> {
    /// B × 2 softmax weights.
    pub w: Vec<T>,
    /// B × 2 exponentials (or the 1e-30 fill for masked modalities).
    pub e: Vec<T>,
    /// qz_v before the clamp (for the clamp's gradient).
    pub v_pre: Mat<T>,
    /// `mixing_variance = independent`: the variances weigh w² instead of √w.
    pub independent: bool,
}

/// The weight of a modality's variance in the joint variance: √w (the original, §12.4) or w² (the
/// variance of the weighted sum of independent posteriors).
#[inline]
fn var_coef<T: Real>(w: T, independent: bool) -> T {
    if independent {
        w * w
    } else {
        w.sqrt()
    }
}

/// qz_v = c(w_e)·v_e + c(w_s)·v_s clamped at 1e-6, c = √· (§4.2) or ·² with `independent`.
#[allow(clippy::too_many_arguments)]
pub fn mix_softmax_fwd<T: Real>(
    mu_e: &Mat<T>,
    v_e: &Mat<T>,
    mu_s: &Mat<T>,
    v_s: &Mat<T>,
    raw: &[T],
    mask_e: &[bool],
    mask_s: &[bool],
    independent: bool,
) -> (Mat<T>, Mat<T>, SoftmaxMix<T>) {
    let (b, d) = (mu_e.rows, mu_e.cols);
    let eps = T::from_f64(SOFTMAX_EPS);
    let mut w = vec![T::ZERO; 2 * b];
    let mut e = vec![T::ZERO; 2 * b];
    let mut qm = Mat::zeros(b, d);
    let mut qv = Mat::zeros(b, d);
    let mut v_pre = Mat::zeros(b, d);
    for i in 0..b {
        let ee = if mask_e[i] { raw[2 * i].exp() } else { eps };
        let es = if mask_s[i] { raw[2 * i + 1].exp() } else { eps };
        let s = ee + es + eps;
        let (we, ws) = (ee / s, es / s);
        e[2 * i] = ee;
        e[2 * i + 1] = es;
        w[2 * i] = we;
        w[2 * i + 1] = ws;
        let (ce, cs) = (var_coef(we, independent), var_coef(ws, independent));
        for t in 0..d {
            qm.data[i * d + t] = we * mu_e.at(i, t) + ws * mu_s.at(i, t);
            let vp = ce * v_e.at(i, t) + cs * v_s.at(i, t);
            v_pre.data[i * d + t] = vp;
            qv.data[i * d + t] = vp.max(T::from_f64(QZV_MIN));
        }
    }
    (qm, qv, SoftmaxMix { w, e, v_pre, independent })
}

/// Returns the posterior gradients and d(raw) (B × 2).
#[allow(clippy::too_many_arguments)]
pub fn mix_softmax_bwd<T: Real>(
    c: &SoftmaxMix<T>,
    mu_e: &Mat<T>,
    v_e: &Mat<T>,
    mu_s: &Mat<T>,
    v_s: &Mat<T>,
    mask_e: &[bool],
    mask_s: &[bool],
    dqm: &Mat<T>,
    dqv: &Mat<T>,
) -> (PostGrads<T>, Vec<T>) {
    let (b, d) = (mu_e.rows, mu_e.cols);
    let mut g = PostGrads::zeros(b, d);
    let mut draw = vec![T::ZERO; 2 * b];
    let eps = T::from_f64(SOFTMAX_EPS);
    let half = T::from_f64(0.5);
    let two = T::from_f64(2.0);
    for i in 0..b {
        let (we, ws) = (c.w[2 * i], c.w[2 * i + 1]);
        let (ce, cs) = (var_coef(we, c.independent), var_coef(ws, c.independent));
        let mut dwe = T::ZERO;
        let mut dws = T::ZERO;
        let mut dce = T::ZERO;
        let mut dcs = T::ZERO;
        for t in 0..d {
            let k = i * d + t;
            let gm = dqm.data[k];
            // torch.clamp passes the gradient where the input is ≥ min.
            let gv = if c.v_pre.data[k] >= T::from_f64(QZV_MIN) { dqv.data[k] } else { T::ZERO };
            g.mu_e.data[k] = gm * we;
            g.mu_s.data[k] = gm * ws;
            g.v_e.data[k] = gv * ce;
            g.v_s.data[k] = gv * cs;
            dwe += gm * mu_e.data[k];
            dws += gm * mu_s.data[k];
            dce += gv * v_e.data[k];
            dcs += gv * v_s.data[k];
        }
        if c.independent {
            // d(w²)/dw = 2w
            dwe += dce * two * we;
            dws += dcs * two * ws;
        } else {
            if ce > T::ZERO {
                dwe += dce * half / ce;
            }
            if cs > T::ZERO {
                dws += dcs * half / cs;
            }
        }
        // w_k = e_k / S, S = e_e + e_s + eps
        let (ee, es) = (c.e[2 * i], c.e[2 * i + 1]);
        let s = ee + es + eps;
        let common = (dwe * ee + dws * es) / (s * s);
        let dee = dwe / s - common;
        let des = dws / s - common;
        if mask_e[i] {
            draw[2 * i] = dee * ee;
        }
        if mask_s[i] {
            draw[2 * i + 1] = des * es;
        }
    }
    (g, draw)
}

/// Per-dimension weighted average (§4.3). With `mask_s` (the §14.3 option), cells whose splicing is
/// masked use the expression posterior only.
pub struct PerDimMix<T> {
    pub s: Vec<T>,
    pub ws: Vec<T>,
    /// clamp of w_s active (no gradient) per dim
    pub ws_pass: Vec<bool>,
    pub sd: Mat<T>,
}

pub fn mix_perdim_fwd<T: Real>(
    mu_e: &Mat<T>,
    v_e: &Mat<T>,
    mu_s: &Mat<T>,
    v_s: &Mat<T>,
    raw: &[T],
    mask_s: Option<&[bool]>,
) -> (Mat<T>, Mat<T>, PerDimMix<T>) {
    let (b, d) = (mu_e.rows, mu_e.cols);
    let s: Vec<T> = raw.iter().map(|&r| sigmoid(r)).collect();
    let mean = s.iter().copied().sum::<T>() / T::from_f64(d as f64);
    let (lo, hi) = (T::from_f64(1e-4), T::from_f64(1.0 - 1e-4));
    let mut ws = vec![T::ZERO; d];
    let mut ws_pass = vec![true; d];
    for t in 0..d {
        let v = s[t] - mean + T::from_f64(0.5);
        ws[t] = if v < lo {
            ws_pass[t] = false;
            lo
        } else if v > hi {
            ws_pass[t] = false;
            hi
        } else {
            v
        };
    }
    let mut qm = Mat::zeros(b, d);
    let mut qv = Mat::zeros(b, d);
    let mut sd = Mat::zeros(b, d);
    for i in 0..b {
        let spl_ok = mask_s.map_or(true, |m| m[i]);
        for t in 0..d {
            let k = i * d + t;
            let (wst, wet) = if spl_ok { (ws[t], T::ONE - ws[t]) } else { (T::ZERO, T::ONE) };
            qm.data[k] = wet * mu_e.data[k] + wst * mu_s.data[k];
            let sdv = wet * v_e.data[k].sqrt() + wst * v_s.data[k].sqrt();
            sd.data[k] = sdv;
            qv.data[k] = (sdv * sdv).max(T::from_f64(QZV_MIN));
        }
    }
    (qm, qv, PerDimMix { s, ws, ws_pass, sd })
}

#[allow(clippy::too_many_arguments)]
pub fn mix_perdim_bwd<T: Real>(
    c: &PerDimMix<T>,
    mu_e: &Mat<T>,
    v_e: &Mat<T>,
    mu_s: &Mat<T>,
    v_s: &Mat<T>,
    mask_s: Option<&[bool]>,
    dqm: &Mat<T>,
    dqv: &Mat<T>,
) -> (PostGrads<T>, Vec<T>) {
    let (b, d) = (mu_e.rows, mu_e.cols);
    let mut g = PostGrads::zeros(b, d);
    let mut dws = vec![T::ZERO; d];
    let half = T::from_f64(0.5);
    let two = T::from_f64(2.0);
    for i in 0..b {
        let spl_ok = mask_s.map_or(true, |m| m[i]);
        for t in 0..d {
            let k = i * d + t;
            let (wst, wet) = if spl_ok { (c.ws[t], T::ONE - c.ws[t]) } else { (T::ZERO, T::ONE) };
            let sdv = c.sd.data[k];
            let gm = dqm.data[k];
            let gsd = if sdv * sdv >= T::from_f64(QZV_MIN) { dqv.data[k] * two * sdv } else { T::ZERO };
            let (se, ss) = (v_e.data[k].sqrt(), v_s.data[k].sqrt());
            g.mu_e.data[k] = gm * wet;
            g.mu_s.data[k] = gm * wst;
            g.v_e.data[k] = gsd * wet * half / se;
            g.v_s.data[k] = gsd * wst * half / ss;
            if spl_ok {
                dws[t] += gm * (mu_s.data[k] - mu_e.data[k]) + gsd * (ss - se);
            }
        }
    }
    // w_s = clamp(s − mean(s) + 0.5); s = sigmoid(raw)
    let dt = T::from_f64(d as f64);
    let dws: Vec<T> = dws.iter().zip(&c.ws_pass).map(|(&v, &p)| if p { v } else { T::ZERO }).collect();
    let mean_d = dws.iter().copied().sum::<T>() / dt;
    let draw = (0..d).map(|t| (dws[t] - mean_d) * c.s[t] * (T::ONE - c.s[t])).collect();
    (g, draw)
}

/// KL(N(m, v) ‖ N(0, 1)) summed over columns, per row.
pub fn kl_fwd<T: Real>(m: &Mat<T>, v: &Mat<T>) -> Vec<T> {
    let half = T::from_f64(0.5);
    (0..m.rows)
        .map(|i| {
            m.row(i).iter().zip(v.row(i)).map(|(&mm, &vv)| half * (vv + mm * mm - T::ONE - vv.ln())).sum::<T>()
        })
        .collect()
}

/// Adds d(KL_i)·dkl[i] into (dm, dv).
pub fn kl_bwd<T: Real>(m: &Mat<T>, v: &Mat<T>, dkl: &[T], dm: &mut Mat<T>, dv: &mut Mat<T>) {
    let half = T::from_f64(0.5);
    for i in 0..m.rows {
        let g = dkl[i];
        for t in 0..m.cols {
            let k = i * m.cols + t;
            dm.data[k] += g * m.data[k];
            dv.data[k] += g * half * (T::ONE - T::ONE / v.data[k]);
        }
    }
}

/// The original's "Jeffreys" penalty (§5.2): symmetric KL with sqrt(v) used as the variance, summed over
/// paired cells and dims. Returns the penalty; `bwd` adds its gradient times `scale`.
pub fn jeffreys_fwd<T: Real>(mu_e: &Mat<T>, v_e: &Mat<T>, mu_s: &Mat<T>, v_s: &Mat<T>, paired: &[bool]) -> T {
    let half = T::from_f64(0.5);
    let mut acc = T::ZERO;
    for i in 0..mu_e.rows {
        if !paired[i] {
            continue;
        }
        for t in 0..mu_e.cols {
            let k = i * mu_e.cols + t;
            let a = v_e.data[k].sqrt();
            let b = v_s.data[k].sqrt();
            let dd = mu_e.data[k] - mu_s.data[k];
            acc += half * (a / b + b / a) + half * dd * dd * (T::ONE / a + T::ONE / b) - T::ONE;
        }
    }
    acc
}

#[allow(clippy::too_many_arguments)]
pub fn jeffreys_bwd<T: Real>(
    mu_e: &Mat<T>,
    v_e: &Mat<T>,
    mu_s: &Mat<T>,
    v_s: &Mat<T>,
    paired: &[bool],
    scale: T,
    g: &mut PostGrads<T>,
) {
    let half = T::from_f64(0.5);
    for i in 0..mu_e.rows {
        if !paired[i] {
            continue;
        }
        for t in 0..mu_e.cols {
            let k = i * mu_e.cols + t;
            let a = v_e.data[k].sqrt();
            let b = v_s.data[k].sqrt();
            let dd = mu_e.data[k] - mu_s.data[k];
            let da = half * (T::ONE / b - b / (a * a)) - half * dd * dd / (a * a);
            let db = half * (T::ONE / a - a / (b * b)) - half * dd * dd / (b * b);
            let ddd = dd * (T::ONE / a + T::ONE / b);
            g.mu_e.data[k] += scale * ddd;
            g.mu_s.data[k] -= scale * ddd;
            // a = sqrt(v_e): da/dv_e = 0.5 / a
            g.v_e.data[k] += scale * da * half / a;
            g.v_s.data[k] += scale * db * half / b;
        }
    }
}

/// §14.3 JeffreysExact: symmetric KL between N(mu_e, v_e) and N(mu_s, v_s), summed over dims and
/// averaged over paired cells (the caller multiplies by the KL weight).
pub fn jeffreys_exact_fwd<T: Real>(mu_e: &Mat<T>, v_e: &Mat<T>, mu_s: &Mat<T>, v_s: &Mat<T>, paired: &[bool]) -> T {
    let np = paired.iter().filter(|&&p| p).count();
    if np == 0 {
        return T::ZERO;
    }
    let half = T::from_f64(0.5);
    let mut acc = T::ZERO;
    for i in 0..mu_e.rows {
        if !paired[i] {
            continue;
        }
        for t in 0..mu_e.cols {
            let k = i * mu_e.cols + t;
            let (a, b) = (v_e.data[k], v_s.data[k]);
            let dd = mu_e.data[k] - mu_s.data[k];
            acc += half * (a / b + b / a) + half * dd * dd * (T::ONE / a + T::ONE / b) - T::ONE;
        }
    }
    acc / T::from_f64(np as f64)
}

#[allow(clippy::too_many_arguments)]
pub fn jeffreys_exact_bwd<T: Real>(
    mu_e: &Mat<T>,
    v_e: &Mat<T>,
    mu_s: &Mat<T>,
    v_s: &Mat<T>,
    paired: &[bool],
    scale: T,
    g: &mut PostGrads<T>,
) {
    let np = paired.iter().filter(|&&p| p).count();
    if np == 0 {
        return;
    }
    let scale = scale / T::from_f64(np as f64);
    let half = T::from_f64(0.5);
    for i in 0..mu_e.rows {
        if !paired[i] {
            continue;
        }
        for t in 0..mu_e.cols {
            let k = i * mu_e.cols + t;
            let (a, b) = (v_e.data[k], v_s.data[k]);
            let dd = mu_e.data[k] - mu_s.data[k];
            let da = half * (T::ONE / b - b / (a * a)) - half * dd * dd / (a * a);
            let db = half * (T::ONE / a - a / (b * b)) - half * dd * dd / (b * b);
            let ddd = dd * (T::ONE / a + T::ONE / b);
            g.mu_e.data[k] += scale * ddd;
            g.mu_s.data[k] -= scale * ddd;
            g.v_e.data[k] += scale * da;
            g.v_s.data[k] += scale * db;
        }
    }
}

/// The original's "MMD": Σ_{paired} ‖mu_e − mu_s‖₂.
pub fn mmd_mean_dist_fwd<T: Real>(mu_e: &Mat<T>, mu_s: &Mat<T>, paired: &[bool]) -> T {
    let mut acc = T::ZERO;
    for i in 0..mu_e.rows {
        if paired[i] {
            acc += mu_e.row(i).iter().zip(mu_s.row(i)).map(|(&a, &b)| (a - b) * (a - b)).sum::<T>().sqrt();
        }
    }
    acc
}

pub fn mmd_mean_dist_bwd<T: Real>(mu_e: &Mat<T>, mu_s: &Mat<T>, paired: &[bool], scale: T, g: &mut PostGrads<T>) {
    for i in 0..mu_e.rows {
        if !paired[i] {
            continue;
        }
        let n = mu_e.row(i).iter().zip(mu_s.row(i)).map(|(&a, &b)| (a - b) * (a - b)).sum::<T>().sqrt();
        if n == T::ZERO {
            continue; // torch's norm backward gives 0 at 0
        }
        for t in 0..mu_e.cols {
            let k = i * mu_e.cols + t;
            let dd = (mu_e.data[k] - mu_s.data[k]) / n * scale;
            g.mu_e.data[k] += dd;
            g.mu_s.data[k] -= dd;
        }
    }
}

/// Bandwidth of the RBF penalty: h = the median pooled pairwise squared distance, and the pair of
/// pooled points it comes from (None when h fell back to 1).
#[derive(Clone, Copy, Debug)]
pub struct RbfInfo<T> {
    pub h: T,
    pub med_pair: Option<(usize, usize)>,
}

fn sqdist<T: Real>(a: &[T], b: &[T]) -> T {
    a.iter().zip(b).map(|(&x, &y)| (x - y) * (x - y)).sum::<T>()
}

/// §14.3 MMDRbf: biased MMD² between the paired cells' samples z_e and z_s with a Gaussian kernel
/// k(x, y) = exp(−‖x−y‖² / h), h = median of the pooled pairwise squared distances, multiplied by
/// the number of paired cells so that it scales like the original penalties (sums over cells).
/// The gradient is exact, including h's dependence on the samples.
pub fn mmd_rbf_fwd<T: Real>(z_e: &Mat<T>, z_s: &Mat<T>, paired: &[bool]) -> (T, RbfInfo<T>) {
    let idx: Vec<usize> = (0..z_e.rows).filter(|&i| paired[i]).collect();
    let n = idx.len();
    if n < 2 {
        return (T::ZERO, RbfInfo { h: T::ONE, med_pair: None });
    }
    let pts: Vec<&[T]> = idx.iter().map(|&i| z_e.row(i)).chain(idx.iter().map(|&i| z_s.row(i))).collect();
    let mut dists: Vec<(f64, usize, usize)> = Vec::with_capacity(n * (2 * n - 1));
    for a in 0..2 * n {
        for b in a + 1..2 * n {
            dists.push((sqdist(pts[a], pts[b]).to_f64(), a, b));
        }
    }
    dists.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap().then((x.1, x.2).cmp(&(y.1, y.2))));
    let (med, ma, mb) = dists[dists.len() / 2];
    let info = if med > 1e-12 {
        RbfInfo { h: T::from_f64(med), med_pair: Some((ma, mb)) }
    } else {
        RbfInfo { h: T::ONE, med_pair: None }
    };
    let h = info.h;
    let nt = T::from_f64(n as f64);
    let mut acc = T::ZERO;
    for a in 0..n {
        for b in 0..n {
            acc += (-sqdist(pts[a], pts[b]) / h).exp() + (-sqdist(pts[n + a], pts[n + b]) / h).exp()
                - T::from_f64(2.0) * (-sqdist(pts[a], pts[n + b]) / h).exp();
        }
    }
    (acc / nt, info)
}

/// Gradient of `mmd_rbf_fwd` w.r.t. the samples, times `scale`, added into (dz_e, dz_s).
#[allow(clippy::too_many_arguments)]
pub fn mmd_rbf_bwd<T: Real>(
    z_e: &Mat<T>,
    z_s: &Mat<T>,
    paired: &[bool],
    info: &RbfInfo<T>,
    scale: T,
    dz_e: &mut Mat<T>,
    dz_s: &mut Mat<T>,
) {
    let idx: Vec<usize> = (0..z_e.rows).filter(|&i| paired[i]).collect();
    let n = idx.len();
    if n < 2 {
        return;
    }
    let d = z_e.cols;
    let h = info.h;
    let c = scale / T::from_f64(n as f64);
    let two = T::from_f64(2.0);
    // Pooled points: 0..n are z_e rows, n..2n are z_s rows. Gradients per pooled point.
    let pts: Vec<&[T]> = idx.iter().map(|&i| z_e.row(i)).chain(idx.iter().map(|&i| z_s.row(i))).collect();
    let mut gp = vec![T::ZERO; 2 * n * d];
    let mut dh = T::ZERO;
    // term(u, w, s) = s·exp(−‖u−w‖²/h): d/du = −2 s (u−w)/h · k; d/dh = s k ‖u−w‖²/h²
    let mut term = |u: usize, w: usize, s: T, gp: &mut Vec<T>| {
        let sq = sqdist(pts[u], pts[w]);
        let k = (-sq / h).exp();
        dh += s * k * sq / (h * h);
        for t in 0..d {
            let gu = -two * s * (pts[u][t] - pts[w][t]) / h * k;
            gp[u * d + t] += gu;
            gp[w * d + t] -= gu;
        }
    };
    for a in 0..n {
        for b in 0..n {
            term(a, b, T::ONE, &mut gp);
            term(n + a, n + b, T::ONE, &mut gp);
            term(a, n + b, -two, &mut gp);
        }
    }
    if let Some((ma, mb)) = info.med_pair {
        for t in 0..d {
            let g = dh * two * (pts[ma][t] - pts[mb][t]);
            gp[ma * d + t] += g;
            gp[mb * d + t] -= g;
        }
    }
    for (q, &i) in idx.iter().enumerate() {
        for t in 0..d {
            dz_e.data[i * d + t] += c * gp[q * d + t];
            dz_s.data[i * d + t] += c * gp[(n + q) * d + t];
        }
    }
}
