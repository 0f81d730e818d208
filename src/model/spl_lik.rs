//! The sparse splicing likelihood (model.md §2.7 e, §3.2–§3.5, §14.2 BCE) as pure functions of the
//! observed entries of a minibatch: the model's CPU path (`SpliceVae::forward`) and the CPU twin of
//! kernels/splicing_lik.cu (tests/cuda_lik_parity.rs) are the same code.
//!
//! * [`sparse_logits`]: the SDDMM, logit_e = S_i · W_j + b_j for the observed entries e = (i, j) only.
//! * [`AtseGroups`]: per cell, the observed entries grouped by ATSE (sorted by (ATSE, entry)), with the
//!   check that every junction of an observed ATSE is observed. Built on the host once per minibatch
//!   (or once per dataset); the CUDA kernel takes the same arrays.
//! * [`splicing_cell`] / [`splicing_loss`]: per cell, the loss RL^s_i (times the splicing loss weight),
//!   d(RL^s_i)/d(logit_e), the per-entry contribution to d(RL^s_i)/d(concentration φ of the entry's
//!   target) and the probability p_e the loss used.
//!
//! (The CUDA twin, kernels/splicing_lik.cu, has never run on a GPU: none was available when it was
//! written; only this CPU side has been executed.)

use super::batch::SplBatch;
use super::config::{DmConcentration, SplicingLoss};
use super::lik;
use super::real::{dot8, sigmoid, softplus, Real};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Clamp of the raw sigmoid before the within-ATSE logit (§2.7 e).
pub const DM_Q_EPS: f64 = 1e-6;
/// The epsilon inside the within-ATSE log-sum-exp (§2.7 e).
pub const DM_LSE_EPS: f64 = 1e-8;

/// Which concentration parameter an entry uses (the model's `conc_target`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConcIndex {
    /// One scalar (index 0): DM with dm_concentration = "scalar"; unused by binomial / BCE.
    Scalar,
    /// φ of the junction's ATSE (`junc2atse[j]`): DM with dm_concentration = "atse".
    Atse,
    /// φ of the junction itself: beta-binomial.
    Junction,
}

impl ConcIndex {
    pub fn for_loss(kind: SplicingLoss, dm: DmConcentration) -> ConcIndex {
        match (kind, dm) {
            (SplicingLoss::DirichletMultinomial, DmConcentration::Atse) => ConcIndex::Atse,
            (SplicingLoss::BetaBinomial, _) => ConcIndex::Junction,
            _ => ConcIndex::Scalar,
        }
    }
    /// Index into log_phi of junction `j`'s concentration.
    #[inline]
    pub fn target(self, j: usize, junc2atse: &[u32]) -> usize {
        match self {
            ConcIndex::Scalar => 0,
            ConcIndex::Atse => junc2atse[j] as usize,
            ConcIndex::Junction => j,
        }
    }
}

/// Logits of the observed entries only (SDDMM): `s` is B × k row-major, `w` J × k, `bias` J.
pub fn sparse_logits<T: Real>(s: &[T], k: usize, w: &[T], bias: &[T], spl: &SplBatch) -> Vec<T> {
    assert_eq!(s.len(), spl.n_cells() * k);
    let per_cell: Vec<Vec<T>> = (0..spl.n_cells())
        .into_par_iter()
        .map(|i| {
            let si = &s[i * k..(i + 1) * k];
            spl.cell_range(i)
                .map(|e| {
                    let j = spl.junction[e] as usize;
                    dot8(si, &w[j * k..(j + 1) * k]) + bias[j]
                })
                .collect()
        })
        .collect();
    per_cell.concat()
}

/// The observed entries of each cell grouped by ATSE, CSR twice: cell i's groups are
/// `cell_ptr[i]..cell_ptr[i+1]`, group g's entries are `ord[grp_ptr[g]..grp_ptr[g+1]]` (global entry
/// indices into the [`SplBatch`] arrays), groups in ascending ATSE order, entries of a group in
/// ascending entry order (the order the model's loss has always used).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AtseGroups {
    pub cell_ptr: Vec<usize>,
    pub grp_ptr: Vec<usize>,
    pub ord: Vec<u32>,
}

impl AtseGroups {
    /// Groups `spl`'s entries by `junc2atse`; `atse_ptr` (CSR of the junctions of each ATSE) gives the
    /// ATSE sizes for the completeness check.
    pub fn build(spl: &SplBatch, junc2atse: &[u32], atse_ptr: &[usize]) -> Result<AtseGroups> {
        let per_cell: Vec<Result<(Vec<usize>, Vec<u32>)>> = (0..spl.n_cells())
            .into_par_iter()
            .map(|i| {
                let r = spl.cell_range(i);
                let m = r.len();
                let mut ord: Vec<(u32, usize)> = r.clone().map(|e| (junc2atse[spl.junction[e] as usize], e)).collect();
                ord.sort_unstable();
                let mut sizes = Vec::new();
                let mut s = 0;
                while s < m {
                    let a = ord[s].0;
                    let mut t = s + 1;
                    while t < m && ord[t].0 == a {
                        t += 1;
                    }
                    let size = atse_ptr[a as usize + 1] - atse_ptr[a as usize];
                    if t - s != size {
                        bail!(
                            "cell {i}: ATSE {a} has {} of its {size} junctions observed; every junction of an \
                             observed ATSE must be an observed entry (psi_mask is constant within an ATSE)",
                            t - s
                        );
                    }
                    sizes.push(t - s);
                    s = t;
                }
                Ok((sizes, ord.into_iter().map(|x| x.1 as u32).collect()))
            })
            .collect();
        let mut g = AtseGroups { cell_ptr: vec![0], grp_ptr: vec![0], ord: Vec::with_capacity(spl.nnz()) };
        for r in per_cell {
            let (sizes, ord) = r?;
            for s in sizes {
                let last = *g.grp_ptr.last().unwrap();
                g.grp_ptr.push(last + s);
            }
            g.ord.extend(ord);
            g.cell_ptr.push(g.grp_ptr.len() - 1);
        }
        Ok(g)
    }

    pub fn n_groups(&self) -> usize {
        self.grp_ptr.len() - 1
    }
}

/// Per-cell outputs of the splicing loss, entries in the [`SplBatch`] order.
#[derive(Clone, Debug, Default)]
pub struct SplLossOut<T> {
    /// RL^s_i × splicing_loss_weight, per cell.
    pub rl: Vec<T>,
    /// d(rl_i)/d(logit_e), per entry.
    pub g_logit: Vec<T>,
    /// Per-entry contribution to d(rl_i)/d(φ_target(e)) (zero for binomial / BCE).
    pub g_conc: Vec<T>,
    /// The probability the loss used for each entry (within-ATSE normalised for the DM).
    pub p: Vec<T>,
}

/// The loss of one cell. `logits` are the batch's entry logits; `gl`, `gc`, `pe` are the cell's
/// slices (length = the cell's entry count); `phi` = softplus(log_phi); `sc` is reused between cells.
/// Returns rl_i.
#[allow(clippy::too_many_arguments)]
fn splicing_cell<T: Real>(
    kind: SplicingLoss,
    conc: ConcIndex,
    spl: &SplBatch,
    groups: Option<&AtseGroups>,
    junc2atse: &[u32],
    i: usize,
    logits: &[T],
    phi: &[T],
    w: T,
    gl: &mut [T],
    gc: &mut [T],
    pe: &mut [T],
    sc: &mut DmScratch<T>,
) -> T {
    let r = spl.cell_range(i);
    let mut ll = 0f64;
    match kind {
        SplicingLoss::DirichletMultinomial => {
            let groups = groups.expect("the Dirichlet-multinomial loss needs the ATSE grouping");
            let (g0, g1) = (groups.cell_ptr[i], groups.cell_ptr[i + 1]);
            let (o0, o1) = (groups.grp_ptr[g0], groups.grp_ptr[g1]);
            // The cell's entries in group order, as offsets into its slices.
            sc.idx.clear();
            sc.idx.extend(groups.ord[o0..o1].iter().map(|&e| e as usize - r.start));
            dm_cell_probs(&groups.grp_ptr[g0..=g1], r.start, logits, sc);
            for g in g0..g1 {
                let (s, e) = (groups.grp_ptr[g] - o0, groups.grp_ptr[g + 1] - o0);
                let c = phi[conc.target(spl.junction[r.start + sc.idx[s]] as usize, junc2atse)];
                ll += dm_group(s..e, r.start, spl, c, w, gl, gc, pe, sc);
            }
        }
        SplicingLoss::Binomial | SplicingLoss::BetaBinomial | SplicingLoss::Bce => {
            for (q, e) in r.clone().enumerate() {
                let praw = sigmoid(logits[e]);
                pe[q] = praw;
                let (k, n) = (T::from_f32(spl.k[e]), T::from_f32(spl.n[e]));
                let (l1, dp) = match kind {
                    SplicingLoss::Binomial => lik::binomial(k, n, praw),
                    SplicingLoss::Bce => lik::bce(T::from_f32(spl.psi[e]), praw),
                    _ => {
                        let (l1, dp, dphi) =
                            lik::beta_binomial(k, n, praw, phi[conc.target(spl.junction[e] as usize, junc2atse)]);
                        gc[q] = -w * dphi;
                        (l1, dp)
                    }
                };
                ll += l1.to_f64();
                gl[q] = -w * dp * praw * (T::ONE - praw);
            }
        }
    }
    T::from_f64(-w.to_f64() * ll)
}

/// [`splicing_cell`] over every cell (in parallel). `log_phi` is the concentration parameter vector
/// (may be empty for binomial / BCE); `groups` is required for the DM; `lse_eps` is [`dm_probs`]'.
#[allow(clippy::too_many_arguments)]
pub fn splicing_loss<T: Real>(
    kind: SplicingLoss,
    conc: ConcIndex,
    spl: &SplBatch,
    groups: Option<&AtseGroups>,
    junc2atse: &[u32],
    logits: &[T],
    log_phi: &[T],
    w: T,
    lse_eps: f64,
) -> SplLossOut<T> {
    let phi: Vec<T> = log_phi.iter().map(|&v| softplus(v)).collect();
    let (b, nnz) = (spl.n_cells(), spl.nnz());
    let mut out = SplLossOut {
        rl: vec![T::ZERO; b],
        g_logit: vec![T::ZERO; nnz],
        g_conc: vec![T::ZERO; nnz],
        p: vec![T::ZERO; nnz],
    };
    // Each cell writes its own entries' slices (no per-cell vectors to gather afterwards).
    let mut parts = Vec::with_capacity(b);
    let (mut gl, mut gc, mut pe) = (out.g_logit.as_mut_slice(), out.g_conc.as_mut_slice(), out.p.as_mut_slice());
    for i in 0..b {
        let m = spl.cell_range(i).len();
        let (a, ra) = std::mem::take(&mut gl).split_at_mut(m);
        let (c, rc) = std::mem::take(&mut gc).split_at_mut(m);
        let (d, rd) = std::mem::take(&mut pe).split_at_mut(m);
        parts.push((a, (c, d)));
        (gl, gc, pe) = (ra, rc, rd);
    }
    let cells = out.rl.par_iter_mut().zip(parts.into_par_iter()).enumerate();
    let scratch = || DmScratch { lse_eps: T::from_f64(lse_eps), ..DmScratch::default() };
    cells.for_each_init(scratch, |sc, (i, (rl, (gl, (gc, pe))))| {
        *rl = splicing_cell(kind, conc, spl, groups, junc2atse, i, logits, &phi, w, gl, gc, pe, sc);
    });
    out
}

/// Within-ATSE probabilities from raw logits (§2.7 e), into `out`. `lse_eps`: the epsilon inside the
/// log-sum-exp (`ModelConfig::dm_lse_eps`: the original's [`DM_LSE_EPS`], or 0).
pub fn dm_probs<T: Real>(raw: &[T], lse_eps: f64, out: &mut Vec<T>) {
    let (lo, hi) = (T::from_f64(DM_Q_EPS), T::ONE - T::from_f64(DM_Q_EPS));
    out.clear();
    out.extend(raw.iter().map(|&x| {
        let q = sigmoid(x).max(lo).min(hi);
        (q / (T::ONE - q)).ln()
    }));
    if out.is_empty() {
        return;
    }
    let mx = out.iter().copied().fold(out[0], |a, b| a.max(b));
    let s: T = out.iter().map(|&v| (v - mx).exp()).sum();
    let lse = mx + (s + T::from_f64(lse_eps)).ln();
    out.iter_mut().for_each(|v| *v = (*v - lse).exp());
}

/// Per-cell arrays of the Dirichlet-multinomial, entries in the cell's group order.
#[derive(Default)]
struct DmScratch<T> {
    /// The epsilon inside the log-sum-exp ([`dm_probs`]' `lse_eps`).
    lse_eps: T,
    /// Offsets of the entries in the cell's slices.
    idx: Vec<usize>,
    praw: Vec<T>,
    q: Vec<T>,
    qpass: Vec<bool>,
    lg: Vec<T>,
    /// The group's arg-max of lg (an entry offset in group order), that max, and e^(lg − max).
    amax: Vec<usize>,
    mx: Vec<T>,
    ex: Vec<T>,
    /// Per entry, its group's sum of `ex` and the log-sum-exp input sum + lse_eps.
    sum: Vec<T>,
    se: Vec<T>,
    p: Vec<T>,
    dp: Vec<T>,
}

/// The within-ATSE probabilities of a cell's entries (§2.7 e) in passes over the whole cell, so that
/// the exp / ln of every entry vectorise (`Real::exp_v` / `ln_v`): raw sigmoid, clamp, logit, then
/// the per-group max and log-sum-exp, then p. `grp` are the cell's group bounds (absolute, first = the
/// cell's first entry), `sc.idx` the entries' offsets from `base`.
fn dm_cell_probs<T: Real>(grp: &[usize], base: usize, logits: &[T], sc: &mut DmScratch<T>) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked just above). No FMA: the same bits.
        return unsafe { dm_cell_probs_avx512(grp, base, logits, sc) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above). No FMA: the same bits.
        return unsafe { dm_cell_probs_avx2(grp, base, logits, sc) };
    }
    dm_cell_probs_any(grp, base, logits, sc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dm_cell_probs_avx512<T: Real>(grp: &[usize], base: usize, logits: &[T], sc: &mut DmScratch<T>) {
    dm_cell_probs_any(grp, base, logits, sc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dm_cell_probs_avx2<T: Real>(grp: &[usize], base: usize, logits: &[T], sc: &mut DmScratch<T>) {
    dm_cell_probs_any(grp, base, logits, sc)
}

#[inline(always)]
fn dm_cell_probs_any<T: Real>(grp: &[usize], base: usize, logits: &[T], sc: &mut DmScratch<T>) {
    let m = sc.idx.len();
    let o0 = grp[0];
    let bufs = [&mut sc.praw, &mut sc.q, &mut sc.lg, &mut sc.mx, &mut sc.ex, &mut sc.sum, &mut sc.se];
    for v in bufs.into_iter().chain([&mut sc.p, &mut sc.dp]) {
        v.clear();
        v.resize(m, T::ZERO);
    }
    sc.qpass.clear();
    sc.qpass.resize(m, true);
    sc.amax.clear();
    sc.amax.resize(m, 0);
    for t in 0..m {
        sc.praw[t] = logits[base + sc.idx[t]];
    }
    for x in sc.praw.iter_mut() {
        *x = T::ONE / (T::ONE + (-*x).exp_v());
    }
    let (lo, hi) = (T::from_f64(DM_Q_EPS), T::ONE - T::from_f64(DM_Q_EPS));
    for t in 0..m {
        let pr = sc.praw[t];
        // (Comparisons, not max/min: a NaN logit must stay NaN and reach the loss's finiteness check.)
        let (qq, ps) = if pr < lo {
            (lo, false)
        } else if pr > hi {
            (hi, false)
        } else {
            (pr, true)
        };
        sc.q[t] = qq;
        sc.qpass[t] = ps;
        sc.lg[t] = qq / (T::ONE - qq);
    }
    for v in sc.lg.iter_mut() {
        *v = v.ln_v();
    }
    // Per group: the arg-max and max of lg, spread over the group's entries.
    for w in grp.windows(2) {
        let (s, e) = (w[0] - o0, w[1] - o0);
        let mut amax = s;
        for t in s + 1..e {
            if sc.lg[t] > sc.lg[amax] {
                amax = t;
            }
        }
        let mx = sc.lg[amax];
        for t in s..e {
            sc.amax[t] = amax;
            sc.mx[t] = mx;
            sc.ex[t] = sc.lg[t] - mx;
        }
    }
    for v in sc.ex.iter_mut() {
        *v = v.exp_v();
    }
    let eps = sc.lse_eps;
    for w in grp.windows(2) {
        let (s, e) = (w[0] - o0, w[1] - o0);
        let sum: T = sc.ex[s..e].iter().copied().sum();
        let se = sum + eps;
        for t in s..e {
            sc.sum[t] = sum;
            sc.se[t] = se;
        }
    }
    // p = exp(lg − lse) with lse = max + ln(se): the max and ln per entry too, so that it vectorises.
    let (lg, mx, se, p) = (&sc.lg[..m], &sc.mx[..m], &sc.se[..m], &mut sc.p[..m]);
    for t in 0..m {
        p[t] = (lg[t] - (mx[t] + se[t].ln_v())).exp_v();
    }
}

/// One ATSE of one cell for the Dirichlet-multinomial, its entries at `span` of the cell's group
/// order (probabilities from [`dm_cell_probs`]): returns ll and writes d(RL)/d(logit), d(RL)/d(c)
/// contributions and p for the group's entries.
#[allow(clippy::too_many_arguments)]
fn dm_group<T: Real>(
    span: std::ops::Range<usize>,
    base: usize,
    spl: &SplBatch,
    c: T,
    w: T,
    gl: &mut [T],
    gc: &mut [T],
    pe: &mut [T],
    sc: &mut DmScratch<T>,
) -> f64 {
    let mut big_n = T::ZERO;
    let mut s_alpha = T::ZERO;
    for t in span.clone() {
        let (v, _) = lik::clamp_p(sc.p[t]);
        s_alpha += v * c;
        big_n = big_n.max(T::from_f32(spl.n[base + sc.idx[t]]));
    }
    let mut ll = 0f64;
    let (l_atse, d_atse) = if big_n > T::ZERO { lik::nbetaln(big_n, s_alpha) } else { (T::ZERO, T::ZERO) };
    ll += l_atse.to_f64();
    let mut spdp = T::ZERO;
    for t in span.clone() {
        let (pc, pcpass) = lik::clamp_p(sc.p[t]);
        let alpha = pc * c;
        let k = T::from_f32(spl.k[base + sc.idx[t]]);
        let (lj, dj) = lik::nbetaln(k, alpha);
        ll -= lj.to_f64();
        // d(RL)/dα = −w (d_atse − dj)
        let dalpha = -w * (d_atse - dj);
        gc[sc.idx[t]] = dalpha * pc;
        sc.dp[t] = if pcpass { dalpha * c } else { T::ZERO };
        pe[sc.idx[t]] = sc.p[t];
        spdp += sc.p[t] * sc.dp[t];
    }
    // d lse / d lg_t = e_t / (s + ε), plus (1 − s/(s + ε)) for the arg-max (through the max); ε = lse_eps.
    let (s, se) = (sc.sum[span.start], sc.se[span.start]);
    let tail = T::ONE - s / se;
    for t in span {
        let mut dlse = sc.ex[t] / se;
        if t == sc.amax[t] {
            dlse += tail;
        }
        let dlg = sc.p[t] * sc.dp[t] - spdp * dlse;
        let dq = dlg / (sc.q[t] * (T::ONE - sc.q[t]));
        let dpr = if sc.qpass[t] { dq } else { T::ZERO };
        gl[sc.idx[t]] = dpr * sc.praw[t] * (T::ONE - sc.praw[t]);
    }
    ll
}
