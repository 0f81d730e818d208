//! The latent step of a training step in one place: posterior mixing, reparameterisation, the KL of the
//! joint posterior and the modality penalty, forward and backward (model.md §4, §5.1, §5.2, §14.3).
//!
//! This is the CPU twin of kernels/latent.cu (checked against it by tests/cuda_latent_parity.rs). It
//! composes the functions of [`super::latent`] and the reparameterisation of [`super::vae`] in the
//! order `SpliceVae::{encode, forward, backward}` applies them, per cell (the softmax mixings' d(raw)
//! is returned per cell, before the scatter to the batch / label / obs rows the model does).
//! MMDRbf (a median over all pairs of the minibatch) is not part of it: `latent_step_fwd` refuses it.

use anyhow::{bail, Result};

use super::config::ModalityPenalty;
use super::latent::{self, PostGrads};
use super::real::Real;
use super::tensor::Mat;
use super::vae::{sample, sample_bwd, Modality};

/// How the joint posterior is made from the two modality posteriors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// [expression; splicing] side by side (L = 2d).
    Concat,
    /// The masked softmax of two raw weights per cell (equal / universal / cell), `raw` B × 2;
    /// `independent`: `mixing_variance = independent` (w² instead of √w on the variances, §12.4).
    Softmax { independent: bool },
    /// Per-dimension weighted average, `raw` d; `mask_spl`: the mask_cells_without_splicing option.
    PerDim { mask_spl: bool },
    /// Warm-up routing: the joint posterior is one modality's.
    Routed(Modality),
}

/// Inputs of the latent step (B cells, d latent dims per modality).
pub struct LatentIn<'a, T> {
    pub mu_e: &'a Mat<T>,
    pub v_e: &'a Mat<T>,
    pub mu_s: &'a Mat<T>,
    pub v_s: &'a Mat<T>,
    pub mix: Mix,
    /// B × 2 per-cell raw weights (Softmax), d (PerDim), empty otherwise.
    pub raw: &'a [T],
    pub mask_e: &'a [bool],
    pub mask_s: &'a [bool],
    /// B × L standard normal draws of the joint sample.
    pub eps: &'a Mat<T>,
    /// latent_distribution = ln (z is the row softmax of the sample).
    pub ln: bool,
    pub penalty: ModalityPenalty,
}

/// Outputs of the forward.
pub struct LatentOut<T> {
    pub qz_m: Mat<T>,
    pub qz_v: Mat<T>,
    pub z: Mat<T>,
    /// KL(q(z|x) ‖ N(0, I)) per cell.
    pub kl: Vec<T>,
    /// The penalty's contribution to the loss (0 for concatenate), as `SpliceVae::forward` adds it:
    /// JeffreysExact already multiplied by `kl_weight`.
    pub penalty: T,
    tape: Tape<T>,
}

enum Tape<T> {
    None,
    Softmax(latent::SoftmaxMix<T>),
    PerDim(latent::PerDimMix<T>),
}

fn paired(inp: &LatentIn<'_, impl Real>) -> Vec<bool> {
    inp.mask_e.iter().zip(inp.mask_s).map(|(&a, &b)| a && b).collect()
}

/// Forward of the latent step; `kl_weight` scales the JeffreysExact penalty (§14.3).
pub fn latent_step_fwd<T: Real>(inp: &LatentIn<'_, T>, kl_weight: f64) -> Result<LatentOut<T>> {
    let (me, ve, ms, vs) = (inp.mu_e, inp.v_e, inp.mu_s, inp.v_s);
    let (qz_m, qz_v, tape) = match inp.mix {
        Mix::Concat => (me.hcat(ms), ve.hcat(vs), Tape::None),
        Mix::Routed(Modality::Expression) => (me.clone(), ve.clone(), Tape::None),
        Mix::Routed(Modality::Splicing) => (ms.clone(), vs.clone(), Tape::None),
        Mix::PerDim { mask_spl } => {
            let (qm, qv, c) = latent::mix_perdim_fwd(me, ve, ms, vs, inp.raw, mask_spl.then_some(inp.mask_s));
            (qm, qv, Tape::PerDim(c))
        }
        Mix::Softmax { independent } => {
            let (qm, qv, c) = latent::mix_softmax_fwd(me, ve, ms, vs, inp.raw, inp.mask_e, inp.mask_s, independent);
            (qm, qv, Tape::Softmax(c))
        }
    };
    let z = sample(&qz_m, &qz_v, inp.eps, inp.ln);
    let kl = latent::kl_fwd(&qz_m, &qz_v);
    let penalty = if inp.mix == Mix::Concat {
        T::ZERO
    } else {
        let pr = paired(inp);
        match inp.penalty {
            ModalityPenalty::None => T::ZERO,
            ModalityPenalty::Jeffreys => latent::jeffreys_fwd(me, ve, ms, vs, &pr),
            ModalityPenalty::Mmd => latent::mmd_mean_dist_fwd(me, ms, &pr),
            ModalityPenalty::JeffreysExact => latent::jeffreys_exact_fwd(me, ve, ms, vs, &pr) * T::from_f64(kl_weight),
            ModalityPenalty::MmdRbf => bail!("latent step: MMDRbf is not part of the fused latent step"),
        }
    };
    Ok(LatentOut { qz_m, qz_v, z, kl, penalty, tape })
}

/// Gradients of the latent step.
pub struct LatentGrads<T> {
    pub post: PostGrads<T>,
    /// d(raw): B × 2 per cell (Softmax; before the scatter to the weight rows), d (PerDim), else empty.
    pub d_raw: Vec<T>,
}

/// Backward: `dz` = d loss / d z (B × L), `dqm` = d loss / d qz_m from the decoders when they read the
/// mean (`use_z_mean`), `kl_scale` = d loss / d KL_i (kl_weight / B), `kl_weight` for JeffreysExact.
pub fn latent_step_bwd<T: Real>(
    inp: &LatentIn<'_, T>,
    out: &LatentOut<T>,
    dz: &Mat<T>,
    dqm_in: Option<&Mat<T>>,
    kl_scale: T,
    kl_weight: T,
) -> LatentGrads<T> {
    let (b, l) = (out.qz_m.rows, out.qz_m.cols);
    let d = inp.mu_e.cols;
    let mut dqm = Mat::zeros(b, l);
    let mut dqv = Mat::zeros(b, l);
    if let Some(x) = dqm_in {
        dqm.data.iter_mut().zip(&x.data).for_each(|(a, &v)| *a += v);
    }
    sample_bwd(&out.qz_v, inp.eps, &out.z, inp.ln, dz, &mut dqm, &mut dqv);
    latent::kl_bwd(&out.qz_m, &out.qz_v, &vec![kl_scale; b], &mut dqm, &mut dqv);
    let (me, ve, ms, vs) = (inp.mu_e, inp.v_e, inp.mu_s, inp.v_s);
    let (mut pg, d_raw) = match (&inp.mix, &out.tape) {
        (Mix::Concat, _) => {
            let mut pg = PostGrads::zeros(b, d);
            pg.mu_e = dqm.cols_range(0, d);
            pg.mu_s = dqm.cols_range(d, 2 * d);
            pg.v_e = dqv.cols_range(0, d);
            pg.v_s = dqv.cols_range(d, 2 * d);
            (pg, Vec::new())
        }
        (Mix::Routed(m), _) => {
            let mut pg = PostGrads::zeros(b, d);
            match m {
                Modality::Expression => {
                    pg.mu_e = dqm;
                    pg.v_e = dqv;
                }
                Modality::Splicing => {
                    pg.mu_s = dqm;
                    pg.v_s = dqv;
                }
            }
            (pg, Vec::new())
        }
        (Mix::PerDim { mask_spl }, Tape::PerDim(c)) => {
            latent::mix_perdim_bwd(c, me, ve, ms, vs, mask_spl.then_some(inp.mask_s), &dqm, &dqv)
        }
        (Mix::Softmax { .. }, Tape::Softmax(c)) => latent::mix_softmax_bwd(c, me, ve, ms, vs, inp.mask_e, inp.mask_s, &dqm, &dqv),
        _ => unreachable!("latent step: the forward's tape does not match the mixing"),
    };
    if inp.mix != Mix::Concat {
        let pr = paired(inp);
        match inp.penalty {
            ModalityPenalty::None | ModalityPenalty::MmdRbf => {}
            ModalityPenalty::Jeffreys => latent::jeffreys_bwd(me, ve, ms, vs, &pr, T::ONE, &mut pg),
            ModalityPenalty::Mmd => latent::mmd_mean_dist_bwd(me, ms, &pr, T::ONE, &mut pg),
            ModalityPenalty::JeffreysExact => latent::jeffreys_exact_bwd(me, ve, ms, vs, &pr, kl_weight, &mut pg),
        }
    }
    LatentGrads { post: pg, d_raw }
}
