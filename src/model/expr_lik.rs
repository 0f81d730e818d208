//! One expression row fused: decoder logits → px_scale (softplus, or softmax over genes) → μ = e^ℓ ρ →
//! ZINB / NB / Poisson log-likelihood summed over genes (model.md §2.7 a/b, §3.1) and the gradients of
//! the row's loss w.r.t. the scale logits, log θ, the zero-inflation logits and the library ℓ.
//!
//! This is the CPU twin of kernels/expr_lik.cu (checked against it by tests/cuda_lik_parity.rs). The
//! per-entry likelihood terms are `lik::{zinb, nb, poisson}`, the very functions the model's
//! `expr_loss` uses; the chain rule through μ, ρ and θ = exp(log θ) is the one of `SpliceVae::backward`
//! (there it is spread over B × G matrices; here it is per row, as the kernel does it).
//! Sums over genes are accumulated in f64 (the kernel does the same), so the f32 twin and the kernel
//! differ only by the rounding of the per-entry terms.
//!
//! (kernels/expr_lik.cu has never run on a GPU: none was available when it was written.)

use super::config::GeneLikelihood;
use super::lik;
use super::real::{softplus, softplus_grad, Real};

/// How px_scale is made from the decoder logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleAct {
    /// ρ = softplus(raw) (vanilla decoder with a size factor: the MuData case).
    Softplus,
    /// ρ = softmax over the row's genes.
    Softmax,
}

/// Inputs of one row (G genes).
#[derive(Clone, Copy, Debug)]
pub struct ExprRow<'a, T> {
    /// Scale-head logits (pre-activation), G.
    pub raw: &'a [T],
    /// Zero-inflation logits, G (read for ZINB only).
    pub pi: &'a [T],
    /// θ (inverse dispersion, = exp(log θ)), G (not read for Poisson).
    pub theta: &'a [T],
    /// Library ℓ (log size factor); μ = e^ℓ ρ.
    pub library: T,
    /// The row's counts, sparse: gene indices strictly ascending, values.
    pub x_idx: &'a [u32],
    pub x_val: &'a [f32],
    /// Multiplies every gradient (e.g. mask_expr_i / B in a training step); not the loss.
    pub grad_weight: T,
}

/// Outputs of one row.
#[derive(Debug)]
pub struct ExprRowOut<'a, T> {
    /// d(weight · RL_i)/d raw, G.
    pub d_raw: &'a mut [T],
    /// d(weight · RL_i)/d log θ, G (Poisson: zeros).
    pub d_log_theta: &'a mut [T],
    /// d(weight · RL_i)/d π, G (NB / Poisson: zeros).
    pub d_pi: &'a mut [T],
}

/// Scalar results of one row: RL_i = −Σ_g log p(x_ig) (unmasked) and d(weight · RL_i)/dℓ.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExprRowRes<T> {
    pub rl: T,
    pub d_library: T,
}

/// The fused row. `lik_kind` and `act` are the model's gene_likelihood and decoder activation.
pub fn expr_row<T: Real>(lik_kind: GeneLikelihood, act: ScaleAct, inp: &ExprRow<'_, T>, out: &mut ExprRowOut<'_, T>) -> ExprRowRes<T> {
    let g = inp.raw.len();
    assert!(out.d_raw.len() == g && out.d_log_theta.len() == g && out.d_pi.len() == g);
    // px_scale: softmax exactly as vae::softmax_rows (max, exp, f64 sum, divide), or softplus.
    let (mx, s) = match act {
        ScaleAct::Softmax if g > 0 => {
            let mx = inp.raw.iter().copied().fold(inp.raw[0], |a, b| a.max(b));
            let s: f64 = inp.raw.iter().map(|&v| (v - mx).exp().to_f64()).sum();
            (mx, T::from_f64(s))
        }
        _ => (T::ZERO, T::ONE),
    };
    let rho_of = |v: T| match act {
        ScaleAct::Softplus => softplus(v),
        ScaleAct::Softmax => (v - mx).exp() / s,
    };
    let ls = inp.library.exp();
    let w = inp.grad_weight;
    let (mut acc, mut dlib, mut dot) = (0f64, 0f64, 0f64);
    let mut nz = 0usize;
    for gg in 0..g {
        let x = if nz < inp.x_idx.len() && inp.x_idx[nz] as usize == gg {
            nz += 1;
            T::from_f32(inp.x_val[nz - 1])
        } else {
            T::ZERO
        };
        let rho = rho_of(inp.raw[gg]);
        let mu = ls * rho;
        let r = match lik_kind {
            GeneLikelihood::Zinb => lik::zinb(x, mu, inp.theta[gg], inp.pi[gg]),
            GeneLikelihood::Nb => lik::nb(x, mu, inp.theta[gg]),
            GeneLikelihood::Poisson => lik::poisson(x, mu),
        };
        acc += r.ll.to_f64();
        let dmu = -r.d_mu * w;
        dlib += (dmu * mu).to_f64();
        let drho = dmu * ls;
        out.d_raw[gg] = match act {
            ScaleAct::Softplus => drho * softplus_grad(inp.raw[gg]),
            ScaleAct::Softmax => {
                dot += (drho * rho).to_f64();
                drho
            }
        };
        out.d_log_theta[gg] = match lik_kind {
            GeneLikelihood::Poisson => T::ZERO,
            _ => -r.d_theta * w * inp.theta[gg],
        };
        out.d_pi[gg] = match lik_kind {
            GeneLikelihood::Zinb => -r.d_pi * w,
            _ => T::ZERO,
        };
    }
    assert_eq!(nz, inp.x_idx.len(), "expr_row: count indices must be strictly ascending and < G");
    if act == ScaleAct::Softmax {
        let dot = T::from_f64(dot);
        for gg in 0..g {
            let rho = rho_of(inp.raw[gg]);
            out.d_raw[gg] = rho * (out.d_raw[gg] - dot);
        }
    }
    ExprRowRes { rl: T::from_f64(-acc), d_library: T::from_f64(dlib) }
}
