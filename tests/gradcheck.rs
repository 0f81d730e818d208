//! Hand-written backward passes vs f64 central finite differences: every op on its own, then the whole
//! loss of small models covering each likelihood, mixing mode, penalty, encoder/decoder architecture,
//! normalisation mode, covariate handling, the adversary's fool gradient and the classifier. And what
//! each §12 correction option (model.md §14.3) computes, against the original on the same parameters.

#[path = "common/synth.rs"]
mod synth;
use synth::JUNC2ATSE;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use splicevi::model::adversary::Adversary;
use splicevi::model::arch::{ExprDecP, SplEncP};
use splicevi::model::ops::{self, BufUpdates, Cov, MainIn, Mode, Sparse};
use splicevi::model::{latent, lik, partial};
use splicevi::model::*;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn randn(r: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(r)
}

fn rand_mat(r: &mut ChaCha8Rng, rows: usize, cols: usize, scale: f64) -> Mat<f64> {
    Mat::from_vec(rows, cols, (0..rows * cols).map(|_| scale * randn(r)).collect())
}

/// Compare analytic and central-difference derivatives coordinate by coordinate.
fn assert_close(label: &str, an: &[f64], fd: &[f64], f_scale: f64) {
    assert_eq!(an.len(), fd.len());
    for (i, (&a, &f)) in an.iter().zip(fd).enumerate() {
        let tol = 1e-5 * a.abs().max(f.abs()) + 1e-7 * f_scale.max(1.0);
        assert!((a - f).abs() <= tol, "{label}[{i}]: analytic {a:.10e} vs finite difference {f:.10e}");
    }
}

/// Central difference of f at x along coordinates `coords`.
fn fd(x: &[f64], coords: &[usize], f: &mut dyn FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xx = x.to_vec();
    coords
        .iter()
        .map(|&c| {
            let h = 1e-6 * x[c].abs().max(1.0);
            xx[c] = x[c] + h;
            let fp = f(&xx);
            xx[c] = x[c] - h;
            let fm = f(&xx);
            xx[c] = x[c];
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

fn pick(r: &mut ChaCha8Rng, n: usize, k: usize) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    let mut v: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = r.gen_range(i..n);
        v.swap(i, j);
    }
    v.truncate(k);
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Synthetic data

fn dims(n_batch: usize, n_cats: Vec<usize>, n_cont: usize) -> Dims {
    Dims {
        n_genes: 7,
        n_junctions: JUNC2ATSE.len(),
        n_atse: 5,
        n_batch,
        n_labels: 3,
        n_obs: 12,
        n_cats_per_cov: n_cats,
        n_cont,
    }
}

/// The shared generator (tests/common/synth.rs) with 60% of genes expressed.
fn synth_batch(d: &Dims, b: usize, seed: u64) -> Batch {
    synth::synth_batch(d, b, seed, 0.6)
}

/// Initial parameters moved away from their defaults (so no LayerNorm gain is exactly 1, no running
/// statistic exactly 0/1, weights are not symmetric…).
fn random_params(model: &SpliceVae, seed: u64) -> Params<f64> {
    let mut p = model.init_params::<f64>(seed);
    let mut r = rng(seed ^ 0xABCD);
    let layout = p.layout.clone();
    for e in layout.entries.iter() {
        let v = p.get_mut(layout.find(&e.name).unwrap());
        if e.name.ends_with("running_var") {
            v.iter_mut().for_each(|x| *x = r.gen_range(0.5..1.5));
        } else if e.name.ends_with("num_batches_tracked") || e.name == "cross_gate" {
        } else if e.name == "log_phi_j" {
            v.iter_mut().for_each(|x| *x = 1.0 + 0.5 * randn(&mut r));
        } else {
            v.iter_mut().for_each(|x| *x += 0.15 * randn(&mut r));
        }
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Whole-loss checks

struct Case {
    cfg: ModelConfig,
    dims: Dims,
    opts: StepOptions,
    with_adversary: bool,
}

fn base_opts() -> StepOptions {
    StepOptions {
        kl_weight: 0.7,
        cross_gate: 1.0,
        training: true,
        use_z_mean: false,
        routing: None,
        seed: 11,
        noise: Noise::Seeded,
    }
}

fn check_whole_loss(label: &str, case: Case, seed: u64) {
    let junc2atse = JUNC2ATSE.to_vec();
    let model = SpliceVae::new(case.cfg.clone(), case.dims.clone(), junc2atse).unwrap();
    let p = random_params(&model, seed);
    let batch = synth_batch(&case.dims, 6, seed + 1);
    let adv = if case.with_adversary {
        let a = Adversary::new(model.arch.l, case.dims.n_batch).unwrap();
        let ap = a.init_params::<f64>(seed + 2);
        Some((a, ap))
    } else {
        None
    };
    // `splicing_decoder_effect_prior` uses the minibatch covariance C of the splicing output layer's
    // input as a stop-gradient metric: the finite differences hold C at the base point, so that term is
    // λ Σ_j W_j C₀ W_jᵀ / N for every perturbed parameter vector.
    let metric0 = if case.cfg.splicing_decoder_effect_prior != 0.0 {
        model.forward(&p, &batch, &case.opts).unwrap().effect_prior_metric()
    } else {
        None
    };
    let total = |pp: &Params<f64>| -> f64 {
        let fw = model.forward(pp, &batch, &case.opts).unwrap();
        let mut l = fw.out.loss;
        if let Some(c0) = &metric0 {
            l += model.spl_decoder_effect_prior_at(pp, c0) - fw.out.decoder_effect_prior;
        }
        if let Some((a, ap)) = &adv {
            l += a.fool(ap, &fw.out.inference.z, &batch.batch, true, 5).unwrap().loss;
        }
        l
    };
    let fw = model.forward(&p, &batch, &case.opts).unwrap();
    let extra = adv.as_ref().map(|(a, ap)| a.fool(ap, &fw.out.inference.z, &batch.batch, true, 5).unwrap().dz);
    let g = model.backward(&p, &batch, &fw, extra.as_ref()).unwrap();
    let l0 = total(&p);
    assert!(l0.is_finite());
    let mut r = rng(seed + 3);
    let mut n_checked = 0;
    let mut n_nonzero = 0;
    for (ei, e) in model.layout.entries.iter().enumerate() {
        if !e.kind.trainable() {
            continue;
        }
        let coords = pick(&mut r, e.len, 3);
        let an: Vec<f64> = coords.iter().map(|&c| g.get(ei).unwrap()[c]).collect();
        let base = p.get(ei).to_vec();
        let mut f = |x: &[f64]| {
            let mut pp = p.clone();
            pp.get_mut(ei).copy_from_slice(x);
            total(&pp)
        };
        let fdv = fd(&base, &coords, &mut f);
        assert_close(&format!("{label}: {}", e.name), &an, &fdv, l0.abs());
        n_checked += coords.len();
        n_nonzero += an.iter().filter(|v| v.abs() > 1e-9).count();
    }
    // Guard against a vacuous check (everything zero).
    assert!(n_nonzero * 2 > n_checked, "{label}: only {n_nonzero} of {n_checked} gradients non-zero");
}

#[test]
fn whole_loss_default_model_with_dropout() {
    let cfg = ModelConfig { n_hidden: Some(8), n_latent: Some(3), code_dim: 4, h_hidden_dim: 6, encoder_hidden_dim: 5, max_nobs: 4, dropout_rate: 0.2, ..ModelConfig::default() };
    check_whole_loss("default", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: false }, 1);
}

#[test]
fn whole_loss_paper_config() {
    let cfg = ModelConfig { n_hidden: Some(8), n_latent: Some(3), code_dim: 4, h_hidden_dim: 6, encoder_hidden_dim: 5, dropout_rate: 0.1, ..ModelConfig::paper() };
    check_whole_loss("paper", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: false }, 2);
}

#[test]
fn whole_loss_vanilla_binomial_universal_mmd_nb_batchnorm() {
    let cfg = ModelConfig {
        n_hidden: Some(8),
        n_latent: Some(3),
        splicing_encoder_architecture: SplicingEncoderArch::Vanilla,
        splicing_decoder_architecture: SplicingDecoderArch::Vanilla,
        expression_architecture: ExpressionArch::Vanilla,
        splicing_loss_type: SplicingLoss::Binomial,
        modality_weights: ModalityWeights::Universal,
        modality_penalty: ModalityPenalty::Mmd,
        gene_likelihood: GeneLikelihood::Nb,
        use_batch_norm: NormPlacement::Encoder,
        use_layer_norm: NormPlacement::None,
        dropout_rate: 0.15,
        ..ModelConfig::default()
    };
    check_whole_loss("vanilla-binomial", Case { cfg, dims: dims(3, vec![], 0), opts: base_opts(), with_adversary: false }, 3);
}

#[test]
fn whole_loss_betabinomial_concat_poisson_covariates() {
    let cfg = ModelConfig {
        n_hidden: Some(8),
        n_latent: Some(3),
        code_dim: 4,
        h_hidden_dim: 6,
        encoder_hidden_dim: 5,
        splicing_loss_type: SplicingLoss::BetaBinomial,
        modality_weights: ModalityWeights::Concatenate,
        gene_likelihood: GeneLikelihood::Poisson,
        dispersion: Dispersion::GeneBatch,
        expression_architecture: ExpressionArch::Vanilla,
        use_batch_norm: NormPlacement::Both,
        deeply_inject_covariates: true,
        encode_covariates: true,
        dropout_rate: 0.0,
        ..ModelConfig::default()
    };
    let opts = StepOptions { cross_gate: 0.4, ..base_opts() };
    check_whole_loss("bb-concat", Case { cfg, dims: dims(2, vec![3, 2, 1], 2), opts, with_adversary: false }, 4);
}

#[test]
fn whole_loss_dm_scalar_cell_ln_sum_pooling() {
    let cfg = ModelConfig {
        n_hidden: Some(8),
        n_latent: Some(3),
        code_dim: 4,
        h_hidden_dim: 6,
        encoder_hidden_dim: 5,
        dm_concentration: DmConcentration::Scalar,
        // (§12.26's correction: the softmax's ε = 0 through the whole model; default and paper keep 1e-8)
        dm_exact_softmax: true,
        modality_weights: ModalityWeights::Cell,
        latent_distribution: LatentDistribution::Ln,
        pool_mode: PoolMode::Sum,
        max_nobs: 3,
        use_layer_norm: NormPlacement::None,
        ..ModelConfig::default()
    };
    check_whole_loss("dmscalar-cell-ln", Case { cfg, dims: dims(1, vec![], 0), opts: base_opts(), with_adversary: false }, 5);
}

#[test]
fn whole_loss_library_encoder_no_penalty() {
    let cfg = ModelConfig {
        n_hidden: Some(8),
        n_latent: Some(3),
        use_size_factor_key: false,
        gene_likelihood: GeneLikelihood::Nb,
        splicing_encoder_architecture: SplicingEncoderArch::Vanilla,
        splicing_decoder_architecture: SplicingDecoderArch::Vanilla,
        expression_architecture: ExpressionArch::Vanilla,
        use_layer_norm: NormPlacement::Encoder,
        modality_penalty: ModalityPenalty::None,
        ..ModelConfig::default()
    };
    check_whole_loss("library-encoder", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: false }, 6);
}

#[test]
fn whole_loss_bce_jeffreys_exact_gene_label_cont_without_encoding() {
    let cfg = ModelConfig {
        n_hidden: Some(8),
        n_latent: Some(3),
        code_dim: 4,
        h_hidden_dim: 6,
        encoder_hidden_dim: 5,
        splicing_loss_type: SplicingLoss::Bce,
        modality_penalty: ModalityPenalty::JeffreysExact,
        dispersion: Dispersion::GeneLabel,
        mask_cells_without_splicing: true,
        splicing_loss_weight: 0.6,
        ..ModelConfig::default()
    };
    check_whole_loss("bce-jexact", Case { cfg, dims: dims(2, vec![2], 2), opts: base_opts(), with_adversary: false }, 7);
}

#[test]
fn whole_loss_mmd_rbf_gene_cell_perdim_masked_splicing() {
    let cfg = ModelConfig {
        n_hidden: Some(8),
        n_latent: Some(3),
        code_dim: 4,
        h_hidden_dim: 6,
        encoder_hidden_dim: 5,
        modality_penalty: ModalityPenalty::MmdRbf,
        modality_weights: ModalityWeights::PerDimensionWeightedAverage,
        dispersion: Dispersion::GeneCell,
        expression_architecture: ExpressionArch::Vanilla,
        mask_cells_without_splicing: true,
        ..ModelConfig::default()
    };
    check_whole_loss("mmdrbf-genecell", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: false }, 8);
}

#[test]
fn whole_loss_gene_cell_linear_routing_eval_batchnorm() {
    let cfg = ModelConfig {
        n_hidden: Some(8),
        n_latent: Some(3),
        code_dim: 4,
        h_hidden_dim: 6,
        encoder_hidden_dim: 5,
        dispersion: Dispersion::GeneCell,
        use_batch_norm: NormPlacement::Both,
        ..ModelConfig::default()
    };
    let opts = StepOptions { training: false, routing: Some(Modality::Splicing), ..base_opts() };
    check_whole_loss("genecell-linear-routed", Case { cfg: cfg.clone(), dims: dims(2, vec![], 0), opts, with_adversary: false }, 9);
    let opts = StepOptions { training: true, routing: Some(Modality::Expression), use_z_mean: true, ..base_opts() };
    check_whole_loss("routed-expression", Case { cfg, dims: dims(2, vec![], 0), opts, with_adversary: false }, 10);
}

#[test]
fn whole_loss_with_adversary_fool_term() {
    let cfg = ModelConfig { n_hidden: Some(8), n_latent: Some(3), code_dim: 4, h_hidden_dim: 6, encoder_hidden_dim: 5, ..ModelConfig::default() };
    check_whole_loss("adversary", Case { cfg, dims: dims(3, vec![], 0), opts: base_opts(), with_adversary: true }, 12);
}

// ---------------------------------------------------------------------------------------------
// Op-level checks

/// FCLayers (Linear, BN, LN, activation, dropout, covariate injection): parameter and input grads
/// of a random linear functional of the output.
fn check_fclayers(model: &SpliceVae, fc: &splicevi::model::arch::FcLayers, training: bool, sparse: bool, seed: u64) {
    let mut r = rng(seed);
    let p = random_params(model, seed);
    let d = &model.dims;
    let batch = synth_batch(d, 6, seed + 1);
    let mut cats: Vec<&[u32]> = vec![&batch.batch];
    cats.extend(batch.cats.iter().map(|c| c.as_slice()));
    let cov = Cov { cont: &batch.cont, n_cont: batch.n_cont, cats };
    let n_in = fc.n_in();
    let x = rand_mat(&mut r, 6, n_in, 1.0);
    let xs = Sparse {
        rows: 6,
        cols: n_in,
        indptr: (0..=6).map(|i| i * n_in.div_ceil(2)).collect(),
        indices: (0..6).flat_map(|_| (0..n_in).step_by(2).map(|c| c as u32)).collect(),
        values: (0..6 * n_in.div_ceil(2)).map(|_| randn(&mut r)).collect(),
    };
    let wout = rand_mat(&mut r, 6, fc.n_out(), 1.0);
    let mode = Mode { training, seed: 3 };
    let run = |pp: &Params<f64>, xx: &Mat<f64>| -> f64 {
        let mut upd = BufUpdates::new();
        let input = if sparse { MainIn::Sparse(&xs) } else { MainIn::Dense(xx) };
        let (y, _) = ops::fc_forward(fc, pp, input, &cov, mode, &mut upd).unwrap();
        y.data.iter().zip(&wout.data).map(|(a, b)| a * b).sum()
    };
    let mut upd = BufUpdates::new();
    let input = if sparse { MainIn::Sparse(&xs) } else { MainIn::Dense(&x) };
    let (_, cache) = ops::fc_forward(fc, &p, input, &cov, mode, &mut upd).unwrap();
    let mut g = Grads::zeros(p.layout.clone());
    let dx = ops::fc_backward(fc, &p, &cache, wout.clone(), &mut g, !sparse);
    let f0 = run(&p, &x);
    let mut idxs = vec![];
    for blk in &fc.blocks {
        idxs.push(blk.lin.w);
        idxs.extend(blk.lin.b);
        if let Some(bn) = &blk.bn {
            idxs.push(bn.w);
            idxs.push(bn.b);
        }
    }
    for ei in idxs {
        let e = &p.layout.entries[ei];
        let coords = pick(&mut r, e.len, 5);
        let an: Vec<f64> = coords.iter().map(|&c| g.get(ei).unwrap()[c]).collect();
        let mut f = |v: &[f64]| {
            let mut pp = p.clone();
            pp.get_mut(ei).copy_from_slice(v);
            run(&pp, &x)
        };
        let fdv = fd(&p.get(ei).to_vec(), &coords, &mut f);
        assert_close(&format!("fclayers {}", e.name), &an, &fdv, f0.abs());
    }
    if let Some(dx) = dx {
        let coords = pick(&mut r, x.data.len(), 8);
        let an: Vec<f64> = coords.iter().map(|&c| dx.data[c]).collect();
        let mut f = |v: &[f64]| run(&p, &Mat::from_vec(6, n_in, v.to_vec()));
        let fdv = fd(&x.data, &coords, &mut f);
        assert_close("fclayers dx", &an, &fdv, f0.abs());
    }
}

#[test]
fn op_fclayers_bn_ln_dropout_covariates() {
    let cfg = ModelConfig {
        n_hidden: Some(8),
        n_latent: Some(3),
        expression_architecture: ExpressionArch::Vanilla,
        splicing_encoder_architecture: SplicingEncoderArch::Vanilla,
        use_batch_norm: NormPlacement::Both,
        use_layer_norm: NormPlacement::Both,
        deeply_inject_covariates: true,
        encode_covariates: true,
        dropout_rate: 0.25,
        ..ModelConfig::default()
    };
    let model = SpliceVae::new(cfg, dims(3, vec![2, 3], 2), JUNC2ATSE.to_vec()).unwrap();
    let ExprDecP::Vanilla { fc, .. } = &model.arch.z_dec_expr else { panic!() };
    check_fclayers(&model, fc, true, false, 21); // BN batch stats, ReLU, injected covariates
    check_fclayers(&model, fc, false, false, 22); // BN running stats
    let SplEncP::Vanilla(enc) = &model.arch.z_enc_spl else { panic!() };
    check_fclayers(&model, &enc.fc, true, false, 23); // LeakyReLU + dropout + BN + LN
    check_fclayers(&model, &model.arch.z_enc_expr.fc, true, true, 24); // sparse first layer
}

/// The analytic gradient `g` of every partial-encoder parameter at `n` random coordinates against f64
/// central differences of `run`.
fn check_partial_grads(
    label: &str,
    pe: &splicevi::model::arch::PartialEncP,
    p: &Params<f64>,
    g: &Grads<f64>,
    r: &mut ChaCha8Rng,
    n: usize,
    run: &dyn Fn(&Params<f64>) -> f64,
) {
    let f0 = run(p);
    for ei in [pe.emb, pe.h0.w, pe.h0.b.unwrap(), pe.ln1_w, pe.ln1_b, pe.h4.w, pe.h4.b.unwrap(), pe.ln5_w, pe.ln5_b] {
        let e = &p.layout.entries[ei];
        let coords = pick(r, e.len, n);
        let an: Vec<f64> = coords.iter().map(|&c| g.get(ei).unwrap()[c]).collect();
        let mut f = |v: &[f64]| {
            let mut pp = p.clone();
            pp.get_mut(ei).copy_from_slice(v);
            run(&pp)
        };
        let fdv = fd(&p.get(ei).to_vec(), &coords, &mut f);
        assert_close(&format!("{label} {}", e.name), &an, &fdv, f0.abs());
    }
}

#[test]
fn op_partial_encoder() {
    for (pool, chunk, training, seed) in [(PoolMode::Mean, -1, false, 31), (PoolMode::Sum, 2, true, 32), (PoolMode::Mean, 5, true, 33)] {
        let cfg = ModelConfig { code_dim: 4, h_hidden_dim: 6, pool_mode: pool, max_nobs: chunk, dropout_rate: 0.3, ..ModelConfig::default() };
        let model = SpliceVae::new(cfg, dims(2, vec![], 0), JUNC2ATSE.to_vec()).unwrap();
        let SplEncP::Partial(pe) = &model.arch.z_enc_spl else { panic!() };
        let p = random_params(&model, seed);
        let batch = synth_batch(&model.dims, 6, seed + 1);
        let mut r = rng(seed + 2);
        let w = rand_mat(&mut r, 6, 4, 1.0);
        let mode = Mode { training, seed: 9 };
        let run = |pp: &Params<f64>| -> f64 {
            let c = partial::partial_forward(pe, pp, &batch.spl, mode);
            c.pool.data.iter().zip(&w.data).map(|(a, b)| a * b).sum()
        };
        let cache = partial::partial_forward(pe, &p, &batch.spl, mode);
        // Chunking never changes the result.
        let mut pe1 = pe.clone();
        pe1.chunk = usize::MAX;
        let c1 = partial::partial_forward(&pe1, &p, &batch.spl, mode);
        for (a, b) in cache.pool.data.iter().zip(&c1.pool.data) {
            assert!((a - b).abs() < 1e-12, "chunked vs single pass: {a} vs {b}");
        }
        let mut g = Grads::zeros(p.layout.clone());
        partial::partial_backward(pe, &p, &batch.spl, &cache, &w, mode, &mut g);
        // The backward from the forward's stash of second-block activations and the one that
        // recomputes them give the same bits. Only a training pass keeps a stash.
        assert_eq!(!cache.stash.is_empty(), training, "a small training batch keeps its stash, an eval pass none");
        let mut recomputed = cache.clone();
        recomputed.stash.clear();
        let mut g2 = Grads::zeros(p.layout.clone());
        partial::partial_backward(pe, &p, &batch.spl, &recomputed, &w, mode, &mut g2);
        assert_eq!(g.data, g2.data, "stashed vs recomputed backward");
        check_partial_grads("partial", pe, &p, &g, &mut r, 6, &run);
    }
}

#[test]
fn op_likelihoods() {
    let mut r = rng(41);
    for _ in 0..40 {
        let x = if r.gen_bool(0.3) { 0.0 } else { r.gen_range(1..40) as f64 };
        let mu = r.gen_range(0.05..30.0);
        let th = r.gen_range(0.1..20.0);
        let pi = r.gen_range(-3.0..3.0);
        let v = [mu, th, pi];
        for kind in 0..3 {
            let f = |v: &[f64]| match kind {
                0 => lik::zinb(x, v[0], v[1], v[2]).ll,
                1 => lik::nb(x, v[0], v[1]).ll,
                _ => lik::poisson(x, v[0]).ll,
            };
            let a = match kind {
                0 => lik::zinb(x, mu, th, pi),
                1 => lik::nb(x, mu, th),
                _ => lik::poisson(x, mu),
            };
            let fdv = fd(&v, &[0, 1, 2], &mut |vv| f(vv));
            assert_close(&format!("expr lik {kind} x={x}"), &[a.d_mu, a.d_theta, a.d_pi], &fdv, f(&v).abs());
        }
        let n = r.gen_range(1..30) as f64;
        let k = (n * r.gen_range(0.0..1.0f64)).floor();
        let p = r.gen_range(0.02..0.98);
        let phi = r.gen_range(0.3..50.0);
        let (l, dp) = lik::binomial(k, n, p);
        assert_close("binomial", &[dp], &fd(&[p], &[0], &mut |v| lik::binomial(k, n, v[0]).0), l.abs());
        let psi = k / n;
        let (l, dp) = lik::bce(psi, p);
        assert_close("bce", &[dp], &fd(&[p], &[0], &mut |v| lik::bce(psi, v[0]).0), l.abs());
        let (l, dp, dphi) = lik::beta_binomial(k, n, p, phi);
        let fdv = fd(&[p, phi], &[0, 1], &mut |v| lik::beta_binomial(k, n, v[0], v[1]).0);
        assert_close("beta-binomial", &[dp, dphi], &fdv, l.abs());
        let (l, da) = lik::nbetaln(n, phi);
        assert_close("nbetaln", &[da], &fd(&[phi], &[0], &mut |v| lik::nbetaln(n, v[0]).0), l.abs());
    }
}

fn posteriors(r: &mut ChaCha8Rng, b: usize, d: usize) -> Vec<Mat<f64>> {
    let mu_e = rand_mat(r, b, d, 1.0);
    let mu_s = rand_mat(r, b, d, 1.0);
    let v_e = Mat::from_vec(b, d, (0..b * d).map(|_| r.gen_range(0.2..2.0)).collect());
    let v_s = Mat::from_vec(b, d, (0..b * d).map(|_| r.gen_range(0.7..2.0)).collect());
    vec![mu_e, v_e, mu_s, v_s]
}

/// Flatten the four posteriors into one vector and back.
fn flat(ps: &[Mat<f64>]) -> Vec<f64> {
    ps.iter().flat_map(|m| m.data.clone()).collect()
}
fn unflat(v: &[f64], b: usize, d: usize) -> Vec<Mat<f64>> {
    (0..4).map(|q| Mat::from_vec(b, d, v[q * b * d..(q + 1) * b * d].to_vec())).collect()
}
fn pg_flat(g: &latent::PostGrads<f64>) -> Vec<f64> {
    [&g.mu_e, &g.v_e, &g.mu_s, &g.v_s].iter().flat_map(|m| m.data.clone()).collect()
}

#[test]
fn op_mixing_kl_penalties() {
    let (b, d) = (5, 3);
    let mut r = rng(51);
    let ps = posteriors(&mut r, b, d);
    let x0 = flat(&ps);
    let wm = rand_mat(&mut r, b, d, 1.0);
    let wv = rand_mat(&mut r, b, d, 1.0);
    let mask_e = vec![true, false, true, true, true];
    let mask_s = vec![true, true, true, false, true];
    let paired: Vec<bool> = mask_e.iter().zip(&mask_s).map(|(a, b)| a & b).collect();
    let raw: Vec<f64> = (0..2 * b).map(|_| randn(&mut r)).collect();
    let coords: Vec<usize> = (0..x0.len()).collect();
    // softmax mixing (the original's √w on the variances, and `mixing_variance = independent`'s w²):
    // functional Σ wm·qz_m + wv·qz_v
    for independent in [false, true] {
        let f_soft = |x: &[f64], raw: &[f64]| -> f64 {
            let p = unflat(x, b, d);
            let (qm, qv, _) = latent::mix_softmax_fwd(&p[0], &p[1], &p[2], &p[3], raw, &mask_e, &mask_s, independent);
            qm.data.iter().zip(&wm.data).map(|(a, b)| a * b).sum::<f64>()
                + qv.data.iter().zip(&wv.data).map(|(a, b)| a * b).sum::<f64>()
        };
        let (_, qv, c) = latent::mix_softmax_fwd(&ps[0], &ps[1], &ps[2], &ps[3], &raw, &mask_e, &mask_s, independent);
        let (g, draw) = latent::mix_softmax_bwd(&c, &ps[0], &ps[1], &ps[2], &ps[3], &mask_e, &mask_s, &wm, &wv);
        let label = if independent { "softmax mix (independent)" } else { "softmax mix" };
        assert_close(&format!("{label} posteriors"), &pg_flat(&g), &fd(&x0, &coords, &mut |x| f_soft(x, &raw)), 1.0);
        let rc: Vec<usize> = (0..raw.len()).collect();
        assert_close(&format!("{label} weights"), &draw, &fd(&raw, &rc, &mut |rw| f_soft(&x0, rw)), 1.0);
        // The variance against §4.2's formula (√w) and the variance of w_e·z_e + w_s·z_s (w²).
        for i in 0..b {
            let (we, ws) = (c.w[2 * i], c.w[2 * i + 1]);
            let (ce, cs) = if independent { (we * we, ws * ws) } else { (we.sqrt(), ws.sqrt()) };
            for t in 0..d {
                let want = (ce * ps[1].at(i, t) + cs * ps[3].at(i, t)).max(latent::QZV_MIN);
                assert!((qv.at(i, t) - want).abs() <= 1e-12 * want, "{label}: qz_v[{i},{t}] = {}, want {want}", qv.at(i, t));
            }
        }
    }
    // per-dimension mixing (with and without the splicing mask)
    let rawd: Vec<f64> = (0..d).map(|_| randn(&mut r)).collect();
    for ms in [None, Some(mask_s.as_slice())] {
        let f_pd = |x: &[f64], rw: &[f64]| -> f64 {
            let p = unflat(x, b, d);
            let (qm, qv, _) = latent::mix_perdim_fwd(&p[0], &p[1], &p[2], &p[3], rw, ms);
            qm.data.iter().zip(&wm.data).map(|(a, b)| a * b).sum::<f64>()
                + qv.data.iter().zip(&wv.data).map(|(a, b)| a * b).sum::<f64>()
        };
        let (_, _, c) = latent::mix_perdim_fwd(&ps[0], &ps[1], &ps[2], &ps[3], &rawd, ms);
        let (g, draw) = latent::mix_perdim_bwd(&c, &ps[0], &ps[1], &ps[2], &ps[3], ms, &wm, &wv);
        assert_close("per-dim mix posteriors", &pg_flat(&g), &fd(&x0, &coords, &mut |x| f_pd(x, &rawd)), 1.0);
        let dc: Vec<usize> = (0..d).collect();
        assert_close("per-dim mix weights", &draw, &fd(&rawd, &dc, &mut |rw| f_pd(&x0, rw)), 1.0);
    }
    // KL
    let dkl: Vec<f64> = (0..b).map(|_| randn(&mut r)).collect();
    let f_kl = |x: &[f64]| -> f64 {
        let p = unflat(x, b, d);
        latent::kl_fwd(&p[0], &p[1]).iter().zip(&dkl).map(|(a, b)| a * b).sum()
    };
    let mut dm = Mat::zeros(b, d);
    let mut dv = Mat::zeros(b, d);
    latent::kl_bwd(&ps[0], &ps[1], &dkl, &mut dm, &mut dv);
    let kc: Vec<usize> = (0..2 * b * d).collect();
    let an: Vec<f64> = dm.data.iter().chain(&dv.data).copied().collect();
    assert_close("kl", &an, &fd(&x0, &kc, &mut |x| f_kl(x)), 1.0);
    // penalties
    type Fwd = fn(&[Mat<f64>], &[bool]) -> f64;
    type Bwd = fn(&[Mat<f64>], &[bool], &mut latent::PostGrads<f64>);
    let pens: Vec<(&str, Fwd, Bwd)> = vec![
        ("jeffreys", |p, m| latent::jeffreys_fwd(&p[0], &p[1], &p[2], &p[3], m), |p, m, g| latent::jeffreys_bwd(&p[0], &p[1], &p[2], &p[3], m, 1.0, g)),
        ("jeffreys-exact", |p, m| latent::jeffreys_exact_fwd(&p[0], &p[1], &p[2], &p[3], m), |p, m, g| latent::jeffreys_exact_bwd(&p[0], &p[1], &p[2], &p[3], m, 1.0, g)),
        ("mmd", |p, m| latent::mmd_mean_dist_fwd(&p[0], &p[2], m), |p, m, g| latent::mmd_mean_dist_bwd(&p[0], &p[2], m, 1.0, g)),
    ];
    for (name, f, bw) in pens {
        let mut g = latent::PostGrads::zeros(b, d);
        bw(&ps, &paired, &mut g);
        let v0 = f(&ps, &paired);
        assert_close(name, &pg_flat(&g), &fd(&x0, &coords, &mut |x| f(&unflat(x, b, d), &paired)), v0.abs());
    }
    // RBF MMD on samples (z_e = first block, z_s = third block)
    let f_rbf = |x: &[f64]| {
        let p = unflat(x, b, d);
        latent::mmd_rbf_fwd(&p[0], &p[2], &paired).0
    };
    let (v0, info) = latent::mmd_rbf_fwd(&ps[0], &ps[2], &paired);
    assert!(info.med_pair.is_some() && v0 > 0.0);
    let mut dze = Mat::zeros(b, d);
    let mut dzs = Mat::zeros(b, d);
    latent::mmd_rbf_bwd(&ps[0], &ps[2], &paired, &info, 1.0, &mut dze, &mut dzs);
    let fdv = fd(&x0, &coords, &mut |x| f_rbf(x));
    let an: Vec<f64> = dze.data.iter().chain(&vec![0.0; b * d]).chain(&dzs.data).chain(&vec![0.0; b * d]).copied().collect();
    assert_close("mmd-rbf", &an, &fdv, v0.abs());
}

#[test]
fn op_adversary_classifier_and_fool() {
    let a = Adversary::new(4, 3).unwrap();
    let mut p = a.init_params::<f64>(61);
    let mut r = rng(62);
    p.data.iter_mut().for_each(|v| *v += 0.1 * randn(&mut r));
    let z = rand_mat(&mut r, 7, 4, 1.0);
    let bidx: Vec<u32> = (0..7).map(|i| (i % 3) as u32).collect();
    for fool in [false, true] {
        let run = |pp: &Params<f64>, zz: &Mat<f64>| {
            if fool {
                a.fool(pp, zz, &bidx, true, 4).unwrap()
            } else {
                a.classifier_step(pp, zz, &bidx, true, 4).unwrap()
            }
        };
        let res = run(&p, &z);
        let coords: Vec<usize> = (0..z.data.len()).collect();
        let fdz = fd(&z.data, &coords, &mut |x| run(&p, &Mat::from_vec(7, 4, x.to_vec())).loss);
        assert_close(&format!("adversary dz (fool={fool})"), &res.dz.data, &fdz, res.loss.abs());
        let pc = pick(&mut r, p.layout.n_trainable, 25);
        let an: Vec<f64> = pc.iter().map(|&c| res.grads.data[c]).collect();
        let x0 = p.data.clone();
        let fdp = fd(&x0, &pc, &mut |x| {
            let mut pp = p.clone();
            pp.data.copy_from_slice(x);
            run(&pp, &z).loss
        });
        assert_close(&format!("adversary params (fool={fool})"), &an, &fdp, res.loss.abs());
    }
}

/// Robust options of the partial encoder (docs/robust.md): centred PSI with the reference code h(0)
/// subtracted, the fixed pooling divisor; training (dropout) and eval mode.
/// A batch whose inputs repeat (0, 1, 0.5, 0.25 and a few free values), so that most pairs share
/// their first block with others (`partial::Groups`), at `n_cells` cells over the 11 junctions.
fn shared_input_batch(n_cells: usize, seed: u64, levels: Option<u32>) -> SplBatch {
    let mut r = rng(seed);
    let mut spl = SplBatch { n_junctions: JUNC2ATSE.len(), indptr: vec![0], ..Default::default() };
    for c in 0..n_cells {
        for j in 0..JUNC2ATSE.len() {
            if c != 2 && r.gen_bool(0.7) {
                let psi: f32 = match (levels, r.gen_range(0..6)) {
                    // Many distinct inputs per junction (the grouping's map path), some repeated.
                    (Some(n), _) => r.gen_range(0..=n) as f32 / n as f32,
                    (None, 0 | 1) => 0.0,
                    (None, 2) => 1.0,
                    (None, 3) => 0.5,
                    (None, 4) => 0.25,
                    (None, _) => r.gen_range(0.0..1.0),
                };
                spl.junction.push(j as u32);
                spl.psi.push(psi);
                spl.k.push(psi * 4.0);
                spl.n.push(4.0);
            }
        }
        spl.indptr.push(spl.junction.len());
    }
    spl
}

/// model.md §2.5 written out pair by pair in f64, with the forward's own dropout keep bits: the
/// reference for the grouped computation of `partial::partial_forward`.
fn naive_partial_pool(
    pe: &splicevi::model::arch::PartialEncP,
    p: &Params<f64>,
    spl: &SplBatch,
    keep_by_pair: &[u64],
    training: bool,
) -> Vec<f64> {
    let (hh, dd) = (pe.h_hidden, pe.code_dim);
    let (emb, w0, b0, g1, be1) =
        (p.get(pe.emb), p.get(pe.h0.w), p.get(pe.h0.b.unwrap()), p.get(pe.ln1_w), p.get(pe.ln1_b));
    let (w4, b4, g5, be5) = (p.get(pe.h4.w), p.get(pe.h4.b.unwrap()), p.get(pe.ln5_w), p.get(pe.ln5_b));
    let ln = |x: &[f64]| -> Vec<f64> {
        let n = x.len() as f64;
        let m = x.iter().sum::<f64>() / n;
        let v = x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / n;
        x.iter().map(|a| (a - m) / (v + 1e-5).sqrt()).collect()
    };
    let dropout = training && pe.dropout > 0.0;
    let kw = hh.div_ceil(64);
    let mut pool = vec![0.0; spl.n_cells() * dd];
    for c in 0..spl.n_cells() {
        let range = spl.indptr[c]..spl.indptr[c + 1];
        for e in range.clone() {
            let j = spl.junction[e] as usize;
            let psi = spl.psi[e] as f64;
            let f = &emb[j * dd..(j + 1) * dd];
            let nrm = f.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-8);
            let t: Vec<f64> = std::iter::once(psi).chain(f.iter().map(|v| psi * v / nrm)).collect();
            let a1: Vec<f64> =
                (0..hh).map(|u| b0[u] + (0..=dd).map(|k| w0[u * (dd + 1) + k] * t[k]).sum::<f64>()).collect();
            let d1: Vec<f64> = ln(&a1)
                .iter()
                .enumerate()
                .map(|(u, x)| {
                    let v = (x * g1[u] + be1[u]).max(0.0);
                    match dropout {
                        false => v,
                        true if keep_by_pair[e * kw + u / 64] >> (u % 64) & 1 == 1 => v / (1.0 - pe.dropout),
                        true => 0.0,
                    }
                })
                .collect();
            let h2: Vec<f64> = (0..dd).map(|k| b4[k] + (0..hh).map(|u| w4[k * hh + u] * d1[u]).sum::<f64>()).collect();
            for (k, x) in ln(&h2).iter().enumerate() {
                pool[c * dd + k] += (x * g5[k] + be5[k]).max(0.0);
            }
        }
        let den = if pe.pool_mean { range.len().max(1) as f64 } else { 1.0 };
        pool[c * dd..(c + 1) * dd].iter_mut().for_each(|v| *v /= den);
    }
    pool
}

#[test]
fn op_partial_encoder_shared_inputs() {
    // Hh = 70 takes two keep words per pair (the last one partial) and hashes pair by pair; Hh = 64
    // one whole word, hashed a micro-chunk at a time.
    // The last case: 40 cells, up to 41 distinct inputs at a junction.
    let cases = [
        (70, PoolMode::Mean, true, 51, 14, None),
        (64, PoolMode::Sum, true, 52, 14, None),
        (6, PoolMode::Mean, false, 53, 14, None),
        (6, PoolMode::Mean, true, 54, 40, Some(40)),
    ];
    for (hh, pool, training, seed, n_cells, levels) in cases {
        let cfg =
            ModelConfig { code_dim: 4, h_hidden_dim: hh, pool_mode: pool, dropout_rate: 0.3, ..ModelConfig::default() };
        let model = SpliceVae::new(cfg, dims(2, vec![], 0), JUNC2ATSE.to_vec()).unwrap();
        let SplEncP::Partial(pe) = &model.arch.z_enc_spl else { panic!() };
        let p = random_params(&model, seed);
        let spl = shared_input_batch(n_cells, seed + 1, levels);
        let mode = Mode { training, seed: 5 };
        let cache = partial::partial_forward(pe, &p, &spl, mode);
        // Most pairs share a group and the input-0 group spans junctions; with many levels, some
        // junction has more distinct inputs than the grouping scans for (17).
        let per_junction = (0..JUNC2ATSE.len()).map(|j| cache.groups.table.jn[1..].iter().filter(|&&x| x as usize == j).count());
        match levels {
            None => assert!(
                cache.groups.n_zero > 0 && cache.groups.table.jn.len() < spl.nnz() / 2,
                "{} groups for {} pairs",
                cache.groups.table.jn.len(),
                spl.nnz()
            ),
            Some(_) => assert!(per_junction.max().unwrap() > 16, "too few distinct inputs at every junction"),
        }
        let keep = cache.keep_by_pair();
        assert_eq!(keep.is_empty(), !training);
        let want = naive_partial_pool(pe, &p, &spl, &keep, training);
        for (k, (a, b)) in cache.pool.data.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-11 * (1.0 + b.abs()), "Hh {hh}: pool[{k}] grouped {a} vs pair by pair {b}");
        }
        let mut r = rng(seed + 2);
        let w = rand_mat(&mut r, spl.n_cells(), 4, 1.0);
        let run = |pp: &Params<f64>| -> f64 {
            let c = partial::partial_forward(pe, pp, &spl, mode);
            c.pool.data.iter().zip(&w.data).map(|(a, b)| a * b).sum()
        };
        let mut g = Grads::zeros(p.layout.clone());
        partial::partial_backward(pe, &p, &spl, &cache, &w, mode, &mut g);
        if training {
            let mut recomputed = cache.clone();
            recomputed.stash.clear();
            let mut g2 = Grads::zeros(p.layout.clone());
            partial::partial_backward(pe, &p, &spl, &recomputed, &w, mode, &mut g2);
            assert_eq!(g.data, g2.data, "stashed vs recomputed backward");
        }
        check_partial_grads(&format!("partial, shared inputs, Hh {hh}"), pe, &p, &g, &mut r, 8, &run);
    }
}

#[test]
fn op_partial_encoder_centered_fixed_divisor() {
    for (pool, training, seed) in [(PoolMode::Fixed, false, 41), (PoolMode::Fixed, true, 42), (PoolMode::Mean, true, 43), (PoolMode::Sum, false, 44)] {
        let cfg = ModelConfig { code_dim: 4, h_hidden_dim: 6, pool_mode: pool, partial_center_psi: true, max_nobs: 3, dropout_rate: 0.3, ..ModelConfig::default() };
        let model = SpliceVae::new(cfg, dims(2, vec![], 0), JUNC2ATSE.to_vec()).unwrap();
        let SplEncP::Partial(pe) = &model.arch.z_enc_spl else { panic!() };
        let mut p = random_params(&model, seed);
        let mut r = rng(seed + 2);
        let center = pe.center.unwrap();
        p.get_mut(center).iter_mut().for_each(|v| *v = r.gen_range(0.2..0.8));
        if let Some(d) = pe.divisor {
            p.get_mut(d)[0] = 3.5;
        }
        let batch = synth_batch(&model.dims, 6, seed + 1);
        let w = rand_mat(&mut r, 6, 4, 1.0);
        let mode = Mode { training, seed: 9 };
        let run = |pp: &Params<f64>| -> f64 {
            let c = partial::partial_forward(pe, pp, &batch.spl, mode);
            c.pool.data.iter().zip(&w.data).map(|(a, b)| a * b).sum()
        };
        let cache = partial::partial_forward(pe, &p, &batch.spl, mode);
        let mut g = Grads::zeros(p.layout.clone());
        partial::partial_backward(pe, &p, &batch.spl, &cache, &w, mode, &mut g);
        check_partial_grads(&format!("centred partial ({pool:?}, training {training})"), pe, &p, &g, &mut r, 6, &run);
        // A junction at its population ratio contributes exactly zero (eval mode: no dropout).
        let mut at_center = batch.spl.clone();
        let cen = p.get(center).to_vec();
        for (psi, &j) in at_center.psi.iter_mut().zip(&at_center.junction) {
            *psi = cen[j as usize] as f32;
        }
        p.get_mut(center).iter_mut().zip(&cen).for_each(|(v, &c)| *v = c as f32 as f64);
        let c = partial::partial_forward(pe, &p, &at_center, Mode { training: false, seed: 0 });
        assert!(c.pool.data.iter().all(|v| v.abs() < 1e-12), "codes at the population PSI are not zero: {:?}", c.pool.data);
    }
}

/// The `robust` preset (vanilla splicing encoder, concatenated latents, log1p input) and its options on
/// the partial encoder with a weighted-average mixing (JeffreysExact, mask_cells_without_splicing,
/// linear last block, centred input, fixed divisor, library-normalised log1p input).
#[test]
fn whole_loss_robust_preset_and_partial_options() {
    let small = |c: ModelConfig| ModelConfig { n_hidden: Some(8), n_latent: Some(3), code_dim: 4, h_hidden_dim: 6, encoder_hidden_dim: 5, dropout_rate: 0.2, ..c };
    let cfg = small(ModelConfig::robust());
    check_whole_loss("robust", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: true }, 51);
    let cfg = small(ModelConfig {
        splicing_encoder_architecture: SplicingEncoderArch::Partial,
        modality_weights: ModalityWeights::Equal,
        expression_input: ExpressionInput::Log1pNormalized,
        max_nobs: 4,
        ..ModelConfig::robust()
    });
    check_whole_loss("robust partial", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: false }, 52);
    // The Gaussian prior on the splicing decoder's output weights, on both decoder architectures.
    for (i, arch) in [SplicingDecoderArch::Linear, SplicingDecoderArch::Vanilla].into_iter().enumerate() {
        let cfg = small(ModelConfig { splicing_decoder_prior: 0.7, splicing_decoder_architecture: arch, ..ModelConfig::robust() });
        check_whole_loss("robust decoder prior", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: false }, 53 + i as u64);
    }
    // Every cross_decoding under a partly open gate, on both splicing decoder architectures.
    for (i, cross) in [CrossDecoding::Both, CrossDecoding::Splicing, CrossDecoding::None].into_iter().enumerate() {
        for (a, arch) in [SplicingDecoderArch::Linear, SplicingDecoderArch::Vanilla].into_iter().enumerate() {
            let cfg = small(ModelConfig { cross_decoding: cross, splicing_decoder_architecture: arch, ..ModelConfig::robust() });
            let opts = StepOptions { cross_gate: 0.6, ..base_opts() };
            check_whole_loss(&format!("robust cross_decoding {cross} {arch}"), Case { cfg, dims: dims(2, vec![], 0), opts, with_adversary: false }, 55 + 2 * i as u64 + a as u64);
        }
    }
}

/// `cross_decoding` (concatenated latents): with the gate open, the expression decoder reads the splicing
/// half only under `both`, and the splicing decoder reads the expression half under `both` and
/// `splicing`, not under `none`. Each decoded output is compared for a latent and the same latent with
/// the other modality's half moved.
#[test]
fn cross_decoding_decides_which_decoder_reads_the_other_half() {
    let small = |c: ModelConfig| ModelConfig { n_hidden: Some(8), n_latent: Some(3), code_dim: 4, h_hidden_dim: 6, encoder_hidden_dim: 5, ..c };
    let d = dims(2, vec![], 0);
    let batch = synth_batch(&d, 5, 81);
    let mut r = rng(82);
    for (cross, expr_reads, spl_reads) in [(CrossDecoding::Both, true, true), (CrossDecoding::Splicing, false, true), (CrossDecoding::None, false, false)] {
        let model = SpliceVae::new(small(ModelConfig { cross_decoding: cross, ..ModelConfig::robust() }), d.clone(), JUNC2ATSE.to_vec()).unwrap();
        let p = random_params(&model, 83);
        let (l, half) = (model.arch.l, model.arch.d);
        assert_eq!(l, 2 * half);
        let lat = rand_mat(&mut r, 5, l, 1.0);
        let library: Vec<f64> = (0..5).map(|i| 2.0 + 0.1 * i as f64).collect();
        let moved = |cols: std::ops::Range<usize>| {
            let mut m = lat.clone();
            (0..5).for_each(|i| cols.clone().for_each(|t| m.data[i * l + t] += 0.8));
            m
        };
        let at = |m: &Mat<f64>, gate: f64| model.decode_dense(&p, m, &batch, &library, gate).unwrap();
        let base = at(&lat, 1.0);
        let (spl_moved, expr_moved) = (at(&moved(half..l), 1.0), at(&moved(0..half), 1.0));
        assert_eq!(base.px_scale.data != spl_moved.px_scale.data, expr_reads, "{cross}: the expression decoder and the splicing half");
        assert_eq!(base.p.data != expr_moved.p.data, spl_reads, "{cross}: the splicing decoder and the expression half");
        // each decoder always reads its own half
        assert!(base.px_scale.data != expr_moved.px_scale.data && base.p.data != spl_moved.p.data, "{cross}: own halves");
        // with the gate closed (the warm-up) neither reads across, whatever the option
        assert_eq!(at(&lat, 0.0).px_scale.data, at(&moved(half..l), 0.0).px_scale.data, "{cross}: gate 0");
        assert_eq!(at(&lat, 0.0).p.data, at(&moved(0..half), 0.0).p.data, "{cross}: gate 0");
    }
}

/// `splicing_decoder_effect_prior`: the penalty is λ / N Σ_j Var_cells(S_i · W_j) at the minibatch
/// covariance of S, it does not change when S is scaled by a and W by 1 / a (the scale-free property the
/// option exists for), and its gradient (W only; C is a stop-gradient metric) matches finite differences
/// in the whole loss on both decoder architectures, with and without the L2 prior next to it.
#[test]
fn op_and_whole_loss_splicing_decoder_effect_prior() {
    use splicevi::model::vae::spl_input_covariance;
    // The covariance against a direct computation.
    let mut r = rng(71);
    let (b, k) = (9, 4);
    let s = rand_mat(&mut r, b, k, 1.3);
    let c = spl_input_covariance(&s);
    for a in 0..k {
        for bb in 0..k {
            let ma = (0..b).map(|i| s.at(i, a)).sum::<f64>() / b as f64;
            let mb = (0..b).map(|i| s.at(i, bb)).sum::<f64>() / b as f64;
            let v = (0..b).map(|i| (s.at(i, a) - ma) * (s.at(i, bb) - mb)).sum::<f64>() / b as f64;
            assert!((c.at(a, bb) - v).abs() < 1e-12, "C[{a},{bb}] = {} vs {v}", c.at(a, bb));
        }
    }
    assert!(spl_input_covariance(&rand_mat(&mut r, 1, k, 1.0)).data.iter().all(|&v| v == 0.0));

    // The penalty is the decoded logit's variance across cells, and it is scale-free.
    let small = |c: ModelConfig| ModelConfig { n_hidden: Some(8), n_latent: Some(3), code_dim: 4, h_hidden_dim: 6, encoder_hidden_dim: 5, dropout_rate: 0.2, ..c };
    let lam = 0.7;
    let d = dims(2, vec![], 0);
    let model = SpliceVae::new(small(ModelConfig { splicing_decoder_effect_prior: lam, ..ModelConfig::robust() }), d.clone(), JUNC2ATSE.to_vec()).unwrap();
    let mut p = random_params(&model, 72);
    let wi = model.layout.find("z_decoder_splicing.linear.weight").expect("linear decoder weight");
    let kk = p.get(wi).len() / JUNC2ATSE.len();
    let s = rand_mat(&mut r, 7, kk, 0.8);
    let c = spl_input_covariance(&s);
    let w = p.get(wi).to_vec();
    let mut direct = 0.0;
    for j in 0..JUNC2ATSE.len() {
        let eta: Vec<f64> = (0..s.rows).map(|i| (0..kk).map(|q| s.at(i, q) * w[j * kk + q]).sum()).collect();
        let m = eta.iter().sum::<f64>() / eta.len() as f64;
        direct += eta.iter().map(|e| (e - m) * (e - m)).sum::<f64>() / eta.len() as f64;
    }
    direct *= lam / d.n_obs as f64;
    let got = model.spl_decoder_effect_prior_at(&p, &c);
    assert!((got - direct).abs() < 1e-12 * direct.abs().max(1.0), "effect prior {got} vs direct {direct}");
    let s3 = Mat::from_vec(s.rows, s.cols, s.data.iter().map(|v| 3.0 * v).collect());
    p.get_mut(wi).iter_mut().for_each(|v| *v /= 3.0);
    let scaled = model.spl_decoder_effect_prior_at(&p, &spl_input_covariance(&s3));
    assert!((scaled - got).abs() < 1e-12 * got.abs().max(1.0), "not scale-free: {scaled} vs {got}");

    // Gradients of the whole loss.
    for (i, arch) in [SplicingDecoderArch::Linear, SplicingDecoderArch::Vanilla].into_iter().enumerate() {
        let cfg = small(ModelConfig { splicing_decoder_effect_prior: 0.9, splicing_decoder_architecture: arch, ..ModelConfig::robust() });
        check_whole_loss("robust decoder effect prior", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: false }, 61 + i as u64);
    }
    let cfg = small(ModelConfig { splicing_decoder_effect_prior: 0.9, splicing_decoder_prior: 0.4, ..ModelConfig::robust() });
    check_whole_loss("robust decoder effect + L2 prior", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: true }, 63);
    // The term is really there (and moves the loss) at these values.
    let cfg = small(ModelConfig { splicing_decoder_effect_prior: 0.9, ..ModelConfig::robust() });
    let m = SpliceVae::new(cfg, dims(2, vec![], 0), JUNC2ATSE.to_vec()).unwrap();
    let pp = random_params(&m, 64);
    let fw = m.forward(&pp, &synth_batch(&dims(2, vec![], 0), 6, 65), &base_opts()).unwrap();
    assert!(fw.out.decoder_effect_prior > 1e-6, "effect prior is {}", fw.out.decoder_effect_prior);
}

// ---------------------------------------------------------------------------------------------
// The §12 corrections (model.md §14.3): gradients, and what each computes.

fn small(c: ModelConfig) -> ModelConfig {
    ModelConfig { n_hidden: Some(8), n_latent: Some(3), code_dim: 4, h_hidden_dim: 6, encoder_hidden_dim: 5, dropout_rate: 0.2, ..c }
}

/// `mixing_variance = independent` on a learned shared and a per-cell weight table, the vanilla
/// expression decoder's softmax scale with a size factor (`expression_scale_softmax`), the linear
/// expression decoder without LayerNorm on its three maps (`linear_expression_layer_norm = false`,
/// gene-cell dispersion) and `concentration_init = phi_100`.
#[test]
fn whole_loss_quirk_corrections() {
    let cfg = small(ModelConfig {
        mixing_variance: MixingVariance::Independent,
        modality_weights: ModalityWeights::Universal,
        expression_architecture: ExpressionArch::Vanilla,
        expression_scale_softmax: true,
        concentration_init: ConcentrationInit::Phi100,
        ..ModelConfig::default()
    });
    check_whole_loss("independent variance, softmax scale", Case { cfg, dims: dims(2, vec![], 0), opts: base_opts(), with_adversary: false }, 81);
    let cfg = small(ModelConfig {
        linear_expression_layer_norm: false,
        dispersion: Dispersion::GeneCell,
        mixing_variance: MixingVariance::Independent,
        modality_weights: ModalityWeights::Cell,
        ..ModelConfig::default()
    });
    check_whole_loss("linear decoder without LayerNorm", Case { cfg, dims: dims(2, vec![3], 0), opts: base_opts(), with_adversary: true }, 82);
}

/// Forward outputs of `cfg` on the parameters `p` (made for a model with the same name table).
fn eval_forward(cfg: ModelConfig, d: &Dims, p: &Params<f64>, batch: &Batch) -> StepOutput<f64> {
    let model = SpliceVae::new(cfg, d.clone(), JUNC2ATSE.to_vec()).unwrap();
    assert_eq!(model.layout.total, p.layout.total);
    model.forward(p, batch, &StepOptions { training: false, ..base_opts() }).unwrap().out
}

/// Each correction computes what it says, against the original on the same parameters, and changes
/// nothing else: the joint variance is w_e²·v_e + w_s²·v_s; the vanilla scale is the softmax of the
/// logits the original passes through softplus; without the LayerNorm the linear expression decoder
/// is what `use_layer_norm = encoder` gives it while a vanilla splicing decoder keeps its LayerNorm
/// (which `use_layer_norm = encoder` would take away: why the option exists); `phi_100` maps the same
/// draws through softplus⁻¹ ∘ exp.
#[test]
fn quirk_corrections_compute_what_they_say() {
    use splicevi::model::real::{softplus, softplus_inv};
    let d = dims(2, vec![], 0);
    let batch = synth_batch(&d, 6, 90);
    let same = |a: &Mat<f64>, b: &Mat<f64>| a.data == b.data;

    // §12.4: §4.2's weights from the `equal` buffer (moved off (1, 1) by random_params); cell 0 has no
    // expression (weights ≈ (0, 1)).
    let base = small(ModelConfig::default());
    let model = SpliceVae::new(base.clone(), d.clone(), JUNC2ATSE.to_vec()).unwrap();
    let p = random_params(&model, 91);
    let raw = p.by_name("mod_weights").unwrap().to_vec();
    let mut sums = Vec::new();
    for mv in [MixingVariance::SqrtWeights, MixingVariance::Independent] {
        let m = SpliceVae::new(ModelConfig { mixing_variance: mv, ..base.clone() }, d.clone(), JUNC2ATSE.to_vec()).unwrap();
        let inf = m.inference_only(&p, &batch).unwrap();
        assert!(!inf.mask_expr[0] && inf.mask_expr.iter().filter(|&&e| e).count() >= 3);
        for i in 0..batch.n_cells() {
            let ee = if inf.mask_expr[i] { raw[0].exp() } else { 1e-30 };
            let es = raw[1].exp();
            let (we, ws) = (ee / (ee + es + 1e-30), es / (ee + es + 1e-30));
            let (ce, cs) = if mv == MixingVariance::Independent { (we * we, ws * ws) } else { (we.sqrt(), ws.sqrt()) };
            for t in 0..inf.qz_v.cols {
                let want = (ce * inf.qzv_expr.at(i, t) + cs * inf.qzv_spl.at(i, t)).max(1e-6);
                let got = inf.qz_v.at(i, t);
                assert!((got - want).abs() <= 1e-12 * want, "{mv}: qz_v[{i},{t}] = {got}, want {want}");
            }
        }
        sums.push(inf.qz_v.data.iter().sum::<f64>());
    }
    // w² < √w: the original's variance is the larger (≈ 2.8 × the corrected one at equal weights; the
    // cells without expression have the splicing posterior's in both).
    assert!(sums[1] < 0.75 * sums[0], "joint variances: {sums:?}");

    // §12.11: ρ = softmax(raw) where the original has softplus(raw).
    let van = small(ModelConfig { expression_architecture: ExpressionArch::Vanilla, ..ModelConfig::default() });
    let model = SpliceVae::new(van.clone(), d.clone(), JUNC2ATSE.to_vec()).unwrap();
    let p = random_params(&model, 92);
    let orig = eval_forward(van.clone(), &d, &p, &batch);
    let fixed = eval_forward(ModelConfig { expression_scale_softmax: true, ..van.clone() }, &d, &p, &batch);
    for i in 0..batch.n_cells() {
        let raw: Vec<f64> = orig.px_scale.row(i).iter().map(|&r| softplus_inv(r)).collect();
        let mx = raw.iter().fold(f64::MIN, |a, &v| a.max(v));
        let s: f64 = raw.iter().map(|v| (v - mx).exp()).sum();
        for (g, r) in raw.iter().enumerate() {
            let want = (r - mx).exp() / s;
            assert!((fixed.px_scale.at(i, g) - want).abs() <= 1e-9 * want, "softmax scale [{i},{g}] = {}, want {want}", fixed.px_scale.at(i, g));
        }
        let (so, sf) = (orig.px_scale.row(i).iter().sum::<f64>(), fixed.px_scale.row(i).iter().sum::<f64>());
        assert!((sf - 1.0).abs() < 1e-12 && (so - 1.0).abs() > 1e-3, "row sums: softmax {sf}, softplus {so}");
    }
    assert!(same(&orig.inference.z, &fixed.inference.z) && orig.p_entries == fixed.p_entries);
    // Without a size factor the original already uses softmax: the option changes nothing there.
    let lib = ModelConfig { use_size_factor_key: false, ..van };
    let (a, b) = (eval_forward(lib.clone(), &d, &p, &batch), eval_forward(ModelConfig { expression_scale_softmax: true, ..lib }, &d, &p, &batch));
    assert!(same(&a.px_scale, &b.px_scale) && a.loss == b.loss);

    // §12.12, with a vanilla splicing decoder (LayerNorm in its hidden layers).
    let lin = small(ModelConfig { splicing_decoder_architecture: SplicingDecoderArch::Vanilla, ..ModelConfig::default() });
    let model = SpliceVae::new(lin.clone(), d.clone(), JUNC2ATSE.to_vec()).unwrap();
    let p = random_params(&model, 93);
    let orig = eval_forward(lin.clone(), &d, &p, &batch);
    let fixed = eval_forward(ModelConfig { linear_expression_layer_norm: false, ..lin.clone() }, &d, &p, &batch);
    let enc_only = eval_forward(ModelConfig { use_layer_norm: NormPlacement::Encoder, ..lin }, &d, &p, &batch);
    assert!(same(&fixed.px_scale, &enc_only.px_scale) && same(&fixed.px_dropout, &enc_only.px_dropout));
    assert!(!same(&fixed.px_scale, &orig.px_scale) && !same(&fixed.px_dropout, &orig.px_dropout));
    assert!(fixed.p_entries == orig.p_entries && fixed.p_entries != enc_only.p_entries);
    // The original's logits have mean 0 and variance 1 over genes, so ln ρ does; the corrected ones not.
    let spread = |m: &Mat<f64>, i: usize| {
        let l: Vec<f64> = m.row(i).iter().map(|v| v.ln()).collect();
        let mean = l.iter().sum::<f64>() / l.len() as f64;
        l.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / l.len() as f64
    };
    assert!((spread(&orig.px_scale, 2) - 1.0).abs() < 1e-3 && (spread(&fixed.px_scale, 2) - 1.0).abs() > 1e-2);

    // §12.9: the same draws, φ = eˣ instead of softplus(x) ≈ 4.6 (beta-binomial: one per junction).
    for (loss, conc) in [(SplicingLoss::DirichletMultinomial, DmConcentration::Atse), (SplicingLoss::DirichletMultinomial, DmConcentration::Scalar), (SplicingLoss::BetaBinomial, DmConcentration::Atse)] {
        let cfg = small(ModelConfig { splicing_loss_type: loss, dm_concentration: conc, ..ModelConfig::default() });
        let m0 = SpliceVae::new(cfg.clone(), d.clone(), JUNC2ATSE.to_vec()).unwrap();
        let m1 = SpliceVae::new(ModelConfig { concentration_init: ConcentrationInit::Phi100, ..cfg }, d.clone(), JUNC2ATSE.to_vec()).unwrap();
        let (p0, p1) = (m0.init_params::<f64>(94), m1.init_params::<f64>(94));
        let phi = m0.layout.find("log_phi_j").unwrap();
        for (i, e) in m0.layout.entries.iter().enumerate() {
            if i != phi {
                assert!(p0.get(i) == p1.get(i), "{loss} {conc}: {} initialised differently", e.name);
            }
        }
        for (&x, &y) in p0.get(phi).iter().zip(p1.get(phi)) {
            assert!(softplus(x) < 8.0, "{loss} {conc}: the original's φ = {}", softplus(x));
            let want = if conc == DmConcentration::Scalar { 100.0 } else { x.exp() };
            assert!((softplus(y) - want).abs() <= 1e-12 * want, "{loss} {conc}: φ = {}, want {want}", softplus(y));
        }
    }
}
