//! The epilogue of one FCLayers block after its GEMM (model.md §2.1): + bias → BatchNorm (batch
//! statistics in training, running ones in evaluation) → LayerNorm (no affine) → ReLU / LeakyReLU →
//! dropout, forward and backward, on a B × H matrix.
//!
//! This is the CPU twin of kernels/dense_epilogue.cu (checked against it by
//! tests/cuda_dense_epilogue_parity.rs). It is built from the functions `ops::fc_forward` /
//! `ops::fc_backward` use for those steps (`bn_batch_stats`, `bn_apply`, `bn_backward_core`,
//! `layernorm_fwd` / `ln_row_bwd`, `act_fwd` / `act_grad`, `rng::DropStream`), in the same order; the
//! GEMM itself (x·Wᵀ, and dW, dx in the backward) is cuBLAS's on the GPU and `linear_dense_*` here.

use super::arch::Act;
use super::ops::{act_fwd, act_grad, bn_apply, bn_backward_core, bn_batch_stats, bn_eval_stats, layernorm_fwd, ln_row_bwd};
use super::real::Real;
use super::rng::DropStream;
use super::tensor::Mat;

/// BatchNorm of the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    None,
    /// Batch statistics (training).
    Batch,
    /// Running statistics (evaluation).
    Running,
}

/// Options of the block's epilogue.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue {
    pub bn: BnMode,
    pub ln: bool,
    pub act: Act,
    /// Dropout acts (training with p > 0): the stream of the block.
    pub dropout: Option<(DropStream, f64)>,
}

/// BatchNorm parameters and running statistics (H each); unused without BatchNorm.
pub struct BnParams<'a, T> {
    pub gamma: &'a [T],
    pub beta: &'a [T],
    pub running_mean: &'a [T],
    pub running_var: &'a [T],
}

/// What the forward keeps for the backward.
pub struct EpilogueTape<T> {
    /// The input of the activation (B × H): the LayerNorm output x̂ when `ln`.
    pub pre_act: Mat<T>,
    /// BatchNorm x̂ and 1/std (per column), when BatchNorm is on.
    pub bn_xhat: Option<Mat<T>>,
    pub bn_inv_std: Vec<T>,
    pub bn_mean: Vec<T>,
    /// LayerNorm 1/std per row, when `ln`.
    pub ln_inv_std: Vec<T>,
}

/// Forward from the GEMM output `y0` (B × H, no bias yet).
pub fn epilogue_fwd<T: Real>(e: &Epilogue, y0: &Mat<T>, bias: &[T], bn: &BnParams<'_, T>) -> (Mat<T>, EpilogueTape<T>) {
    let b = y0.rows;
    let mut y = y0.clone();
    for r in 0..b {
        for (v, &c) in y.row_mut(r).iter_mut().zip(bias) {
            *v += c;
        }
    }
    let (mut bn_xhat, mut bn_inv_std, mut bn_mean) = (None, Vec::new(), Vec::new());
    if e.bn != BnMode::None {
        let (mean, inv) = match e.bn {
            BnMode::Batch => {
                let (m, i, _) = bn_batch_stats(&y);
                (m, i)
            }
            _ => bn_eval_stats(bn.running_mean, bn.running_var),
        };
        let (out, xhat) = bn_apply(&y, &mean, &inv, bn.gamma, bn.beta);
        y = out;
        bn_xhat = Some(xhat);
        bn_inv_std = inv;
        bn_mean = mean;
    }
    let mut ln_inv_std = Vec::new();
    if e.ln {
        let (out, c) = layernorm_fwd(&y, None);
        y = out;
        ln_inv_std = c.inv_std;
    }
    let pre_act = y.clone();
    y.data.iter_mut().for_each(|v| *v = act_fwd(e.act, *v));
    if let Some((ds, p)) = e.dropout {
        let scale = T::from_f64(1.0 / (1.0 - p));
        for (i, v) in y.data.iter_mut().enumerate() {
            *v = if ds.keep(i as u64) { *v * scale } else { T::ZERO };
        }
    }
    (y, EpilogueTape { pre_act, bn_xhat, bn_inv_std, bn_mean, ln_inv_std })
}

/// Gradients of the epilogue.
pub struct EpilogueGrads<T> {
    /// d(GEMM output) (B × H): what the GEMM backward takes.
    pub dy0: Mat<T>,
    pub d_bias: Vec<T>,
    /// dγ, dβ (empty without BatchNorm).
    pub d_gamma: Vec<T>,
    pub d_beta: Vec<T>,
}

/// Backward from d(output).
pub fn epilogue_bwd<T: Real>(e: &Epilogue, tape: &EpilogueTape<T>, bn: &BnParams<'_, T>, dout: &Mat<T>) -> EpilogueGrads<T> {
    let (b, h) = (dout.rows, dout.cols);
    let mut g = dout.clone();
    if let Some((ds, p)) = e.dropout {
        let scale = T::from_f64(1.0 / (1.0 - p));
        for (i, v) in g.data.iter_mut().enumerate() {
            *v = if ds.keep(i as u64) { *v * scale } else { T::ZERO };
        }
    }
    for (v, &a) in g.data.iter_mut().zip(&tape.pre_act.data) {
        *v *= act_grad(e.act, a);
    }
    if e.ln {
        for r in 0..b {
            ln_row_bwd(tape.pre_act.row(r), tape.ln_inv_std[r], &mut g.data[r * h..(r + 1) * h]);
        }
    }
    let (mut d_gamma, mut d_beta) = (Vec::new(), Vec::new());
    if let Some(xhat) = &tape.bn_xhat {
        let (dx, s1, s2) = bn_backward_core(xhat, &tape.bn_inv_std, e.bn == BnMode::Batch, bn.gamma, &g);
        g = dx;
        d_beta = s1;
        d_gamma = s2;
    }
    let mut d_bias = vec![0f64; h];
    for r in 0..b {
        for (s, &v) in d_bias.iter_mut().zip(g.row(r)) {
            *s += v.to_f64();
        }
    }
    EpilogueGrads { dy0: g, d_bias: d_bias.iter().map(|&v| T::from_f64(v)).collect(), d_gamma, d_beta }
}
