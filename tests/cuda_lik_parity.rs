//! The likelihood kernels kernels/splicing_lik.cu (sparse splicing decode + DM / beta-binomial /
//! binomial / BCE + dL/dlogit) and kernels/expr_lik.cu (expression decode + ZINB / NB / Poisson +
//! gradients) against their CPU twins `model::spl_lik` and `model::expr_lik`.
//!
//! **These kernels have never run on a GPU**: they were written and compiled on a machine without one.
//! The GPU tests below (`gpu_*`) print `SKIPPED: <reason>` and return when there is no usable GPU (or the
//! binary was built without nvcc); on a GPU machine scripts/gpu-check.sh bundles and runs them, and
//! there a skip counts as a failure. The CPU tests always run, so this file is never a no-op:
//! * `twin_*`: the twins themselves in f64 against central finite differences (with one Richardson
//!   step), the ATSE-completeness check, and the GPU comparison code run against a CPU stand-in (the
//!   f64 twin rounded to f32: a correct result rounded differently from the f32 twin), which shows the
//!   tolerances admit correct results and exercises the comparison code without a GPU;
//! * `host_emu_*`: the kernel sources themselves compiled by the host C++20 compiler against
//!   kernels/host_emu.h (one std::thread per CUDA thread, std::barrier for __syncthreads and the warp
//!   shuffles) and executed on the CPU through the same comparisons as the GPU results (smaller
//!   problems: the emulation is slow). This checks the kernels' logic — indexing, phases, barriers,
//!   reductions, the tile scatter, the clamps — but not device code generation or device math. They
//!   print `SKIPPED: host build ...` without a C++20 compiler. The splicing harness compiles the kernel
//!   with chunks of 3 ATSE groups / 7 entries per block, so each cell's loss is summed over several
//!   blocks' chunk sums (the device tests use the real chunk sizes).
//!
//! GPU inputs are fresh random problems: counts up to 1e4 (n ≥ k; n = the ATSE total, as in the data),
//! ATSEs of 1–7 junctions scattered over the junction ids (so grouping is exercised), cells with no
//! observed entry, logits both moderate and far beyond the clamps; expression rows with counts up to 1e4,
//! all-zero rows, G not a multiple of the tile, θ per gene and per cell, and per-row gradient weights.
//! Every output buffer is poisoned with NaN before the launch (an unwritten entry fails every
//! comparison), and each kernel is run twice and must be bit-identical (no atomics).
//!
//! Comparisons (f32 kernels vs the f32 CPU twin, the twin evaluated at the kernel's own logits so that
//! the SDDMM rounding is checked separately from the likelihood):
//! * logits: |gpu − Σ s·w − b| ≤ (K + 2)·eps32·(Σ|s·w| + |b|) against the f64 dot of the very operands
//!   (bf16-rounded in the bf16 case): the worst-case bound of an f32 dot product in any summation order.
//! * per-cell / per-row losses: |gpu − twin| ≤ 32·eps32·M (+ 1e-6 |twin|), M = Σ of the magnitudes of
//!   the terms being summed (each lgamma term counted as max(|lgamma|, 1), plus the log terms and the
//!   first-order sensitivity to a relative rounding of the inputs). Why: the twin's f32 lgamma /
//!   digamma are the f64 functions rounded (≤ 0.5 ulp), the device ones (kernels/special.cuh) are
//!   within 4·eps·max(|f|, 1), expf / logf may differ by an ulp or two and nvcc contracts a·b + c into
//!   FMAs; each of these moves a term by a few ulps of its own size, and the terms (lgamma(n+1) ≈ 8e4 for
//!   n = 1e4) cancel to a much smaller sum. Where the terms do not cancel this is ≈ 4e-6 relative, i.e.
//!   the "relative ~1e-5" one expects of f32 lgamma differences; where they do, a relative bound on the
//!   small sum would be meaningless (f32 itself cannot resolve it: one count of 1e4 carries lgamma terms
//!   of ~8e4, i.e. ~1e-2 absolute per term in any f32 implementation). 32·eps is ~8× the per-term
//!   error budget (4.5 ulp of lgamma plus a few ulp of the f32 additions that combine the terms).
//! * per-entry gradients, p and concentration contributions: |gpu − twin| ≤ 1e-4·|twin| + 1e-5·(max
//!   |twin| over the cell / row). Their terms are digamma differences and products of O(1) factors:
//!   both sides evaluate the same f32 expressions, so they agree to a few ulps of the largest term; the
//!   bound leaves two orders of magnitude for that and still catches any wrong formula (O(1) errors).
//! * expression d_library: 32·eps32·Σ_g (2x + μ)·|w| (+ 1e-5 relative).
//! * bf16 operands (splicing SDDMM): the same bounds, the operands being rounded to bf16 on the host
//!   first, so both sides see identical values. (The expression kernel takes f32 decoder outputs only:
//!   design.md §4 keeps likelihood math in f32.)
//!
//! Inputs stay where f32 itself is well conditioned: logits far beyond the clamps are ±40 for the DM
//! and −40 only for the others (above ~17 the f32 sigmoid is exactly 1 and log(1 − p) is −inf in the
//! CPU model, the kernel and torch alike), moderate logits |x| ≲ 10.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
#[path = "common/emu.rs"]
mod emu_common;
use splicevi::cuda::expr_lik::ExprLikHost;
use splicevi::cuda::splicing_lik::SplLikHost;
use splicevi::cuda::{CudaExprLik, CudaSplicingLik};
use splicevi::model::batch::SplBatch;
use splicevi::model::config::{DmConcentration, GeneLikelihood, SplicingLoss};
use splicevi::model::expr_lik::{expr_row, ExprRow, ExprRowOut, ScaleAct};
use splicevi::model::real::{lgamma, sigmoid, softplus, softplus_grad, Real};
use splicevi::model::spl_lik::{self, AtseGroups, ConcIndex};

const EPS32: f64 = f32::EPSILON as f64;

/// Prints "SKIPPED: ..." straight to stderr (libtest captures the output of passing tests).
fn skipped(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\nSKIPPED: {msg}");
}


/// Central difference with one Richardson step: (4 D(h/2) − D(h)) / 3, truncation error O(h⁴).
fn richardson(f: impl Fn(f64) -> f64, h: f64) -> f64 {
    let d = |hh: f64| (f(hh) - f(-hh)) / (2.0 * hh);
    (4.0 * d(h / 2.0) - d(h)) / 3.0
}

/// Rounding noise of a finite difference of a sum whose changing terms have total magnitude `mag`.
fn fd_noise(mag: f64, h: f64) -> f64 {
    16.0 * f64::EPSILON * (mag + 1.0) / h
}

fn randn(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample::<f64, _>(StandardNormal)
}

// =====================================================================================================
// Splicing problems

struct SplCase {
    spl: SplBatch,
    junc2atse: Vec<u32>,
    atse_ptr: Vec<usize>,
    n_atse: usize,
}

/// `b` cells over `n_atse` ATSEs of 1–7 junctions (junction ids shuffled), each ATSE observed in a cell
/// with probability `p_obs`; every sixth cell has no observed entry. n = the ATSE total (10^U(0,4),
/// sometimes 0), the k split it.
fn spl_case(rng: &mut ChaCha8Rng, b: usize, n_atse: usize, p_obs: f64) -> SplCase {
    let sizes: Vec<usize> = (0..n_atse).map(|_| rng.gen_range(1..=7)).collect();
    let mut junc2atse: Vec<u32> = sizes.iter().enumerate().flat_map(|(a, &s)| std::iter::repeat_n(a as u32, s)).collect();
    junc2atse.shuffle(rng);
    let j = junc2atse.len();
    let mut members = vec![Vec::new(); n_atse];
    for (jj, &a) in junc2atse.iter().enumerate() {
        members[a as usize].push(jj as u32);
    }
    let mut atse_ptr = vec![0usize; n_atse + 1];
    for a in 0..n_atse {
        atse_ptr[a + 1] = atse_ptr[a] + sizes[a];
    }
    let mut spl = SplBatch { n_junctions: j, indptr: vec![0], ..Default::default() };
    for i in 0..b {
        let mut ent: Vec<(u32, f32, f32)> = Vec::new();
        if i % 6 != 2 {
            for m in &members {
                if rng.gen::<f64>() >= p_obs {
                    continue;
                }
                let big_n = if rng.gen::<f64>() < 0.05 { 0.0 } else { 10f64.powf(rng.gen_range(0.0..4.0)).round() };
                let wts: Vec<f64> = m.iter().map(|_| rng.gen::<f64>().powi(2) + 1e-3).collect();
                let ws: f64 = wts.iter().sum();
                for (&jj, &wt) in m.iter().zip(&wts) {
                    ent.push((jj, (big_n * wt / ws).floor() as f32, big_n as f32));
                }
            }
        }
        ent.sort_by_key(|e| e.0);
        for (jj, k, n) in ent {
            spl.junction.push(jj);
            spl.k.push(k);
            spl.n.push(n);
            spl.psi.push(if n > 0.0 { k / n } else { 0.0 });
        }
        spl.indptr.push(spl.junction.len());
    }
    SplCase { spl, junc2atse, atse_ptr, n_atse }
}

/// The losses, each with the DM log-sum-exp's epsilon: the original's 1e-8 (§12.26), and once 0
/// (`dm_exact_softmax`).
fn kinds() -> [(SplicingLoss, ConcIndex, f64); 6] {
    let eps = spl_lik::DM_LSE_EPS;
    [
        (SplicingLoss::DirichletMultinomial, ConcIndex::for_loss(SplicingLoss::DirichletMultinomial, DmConcentration::Atse), eps),
        (SplicingLoss::DirichletMultinomial, ConcIndex::for_loss(SplicingLoss::DirichletMultinomial, DmConcentration::Scalar), eps),
        (SplicingLoss::DirichletMultinomial, ConcIndex::for_loss(SplicingLoss::DirichletMultinomial, DmConcentration::Atse), 0.0),
        (SplicingLoss::BetaBinomial, ConcIndex::for_loss(SplicingLoss::BetaBinomial, DmConcentration::Atse), eps),
        (SplicingLoss::Binomial, ConcIndex::for_loss(SplicingLoss::Binomial, DmConcentration::Atse), eps),
        (SplicingLoss::Bce, ConcIndex::for_loss(SplicingLoss::Bce, DmConcentration::Atse), eps),
    ]
}

fn log_phi_len(kind: SplicingLoss, conc: ConcIndex, c: &SplCase) -> usize {
    match (kind, conc) {
        (SplicingLoss::Binomial | SplicingLoss::Bce, _) => 1,
        (_, ConcIndex::Scalar) => 1,
        (_, ConcIndex::Atse) => c.n_atse,
        (_, ConcIndex::Junction) => c.spl.n_junctions,
    }
}

fn groups_for(kind: SplicingLoss, c: &SplCase) -> Option<AtseGroups> {
    (kind == SplicingLoss::DirichletMultinomial).then(|| AtseGroups::build(&c.spl, &c.junc2atse, &c.atse_ptr).unwrap())
}

fn to_t<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::from_f64(x)).collect()
}

// =====================================================================================================
// CPU: the splicing twin against finite differences (f64)

#[test]
fn twin_splicing_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let c = spl_case(&mut rng, 7, 40, 0.35);
    let nnz = c.spl.nnz();
    assert!(nnz > 50, "test problem too small ({nnz} entries)");
    let logits: Vec<f64> = (0..nnz).map(|_| rng.gen_range(-5.0..5.0)).collect();
    let h = 1e-3;
    for (kind, conc, eps) in kinds() {
        let groups = groups_for(kind, &c);
        let lp: Vec<f64> = (0..log_phi_len(kind, conc, &c)).map(|_| randn(&mut rng)).collect();
        let phi_max = lp.iter().map(|&v| softplus(v)).fold(0.0, f64::max);
        let w = 0.7;
        let rl_at = |lg: &[f64], lp: &[f64]| spl_lik::splicing_loss(kind, conc, &c.spl, groups.as_ref(), &c.junc2atse, lg, lp, w, eps).rl;
        let out = spl_lik::splicing_loss(kind, conc, &c.spl, groups.as_ref(), &c.junc2atse, &logits, &lp, w, eps);
        assert!(out.rl.iter().all(|v| v.is_finite()), "{kind}: non-finite loss");
        if let Some(g) = &groups {
            // §12.26: an ATSE's probabilities sum to s / (s + ε), s = Σ e^(lg − max) ∈ [1, m] for m
            // junctions: short of 1 by ε/(m + ε) .. ε/(1 + ε); exactly 1 (to rounding) with ε = 0.
            for q in 0..g.n_groups() {
                let ents = &g.ord[g.grp_ptr[q]..g.grp_ptr[q + 1]];
                let short = 1.0 - ents.iter().map(|&e| out.p[e as usize]).sum::<f64>();
                let (lo, hi) = (eps / (ents.len() as f64 + eps), eps / (1.0 + eps));
                assert!(short >= lo - 1e-14 && short <= hi + 1e-14, "{kind} (ε {eps:e}): ATSE group {q}'s probabilities sum to 1 − {short:e}, not within [1 − {hi:e}, 1 − {lo:e}]");
            }
        }
        // magnitude of the terms that move with entry e: its own (BB / binomial / BCE) or its ATSE's (DM)
        let group_size = |e: usize| -> f64 {
            if kind != SplicingLoss::DirichletMultinomial {
                return 1.0;
            }
            let a = c.junc2atse[c.spl.junction[e] as usize] as usize;
            (c.atse_ptr[a + 1] - c.atse_ptr[a]) as f64
        };
        let mag = |e: usize| {
            let n = c.spl.n[e] as f64;
            10.0 * group_size(e) * (lgm(n + 2.0 + phi_max) + n * (1.0 + logits[e].abs()))
        };
        // d rl / d logit, entry by entry (only the entry's own cell depends on it)
        let mut worst = 0f64;
        for i in 0..c.spl.n_cells() {
            for e in c.spl.cell_range(i) {
                let fd = richardson(
                    |d| {
                        let mut lg = logits.clone();
                        lg[e] += d;
                        rl_at(&lg, &lp)[i]
                    },
                    h,
                );
                let g = out.g_logit[e];
                let tol = 1e-6 * (1.0 + g.abs()) + fd_noise(mag(e), h);
                assert!((fd - g).abs() <= tol, "{kind} ({conc:?}): cell {i} entry {e}: analytic {g:e} vs finite difference {fd:e}");
                worst = worst.max((fd - g).abs() / tol);
            }
        }
        // d rl / d log_phi (through softplus) for a few concentration targets
        if matches!(kind, SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial) {
            for t in (0..lp.len()).step_by((lp.len() / 7).max(1)) {
                for i in 0..c.spl.n_cells() {
                    let fd = richardson(
                        |d| {
                            let mut lpp = lp.clone();
                            lpp[t] += d;
                            rl_at(&logits, &lpp)[i]
                        },
                        h,
                    );
                    let ents: Vec<usize> = c.spl.cell_range(i).filter(|&e| conc.target(c.spl.junction[e] as usize, &c.junc2atse) == t).collect();
                    let g: f64 = ents.iter().map(|&e| out.g_conc[e] * softplus_grad(lp[t])).sum();
                    let m: f64 = ents.iter().map(|&e| mag(e)).sum();
                    let tol = 1e-6 * (1.0 + g.abs()) + fd_noise(m, h);
                    assert!((fd - g).abs() <= tol, "{kind} ({conc:?}): cell {i} log_phi[{t}]: analytic {g:e} vs finite difference {fd:e}");
                }
            }
        }
        // cells without entries contribute nothing
        for i in 0..c.spl.n_cells() {
            if c.spl.cell_range(i).is_empty() {
                assert_eq!(out.rl[i], 0.0, "{kind}: empty cell {i} has a loss");
            }
        }
        println!("{kind} ({conc:?}): {nnz} entries, worst |fd − analytic| / tol = {worst:.3}");
    }
}

#[test]
fn twin_atse_grouping_rejects_partially_observed_atses() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut c = spl_case(&mut rng, 4, 30, 0.5);
    // drop one entry of a multi-junction ATSE
    let e = (0..c.spl.nnz()).find(|&e| {
        let a = c.junc2atse[c.spl.junction[e] as usize] as usize;
        c.atse_ptr[a + 1] - c.atse_ptr[a] > 1
    });
    let e = e.expect("no multi-junction ATSE observed");
    c.spl.junction.remove(e);
    c.spl.k.remove(e);
    c.spl.n.remove(e);
    c.spl.psi.remove(e);
    for p in c.spl.indptr.iter_mut() {
        if *p > e {
            *p -= 1;
        }
    }
    let err = AtseGroups::build(&c.spl, &c.junc2atse, &c.atse_ptr).unwrap_err().to_string();
    assert!(err.contains("junctions observed"), "{err}");
}

// =====================================================================================================
// CPU: the expression twin against finite differences (f64)

struct ExprCase {
    g: usize,
    raw: Vec<f64>,
    pi: Vec<f64>,
    log_theta: Vec<f64>,
    theta_stride: usize,
    library: Vec<f64>,
    x_ptr: Vec<usize>,
    x_idx: Vec<u32>,
    x_val: Vec<f32>,
    weight: Vec<f64>,
}

/// `b` rows × `g` genes; every fifth row has no counts; counts 0 (60%) or round(10^U(0,4)).
fn expr_case(rng: &mut ChaCha8Rng, b: usize, g: usize, act: ScaleAct, per_cell_theta: bool) -> ExprCase {
    let raw: Vec<f64> = (0..b * g)
        .map(|_| match act {
            ScaleAct::Softplus => -2.0 + 2.0 * randn(rng),
            ScaleAct::Softmax => 2.0 * randn(rng),
        })
        .collect();
    let library: Vec<f64> = (0..b)
        .map(|_| match act {
            ScaleAct::Softplus => rng.gen_range(0.0..5.0),
            ScaleAct::Softmax => rng.gen_range(7.0..11.5),
        })
        .collect();
    let theta_stride = if per_cell_theta { g } else { 0 };
    let log_theta: Vec<f64> = (0..if per_cell_theta { b * g } else { g }).map(|_| 1.5 * randn(rng)).collect();
    let pi: Vec<f64> = (0..b * g).map(|_| -1.0 + 2.0 * randn(rng)).collect();
    let mut x_ptr = vec![0];
    let (mut x_idx, mut x_val) = (Vec::new(), Vec::new());
    for i in 0..b {
        if i % 5 != 4 {
            for gg in 0..g {
                if rng.gen::<f64>() < 0.4 {
                    x_idx.push(gg as u32);
                    x_val.push(10f64.powf(rng.gen_range(0.0..4.0)).round() as f32);
                }
            }
        }
        x_ptr.push(x_idx.len());
    }
    let weight: Vec<f64> = (0..b).map(|i| if i % 7 == 3 { 0.0 } else { rng.gen_range(0.5..1.5) }).collect();
    ExprCase { g, raw, pi, log_theta, theta_stride, library, x_ptr, x_idx, x_val, weight }
}

struct ExprTwinOut<T> {
    rl: Vec<T>,
    d_library: Vec<T>,
    d_raw: Vec<T>,
    d_log_theta: Vec<T>,
    d_pi: Vec<T>,
}

/// The twin over all rows, θ = exp(log θ) computed in T (as the model does).
#[allow(clippy::too_many_arguments)]
fn expr_twin<T: Real>(lik: GeneLikelihood, act: ScaleAct, c: &ExprCase, raw: &[T], pi: &[T], theta: &[T], library: &[T], weight: &[T]) -> ExprTwinOut<T> {
    let (b, g) = (library.len(), c.g);
    let mut o = ExprTwinOut { rl: vec![T::ZERO; b], d_library: vec![T::ZERO; b], d_raw: vec![T::ZERO; b * g], d_log_theta: vec![T::ZERO; b * g], d_pi: vec![T::ZERO; b * g] };
    for i in 0..b {
        let th = &theta[i * c.theta_stride..i * c.theta_stride + g];
        let r = c.x_ptr[i]..c.x_ptr[i + 1];
        let inp = ExprRow {
            raw: &raw[i * g..(i + 1) * g],
            pi: &pi[i * g..(i + 1) * g],
            theta: th,
            library: library[i],
            x_idx: &c.x_idx[r.clone()],
            x_val: &c.x_val[r],
            grad_weight: weight[i],
        };
        let mut out = ExprRowOut {
            d_raw: &mut o.d_raw[i * g..(i + 1) * g],
            d_log_theta: &mut o.d_log_theta[i * g..(i + 1) * g],
            d_pi: &mut o.d_pi[i * g..(i + 1) * g],
        };
        let res = expr_row(lik, act, &inp, &mut out);
        o.rl[i] = res.rl;
        o.d_library[i] = res.d_library;
    }
    o
}

fn expr_configs() -> [(GeneLikelihood, ScaleAct, bool); 6] {
    [
        (GeneLikelihood::Zinb, ScaleAct::Softplus, false),
        (GeneLikelihood::Zinb, ScaleAct::Softmax, true),
        (GeneLikelihood::Nb, ScaleAct::Softmax, false),
        (GeneLikelihood::Nb, ScaleAct::Softplus, true),
        (GeneLikelihood::Poisson, ScaleAct::Softmax, false),
        (GeneLikelihood::Poisson, ScaleAct::Softplus, false),
    ]
}

#[test]
fn twin_expression_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let h = 1e-3;
    for (lik, act, per_cell) in expr_configs() {
        let c = expr_case(&mut rng, 6, 37, act, per_cell);
        let theta: Vec<f64> = c.log_theta.iter().map(|v| v.exp()).collect();
        let base = expr_twin(lik, act, &c, &c.raw, &c.pi, &theta, &c.library, &c.weight);
        // the loss the gradients belong to: weight_i · rl_i
        let wl = |o: &ExprTwinOut<f64>, i: usize| c.weight[i] * o.rl[i];
        let b = c.library.len();
        let g = c.g;
        let mut worst = 0f64;
        let mut check = |what: &str, i: usize, an: f64, fd: f64, mag: f64| {
            let tol = 1e-6 * (1.0 + an.abs()) + fd_noise(mag, h);
            assert!((fd - an).abs() <= tol, "{lik} {act:?}: row {i} {what}: analytic {an:e} vs finite difference {fd:e}");
            worst = worst.max((fd - an).abs() / tol);
        };
        let rl_with = |raw: &[f64], pi: &[f64], th: &[f64], lib: &[f64], i: usize| wl(&expr_twin(lik, act, &c, raw, pi, th, lib, &c.weight), i);
        for i in 0..b {
            // magnitude of the row's terms (all of them move with a softmax logit or the library)
            let r = &c.raw[i * g..(i + 1) * g];
            let rho: Vec<f64> = match act {
                ScaleAct::Softplus => r.iter().map(|&v| softplus(v)).collect(),
                ScaleAct::Softmax => {
                    let mx = r.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
                    let s: f64 = r.iter().map(|&v| (v - mx).exp()).sum();
                    r.iter().map(|&v| (v - mx).exp() / s).collect()
                }
            };
            let mu: Vec<f64> = rho.iter().map(|&p| c.library[i].exp() * p).collect();
            let th_row: Vec<f64> = (0..g).map(|gg| theta[i * c.theta_stride + gg]).collect();
            let (mag, _) = expr_magnitude(lik, &c, i, &mu, &th_row);
            let mag = mag * c.weight[i];
            for gg in 0..g {
                let k = i * g + gg;
                let fd = richardson(
                    |d| {
                        let mut raw = c.raw.clone();
                        raw[k] += d;
                        rl_with(&raw, &c.pi, &theta, &c.library, i)
                    },
                    h,
                );
                check("d_raw", i, base.d_raw[k], fd, mag);
                if lik != GeneLikelihood::Poisson {
                    let t = i * c.theta_stride + gg;
                    let fd = richardson(
                        |d| {
                            let mut th = theta.clone();
                            th[t] = (c.log_theta[t] + d).exp();
                            rl_with(&c.raw, &c.pi, &th, &c.library, i)
                        },
                        h,
                    );
                    check("d_log_theta", i, base.d_log_theta[k], fd, mag);
                }
                if lik == GeneLikelihood::Zinb {
                    let fd = richardson(
                        |d| {
                            let mut pi = c.pi.clone();
                            pi[k] += d;
                            rl_with(&c.raw, &pi, &theta, &c.library, i)
                        },
                        h,
                    );
                    check("d_pi", i, base.d_pi[k], fd, mag);
                }
            }
            let fd = richardson(
                |d| {
                    let mut lib = c.library.clone();
                    lib[i] += d;
                    rl_with(&c.raw, &c.pi, &theta, &lib, i)
                },
                h,
            );
            check("d_library", i, base.d_library[i], fd, mag);
        }
        println!("{lik} {act:?} (theta per cell: {per_cell}): worst |fd − analytic| / tol = {worst:.3}");
    }
}

// =====================================================================================================
// Tolerance helpers for the GPU comparisons

/// max(|lgamma(x)|, 1)
fn lgm(x: f64) -> f64 {
    lgamma(x).abs().max(1.0)
}

/// Σ of term magnitudes of cell i's splicing log-likelihood (see the file doc), from the twin's f64
/// outputs at the same logits.
#[allow(clippy::too_many_arguments)]
fn spl_magnitude(kind: SplicingLoss, conc: ConcIndex, c: &SplCase, groups: Option<&AtseGroups>, i: usize, logits: &[f64], out: &spl_lik::SplLossOut<f64>, phi: &[f64], w: f64) -> f64 {
    let clamp = |p: f64| p.clamp(1e-8, 1.0 - 1e-8);
    let spl = &c.spl;
    let r = spl.cell_range(i);
    // sensitivity of the loss to relative roundings of the logit-level inputs
    let mut m: f64 = r.clone().map(|e| out.g_logit[e].abs() / w.abs().max(1e-30) * (1.0 + logits[e].abs())).sum();
    match kind {
        SplicingLoss::DirichletMultinomial => {
            let g = groups.unwrap();
            for gg in g.cell_ptr[i]..g.cell_ptr[i + 1] {
                let es: Vec<usize> = g.ord[g.grp_ptr[gg]..g.grp_ptr[gg + 1]].iter().map(|&e| e as usize).collect();
                let cc = phi[conc.target(spl.junction[es[0]] as usize, &c.junc2atse)];
                let big_n = es.iter().map(|&e| spl.n[e] as f64).fold(0.0, f64::max);
                let s: f64 = es.iter().map(|&e| clamp(out.p[e]) * cc).sum();
                if big_n > 0.0 {
                    m += lgm(s) + lgm(big_n + 1.0) + lgm(s + big_n);
                }
                for &e in &es {
                    let (a, k) = (clamp(out.p[e]) * cc, spl.k[e] as f64);
                    if k > 0.0 {
                        m += lgm(a) + lgm(k + 1.0) + lgm(a + k);
                    }
                    m += (out.g_conc[e] * cc / w.abs().max(1e-30)).abs();
                }
            }
        }
        SplicingLoss::BetaBinomial => {
            for e in r {
                let (k, n) = (spl.k[e] as f64, spl.n[e] as f64);
                let p = clamp(out.p[e]);
                let ph = phi[conc.target(spl.junction[e] as usize, &c.junc2atse)];
                let (a, b) = (p * ph, (1.0 - p) * ph);
                m += lgm(n + 1.0) + lgm(k + 1.0) + lgm(n - k + 1.0) + lgm(k + a) + lgm(n - k + b) + lgm(n + a + b) + lgm(a) + lgm(b) + lgm(a + b);
                m += (out.g_conc[e] * ph / w.abs().max(1e-30)).abs();
            }
        }
        SplicingLoss::Binomial | SplicingLoss::Bce => {
            for e in r {
                let p = clamp(out.p[e]);
                let (y, ny) = if kind == SplicingLoss::Bce { (spl.psi[e] as f64, 1.0 - spl.psi[e] as f64) } else { (spl.k[e] as f64, (spl.n[e] - spl.k[e]) as f64) };
                m += (y * p.ln()).abs() + (ny * (1.0 - p).ln()).abs() + 1.0;
            }
        }
    }
    m * w.abs()
}

/// Per-entry magnitudes of the terms of g_logit and g_conc (digamma values, count ratios), from the f64
/// twin at the same logits: the absolute tolerance is 32·eps32 times these.
#[allow(clippy::too_many_arguments)]
fn spl_grad_magnitudes(kind: SplicingLoss, conc: ConcIndex, c: &SplCase, groups: Option<&AtseGroups>, logits: &[f64], out: &spl_lik::SplLossOut<f64>, phi: &[f64], w: f64) -> (Vec<f64>, Vec<f64>) {
    let dg = |x: f64| splicevi::model::real::digamma(x).abs();
    let clamp = |p: f64| p.clamp(1e-8, 1.0 - 1e-8);
    let spl = &c.spl;
    let nnz = spl.nnz();
    let (mut mgl, mut mgc) = (vec![0f64; nnz], vec![0f64; nnz]);
    let w = w.abs();
    match kind {
        SplicingLoss::DirichletMultinomial => {
            let g = groups.unwrap();
            for gg in 0..g.n_groups() {
                let es: Vec<usize> = g.ord[g.grp_ptr[gg]..g.grp_ptr[gg + 1]].iter().map(|&e| e as usize).collect();
                let cc = phi[conc.target(spl.junction[es[0]] as usize, &c.junc2atse)];
                let big_n = es.iter().map(|&e| spl.n[e] as f64).fold(0.0, f64::max);
                let sa: f64 = es.iter().map(|&e| clamp(out.p[e]) * cc).sum();
                let datse = if big_n > 0.0 { dg(sa) + dg(sa + big_n) } else { 0.0 };
                let term = |e: usize| {
                    let (a, k) = (clamp(out.p[e]) * cc, spl.k[e] as f64);
                    datse + if k > 0.0 { dg(a) + dg(a + k) } else { 0.0 }
                };
                let tot: f64 = es.iter().map(|&e| out.p[e] * cc * term(e)).sum();
                for &e in &es {
                    mgc[e] = w * clamp(out.p[e]) * term(e);
                    mgl[e] = w * (out.p[e] * cc * term(e) + out.p[e] * tot + tot);
                }
            }
        }
        SplicingLoss::BetaBinomial => {
            for e in 0..nnz {
                let (k, n) = (spl.k[e] as f64, spl.n[e] as f64);
                let pc = clamp(out.p[e]);
                let ph = phi[conc.target(spl.junction[e] as usize, &c.junc2atse)];
                let (a, b) = (pc * ph, (1.0 - pc) * ph);
                let common = dg(n + a + b) + dg(a + b);
                let (ma, mb) = (dg(k + a) + dg(a) + common, dg(n - k + b) + dg(b) + common);
                mgc[e] = w * (pc * ma + (1.0 - pc) * mb);
                let pr = sigmoid(logits[e]);
                mgl[e] = w * ph * (ma + mb) * pr * (1.0 - pr);
            }
        }
        SplicingLoss::Binomial | SplicingLoss::Bce => {
            for e in 0..nnz {
                let pc = clamp(out.p[e]);
                let (y, ny) = if kind == SplicingLoss::Bce { (spl.psi[e] as f64, 1.0 - spl.psi[e] as f64) } else { (spl.k[e] as f64, (spl.n[e] - spl.k[e]) as f64) };
                let pr = sigmoid(logits[e]);
                mgl[e] = w * (y / pc + ny / (1.0 - pc)) * pr * (1.0 - pr);
            }
        }
    }
    (mgl, mgc)
}

/// Checks `got` against `want` entry by entry within segments (cells / rows): |got − want| ≤
/// rtol·|want| + atol·max|want in segment| (+ extra[e]). Returns the worst error / tolerance.
fn check_segments(what: &str, got: &[f32], want: &[f32], seg: &[usize], rtol: f64, atol: f64) -> f64 {
    check_segments_plus(what, got, want, seg, rtol, atol, None)
}

fn check_segments_plus(what: &str, got: &[f32], want: &[f32], seg: &[usize], rtol: f64, atol: f64, extra: Option<&[f64]>) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f64;
    for s in 0..seg.len() - 1 {
        let r = seg[s]..seg[s + 1];
        let scale = want[r.clone()].iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
        for e in r {
            let (a, b) = (got[e] as f64, want[e] as f64);
            let tol = rtol * b.abs() + atol * scale + extra.map_or(0.0, |x| x[e]) + 1e-30;
            let err = (a - b).abs();
            assert!(err <= tol, "{what}: segment {s} entry {e}: gpu {a:e} vs twin {b:e} (tolerance {tol:e})");
            worst = worst.max(err / tol);
        }
    }
    worst
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

// =====================================================================================================
// GPU: splicing kernel

trait Operand: splicevi::cuda::splicing_lik::SplOperand {
    fn round(x: f64) -> Self;
}
impl Operand for f32 {
    fn round(x: f64) -> Self {
        x as f32
    }
}
impl Operand for half::bf16 {
    fn round(x: f64) -> Self {
        half::bf16::from_f64(x)
    }
}

/// What a splicing backend is given: kind, conc, weight, the DM log-sum-exp's epsilon, S, K, W, bias, batch, groups, junc2atse,
/// log_phi. It returns one or more runs (more than one: they must be bit-identical).
type SplBackend<'a, W> =
    dyn FnMut(SplicingLoss, ConcIndex, f32, f32, &[W], usize, &[W], &[f32], &SplBatch, Option<&AtseGroups>, &[u32], &[f32]) -> Vec<SplLikHost> + 'a;

/// `dense`: the dense decode (the logits read from a B × J matrix instead of the SDDMM).
fn device_splicing<W: Operand>(name: &str, k: usize, seed: u64, dense: bool) {
    for dev in emu_common::devices(&format!("splicing_lik ({name}) vs model::spl_lik")) {
        let kern = CudaSplicingLik::new(&dev).unwrap();
        let mut backend = |kind, conc, wgt, eps, s: &[W], k, w: &[W], bias: &[f32], spl: &SplBatch, groups: Option<&AtseGroups>, j2a: &[u32], lp: &[f32]| {
            (0..2).map(|_| kern.run_host(kind, conc, wgt, eps, s, k, w, bias, spl, groups, j2a, lp, dense).unwrap()).collect::<Vec<_>>()
        };
        // The emulation is slow: the smaller problem there.
        splicing_parity::<W>(name, k, seed, true, dev.is_emulated(), &mut backend);
    }
}

/// Generates the problems, runs `backend` on each loss, and checks its results against the twin.
/// `extremes`: push 5% of the junctions' logits to ±40 (beyond every clamp).
/// `small`: a smaller problem (for the slow host emulation).
fn splicing_parity<W: Operand>(name: &str, k: usize, seed: u64, extremes: bool, small: bool, backend: &mut SplBackend<'_, W>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = if small { spl_case(&mut rng, 13, 100, 0.3) } else { spl_case(&mut rng, 41, 300, 0.3) };
    let (b, j, nnz) = (c.spl.n_cells(), c.spl.n_junctions, c.spl.nnz());
    // operands: dot products with standard deviation ~1.5; 5% of the junctions pushed far beyond the clamps
    let s_q: Vec<W> = (0..b * k).map(|_| W::round(randn(&mut rng) / (k as f64).sqrt())).collect();
    let w_q: Vec<W> = (0..j * k).map(|_| W::round(1.5 * randn(&mut rng))).collect();
    let extreme: Vec<f64> = (0..j).map(|_| if extremes && rng.gen::<f64>() < 0.05 { if rng.gen::<bool>() { 40.0 } else { -40.0 } } else { 0.0 }).collect();
    let s_f: Vec<f64> = s_q.iter().map(|v| v.to_f32() as f64).collect();
    let w_f: Vec<f64> = w_q.iter().map(|v| v.to_f32() as f64).collect();
    for (kind, conc, eps) in kinds() {
        let bias: Vec<f32> = (0..j)
            .map(|jj| {
                let e = extreme[jj];
                let e = if kind != SplicingLoss::DirichletMultinomial && e > 0.0 { -e } else { e };
                (e + rng.gen_range(-3.0..3.0)) as f32
            })
            .collect();
        let groups = groups_for(kind, &c);
        let lp: Vec<f32> = (0..log_phi_len(kind, conc, &c)).map(|_| randn(&mut rng) as f32).collect();
        let wgt = 0.8f32;
        let runs = backend(kind, conc, wgt, eps as f32, &s_q, k, &w_q, &bias, &c.spl, groups.as_ref(), &c.junc2atse, &lp);
        let got = &runs[0];
        for again in &runs[1..] {
            for (a, bb, what) in [(&got.logits, &again.logits, "logits"), (&got.rl, &again.rl, "rl"), (&got.g_logit, &again.g_logit, "g_logit"), (&got.g_conc, &again.g_conc, "g_conc"), (&got.p, &again.p, "p")] {
                assert_eq!(bits(a), bits(bb), "{name} {kind}: {what} differs between two runs");
            }
        }
        let ctx = format!("{name} {kind} ({conc:?}, ε {eps:e}), K = {k}, {b} cells, {nnz} entries");
        // logits against the f64 dot product of the same operands
        let mut worst_logit = 0f64;
        for i in 0..b {
            for e in c.spl.cell_range(i) {
                let jj = c.spl.junction[e] as usize;
                let (mut dot, mut mag) = (bias[jj] as f64, (bias[jj] as f64).abs());
                for t in 0..k {
                    let pr = s_f[i * k + t] * w_f[jj * k + t];
                    dot += pr;
                    mag += pr.abs();
                }
                let tol = (k as f64 + 2.0) * EPS32 * mag;
                let err = (got.logits[e] as f64 - dot).abs();
                assert!(err <= tol, "{ctx}: logit of entry {e}: gpu {} vs {dot} (tolerance {tol:e})", got.logits[e]);
                worst_logit = worst_logit.max(err / tol);
            }
        }
        // the twins at the kernel's logits
        let tw = spl_lik::splicing_loss(kind, conc, &c.spl, groups.as_ref(), &c.junc2atse, &got.logits, &lp, wgt, eps);
        let lg64: Vec<f64> = got.logits.iter().map(|&v| v as f64).collect();
        let lp64: Vec<f64> = lp.iter().map(|&v| v as f64).collect();
        let tw64 = spl_lik::splicing_loss(kind, conc, &c.spl, groups.as_ref(), &c.junc2atse, &lg64, &lp64, wgt as f64, eps);
        let phi64: Vec<f64> = lp64.iter().map(|&v| softplus(v)).collect();
        let mut worst_rl = 0f64;
        for i in 0..b {
            let m = spl_magnitude(kind, conc, &c, groups.as_ref(), i, &lg64, &tw64, &phi64, wgt as f64);
            let (a, t) = (got.rl[i] as f64, tw.rl[i] as f64);
            let tol = 32.0 * EPS32 * m + 1e-6 * t.abs() + 1e-30;
            assert!((a - t).abs() <= tol, "{ctx}: cell {i} loss: gpu {a} vs twin {t} (f64 twin {}; tolerance {tol:e})", tw64.rl[i]);
            if c.spl.cell_range(i).is_empty() {
                assert_eq!(a, 0.0, "{ctx}: cell {i} has no entries but a loss");
            }
            worst_rl = worst_rl.max((a - t).abs() / tol);
        }
        let seg = &c.spl.indptr;
        let (mgl, mgc) = spl_grad_magnitudes(kind, conc, &c, groups.as_ref(), &lg64, &tw64, &phi64, wgt as f64);
        let tol_of = |m: &[f64]| m.iter().map(|&v| 32.0 * EPS32 * v).collect::<Vec<f64>>();
        let wg = check_segments_plus(&format!("{ctx}: g_logit"), &got.g_logit, &tw.g_logit, seg, 1e-4, 1e-5, Some(&tol_of(&mgl)));
        let wc = check_segments_plus(&format!("{ctx}: g_conc"), &got.g_conc, &tw.g_conc, seg, 1e-4, 1e-5, Some(&tol_of(&mgc)));
        let wp = check_segments(&format!("{ctx}: p"), &got.p, &tw.p, seg, 1e-4, 1e-5);
        println!("{ctx}: worst error / tolerance: logits {worst_logit:.3}, rl {worst_rl:.3}, g_logit {wg:.3}, g_conc {wc:.3}, p {wp:.3}");
    }
}

/// A stand-in for the kernel on the CPU: the f64 twin on the same operands, rounded to f32 at the end
/// (an independent, more accurate implementation). Running the GPU comparison against it checks, on
/// every machine, that the comparison code works and that its tolerances admit a correct result that
/// is rounded differently from the f32 twin.
#[allow(clippy::type_complexity)]
fn f64_standin<W: Operand>() -> impl FnMut(SplicingLoss, ConcIndex, f32, f32, &[W], usize, &[W], &[f32], &SplBatch, Option<&AtseGroups>, &[u32], &[f32]) -> Vec<SplLikHost> {
    |kind, conc, wgt, eps, s: &[W], k, w: &[W], bias: &[f32], spl: &SplBatch, groups: Option<&AtseGroups>, j2a: &[u32], lp: &[f32]| {
        let s64: Vec<f64> = s.iter().map(|v| v.to_f32() as f64).collect();
        let w64: Vec<f64> = w.iter().map(|v| v.to_f32() as f64).collect();
        let b64: Vec<f64> = bias.iter().map(|&v| v as f64).collect();
        let lg32: Vec<f32> = spl_lik::sparse_logits(&s64, k, &w64, &b64, spl).iter().map(|&v| v as f32).collect();
        let lg: Vec<f64> = lg32.iter().map(|&v| v as f64).collect();
        let lp64: Vec<f64> = lp.iter().map(|&v| v as f64).collect();
        let o = spl_lik::splicing_loss(kind, conc, spl, groups, j2a, &lg, &lp64, wgt as f64, eps as f64);
        let r = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        vec![SplLikHost { logits: lg32, rl: r(&o.rl), g_logit: r(&o.g_logit), g_conc: r(&o.g_conc), p: r(&o.p) }]
    }
}

#[test]
fn twin_splicing_comparison_accepts_the_f64_twin() {
    splicing_parity::<f32>("f32 (CPU stand-in: f64 twin)", 45, 31, false, false, &mut f64_standin::<f32>());
    splicing_parity::<half::bf16>("bf16 (CPU stand-in: f64 twin)", 64, 33, false, false, &mut f64_standin::<half::bf16>());
}

#[test]
fn device_splicing_lik_f32_matches_twin() {
    device_splicing::<f32>("f32", 45, 31, false);
    device_splicing::<f32>("f32", 200, 32, false);
}

#[test]
fn device_splicing_lik_bf16_matches_twin() {
    device_splicing::<half::bf16>("bf16", 64, 33, false);
}

/// The dense decode's phase 1: every entry's logit read from the B × J matrix (a wrong index or a
/// missed entry fails the logits' check against the f64 dot products).
#[test]
fn device_splicing_lik_dense_logits_match_twin() {
    device_splicing::<f32>("f32, dense logits", 45, 34, true);
}

// =====================================================================================================
// GPU: expression kernel

/// Σ of term magnitudes of row i's expression log-likelihood (f64).
fn expr_magnitude(lik: GeneLikelihood, c: &ExprCase, i: usize, mu: &[f64], theta: &[f64]) -> (f64, f64) {
    let g = c.g;
    let mut x = vec![0f64; g];
    for e in c.x_ptr[i]..c.x_ptr[i + 1] {
        x[c.x_idx[e] as usize] = c.x_val[e] as f64;
    }
    let (mut m, mut mlib) = (0f64, 0f64);
    for gg in 0..g {
        let (xv, mv) = (x[gg], mu[gg]);
        mlib += 2.0 * xv + mv;
        m += xv + mv + if xv > 0.0 { lgm(xv + 1.0) } else { 0.0 };
        if lik != GeneLikelihood::Poisson {
            let th = theta[gg];
            let (lt, ltm) = ((th + 1e-8).ln(), (th + mv + 1e-8).ln());
            m += lgm(xv + th) + lgm(th) + (th * lt).abs() + (th * ltm).abs() + (xv * (mv + 1e-8).ln()).abs() + (xv * ltm).abs();
            if lik == GeneLikelihood::Zinb {
                let pi = c.pi[i * g + gg];
                m += softplus(-pi) + pi.abs() + 1.0;
            }
        } else {
            m += (xv * mv.ln()).abs();
        }
    }
    (m, mlib)
}

/// An expression backend: lik, act, G, raw, pi, theta, theta_stride, library, x_ptr, x_idx, x_val,
/// grad_weight → one or more runs (more than one: they must be bit-identical).
type ExprBackend<'a> = dyn FnMut(GeneLikelihood, ScaleAct, usize, &[f32], &[f32], &[f32], usize, &[f32], &[usize], &[u32], &[f32], &[f32]) -> Vec<ExprLikHost> + 'a;

#[test]
fn device_expr_lik_matches_twin() {
    for dev in emu_common::devices("expr_lik vs model::expr_lik::expr_row") {
        let kern = CudaExprLik::new(&dev).unwrap();
        let mut backend = |lik, act, g, raw: &[f32], pi: &[f32], theta: &[f32], ts, lib: &[f32], xp: &[usize], xi: &[u32], xv: &[f32], wt: &[f32]| {
            (0..2).map(|_| kern.run_host(lik, act, g, raw, pi, theta, ts, lib, xp, xi, xv, Some(wt)).unwrap()).collect::<Vec<_>>()
        };
        let small = dev.is_emulated();
        expr_parity(if small { "host emulation" } else { "gpu" }, small, &mut backend);
    }
}

/// The f64 twin on the same (f32) inputs, rounded to f32: a CPU stand-in for the kernel that checks
/// the comparison code and that its tolerances admit a differently rounded correct result.
#[test]
fn twin_expression_comparison_accepts_the_f64_twin() {
    let mut backend = |lik, act, g, raw: &[f32], pi: &[f32], theta: &[f32], ts, lib: &[f32], xp: &[usize], xi: &[u32], xv: &[f32], wt: &[f32]| {
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let r = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let c = ExprCase { g, raw: vec![], pi: vec![], log_theta: vec![], theta_stride: ts, library: vec![], x_ptr: xp.to_vec(), x_idx: xi.to_vec(), x_val: xv.to_vec(), weight: vec![] };
        let o = expr_twin::<f64>(lik, act, &c, &f(raw), &f(pi), &f(theta), &f(lib), &f(wt));
        vec![ExprLikHost { rl: r(&o.rl), d_raw: r(&o.d_raw), d_log_theta: r(&o.d_log_theta), d_pi: r(&o.d_pi), d_library: r(&o.d_library) }]
    };
    expr_parity("CPU stand-in: f64 twin", false, &mut backend);
}

/// `small`: fewer rows (for the slow host emulation).
fn expr_parity(name: &str, small: bool, backend: &mut ExprBackend<'_>) {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    for (lik, act, per_cell) in expr_configs() {
        let (b, g) = if small { (9, 600) } else { (29, 700) };
        let c = expr_case(&mut rng, b, g, act, per_cell);
        let raw: Vec<f32> = to_t(&c.raw);
        let pi: Vec<f32> = to_t(&c.pi);
        let lib: Vec<f32> = to_t(&c.library);
        let wt: Vec<f32> = to_t(&c.weight);
        let theta: Vec<f32> = c.log_theta.iter().map(|&v| (v as f32).exp()).collect();
        let runs = backend(lik, act, g, &raw, &pi, &theta, c.theta_stride, &lib, &c.x_ptr, &c.x_idx, &c.x_val, &wt);
        let got = &runs[0];
        for again in &runs[1..] {
            for (a, bb, what) in [(&got.rl, &again.rl, "rl"), (&got.d_raw, &again.d_raw, "d_raw"), (&got.d_log_theta, &again.d_log_theta, "d_log_theta"), (&got.d_pi, &again.d_pi, "d_pi"), (&got.d_library, &again.d_library, "d_library")] {
                assert_eq!(bits(a), bits(bb), "{lik} {act:?}: {what} differs between two runs");
            }
        }
        let tw = expr_twin::<f32>(lik, act, &c, &raw, &pi, &theta, &lib, &wt);
        let ctx = format!("{name}: {lik} {act:?} (theta per cell: {per_cell}), {b} × {g}");
        // magnitudes from f64 (μ from the f32 inputs)
        let mut worst_rl = 0f64;
        let mut worst_lib = 0f64;
        // per-entry gradient magnitudes (absolute tolerance 32·eps32·M, see the file doc)
        let (mut m_raw, mut m_th, mut m_pi) = (vec![0f64; b * g], vec![0f64; b * g], vec![0f64; b * g]);
        for i in 0..b {
            let r = &raw[i * g..(i + 1) * g];
            let rho: Vec<f64> = match act {
                ScaleAct::Softplus => r.iter().map(|&v| softplus(v as f64)).collect(),
                ScaleAct::Softmax => {
                    let mx = r.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
                    let s: f64 = r.iter().map(|&v| (v as f64 - mx).exp()).sum();
                    r.iter().map(|&v| (v as f64 - mx).exp() / s).collect()
                }
            };
            let mu: Vec<f64> = rho.iter().map(|&p| (lib[i] as f64).exp() * p).collect();
            let th: Vec<f64> = (0..g).map(|gg| theta[i * c.theta_stride + gg] as f64).collect();
            let (m, mlib) = expr_magnitude(lik, &c, i, &mu, &th);
            {
                let mut x = vec![0f64; g];
                for e in c.x_ptr[i]..c.x_ptr[i + 1] {
                    x[c.x_idx[e] as usize] = c.x_val[e] as f64;
                }
                let (ls, w) = ((lib[i] as f64).exp(), (wt[i] as f64).abs());
                let md: Vec<f64> = (0..g)
                    .map(|gg| {
                        let (xv, mv, t) = (x[gg], mu[gg], th[gg]);
                        let tme = t + mv + 1e-8;
                        match lik {
                            GeneLikelihood::Poisson => xv / mv + 1.0,
                            _ => xv / (mv + 1e-8) + (t + xv) / tme,
                        }
                    })
                    .collect();
                let dotm: f64 = (0..g).map(|gg| rho[gg] * md[gg]).sum();
                for gg in 0..g {
                    let k = i * g + gg;
                    m_raw[k] = w * ls * match act {
                        ScaleAct::Softplus => md[gg] * sigmoid(r[gg] as f64),
                        ScaleAct::Softmax => rho[gg] * (md[gg] + dotm),
                    };
                    if lik != GeneLikelihood::Poisson {
                        let (xv, t) = (x[gg], th[gg]);
                        let tme = t + mu[gg] + 1e-8;
                        let dg = splicevi::model::real::digamma;
                        m_th[k] = w * t * ((t + 1e-8).ln().abs() + tme.ln().abs() + 1.0 + (t + xv) / tme + dg(xv + t).abs() + dg(t).abs());
                    }
                    m_pi[k] = w;
                }
            }
            let (a, t) = (got.rl[i] as f64, tw.rl[i] as f64);
            let tol = 32.0 * EPS32 * m + 1e-6 * t.abs();
            assert!((a - t).abs() <= tol, "{ctx}: row {i} loss: gpu {a} vs twin {t} (tolerance {tol:e})");
            worst_rl = worst_rl.max((a - t).abs() / tol);
            let (a, t) = (got.d_library[i] as f64, tw.d_library[i] as f64);
            let tol = 32.0 * EPS32 * mlib * (wt[i] as f64).abs() + 1e-5 * t.abs() + 1e-30;
            assert!((a - t).abs() <= tol, "{ctx}: row {i} d_library: gpu {a} vs twin {t} (tolerance {tol:e})");
            worst_lib = worst_lib.max((a - t).abs() / tol);
        }
        let seg: Vec<usize> = (0..=b).map(|i| i * g).collect();
        let tol_of = |m: &[f64]| m.iter().map(|&v| 32.0 * EPS32 * v).collect::<Vec<f64>>();
        let wr = check_segments_plus(&format!("{ctx}: d_raw"), &got.d_raw, &tw.d_raw, &seg, 1e-4, 1e-5, Some(&tol_of(&m_raw)));
        let wt_ = check_segments_plus(&format!("{ctx}: d_log_theta"), &got.d_log_theta, &tw.d_log_theta, &seg, 1e-4, 1e-5, Some(&tol_of(&m_th)));
        let wp = check_segments_plus(&format!("{ctx}: d_pi"), &got.d_pi, &tw.d_pi, &seg, 1e-4, 1e-5, Some(&tol_of(&m_pi)));
        println!("{ctx}: worst error / tolerance: rl {worst_rl:.3}, d_library {worst_lib:.3}, d_raw {wr:.3}, d_log_theta {wt_:.3}, d_pi {wp:.3}");
    }
}


// =====================================================================================================
// Host emulation: the kernel sources themselves, compiled by the host C++ compiler against
// kernels/host_emu.h (one std::thread per CUDA thread, std::barrier for __syncthreads and warp
// shuffles) and run on the CPU. This executes the kernels' logic (indexing, phases, barriers,
// reductions, the tile scatter, the clamps) on every machine with a C++20 compiler; it says nothing
// about device code generation or device math. Compared with the same functions and tolerances as the
// GPU results. Without a C++ compiler these tests print SKIPPED (host build ...).

const EMU_H: &str = include_str!("../kernels/host_emu.h");
const SPECIAL_CUH: &str = include_str!("../kernels/special.cuh");
const CHUNKS_CUH: &str = include_str!("../kernels/chunks.cuh");
const SPLICING_CU: &str = include_str!("../kernels/splicing_lik.cu");
const EXPR_CU: &str = include_str!("../kernels/expr_lik.cu");

// Small chunks (3 ATSE groups, 7 entries per block), so that cells span several blocks and the
// per-cell losses come from several chunk sums.
const SPL_HARNESS: &str = r#"
#define SPL_GCHUNK 3
#define SPL_ECHUNK 7
#include "splicing_lik.cu"
#include <cstdio>
#include <string>
#include <vector>
template <class T> std::vector<T> rd(const std::string& d, const char* name) {
    std::vector<T> v;
    FILE* f = std::fopen((d + "/" + name + ".bin").c_str(), "rb");
    if (!f) return v;
    T x;
    while (std::fread(&x, sizeof(T), 1, f) == 1) v.push_back(x);
    std::fclose(f);
    return v;
}
template <class T> void wr(const std::string& d, const char* name, const std::vector<T>& v) {
    FILE* f = std::fopen((d + "/" + name + ".out").c_str(), "wb");
    if (!v.empty()) std::fwrite(v.data(), sizeof(T), v.size(), f);  // (fwrite's buffer must not be null)
    std::fclose(f);
}
template <class T> const T* ptr(const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); }
int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string d = argv[1];
    FILE* f = std::fopen((d + "/params.txt").c_str(), "r");
    if (!f) return 3;
    int kind, conc, K, B, bf16;
    float w, lse_eps;
    if (std::fscanf(f, "%d %d %d %d %d %f %f", &kind, &conc, &K, &B, &bf16, &w, &lse_eps) != 7) return 4;
    std::fclose(f);
    auto bias = rd<float>(d, "bias"); auto indptr = rd<long long>(d, "indptr");
    auto junction = rd<unsigned>(d, "junction"); auto kc = rd<float>(d, "k"); auto nc = rd<float>(d, "n");
    auto psi = rd<float>(d, "psi"); auto cg = rd<long long>(d, "cell_grp"); auto gp = rd<long long>(d, "grp_ptr");
    auto ord = rd<unsigned>(d, "ord"); auto j2a = rd<unsigned>(d, "junc2atse"); auto lp = rd<float>(d, "log_phi");
    const size_t nnz = junction.size();
    std::vector<float> logits(nnz, NAN), rl(B, NAN), gl(nnz, NAN), gc(nnz, NAN), pe(nnz, NAN);
    // chunk ids (kernels/chunks.cuh): groups for the Dirichlet-multinomial (kind 0), entries otherwise
    const int n_chunks = kind == 0 ? B + (int)(gp.size() - 1) / SPL_GCHUNK + 1 : B + (int)nnz / SPL_ECHUNK + 1;
    std::vector<double> part(n_chunks, NAN);
    if (bf16) {
        auto S = rd<__nv_bfloat16>(d, "s"); auto W = rd<__nv_bfloat16>(d, "w");
        emu::launch(n_chunks, SPL_THREADS, (size_t)K * 4, [&] {
            splicing_lik_bf16(S.data(), K, W.data(), bias.data(), indptr.data(), junction.data(), kc.data(), nc.data(), ptr(psi), ptr(cg), ptr(gp), ptr(ord), ptr(j2a), ptr(lp), kind, conc, w, lse_eps, B, n_chunks, logits.data(), part.data(), gl.data(), gc.data(), pe.data(), nullptr, 0);
        });
    } else {
        auto S = rd<float>(d, "s"); auto W = rd<float>(d, "w");
        emu::launch(n_chunks, SPL_THREADS, (size_t)K * 4, [&] {
            splicing_lik_f32(S.data(), K, W.data(), bias.data(), indptr.data(), junction.data(), kc.data(), nc.data(), ptr(psi), ptr(cg), ptr(gp), ptr(ord), ptr(j2a), ptr(lp), kind, conc, w, lse_eps, B, n_chunks, logits.data(), part.data(), gl.data(), gc.data(), pe.data(), nullptr, 0);
        });
    }
    emu::launch((B + SPL_THREADS - 1) / SPL_THREADS, SPL_THREADS, 0, [&] {
        splicing_lik_rl(part.data(), indptr.data(), ptr(cg), kind, B, w, rl.data());
    });
    wr(d, "logits", logits); wr(d, "rl", rl); wr(d, "g_logit", gl); wr(d, "g_conc", gc); wr(d, "p", pe);
    return 0;
}
"#;

const EXPR_HARNESS: &str = r#"
#include "expr_lik.cu"
#include <cstdio>
#include <string>
#include <vector>
template <class T> std::vector<T> rd(const std::string& d, const char* name) {
    std::vector<T> v;
    FILE* f = std::fopen((d + "/" + name + ".bin").c_str(), "rb");
    if (!f) return v;
    T x;
    while (std::fread(&x, sizeof(T), 1, f) == 1) v.push_back(x);
    std::fclose(f);
    return v;
}
template <class T> void wr(const std::string& d, const char* name, const std::vector<T>& v) {
    FILE* f = std::fopen((d + "/" + name + ".out").c_str(), "wb");
    if (!v.empty()) std::fwrite(v.data(), sizeof(T), v.size(), f);  // (fwrite's buffer must not be null)
    std::fclose(f);
}
template <class T> const T* ptr(const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); }
int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string d = argv[1];
    FILE* f = std::fopen((d + "/params.txt").c_str(), "r");
    if (!f) return 3;
    int lik, act, G, B;
    long long ts;
    if (std::fscanf(f, "%d %d %d %d %lld", &lik, &act, &G, &B, &ts) != 5) return 4;
    std::fclose(f);
    auto raw = rd<float>(d, "raw"); auto pi = rd<float>(d, "pi"); auto theta = rd<float>(d, "theta");
    auto lib = rd<float>(d, "library"); auto xp = rd<long long>(d, "x_ptr"); auto xi = rd<unsigned>(d, "x_idx");
    auto xv = rd<float>(d, "x_val"); auto wt = rd<float>(d, "weight");
    const size_t n = (size_t)B * G;
    std::vector<float> rl(B, NAN), draw(n, NAN), dth(n, NAN), dpi(n, NAN), dlib(B, NAN);
    emu::launch(B, EXPR_THREADS, 0, [&] {
        expr_lik(raw.data(), ptr(pi), ptr(theta), ts, lib.data(), xp.data(), ptr(xi), ptr(xv), ptr(wt), G, lik, act, rl.data(), draw.data(), dth.data(), dpi.data(), dlib.data());
    });
    wr(d, "rl", rl); wr(d, "d_raw", draw); wr(d, "d_log_theta", dth); wr(d, "d_pi", dpi); wr(d, "d_library", dlib);
    return 0;
}
"#;

/// Compiles `harness` (which includes the kernel source) with the host C++ compiler; Err(reason) when
/// there is no C++20 compiler.
fn build_emu(dir: &std::path::Path, name: &str, harness: &str) -> Result<std::path::PathBuf, String> {
    for (f, text) in [("host_emu.h", EMU_H), ("special.cuh", SPECIAL_CUH), ("chunks.cuh", CHUNKS_CUH), ("splicing_lik.cu", SPLICING_CU), ("expr_lik.cu", EXPR_CU)] {
        std::fs::write(dir.join(f), text).unwrap();
    }
    let src = dir.join(format!("{name}.cpp"));
    std::fs::write(&src, harness).unwrap();
    let exe = dir.join(name);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = std::process::Command::new(&cxx)
        .args(["-O2", "-std=c++20", "-ffp-contract=off", "-pthread", "-x", "c++"])
        .args(emu_common::extra_cxx_flags())
        .arg("-I")
        .arg(dir)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .map_err(|e| format!("no C++ compiler ({cxx}: {e})"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if err.contains("barrier") && err.contains("No such file") {
            return Err(format!("{cxx} has no C++20 <barrier>"));
        }
        panic!("{cxx} failed to compile the kernel source for the host emulation:\n{err}");
    }
    Ok(exe)
}

fn write_bin<T: Copy>(dir: &std::path::Path, name: &str, v: &[T]) {
    // SAFETY: plain-old-data slices (f32, u32, i64, u16) viewed as bytes.
    let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) };
    std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
}

fn read_f32(dir: &std::path::Path, name: &str) -> Vec<f32> {
    let b = std::fs::read(dir.join(format!("{name}.out"))).unwrap();
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

trait EmuBits: Operand {
    const BF16: bool;
    fn raw_bits(v: &[Self]) -> Vec<u8>;
}
impl EmuBits for f32 {
    const BF16: bool = false;
    fn raw_bits(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}
impl EmuBits for half::bf16 {
    const BF16: bool = true;
    fn raw_bits(v: &[Self]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()
    }
}

fn emu_splicing<W: EmuBits>(name: &str, k: usize, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let exe = match build_emu(dir.path(), "spl_emu", SPL_HARNESS) {
        Ok(e) => e,
        Err(reason) => {
            skipped(&format!("host build (emulation) of kernels/splicing_lik.cu: {reason}"));
            return;
        }
    };
    let d = dir.path().to_path_buf();
    let mut backend = |kind, conc, wgt: f32, eps: f32, s: &[W], k: usize, w: &[W], bias: &[f32], spl: &SplBatch, groups: Option<&AtseGroups>, j2a: &[u32], lp: &[f32]| {
        let i64s = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        std::fs::write(d.join("params.txt"), format!("{} {} {k} {} {} {wgt:e} {eps:e}", splicevi::cuda::splicing_lik::kind_code(kind), splicevi::cuda::splicing_lik::conc_code(conc), spl.n_cells(), W::BF16 as i32)).unwrap();
        std::fs::write(d.join("s.bin"), W::raw_bits(s)).unwrap();
        std::fs::write(d.join("w.bin"), W::raw_bits(w)).unwrap();
        write_bin(&d, "bias", bias);
        write_bin(&d, "indptr", &i64s(&spl.indptr));
        write_bin(&d, "junction", &spl.junction);
        write_bin(&d, "k", &spl.k);
        write_bin(&d, "n", &spl.n);
        write_bin(&d, "psi", &spl.psi);
        match groups {
            Some(g) => {
                write_bin(&d, "cell_grp", &i64s(&g.cell_ptr));
                write_bin(&d, "grp_ptr", &i64s(&g.grp_ptr));
                write_bin(&d, "ord", &g.ord);
            }
            None => {
                for f in ["cell_grp", "grp_ptr", "ord"] {
                    let _ = std::fs::remove_file(d.join(format!("{f}.bin")));
                }
            }
        }
        write_bin(&d, "junc2atse", j2a);
        write_bin(&d, "log_phi", lp);
        (0..1)
            .map(|_| {
                let st = std::process::Command::new(&exe).arg(&d).status().unwrap();
                assert!(st.success(), "spl_emu exited with {st}");
                SplLikHost { logits: read_f32(&d, "logits"), rl: read_f32(&d, "rl"), g_logit: read_f32(&d, "g_logit"), g_conc: read_f32(&d, "g_conc"), p: read_f32(&d, "p") }
            })
            .collect::<Vec<_>>()
    };
    splicing_parity::<W>(name, k, seed, true, true, &mut backend);
}

#[test]
fn host_emu_splicing_lik_f32_matches_twin() {
    emu_splicing::<f32>("host emulation f32", 45, 31);
    emu_splicing::<f32>("host emulation f32", 200, 32);
}

#[test]
fn host_emu_splicing_lik_bf16_matches_twin() {
    emu_splicing::<half::bf16>("host emulation bf16", 64, 33);
}

#[test]
fn host_emu_expr_lik_matches_twin() {
    let dir = tempfile::tempdir().unwrap();
    let exe = match build_emu(dir.path(), "expr_emu", EXPR_HARNESS) {
        Ok(e) => e,
        Err(reason) => {
            skipped(&format!("host build (emulation) of kernels/expr_lik.cu: {reason}"));
            return;
        }
    };
    let d = dir.path().to_path_buf();
    let mut backend = |lik, act, g: usize, raw: &[f32], pi: &[f32], theta: &[f32], ts: usize, lib: &[f32], xp: &[usize], xi: &[u32], xv: &[f32], wt: &[f32]| {
        std::fs::write(d.join("params.txt"), format!("{} {} {g} {} {ts}", splicevi::cuda::expr_lik::lik_code(lik), splicevi::cuda::expr_lik::act_code(act), lib.len())).unwrap();
        write_bin(&d, "raw", raw);
        write_bin(&d, "pi", if lik == GeneLikelihood::Zinb { pi } else { &[] });
        write_bin(&d, "theta", if lik == GeneLikelihood::Poisson { &[] } else { theta });
        write_bin(&d, "library", lib);
        write_bin(&d, "x_ptr", &xp.iter().map(|&v| v as i64).collect::<Vec<_>>());
        write_bin(&d, "x_idx", xi);
        write_bin(&d, "x_val", xv);
        write_bin(&d, "weight", wt);
        (0..1)
            .map(|_| {
                let st = std::process::Command::new(&exe).arg(&d).status().unwrap();
                assert!(st.success(), "expr_emu exited with {st}");
                ExprLikHost { rl: read_f32(&d, "rl"), d_raw: read_f32(&d, "d_raw"), d_log_theta: read_f32(&d, "d_log_theta"), d_pi: read_f32(&d, "d_pi"), d_library: read_f32(&d, "d_library") }
            })
            .collect::<Vec<_>>()
    };
    expr_parity("host emulation", true, &mut backend);
}
