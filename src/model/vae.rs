//! SPLICEVAE: inference → generative → loss (model.md §2–§5) and the hand-written backward pass.

use super::arch::*;
use super::batch::{Batch, SplBatch};
use super::config::*;
use super::latent::{self, PostGrads};
use super::lik;
use super::spl_lik::{self, dm_probs, AtseGroups, ConcIndex, SplLossOut};
use super::ops::{self, BufUpdates, Cov, FcCache, MainIn, Mode, Sparse};
use super::params::{Grads, ParamLayout, Params};
use super::partial::{self, PartialCache};
use super::real::{sigmoid, softplus, softplus_grad, Real};
use super::rng;
use super::tensor::{self, Mat};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// Which single posterior the KL warm-up coin flip chose (§4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modality {
    Expression,
    Splicing,
}

/// Where the standard-normal draws of the reparameterisation come from.
#[derive(Clone, Debug)]
pub enum Noise {
    /// Counter-based draws keyed by `StepOptions::seed`.
    Seeded,
    /// Given draws (row-major): eps_expr B×d, eps_spl B×d, eps_joint B×L (the fixtures' `noise.*`).
    Given { eps_expr: Vec<f64>, eps_spl: Vec<f64>, eps_joint: Vec<f64> },
    /// All zero: samples equal the means.
    Zero,
}

/// Per-step options chosen by the trainer (or an analysis).
#[derive(Clone, Debug)]
pub struct StepOptions {
    /// κ_KL (§5.7).
    pub kl_weight: f64,
    /// Gate between the halves in `concatenate` mode (§4.4). Also store it with `Params::set_cross_gate`.
    pub cross_gate: f64,
    /// BatchNorm batch statistics (+ running-stat updates) and dropout.
    pub training: bool,
    /// Decoders see qz_m instead of the sample z.
    pub use_z_mean: bool,
    /// Warm-up routing: Some(m) replaces the mixing by modality m's posterior (ignored for concatenate).
    pub routing: Option<Modality>,
    /// Seed of this step's dropout masks and (with `Noise::Seeded`) posterior noise.
    pub seed: u64,
    pub noise: Noise,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            kl_weight: 1.0,
            cross_gate: 1.0,
            training: true,
            use_z_mean: false,
            routing: None,
            seed: 0,
            noise: Noise::Seeded,
        }
    }
}

/// Inference outputs (§2.2–2.5, §4).
#[derive(Clone, Debug)]
pub struct Inference<T> {
    pub qzm_expr: Mat<T>,
    pub qzv_expr: Mat<T>,
    pub qzm_spl: Mat<T>,
    pub qzv_spl: Mat<T>,
    pub qz_m: Mat<T>,
    pub qz_v: Mat<T>,
    pub z_expr: Mat<T>,
    pub z_spl: Mat<T>,
    pub z: Mat<T>,
    /// ℓ_i, the log library (`libsize_expr`).
    pub library: Vec<T>,
    pub mask_expr: Vec<bool>,
    pub mask_spl: Vec<bool>,
}

/// Outputs of one forward step.
#[derive(Clone, Debug)]
pub struct StepOutput<T> {
    pub inference: Inference<T>,
    /// ρ (B × G).
    pub px_scale: Mat<T>,
    /// μ = e^ℓ ρ (B × G).
    pub px_rate: Mat<T>,
    /// Zero-inflation logits (B × G).
    pub px_dropout: Mat<T>,
    /// θ: 1 × G (gene) or B × G.
    pub theta: Mat<T>,
    /// Splicing probability of each observed entry (within-ATSE normalised for DM).
    pub p_entries: Vec<T>,
    /// Per cell: expression loss × mask, splicing loss × weight, KL of the joint posterior.
    pub rl_expr: Vec<T>,
    pub rl_spl: Vec<T>,
    pub kl: Vec<T>,
    pub penalty: T,
    pub concentration_prior: T,
    /// λ Σ W² / N of the splicing decoder's output weights (`splicing_decoder_prior`; 0 when off).
    pub decoder_prior: T,
    /// λ Σ_j W_j C W_jᵀ / N, C the minibatch covariance of the splicing output layer's input
    /// (`splicing_decoder_effect_prior`; 0 when off).
    pub decoder_effect_prior: T,
    /// mean(RL_e + RL_s + κ KL) + penalty + priors.
    pub loss: T,
    /// BatchNorm running-stat updates of this step (apply with `SpliceVae::apply_buffer_updates`).
    pub buffer_updates: BufUpdates,
}

impl<T: Real> StepOutput<T> {
    /// Σ_i (RL_e + RL_s), as logged by scvi-tools.
    pub fn reconstruction_loss_sum(&self) -> f64 {
        self.rl_expr.iter().zip(&self.rl_spl).map(|(a, b)| a.to_f64() + b.to_f64()).sum()
    }
    /// Σ_i KL + B × penalty, as logged by scvi-tools.
    pub fn kl_local_sum(&self) -> f64 {
        self.kl.iter().map(|v| v.to_f64()).sum::<f64>() + self.kl.len() as f64 * self.penalty.to_f64()
    }
}

enum SplEncTape<T> {
    Vanilla { fc: FcCache<T>, h: Mat<T>, lv: Mat<T> },
    Partial { pc: PartialCache<T>, mlp: FcCache<T>, raw_v: Mat<T> },
}

enum MixTape<T> {
    Softmax { c: latent::SoftmaxMix<T>, raw_rows: Vec<u32> },
    PerDim(latent::PerDimMix<T>),
    Concat,
    Routed(Modality),
}

enum ExprDecTape<T> {
    Vanilla { fc: FcCache<T>, h: Mat<T>, raw_scale: Mat<T> },
    Linear { factor: FcCache<T>, dropout: FcCache<T>, r: Option<FcCache<T>> },
}

enum SplDecTape<T> {
    Vanilla { fc: FcCache<T> },
    Linear,
}

/// Everything the backward pass needs.
struct EncTape<T> {
    mode: Mode,
    enc_e: FcCache<T>,
    h_e: Mat<T>,
    lib: Option<(FcCache<T>, Mat<T>, Vec<T>)>,
    spl_enc: SplEncTape<T>,
    eps_e: Mat<T>,
    eps_s: Mat<T>,
    eps_j: Mat<T>,
    mix: MixTape<T>,
}

struct Tape<T> {
    enc: EncTape<T>,
    expr_dec: ExprDecTape<T>,
    /// e^ℓ per cell
    lib_scale: Vec<T>,
    /// Gradients of the batch mean of −log p(x) w.r.t. μ, θ, π (B × G each; zero for masked cells).
    g_mu: Mat<T>,
    g_theta: Mat<T>,
    g_pi: Mat<T>,
    spl_dec: SplDecTape<T>,
    /// Splicing head input S (B × K).
    s_in: Mat<T>,
    /// `splicing_decoder_effect_prior`: W C (J × K), C the stop-gradient metric of this step.
    effect_wc: Option<Mat<T>>,
    /// d(RL_s_i)/d(logit_e) and per-entry contributions to d(RL_s)/d(concentration).
    g_logit: Vec<T>,
    g_conc: Vec<T>,
    rbf: latent::RbfInfo<T>,
}

/// A forward pass: the outputs and the tape for `backward`.
pub struct Forward<T> {
    pub out: StepOutput<T>,
    tape: Tape<T>,
    opts: StepOptions,
}

impl<T: Real> Forward<T> {
    /// The stop-gradient metric C (K × K) of `splicing_decoder_effect_prior` in this step: the
    /// minibatch covariance of the splicing output layer's input. None when the option is off.
    pub fn effect_prior_metric(&self) -> Option<Mat<T>> {
        self.tape.effect_wc.as_ref().map(|_| spl_input_covariance(&self.tape.s_in))
    }
}

/// C = (1/B) Σ_i (S_i − S̄)(S_i − S̄)ᵀ of a B × K matrix (K × K; zeros for B ≤ 1).
pub fn spl_input_covariance<T: Real>(s: &Mat<T>) -> Mat<T> {
    let (b, k) = (s.rows, s.cols);
    let mut c = Mat::zeros(k, k);
    if b <= 1 {
        return c;
    }
    let mut mean = vec![T::ZERO; k];
    for i in 0..b {
        for (m, &v) in mean.iter_mut().zip(s.row(i)) {
            *m += v;
        }
    }
    let inv_b = T::ONE / T::from_f64(b as f64);
    mean.iter_mut().for_each(|m| *m *= inv_b);
    let mut sc = s.clone();
    for i in 0..b {
        for (v, &m) in sc.row_mut(i).iter_mut().zip(&mean) {
            *v -= m;
        }
    }
    tensor::matmul_tn_acc(&sc.data, b, k, &sc.data, k, &mut c.data);
    c.data.iter_mut().for_each(|v| *v *= inv_b);
    c
}

/// The model: options, dimensions, module tree, parameter name table and junction → ATSE map.
#[derive(Clone, Debug)]
pub struct SpliceVae {
    pub cfg: ModelConfig,
    pub dims: Dims,
    pub arch: Arch,
    pub layout: Arc<ParamLayout>,
    /// ATSE index of every junction (len J); may be empty when the likelihood does not group junctions.
    pub junc2atse: Vec<u32>,
    /// Junctions of each ATSE (CSR).
    pub atse_ptr: Vec<usize>,
    pub atse_junc: Vec<u32>,
}

/// ℓ = ln(s + LIB_EPS) with size factors.
pub const LIB_EPS: f64 = 1e-6;
/// The partial encoder's variance: softplus(raw) + PARTIAL_VAR_EPS.
pub const PARTIAL_VAR_EPS: f64 = 1e-6;

impl SpliceVae {
    /// Build the model. `junc2atse[j]` is junction j's ATSE index (sorted unique event ids); required
    /// for the Dirichlet-multinomial loss, optional (may be empty) otherwise.
    pub fn new(cfg: ModelConfig, dims: Dims, junc2atse: Vec<u32>) -> Result<SpliceVae> {
        cfg.validate(&dims)?;
        if !junc2atse.is_empty() || cfg.splicing_loss_type == SplicingLoss::DirichletMultinomial {
            if junc2atse.len() != dims.n_junctions {
                bail!("model: junc2atse has {} entries for {} junctions", junc2atse.len(), dims.n_junctions);
            }
            if let Some(j) = junc2atse.iter().position(|&a| a as usize >= dims.n_atse) {
                bail!("model: junction {j} has ATSE index {} ≥ n_atse = {}", junc2atse[j], dims.n_atse);
            }
        }
        let mut atse_ptr = vec![0usize; dims.n_atse + 1];
        for &a in &junc2atse {
            atse_ptr[a as usize + 1] += 1;
        }
        for a in 0..dims.n_atse {
            atse_ptr[a + 1] += atse_ptr[a];
        }
        let mut pos = atse_ptr.clone();
        let mut atse_junc = vec![0u32; junc2atse.len()];
        for (j, &a) in junc2atse.iter().enumerate() {
            atse_junc[pos[a as usize]] = j as u32;
            pos[a as usize] += 1;
        }
        let (arch, layout) = Arch::build(&cfg, &dims);
        Ok(SpliceVae { cfg, dims, arch, layout: Arc::new(layout), junc2atse, atse_ptr, atse_junc })
    }

    /// Initial parameters (§2.9) from a seed.
    pub fn init_params<T: Real>(&self, seed: u64) -> Params<T> {
        Params::init(self.layout.clone(), seed)
    }

    /// Replace the partial encoder's feature embedding (J × code_dim, row-major), e.g. by TruncatedSVD
    /// components (`initialize_embeddings_from_pca`).
    pub fn set_feature_embedding<T: Real>(&self, p: &mut Params<T>, emb: &[f32]) -> Result<()> {
        let SplEncP::Partial(pe) = &self.arch.z_enc_spl else {
            bail!("set_feature_embedding: the splicing encoder is not partial");
        };
        let dst = p.get_mut(pe.emb);
        if dst.len() != emb.len() {
            bail!("set_feature_embedding: got {} values, the embedding has {}", emb.len(), dst.len());
        }
        dst.iter_mut().zip(emb).for_each(|(d, &v)| *d = T::from_f32(v));
        Ok(())
    }

    /// Data statistics of the robust options, from the training cells `cells` of `spl` (never dense):
    /// the partial encoder's `psi_center` (population PSI ψ̄_j = Σ k / Σ n) and `pool_divisor` (median
    /// observed junctions per cell, ≥ 1), and, with `splicing_bias_from_data`, the splicing decoder's
    /// output bias. Does nothing when none of these options is on.
    pub fn init_data_statistics<T: Real>(&self, p: &mut Params<T>, spl: &crate::data::Splicing, cells: &[usize]) -> Result<()> {
        let j = self.dims.n_junctions;
        if spl.n_junctions != j {
            bail!("init_data_statistics: {} junctions in the data, {j} in the model", spl.n_junctions);
        }
        let psi_bar = || -> (Vec<f64>, Vec<bool>) {
            let (mut sk, mut sn) = (vec![0f64; j], vec![0f64; j]);
            for &c in cells {
                for e in spl.cell_range(c) {
                    let jj = spl.junction[e] as usize;
                    if spl.has_counts {
                        sk[jj] += spl.k[e] as f64;
                        sn[jj] += spl.n[e] as f64;
                    } else {
                        sk[jj] += spl.psi[e] as f64;
                        sn[jj] += 1.0;
                    }
                }
            }
            let seen: Vec<bool> = sn.iter().map(|&n| n > 0.0).collect();
            (sk.iter().zip(&sn).map(|(&k, &n)| if n > 0.0 { k / n } else { 0.0 }).collect(), seen)
        };
        if let SplEncP::Partial(pe) = &self.arch.z_enc_spl {
            if let Some(ci) = pe.center {
                let (pb, _) = psi_bar();
                p.get_mut(ci).iter_mut().zip(&pb).for_each(|(d, &v)| *d = T::from_f64(v));
            }
            if let Some(di) = pe.divisor {
                let mut counts: Vec<usize> = cells.iter().map(|&c| spl.cell_range(c).len()).collect();
                counts.sort_unstable();
                let med = if counts.is_empty() {
                    1.0
                } else if counts.len() % 2 == 1 {
                    counts[counts.len() / 2] as f64
                } else {
                    0.5 * (counts[counts.len() / 2 - 1] + counts[counts.len() / 2]) as f64
                };
                p.get_mut(di)[0] = T::from_f64(med.max(1.0));
            }
        }
        if self.cfg.splicing_bias_from_data {
            let (pb, seen) = psi_bar();
            let bi = self.spl_out_linear().b.unwrap();
            let dm = self.cfg.splicing_loss_type == SplicingLoss::DirichletMultinomial;
            for (jj, d) in p.get_mut(bi).iter_mut().enumerate() {
                if seen[jj] {
                    let v = pb[jj].clamp(1e-3, 1.0 - 1e-3);
                    *d = T::from_f64(if dm { v.ln() } else { (v / (1.0 - v)).ln() });
                }
            }
        }
        Ok(())
    }

    /// Write BatchNorm running-stat updates into the buffers.
    pub fn apply_buffer_updates<T: Real>(&self, p: &mut Params<T>, upd: &BufUpdates) {
        for (idx, vals) in upd {
            p.get_mut(*idx).iter_mut().zip(vals).for_each(|(d, &v)| *d = T::from_f64(v));
        }
    }

    fn cats<'a>(&self, b: &'a Batch) -> Vec<&'a [u32]> {
        let mut v: Vec<&[u32]> = vec![&b.batch];
        v.extend(b.cats.iter().map(|c| c.as_slice()));
        v
    }

    /// The covariates of `b`: its continuous ones and [batch, categoricals…].
    pub(crate) fn cov<'a>(&self, b: &'a Batch) -> Cov<'a> {
        Cov { cont: &b.cont, n_cont: b.n_cont, cats: self.cats(b) }
    }

    fn cont_mat<T: Real>(b: &Batch) -> Mat<T> {
        Mat::from_vec(b.n_cells(), b.n_cont, b.cont.iter().map(|&v| T::from_f32(v)).collect())
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        batch.check(self.dims.n_genes, self.dims.n_junctions)?;
        if batch.cats.len() != self.dims.n_cats_per_cov.len() {
            bail!("batch has {} categorical covariates, the model {}", batch.cats.len(), self.dims.n_cats_per_cov.len());
        }
        if batch.n_cont != self.dims.n_cont {
            bail!("batch has {} continuous covariates, the model {}", batch.n_cont, self.dims.n_cont);
        }
        if batch.n_cells() == 0 {
            bail!("empty minibatch");
        }
        Ok(())
    }

    /// Inference step (§2.2–2.5, §4): encoders, library, mixing and samples.
    fn encode<T: Real>(
        &self,
        p: &Params<T>,
        batch: &Batch,
        opts: &StepOptions,
        mode: Mode,
        upd: &mut BufUpdates,
    ) -> Result<(Inference<T>, EncTape<T>)> {
        let b = batch.n_cells();
        let cfg = &self.cfg;
        let a = &self.arch;
        let d = a.d;
        let cont_all = self.cov(batch);
        // ---- inference -------------------------------------------------------------------------
        let mask_expr: Vec<bool> =
            (0..b).map(|i| batch.expr.row(i).1.iter().map(|&v| v as f64).sum::<f64>() > 0.0).collect();
        let mask_spl: Vec<bool> = if cfg.mask_cells_without_splicing {
            (0..b).map(|i| !batch.spl.cell_range(i).is_empty()).collect()
        } else {
            vec![true; b]
        };
        let enc_cont = if cfg.encode_covariates { batch.n_cont } else { 0 };
        let xe_vals = expression_input_values(cfg.expression_input, &batch.expr.indptr, &batch.expr.values);
        let xe = sparse_input::<T>(&batch.expr.indptr, &batch.expr.indices, &xe_vals, batch.expr.n_cols, batch, enc_cont);
        let (h_e, enc_e) = ops::fc_forward(&a.z_enc_expr.fc, p, MainIn::Sparse(&xe), &cont_all, mode, upd)
            .context("expression encoder")?;
        let mu_e = ops::linear_dense_fwd(&a.z_enc_expr.mean, p, &h_e);
        let lv_e = ops::linear_dense_fwd(&a.z_enc_expr.var, p, &h_e);
        let v_e = map(&lv_e, |v| v.exp());

        let (library, lib_tape) = if cfg.use_size_factor_key {
            (batch.library.iter().map(|&s| (T::from_f32(s) + T::from_f64(LIB_EPS)).ln()).collect::<Vec<T>>(), None)
        } else {
            let (h_l, fc) = ops::fc_forward(&a.l_enc_expr.fc, p, MainIn::Sparse(&xe), &cont_all, mode, upd)
                .context("library encoder")?;
            let pre = ops::linear_dense_fwd(&a.l_enc_expr.out, p, &h_l);
            let lib: Vec<T> = pre.data.iter().map(|&v| ops::act_fwd(Act::LeakyRelu, v)).collect();
            (lib, Some((fc, h_l, pre.data)))
        };

        let (mu_s, v_s, spl_enc) = match &a.z_enc_spl {
            SplEncP::Vanilla(enc) => {
                let xs = sparse_input::<T>(&batch.spl.indptr, &batch.spl.junction, &batch.spl.psi, batch.spl.n_junctions, batch, enc_cont);
                let (h, fc) = ops::fc_forward(&enc.fc, p, MainIn::Sparse(&xs), &cont_all, mode, upd)
                    .context("splicing encoder")?;
                let mu = ops::linear_dense_fwd(&enc.mean, p, &h);
                let lv = ops::linear_dense_fwd(&enc.var, p, &h);
                let v = map(&lv, |x| x.exp());
                (mu, v, SplEncTape::Vanilla { fc, h, lv })
            }
            SplEncP::Partial(pe) => {
                let pc = partial::partial_forward(pe, p, &batch.spl, mode);
                let (out, mlp) = ops::fc_forward(&pe.mlp, p, MainIn::Dense(&pc.pool), &cont_all, mode, upd)
                    .context("partial splicing encoder MLP")?;
                let mu = out.cols_range(0, d);
                let raw_v = out.cols_range(d, 2 * d);
                let v = map(&raw_v, |x| softplus(x) + T::from_f64(PARTIAL_VAR_EPS));
                (mu, v, SplEncTape::Partial { pc, mlp, raw_v })
            }
        };

        let (eps_e, eps_s, eps_j) = self.noise::<T>(b, opts)?;
        let ln = cfg.latent_distribution == LatentDistribution::Ln;
        let z_expr = sample(&mu_e, &v_e, &eps_e, ln);
        let z_spl = sample(&mu_s, &v_s, &eps_s, ln);

        let (qz_m, qz_v, mix) = if cfg.modality_weights == ModalityWeights::Concatenate {
            (mu_e.hcat(&mu_s), v_e.hcat(&v_s), MixTape::Concat)
        } else if let Some(m) = opts.routing {
            match m {
                Modality::Expression => (mu_e.clone(), v_e.clone(), MixTape::Routed(m)),
                Modality::Splicing => (mu_s.clone(), v_s.clone(), MixTape::Routed(m)),
            }
        } else if cfg.modality_weights == ModalityWeights::PerDimensionWeightedAverage {
            let raw = p.get(a.dim_weights.unwrap());
            let ms = cfg.mask_cells_without_splicing.then_some(mask_spl.as_slice());
            let (qm, qv, c) = latent::mix_perdim_fwd(&mu_e, &v_e, &mu_s, &v_s, raw, ms);
            (qm, qv, MixTape::PerDim(c))
        } else {
            let (raw, raw_rows) = self.softmax_raw(p, batch)?;
            let indep = cfg.mixing_variance == MixingVariance::Independent;
            let (qm, qv, c) = latent::mix_softmax_fwd(&mu_e, &v_e, &mu_s, &v_s, &raw, &mask_expr, &mask_spl, indep);
            (qm, qv, MixTape::Softmax { c, raw_rows })
        };
        let z = sample(&qz_m, &qz_v, &eps_j, ln);
        let inference = Inference {
            qzm_expr: mu_e,
            qzv_expr: v_e,
            qzm_spl: mu_s,
            qzv_spl: v_s,
            qz_m,
            qz_v,
            z_expr,
            z_spl,
            z,
            library,
            mask_expr,
            mask_spl,
        };

        Ok((inference, EncTape { mode, enc_e, h_e, lib: lib_tape, spl_enc, eps_e, eps_s, eps_j, mix }))
    }

    /// Forward pass: inference, generative step and loss.
    pub fn forward<T: Real>(&self, p: &Params<T>, batch: &Batch, opts: &StepOptions) -> Result<Forward<T>> {
        self.check_batch(batch)?;
        let b = batch.n_cells();
        let mode = Mode { training: opts.training, seed: opts.seed };
        let mut upd = BufUpdates::new();
        let cats = self.cats(batch);
        let cont_all = Cov { cont: &batch.cont, n_cont: batch.n_cont, cats: cats.clone() };
        let (inference, enc) = self.encode(p, batch, opts, mode, &mut upd)?;

        // ---- generative ------------------------------------------------------------------------
        let latent_in = if opts.use_z_mean { &inference.qz_m } else { &inference.z };
        let (r_e, r_s) = self.decoder_latents(latent_in, opts.cross_gate);
        let lib_scale: Vec<T> = inference.library.iter().map(|&v| v.exp()).collect();
        let (px_scale, px_rate, px_dropout, theta, expr_dec) =
            self.expr_decode(p, &r_e, batch, &cont_all, &inference.library, &lib_scale, mode, &mut upd)?;
        let (s_in, spl_dec) = self.spl_head_input(p, &r_s, batch, &cont_all, mode, &mut upd)?;
        let logits = self.spl_logits_sparse(p, &s_in, &batch.spl);

        // ---- loss ------------------------------------------------------------------------------
        let inv_b = T::ONE / T::from_f64(b as f64);
        let (rl_expr, g_mu, g_theta, g_pi) =
            self.expr_loss(batch, &px_rate, &theta, &px_dropout, &inference.mask_expr, inv_b);
        let sl = self.splicing_loss(p, &batch.spl, &logits)?;
        let kl = latent::kl_fwd(&inference.qz_m, &inference.qz_v);
        let (penalty, rbf) = self.penalty(&inference, opts.kl_weight);
        let concentration_prior = self.conc_prior(p, b);
        let decoder_prior = self.spl_decoder_prior(p);
        let (decoder_effect_prior, effect_wc) = if self.cfg.splicing_decoder_effect_prior != 0.0 {
            let c = spl_input_covariance(&s_in);
            let (v, wc) = self.spl_decoder_effect_prior_wc(p, &c);
            (v, Some(wc))
        } else {
            (T::ZERO, None)
        };
        let bt = b as f64;
        let mean_terms: f64 = (0..b)
            .map(|i| rl_expr[i].to_f64() + sl.rl[i].to_f64() + opts.kl_weight * kl[i].to_f64())
            .sum::<f64>()
            / bt;
        let loss = T::from_f64(
            mean_terms
                + penalty.to_f64()
                + concentration_prior.to_f64()
                + decoder_prior.to_f64()
                + decoder_effect_prior.to_f64(),
        );
        if !loss.is_finite() {
            bail!(
                "non-finite loss (expression {:.4e}, splicing {:.4e}, KL {:.4e}, penalty {:.4e}); \
                 check the inputs for non-finite or negative counts (in training, a learning rate too high \
                 for the data diverges the same way: lower --lr, or keep --gradient-clip)",
                rl_expr.iter().map(|v| v.to_f64()).sum::<f64>(),
                sl.rl.iter().map(|v| v.to_f64()).sum::<f64>(),
                kl.iter().map(|v| v.to_f64()).sum::<f64>(),
                penalty.to_f64()
            );
        }
        let out = StepOutput {
            inference,
            px_scale,
            px_rate,
            px_dropout,
            theta,
            p_entries: sl.p,
            rl_expr,
            rl_spl: sl.rl,
            kl,
            penalty,
            concentration_prior,
            decoder_prior,
            decoder_effect_prior,
            loss,
            buffer_updates: upd,
        };
        let tape = Tape {
            enc,
            expr_dec,
            lib_scale,
            g_mu,
            g_theta,
            g_pi,
            spl_dec,
            s_in,
            effect_wc,
            g_logit: sl.g_logit,
            g_conc: sl.g_conc,
            rbf,
        };
        Ok(Forward { out, tape, opts: opts.clone() })
    }

    /// The step's standard normals (expression, splicing and joint samples: B × d, B × d, B × L).
    pub(crate) fn noise<T: Real>(&self, b: usize, opts: &StepOptions) -> Result<(Mat<T>, Mat<T>, Mat<T>)> {
        let (d, l) = (self.arch.d, self.arch.l);
        Ok(match &opts.noise {
            Noise::Zero => (Mat::zeros(b, d), Mat::zeros(b, d), Mat::zeros(b, l)),
            Noise::Seeded => {
                let gen = |stream: u64, n: usize| -> Vec<T> {
                    (0..n).map(|i| T::from_f64(rng::normal(opts.seed, stream, i as u64))).collect()
                };
                (
                    Mat::from_vec(b, d, gen(rng::streams::EPS_EXPR, b * d)),
                    Mat::from_vec(b, d, gen(rng::streams::EPS_SPL, b * d)),
                    Mat::from_vec(b, l, gen(rng::streams::EPS_JOINT, b * l)),
                )
            }
            Noise::Given { eps_expr, eps_spl, eps_joint } => {
                if eps_expr.len() != b * d || eps_spl.len() != b * d || eps_joint.len() != b * l {
                    bail!("given noise has the wrong size (need {b}×{d}, {b}×{d}, {b}×{l})");
                }
                let cv = |v: &Vec<f64>| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
                (Mat::from_vec(b, d, cv(eps_expr)), Mat::from_vec(b, d, cv(eps_spl)), Mat::from_vec(b, l, cv(eps_joint)))
            }
        })
    }

    /// Raw softmax weights per cell (B × 2) and, for `cell`, the table row of each cell
    /// (u32::MAX = mean row of unseen cells).
    fn softmax_raw<T: Real>(&self, p: &Params<T>, batch: &Batch) -> Result<(Vec<T>, Vec<u32>)> {
        let w = p.get(self.arch.mod_weights);
        let b = batch.n_cells();
        match self.cfg.modality_weights {
            ModalityWeights::Cell => {
                let n_obs = self.dims.n_obs;
                let mut raw = Vec::with_capacity(2 * b);
                let mut rows = Vec::with_capacity(b);
                // §14.2: cells not seen in training (no cell_idx, or u32::MAX) use the mean learned row.
                let mean_row = || {
                    let n = T::from_f64(n_obs as f64);
                    let (mut a0, mut a1) = (T::ZERO, T::ZERO);
                    for r in 0..n_obs {
                        a0 += w[2 * r];
                        a1 += w[2 * r + 1];
                    }
                    [a0 / n, a1 / n]
                };
                match &batch.cell_idx {
                    Some(ci) => {
                        let mean = ci.contains(&u32::MAX).then(mean_row);
                        for (i, &r) in ci.iter().enumerate() {
                            match mean {
                                Some(m) if r == u32::MAX => raw.extend(m),
                                _ => {
                                    if r as usize >= n_obs {
                                        bail!("cell {i} has cell_idx {r} but the per-cell weight table has {n_obs} rows");
                                    }
                                    raw.push(w[2 * r as usize]);
                                    raw.push(w[2 * r as usize + 1]);
                                }
                            }
                            rows.push(r);
                        }
                    }
                    None => {
                        let m = mean_row();
                        for _ in 0..b {
                            raw.extend(m);
                            rows.push(u32::MAX);
                        }
                    }
                }
                Ok((raw, rows))
            }
            _ => {
                let raw = (0..b).flat_map(|_| [w[0], w[1]]).collect();
                Ok((raw, Vec::new()))
            }
        }
    }

    /// Inputs of the two decoders from the latent (B × L): both see it, except in concatenate mode
    /// (§4.4): expression [z_e; g z_s], splicing [g z_e; z_s].
    fn decoder_latents<T: Real>(&self, lat: &Mat<T>, gate: f64) -> (Mat<T>, Mat<T>) {
        if self.cfg.modality_weights != ModalityWeights::Concatenate {
            return (lat.clone(), lat.clone());
        }
        let d = self.arch.d;
        let (into_e, into_s) = self.cross_gates(gate);
        let (ge, gs) = (T::from_f64(into_e), T::from_f64(into_s));
        let mut re = lat.clone();
        let mut rs = lat.clone();
        for i in 0..lat.rows {
            for t in 0..d {
                re.data[i * 2 * d + d + t] *= ge;
                rs.data[i * 2 * d + t] *= gs;
            }
        }
        (re, rs)
    }

    /// With `concatenate` (§4.4), the factors on the other modality's half in each decoder's input for
    /// the cross gate `gate`: (the splicing half into the expression decoder, the expression half into
    /// the splicing decoder). `cross_decoding` closes either for good.
    pub fn cross_gates(&self, gate: f64) -> (f64, f64) {
        match self.cfg.cross_decoding {
            CrossDecoding::Both => (gate, gate),
            CrossDecoding::Splicing => (0.0, gate),
            CrossDecoding::None => (0.0, 0.0),
        }
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn expr_decode<T: Real>(
        &self,
        p: &Params<T>,
        r_e: &Mat<T>,
        batch: &Batch,
        cov: &Cov,
        _library: &[T],
        lib_scale: &[T],
        mode: Mode,
        upd: &mut BufUpdates,
    ) -> Result<(Mat<T>, Mat<T>, Mat<T>, Mat<T>, ExprDecTape<T>)> {
        let b = r_e.rows;
        let g = self.dims.n_genes;
        let main = if batch.n_cont > 0 { r_e.hcat(&Self::cont_mat(batch)) } else { r_e.clone() };
        let (px_scale, px_dropout, r_raw, tape) = match &self.arch.z_dec_expr {
            ExprDecP::Vanilla { fc, scale, r, dropout, softplus: sp } => {
                let (h, fcc) = ops::fc_forward(fc, p, MainIn::Dense(&main), cov, mode, upd).context("expression decoder")?;
                let raw = ops::linear_dense_fwd(scale, p, &h);
                let rho = if *sp { map(&raw, softplus) } else { softmax_rows(&raw) };
                let pi = ops::linear_dense_fwd(dropout, p, &h);
                let rr = (self.cfg.dispersion == Dispersion::GeneCell).then(|| ops::linear_dense_fwd(r, p, &h));
                (rho, pi, rr, ExprDecTape::Vanilla { fc: fcc, h, raw_scale: raw })
            }
            ExprDecP::Linear { factor, dropout, r } => {
                let (raw, fc_f) =
                    ops::fc_forward(factor, p, MainIn::Dense(&main), cov, mode, upd).context("expression decoder")?;
                let rho = softmax_rows(&raw);
                let (pi, fc_d) = ops::fc_forward(dropout, p, MainIn::Dense(&main), cov, mode, upd)?;
                let (rr, fc_r) = match r {
                    Some(rf) => {
                        let (o, c) = ops::fc_forward(rf, p, MainIn::Dense(&main), cov, mode, upd)?;
                        (Some(o), Some(c))
                    }
                    None => (None, None),
                };
                (rho, pi, rr, ExprDecTape::Linear { factor: fc_f, dropout: fc_d, r: fc_r })
            }
        };
        let mut px_rate = px_scale.clone();
        px_rate.data.par_chunks_mut(g).enumerate().for_each(|(i, row)| row.iter_mut().for_each(|v| *v *= lib_scale[i]));
        let theta = match self.cfg.dispersion {
            Dispersion::Gene => Mat::from_vec(1, g, p.get(self.arch.px_r.unwrap()).iter().map(|&v| v.exp()).collect()),
            Dispersion::GeneBatch | Dispersion::GeneLabel => {
                let (codes, n) = if self.cfg.dispersion == Dispersion::GeneBatch {
                    (&batch.batch, self.dims.n_batch)
                } else {
                    (&batch.labels, self.dims.n_labels)
                };
                let r = p.get(self.arch.px_r.unwrap());
                let mut th = Mat::zeros(b, g);
                for i in 0..b {
                    let c = codes[i] as usize;
                    if c >= n {
                        bail!("cell {i} has code {c} for the dispersion covariate, which has {n} levels");
                    }
                    for gg in 0..g {
                        th.data[i * g + gg] = r[gg * n + c].exp();
                    }
                }
                th
            }
            Dispersion::GeneCell => map(r_raw.as_ref().unwrap(), |v| v.exp()),
        };
        Ok((px_scale, px_rate, px_dropout, theta, tape))
    }

    /// Input S of the splicing output layer (B × K): the decoder hidden layer (vanilla) or
    /// [r; cont; one-hots] (linear).
    fn spl_head_input<T: Real>(
        &self,
        p: &Params<T>,
        r_s: &Mat<T>,
        batch: &Batch,
        cov: &Cov,
        mode: Mode,
        upd: &mut BufUpdates,
    ) -> Result<(Mat<T>, SplDecTape<T>)> {
        Ok(match &self.arch.z_dec_spl {
            SplDecP::Vanilla { fc, .. } => {
                let main = if batch.n_cont > 0 { r_s.hcat(&Self::cont_mat(batch)) } else { r_s.clone() };
                let (h, c) = ops::fc_forward(fc, p, MainIn::Dense(&main), cov, mode, upd).context("splicing decoder")?;
                (h, SplDecTape::Vanilla { fc: c })
            }
            SplDecP::Linear { .. } => (cov.concat_dense(r_s, batch.n_cont, &self.arch.dec_cats), SplDecTape::Linear),
        })
    }

    fn spl_out_linear(&self) -> &LinearP {
        match &self.arch.z_dec_spl {
            SplDecP::Vanilla { out, .. } => out,
            SplDecP::Linear { lin } => lin,
        }
    }

    /// Logits of the observed entries only: S_i · W_j + b_j.
    fn spl_logits_sparse<T: Real>(&self, p: &Params<T>, s: &Mat<T>, spl: &SplBatch) -> Vec<T> {
        let lin = self.spl_out_linear();
        let (w, bias, k) = (p.get(lin.w), p.get(lin.b.unwrap()), lin.n_in);
        assert_eq!(s.cols, k);
        spl_lik::sparse_logits(&s.data, k, w, bias, spl)
    }

    /// Concentration of each entry's target: (parameter index into log_phi, φ = softplus(log_phi)).
    fn splicing_loss<T: Real>(&self, p: &Params<T>, spl: &SplBatch, logits: &[T]) -> Result<SplLossOut<T>> {
        let w = T::from_f64(self.cfg.splicing_loss_weight);
        let kind = self.cfg.splicing_loss_type;
        let groups = match kind {
            SplicingLoss::DirichletMultinomial => Some(AtseGroups::build(spl, &self.junc2atse, &self.atse_ptr)?),
            _ => None,
        };
        let conc = ConcIndex::for_loss(kind, self.cfg.dm_concentration);
        Ok(spl_lik::splicing_loss(kind, conc, spl, groups.as_ref(), &self.junc2atse, logits, p.get(self.arch.log_phi), w, self.cfg.dm_lse_eps()))
    }

    #[allow(clippy::type_complexity)]
    fn expr_loss<T: Real>(
        &self,
        batch: &Batch,
        mu: &Mat<T>,
        theta: &Mat<T>,
        pi: &Mat<T>,
        mask: &[bool],
        grad_scale: T,
    ) -> (Vec<T>, Mat<T>, Mat<T>, Mat<T>) {
        let (b, g) = (mu.rows, mu.cols);
        let lik_kind = self.cfg.gene_likelihood;
        let mut g_mu = Mat::zeros(b, g);
        let mut g_theta = Mat::zeros(b, g);
        let mut g_pi = Mat::zeros(b, g);
        // Gene dispersion: the θ terms once per gene and lgamma/ψ(x + θ) once per (gene, count).
        let gene_terms = (theta.rows == 1 && lik_kind != GeneLikelihood::Poisson).then(|| {
            // (Per worker, then OR-ed together: the same bits in any order.)
            let present = (0..b)
                .into_par_iter()
                .fold(
                    || vec![0u64; g],
                    |mut acc, i| {
                        let (idx, vals) = batch.expr.row(i);
                        for (&c, &v) in idx.iter().zip(vals) {
                            acc[c as usize] |= lik::count_bit(v);
                        }
                        acc
                    },
                )
                .reduce_with(|mut a, o| {
                    a.iter_mut().zip(&o).for_each(|(x, &y)| *x |= y);
                    a
                })
                .unwrap_or_else(|| vec![0u64; g]);
            lik::GeneTerms::new(theta.row(0), &present)
        });
        let rl: Vec<T> = g_mu
            .data
            .par_chunks_mut(g)
            .zip(g_theta.data.par_chunks_mut(g))
            .zip(g_pi.data.par_chunks_mut(g))
            .enumerate()
            .map_init(lik::ZinbScratch::default, |sc, (i, ((gm, gt), gp))| {
                let (idx, vals) = batch.expr.row(i);
                let th = if theta.rows == 1 { theta.row(0) } else { theta.row(i) };
                let (mr, pr) = (mu.row(i), pi.row(i));
                let acc = if let (GeneLikelihood::Zinb, Some(terms)) = (lik_kind, &gene_terms) {
                    // The common case: a row at a time from the sparse counts, its transcendental terms
                    // in a vectorised pass.
                    lik::zinb_row(idx, vals, mr, th, pr, terms, sc, gm, gt, gp)
                } else {
                    Self::expr_row_serial(lik_kind, gene_terms.as_ref(), idx, vals, mr, th, pr, gm, gt, gp)
                };
                // The gradients of the batch mean (a masked cell contributes nothing), as the backward
                // takes them, while the row is in cache.
                let s = if mask[i] { grad_scale } else { T::ZERO };
                for row in [gm, gt, gp] {
                    row.iter_mut().for_each(|v| *v *= s);
                }
                if mask[i] {
                    T::from_f64(-acc)
                } else {
                    T::ZERO
                }
            })
            .collect();
        (rl, g_mu, g_theta, g_pi)
    }

    /// One row of the expression likelihood entry by entry (NB, Poisson, ZINB without gene dispersion):
    /// returns Σ ll and writes the local gradients of −ll.
    #[allow(clippy::too_many_arguments)]
    fn expr_row_serial<T: Real>(
        lik_kind: GeneLikelihood,
        gene_terms: Option<&lik::GeneTerms<T>>,
        idx: &[u32],
        vals: &[f32],
        mr: &[T],
        th: &[T],
        pr: &[T],
        gm: &mut [T],
        gt: &mut [T],
        gp: &mut [T],
    ) -> f64 {
        let g = mr.len();
        let mut x = vec![T::ZERO; g];
        for (&c, &v) in idx.iter().zip(vals) {
            x[c as usize] = T::from_f32(v);
        }
        let mut acc = 0f64;
        for gg in 0..g {
            let r = match (lik_kind, &gene_terms) {
                (GeneLikelihood::Zinb, Some(gt)) => {
                    let xt = if x[gg] > T::ZERO { gt.xt(gg, x[gg], th[gg]) } else { (T::ZERO, T::ZERO) };
                    lik::zinb_with(x[gg], mr[gg], th[gg], pr[gg], &gt.theta[gg], xt)
                }
                (GeneLikelihood::Nb, Some(gt)) => {
                    lik::nb_with(x[gg], mr[gg], th[gg], &gt.theta[gg], gt.xt(gg, x[gg], th[gg]))
                }
                (GeneLikelihood::Zinb, None) => lik::zinb(x[gg], mr[gg], th[gg], pr[gg]),
                (GeneLikelihood::Nb, None) => lik::nb(x[gg], mr[gg], th[gg]),
                (GeneLikelihood::Poisson, _) => lik::poisson(x[gg], mr[gg]),
            };
            acc += r.ll.to_f64();
            // Local gradients of −log p.
            gm[gg] = -r.d_mu;
            gt[gg] = -r.d_theta;
            gp[gg] = -r.d_pi;
        }
        acc
    }

    /// Modality penalty (§5.2, §14.3) and, for MMDRbf, the bandwidth used.
    fn penalty<T: Real>(&self, inf: &Inference<T>, kl_weight: f64) -> (T, latent::RbfInfo<T>) {
        let none = latent::RbfInfo { h: T::ONE, med_pair: None };
        if self.cfg.modality_weights == ModalityWeights::Concatenate {
            return (T::ZERO, none);
        }
        let paired: Vec<bool> = inf.mask_expr.iter().zip(&inf.mask_spl).map(|(&a, &b)| a && b).collect();
        let (me, ve, ms, vs) = (&inf.qzm_expr, &inf.qzv_expr, &inf.qzm_spl, &inf.qzv_spl);
        match self.cfg.modality_penalty {
            ModalityPenalty::None => (T::ZERO, none),
            ModalityPenalty::Jeffreys => (latent::jeffreys_fwd(me, ve, ms, vs, &paired), none),
            ModalityPenalty::Mmd => (latent::mmd_mean_dist_fwd(me, ms, &paired), none),
            ModalityPenalty::JeffreysExact => {
                (latent::jeffreys_exact_fwd(me, ve, ms, vs, &paired) * T::from_f64(kl_weight), none)
            }
            ModalityPenalty::MmdRbf => latent::mmd_rbf_fwd(&inf.z_expr, &inf.z_spl, &paired),
        }
    }

    /// The splicing decoder's output weight matrix (the one `splicing_decoder_prior` acts on).
    /// Parameter index of the splicing decoder's output weight (J × K), either architecture.
    pub fn spl_out_weight(&self) -> usize {
        self.spl_out_linear().w
    }

    /// 1 / N with N the training data's cells: the per-step share of a prior over the whole data.
    fn prior_scale(&self) -> f64 {
        1.0 / self.dims.n_obs.max(1) as f64
    }

    /// `splicing_decoder_prior`: λ Σ W² / N (docs/robust.md).
    fn spl_decoder_prior<T: Real>(&self, p: &Params<T>) -> T {
        let lam = self.cfg.splicing_decoder_prior;
        if lam == 0.0 {
            return T::ZERO;
        }
        let s: f64 = p.get(self.spl_out_weight()).iter().map(|v| v.to_f64() * v.to_f64()).sum();
        T::from_f64(lam * s * self.prior_scale())
    }

    /// `splicing_decoder_effect_prior` at a given metric C (K × K, symmetric): λ Σ_j W_j C W_jᵀ / N, the
    /// prior on the decoded logit's variation across cells (docs/robust.md). With C the minibatch
    /// covariance of the output layer's input (`spl_input_covariance`, what `forward` uses) this is λ / N
    /// times Σ_j Var_cells(S_i · W_j). Exposed so that a finite-difference check can hold C fixed.
    pub fn spl_decoder_effect_prior_at<T: Real>(&self, p: &Params<T>, c: &Mat<T>) -> T {
        if self.cfg.splicing_decoder_effect_prior == 0.0 {
            return T::ZERO;
        }
        self.spl_decoder_effect_prior_wc(p, c).0
    }

    /// (λ Σ_j W_j C W_jᵀ / N, W C).
    fn spl_decoder_effect_prior_wc<T: Real>(&self, p: &Params<T>, c: &Mat<T>) -> (T, Mat<T>) {
        let w = p.get(self.spl_out_weight());
        let k = self.spl_out_linear().n_in;
        assert_eq!((c.rows, c.cols), (k, k), "effect-prior metric is not K × K");
        let j = w.len() / k;
        let mut wc = Mat::zeros(j, k);
        // W Cᵀ = W C (C symmetric).
        tensor::matmul_nt(w, j, k, &c.data, k, &mut wc.data, T::ZERO);
        let s: f64 = w.iter().zip(&wc.data).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
        (T::from_f64(self.cfg.splicing_decoder_effect_prior * s * self.prior_scale()), wc)
    }

    fn conc_prior<T: Real>(&self, p: &Params<T>, b: usize) -> T {
        match self.cfg.splicing_loss_type {
            SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial => {
                let s: f64 = p.get(self.arch.log_phi).iter().map(|v| v.to_f64() * v.to_f64()).sum();
                T::from_f64(self.cfg.lambda_prior * s / b as f64)
            }
            _ => T::ZERO,
        }
    }

    /// Backward pass: d(loss)/d(every trainable parameter). `extra_dz` (B × L) is an additional
    /// gradient w.r.t. the sampled joint latent z (the adversarial fool term).
    pub fn backward<T: Real>(
        &self,
        p: &Params<T>,
        batch: &Batch,
        fwd: &Forward<T>,
        extra_dz: Option<&Mat<T>>,
    ) -> Result<Grads<T>> {
        let mut g = Grads::zeros(self.layout.clone());
        let (out, tp, opts) = (&fwd.out, &fwd.tape, &fwd.opts);
        let inf = &out.inference;
        let cfg = &self.cfg;
        let a = &self.arch;
        let b = batch.n_cells();
        let (d, l) = (a.d, a.l);
        let bt = T::from_f64(b as f64);
        let inv_b = T::ONE / bt;
        let kl_w = T::from_f64(opts.kl_weight);
        let gdim = self.dims.n_genes;

        // ---- expression likelihood → decoder ---------------------------------------------------
        // dμ, dθ, dπ of mean(RL_e) (masked cells contribute nothing), scaled in the forward. (The B × G
        // passes below: rows in parallel, each row's arithmetic as in a serial loop.)
        let (dmu, dtheta, dpi) = (&tp.g_mu, &tp.g_theta, &tp.g_pi);
        // μ = e^ℓ ρ
        let mut dlib = vec![T::ZERO; b];
        let mut drho = dmu.clone();
        drho.data
            .par_chunks_mut(gdim.max(1))
            .zip(dlib.par_iter_mut())
            .enumerate()
            .for_each(|(i, (row, dl))| {
                let ls = tp.lib_scale[i];
                let (dm, rate) = (dmu.row(i), out.px_rate.row(i));
                let mut acc = T::ZERO;
                for gg in 0..gdim {
                    acc += dm[gg] * rate[gg];
                    row[gg] *= ls;
                }
                *dl = acc;
            });
        // θ
        let mut dtheta_raw: Option<Mat<T>> = None;
        match cfg.dispersion {
            Dispersion::Gene => {
                if let Some(gr) = g.slot(a.px_r.unwrap()) {
                    // Blocks of genes in parallel; each gene still sums its cells in order.
                    const GENES: usize = 256;
                    gr.par_chunks_mut(GENES).enumerate().for_each(|(blk, grb)| {
                        let g0 = blk * GENES;
                        for i in 0..b {
                            let (dt, th) = (&dtheta.data[i * gdim + g0..], &out.theta.data[g0..]);
                            for (t, v) in grb.iter_mut().enumerate() {
                                *v += dt[t] * th[t];
                            }
                        }
                    });
                }
            }
            Dispersion::GeneBatch | Dispersion::GeneLabel => {
                let (codes, n) = if cfg.dispersion == Dispersion::GeneBatch {
                    (&batch.batch, self.dims.n_batch)
                } else {
                    (&batch.labels, self.dims.n_labels)
                };
                if let Some(gr) = g.slot(a.px_r.unwrap()) {
                    for i in 0..b {
                        let c = codes[i] as usize;
                        for gg in 0..gdim {
                            let k = i * gdim + gg;
                            gr[gg * n + c] += dtheta.data[k] * out.theta.data[k];
                        }
                    }
                }
            }
            Dispersion::GeneCell => {
                let mut m = dtheta.clone();
                m.data.iter_mut().zip(&out.theta.data).for_each(|(v, &t)| *v *= t);
                dtheta_raw = Some(m);
            }
        }
        let uses_pi = cfg.gene_likelihood == GeneLikelihood::Zinb;
        let d_main_e: Mat<T> = match (&a.z_dec_expr, &tp.expr_dec) {
            (ExprDecP::Vanilla { fc, scale, r, dropout, softplus: sp }, ExprDecTape::Vanilla { fc: fcc, h, raw_scale }) => {
                let mut draw = drho.clone();
                if *sp {
                    draw.data.iter_mut().zip(&raw_scale.data).for_each(|(v, &x)| *v *= softplus_grad(x));
                } else {
                    softmax_rows_bwd(&out.px_scale, &mut draw);
                }
                let mut dh = ops::linear_dense_bwd(scale, p, h, &draw, &mut g, true).unwrap();
                if uses_pi {
                    let dh2 = ops::linear_dense_bwd(dropout, p, h, &dpi, &mut g, true).unwrap();
                    add_into(&mut dh, &dh2);
                }
                if let Some(dr) = &dtheta_raw {
                    let dh3 = ops::linear_dense_bwd(r, p, h, dr, &mut g, true).unwrap();
                    add_into(&mut dh, &dh3);
                }
                ops::fc_backward(fc, p, fcc, dh, &mut g, true).unwrap()
            }
            (ExprDecP::Linear { factor, dropout, r }, ExprDecTape::Linear { factor: cf, dropout: cd, r: cr }) => {
                let mut draw = drho.clone();
                softmax_rows_bwd(&out.px_scale, &mut draw);
                let mut dm = ops::fc_backward(factor, p, cf, draw, &mut g, true).unwrap();
                if uses_pi {
                    let d2 = ops::fc_backward(dropout, p, cd, dpi.clone(), &mut g, true).unwrap();
                    add_into(&mut dm, &d2);
                }
                if let (Some(rf), Some(rc), Some(dr)) = (r, cr, &dtheta_raw) {
                    let d3 = ops::fc_backward(rf, p, rc, dr.clone(), &mut g, true).unwrap();
                    add_into(&mut dm, &d3);
                }
                dm
            }
            _ => unreachable!("decoder tape does not match the architecture"),
        };
        let dr_e = d_main_e.cols_range(0, l);

        // ---- splicing likelihood → decoder -----------------------------------------------------
        let spl = &batch.spl;
        let gl: Vec<T> = tp.g_logit.iter().map(|&v| v * inv_b).collect();
        let lin = self.spl_out_linear();
        let k_in = lin.n_in;
        let mut ds = Mat::zeros(b, k_in);
        {
            let w = p.get(lin.w);
            ds.data.par_chunks_mut(k_in).enumerate().for_each(|(i, row)| {
                for e in spl.cell_range(i) {
                    let j = spl.junction[e] as usize;
                    let ge = gl[e];
                    for (r, &ww) in row.iter_mut().zip(&w[j * k_in..(j + 1) * k_in]) {
                        *r += ge * ww;
                    }
                }
            });
        }
        self.spl_out_param_grads(spl, &tp.s_in, &gl, &mut g);
        if cfg.splicing_decoder_prior != 0.0 {
            let w = self.spl_out_weight();
            let lam = T::from_f64(2.0 * cfg.splicing_decoder_prior * self.prior_scale());
            if let Some(gw) = g.slot(w) {
                for (gv, &v) in gw.iter_mut().zip(p.get(w)) {
                    *gv += lam * v;
                }
            }
        }
        // splicing_decoder_effect_prior: d(λ Σ_j W_j C W_jᵀ / N)/dW = 2λ W C / N (C held fixed).
        if let Some(wc) = &tp.effect_wc {
            let w = self.spl_out_weight();
            let lam = T::from_f64(2.0 * cfg.splicing_decoder_effect_prior * self.prior_scale());
            if let Some(gw) = g.slot(w) {
                for (gv, &v) in gw.iter_mut().zip(&wc.data) {
                    *gv += lam * v;
                }
            }
        }
        // concentration: loss terms and prior
        if let Some(gphi) = g.slot(a.log_phi) {
            let lp = p.get(a.log_phi);
            if matches!(cfg.splicing_loss_type, SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial) {
                let conc = ConcIndex::for_loss(cfg.splicing_loss_type, cfg.dm_concentration);
                let sg: Vec<T> = lp.iter().map(|&v| softplus_grad(v)).collect();
                for (&c, &jj) in tp.g_conc.iter().zip(&spl.junction) {
                    let t = conc.target(jj as usize, &self.junc2atse);
                    gphi[t] += c * inv_b * sg[t];
                }
                let lam = T::from_f64(2.0 * cfg.lambda_prior) / bt;
                for (gv, &v) in gphi.iter_mut().zip(lp) {
                    *gv += lam * v;
                }
            }
        }
        let dr_s = match (&a.z_dec_spl, &tp.spl_dec) {
            (SplDecP::Vanilla { fc, .. }, SplDecTape::Vanilla { fc: c }) => {
                ops::fc_backward(fc, p, c, ds, &mut g, true).unwrap().cols_range(0, l)
            }
            (SplDecP::Linear { .. }, SplDecTape::Linear) => ds.cols_range(0, l),
            _ => unreachable!(),
        };

        // ---- latent ----------------------------------------------------------------------------
        let (into_e, into_s) = self.cross_gates(opts.cross_gate);
        let (ge, gs) = (T::from_f64(into_e), T::from_f64(into_s));
        let mut dlat = Mat::zeros(b, l);
        if cfg.modality_weights == ModalityWeights::Concatenate {
            for i in 0..b {
                for t in 0..d {
                    let (k1, k2) = (i * l + t, i * l + d + t);
                    dlat.data[k1] = dr_e.data[k1] + gs * dr_s.data[k1];
                    dlat.data[k2] = ge * dr_e.data[k2] + dr_s.data[k2];
                }
            }
        } else {
            dlat = dr_e;
            add_into(&mut dlat, &dr_s);
        }
        let mut dqm = Mat::zeros(b, l);
        let mut dqv = Mat::zeros(b, l);
        let mut dz = Mat::zeros(b, l);
        if opts.use_z_mean {
            add_into(&mut dqm, &dlat);
        } else {
            add_into(&mut dz, &dlat);
        }
        if let Some(x) = extra_dz {
            add_into(&mut dz, x);
        }
        let ln = cfg.latent_distribution == LatentDistribution::Ln;
        sample_bwd(&inf.qz_v, &tp.enc.eps_j, &inf.z, ln, &dz, &mut dqm, &mut dqv);
        let kls: Vec<T> = vec![kl_w * inv_b; b];
        latent::kl_bwd(&inf.qz_m, &inf.qz_v, &kls, &mut dqm, &mut dqv);

        let (me, ve, ms, vs) = (&inf.qzm_expr, &inf.qzv_expr, &inf.qzm_spl, &inf.qzv_spl);
        let mut pg = match &tp.enc.mix {
            MixTape::Concat => {
                let mut pg = PostGrads::zeros(b, d);
                pg.mu_e = dqm.cols_range(0, d);
                pg.mu_s = dqm.cols_range(d, 2 * d);
                pg.v_e = dqv.cols_range(0, d);
                pg.v_s = dqv.cols_range(d, 2 * d);
                pg
            }
            MixTape::Routed(m) => {
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
                pg
            }
            MixTape::PerDim(c) => {
                let msk = cfg.mask_cells_without_splicing.then_some(inf.mask_spl.as_slice());
                let (pg, draw) = latent::mix_perdim_bwd(c, me, ve, ms, vs, msk, &dqm, &dqv);
                if let Some(gw) = g.slot(a.dim_weights.unwrap()) {
                    gw.iter_mut().zip(&draw).for_each(|(x, &v)| *x += v);
                }
                pg
            }
            MixTape::Softmax { c, raw_rows } => {
                let (pg, draw) = latent::mix_softmax_bwd(c, me, ve, ms, vs, &inf.mask_expr, &inf.mask_spl, &dqm, &dqv);
                let n_obs = self.dims.n_obs;
                if let Some(gw) = g.slot(a.mod_weights) {
                    match cfg.modality_weights {
                        ModalityWeights::Universal => {
                            for i in 0..b {
                                gw[0] += draw[2 * i];
                                gw[1] += draw[2 * i + 1];
                            }
                        }
                        ModalityWeights::Cell => {
                            for i in 0..b {
                                let r = raw_rows[i];
                                if r == u32::MAX {
                                    let n = T::from_f64(n_obs as f64);
                                    for rr in 0..n_obs {
                                        gw[2 * rr] += draw[2 * i] / n;
                                        gw[2 * rr + 1] += draw[2 * i + 1] / n;
                                    }
                                } else {
                                    gw[2 * r as usize] += draw[2 * i];
                                    gw[2 * r as usize + 1] += draw[2 * i + 1];
                                }
                            }
                        }
                        _ => {}
                    }
                }
                pg
            }
        };
        // penalty
        if cfg.modality_weights != ModalityWeights::Concatenate {
            let paired: Vec<bool> = inf.mask_expr.iter().zip(&inf.mask_spl).map(|(&x, &y)| x && y).collect();
            match cfg.modality_penalty {
                ModalityPenalty::None => {}
                ModalityPenalty::Jeffreys => latent::jeffreys_bwd(me, ve, ms, vs, &paired, T::ONE, &mut pg),
                ModalityPenalty::Mmd => latent::mmd_mean_dist_bwd(me, ms, &paired, T::ONE, &mut pg),
                ModalityPenalty::JeffreysExact => latent::jeffreys_exact_bwd(me, ve, ms, vs, &paired, kl_w, &mut pg),
                ModalityPenalty::MmdRbf => {
                    let mut dze = Mat::zeros(b, d);
                    let mut dzs = Mat::zeros(b, d);
                    latent::mmd_rbf_bwd(&inf.z_expr, &inf.z_spl, &paired, &tp.rbf, T::ONE, &mut dze, &mut dzs);
                    sample_bwd(ve, &tp.enc.eps_e, &inf.z_expr, ln, &dze, &mut pg.mu_e, &mut pg.v_e);
                    sample_bwd(vs, &tp.enc.eps_s, &inf.z_spl, ln, &dzs, &mut pg.mu_s, &mut pg.v_s);
                }
            }
        }

        // ---- encoders --------------------------------------------------------------------------
        let mut dlv_e = pg.v_e.clone();
        dlv_e.data.iter_mut().zip(&ve.data).for_each(|(x, &v)| *x *= v);
        let mut dh_e = ops::linear_dense_bwd(&a.z_enc_expr.mean, p, &tp.enc.h_e, &pg.mu_e, &mut g, true).unwrap();
        add_into(&mut dh_e, &ops::linear_dense_bwd(&a.z_enc_expr.var, p, &tp.enc.h_e, &dlv_e, &mut g, true).unwrap());
        ops::fc_backward(&a.z_enc_expr.fc, p, &tp.enc.enc_e, dh_e, &mut g, false);

        if let Some((fc, h_l, pre)) = &tp.enc.lib {
            let dpre = Mat::from_vec(
                b,
                1,
                (0..b).map(|i| dlib[i] * ops::act_grad(Act::LeakyRelu, pre[i])).collect(),
            );
            let dh = ops::linear_dense_bwd(&a.l_enc_expr.out, p, h_l, &dpre, &mut g, true).unwrap();
            ops::fc_backward(&a.l_enc_expr.fc, p, fc, dh, &mut g, false);
        }

        match (&a.z_enc_spl, &tp.enc.spl_enc) {
            (SplEncP::Vanilla(enc), SplEncTape::Vanilla { fc, h, lv }) => {
                let mut dlv = pg.v_s.clone();
                dlv.data.iter_mut().zip(&lv.data).for_each(|(x, &v)| *x *= v.exp());
                let mut dh = ops::linear_dense_bwd(&enc.mean, p, h, &pg.mu_s, &mut g, true).unwrap();
                add_into(&mut dh, &ops::linear_dense_bwd(&enc.var, p, h, &dlv, &mut g, true).unwrap());
                ops::fc_backward(&enc.fc, p, fc, dh, &mut g, false);
            }
            (SplEncP::Partial(pe), SplEncTape::Partial { pc, mlp, raw_v }) => {
                let mut dout = Mat::zeros(b, 2 * d);
                for i in 0..b {
                    for t in 0..d {
                        dout.data[i * 2 * d + t] = pg.mu_s.data[i * d + t];
                        dout.data[i * 2 * d + d + t] = pg.v_s.data[i * d + t] * softplus_grad(raw_v.data[i * d + t]);
                    }
                }
                let dpool = ops::fc_backward(&pe.mlp, p, mlp, dout, &mut g, true).unwrap();
                partial::partial_backward(pe, p, spl, pc, &dpool, tp.enc.mode, &mut g);
            }
            _ => unreachable!(),
        }
        Ok(g)
    }

    /// Gradients of the splicing output Linear from the per-entry logit gradients. Each junction sums
    /// its entries in cell order. Blocks of junctions run in parallel, each walking the cells in order
    /// and taking its span of every cell by binary search (a cell's entries are in ascending junction
    /// order: `Batch::check`).
    fn spl_out_param_grads<T: Real>(&self, spl: &SplBatch, s: &Mat<T>, gl: &[T], g: &mut Grads<T>) {
        const JUNCS: usize = 64;
        let lin = self.spl_out_linear();
        let (k, j) = (lin.n_in, spl.n_junctions);
        // The bias sums start from the slot's values and go back at the end.
        let mut gb: Vec<T> = lin.b.and_then(|b| g.slot(b).map(|v| v.to_vec())).unwrap_or_else(|| vec![T::ZERO; j]);
        match g.slot(lin.w).filter(|_| k > 0) {
            Some(gw) => {
                let blocks = gw.par_chunks_mut(JUNCS * k).zip(gb.par_chunks_mut(JUNCS)).enumerate();
                blocks.for_each(|(bi, (blk, gbb))| {
                    let (j0, j1) = (bi * JUNCS, bi * JUNCS + gbb.len());
                    for c in 0..spl.n_cells() {
                        let r = spl.cell_range(c);
                        let js = &spl.junction[r.clone()];
                        let srow = s.row(c);
                        for q in ops::sorted_span(js, j0, j1) {
                            let (jl, ge) = (js[q] as usize - j0, gl[r.start + q]);
                            gbb[jl] += ge;
                            for (a, &sv) in blk[jl * k..(jl + 1) * k].iter_mut().zip(srow) {
                                *a += ge * sv;
                            }
                        }
                    }
                });
            }
            None => {
                for (&jj, &ge) in spl.junction.iter().zip(gl) {
                    gb[jj as usize] += ge;
                }
            }
        }
        if let Some(slot) = lin.b.and_then(|b| g.slot(b)) {
            slot.copy_from_slice(&gb);
        }
    }

    /// Forward + backward; applies the BatchNorm running-stat updates to `p`.
    pub fn step<T: Real>(
        &self,
        p: &mut Params<T>,
        batch: &Batch,
        opts: &StepOptions,
        extra_dz: Option<&Mat<T>>,
    ) -> Result<(StepOutput<T>, Grads<T>)> {
        let fwd = self.forward(p, batch, opts)?;
        let g = self.backward(p, batch, &fwd, extra_dz)?;
        self.apply_buffer_updates(p, &fwd.out.buffer_updates);
        Ok((fwd.out, g))
    }

    /// Inference only (eval mode, no dropout, no decoders): per-modality means and the joint posterior,
    /// for embeddings. Noise is zero, so the `z*` fields equal the (transformed) means.
    pub fn inference_only<T: Real>(&self, p: &Params<T>, batch: &Batch) -> Result<Inference<T>> {
        self.check_batch(batch)?;
        let opts = StepOptions {
            training: false,
            use_z_mean: true,
            noise: Noise::Zero,
            kl_weight: 1.0,
            cross_gate: 1.0,
            routing: None,
            seed: 0,
        };
        let mode = Mode { training: false, seed: 0 };
        let mut upd = BufUpdates::new();
        Ok(self.encode(p, batch, &opts, mode, &mut upd)?.0)
    }

    /// Dense decode for analyses (eval mode): splicing probabilities p (B × J, within-ATSE normalised for
    /// DM) and expression px_scale / px_rate / px_dropout / θ from the latent `lat` (B × L) and the
    /// covariates and library of `batch` (override `batch.batch` for transform_batch).
    pub fn decode_dense<T: Real>(&self, p: &Params<T>, lat: &Mat<T>, batch: &Batch, library: &[T], cross_gate: f64) -> Result<DenseDecode<T>> {
        let mode = Mode { training: false, seed: 0 };
        let mut upd = BufUpdates::new();
        let cov = self.cov(batch);
        let (r_e, r_s) = self.decoder_latents(lat, cross_gate);
        let lib_scale: Vec<T> = library.iter().map(|&v| v.exp()).collect();
        let (px_scale, px_rate, px_dropout, theta, _) =
            self.expr_decode(p, &r_e, batch, &cov, library, &lib_scale, mode, &mut upd)?;
        let (s_in, _) = self.spl_head_input(p, &r_s, batch, &cov, mode, &mut upd)?;
        let lin = self.spl_out_linear();
        let logits = ops::linear_dense_fwd(lin, p, &s_in);
        let mut pm = map(&logits, sigmoid);
        if self.cfg.splicing_loss_type == SplicingLoss::DirichletMultinomial {
            let j = self.dims.n_junctions;
            pm.data.par_chunks_mut(j).enumerate().for_each(|(i, row)| {
                let (mut raw, mut probs) = (Vec::new(), Vec::new());
                for a in 0..self.dims.n_atse {
                    let js = &self.atse_junc[self.atse_ptr[a]..self.atse_ptr[a + 1]];
                    raw.clear();
                    raw.extend(js.iter().map(|&jj| logits.at(i, jj as usize)));
                    dm_probs(&raw, self.cfg.dm_lse_eps(), &mut probs);
                    for (q, &jj) in js.iter().enumerate() {
                        row[jj as usize] = probs[q];
                    }
                }
            });
        }
        Ok(DenseDecode { p: pm, px_scale, px_rate, px_dropout, theta })
    }

    /// φ = softplus(log_phi) (A, 1 or J values).
    pub fn concentration<T: Real>(&self, p: &Params<T>) -> Vec<T> {
        p.get(self.arch.log_phi).iter().map(|&v| softplus(v)).collect()
    }

    /// DM posterior-mean PSI (§7.5) from dense p: clamp((c p + k)/(c + n + 1e-8), 1e-8, 1 − 1e-8),
    /// with the cell's own counts (0 for unobserved junctions).
    pub fn dm_posterior_mean<T: Real>(&self, p: &Params<T>, pdense: &Mat<T>, spl: &SplBatch) -> Mat<T> {
        let phi = self.concentration(p);
        let j = self.dims.n_junctions;
        let conc = |jj: usize| -> T {
            match self.cfg.dm_concentration {
                DmConcentration::Atse if phi.len() == self.dims.n_atse && !self.junc2atse.is_empty() => {
                    phi[self.junc2atse[jj] as usize]
                }
                _ if phi.len() == j => phi[jj],
                _ => phi[0],
            }
        };
        let mut out = Mat::zeros(pdense.rows, j);
        let (lo, hi) = (T::from_f64(1e-8), T::ONE - T::from_f64(1e-8));
        for i in 0..pdense.rows {
            let mut k = vec![T::ZERO; j];
            let mut n = vec![T::ZERO; j];
            for e in spl.cell_range(i) {
                let jj = spl.junction[e] as usize;
                k[jj] = T::from_f32(spl.k[e]);
                n[jj] = T::from_f32(spl.n[e]);
            }
            for jj in 0..j {
                let c = conc(jj);
                let v = (c * pdense.at(i, jj) + k[jj]) / (c + n[jj] + T::from_f64(1e-8));
                out.data[i * j + jj] = v.max(lo).min(hi);
            }
        }
        out
    }
}

/// Dense decoder outputs for analyses.
#[derive(Clone, Debug)]
pub struct DenseDecode<T> {
    pub p: Mat<T>,
    pub px_scale: Mat<T>,
    pub px_rate: Mat<T>,
    pub px_dropout: Mat<T>,
    pub theta: Mat<T>,
}

/// Expression encoder input values (`expression_input`): raw counts, log1p, or log1p of the counts
/// scaled to 10⁴ per cell. Data only (no gradient flows into it).
pub(crate) fn expression_input_values<'a>(kind: ExpressionInput, indptr: &[usize], values: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
    match kind {
        ExpressionInput::Raw => std::borrow::Cow::Borrowed(values),
        ExpressionInput::Log1p => std::borrow::Cow::Owned(values.iter().map(|&v| v.ln_1p()).collect()),
        ExpressionInput::Log1pNormalized => {
            let mut out = Vec::with_capacity(values.len());
            for r in 0..indptr.len() - 1 {
                let row = &values[indptr[r]..indptr[r + 1]];
                let tot: f64 = row.iter().map(|&v| v as f64).sum();
                let scale = if tot > 0.0 { 1e4 / tot } else { 0.0 };
                out.extend(row.iter().map(|&v| ((v as f64) * scale).ln_1p() as f32));
            }
            std::borrow::Cow::Owned(out)
        }
    }
}

/// The sparse encoder input [values; cont (if n_cont > 0)] from CSR parts.
pub fn sparse_input<T: Real>(
    indptr: &[usize],
    indices: &[u32],
    values: &[f32],
    n_cols: usize,
    batch: &Batch,
    n_cont: usize,
) -> Sparse<T> {
    let rows = indptr.len() - 1;
    if n_cont == 0 {
        return Sparse {
            rows,
            cols: n_cols,
            indptr: indptr.to_vec(),
            indices: indices.to_vec(),
            values: values.iter().map(|&v| T::from_f32(v)).collect(),
        };
    }
    let mut s = Sparse { rows, cols: n_cols + n_cont, indptr: vec![0], ..Default::default() };
    for r in 0..rows {
        for e in indptr[r]..indptr[r + 1] {
            s.indices.push(indices[e]);
            s.values.push(T::from_f32(values[e]));
        }
        for c in 0..n_cont {
            s.indices.push((n_cols + c) as u32);
            s.values.push(T::from_f32(batch.cont[r * batch.n_cont + c]));
        }
        s.indptr.push(s.indices.len());
    }
    s
}

fn map<T: Real>(m: &Mat<T>, f: impl Fn(T) -> T + Sync) -> Mat<T> {
    Mat { rows: m.rows, cols: m.cols, data: m.data.iter().map(|&v| f(v)).collect() }
}

fn add_into<T: Real>(a: &mut Mat<T>, b: &Mat<T>) {
    assert_eq!((a.rows, a.cols), (b.rows, b.cols));
    a.data.iter_mut().zip(&b.data).for_each(|(x, &y)| *x += y);
}

pub(crate) fn softmax_rows<T: Real>(m: &Mat<T>) -> Mat<T> {
    let mut out = m.clone();
    if m.cols == 0 {
        return out;
    }
    out.data.par_chunks_mut(m.cols).for_each(|row| {
        let mx = row.iter().copied().fold(row[0], |a, b| a.max(b));
        // The exps in a pass of their own so that they vectorise; the sum then in order, in f64.
        for v in row.iter_mut() {
            *v = (*v - mx).exp_v();
        }
        let s = T::from_f64(row.iter().map(|v| v.to_f64()).sum::<f64>());
        row.iter_mut().for_each(|v| *v /= s);
    });
    out
}

/// In place: d ← y ⊙ (d − Σ y d) per row (softmax backward, y the softmax output).
pub(crate) fn softmax_rows_bwd<T: Real>(y: &Mat<T>, d: &mut Mat<T>) {
    if y.cols == 0 {
        return;
    }
    d.data.par_chunks_mut(y.cols).enumerate().for_each(|(i, row)| {
        let yr = y.row(i);
        let dot: T = row.iter().zip(yr).map(|(&a, &b)| a * b).sum();
        for (v, &yy) in row.iter_mut().zip(yr) {
            *v = yy * (*v - dot);
        }
    });
}

/// T(m + √v ⊙ ε), T = softmax over the row for "ln".
pub(crate) fn sample<T: Real>(m: &Mat<T>, v: &Mat<T>, eps: &Mat<T>, ln: bool) -> Mat<T> {
    let mut z = m.clone();
    z.data.iter_mut().zip(&v.data).zip(&eps.data).for_each(|((zz, &vv), &e)| *zz += vv.sqrt() * e);
    if ln {
        softmax_rows(&z)
    } else {
        z
    }
}

/// Backward of `sample`: adds into dm, dv given dz (z is the forward output).
pub(crate) fn sample_bwd<T: Real>(v: &Mat<T>, eps: &Mat<T>, z: &Mat<T>, ln: bool, dz: &Mat<T>, dm: &mut Mat<T>, dv: &mut Mat<T>) {
    let mut dpre = dz.clone();
    if ln {
        softmax_rows_bwd(z, &mut dpre);
    }
    let half = T::from_f64(0.5);
    for k in 0..dpre.data.len() {
        let g = dpre.data[k];
        if g == T::ZERO {
            continue;
        }
        dm.data[k] += g;
        let sv = v.data[k].sqrt();
        if sv > T::ZERO {
            dv.data[k] += g * eps.data[k] * half / sv;
        }
    }
}
