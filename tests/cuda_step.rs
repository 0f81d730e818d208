//! The CUDA training step (splicevi::cuda::step::DeviceModel) against the CPU model
//! (SpliceVae::forward / backward, f32) on small synthetic minibatches: every per-cell loss term, the
//! penalty, the concentration prior, the loss and the gradient of every trainable parameter, for the
//! `default` and `paper` configurations and variants (routing, evaluation mode, z-mean decoding, an extra
//! dz, the vanilla splicing encoder, NB / Poisson, beta-binomial, MMD, JeffreysExact, several batches,
//! extra categorical covariates, the §12 corrections of §14.3). `SPLICEVI_STEP_CASES` picks
//! configurations of `device_step_matches_cpu_model` by name. On every device (`emu::devices`: cuda:0 where usable, always the host
//! emulation of kernels/*.cu).
//!
//! Tolerance (f32 on both sides, different summation orders, device expf/logf): |device − CPU| ≤
//! 2e-3·|CPU| + 2e-4·(largest |CPU| value of that tensor). Unsupported options are a clear error.

#[path = "common/emu.rs"]
mod emu;
#[path = "common/synth.rs"]
mod synth;
use synth::JUNC2ATSE;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splicevi::cuda::step::{unsupported, DeviceModel, SplicingDecode};
use splicevi::cuda::CudaDevice;
use splicevi::model::*;

fn dims(n_batch: usize, n_cats: Vec<usize>) -> Dims {
    Dims { n_genes: 37, n_junctions: JUNC2ATSE.len(), n_atse: 5, n_batch, n_labels: 3, n_obs: 40, n_cats_per_cov: n_cats, n_cont: 0 }
}

/// `b` cells (tests/common/synth.rs): cell 0 without expression, cell 1 without observed junctions, 40%
/// of genes expressed.
fn synth_batch(d: &Dims, b: usize, seed: u64) -> Batch {
    synth::synth_batch(d, b, seed, 0.4)
}

/// Initial parameters moved off their defaults (LayerNorm gains ≠ 1, asymmetric weights).
fn random_params(model: &SpliceVae, seed: u64) -> Params<f32> {
    let mut p = model.init_params::<f32>(seed);
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0xABCD);
    let layout = p.layout.clone();
    for (i, e) in layout.entries.iter().enumerate() {
        if e.kind.trainable() {
            let v = p.get_mut(i);
            if e.name == "log_phi_j" && model.cfg.concentration_init == ConcentrationInit::Phi100 {
                // φ kept near 100 (`concentration_init = phi_100`): the likelihoods at large α
                v.iter_mut().for_each(|x| *x *= 1.0 + r.gen_range(-0.2..0.2));
            } else if e.name == "log_phi_j" {
                v.iter_mut().for_each(|x| *x = 1.0 + r.gen_range(-0.5..0.5));
            } else {
                v.iter_mut().for_each(|x| *x += r.gen_range(-0.2..0.2));
            }
        }
    }
    p
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    close_floor(what, got, want, 0.0)
}

/// [`close`] with an absolute floor `floor` on the tolerance.
fn close_floor(what: &str, got: &[f32], want: &[f32], floor: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, CPU has {}", got.len(), want.len());
    let scale = want.iter().fold(1e-12f64, |a, &v| a.max((v as f64).abs()));
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 2e-3 * (w as f64).abs() + 2e-4 * scale + floor;
        assert!(g.is_finite() && ((g - w) as f64).abs() <= tol, "{what}[{k}] = {g:e}, CPU {w:e} (tolerance {tol:e})");
    }
}

fn close_scalar(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{what}: device {got}, CPU {want}");
}

struct Case {
    name: &'static str,
    cfg: ModelConfig,
    dims: Dims,
    opts: StepOptions,
    extra_dz: bool,
    /// The minibatch without cell indices (unseen cells: `cell` weights read the mean row).
    no_cell_idx: bool,
}

fn small(cfg: ModelConfig) -> ModelConfig {
    ModelConfig { n_hidden: Some(8), n_latent: Some(3), code_dim: 4, h_hidden_dim: 6, encoder_hidden_dim: 5, ..cfg }
}

fn opts() -> StepOptions {
    StepOptions { kl_weight: 0.7, cross_gate: 1.0, training: true, use_z_mean: false, routing: None, seed: 11, noise: Noise::Seeded }
}

fn cases() -> Vec<Case> {
    vec![
        Case { name: "default", cfg: small(ModelConfig { dropout_rate: 0.2, ..ModelConfig::default() }), dims: dims(2, vec![]), opts: opts(), extra_dz: false, no_cell_idx: false },
        Case { name: "paper", cfg: small(ModelConfig { dropout_rate: 0.1, ..ModelConfig::paper() }), dims: dims(2, vec![]), opts: opts(), extra_dz: false, no_cell_idx: false },
        Case {
            name: "default, routed to splicing, extra dz, 3 batches + a categorical covariate",
            cfg: small(ModelConfig::default()),
            dims: dims(3, vec![4]),
            opts: StepOptions { routing: Some(Modality::Splicing), ..opts() },
            extra_dz: true,
            no_cell_idx: false,
        },
        Case {
            name: "paper, evaluation mode, decoders on qz_m, routed to expression",
            cfg: small(ModelConfig::paper()),
            dims: dims(2, vec![]),
            opts: StepOptions { training: false, use_z_mean: true, routing: Some(Modality::Expression), ..opts() },
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "vanilla splicing encoder, NB, beta-binomial, MMD, log1p input, one batch",
            cfg: small(ModelConfig {
                splicing_encoder_architecture: SplicingEncoderArch::Vanilla,
                gene_likelihood: GeneLikelihood::Nb,
                splicing_loss_type: SplicingLoss::BetaBinomial,
                modality_penalty: ModalityPenalty::Mmd,
                expression_input: ExpressionInput::Log1p,
                dropout_rate: 0.15,
                ..ModelConfig::paper()
            }),
            dims: dims(1, vec![]),
            opts: opts(),
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "Poisson, binomial, JeffreysExact, masked splicing, scalar DM centre + fixed pool",
            cfg: small(ModelConfig {
                gene_likelihood: GeneLikelihood::Poisson,
                splicing_loss_type: SplicingLoss::Binomial,
                modality_penalty: ModalityPenalty::JeffreysExact,
                mask_cells_without_splicing: true,
                partial_center_psi: true,
                pool_mode: PoolMode::Fixed,
                ..ModelConfig::paper()
            }),
            dims: dims(2, vec![]),
            opts: opts(),
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "BatchNorm in encoders and decoders (training: batch statistics, running-statistics update)",
            cfg: small(ModelConfig { use_batch_norm: NormPlacement::Both, use_layer_norm: NormPlacement::None, dropout_rate: 0.1, ..ModelConfig::paper() }),
            dims: dims(3, vec![2]),
            opts: opts(),
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "BatchNorm in the encoders, vanilla splicing encoder, evaluation mode (running statistics)",
            cfg: small(ModelConfig {
                use_batch_norm: NormPlacement::Encoder,
                splicing_encoder_architecture: SplicingEncoderArch::Vanilla,
                ..ModelConfig::default()
            }),
            dims: dims(2, vec![]),
            opts: StepOptions { training: false, ..opts() },
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "universal modality weights, log-normal latent, MMD",
            cfg: small(ModelConfig {
                modality_weights: ModalityWeights::Universal,
                latent_distribution: LatentDistribution::Ln,
                modality_penalty: ModalityPenalty::Mmd,
                ..ModelConfig::default()
            }),
            dims: dims(2, vec![]),
            opts: opts(),
            extra_dz: true,
            no_cell_idx: false,
        },
        Case {
            name: "per-cell modality weights (cells' rows of the table)",
            cfg: small(ModelConfig { modality_weights: ModalityWeights::Cell, ..ModelConfig::paper() }),
            dims: dims(2, vec![]),
            opts: opts(),
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "per-cell modality weights, unseen cells (the mean row), log-normal latent",
            cfg: small(ModelConfig { modality_weights: ModalityWeights::Cell, latent_distribution: LatentDistribution::Ln, ..ModelConfig::default() }),
            dims: dims(2, vec![]),
            opts: StepOptions { use_z_mean: true, ..opts() },
            extra_dz: false,
            no_cell_idx: true,
        },
        Case {
            name: "robust: concatenated latents, cross gate 0.4, extra dz",
            cfg: small(ModelConfig { dropout_rate: 0.1, ..ModelConfig::robust() }),
            dims: dims(2, vec![]),
            opts: StepOptions { cross_gate: 0.4, ..opts() },
            extra_dz: true,
            no_cell_idx: false,
        },
        Case {
            name: "library encoder (use_size_factor_key = false), gene-batch dispersion, NB",
            cfg: small(ModelConfig { use_size_factor_key: false, dispersion: Dispersion::GeneBatch, gene_likelihood: GeneLikelihood::Nb, dropout_rate: 0.1, ..ModelConfig::paper() }),
            dims: dims(3, vec![]),
            opts: opts(),
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "gene-label dispersion, linear expression decoder, library encoder with BatchNorm",
            cfg: small(ModelConfig { dispersion: Dispersion::GeneLabel, use_size_factor_key: false, use_batch_norm: NormPlacement::Encoder, ..ModelConfig::default() }),
            dims: dims(2, vec![]),
            opts: opts(),
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "gene-cell dispersion, vanilla expression decoder (dispersion head)",
            cfg: small(ModelConfig { dispersion: Dispersion::GeneCell, ..ModelConfig::paper() }),
            dims: dims(2, vec![3]),
            opts: opts(),
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "gene-cell dispersion, linear expression decoder (dispersion layers), ZINB",
            cfg: small(ModelConfig { dispersion: Dispersion::GeneCell, ..ModelConfig::default() }),
            dims: dims(2, vec![]),
            opts: StepOptions { use_z_mean: true, ..opts() },
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "encode_covariates, 2 continuous covariates, 3 batches + a categorical, deeply injected, BatchNorm",
            cfg: small(ModelConfig { encode_covariates: true, deeply_inject_covariates: true, use_batch_norm: NormPlacement::Both, ..ModelConfig::paper() }),
            dims: Dims { n_cont: 2, ..dims(3, vec![2]) },
            opts: opts(),
            extra_dz: true,
            no_cell_idx: false,
        },
        Case {
            name: "continuous covariates in the decoders only, linear decoders, gene-cell dispersion, log1p_normalized input, both splicing decoder priors",
            cfg: small(ModelConfig {
                dispersion: Dispersion::GeneCell,
                expression_input: ExpressionInput::Log1pNormalized,
                splicing_decoder_prior: 0.3,
                splicing_decoder_effect_prior: 2.0,
                ..ModelConfig::default()
            }),
            dims: Dims { n_cont: 2, ..dims(2, vec![]) },
            opts: opts(),
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "encode_covariates, vanilla splicing encoder, library encoder, concatenated latents, effect prior",
            cfg: small(ModelConfig {
                splicing_decoder_effect_prior: 5.0,
                encode_covariates: true,
                splicing_encoder_architecture: SplicingEncoderArch::Vanilla,
                use_size_factor_key: false,
                modality_weights: ModalityWeights::Concatenate,
                ..ModelConfig::paper()
            }),
            dims: Dims { n_cont: 1, ..dims(2, vec![3]) },
            opts: StepOptions { cross_gate: 0.5, ..opts() },
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "MMD-RBF penalty (on the host), paper, extra dz",
            cfg: small(ModelConfig { modality_penalty: ModalityPenalty::MmdRbf, ..ModelConfig::paper() }),
            dims: dims(2, vec![]),
            opts: opts(),
            extra_dz: true,
            no_cell_idx: false,
        },
        Case {
            name: "MMD-RBF penalty, log-normal latent, universal weights, routed to splicing",
            cfg: small(ModelConfig { modality_penalty: ModalityPenalty::MmdRbf, latent_distribution: LatentDistribution::Ln, modality_weights: ModalityWeights::Universal, ..ModelConfig::default() }),
            dims: dims(2, vec![]),
            opts: StepOptions { routing: Some(Modality::Splicing), ..opts() },
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "§12 corrections: independent mixing variance (universal weights), softmax scale of the vanilla expression decoder, φ near 100",
            cfg: small(ModelConfig {
                mixing_variance: MixingVariance::Independent,
                modality_weights: ModalityWeights::Universal,
                expression_architecture: ExpressionArch::Vanilla,
                expression_scale_softmax: true,
                concentration_init: ConcentrationInit::Phi100,
                dropout_rate: 0.1,
                ..ModelConfig::default()
            }),
            dims: dims(2, vec![]),
            opts: opts(),
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "§12 corrections: linear expression decoder without LayerNorm, gene-cell dispersion, independent mixing variance (per-cell weights)",
            cfg: small(ModelConfig {
                linear_expression_layer_norm: false,
                dispersion: Dispersion::GeneCell,
                mixing_variance: MixingVariance::Independent,
                modality_weights: ModalityWeights::Cell,
                ..ModelConfig::default()
            }),
            dims: dims(3, vec![2]),
            opts: opts(),
            extra_dz: true,
            no_cell_idx: false,
        },
        Case {
            name: "robust, evaluation mode on qz_m, cross gate 1",
            cfg: small(ModelConfig::robust()),
            dims: dims(3, vec![]),
            opts: StepOptions { training: false, use_z_mean: true, ..opts() },
            extra_dz: false,
            no_cell_idx: false,
        },
        Case {
            name: "robust with cross_decoding splicing, vanilla splicing decoder, cross gate 0.7",
            cfg: small(ModelConfig { dropout_rate: 0.1, cross_decoding: CrossDecoding::Splicing, splicing_decoder_architecture: SplicingDecoderArch::Vanilla, ..ModelConfig::robust() }),
            dims: dims(2, vec![]),
            opts: StepOptions { cross_gate: 0.7, ..opts() },
            extra_dz: false,
            no_cell_idx: false,
        },
    ]
}

fn step_on(dev: &CudaDevice, case: &Case, seed: u64, decode: SplicingDecode) {
    let name = &format!("{} ({decode:?} splicing decode)", case.name);
    let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), JUNC2ATSE.to_vec()).unwrap();
    let mut p = random_params(&model, seed);
    // Running statistics off their initial (0, 1), so that evaluation mode tests their use.
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED);
    for (i, e) in model.layout.entries.clone().iter().enumerate() {
        if e.name.ends_with("running_mean") || e.name.ends_with("running_var") {
            p.get_mut(i).iter_mut().for_each(|x| *x += r.gen_range(0.0..0.5));
        }
    }
    let mut batch = synth_batch(&case.dims, 9, seed + 1);
    if case.no_cell_idx {
        batch.cell_idx = None;
    }
    let l = model.arch.l;
    let extra: Option<Vec<f32>> = case.extra_dz.then(|| {
        let mut r = ChaCha8Rng::seed_from_u64(seed + 2);
        (0..batch.n_cells() * l).map(|_| r.gen_range(-0.3..0.3)).collect()
    });
    let fw = model.forward(&p, &batch, &case.opts).unwrap();
    let extra_mat = extra.as_ref().map(|v| Mat::from_vec(batch.n_cells(), l, v.clone()));
    let want = model.backward(&p, &batch, &fw, extra_mat.as_ref()).unwrap();
    let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
    // Unwritten elements of step buffers would be NaN and fail the comparisons.
    dm.poison = true;
    dm.splicing_decode = decode;
    // (the profile names the kernels that ran: the path taken)
    dev.set_profiling(true);
    let mut seen_z = None;
    let out = dm
        .forward_backward(
            &batch,
            &case.opts,
            &mut |z| {
                seen_z = Some(z.to_vec());
                Ok(extra.clone())
            },
            true,
        )
        .unwrap();
    assert_eq!(seen_z.as_ref(), Some(&out.z), "{name}: the fool callback sees the sampled z");
    let ran: Vec<String> = dev.take_profile().unwrap().into_iter().map(|k| k.name).collect();
    dev.set_profiling(false);
    let dense = decode == SplicingDecode::Dense;
    assert_eq!(ran.iter().any(|n| n == "glue_scatter"), dense, "{name}: the dense decode's scatter ran or not: {ran:?}");
    assert_eq!(ran.iter().any(|n| n == "glue_gather_rows_part"), !dense, "{name}: the sparse decode's chunked gather ran or not: {ran:?}");
    // A forward-only pass gives the same loss terms and leaves the gradients alone.
    let g_before = dm.download_grads().unwrap().data;
    let fo = dm.forward_backward(&batch, &case.opts, &mut |_| panic!("no backward, no callback"), false).unwrap();
    assert_eq!((fo.loss, &fo.rl_expr, &fo.kl), (out.loss, &out.rl_expr, &out.kl), "{name}: forward-only pass differs");
    assert!(dm.download_grads().unwrap().data == g_before, "{name}: the forward-only pass touched the gradients");
    // The step again: bit-identical gradients (no float atomics anywhere), and in steady state the
    // step arena does not grow (no device allocation inside a step).
    let bytes = dm.arena_bytes();
    let again = dm.forward_backward(&batch, &case.opts, &mut |_| Ok(extra.clone()), true).unwrap();
    assert_eq!(again.loss.to_bits(), out.loss.to_bits(), "{name}: the loss of a repeated step differs");
    assert!(dm.download_grads().unwrap().data == g_before, "{name}: a repeated step gave other gradients");
    assert_eq!(dm.arena_bytes(), bytes, "{name}: the step arena grew in steady state");
    let mem = dm.memory_summary(None);
    assert!(mem.contains("step arena") && mem.contains("parameters"), "{mem}");
    close(&format!("{name}: rl_expr"), &out.rl_expr, &fw.out.rl_expr);
    close(&format!("{name}: rl_spl"), &out.rl_spl, &fw.out.rl_spl);
    close(&format!("{name}: kl"), &out.kl, &fw.out.kl);
    close_scalar(&format!("{name}: penalty"), out.penalty, fw.out.penalty as f64);
    close_scalar(&format!("{name}: concentration prior"), out.concentration_prior, fw.out.concentration_prior as f64);
    close_scalar(&format!("{name}: decoder prior"), out.decoder_prior, fw.out.decoder_prior as f64);
    close_scalar(&format!("{name}: decoder effect prior"), out.decoder_effect_prior, fw.out.decoder_effect_prior as f64);
    assert_eq!(out.decoder_prior != 0.0, case.cfg.splicing_decoder_prior != 0.0, "{name}: decoder prior {}", out.decoder_prior);
    assert_eq!(out.decoder_effect_prior != 0.0, case.cfg.splicing_decoder_effect_prior != 0.0, "{name}: effect prior {}", out.decoder_effect_prior);
    close_scalar(&format!("{name}: loss"), out.loss, fw.out.loss as f64);
    close(&format!("{name}: z"), &out.z, &fw.out.inference.z.data);
    let got = dm.download_grads().unwrap();
    let mut n_nonzero = 0;
    let g_scale = want.data.iter().fold(0f32, |a, &v| a.max(v.abs()));
    for (i, e) in model.layout.entries.iter().enumerate() {
        if let (Some(g), Some(w)) = (got.get(i), want.get(i)) {
            // A Linear bias followed by BatchNorm on batch statistics has a gradient of zero in exact
            // arithmetic: both sides hold rounding noise, compared in absolute terms.
            let before_bn = e.name.strip_suffix(".0.bias").is_some_and(|s| model.layout.find(&format!("{s}.1.running_mean")).is_some());
            if before_bn && case.opts.training {
                for (k, &v) in g.iter().enumerate() {
                    assert!(v.abs() <= 1e-5 * g_scale, "{name}: d {}[{k}] = {v:e}, zero in exact arithmetic", e.name);
                }
                continue;
            }
            // A gradient that cancels (the last h LayerNorm's bias under centred PSI: h(t) − h(0) in
            // evaluation mode, 1e-7 against a largest gradient of 7) is the round-off of f32 sums of
            // terms as large as the others: a floor of 1e-6 of the largest gradient, not of its own.
            close_floor(&format!("{name}: d {}", e.name), g, w, 1e-6 * g_scale as f64);
            n_nonzero += w.iter().filter(|v| v.abs() > 0.0).count();
        }
    }
    assert!(n_nonzero * 2 > model.layout.n_trainable, "{name}: only {n_nonzero} of {} CPU gradients non-zero", model.layout.n_trainable);
    // The parameters are as they went up, except BatchNorm's running statistics in training mode:
    // updated by each of the two steps with a backward (not by the forward-only pass), as the CPU
    // trainer applies `buffer_updates`.
    let mut after = p.clone();
    if case.opts.training {
        for _ in 0..2 {
            let f = model.forward(&after, &batch, &case.opts).unwrap();
            model.apply_buffer_updates(&mut after, &f.out.buffer_updates);
        }
    }
    let got_p = dm.download_params().unwrap();
    let mut n_updated = 0;
    for (i, e) in model.layout.entries.iter().enumerate() {
        let (g, w) = (got_p.get(i), after.get(i));
        if e.name.contains("running_") || e.name.ends_with("num_batches_tracked") {
            close(&format!("{name}: {} after two steps", e.name), g, w);
            n_updated += (w != p.get(i)) as usize;
        } else {
            assert!(g == w, "{name}: the device step changed {}", e.name);
        }
    }
    let has_bn = model.layout.entries.iter().any(|e| e.name.ends_with("running_mean"));
    assert_eq!(n_updated > 0, has_bn && case.opts.training, "{name}: {n_updated} running statistics updated");
}

/// Host waits per forward that the partial encoder adds: 1 with the grouped kernels (the group count
/// read back for the GEMM's size and the choice of kernels), else 0.
fn partial_group_reads(model: &SpliceVae, dm: &DeviceModel<'_>) -> u64 {
    let partial = matches!(model.arch.z_enc_spl, splicevi::model::arch::SplEncP::Partial(_));
    (partial && dm.partial_grouped) as u64
}

/// `SPLICEVI_STEP_CASES=a|b`: only the configurations whose name contains `a` or `b` (the whole list
/// takes minutes under the emulation); unset, every one.
fn selected(name: &str) -> bool {
    match std::env::var("SPLICEVI_STEP_CASES") {
        Ok(f) if !f.is_empty() => f.split('|').any(|part| name.contains(part)),
        _ => true,
    }
}

#[test]
fn device_step_matches_cpu_model() {
    for dev in emu::devices("CUDA training step vs SpliceVae::forward/backward") {
        // The splicing decode alternates between the cases (the first runs both), so that each path
        // meets several losses and decoders.
        for (k, case) in cases().iter().enumerate().filter(|(_, c)| selected(c.name)) {
            let decode = if k % 2 == 0 { SplicingDecode::Sparse } else { SplicingDecode::Dense };
            step_on(&dev, case, 100 + k as u64, decode);
            if k == 0 {
                step_on(&dev, case, 100, SplicingDecode::Dense);
            }
        }
    }
}

/// `--splicing-decode auto`: dense where more than 7/(3K) of the minibatch's entries are observed.
#[test]
fn auto_splicing_decode_follows_the_density() {
    let auto = SplicingDecode::Auto;
    // the paper size: 256 cells × 90,000 junctions, about 18,000 entries per cell, K = 128
    assert!(auto.dense_for(256, 90_000, 256 * 18_000, 128));
    // 1% observed at K = 128 (threshold 1.8%): sparse; at K = 1,000 (0.23%): dense
    assert!(!auto.dense_for(256, 90_000, 256 * 900, 128));
    assert!(auto.dense_for(256, 90_000, 256 * 900, 1000));
    assert!(SplicingDecode::Dense.dense_for(1, 1, 0, 1) && !SplicingDecode::Sparse.dense_for(256, 10, 2560, 128));
    assert_eq!("dense".parse::<SplicingDecode>(), Ok(SplicingDecode::Dense));
    assert!("fast".parse::<SplicingDecode>().unwrap_err().contains("auto, sparse or dense"));
}

#[test]
fn unsupported_options_are_named() {
    let d = dims(2, vec![]);
    assert!(unsupported(&ModelConfig::default(), &d).is_none());
    assert!(unsupported(&ModelConfig::paper(), &d).is_none());
    assert!(unsupported(&ModelConfig::robust(), &d).is_none());
    assert!(unsupported(&ModelConfig { use_batch_norm: NormPlacement::Both, ..ModelConfig::default() }, &d).is_none());
    assert!(unsupported(&ModelConfig { use_size_factor_key: false, dispersion: Dispersion::GeneCell, ..ModelConfig::default() }, &d).is_none());
    assert!(unsupported(&ModelConfig { encode_covariates: true, ..ModelConfig::default() }, &Dims { n_cont: 2, ..d.clone() }).is_none());
    assert!(unsupported(&ModelConfig { modality_penalty: ModalityPenalty::MmdRbf, ..ModelConfig::default() }, &d).is_none());
    // the §12 corrections (§14.3)
    let fixed = ModelConfig {
        mixing_variance: MixingVariance::Independent,
        concentration_init: ConcentrationInit::Phi100,
        expression_scale_softmax: true,
        linear_expression_layer_norm: false,
        ..ModelConfig::default()
    };
    assert!(unsupported(&fixed, &d).is_none());
    assert!(unsupported(&ModelConfig { expression_architecture: ExpressionArch::Vanilla, ..fixed }, &d).is_none());
}

/// The device optimizer step (global norm, clip scale, AdamW over the flat buffer) against
/// `optim::clip_info` + `Adam::step` on the same gradients: bit-identical without clipping (the kernels
/// execute the CPU twin's IEEE operations), within 1e-6 relative with the clip active (the norm's f64
/// sum runs in another order); and a non-finite gradient is an error naming its parameter.
fn optimizer_on(dev: &CudaDevice) {
    use splicevi::optim::{clip_info, Adam, AdamConfig};
    let case = &cases()[1];
    let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), JUNC2ATSE.to_vec()).unwrap();
    let p = random_params(&model, 7);
    let batch = synth_batch(&case.dims, 9, 8);
    let fw = model.forward(&p, &batch, &case.opts).unwrap();
    let g = model.backward(&p, &batch, &fw, None).unwrap();
    let n = model.layout.n_trainable;
    for clip in [None, Some(1e-3f32)] {
        let config = AdamConfig::adamw(1e-2, 1e-3, 1e-8);
        let mut cpu = Adam::new(config, n);
        let mut pc = p.clone();
        let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
        let mut adam = dm.adam_state(&cpu.state).unwrap();
        for step in 1..=3u64 {
            dm.upload_grads(&g).unwrap();
            let norm = dm.optimizer_step(&mut adam, &config, step, clip).unwrap();
            let info = clip_info(&g.data, None, clip.unwrap_or(f32::MAX)).unwrap();
            assert!((norm - info.norm).abs() <= 1e-9 * info.norm, "norm {norm} vs {}", info.norm);
            cpu.step(pc.trainable_mut(), &g.data, None, if clip.is_some() { info.scale } else { 1.0 }).unwrap();
        }
        let got = dm.download_params().unwrap();
        let st = dm.download_adam(&adam, 3).unwrap();
        if clip.is_none() {
            assert!(got.data == pc.data, "parameters after 3 unclipped steps differ from Adam::step");
            assert!(st == cpu.state, "moments after 3 unclipped steps differ from Adam::step");
        } else {
            for (k, (&a, &b)) in got.data.iter().zip(&pc.data).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-3), "clipped: parameter {k} = {a}, CPU {b}");
            }
        }
    }
    // A NaN gradient: an error naming the parameter, and nothing updated.
    let mut bad = g.clone();
    let idx = model.layout.find("z_decoder_splicing.ps_output.bias").unwrap();
    let off = model.layout.entries[idx].offset + 2;
    bad.data[off] = f32::NAN;
    let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
    let mut adam = dm.adam_state(&splicevi::optim::AdamState::zeros(n)).unwrap();
    dm.upload_grads(&bad).unwrap();
    let err = dm.optimizer_step(&mut adam, &AdamConfig::adamw(1e-2, 1e-3, 1e-8), 1, Some(5.0)).unwrap_err().to_string();
    assert!(err.contains("z_decoder_splicing.ps_output.bias") && err.contains("non-finite"), "{err}");
    assert!(dm.download_params().unwrap().data == p.data, "a failed step changed the parameters");
}

#[test]
fn device_optimizer_step_matches_cpu() {
    for dev in emu::devices("CUDA optimizer step vs optim::Adam") {
        optimizer_on(&dev);
    }
}

/// `DeviceModel::train_step` (forward, backward and optimizer in one call) against
/// `forward_backward_prepared` + `optimizer_step` on the same minibatch: the same loss terms, z, gradient
/// norm, parameters and Adam moments, to the bit, for every configuration (clipped on every other one).
/// And the host waits for the device once per step where nothing is needed mid-step, twice where z or
/// the posteriors go to the host (an adversary's extra dz, the MMD-RBF penalty, whose four copies come
/// on top); the step functions alone wait three times.
fn train_step_on(dev: &CudaDevice) {
    use splicevi::cuda::step::{HostBatch, Update};
    use splicevi::optim::{AdamConfig, AdamState};
    for (ci, case) in cases().iter().enumerate() {
        let name = case.name;
        let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), JUNC2ATSE.to_vec()).unwrap();
        let p = random_params(&model, 500 + ci as u64);
        let mut batch = synth_batch(&case.dims, 9, 501 + ci as u64);
        if case.no_cell_idx {
            batch.cell_idx = None;
        }
        let extra: Option<Vec<f32>> = case.extra_dz.then(|| (0..9 * model.arch.l).map(|k| (k as f32 * 0.37).cos() * 0.1).collect());
        let hb = HostBatch::build(&model, &batch, &case.opts).unwrap();
        let config = AdamConfig::adamw(1e-2, 1e-3, 1e-8);
        let n = model.layout.n_trainable;
        let clip = (ci % 2 == 0).then_some(0.5f32);
        // The MMD-RBF penalty copies four B × d posteriors back to the host, mid-step.
        let mmd = case.cfg.modality_penalty == ModalityPenalty::MmdRbf && case.cfg.modality_weights != ModalityWeights::Concatenate;
        let mmd_reads = if mmd { 4 } else { 0 };

        let mut d1 = DeviceModel::new(dev, &model, &p).unwrap();
        // The grouped partial encoder reads its group count back once per forward.
        let group_reads = partial_group_reads(&model, &d1);
        let mut a1 = d1.adam_state(&AdamState::zeros(n)).unwrap();
        let w0 = dev.host_waits();
        let o1 = d1.forward_backward_prepared(&hb, &case.opts, &mut |_| Ok(extra.clone()), true).unwrap();
        let n1 = d1.optimizer_step(&mut a1, &config, 1, clip).unwrap();
        assert_eq!(dev.host_waits() - w0, 3 + mmd_reads + group_reads, "{name}: waits of the step functions");

        let mut d2 = DeviceModel::new(dev, &model, &p).unwrap();
        let mut a2 = d2.adam_state(&AdamState::zeros(n)).unwrap();
        let mut fool = |_: &[f32]| -> anyhow::Result<Option<Vec<f32>>> { Ok(extra.clone()) };
        let extra_dz: Option<&mut dyn FnMut(&[f32]) -> anyhow::Result<Option<Vec<f32>>>> = if extra.is_some() { Some(&mut fool) } else { None };
        let w0 = dev.host_waits();
        let (o2, n2) = d2.train_step(&hb, &case.opts, extra_dz, Update { adam: &mut a2, config: &config, step: 1, clip }).unwrap();
        let waits = dev.host_waits() - w0;
        let mid_step = extra.is_some() || mmd;
        assert_eq!(waits, group_reads + if mid_step { 2 + mmd_reads } else { 1 }, "{name}: host waits per train_step");

        assert_eq!(o1.loss.to_bits(), o2.loss.to_bits(), "{name}: loss");
        assert!(o1.rl_expr == o2.rl_expr && o1.rl_spl == o2.rl_spl && o1.kl == o2.kl && o1.z == o2.z, "{name}: loss terms");
        let scalars = |o: &splicevi::cuda::step::DeviceStepOutput| [o.penalty, o.concentration_prior, o.decoder_prior, o.decoder_effect_prior].map(f64::to_bits);
        assert_eq!(scalars(&o1), scalars(&o2), "{name}: penalty and priors");
        assert_eq!(Some(n1.to_bits()), n2.map(f64::to_bits), "{name}: gradient norm");
        assert!(d1.download_params().unwrap().data == d2.download_params().unwrap().data, "{name}: parameters after the update");
        assert!(d1.download_adam(&a1, 1).unwrap() == d2.download_adam(&a2, 1).unwrap(), "{name}: Adam moments");
        assert!(d2.download_params().unwrap().data != p.data, "{name}: nothing was updated");
    }
}

#[test]
fn train_step_matches_the_step_functions() {
    for dev in emu::devices("DeviceModel::train_step vs forward_backward + optimizer_step") {
        train_step_on(&dev);
    }
}

/// A bad parameter in a step that waits only at its end: the loss comes back non-finite with no norm,
/// and AdamW (guarded on the gradient's sum of squares on the device) updated nothing. (The guard alone,
/// a NaN gradient under a finite loss, is checked through optimizer_step in `optimizer_on` and on the
/// kernel in tests/cuda_parity.rs.)
fn train_step_nan_on(dev: &CudaDevice) {
    use splicevi::cuda::step::{HostBatch, Update};
    use splicevi::optim::{AdamConfig, AdamState};
    let case = &cases()[1];
    let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), JUNC2ATSE.to_vec()).unwrap();
    let mut p = random_params(&model, 61);
    let idx = model.layout.find("z_decoder_splicing.ps_output.weight").unwrap();
    p.data[model.layout.entries[idx].offset + 3] = f32::NAN;
    let batch = synth_batch(&case.dims, 9, 62);
    let hb = HostBatch::build(&model, &batch, &case.opts).unwrap();
    let n = model.layout.n_trainable;
    let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
    let mut adam = dm.adam_state(&AdamState::zeros(n)).unwrap();
    let config = AdamConfig::adamw(1e-2, 1e-3, 1e-8);
    let (out, norm) = dm.train_step(&hb, &case.opts, None, Update { adam: &mut adam, config: &config, step: 1, clip: None }).unwrap();
    assert!(!out.loss.is_finite() && norm.is_none(), "loss {} norm {norm:?}", out.loss);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&dm.download_params().unwrap().data), bits(&p.data), "a step with a NaN gradient changed the parameters");
    assert!(dm.download_adam(&adam, 0).unwrap() == AdamState::zeros(n), "a step with a NaN gradient changed the moments");
}

#[test]
fn train_step_with_a_nan_updates_nothing() {
    for dev in emu::devices("DeviceModel::train_step with a NaN parameter") {
        train_step_nan_on(&dev);
    }
}

/// Two epochs of `Trainer::fit` with the steps on the device against the CPU trainer on the same
/// simulated data (120 cells, `paper` and `robust` options, two batches: the adversary is on): the per-epoch metrics agree, the
/// optimizer took the same number of steps, and the checkpoint holds the device's parameters; a device run
/// resumed from its checkpoint after one epoch ends bit-identical to the straight one.
/// The trainer tests' data: smaller than `toy` (the emulation runs every CUDA thread as an OS thread).
fn trainer_data() -> splicevi::data::Dataset {
    use splicevi::data::simulate::{simulate, SimConfig, SimSize};
    simulate(&SimConfig { n_cells: 120, n_genes: 60, n_junctions: 120, ..SimConfig::preset(SimSize::Toy, 3) }).unwrap().0
}

/// Two epochs of `preset` at small layers (the partial encoder's code_dim × h_hidden_dim given), and
/// the CPU trainer's run of them (with the directory it wrote). `adversary`: whether the preset's
/// adversarial batch classifier trains (the data has two batches), or none does.
fn trainer_run_and_cpu<'a>(ds: &'a splicevi::data::Dataset, preset: &str, code_dim: usize, h_hidden_dim: usize, adversary: bool) -> (splicevi::train::trainer::RunConfig, splicevi::train::trainer::Trainer<'a>, tempfile::TempDir) {
    use splicevi::data::DataOptions;
    use splicevi::train::trainer::{RunConfig, Trainer};
    use splicevi::train::{presets, TrainConfig};
    let (model, train0) = presets::preset(preset).unwrap();
    let model = ModelConfig { n_hidden: Some(8), n_latent: Some(4), code_dim, h_hidden_dim, encoder_hidden_dim: 8, ..model };
    let train = TrainConfig { max_epochs: 2, batch_size: 64, n_epochs_kl_warmup: Some(1), lr: 1e-3, adversarial_mixing: adversary && train0.adversarial_mixing, ..train0 };
    let data = DataOptions { batch_key: Some("batch".into()), ..Default::default() };
    let run = RunConfig::for_dataset(preset, model, train, data, ds);
    let d_cpu = tempfile::tempdir().unwrap();
    let mut cpu = Trainer::new(ds, run.clone(), d_cpu.path()).unwrap();
    cpu.verbose = false;
    cpu.fit().unwrap();
    (run, cpu, d_cpu)
}

fn trainer_on(dev: &'static CudaDevice) {
    use splicevi::train::trainer::{RunConfig, Trainer, MODEL_FILE};
    use splicevi::cuda::resident::Residency;
    use splicevi::train::TrainConfig;
    let ds = trainer_data();
    // paper (softmax-free per-dimension mixing, the adversary) and robust (concatenated latents, the
    // cross gate's schedule); tests of the step itself cover the other options.
    for preset in ["paper", "robust"] {
        let (run, cpu, _d_cpu) = trainer_run_and_cpu(&ds, preset, 4, 8, true);
        let d_dev = tempfile::tempdir().unwrap();
        let mut on = Trainer::new(&ds, run, d_dev.path()).unwrap();
        on.verbose = false;
        assert!(on.adversary.is_some(), "{preset}: two batches train the adversary");
        // paper streams its minibatches from the host, robust gathers them from the resident dataset.
        let residency = if preset == "paper" { Residency::Host } else { Residency::Device };
        on.use_device_with(dev, splicevi::cuda::gemm::GemmPrecision::F32, residency).unwrap();
        assert!(on.on_device());
        let note = on.device_data_note().unwrap().to_string();
        assert_eq!(note.starts_with("data resident on the device"), residency == Residency::Device, "{preset}: {note}");
        on.fit().unwrap();
        assert_eq!(on.state.global_step, cpu.state.global_step, "{preset}: steps");
        assert_eq!(on.opt.state.step, cpu.opt.state.step, "{preset}: optimizer steps");
        for (a, b) in on.log.epochs.iter().zip(&cpu.log.epochs) {
            for (what, x, y) in [
                ("train loss", a.train_loss, b.train_loss),
                ("validation reconstruction", a.reconstruction_loss_validation, b.reconstruction_loss_validation),
                ("validation KL", a.kl_local_validation, b.kl_local_validation),
                ("adversary loss", a.adversary_loss, b.adversary_loss),
            ] {
                assert!((x - y).abs() <= 2e-3 * y.abs().max(1.0), "{preset} epoch {}: {what} device {x}, CPU {y}", a.epoch);
            }
        }
        // The checkpoint is the device's parameters, and they moved with the CPU's.
        let mut saved = on.params.clone();
        saved.load_safetensors(&d_dev.path().join(MODEL_FILE)).unwrap();
        let now = on.params.clone();
        assert!(saved.data == now.data, "{preset}: the checkpoint is not the synced parameters");
        assert_eq!(now.by_name("cross_gate"), cpu.params.by_name("cross_gate"), "{preset}: the checkpoint's cross_gate");
        let moved: f64 = now.trainable().iter().zip(cpu.params.trainable()).map(|(&a, &b)| ((a - b) as f64).abs()).fold(0.0, f64::max);
        assert!(moved < 0.05, "{preset}: device and CPU parameters drifted apart by {moved}");
        // Resume on the device: one epoch, then `Trainer::resume` for the second from the checkpoint
        // (parameters and moments synced back from the device) ends bit-identical to the straight run.
        let d_res = tempfile::tempdir().unwrap();
        let mut first = Trainer::new(&ds, RunConfig { train: TrainConfig { max_epochs: 1, ..on.run.train.clone() }, ..on.run.clone() }, d_res.path()).unwrap();
        first.verbose = false;
        first.use_device(dev, splicevi::cuda::gemm::GemmPrecision::F32).unwrap();
        first.fit().unwrap();
        let mut second = Trainer::resume(&ds, d_res.path(), Some(2)).unwrap();
        second.verbose = false;
        second.use_device(dev, splicevi::cuda::gemm::GemmPrecision::F32).unwrap();
        second.fit().unwrap();
        assert_eq!(second.state.global_step, on.state.global_step, "{preset}: resumed steps");
        assert!(second.params.data == on.params.data, "{preset}: the resumed device run differs from the straight one");
        assert!(second.opt.state == on.opt.state, "{preset}: the resumed optimizer state differs");
    }
}

#[test]
fn device_trainer_matches_cpu_trainer() {
    for dev in emu::devices("Trainer::fit on the device vs on the CPU") {
        let dev: &'static CudaDevice = Box::leak(Box::new(dev));
        trainer_on(dev);
    }
}

/// The kernel profile (`bench --profile-steps`): one step of `paper` with it on names every kernel and
/// cuBLAS call the step made, as many calls as `launches` counted; the step's results are the same
/// bits as without it; taking the profile empties it, and with it off there is none.
fn profile_on(dev: &CudaDevice) {
    let case = &cases()[1];
    let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), JUNC2ATSE.to_vec()).unwrap();
    let p = random_params(&model, 40);
    let batch = synth_batch(&case.dims, 9, 41);
    let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
    let plain = dm.forward_backward(&batch, &case.opts, &mut |_| Ok(None), true).unwrap();
    let g_plain = dm.download_grads().unwrap();
    assert!(dev.take_profile().is_err(), "a profile while profiling is off");
    dev.set_profiling(true);
    let l0 = dev.launches();
    let timed = dm.forward_backward(&batch, &case.opts, &mut |_| Ok(None), true).unwrap();
    let launched = dev.launches() - l0;
    let prof = dev.take_profile().unwrap();
    let g_timed = dm.download_grads().unwrap();
    assert_eq!(plain.loss.to_bits(), timed.loss.to_bits(), "profiling changed the loss");
    assert!(g_plain.data == g_timed.data, "profiling changed the gradients");
    let calls: u64 = prof.iter().map(|k| k.calls).sum();
    assert_eq!(calls, launched, "profiled calls vs launches counted: {prof:?}");
    let (pool, walk) = if dm.partial_grouped { ("pgrp_pool_fwd", "pgrp_pair_bwd") } else { ("partial_pool_fwd", "partial_pair_bwd") };
    for want in [pool, walk, "splicing_lik_f32", "splicing_lik_rl", "expr_lik", "cublas sgemm"] {
        assert!(prof.iter().any(|k| k.name == want), "{want} missing from the profile: {:?}", prof.iter().map(|k| &k.name).collect::<Vec<_>>());
    }
    assert!(prof.iter().all(|k| k.ms >= 0.0 && k.ms.is_finite() && k.calls > 0));
    assert!(prof.windows(2).all(|w| w[0].ms >= w[1].ms), "the profile is not sorted");
    assert!(dev.take_profile().unwrap().is_empty(), "taking the profile did not empty it");
    dev.set_profiling(false);
    assert!(dev.take_profile().is_err());
}

#[test]
fn device_profile_names_every_launch() {
    for dev in emu::devices("the kernel profile of a device step") {
        profile_on(&dev);
    }
}

/// A device run whose data turns bad stops and names the term, and keeps the last good checkpoint, with
/// the step that waits for the device only at its end (no adversary): one good epoch of `paper` on the
/// device, then every library size infinite and a resumed run, as `tests/train.rs` does on the CPU.
fn trainer_nan_on(dev: &'static CudaDevice) {
    use splicevi::train::trainer::{RunConfig, Trainer, MODEL_FILE};
    use splicevi::train::TrainConfig;
    let mut ds = trainer_data();
    let (run, _cpu, _d_cpu) = trainer_run_and_cpu(&ds, "paper", 4, 8, false);
    let dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(&ds, RunConfig { train: TrainConfig { max_epochs: 1, ..run.train.clone() }, ..run.clone() }, dir.path()).unwrap();
    first.verbose = false;
    first.use_device(dev, splicevi::cuda::gemm::GemmPrecision::F32).unwrap();
    assert!(first.adversary.is_none(), "the adversary is off");
    first.fit().unwrap();
    drop(first);
    let good = std::fs::read(dir.path().join(MODEL_FILE)).unwrap();
    ds.library_size.iter_mut().for_each(|s| *s = f32::INFINITY);
    let mut t = Trainer::resume(&ds, dir.path(), Some(3)).unwrap();
    t.verbose = false;
    t.use_device(dev, splicevi::cuda::gemm::GemmPrecision::F32).unwrap();
    let err = format!("{:#}", t.fit().unwrap_err());
    assert!(err.contains("non-finite") && err.contains("epoch 1"), "{err}");
    // the loss term, not a gradient: the step reports a non-finite loss before it looks at the gradient
    assert!(err.contains("reconstruction_loss_expression"), "the bad term is not named: {err}");
    assert_eq!(std::fs::read(dir.path().join(MODEL_FILE)).unwrap(), good, "the last good checkpoint was overwritten");
}

#[test]
fn device_trainer_stops_on_a_non_finite_loss() {
    for dev in emu::devices("Trainer::fit on the device with data that turns non-finite") {
        let dev: &'static CudaDevice = Box::leak(Box::new(dev));
        trainer_nan_on(dev);
    }
}

/// Two epochs of `paper` in bf16 at a tensor-core shape of the partial encoder (h_hidden 16, code_dim 8;
/// the trainer runs the grouped kernels, the default, with their GEMMs in TF32, while `bf16_on` runs
/// the per-pair tensor-core ones), the adversary off,
/// against the CPU trainer in f32: every epoch's
/// losses finite and within 3e-2 of the CPU's (bf16 operands: a few 1e-3 per step, compounded over
/// the steps), the parameters within 0.05 of the CPU's.
fn trainer_bf16_on(dev: &'static CudaDevice) {
    use splicevi::train::trainer::Trainer;
    use splicevi::cuda::resident::Residency;
    assert!(splicevi::cuda::partial::tensor_cores_bwd_fit(16, 8));
    let ds = trainer_data();
    // No adversary, so each device step waits for the device once, at its end
    // (DeviceModel::train_step's deferred path; the f32 trainer test above runs the adversary's).
    let (run, cpu, _d_cpu) = trainer_run_and_cpu(&ds, "paper", 8, 16, false);
    let d_dev = tempfile::tempdir().unwrap();
    let mut on = Trainer::new(&ds, run, d_dev.path()).unwrap();
    on.verbose = false;
    assert!(on.adversary.is_none(), "the adversary is off");
    on.use_device_with(dev, splicevi::cuda::gemm::GemmPrecision::Bf16, Residency::Device).unwrap();
    on.fit().unwrap();
    assert_eq!(on.state.global_step, cpu.state.global_step, "bf16: steps");
    for (a, b) in on.log.epochs.iter().zip(&cpu.log.epochs) {
        for (what, x, y) in [
            ("train loss", a.train_loss, b.train_loss),
            ("validation reconstruction", a.reconstruction_loss_validation, b.reconstruction_loss_validation),
            ("validation KL", a.kl_local_validation, b.kl_local_validation),
        ] {
            assert!(x.is_finite() && (x - y).abs() <= 3e-2 * y.abs().max(1.0), "bf16 epoch {}: {what} device {x}, CPU {y}", a.epoch);
        }
        println!("bf16 epoch {}: train loss device {} CPU {}", a.epoch, a.train_loss, b.train_loss);
    }
    let moved: f64 = on.params.trainable().iter().zip(cpu.params.trainable()).map(|(&a, &b)| ((a - b) as f64).abs()).fold(0.0, f64::max);
    assert!(moved < 0.05, "bf16: device and CPU parameters drifted apart by {moved}");
    assert!(on.params.data != cpu.params.data, "bf16: the device run gave the CPU's parameters bit for bit");
}

#[test]
fn device_trainer_in_bf16_tracks_cpu_trainer() {
    for dev in emu::devices("Trainer::fit on the device in bf16 (tensor-core h network) vs the CPU in f32") {
        let dev: &'static CudaDevice = Box::leak(Box::new(dev));
        trainer_bf16_on(dev);
    }
}

/// `--precision bf16`: GEMM and SDDMM operands rounded to bf16 (f32 accumulation, everything else
/// f32). Against the CPU model in f32, per tensor: ‖device − CPU‖ / ‖CPU‖ ≤ 3e-2 for every gradient and
/// loss term (bf16 keeps 8 significant bits: about 4e-3 per rounded operand), and the worst tensor
/// is printed. It must also differ from the f32 step (the rounding happened).
fn bf16_on(dev: &CudaDevice) {
    use splicevi::cuda::gemm::GemmPrecision;
    let rel = |a: &[f32], b: &[f32]| {
        let d: f64 = a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
        let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>().sqrt();
        if n == 0.0 { d } else { d / n }
    };
    // The two presets at the test sizes (the partial encoder on CUDA cores: 6 × 4 is not a tensor-core
    // shape), and `paper` with 16 × 8 (its pooled forward on tensor cores, partial_pool_fwd_tc).
    let mut list: Vec<Case> = cases().into_iter().take(2).collect();
    let tc = Case { name: "paper, tensor-core partial encoder", cfg: ModelConfig { code_dim: 8, h_hidden_dim: 16, ..list[1].cfg.clone() }, ..cases().swap_remove(1) };
    assert!(splicevi::cuda::partial::tensor_cores_fit(tc.cfg.h_hidden_dim, tc.cfg.code_dim));
    list.push(tc);
    for case in &list {
        let name = case.name;
        let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), JUNC2ATSE.to_vec()).unwrap();
        let p = random_params(&model, 300);
        let batch = synth_batch(&case.dims, 9, 301);
        let fw = model.forward(&p, &batch, &case.opts).unwrap();
        let want = model.backward(&p, &batch, &fw, None).unwrap();
        let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
        dm.poison = true;
        // (the per-pair kernels, whose products run on tensor cores in bf16; the other cases run the
        // grouped ones, the default, with their GEMMs in TF32)
        dm.partial_grouped = !name.contains("tensor-core");
        let f32_grads = {
            dm.forward_backward(&batch, &case.opts, &mut |_| Ok(None), true).unwrap();
            dm.download_grads().unwrap()
        };
        dm.precision = GemmPrecision::Bf16;
        let out = dm.forward_backward(&batch, &case.opts, &mut |_| Ok(None), true).unwrap();
        let got = dm.download_grads().unwrap();
        let mut worst = (0.0f64, String::new());
        for (what, a, b) in [("rl_expr", &out.rl_expr, &fw.out.rl_expr), ("rl_spl", &out.rl_spl, &fw.out.rl_spl), ("kl", &out.kl, &fw.out.kl)] {
            let e = rel(a, b);
            if e > worst.0 {
                worst = (e, what.to_string());
            }
        }
        for (i, e) in model.layout.entries.iter().enumerate() {
            if let (Some(g), Some(w)) = (got.get(i), want.get(i)) {
                let r = rel(g, w);
                if r > worst.0 {
                    worst = (r, format!("d {}", e.name));
                }
            }
        }
        println!("{name} in bf16: worst relative difference from the f32 CPU model {:.2e} ({})", worst.0, worst.1);
        assert!(worst.0 <= 3e-2, "{name} in bf16: {} differs by {:.2e}", worst.1, worst.0);
        assert!((out.loss - fw.out.loss as f64).abs() <= 1e-2 * (fw.out.loss as f64).abs(), "{name} in bf16: loss {} vs {}", out.loss, fw.out.loss);
        assert!(got.data != f32_grads.data, "{name}: the bf16 step gave the f32 step's gradients");
    }
}

#[test]
fn device_step_in_bf16_is_close_to_f32() {
    for dev in emu::devices("CUDA step with --precision bf16 vs the f32 CPU model") {
        bf16_on(&dev);
    }
}

/// `DeviceModel::latents` (the `embed --device cuda` path: encoders and latent step only, evaluation
/// mode) against `SpliceVae::inference_only`: qz_m, the expression and the splicing posterior means,
/// for configurations that exercise BatchNorm's running statistics, covariates in the encoders, the
/// per-cell weights' table and concatenated latents.
fn latents_on(dev: &CudaDevice) {
    let all = cases();
    let pick = ["default", "paper", "BatchNorm in encoders and decoders", "per-cell modality weights (cells'", "encode_covariates, 2 continuous", "robust: concatenated", "§12 corrections: independent"];
    let mut n = 0;
    for case in all.iter().filter(|c| pick.iter().any(|p| c.name.starts_with(p))) {
        let name = case.name;
        let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), JUNC2ATSE.to_vec()).unwrap();
        let p = random_params(&model, 400);
        let batch = synth_batch(&case.dims, 9, 401);
        let want = model.inference_only(&p, &batch).unwrap();
        let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
        dm.poison = true;
        let got = dm.latents(&batch).unwrap();
        close(&format!("{name}: latents qz_m"), &got.qz_m, &want.qz_m.data);
        close(&format!("{name}: latents mu_e"), &got.mu_e, &want.qzm_expr.data);
        close(&format!("{name}: latents mu_s"), &got.mu_s, &want.qzm_spl.data);
        // A training step afterwards is a whole step again (the latents-only mode is not left on).
        let out = dm.forward_backward(&batch, &case.opts, &mut |_| Ok(None), true).unwrap();
        assert!(out.loss.is_finite() && out.rl_expr.len() == 9, "{name}: the step after latents");
        n += 1;
    }
    assert!(n >= pick.len(), "{n} cases ran for {} picked names", pick.len());
}

#[test]
fn device_latents_match_inference_only() {
    for dev in emu::devices("DeviceModel::latents vs SpliceVae::inference_only") {
        latents_on(&dev);
    }
}

/// `DeviceModel::decode_dense` (the analyses' decode on the device) against `SpliceVae::decode_dense`:
/// p of every junction and px_scale, from the CPU's posterior means, for the DM (within-ATSE softmax)
/// and the other likelihoods (sigmoid), softmax and softplus scales, vanilla and linear decoders,
/// covariates and concatenated latents under a cross gate of 0.5; and the device's latents' qz_v and
/// library against `inference_only`'s.
fn decode_on(dev: &CudaDevice) {
    let all = cases();
    let pick = [
        "default",
        "paper",
        "vanilla splicing encoder, NB, beta-binomial",
        "Poisson, binomial",
        "BatchNorm in encoders and decoders",
        "encode_covariates, 2 continuous",
        "continuous covariates in the decoders only",
        "robust: concatenated",
        "robust with cross_decoding splicing",
        "library encoder (use_size_factor_key = false)",
        "§12 corrections: independent",
        "§12 corrections: linear",
    ];
    let mut n = 0;
    for case in all.iter().filter(|c| pick.iter().any(|p| c.name.starts_with(p))) {
        let name = case.name;
        let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), JUNC2ATSE.to_vec()).unwrap();
        let p = random_params(&model, 500);
        let batch = synth_batch(&case.dims, 9, 501);
        let inf = model.inference_only(&p, &batch).unwrap();
        let gate = if case.cfg.modality_weights == ModalityWeights::Concatenate { 0.5 } else { 1.0 };
        let want = model.decode_dense(&p, &inf.qz_m, &batch, &inf.library, gate).unwrap();
        let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
        dm.poison = true;
        let lat = dm.latents(&batch).unwrap();
        close(&format!("{name}: latents qz_v"), &lat.qz_v, &inf.qz_v.data);
        close(&format!("{name}: latents library"), &lat.library, &inf.library);
        let got = dm.decode_dense(&inf.qz_m.data, &batch, gate, true, true).unwrap();
        close(&format!("{name}: decode p"), got.p.as_ref().unwrap(), &want.p.data);
        close(&format!("{name}: decode px_scale"), got.px_scale.as_ref().unwrap(), &want.px_scale.data);
        let only = dm.decode_dense(&inf.qz_m.data, &batch, gate, true, false).unwrap();
        assert!(only.px_scale.is_none() && only.p == got.p, "{name}: p alone differs");
        n += 1;
    }
    assert!(n >= pick.len(), "{n} cases ran for {} picked names", pick.len());
}

#[test]
fn device_decode_matches_decode_dense() {
    for dev in emu::devices("DeviceModel::decode_dense vs SpliceVae::decode_dense") {
        decode_on(&dev);
    }
}

/// The analyses on the device: a `Posterior` with `use_device` against the CPU's on simulated data with
/// two batches (`default` and `paper`): latent means, the decoder PSI, the DM posterior PSI and px_scale
/// under transform batches and posterior samples, and differential splicing's estimated PSI.
fn posterior_on(dev: &'static CudaDevice) {
    use splicevi::analysis::differential::{comparisons, ChangeOptions};
    use splicevi::analysis::ds::differential_splicing;
    use splicevi::analysis::posterior::{DecodeOptions, Posterior, SplicingFn};
    use splicevi::data::simulate::{simulate, SimConfig, SimSize};
    use splicevi::train::trainer::dims_of;
    let (ds, _) = simulate(&SimConfig { n_cells: 60, n_genes: 50, n_junctions: 90, ..SimConfig::preset(SimSize::Toy, 4) }).unwrap();
    // `cell` modality weights with cells of the training data and others (the mean row) in one block
    let cell_weights = ModelConfig { modality_weights: splicevi::model::ModalityWeights::Cell, ..ModelConfig::default() };
    for cfg in [ModelConfig::default(), ModelConfig::paper(), cell_weights] {
        let cfg = ModelConfig { n_hidden: Some(8), n_latent: Some(4), code_dim: 4, h_hidden_dim: 8, encoder_hidden_dim: 8, ..cfg };
        let model = SpliceVae::new(cfg, dims_of(&ds), ds.splicing.junc2atse.clone()).unwrap();
        let p = random_params(&model, 600);
        let mut cpu = Posterior::new(&ds, &model, &p).unwrap();
        let mut on = Posterior::new(&ds, &model, &p).unwrap();
        let mixed: Vec<u32> = (0..ds.n_cells() as u32).map(|c| if c % 3 == 0 { u32::MAX } else { (c * 7) % ds.n_cells() as u32 }).collect();
        (cpu.cell_rows, on.cell_rows) = (Some(mixed.clone()), Some(mixed));
        on.use_device(dev, splicevi::cuda::gemm::GemmPrecision::F32).unwrap();
        assert!(on.on_device() && !cpu.on_device());
        let cells: Vec<usize> = (3..23).collect();
        let (lc, wc) = cpu.latent_means(&cells, 8).unwrap();
        let (ld, wd) = on.latent_means(&cells, 8).unwrap();
        assert_eq!(wc, wd);
        for k in 0..3 {
            close(&format!("latent means {k}"), &ld[k], &lc[k]);
        }
        for (tb, s) in [(vec![], 1usize), (vec![0, 1], 1), (vec![], 3)] {
            let opts = DecodeOptions { transform_batch: tb.clone(), n_samples: s, seed: 5 };
            for f in [SplicingFn::Decoder, SplicingFn::DmPosterior] {
                let (a, b) = (on.decode(&cells, &opts, Some(f), true).unwrap(), cpu.decode(&cells, &opts, Some(f), true).unwrap());
                close(&format!("{f:?} psi, transform {tb:?}, {s} samples"), &a.psi.unwrap().data, &b.psi.unwrap().data);
                close(&format!("px_scale, transform {tb:?}, {s} samples"), &a.expr.unwrap().data, &b.expr.unwrap().data);
            }
        }
        let cmp = comparisons(&ds, "batch", Some("batch0"), None).unwrap().remove(0);
        let opts = ChangeOptions { n_samples_overall: 60, block_cells: 16, seed: 3, ..ChangeOptions::new(0.1) };
        let (a, b) = (differential_splicing(&on, &cmp, SplicingFn::DmPosterior, &opts, 0).unwrap(), differential_splicing(&cpu, &cmp, SplicingFn::DmPosterior, &opts, 0).unwrap());
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        close("DS est_prob1", &f(&a.est_prob1), &f(&b.est_prob1));
        close("DS est_prob2", &f(&a.est_prob2), &f(&b.est_prob2));
    }
}

#[test]
fn analyses_on_the_device_match_the_cpu() {
    for dev in emu::devices("Posterior on the device vs on the CPU") {
        let dev: &'static CudaDevice = Box::leak(Box::new(dev));
        posterior_on(dev);
    }
}

/// The dataset resident on the device: a minibatch gathered and indexed there (kernels/gather.cu,
/// `HostBatch::build_resident`) holds exactly the arrays the host packs (`HostBatch::build`), bit for
/// bit, for every configuration of `cases()` (their options over a simulated dataset with a
/// categorical and two continuous covariates, a cell without expression and one without splicing),
/// with and without cell indices; and a step on it gives bit-identical loss terms and gradients.
fn resident_on(dev: &CudaDevice) {
    use splicevi::cuda::resident::DeviceDataset;
    use splicevi::cuda::step::HostBatch;
    use splicevi::data::simulate::{simulate, SimConfig, SimSize};
    use splicevi::data::Categorical;
    use splicevi::train::trainer::dims_of;
    let (mut ds, _) = simulate(&SimConfig { n_cells: 70, n_genes: 40, n_junctions: 60, ..SimConfig::preset(SimSize::Toy, 8) }).unwrap();
    let n = ds.n_cells();
    let mut r = ChaCha8Rng::seed_from_u64(77);
    ds.covariates.categorical.push(Categorical { name: "donor".into(), codes: (0..n).map(|_| r.gen_range(0..3)).collect(), levels: vec!["a".into(), "b".into(), "c".into()] });
    ds.covariates.continuous_names = vec!["age".into(), "depth".into()];
    ds.covariates.continuous = (0..2 * n).map(|_| r.gen_range(-1.0..1.0)).collect();
    // Cell 5 loses its expression, cell 7 its splicing entries.
    let x = ds.expression.as_mut().unwrap();
    let (lo, hi) = (x.indptr[5], x.indptr[6]);
    x.indices.drain(lo..hi);
    x.values.drain(lo..hi);
    for p in x.indptr[6..].iter_mut() {
        *p -= hi - lo;
    }
    let s = &mut ds.splicing;
    let (lo, hi) = (s.indptr[7], s.indptr[8]);
    for v in [&mut s.k, &mut s.n, &mut s.psi] {
        v.drain(lo..hi);
    }
    s.junction.drain(lo..hi);
    for p in s.indptr[8..].iter_mut() {
        *p -= hi - lo;
    }
    // 40 distinct cells in random order (two 32-row tiles of the CSC's bit words), cells 5 and 7 in.
    let mut cells: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        cells.swap(i, r.gen_range(0..=i));
    }
    cells.truncate(38);
    cells.retain(|&c| c != 5 && c != 7);
    cells.extend([7, 5]);
    cells.swap(0, 36);
    for (ci, case) in cases().iter().enumerate() {
        let name = case.name;
        let model = SpliceVae::new(case.cfg.clone(), dims_of(&ds), ds.splicing.junc2atse.clone()).unwrap();
        let p = random_params(&model, 900 + ci as u64);
        let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
        dm.poison = true;
        let dd = DeviceDataset::upload(dev, &model, &ds).unwrap();
        let need = splicevi::cuda::resident::bytes_needed(&model, &ds);
        assert!(dd.bytes() <= need && need < 2 * dd.bytes() + 4096, "{name}: {} bytes uploaded, {need} estimated", dd.bytes());
        dm.attach_dataset(dd);
        let index = dm.resident_index().unwrap();
        // Also a minibatch of the cell without splicing entries alone (nothing to gather or index), and
        // it with the cell without expression.
        for (cells, with_idx) in [(cells.clone(), true), (cells.clone(), false), (vec![7], true), (vec![5, 7], false)] {
            let batch = Batch::from_dataset(&ds, &cells, with_idx).unwrap();
            let packed = HostBatch::build(&model, &batch, &case.opts).unwrap();
            let res = HostBatch::build_resident(&model, &ds, &index, &cells, with_idx, &case.opts).unwrap();
            assert!(res.is_resident() && !packed.is_resident());
            assert!(res.bytes() * 2 < packed.bytes() || cells.len() < 3, "{name}: the resident minibatch copies {} bytes, the packed one {}", res.bytes(), packed.bytes());
            let a = dm.minibatch_arrays(&packed).unwrap();
            let b = dm.minibatch_arrays(&res).unwrap();
            fn names(v: &[(&'static str, Vec<u8>)]) -> Vec<&'static str> {
                v.iter().map(|x| x.0).collect()
            }
            assert_eq!(names(&a), names(&b), "{name}: arrays");
            for ((what, x), (_, y)) in a.iter().zip(&b) {
                assert!(x == y, "{name} (cell indices {with_idx}): `{what}` gathered on the device differs from the host's ({} and {} bytes)", y.len(), x.len());
            }
            // The packed minibatch staged (page-locked on a GPU) and copied from there: the same arrays;
            // its buffer goes back to the pool and is reused.
            let pool = dm.staging_pool();
            let mut staged = HostBatch::build(&model, &batch, &case.opts).unwrap();
            staged.stage(&pool).unwrap();
            assert_eq!(staged.bytes(), packed.bytes());
            assert!(dm.minibatch_arrays(&staged).unwrap() == a, "{name}: the staged minibatch differs");
            let buf = staged.take_staged().unwrap();
            assert!(buf.capacity() >= packed.bytes() && !buf.is_pinned() || !dev.is_emulated());
            pool.give(buf);
            let again = pool.take(packed.bytes());
            assert_eq!(pool.n_free(), 0, "{name}: the pool's buffer was not reused");
            pool.give(again);
        }
        // The step on both: the same bits.
        if [0usize, 1, 12].contains(&ci) {
            let batch = Batch::from_dataset(&ds, &cells, true).unwrap();
            let packed = HostBatch::build(&model, &batch, &case.opts).unwrap();
            let res = HostBatch::build_resident(&model, &ds, &index, &cells, true, &case.opts).unwrap();
            let oa = dm.forward_backward_prepared(&packed, &case.opts, &mut |_| Ok(None), true).unwrap();
            let ga = dm.download_grads().unwrap();
            let l0 = dev.launches();
            let ob = dm.forward_backward_prepared(&res, &case.opts, &mut |_| Ok(None), true).unwrap();
            let per_step = dev.launches() - l0;
            let gb = dm.download_grads().unwrap();
            let l1 = dev.launches();
            dm.forward_backward_prepared(&packed, &case.opts, &mut |_| Ok(None), true).unwrap();
            // the gather's launches are the difference (the pack is one copy)
            eprintln!("{name}: {per_step} kernel launches and cuBLAS calls per resident step, {} packed", dev.launches() - l1);
            assert!(per_step > dev.launches() - l1, "{name}: the resident step launches its gathers");
            assert_eq!(oa.loss.to_bits(), ob.loss.to_bits(), "{name}: loss");
            assert!(oa.rl_spl == ob.rl_spl && oa.rl_expr == ob.rl_expr && oa.z == ob.z, "{name}: loss terms");
            assert!(ga.data == gb.data, "{name}: gradients");
            // A training step from the resident minibatch (forward, backward, optimizer) waits for the
            // device once: the cells' copy, the gathers and the launches are all enqueued.
            let mut adam = dm.adam_state(&splicevi::optim::AdamState::zeros(model.layout.n_trainable)).unwrap();
            let config = splicevi::optim::AdamConfig::adamw(1e-3, 1e-3, 1e-8);
            let w0 = dev.host_waits();
            let update = splicevi::cuda::step::Update { adam: &mut adam, config: &config, step: 1, clip: Some(1.0) };
            let (_, norm) = dm.train_step(&res, &case.opts, None, update).unwrap();
            assert!(norm.is_some_and(f64::is_finite), "{name}: gradient norm {norm:?}");
            // (and one more where the grouped partial encoder reads its group count back)
            assert_eq!(dev.host_waits() - w0, 1 + partial_group_reads(&model, &dm), "{name}: host waits per resident training step");
        }
    }
}

#[test]
fn resident_minibatch_matches_packed() {
    for dev in emu::devices("minibatches gathered from the resident dataset vs packed on the host") {
        resident_on(&dev);
    }
}

/// `--precision bf16` converts each GEMM operand once per step and keeps the copy (`bf16_reuse`: the
/// weights for forward and backward, the activations a block's backward reads). A kept copy must never
/// go stale: for every configuration, the step with reuse gives the very bits of the step that converts
/// every operand afresh, with fewer launches.
fn bf16_reuse_on(dev: &CudaDevice) {
    use splicevi::cuda::gemm::GemmPrecision;
    for (ci, case) in cases().iter().enumerate() {
        let name = case.name;
        let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), JUNC2ATSE.to_vec()).unwrap();
        let p = random_params(&model, 400 + ci as u64);
        let mut batch = synth_batch(&case.dims, 9, 401 + ci as u64);
        if case.no_cell_idx {
            batch.cell_idx = None;
        }
        let extra: Option<Vec<f32>> = case.extra_dz.then(|| (0..9 * model.arch.l).map(|k| (k as f32 * 0.37).sin() * 0.1).collect());
        let run = |reuse: bool| {
            let mut dm = DeviceModel::new(dev, &model, &p).unwrap();
            dm.precision = GemmPrecision::Bf16;
            dm.bf16_reuse = reuse;
            let l0 = dev.launches();
            let out = dm.forward_backward(&batch, &case.opts, &mut |_| Ok(extra.clone()), true).unwrap();
            (out, dm.download_grads().unwrap(), dev.launches() - l0)
        };
        let (a, ga, la) = run(true);
        let (b, gb, lb) = run(false);
        assert_eq!(a.loss.to_bits(), b.loss.to_bits(), "{name}: loss with and without bf16 reuse");
        assert!(a.rl_expr == b.rl_expr && a.rl_spl == b.rl_spl && a.kl == b.kl && a.z == b.z, "{name}: loss terms with and without bf16 reuse");
        assert!(ga.data == gb.data, "{name}: gradients with and without bf16 reuse");
        assert!(la < lb, "{name}: {la} launches with reuse, {lb} without");
    }
}

#[test]
fn bf16_operand_reuse_keeps_the_bits() {
    for dev in emu::devices("bf16 operand copies kept across a step vs converted afresh") {
        bf16_reuse_on(&dev);
    }
}
