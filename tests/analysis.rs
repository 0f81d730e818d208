//! Analyses (model.md §7.3–§7.8, §8.1, §8.4): decoding against the model API, differential splicing and
//! expression against direct computation and on a hand-built model whose truth is known exactly, the
//! "random halves call nothing" check, the imputation evaluation on a trained `default` model (quality
//! numbers are printed, not asserted: the faithful preset collapses on small data), and the commands end
//! to end with the outputs read back by Python anndata / pandas.

use splicevi::analysis::de::differential_expression;
use splicevi::analysis::differential::{comparisons, paired_plans, ChangeOptions, Comparison};
use splicevi::analysis::ds::{differential_splicing, empirical_psi};
use splicevi::analysis::evaluate::{evaluate_imputation, evaluate_imputation_with, evaluate_latents, mask_atses, Entry, Truths, TruthFilter, METHOD_DECODER, METHOD_DM, METHOD_MEANBAYES};
use splicevi::analysis::resample::original_entries;
use splicevi::analysis::posterior::{DecodeOptions, Posterior, SplicingFn};
use splicevi::data::simulate::{simulate, GroundTruth, SimConfig, SimSize};
use splicevi::data::{DataOptions, Dataset};
use splicevi::model::{Batch, Mat, ModelConfig, Params, SpliceVae};
use splicevi::train::trainer::{dims_of, RunConfig, Trainer};
use splicevi::train::TrainConfig;
use std::path::Path;
use std::process::Command;

#[path = "common/cli.rs"]
mod cli;
use cli::{bin, fails, ok, python};
use std::sync::OnceLock;

/// The latent metrics' options: 15-NN, seed 0, blocks of 128 cells, no age column.
fn lat_opts<'a>(labels: Option<&'a splicevi::analysis::evaluate::Labels>, parts: Option<&'a [Option<splicevi::analysis::evaluate::Part>]>, max_cells: usize) -> splicevi::analysis::evaluate::LatentOptions<'a> {
    splicevi::analysis::evaluate::LatentOptions { labels, ages: None, parts, max_cells, k: 15, seed: 0, block_cells: 128 }
}

/// Decode from the posterior mean (n_samples 1, the original's use_z_mean=True).
fn mean_decode() -> DecodeOptions {
    DecodeOptions { transform_batch: vec![], n_samples: 1, seed: 0 }
}

fn toy(seed: u64) -> (Dataset, GroundTruth) {
    simulate(&SimConfig::preset(SimSize::Toy, seed)).unwrap()
}

fn init_model(ds: &Dataset, cfg: ModelConfig, seed: u64) -> (SpliceVae, Params<f32>) {
    let model = SpliceVae::new(cfg, dims_of(ds), ds.splicing.junc2atse.clone()).unwrap();
    let p = model.init_params::<f32>(seed);
    (model, p)
}

/// Direct decode of ONE cell through the model API (no analysis code): PSI (decoder or DM posterior)
/// and px_scale, under `batch` (None = observed).
fn direct(model: &SpliceVae, p: &Params<f32>, ds: &Dataset, cell: usize, batch: Option<u32>, dm: bool) -> (Vec<f32>, Vec<f32>) {
    let mut b = Batch::from_dataset(ds, &[cell], ds.n_cells() == model.dims.n_obs).unwrap();
    let inf = model.inference_only(p, &b).unwrap();
    if let Some(code) = batch {
        b.batch = vec![code];
    }
    let dec = model.decode_dense(p, &inf.qz_m, &b, &inf.library, 1.0).unwrap();
    let psi = if dm { model.dm_posterior_mean(p, &dec.p, &b.spl).data } else { dec.p.data.clone() };
    (psi, dec.px_scale.data)
}

#[test]
fn decode_matches_the_model_api_and_averages_over_samples_not_cells() {
    let (ds, _) = toy(0);
    let (model, p) = init_model(&ds, ModelConfig::default(), 1);
    let post = Posterior::new(&ds, &model, &p).unwrap();
    let cells: Vec<usize> = (0..20).collect();
    let mean = DecodeOptions { transform_batch: vec![], n_samples: 1, seed: 0 };
    let d = post.decode(&cells, &mean, Some(SplicingFn::DmPosterior), true).unwrap();
    let batch = Batch::from_dataset(&ds, &cells, true).unwrap();
    let inf = model.inference_only(&p, &batch).unwrap();
    let dec = model.decode_dense(&p, &inf.qz_m, &batch, &inf.library, 1.0).unwrap();
    assert_eq!(d.psi.as_ref().unwrap().data, model.dm_posterior_mean(&p, &dec.p, &batch.spl).data, "DM posterior differs from SpliceVae::dm_posterior_mean");
    assert_eq!(d.expr.as_ref().unwrap().data, dec.px_scale.data);
    let dd = post.decode(&cells, &mean, Some(SplicingFn::Decoder), false).unwrap();
    assert_eq!(dd.psi.unwrap().data, dec.p.data);
    assert!(dd.expr.is_none());

    // transform_batch [0, 1] is the average of the two single-batch decodes.
    let one = |b: u32| post.decode(&cells, &DecodeOptions { transform_batch: vec![b], ..mean.clone() }, Some(SplicingFn::DmPosterior), true).unwrap();
    let (b0, b1) = (one(0), one(1));
    let both = post.decode(&cells, &DecodeOptions { transform_batch: vec![0, 1], ..mean.clone() }, Some(SplicingFn::DmPosterior), true).unwrap();
    for (x, (u, v)) in both.expr.as_ref().unwrap().data.iter().zip(b0.expr.as_ref().unwrap().data.iter().zip(&b1.expr.as_ref().unwrap().data)) {
        assert!((x - 0.5 * (u + v)).abs() <= 1e-6 * x.abs().max(1e-3), "{x} vs mean of {u} and {v}");
    }
    assert_ne!(b0.expr.unwrap().data, b1.expr.unwrap().data, "the batch override has no effect");

    // n_samples > 1: per cell (a row never depends on the other cells of the block), seeded, and
    // different from the posterior-mean decode.
    let s4 = DecodeOptions { transform_batch: vec![], n_samples: 4, seed: 9 };
    let full = post.decode(&cells, &s4, Some(SplicingFn::Decoder), false).unwrap().psi.unwrap();
    let part = post.decode(&cells[5..10], &s4, Some(SplicingFn::Decoder), false).unwrap().psi.unwrap();
    let j = ds.n_junctions();
    assert_eq!(&full.data[5 * j..10 * j], &part.data[..], "sampled decode depends on the block");
    assert_eq!(full.rows, cells.len(), "samples must be averaged per cell, not over cells");
    assert_ne!(full.data, dec.p.data);
    let other_seed = post.decode(&cells, &DecodeOptions { seed: 10, ..s4.clone() }, Some(SplicingFn::Decoder), false).unwrap().psi.unwrap();
    assert_ne!(full.data, other_seed.data);
    assert_eq!(full.data, post.decode(&cells, &s4, Some(SplicingFn::Decoder), false).unwrap().psi.unwrap().data);
    // DM probabilities of a sampled decode still sum to 1 within each ATSE.
    for a in 0..ds.splicing.n_atse() {
        let s: f32 = (0..j).filter(|&jj| ds.splicing.junc2atse[jj] as usize == a).map(|jj| full.data[jj]).sum();
        assert!((s - 1.0).abs() < 1e-4, "ATSE {a} sums to {s}");
    }
}

/// A model whose splicing decoder ignores the latent: p depends on the batch only, by construction.
/// ATSEs a ≡ 0 (mod 3) with ≥ 2 junctions get a logit of 2.5 on their first junction in batch 1.
fn batch_only_model(ds: &Dataset) -> (SpliceVae, Params<f32>) {
    let (model, mut p) = init_model(ds, ModelConfig::default(), 3);
    let j = ds.n_junctions();
    let nb = model.dims.n_batch;
    let w = p.by_name_mut("z_decoder_splicing.linear.weight").unwrap();
    let k = w.len() / j;
    w.iter_mut().for_each(|v| *v = 0.0);
    let s = &ds.splicing;
    for a in (0..s.n_atse()).step_by(3) {
        let js: Vec<usize> = (0..j).filter(|&jj| s.junc2atse[jj] as usize == a).collect();
        if js.len() >= 2 {
            w[js[0] * k + (k - nb) + 1] = 2.5;
        }
    }
    p.by_name_mut("z_decoder_splicing.linear.bias").unwrap().iter_mut().for_each(|v| *v = 0.0);
    // A huge concentration makes the DM posterior mean ≈ p whatever the counts.
    p.by_name_mut("log_phi_j").unwrap().iter_mut().for_each(|v| *v = 1e6);
    (model, p)
}

#[test]
fn ds_on_a_hand_built_model_finds_exactly_the_constructed_changes() {
    let (ds, _) = toy(2);
    let (model, p) = batch_only_model(&ds);
    let post = Posterior::new(&ds, &model, &p).unwrap();
    let batch = &ds.covariates.batch.codes;
    let c0 = (0..ds.n_cells()).find(|&c| batch[c] == 0).unwrap();
    let c1 = (0..ds.n_cells()).find(|&c| batch[c] == 1).unwrap();
    let (p0, _) = direct(&model, &p, &ds, c0, None, false);
    let (p1, _) = direct(&model, &p, &ds, c1, None, false);
    let c0b = (0..ds.n_cells()).filter(|&c| batch[c] == 0).nth(3).unwrap();
    assert_eq!(direct(&model, &p, &ds, c0b, None, false).0, p0, "p should depend on the batch only");
    let truth: Vec<bool> = p0.iter().zip(&p1).map(|(a, b)| (b - a).abs() >= 0.1).collect();
    let d_true = truth.iter().filter(|&&t| t).count();
    assert!(d_true >= 20, "construction produced only {d_true} changed junctions");

    let cmp = comparisons(&ds, "batch", Some("batch0"), Some("batch1")).unwrap().remove(0);
    let opts = ChangeOptions { n_samples_overall: 600, block_cells: 97, ..ChangeOptions::new(0.1) };
    for method in [SplicingFn::Decoder, SplicingFn::DmPosterior] {
        let r = differential_splicing(&post, &cmp, method, &opts, 0).unwrap();
        for jj in 0..ds.n_junctions() {
            assert_eq!(r.proba_ds[jj], if truth[jj] { 1.0 } else { 0.0 }, "{method:?} junction {jj}: Δp {}", p1[jj] - p0[jj]);
            assert!((r.est_prob1[jj] - p0[jj] as f64).abs() < 1e-4 && (r.est_prob2[jj] - p1[jj] as f64).abs() < 1e-4);
            assert!((r.effect_size[jj] - (p1[jj] - p0[jj]) as f64).abs() < 1e-4);
        }
        // FDR 0.05 flags every P = 1 junction plus ⌊d/19⌋ with P = 0 (the running mean of 1 − P stays ≤ 0.05).
        let called: Vec<usize> = (0..ds.n_junctions()).filter(|&jj| r.is_ds_fdr[jj]).collect();
        assert_eq!(called.len(), d_true + d_true / 19);
        assert!(truth.iter().zip(&r.is_ds_fdr).all(|(t, c)| !t || *c), "a constructed change was not called");
        let tp = called.iter().filter(|&&jj| truth[jj]).count();
        eprintln!("hand-built DS ({method:?}): precision {:.3}, recall {:.3}", tp as f64 / called.len() as f64, tp as f64 / d_true as f64);
    }
    // Empirical columns against a direct count.
    let r = differential_splicing(&post, &cmp, SplicingFn::Decoder, &opts, 0).unwrap();
    let (emp1, n1) = empirical_psi(&ds.splicing, &cmp.idx1);
    assert_eq!((r.emp_prob1.clone(), r.n_obs_group1.clone()), (emp1, n1));
    let jj = (0..ds.n_junctions()).find(|&jj| r.n_obs_group2[jj] > 0).unwrap();
    let (mut s, mut n) = (0.0, 0u64);
    for &c in &cmp.idx2 {
        for e in ds.splicing.cell_range(c) {
            if ds.splicing.junction[e] as usize == jj {
                s += ds.splicing.psi[e] as f64;
                n += 1;
            }
        }
    }
    assert_eq!(r.n_obs_group2[jj], n);
    assert!((r.emp_prob2[jj] - s / n as f64).abs() < 1e-12);
    assert!((r.emp_effect[jj] - (r.emp_prob2[jj] - r.emp_prob1[jj])).abs() < 1e-12);
    assert!(r.n_obs_group1.iter().zip(&r.emp_prob1).all(|(&n, &e)| n > 0 || e == -1.0));

    // Two random halves of batch 0: no change anywhere, nothing called.
    let mut half: Vec<usize> = cmp.idx1.clone();
    use rand::seq::SliceRandom;
    half.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(5));
    let (a, b) = half.split_at(half.len() / 2);
    let halves = Comparison { group1: "A".into(), group2: "B".into(), idx1: a.to_vec(), idx2: b.to_vec() };
    let r = differential_splicing(&post, &halves, SplicingFn::Decoder, &opts, 1).unwrap();
    assert!(r.proba_ds.iter().all(|&p| p == 0.0) && r.is_ds_fdr.iter().all(|&c| !c));
}

use rand::SeedableRng;

#[test]
fn ds_and_de_equal_a_direct_computation_with_and_without_batch_correction() {
    let (ds, _) = toy(4);
    let (model, p) = init_model(&ds, ModelConfig::default(), 7);
    let post = Posterior::new(&ds, &model, &p).unwrap();
    let cmp = comparisons(&ds, "subtype", Some("T1_a"), None).unwrap().remove(0);
    assert_eq!(cmp.group2, "Rest");
    assert_eq!(cmp.idx1.len() + cmp.idx2.len(), ds.n_cells());
    for bc in [false, true] {
        let opts = ChangeOptions { n_samples_overall: 240, block_cells: 50, batch_correction: bc, seed: 3, ..ChangeOptions::new(0.02) };
        let (p1, p2) = paired_plans(&cmp, model.dims.n_batch, &opts, 0).unwrap();
        assert_eq!(p1.len(), 240);
        if bc {
            // Each batch decodes half the samples; pairs share their batch.
            assert_eq!(p1.batch.iter().filter(|b| **b == Some(0)).count(), 120);
            assert_eq!(p1.batch, p2.batch);
        } else {
            assert!(p1.batch.iter().all(|b| b.is_none()));
        }
        let decode_all = |plan: &splicevi::analysis::differential::SamplePlan, dm: bool| -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
            plan.cells.iter().zip(&plan.batch).map(|(&c, &b)| direct(&model, &p, &ds, c, b, dm)).unzip()
        };
        // DS (DM posterior): counts and means from single-cell decodes.
        let (s1, e1) = decode_all(&p1, true);
        let (s2, e2) = decode_all(&p2, true);
        let r = differential_splicing(&post, &cmp, SplicingFn::DmPosterior, &opts, 0).unwrap();
        let n = p1.len() as f64;
        for jj in 0..ds.n_junctions() {
            let (mut plus, mut minus, mut m1) = (0.0, 0.0, 0.0);
            for i in 0..p1.len() {
                let d = s2[i][jj] - s1[i][jj];
                plus += (d >= 0.02) as u8 as f64;
                minus += (d < -0.02) as u8 as f64;
                m1 += s1[i][jj] as f64;
            }
            assert_eq!(r.proba_ds[jj], (plus / n).max(minus / n), "batch correction {bc}, junction {jj}");
            assert!((r.est_prob1[jj] - m1 / n).abs() < 1e-9);
        }
        // DE: scales from the same single-cell decodes (px_scale), pseudocount and LFCs recomputed.
        let de = differential_expression(&post, &cmp, &ChangeOptions { delta: 0.25, ..opts.clone() }, 0).unwrap();
        let g = ds.n_genes();
        let x = ds.expression.as_ref().unwrap();
        let zero = |cells: &[usize]| -> Vec<bool> {
            let mut s = vec![0f64; g];
            for &c in cells {
                let (idx, val) = x.row(c);
                idx.iter().zip(val).for_each(|(&gg, &v)| s[gg as usize] += v as f64);
            }
            s.iter().map(|v| (v / cells.len() as f64) < 0.01).collect()
        };
        let max = |e: &[Vec<f32>]| -> Vec<f64> { (0..g).map(|gg| e.iter().map(|r| r[gg] as f64).fold(f64::MIN, f64::max)).collect() };
        let pc = splicevi::analysis::de::pseudocount_offset(&max(&e1), &max(&e2), &zero(&cmp.idx1), &zero(&cmp.idx2));
        assert_eq!(de.pseudocounts, pc);
        for gg in 0..g {
            let lfc: Vec<f64> = (0..p1.len()).map(|i| (e1[i][gg] as f64 + pc).log2() - (e2[i][gg] as f64 + pc).log2()).collect();
            let plus = lfc.iter().filter(|&&v| v >= 0.25).count() as f64;
            let minus = lfc.iter().filter(|&&v| v < -0.25).count() as f64;
            assert_eq!(de.proba_de[gg], (plus / n).max(minus / n), "batch correction {bc}, gene {gg}");
            let small: Vec<f64> = (0..p1.len()).map(|i| (e1[i][gg] as f64 + 1e-3 * pc).log2() - (e2[i][gg] as f64 + 1e-3 * pc).log2()).collect();
            assert!((de.lfc_mean[gg] - small.iter().sum::<f64>() / n).abs() < 1e-9);
            assert!((de.scale1[gg] - e1.iter().map(|r| r[gg] as f64).sum::<f64>() / n).abs() < 1e-12);
        }
        assert!(de.raw_mean1.iter().zip(&zero(&cmp.idx1)).all(|(&m, &z)| (m < 0.01) == z));
    }
    // --n-samples S (§14.2): each drawn cell's PSI / scale is the average of S decodes of posterior
    // samples of its z, not the decode of its mean (the original's use_z_mean=True, S = 1).
    let opts = ChangeOptions { n_samples_overall: 120, block_cells: 50, seed: 3, ..ChangeOptions::new(0.1) };
    let sampled = ChangeOptions { n_samples: 3, ..opts.clone() };
    let (p1, _) = paired_plans(&cmp, model.dims.n_batch, &sampled, 0).unwrap();
    let three = DecodeOptions { transform_batch: vec![], n_samples: 3, seed: 3 };
    let dec = post.decode(&p1.cells, &three, Some(SplicingFn::DmPosterior), true).unwrap();
    let (psi, expr) = (dec.psi.unwrap(), dec.expr.unwrap());
    let col_mean = |m: &Mat<f32>, j: usize| (0..m.rows).map(|r| m.at(r, j) as f64).sum::<f64>() / m.rows as f64;
    let r = differential_splicing(&post, &cmp, SplicingFn::DmPosterior, &sampled, 0).unwrap();
    let r1 = differential_splicing(&post, &cmp, SplicingFn::DmPosterior, &opts, 0).unwrap();
    assert!((0..ds.n_junctions()).all(|jj| (r.est_prob1[jj] - col_mean(&psi, jj)).abs() < 1e-9), "DS --n-samples 3 is not the mean of 3-sample decodes");
    assert_ne!(r.est_prob1, r1.est_prob1, "--n-samples 3 changed nothing");
    let de = differential_expression(&post, &cmp, &ChangeOptions { delta: 0.25, ..sampled.clone() }, 0).unwrap();
    assert!((0..ds.n_genes()).all(|gg| (de.scale1[gg] - col_mean(&expr, gg)).abs() < 1e-12), "DE --n-samples 3 is not the mean of 3-sample decodes");
    assert!(ChangeOptions { n_samples: 0, ..opts }.validate().unwrap_err().to_string().contains("--n-samples"));

    // Seeded: the same seed reproduces the table, another seed changes the samples.
    let opts = ChangeOptions { n_samples_overall: 200, ..ChangeOptions::new(0.1) };
    let a = differential_splicing(&post, &cmp, SplicingFn::DmPosterior, &opts, 0).unwrap();
    assert_eq!(a, differential_splicing(&post, &cmp, SplicingFn::DmPosterior, &opts, 0).unwrap());
    assert_ne!(a.est_prob1, differential_splicing(&post, &cmp, SplicingFn::DmPosterior, &ChangeOptions { seed: 1, ..opts }, 0).unwrap().est_prob1);
}

/// One `default`-preset model trained on masked simulated data (shorter warm-up, larger learning rate
/// so CI can afford it), shared by the tests that need a trained model.
struct Trained {
    ds: Dataset,
    truth: GroundTruth,
    masked: Dataset,
    dropped: Vec<splicevi::analysis::evaluate::Entry>,
    model: SpliceVae,
    params: Params<f32>,
}

fn trained() -> &'static Trained {
    static CELL: OnceLock<Trained> = OnceLock::new();
    CELL.get_or_init(|| {
        let cfg = SimConfig { n_cells: 900, n_genes: 200, n_junctions: 600, ..SimConfig::preset(SimSize::Small, 11) };
        let (ds, truth) = simulate(&cfg).unwrap();
        let (masked, dropped) = mask_atses(&ds, 0.25, 0).unwrap();
        let model_cfg = ModelConfig::default();
        let tc = TrainConfig { max_epochs: 25, n_epochs_kl_warmup: Some(8), lr: 3e-3, batch_size: 128, ..Default::default() };
        let data = DataOptions { batch_key: Some("batch".into()), ..Default::default() };
        let run = RunConfig::for_dataset("default", model_cfg, tc, data, &masked);
        let dir = tempfile::tempdir().unwrap();
        let mut t = Trainer::new(&masked, run, dir.path()).unwrap();
        t.verbose = false;
        t.fit().unwrap();
        let (model, params) = (t.model, t.params);
        Trained { ds, truth, masked, dropped, model, params }
    })
}

#[test]
fn trained_default_model_ds_quality_is_reported_and_random_halves_call_almost_nothing() {
    let t = trained();
    let post = Posterior::new(&t.ds, &t.model, &t.params).unwrap();
    let opts = ChangeOptions { n_samples_overall: 2000, ..ChangeOptions::new(0.1) };
    let j = t.ds.n_junctions();
    // Planted junctions between the splicing-only subtypes of type 0 (reported; see the module docs).
    let cmp = comparisons(&t.ds, "subtype", Some("T0_a"), Some("T0_b")).unwrap().remove(0);
    let r = differential_splicing(&post, &cmp, SplicingFn::DmPosterior, &opts, 0).unwrap();
    let planted = &t.truth.planted_ds_by_type[0];
    let called = r.is_ds_fdr.iter().filter(|&&c| c).count();
    let tp = (0..j).filter(|&jj| r.is_ds_fdr[jj] && planted[jj]).count();
    let n_planted = planted.iter().filter(|&&p| p).count();
    let mean_p = |want: bool| -> f64 {
        let v: Vec<f64> = (0..j).filter(|&jj| planted[jj] == want).map(|jj| r.proba_ds[jj]).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    eprintln!(
        "QUALITY (default preset) DS T0_a vs T0_b: {called} called, precision {:.3}, recall {:.3} ({n_planted} planted); mean proba_ds planted {:.3} vs other {:.3}",
        if called > 0 { tp as f64 / called as f64 } else { f64::NAN },
        tp as f64 / n_planted as f64,
        mean_p(true),
        mean_p(false)
    );
    // Two random halves of one subtype: the model cannot tell them apart.
    use rand::seq::SliceRandom;
    let mut cells = cmp.idx1.clone();
    cells.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let (a, b) = cells.split_at(cells.len() / 2);
    let halves = Comparison { group1: "A".into(), group2: "B".into(), idx1: a.to_vec(), idx2: b.to_vec() };
    let h = differential_splicing(&post, &halves, SplicingFn::DmPosterior, &opts, 1).unwrap();
    let n_h = h.is_ds_fdr.iter().filter(|&&c| c).count();
    let max_p = h.proba_ds.iter().copied().fold(0.0, f64::max);
    eprintln!("random halves of T0_a: {n_h} of {j} junctions called, max proba_ds {max_p:.3}");
    assert!(n_h <= j / 100, "random halves of one subtype: {n_h} of {j} junctions called");
}

/// The resampled-reads protocol's scoring: listed still-observed entries are scored against their
/// listed truth (the original PSI), not the PSI the model reads; listing the data's own entries is the
/// same as not listing them; a junction filter restricts both subsets to its junctions.
#[test]
fn listed_truths_and_the_junction_filter_are_what_is_scored() {
    let t = trained();
    let post = Posterior::new(&t.masked, &t.model, &t.params).unwrap();
    let every = TruthFilter { include_zero: true, ..Default::default() };
    let own = original_entries(&t.masked.splicing);
    // the predictions at the observed entries (scored as "dropped" entries, which take any position)
    let probe = evaluate_imputation_with(&post, &Truths { dropped: &own, observed: Some(&[]), junctions: None }, every, None, &mean_decode(), 128).unwrap();
    let dm: &Vec<f64> = &probe.dropped.methods.iter().find(|(m, _)| m == METHOD_DM).unwrap().1;
    assert_eq!(dm.len(), own.len());
    // a listed truth equal to the prediction scores perfectly; the data's PSI would not
    let listed: Vec<Entry> = own.iter().zip(dm).map(|(e, &p)| Entry { psi: p as f32, ..*e }).collect();
    let rep = evaluate_imputation_with(&post, &Truths { dropped: &[], observed: Some(&listed), junctions: None }, every, None, &mean_decode(), 128).unwrap();
    let o = rep.get("observed", METHOD_DM).unwrap();
    assert!(o.n == own.len() && o.l1_mean < 1e-7 && o.pearson > 0.999_999, "{o:?}");
    let data_truth = evaluate_imputation(&post, &[], every, None, &mean_decode(), 128).unwrap();
    assert!(data_truth.get("observed", METHOD_DM).unwrap().l1_mean > 1e-3);
    // the data's own entries listed: the same numbers as reading them in place
    let a = evaluate_imputation_with(&post, &Truths { dropped: &t.dropped, observed: Some(&own), junctions: None }, TruthFilter::default(), None, &mean_decode(), 128).unwrap();
    let b = evaluate_imputation(&post, &t.dropped, TruthFilter::default(), None, &mean_decode(), 128).unwrap();
    assert_eq!(format!("{:?}", a.results), format!("{:?}", b.results));
    // a junction filter (the even junctions): both subsets hold exactly its junctions' entries
    let even: Vec<bool> = (0..t.masked.n_junctions()).map(|j| j % 2 == 0).collect();
    let r = evaluate_imputation_with(&post, &Truths { dropped: &t.dropped, observed: None, junctions: Some(&even) }, TruthFilter::default(), None, &mean_decode(), 128).unwrap();
    let n_drop = t.dropped.iter().filter(|e| e.psi > 0.0 && e.junction % 2 == 0).count();
    let n_obs = own.iter().filter(|e| e.psi > 0.0 && e.junction % 2 == 0).count();
    assert!(n_drop > 0 && n_obs > 0);
    assert_eq!((r.get("dropped", METHOD_DM).unwrap().n, r.get("observed", METHOD_DM).unwrap().n, r.get("dropped", METHOD_MEANBAYES).unwrap().n), (n_drop, n_obs, n_drop));
}

#[test]
fn imputation_evaluation_on_a_trained_model() {
    let t = trained();
    let post = Posterior::new(&t.masked, &t.model, &t.params).unwrap();
    let rep = evaluate_imputation(&post, &t.dropped, TruthFilter::default(), None, &mean_decode(), 128).unwrap();
    let get = |s: &str, m: &str| *rep.get(s, m).unwrap();
    let (dm, dec, mb) = (get("dropped", METHOD_DM), get("dropped", METHOD_DECODER), get("dropped", METHOD_MEANBAYES));
    eprintln!(
        "QUALITY (default preset) dropped entries: dm-posterior Pearson {:.4} RMSE {:.4} | MeanBayes Pearson {:.4} RMSE {:.4} | n {}",
        dm.pearson, dm.rmse, mb.pearson, mb.rmse, dm.n
    );
    // Every scored truth has PSI > 0 by default; the dropped set is exactly the filtered masked entries.
    let n_drop = t.dropped.iter().filter(|e| e.psi > 0.0).count();
    assert_eq!((dm.n, mb.n), (n_drop, n_drop));
    let n_obs = t.masked.splicing.psi.iter().filter(|&&v| v > 0.0).count();
    assert_eq!(get("observed", METHOD_DM).n, n_obs);
    assert_eq!(get("all", METHOD_DM).n, n_drop + n_obs);
    // Unobserved entries: the DM posterior mean is the decoder's p (n = k = 0).
    assert!((dm.l1_mean - dec.l1_mean).abs() < 1e-5 && (dm.pearson - dec.pearson).abs() < 1e-4);
    // Observed entries: (c·p + k)/(c + n) lies between p and k/n, so it is never further from the truth.
    assert!(get("observed", METHOD_DM).l1_mean <= get("observed", METHOD_DECODER).l1_mean);
    // With PSI = 0 truths and a count filter the sets change accordingly.
    let f = TruthFilter { include_zero: true, exclude_one: true, min_atse_count: 3.0 };
    let rep2 = evaluate_imputation(&post, &t.dropped, f, Some(&t.truth.cell_type), &mean_decode(), 128).unwrap();
    // --n-samples S (§14.2): the predictions average S decodes of posterior samples of z.
    let three = DecodeOptions { transform_batch: vec![], n_samples: 3, seed: 5 };
    let rep3 = evaluate_imputation(&post, &t.dropped, TruthFilter::default(), None, &three, 128).unwrap();
    let (cells, pairs) = (&rep3.dropped.cell, &rep3.dropped);
    let pred = |rep: &splicevi::analysis::evaluate::ImputationReport| rep.dropped.methods.iter().find(|(m, _)| m == METHOD_DM).unwrap().1.clone();
    let c0 = cells[0] as usize;
    let want = post.decode(&[c0], &three, Some(SplicingFn::DmPosterior), false).unwrap().psi.unwrap();
    for i in (0..cells.len()).take_while(|&i| cells[i] as usize == c0) {
        assert!((pred(&rep3)[i] - want.at(0, pairs.junction[i] as usize) as f64).abs() < 1e-6, "entry {i}");
    }
    assert_ne!(pred(&rep3), pred(&rep), "--n-samples 3 changed nothing");
    let n2 = t.dropped.iter().filter(|e| e.psi < 1.0 && e.n >= 3.0).count();
    assert_eq!(rep2.get("dropped", METHOD_MEANBAYES).unwrap().n, n2);

    let labels = splicevi::analysis::evaluate::Labels::from_codes("cell_type", &t.truth.cell_type);
    let (lat, _) = evaluate_latents(&Posterior::new(&t.ds, &t.model, &t.params).unwrap(), &lat_opts(Some(&labels), None, 500)).unwrap();
    for l in &lat {
        eprintln!(
            "QUALITY (default preset) latent {}: dim {} PCs(90%) {} silhouette {:.3} 15-NN {:.3} logistic {:.3}",
            l.space,
            l.dim,
            l.pcs_90,
            l.silhouette.unwrap(),
            l.knn_accuracy.unwrap(),
            l.logistic.unwrap().accuracy
        );
        assert_eq!(l.n_cells, 500);
        assert!(l.pcs_90 >= 1 && l.pcs_90 <= l.dim);
    }

    // §8.1 scores the train and test splits apart: each part as a data set of its own, `all` as before.
    use splicevi::analysis::evaluate::Part;
    let post = Posterior::new(&t.ds, &t.model, &t.params).unwrap();
    let n = t.ds.n_cells();
    let parts: Vec<Option<Part>> = (0..n).map(|c| if c % 9 == 0 { None } else if c % 4 == 0 { Some(Part::Test) } else { Some(Part::Train) }).collect();
    let (by_split, _) = evaluate_latents(&post, &lat_opts(Some(&labels), Some(&parts), n)).unwrap();
    let (whole, _) = evaluate_latents(&post, &lat_opts(Some(&labels), None, n)).unwrap();
    assert_eq!(by_split.iter().filter(|l| l.split == "all").cloned().collect::<Vec<_>>(), whole);
    assert_eq!(by_split.iter().map(|l| l.split.as_str()).collect::<Vec<_>>(), ["all", "all", "all", "train", "train", "train", "test", "test", "test"]);
    for part in [Part::Train, Part::Test] {
        let cells: Vec<usize> = (0..n).filter(|&c| parts[c] == Some(part)).collect();
        let (lat, dims) = post.latent_means(&cells, 128).unwrap();
        let codes: Vec<u32> = cells.iter().map(|&c| t.truth.cell_type[c]).collect();
        for (i, space) in ["joint", "expression", "splicing"].into_iter().enumerate() {
            let r = by_split.iter().find(|l| l.split == part.name() && l.space == space).unwrap();
            assert_eq!(r.n_cells, cells.len());
            let want = splicevi::analysis::latent_metrics::silhouette(&lat[i], dims[i], &codes);
            assert!((r.silhouette.unwrap() - want).abs() <= 1e-9 * want.abs().max(1.0), "{} {space}: {:?} vs {want}", part.name(), r.silhouette);
            assert_eq!(r.pcs_90, splicevi::analysis::latent_metrics::pcs_for_variance(&lat[i], dims[i], 0.9));
        }
    }
    // A split of one class: its classifiers would score every cell right; they are nan instead.
    let parts: Vec<Option<Part>> = (0..n).map(|c| Some(if t.truth.cell_type[c] == 0 { Part::Test } else { Part::Train })).collect();
    let (by_split, _) = evaluate_latents(&post, &lat_opts(Some(&labels), Some(&parts), n)).unwrap();
    for r in &by_split {
        let one_class = r.split == "test";
        assert_eq!(r.knn_accuracy.unwrap().is_nan(), one_class, "{} {}", r.split, r.space);
        assert_eq!(r.logistic.unwrap().f1.is_nan(), one_class, "{} {}", r.split, r.space);
    }
}

// ------------------------------------------------------------------------------------------------
// The commands end to end, outputs read back with Python.

fn run_python(script: &str, args: &[&Path]) {
    let skip = std::env::var("SPLICEVI_SKIP_PYTHON").is_ok_and(|v| v == "1");
    let out = Command::new(python()).arg("-c").arg(script).args(args).output();
    match out {
        Ok(o) if o.status.success() => assert!(String::from_utf8_lossy(&o.stdout).contains("ok"), "{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) if skip => eprintln!("SKIPPED python check (SPLICEVI_SKIP_PYTHON=1): {}", String::from_utf8_lossy(&o.stderr)),
        Ok(o) => panic!("python check failed (needs numpy, scipy, pandas, anndata; SPLICEVI_SKIP_PYTHON=1 skips):\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        Err(e) if skip => eprintln!("SKIPPED python check: {e}"),
        Err(e) => panic!("no python ({e}); set SPLICEVI_PYTHON, or SPLICEVI_SKIP_PYTHON=1 to skip"),
    }
}

fn write_f32(path: &Path, m: &Mat<f32>) {
    std::fs::write(path, bytemuck::cast_slice::<f32, u8>(&m.data)).unwrap();
}

/// Rows of a DS table as (is_ds_fdr, min(n_obs_group1, n_obs_group2), emp_pvalue or None).
fn ds_calls_and_coverage(path: &Path) -> Vec<(bool, f64, Option<f64>)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("{name} not in {header:?}"));
    let (c, n1, n2) = (col("is_ds_fdr"), col("n_obs_group1"), col("n_obs_group2"));
    let p = header.iter().position(|h| *h == "emp_pvalue");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let num = |i: usize| f[i].parse::<f64>().unwrap();
            (f[c] == "True", num(n1).min(num(n2)), p.map(num))
        })
        .collect()
}

/// A `robust` run's diff-splicing runs `robust`'s test unless told otherwise, and says so: junctions
/// seen in >= 10 cells of each group whose observed PSI differ (Welch p < 0.05, the `emp_pvalue`
/// column), test mode "two", the outlier filter. `default` runs get the original's test without a word,
/// and the flags give either test on either run.
#[test]
fn diff_splicing_takes_its_test_from_the_run_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = d.join("toy.h5mu");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "2", "--out"]).arg(&data));
    let ds = |run: &Path, out: &str, extra: &[&str]| {
        ok(bin().arg("diff-splicing").arg(run).arg(&data).args(["--groupby", "subtype", "--group1", "T0_a", "--group2", "T0_b", "--n-samples-overall", "300", "--fdr", "1", "--no-plots"]).args(extra).arg("--out").arg(d.join(out)))
    };
    let read = |name: &str| std::fs::read(d.join(name)).unwrap();
    let robust_flags = ["--batch-correction", "true", "--min-obs-cells", "10", "--test-mode", "two", "--filter-outlier-cells", "true", "--max-emp-pvalue", "0.05"];
    let original_flags = ["--batch-correction", "false", "--min-obs-cells", "0", "--test-mode", "three", "--filter-outlier-cells", "false", "--max-emp-pvalue", "1"];
    for preset in ["robust", "default"] {
        let run = d.join(preset);
        ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--preset", preset, "--batch-key", "batch", "--max-epochs", "2", "--batch-size", "64", "--quiet", "--no-plots"]));
        let implicit = ds(&run, &format!("{preset}.tsv"), &[]);
        let said = implicit.contains("the robust preset's test");
        assert_eq!(said, preset == "robust", "{preset}: {implicit}");
        assert_eq!(implicit.contains("sampled after the outlier filter"), preset == "robust", "{implicit}");
        let (want, other) = if preset == "robust" { (robust_flags, original_flags) } else { (original_flags, robust_flags) };
        ds(&run, &format!("{preset}.explicit.tsv"), &want);
        assert_eq!(read(&format!("{preset}.tsv")), read(&format!("{preset}.explicit.tsv")), "{preset}: the default is not {want:?}");
        ds(&run, &format!("{preset}.other.tsv"), &other);
        assert_ne!(read(&format!("{preset}.tsv")), read(&format!("{preset}.other.tsv")), "{preset}: the flags {other:?} change nothing");
        // --batchid1 needs batch correction: on by default for robust (it used to be refused by clap
        // unless --batch-correction was given), off for default
        let mut c = bin();
        c.arg("diff-splicing").arg(&run).arg(&data).args(["--groupby", "subtype", "--group1", "T0_a", "--n-samples-overall", "50", "--no-plots", "--batchid1", "batch0", "--out"]).arg(d.join("bid.tsv"));
        if preset == "robust" {
            ok(&mut c);
        } else {
            let e = fails(&mut c);
            assert!(e.contains("need batch correction, which is off here: give --batch-correction"), "{e}");
        }
        // FDR target 1 calls every tested junction, so the table shows exactly which were tested.
        let rows = ds_calls_and_coverage(&d.join(format!("{preset}.tsv")));
        assert!(rows.iter().any(|r| r.1 < 10.0) && rows.iter().any(|r| r.1 >= 10.0), "toy data should have thin and well-covered junctions");
        if preset == "robust" {
            assert!(rows.iter().any(|r| r.1 >= 10.0 && r.2.unwrap() >= 0.05), "toy data should have covered junctions without an observed difference");
        } else {
            assert!(rows.iter().all(|r| r.2.is_none()), "the original's table has no emp_pvalue column");
        }
        for (called, cov, p) in rows {
            let tested = preset == "default" || (cov >= 10.0 && p.unwrap() < 0.05);
            assert_eq!(called, tested, "{preset}: junction seen in {cov} cells of a group, empirical p {p:?}");
        }
    }
}

#[test]
fn commands_write_anndata_and_tsv_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = d.join("toy.h5mu");
    let run = d.join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "6", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--batch-key", "batch", "--max-epochs", "2", "--n-epochs-kl-warmup", "1", "--quiet"]));
    let p = |n: &str| d.join(n);
    // Dense PSI: gzip with blocks of 7 cells, and uncompressed with blocks of 64; decoder PSI; sparse.
    ok(bin().arg("impute").arg(&run).arg(&data).arg("--out").arg(p("psi.h5ad")).args(["--block-cells", "7"]));
    ok(bin().arg("impute").arg(&run).arg(&data).arg("--out").arg(p("psi_raw.h5ad")).args(["--block-cells", "64", "--gzip", "0"]));
    ok(bin().arg("impute").arg(&run).arg(&data).arg("--out").arg(p("psi_dec.h5ad")).args(["--method", "decoder", "--transform-batch", "batch0", "batch1"]));
    ok(bin().arg("impute").arg(&run).arg(&data).arg("--out").arg(p("psi_grp.h5ad")).args(["--observed-only", "--groupby", "cell_type", "--block-cells", "13"]));
    ok(bin().arg("impute").arg(&run).arg(&data).arg("--out").arg(p("psi_cell.h5ad")).args(["--observed-only", "--n-samples", "3"]));
    std::fs::write(p("junctions.txt"), "junc_010\n\njunc_003\n junc_299 \n").unwrap();
    ok(bin().arg("impute").arg(&run).arg(&data).arg("--out").arg(p("psi_sub.h5ad")).arg("--junctions").arg(p("junctions.txt")));
    ok(bin().arg("normalize-expression").arg(&run).arg(&data).arg("--out").arg(p("expr.h5ad")).args(["--library-size", "10000", "--block-cells", "33"]));
    ok(bin().arg("diff-splicing").arg(&run).arg(&data).args(["--groupby", "subtype", "--group1", "T0_a", "--group2", "T0_b", "--n-samples-overall", "500", "--out"]).arg(p("ds.tsv")));
    ok(bin().arg("diff-splicing").arg(&run).arg(&data).args(["--groupby", "cell_type", "--method", "decoder", "--batch-correction", "--n-samples-overall", "300", "--out"]).arg(p("ds_all.tsv")));
    ok(bin().arg("diff-expression").arg(&run).arg(&data).args(["--groupby", "cell_type", "--group1", "T1", "--n-samples-overall", "500", "--out"]).arg(p("de.tsv")));
    // --n-samples (§14.2): posterior samples of z per drawn cell, decoded and averaged
    ok(bin().arg("diff-splicing").arg(&run).arg(&data).args(["--groupby", "subtype", "--group1", "T0_a", "--group2", "T0_b", "--n-samples-overall", "500", "--n-samples", "2", "--out"]).arg(p("ds_s2.tsv")));
    ok(bin().arg("diff-expression").arg(&run).arg(&data).args(["--groupby", "cell_type", "--group1", "T1", "--n-samples-overall", "500", "--n-samples", "2", "--out"]).arg(p("de_s2.tsv")));
    // every group in turn: a group's rows are those of its own --group1 run (they took the stream of
    // the comparison's place, so T1's depended on T0 coming first)
    ok(bin().arg("diff-expression").arg(&run).arg(&data).args(["--groupby", "cell_type", "--n-samples-overall", "500", "--out"]).arg(p("de_all.tsv")));
    let t1_rows = |f: &str| -> Vec<String> { std::fs::read_to_string(p(f)).unwrap().lines().filter(|l| l.contains("\tT1 vs Rest\t")).map(str::to_string).collect() };
    assert!(!t1_rows("de.tsv").is_empty() && t1_rows("de.tsv") == t1_rows("de_all.tsv"), "T1's rows differ between its own run and the run over every group");
    ok(bin().arg("evaluate").arg(&run).arg(&data).args(["--n-samples", "2", "--no-plots", "--out"]).arg(p("eval_s2.tsv")));
    let table = ok(bin().arg("evaluate").arg(&run).arg(&data).args(["--label", "cell_type", "--out"]).arg(p("eval.tsv")));
    assert!(table.contains("mean_bayes") && table.contains("splicing"), "{table}");
    // §8.2's cross-fold classification (opt-in): rows per target, latent and classifier, t-tests
    // between latents; the table without --cross-fold has none
    let said = ok(bin().arg("evaluate").arg(&run).arg(&data).args(["--cross-fold", "cell_type,subtype", "--cross-fold-permuted", "--no-plots", "--out"]).arg(p("eval_xfold.tsv")));
    assert!(said.contains("cross-fold classification of `subtype`") && said.contains("cross_fold joint"), "{said}");
    let xf = std::fs::read_to_string(p("eval_xfold.tsv")).unwrap();
    let xrows: Vec<Vec<&str>> = xf.lines().map(|l| l.split('\t').collect::<Vec<_>>()).filter(|r| r[0] == "cross_fold").collect();
    let value = |subset: &str, method: &str, metric: &str| -> f64 {
        xrows.iter().find(|r| r[1] == subset && r[2] == method && r[3] == metric).unwrap_or_else(|| panic!("no row {subset} {method} {metric}:\n{xf}"))[4].parse().unwrap()
    };
    assert_eq!(value("all", "data", "n_cells_cell_type"), 200.0);
    for col in ["cell_type", "subtype"] {
        for space in ["joint", "expression", "splicing"] {
            for m in ["logistic", "random_forest", "dummy_prior", "permuted_logistic", "permuted_random_forest"] {
                let (a, sd) = (value(space, m, &format!("accuracy_mean_{col}")), value(space, m, &format!("accuracy_sd_{col}")));
                assert!((0.0..=1.0).contains(&a) && (0.0..0.5).contains(&sd), "{space} {m} {col}: {a} ± {sd}");
            }
        }
        for pair in ["joint_vs_expression", "joint_vs_splicing", "expression_vs_splicing"] {
            let pv = value(pair, "random_forest", &format!("ttest_p_f1_weighted_{col}"));
            assert!(pv.is_nan() || (0.0..=1.0).contains(&pv), "{pair} {col}: {pv}");
        }
    }
    assert!(!std::fs::read_to_string(p("eval.tsv")).unwrap().contains("cross_fold"));
    // §8.3 (opt-in): Leiden clustering of each latent and KMeans subcluster splits within cell types
    assert!(!std::fs::read_to_string(p("eval.tsv")).unwrap().contains("clustering"), "clustering rows without --clustering");
    let said = ok(bin().arg("evaluate").arg(&run).arg(&data).args(["--label", "cell_type", "--clustering", "--subcluster-label", "cell_type", "--subcluster-of", "T1", "--subcluster-k", "2,4", "--no-plots", "--out"]).arg(p("eval_cl.tsv")));
    let cl = std::fs::read_to_string(p("eval_cl.tsv")).unwrap();
    let val = |sec: &str, subset: &str, metric: &str| -> f64 {
        let l = cl.lines().find(|l| l.starts_with(&format!("{sec}\t{subset}\t")) && l.split('\t').nth(3) == Some(metric)).unwrap_or_else(|| panic!("no {sec} {subset} {metric} in\n{cl}"));
        l.split('\t').nth(4).unwrap().parse().unwrap()
    };
    for space in ["joint", "expression", "splicing"] {
        let n = val("clustering", space, "n_clusters");
        assert!(n >= 1.0 && n <= 200.0 && val("clustering", space, "n_cells") == 200.0);
        assert_eq!(val("clustering", space, "n_clusters_one_cell_type") + val("clustering", space, "n_clusters_several_cell_type"), n);
        let acc = val("subcluster_split", space, "k2_accuracy:cell_type=T1");
        assert!(acc.is_nan() || (0.0..=1.0).contains(&acc), "{acc}");
        assert!(val("subcluster_split", space, "n_cells:cell_type=T1") > 20.0);
    }
    for pair in ["expression_vs_joint", "splicing_vs_joint", "expression_vs_splicing"] {
        let (ami, ov) = (val("clustering", pair, "ami"), val("clustering", pair, "samecluster_overlap_mean"));
        assert!(ami <= 1.0 + 1e-9 && ami >= -1.0 && (ov.is_nan() || (0.0..=1.0).contains(&ov)), "{pair}: {ami} {ov}");
    }
    assert!(!cl.lines().any(|l| l.starts_with("subcluster_split\t") && l.contains("cell_type=T0")), "--subcluster-of T1 scored T0");
    // the per-class same-cluster overlap (every class, not only --subcluster-of's), in the TSV only
    assert!(said.contains("samecluster_overlap_mean") && !said.contains("samecluster_overlap_mean:"), "{said}");
    for class in ["T0", "T1", "T2"] {
        let ov = val("clustering", "splicing_vs_joint", &format!("samecluster_overlap_mean:cell_type={class}"));
        assert!(ov.is_nan() || (0.0..=1.0).contains(&ov), "{class}: {ov}");
        assert!(val("clustering", "splicing_vs_joint", &format!("n_cells_overlap:cell_type={class}")) <= 200.0);
    }
    // --device cuda: the analysis runs its encoders and decoders on cuda:0 where it is usable; here (no
    // GPU) an error naming the device, with nothing written, never a silent CPU run.
    let imp_cuda = bin().args(["--device", "cuda"]).arg("impute").arg(&run).arg(&data).arg("--out").arg(p("psi_cuda.h5ad")).output().unwrap();
    if splicevi::cuda::cuda_usable(0).is_ok() {
        assert!(imp_cuda.status.success(), "{}", String::from_utf8_lossy(&imp_cuda.stderr));
    } else {
        let err = String::from_utf8_lossy(&imp_cuda.stderr);
        assert!(!imp_cuda.status.success() && err.contains("cuda:0"), "{err}");
        assert!(!p("psi_cuda.h5ad").exists(), "a failed --device cuda run wrote its output");
    }
    let log = ok(bin().args(["evaluate", "--train"]).arg(&data).args(["--batch-key", "batch", "--max-epochs", "2", "--n-epochs-kl-warmup", "1", "--quiet", "--mask-fraction", "0.5", "--out"]).arg(p("eval_train.tsv")));
    assert!(log.contains("training on the masked data"), "{log}");

    // Expected values computed in process for the dense outputs.
    let o = splicevi::analysis::posterior::open_run(&run, &data).unwrap();
    let post = Posterior::new(&o.ds, &o.model, &o.params).unwrap();
    let all: Vec<usize> = (0..o.ds.n_cells()).collect();
    let mean = DecodeOptions { transform_batch: vec![], n_samples: 1, seed: 0 };
    let dec = post.decode(&all, &mean, Some(SplicingFn::DmPosterior), true).unwrap();
    write_f32(&p("psi.f32"), dec.psi.as_ref().unwrap());
    let mut expr = dec.expr.unwrap();
    expr.data.iter_mut().for_each(|v| *v *= 10000.0);
    write_f32(&p("expr.f32"), &expr);

    let script = r#"
import sys, os, numpy as np, pandas as pd, anndata, scipy.sparse as sp
d = sys.argv[1]
P = lambda n: os.path.join(d, n)
psi = anndata.read_h5ad(P("psi.h5ad"))
n, j = psi.shape
assert (n, j) == (200, 300), psi.shape
exp = np.fromfile(P("psi.f32"), dtype=np.float32).reshape(n, j)
assert np.array_equal(psi.X, exp), np.abs(psi.X - exp).max()
assert np.array_equal(anndata.read_h5ad(P("psi_raw.h5ad")).X, exp)
assert list(psi.obs.columns)[:3] == ["cell_type", "subtype", "batch"] and psi.obs_names[0] == "cell_000"
assert psi.var_names[0] == "junc_000" and "event_id" in psi.var and "gene_name" in psi.var
assert psi.uns["splicevi_psi"] == "dm-posterior"
# Decoder PSI (DM model): probabilities sum to 1 within each ATSE.
dec = anndata.read_h5ad(P("psi_dec.h5ad"))
sums = pd.DataFrame(dec.X.T).groupby(dec.var["event_id"].values).sum().values
assert np.allclose(sums, 1.0, atol=1e-4), np.abs(sums - 1).max()
assert list(dec.uns["splicevi_transform_batch"]) == ["batch0", "batch1"]
# Sparse outputs: CSR, PSI only where the ATSE is observed in the cell's group / the cell.
mu_k = None
import h5py
with h5py.File(P("toy.h5mu"), "r") as f:
    g = f["mod/splicing/layers/psi_mask"]
    mask = sp.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n, j)).toarray() > 0
grp = anndata.read_h5ad(P("psi_grp.h5ad"))
assert sp.issparse(grp.X) and grp.X.shape == (n, j)
ct = grp.obs["cell_type"].values
ev = grp.var["event_id"].values
want = np.zeros((n, j), bool)
for t in np.unique(ct):
    rows = ct == t
    seen = set(ev[mask[rows].any(0)])
    want[rows] = np.isin(ev, list(seen))
got = grp.X.toarray() != 0
assert np.array_equal(got, want), (got != want).sum()
assert np.allclose(grp.X.toarray()[want], exp[want])
cell = anndata.read_h5ad(P("psi_cell.h5ad"))
assert np.array_equal(cell.X.toarray() != 0, mask) and cell.uns["splicevi_n_samples"] == 3
sub = anndata.read_h5ad(P("psi_sub.h5ad"))
assert list(sub.var_names) == ["junc_003", "junc_010", "junc_299"], list(sub.var_names)
assert np.array_equal(sub.X, exp[:, [3, 10, 299]])
expr = anndata.read_h5ad(P("expr.h5ad"))
assert expr.shape == (200, 100)
assert np.allclose(expr.X, np.fromfile(P("expr.f32"), dtype=np.float32).reshape(200, 100), rtol=1e-6)
# TSVs.
ds = pd.read_csv(P("ds.tsv"), sep="\t")
cols = ["junction_id", "gene_name", "proba_ds", "is_ds_fdr", "bayes_factor", "effect_size", "emp_effect",
        "est_prob1", "est_prob2", "emp_prob1", "emp_prob2", "n_obs_group1", "n_obs_group2"]
assert list(ds.columns) == cols + ["comparison", "group1", "group2"], list(ds.columns)
assert len(ds) == 300 and ds["is_ds_fdr"].dtype == bool and ds["n_obs_group1"].dtype.kind == "i"
assert np.allclose(ds["effect_size"], ds["est_prob2"] - ds["est_prob1"])
assert (ds["comparison"] == "T0_a vs T0_b").all() and (ds["group1"] == "T0_a").all() and (ds["group2"] == "T0_b").all()
assert ((ds["proba_ds"] >= 0) & (ds["proba_ds"] <= 1)).all()
dsa = pd.read_csv(P("ds_all.tsv"), sep="\t")
assert list(dsa.columns) == cols + ["comparison", "group1", "group2"] and len(dsa) == 900
assert sorted(dsa["group1"].unique()) == ["T0", "T1", "T2"] and (dsa["group2"] == "Rest").all()
de = pd.read_csv(P("de.tsv"), sep="\t", index_col=0)
assert len(de) == 100 and "is_de_fdr_0.05" in de.columns and "lfc_median" in de.columns
assert (np.diff(de["proba_de"].values) <= 0).all(), "DE rows are not sorted by proba_de"
assert np.allclose(de["proba_not_de"], 1 - de["proba_de"])
assert (de["comparison"] == "T1 vs Rest").all()
ev = pd.read_csv(P("eval.tsv"), sep="\t")
assert list(ev.columns) == ["section", "subset", "method", "metric", "value"]
pear = ev[(ev.subset == "dropped") & (ev.metric == "pearson")]
assert set(pear.method) == {"splicevi_dm_posterior", "splicevi_decoder", "mean_bayes"}, set(pear.method)
assert set(ev[ev.section == "latent"].subset) == {"joint", "expression", "splicing"}
assert {"latent_train", "latent_test"} <= set(ev.section), set(ev.section)
assert "silhouette_cell_type" in set(ev.metric) and "logistic_accuracy_cell_type" in set(ev.metric)
assert {"logistic_precision_weighted_cell_type", "logistic_recall_weighted_cell_type", "logistic_f1_weighted_cell_type"} <= set(ev.metric)
# --n-samples 2: other PSI / scales, the same tables
for a, b in [("ds.tsv", "ds_s2.tsv"), ("de.tsv", "de_s2.tsv")]:
    x, y = pd.read_csv(P(a), sep="\t", index_col=0), pd.read_csv(P(b), sep="\t", index_col=0)
    assert list(x.columns) == list(y.columns) and sorted(x.index) == sorted(y.index), (a, b)
    col = "est_prob1" if "est_prob1" in x else "scale1"
    assert not np.allclose(x[col], y.loc[x.index][col]), (a, b)
e2 = pd.read_csv(P("eval_s2.tsv"), sep="\t")
sel = lambda t: t[(t.section == "imputation") & (t.subset == "dropped") & (t.method == "splicevi_dm_posterior")].set_index("metric").value
assert sel(ev)["n"] == sel(e2)["n"] and sel(ev)["rmse"] != sel(e2)["rmse"]
evt = pd.read_csv(P("eval_train.tsv"), sep="\t")
assert evt[(evt.subset == "dropped") & (evt.metric == "n")].value.iloc[0] > 0
print("ok")
"#;
    run_python(script, &[d]);
    // No temporary files left next to the outputs.
    let leftovers: Vec<_> = std::fs::read_dir(d).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn commands_reject_bad_requests_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = d.join("toy.h5mu");
    let run = d.join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "1", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--batch-key", "batch", "--max-epochs", "1", "--quiet"]));
    let out = d.join("x.tsv");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["diff-splicing".into(), "--groupby".into(), "subtype".into(), "--group1".into(), "T9_z".into()], "T9_z"),
        (vec!["diff-splicing".into(), "--groupby".into(), "no_such".into()], "no_such"),
        (vec!["diff-expression".into(), "--groupby".into(), "cell_type".into(), "--fdr".into(), "2".into()], "--fdr (the FDR target) must be in [0, 1]"),
        (vec!["diff-expression".into(), "--groupby".into(), "cell_type".into(), "--n-samples-overall".into(), "0".into()], "--n-samples-overall"),
        (vec!["diff-splicing".into(), "--groupby".into(), "cell_type".into(), "--delta".into(), "-1".into()], "--delta"),
        // a continuous column: one comparison per value, 128 of them, ran silently
        (vec!["diff-splicing".into(), "--groupby".into(), "library_size".into()], "give --group1"),
        (vec!["normalize-expression".into(), "--library-size".into(), "1e300".into()], "--library-size 1e300"),
        (vec!["impute".into(), "--observed-only".into(), "--groupby".into(), "nocol".into()], "no obs column \"nocol\" (set by --groupby)"),
        (vec!["evaluate".into(), "--label".into(), "nocol".into()], "no obs column \"nocol\" (set by --label)"),
        (vec!["evaluate".into(), "--meanbayes-groupby".into(), "nocol".into()], "no obs column \"nocol\" (set by --meanbayes-groupby)"),
        (vec!["evaluate".into(), "--knn".into(), "500".into()], "at most 160 neighbours"),
        // a measurement as labels: 131 "classes" of one or two cells each, scored without a word
        (vec!["evaluate".into(), "--label".into(), "library_size".into()], "a measurement rather than classes"),
        (vec!["evaluate".into(), "--label".into(), "cell_type".into(), "--sublabel".into(), "library_size".into()], "--sublabel library_size"),
        (vec!["impute".into(), "--transform-batch".into(), "batch7".into()], "batch7"),
        (vec!["impute".into(), "--junctions".into(), d.join("nope.txt").display().to_string()], "nope.txt"),
        (vec!["evaluate".into(), "--cross-fold".into(), "cell_type,nocol".into()], "no obs column \"nocol\" (set by --cross-fold)"),
        (vec!["evaluate".into(), "--cross-fold".into(), "library_size".into()], "a measurement rather than classes"),
        (vec!["evaluate".into(), "--cross-fold".into(), "cell_type,cell_type".into()], "names `cell_type` twice"),
        (vec!["evaluate".into(), "--cross-fold-permuted".into()], "go with --cross-fold COL"),
        (vec!["evaluate".into(), "--lr".into(), "0.1".into()], "only accepted with --train"),
        (vec!["evaluate".into(), "--mask-fraction".into(), "0".into()], "mask fraction"),
        (vec!["evaluate".into(), "--n-samples".into(), "0".into()], "--n-samples must be at least 1"),
        (vec!["evaluate".into(), "--clustering".into(), "--cluster-neighbors".into(), "500".into()], "--cluster-neighbors 500"),
        (vec!["evaluate".into(), "--subcluster-label".into(), "nocol".into()], "no obs column \"nocol\" (set by --subcluster-label)"),
        (vec!["evaluate".into(), "--subcluster-label".into(), "cell_type".into(), "--subcluster-of".into(), "T9".into()], "no class `T9`"),
        (vec!["evaluate".into(), "--subcluster-label".into(), "cell_type".into(), "--subcluster-k".into(), "1,4".into()], "--subcluster-k"),
        (vec!["evaluate".into(), "--clustering".into(), "--leiden-resolution".into(), "0".into()], "--leiden-resolution"),
        (vec!["diff-splicing".into(), "--groupby".into(), "cell_type".into(), "--n-samples".into(), "0".into()], "--n-samples (posterior samples of z per drawn cell)"),
        // |ΔPSI| is at most 1: a δ of 1.5 called nothing, silently; a p-value bound of 2 filtered nothing
        (vec!["diff-splicing".into(), "--groupby".into(), "cell_type".into(), "--delta".into(), "1.5".into()], "--delta (the minimum |ΔPSI|) must be below 1"),
        (vec!["diff-splicing".into(), "--groupby".into(), "cell_type".into(), "--max-emp-pvalue".into(), "2".into()], "--max-emp-pvalue (the empirical p-value bound) must be in (0, 1]"),
        // an option of a block (or of --train) that is not asked for would do nothing: refused, not ignored
        (vec!["evaluate".into(), "--preset".into(), "paper".into()], "--train"),
        (vec!["evaluate".into(), "--quiet".into()], "--train"),
        (vec!["evaluate".into(), "--leiden-resolution".into(), "2".into()], "--clustering"),
        (vec!["evaluate".into(), "--cluster-neighbors".into(), "10".into()], "--clustering"),
        (vec!["evaluate".into(), "--subcluster-k".into(), "2,4".into()], "--subcluster-label"),
        (vec!["evaluate".into(), "--resample-fraction".into(), "0.5".into(), "--mask-fraction".into(), "0.5".into()], "--mask-fraction"),
    ];
    for (args, needle) in cases {
        let mut cmd = bin();
        cmd.arg(&args[0]).arg(&run).arg(&data).args(&args[1..]).arg("--out").arg(&out);
        let text = fails(&mut cmd);
        assert!(text.contains(needle), "{args:?}: error does not mention `{needle}`:\n{text}");
        assert!(!out.exists(), "{args:?} wrote an output");
    }
    std::fs::write(d.join("j.txt"), "junc_000\nnot_a_junction\n").unwrap();
    let text = fails(bin().arg("impute").arg(&run).arg(&data).arg("--junctions").arg(d.join("j.txt")).arg("--out").arg(d.join("p.h5ad")));
    assert!(text.contains("j.txt:2") && text.contains("not_a_junction"), "{text}");
}

/// The analyses find the obs columns their flags name as training does (global obs, then rna's, then
/// splicing's; `rna:COL` / `splicing:COL` one modality's): here columns the global obs lacks, one in
/// both modalities with other values, one in splicing's only.
#[test]
fn analyses_find_modality_obs_columns_as_training_does() {
    use splicevi::data::h5write::{column, str_array_attr, Compression};
    use splicevi::data::ObsColumn;
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let (data, run) = (p("toy.h5mu"), p("run"));
    ok(bin().args(["simulate", "--size", "toy", "--seed", "1", "--out"]).arg(&data));
    {
        let f = hdf5::File::open_rw(&data).unwrap();
        let n = f.dataset("obs/_index").unwrap().size();
        let text = |f: &dyn Fn(usize) -> &'static str| ObsColumn::Text((0..n).map(|i| f(i).to_string()).collect());
        // rna: A/B alternate (100 vs 100); splicing: every fourth cell A (50 vs 150)
        let add = [("rna", vec![("tissue", text(&|i| if i % 2 == 0 { "A" } else { "B" }))]), ("splicing", vec![("tissue", text(&|i| if i % 4 == 0 { "A" } else { "B" })), ("spl_group", text(&|i| if i % 3 == 0 { "g0" } else { "g1" }))])];
        for (m, cols) in add {
            let g = f.group(&format!("mod/{m}/obs")).unwrap();
            let mut order: Vec<String> = g.attr("column-order").unwrap().read_raw::<hdf5::types::VarLenUnicode>().unwrap().iter().map(|s| s.to_string()).collect();
            for (name, col) in &cols {
                column(&g, name, col, Compression { gzip_level: None }).unwrap();
                order.push(name.to_string());
            }
            g.delete_attr("column-order").unwrap();
            str_array_attr(&g, "column-order", &order).unwrap();
        }
    }
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--batch-key", "batch", "--max-epochs", "1", "--quiet", "--no-plots"]));
    let de = |groupby: &str, out: &str| ok(bin().arg("diff-expression").arg(&run).arg(&data).args(["--groupby", groupby, "--group1", "A", "--n-samples-overall", "100", "--out"]).arg(p(out)));
    let said = de("rna:tissue", "de_rna.tsv");
    assert!(said.contains("A vs Rest (100 vs 100 cells)") && !said.contains("differs"), "{said}");
    assert!(de("splicing:tissue", "de_spl.tsv").contains("A vs Rest (50 vs 150 cells)"));
    // unprefixed: rna's, with the warning training gives
    let said = de("tissue", "de_any.tsv");
    assert!(said.contains("A vs Rest (100 vs 100 cells)") && said.contains("obs column \"tissue\" (--groupby) differs between mod/rna/obs and mod/splicing/obs"), "{said}");
    let said = ok(bin().arg("diff-splicing").arg(&run).arg(&data).args(["--groupby", "spl_group", "--group1", "g0", "--n-samples-overall", "100", "--no-plots", "--out"]).arg(p("ds.tsv")));
    assert!(said.contains("g0 vs Rest (67 vs 133 cells)"), "{said}");
    ok(bin().arg("evaluate").arg(&run).arg(&data).args(["--label", "splicing:tissue", "--sublabel", "spl_group", "--no-plots", "--out"]).arg(p("eval.tsv")));
    ok(bin().arg("embed").arg(&run).arg(&data).args(["--color-by", "splicing:spl_group", "--out"]).arg(p("emb.h5ad")));
    assert!(p("emb.embedding.png").exists());
    // the column travels with the embedding under the name given, so the picture can be redrawn
    ok(bin().args(["plot", "embedding"]).arg(p("emb.h5ad")).args(["--color-by", "splicing:spl_group", "--out"]).arg(p("redrawn")));
    assert!(p("redrawn.png").exists());
    ok(bin().arg("impute").arg(&run).arg(&data).args(["--observed-only", "--groupby", "splicing:spl_group", "--out"]).arg(p("psi.h5ad")));
    // a missing column: the list is training's, the modalities' columns included
    let e = fails(bin().arg("embed").arg(&run).arg(&data).args(["--color-by", "nocol", "--out"]).arg(p("emb2.h5ad")));
    assert!(e.contains("no obs column \"nocol\" (set by --color-by)") && e.contains("\"rna:tissue\"") && e.contains("\"splicing:spl_group\""), "{e}");
}

/// Options and outputs are checked before the work: obs columns named by options before `evaluate
/// --train` trains, output places (and the files written beside --out) before the analyses compute, so
/// nothing is half written.
/// A non-integer count is met with advice the command that printed it can follow.
/// Metrics that come out nan say why.
/// `--group2` alone compares every other group with it.
#[test]
fn analyses_check_before_working_and_explain_what_they_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = |n: &str| d.join(n);
    let data = p("toy.h5mu");
    let run = p("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "1", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--batch-key", "batch", "--max-epochs", "1", "--quiet", "--no-plots"]));

    // evaluate --train: a missing obs column is found before training, not after every epoch.
    for flag in ["--label", "--meanbayes-groupby"] {
        let e = fails(bin().args(["evaluate", "--train"]).arg(&data).args([flag, "nocol", "--max-epochs", "50", "--early-stopping", "false", "--out"]).arg(p("e.tsv")));
        assert!(e.contains(&format!("no obs column \"nocol\" (set by {flag})")), "{e}");
        assert!(!e.contains("masked") && !e.contains("training on the masked data"), "{flag}: checked after the work:\n{e}");
    }

    // An output under a file: refused up front by every analysis, before any comparison or scoring.
    std::fs::write(p("afile"), "x").unwrap();
    // evaluate --train-dir is written too: not a file, and not over another run (its features.json
    // would have stayed beside the new model)
    for (dir, needle) in [(p("afile"), "exists and is not a directory"), (run.clone(), "already holds a run")] {
        let e = fails(bin().args(["evaluate", "--train"]).arg(&data).arg("--train-dir").arg(&dir).args(["--max-epochs", "50", "--out"]).arg(p("e.tsv")));
        assert!(e.contains(needle) && !e.contains("training on the masked data"), "{e}");
    }
    let under = p("afile/x.tsv");
    let groups = ["--groupby", "cell_type", "--group1", "T1", "--n-samples-overall", "100"];
    for (cmd, args) in [("diff-splicing", &groups[..]), ("diff-expression", &groups[..]), ("evaluate", &[][..]), ("embed", &[][..])] {
        let e = fails(bin().arg(cmd).arg(&run).arg(&data).args(args).arg("--out").arg(&under));
        assert!(e.contains("afile is not a directory"), "{cmd}: {e}");
        assert!(!e.contains("vs Rest") && !e.contains("masked"), "{cmd}: computed before finding the output unwritable:\n{e}");
    }
    // The files beside --out too: evaluate wrote x.tsv, then failed on x.pairs.tsv.
    std::fs::create_dir_all(p("o2/x.pairs.tsv")).unwrap();
    let e = fails(bin().arg("evaluate").arg(&run).arg(&data).arg("--out").arg(p("o2/x.tsv")));
    assert!(e.contains("x.pairs.tsv (the pairs table beside --out): is a directory") && !e.contains("masked"), "{e}");
    assert!(!p("o2/x.tsv").exists(), "evaluate left a half-written output set");
    std::fs::create_dir_all(p("o3/x.impute.png")).unwrap();
    let e = fails(bin().arg("evaluate").arg(&run).arg(&data).arg("--out").arg(p("o3/x.tsv")));
    assert!(e.contains("x.impute.png (the picture beside --out; --no-plots skips it)"), "{e}");
    std::fs::create_dir_all(p("o4/ds.volcano.svg")).unwrap();
    let e = fails(bin().arg("diff-splicing").arg(&run).arg(&data).args(groups).arg("--out").arg(p("o4/ds.tsv")));
    assert!(e.contains("ds.volcano.svg (the picture beside --out") && !e.contains("vs Rest"), "{e}");
    assert!(!p("o4/ds.tsv").exists());
    ok(bin().arg("diff-splicing").arg(&run).arg(&data).args(groups).arg("--no-plots").arg("--out").arg(p("o4/ds.tsv")));

    // --group2 alone: every other group against it (it said "group 1 and group 2 are both `T2`").
    for cmd in ["diff-splicing", "diff-expression"] {
        let out = p(&format!("{cmd}_vs_T2.tsv"));
        let plots: &[&str] = if cmd == "diff-splicing" { &["--no-plots"] } else { &[] };
        let said = ok(bin().arg(cmd).arg(&run).arg(&data).args(["--groupby", "cell_type", "--group2", "T2", "--n-samples-overall", "100"]).args(plots).arg("--out").arg(&out));
        assert!(said.contains("T0 vs T2") && said.contains("T1 vs T2") && !said.contains("T2 vs T2"), "{cmd}: {said}");
        let text = std::fs::read_to_string(&out).unwrap();
        let mut cmps: Vec<&str> = text.lines().skip(1).map(|l| l.split('\t').rev().nth(2).unwrap()).collect();
        cmps.dedup();
        assert_eq!(cmps, ["T0 vs T2", "T1 vs T2"], "{cmd}");
    }

    // Non-integer splicing counts: the analyses take their data options from the run, so the advice
    // is the run's setting, not a flag they do not accept; evaluate --train does accept the flag.
    let mut ds = splicevi::data::load::load(&data, &DataOptions::default()).unwrap();
    let s = &mut ds.splicing;
    let atse = s.junc2atse[s.junction[s.indptr[0]] as usize];
    for e in s.cell_range(0) {
        if s.junc2atse[s.junction[e] as usize] == atse {
            s.n[e] += 0.5;
            s.psi[e] = s.k[e] / s.n[e];
        }
    }
    splicevi::data::h5write::write_h5mu(&p("frac.h5mu"), &ds, None, None, &[], splicevi::data::h5write::Compression { gzip_level: None }).unwrap();
    for cmd in ["impute", "embed", "evaluate"] {
        let e = fails(bin().arg(cmd).arg(&run).arg(p("frac.h5mu")).arg("--out").arg(p("frac.out")));
        assert!(e.contains("is not an integer") && e.contains("require_integer_splicing in its config.json"), "{cmd}: {e}");
        assert!(!e.contains("--require-integer-splicing false accepts"), "{cmd} advises a flag it does not take: {e}");
    }
    let e = fails(bin().args(["evaluate", "--train"]).arg(p("frac.h5mu")).arg("--out").arg(p("frac.tsv")));
    assert!(e.contains("--require-integer-splicing false accepts"), "{e}");

    // Cells without a label are left out of the label metrics (they were a class `nan`), and a class
    // of fewer than 5 cells out of the classifiers; stderr says how many and which.
    let mut ds = splicevi::data::load::load(&data, &DataOptions::default()).unwrap();
    let col = ds.obs.iter_mut().find(|(n, _)| n == "cell_type").map(|(_, c)| c).unwrap();
    let splicevi::data::ObsColumn::Categorical { codes, categories, .. } = col else { panic!("cell_type is not categorical") };
    categories.push("rare".into());
    codes[..7].iter_mut().for_each(|c| *c = -1);
    codes[7..10].iter_mut().for_each(|c| *c = categories.len() as i32 - 1);
    // an age per cell (3, 18 or 24 months; none for every tenth cell) for --age
    let ages: Vec<f64> = (0..ds.n_cells()).map(|c| if c % 10 == 0 { f64::NAN } else { [3.0, 18.0, 24.0][c % 3] }).collect();
    ds.obs.push(("age".into(), splicevi::data::ObsColumn::numeric(ages)));
    splicevi::data::h5write::write_h5mu(&p("unlabelled.h5mu"), &ds, None, None, &[], splicevi::data::h5write::Compression { gzip_level: None }).unwrap();
    let said = ok(bin().arg("evaluate").arg(&run).arg(p("unlabelled.h5mu")).args(["--label", "cell_type", "--age", "age", "--no-plots", "--out"]).arg(p("unlabelled.tsv")));
    assert!(said.contains("--label cell_type: 7 of the 200 cells scored have no label"), "{said}");
    assert!(said.contains("leave out the classes of fewer than 5 cells (3 cells): `rare` (3 cells)"), "{said}");
    let table = std::fs::read_to_string(p("unlabelled.tsv")).unwrap();
    for (metric, want) in [("n_cells", "200"), ("n_cells_labelled_cell_type", "193"), ("n_cells_classified_cell_type", "190")] {
        assert!(table.contains(&format!("latent\tjoint\tsplicevi\t{metric}\t{want}\n")), "{metric}: {table}");
    }
    // The run records its train/validation split (180 + 20 cells, §6.3): the latent metrics of the
    // cells it trained on and of the others are rows of their own (§8.1's train and test splits).
    assert!(said.contains("the run's train/validation split: 180 cells it trained on (rows latent_train), 20 validation cells (latent_test)"), "{said}");
    for (section, cells) in [("latent_train", 180), ("latent_test", 20)] {
        for space in ["joint", "expression", "splicing"] {
            assert!(table.contains(&format!("{section}\t{space}\tsplicevi\tn_cells\t{cells}\n")), "{section} {space}: {table}");
            assert!(table.contains(&format!("{section}\t{space}\tsplicevi\tlogistic_f1_weighted_cell_type\t")), "{section} {space}: {table}");
        }
    }
    // --age (§8.1's age R²): the cells with an age, per split; per label class of 25 or more aged
    // cells; a split too small for it is nan, and a line says why.
    assert!(said.contains("--age age: 180 of the 200 cells scored have an age"), "{said}");
    let value = |section: &str, metric: &str| -> f64 {
        let line = table.lines().find(|l| l.starts_with(&format!("{section}\tjoint\tsplicevi\t{metric}\t"))).unwrap_or_else(|| panic!("no {section} {metric}: {table}"));
        line.rsplit('\t').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("latent", "age_n_cells"), 180.0);
    assert!(value("latent", "age_r2").is_finite() && value("latent_train", "age_r2").is_finite());
    assert!(value("latent_test", "age_r2").is_nan() && value("latent_test", "age_n_cells") < 25.0);
    assert!(said.contains("latent_test age_r2 is nan (joint, expression, splicing): an age regression needs 25 or more cells with an age"), "{said}");
    let t0 = value("latent", "age_n_cells:cell_type=T0");
    assert!(t0 >= 25.0 && value("latent", "age_r2:cell_type=T0").is_finite(), "{table}");
    // stdout's latent table has the age R² column, the TSV's value to 4 decimals
    let head = said.lines().find(|l| l.starts_with("split ")).unwrap_or_else(|| panic!("{said}"));
    assert!(head.contains(" age_r2"), "{head}");
    let joint = said.lines().find(|l| l.starts_with("all ") && l.contains(" joint ")).unwrap();
    assert!(joint.trim_end().ends_with(&format!(" {:.4}", value("latent", "age_r2"))), "{joint}");
    // A run that does not record its split: all cells together, and a line saying so.
    std::fs::remove_file(run.join("split.json")).unwrap();
    let said = ok(bin().arg("evaluate").arg(&run).arg(&data).args(["--label", "cell_type", "--no-plots", "--out"]).arg(p("nosplit.tsv")));
    assert!(said.contains("does not record its train/validation split (it predates split.json): the latent metrics score all cells together"), "{said}");
    let table = std::fs::read_to_string(p("nosplit.tsv")).unwrap();
    assert!(table.contains("latent\tjoint\tsplicevi\tn_cells\t200\n") && !table.contains("latent_train") && !table.contains("latent_test"), "{table}");

    // Nothing scored: nan in the table, and a warning saying why.
    let said = ok(bin().arg("evaluate").arg(&run).arg(&data).args(["--min-atse-count", "100000", "--no-plots", "--out"]).arg(p("nan.tsv")));
    assert!(said.contains("warning: evaluate: imputation `dropped`, `observed`, `all`: every metric is nan: no entry is scored") && said.contains("--min-atse-count"), "{said}");
    let table = std::fs::read_to_string(p("nan.tsv")).unwrap();
    assert!(table.contains("imputation\tdropped\tmean_bayes\tpearson\tnan"), "{table}");
}

/// Group names in the diff-splicing / diff-expression TSVs: a group called "Rest" made the rows of the
/// one-against-the-rest comparison read "Rest vs Rest"; the other cells are then "Rest (all other
/// cells)", and the command says so. Names with a tab, a line break or `"` came out with spaces: they
/// are quoted now, read back unchanged by pandas and by the volcano's reader.
#[test]
fn group_names_reach_the_tables_unchanged_and_unambiguous() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = |n: &str| d.join(n);
    ok(bin().args(["simulate", "--size", "toy", "--seed", "5", "--out"]).arg(p("toy.h5mu")));
    let script = r#"
import sys, shutil, h5py
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "r+") as f:
    for obs in ("obs", "mod/rna/obs", "mod/splicing/obs"):
        g = f[f"{obs}/cell_type"]
        attrs = dict(g["categories"].attrs)
        del g["categories"]
        g.create_dataset("categories", data=["Rest", "tab\there", 'two\nlines "q"'], dtype=h5py.string_dtype())
        g["categories"].attrs.update(attrs)
print("ok")
"#;
    run_python(script, &[&p("toy.h5mu"), &p("names.h5mu")]);
    if !p("names.h5mu").exists() {
        return; // (python skipped)
    }
    let (data, run) = (p("names.h5mu"), p("run"));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    let said = ok(bin().arg("diff-splicing").arg(&run).arg(&data).args(["--groupby", "cell_type", "--n-samples-overall", "100", "--out"]).arg(p("ds.tsv")));
    assert!(said.contains("`cell_type` has a group called Rest: the other cells of each comparison are called `Rest (all other cells)`"), "{said}");
    assert!(said.contains("Rest vs Rest (all other cells)"), "{said}");
    let tab = "tab\there";
    ok(bin().arg("diff-expression").arg(&run).arg(&data).args(["--groupby", "cell_type", "--group1", tab, "--n-samples-overall", "100", "--out"]).arg(p("de.tsv")));
    ok(bin().arg("diff-expression").arg(&run).arg(&data).args(["--groupby", "cell_type", "--group1", tab, "--group2", "Rest", "--n-samples-overall", "100", "--out"]).arg(p("de_vs_rest.tsv")));
    // The volcano drawn beside ds.tsv read the names back: one panel per comparison, as written.
    let v = splicevi::plot::volcano::Volcano::from_file(&p("ds.tsv"), None).unwrap();
    let panels: Vec<&str> = v.panels.iter().map(|p| p.comparison.as_str()).collect();
    assert_eq!(panels, ["Rest vs Rest (all other cells)", "tab\there vs Rest (all other cells)", "two\nlines \"q\" vs Rest (all other cells)"]);
    let script = r#"
import sys, os, pandas as pd
d = sys.argv[1]
names = ["Rest", "tab\there", 'two\nlines "q"']
rest = "Rest (all other cells)"
ds = pd.read_csv(os.path.join(d, "ds.tsv"), sep="\t")
assert len(ds) == 900 and list(ds["group1"].unique()) == names, ds["group1"].unique()
assert (ds["group2"] == rest).all() and (ds["comparison"] == ds["group1"] + " vs " + rest).all()
assert ds["junction_id"].str.startswith("junc_").all()
de = pd.read_csv(os.path.join(d, "de.tsv"), sep="\t", index_col=0)
assert len(de) == 100 and (de["group1"] == names[1]).all() and (de["group2"] == rest).all(), de["group1"].unique()
assert (de["comparison"] == names[1] + " vs " + rest).all()
dr = pd.read_csv(os.path.join(d, "de_vs_rest.tsv"), sep="\t", index_col=0)
assert (dr["group2"] == "Rest").all() and (dr["comparison"] == names[1] + " vs Rest").all()
print("ok")
"#;
    run_python(script, &[d]);
}

/// `--junctions` / `--genes` lists: a name the data holds twice (anndata allows it) is ambiguous and
/// refused, naming both positions, instead of silently taking one of them.
#[test]
fn a_name_list_refuses_a_name_the_data_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("names.txt");
    std::fs::write(&list, "b\nd\n").unwrap();
    let known: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    assert_eq!(splicevi::analysis::impute::read_name_list(&list, &known, "junction").unwrap(), vec![1, 3]);
    let repeated: Vec<String> = ["a", "b", "c", "b", "d"].iter().map(|s| s.to_string()).collect();
    let e = splicevi::analysis::impute::read_name_list(&list, &repeated, "junction").unwrap_err().to_string();
    assert!(e.contains("names.txt:1") && e.contains("`b` is ambiguous") && e.contains("at 1 and 3"), "{e}");
    std::fs::write(&list, "d\n").unwrap();
    assert_eq!(splicevi::analysis::impute::read_name_list(&list, &repeated, "junction").unwrap(), vec![4]);
}

/// `--modality-weights cell`: each cell reads its own row of the per-cell weight table, found by its
/// name whatever the order of the data; a cell the run did not train on reads the mean row (§14.2), and
/// the command says how many did. (Rows were taken by position: a permuted or subset file silently gave
/// cells other cells' weights, and `embed` and `impute` disagreed on the same file.)
#[test]
fn cell_modality_weights_follow_the_cell_names() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = |n: &str| d.join(n);
    ok(bin().args(["simulate", "--size", "toy", "--seed", "7", "--out"]).arg(p("toy.h5mu")));
    ok(bin().arg("train").arg(p("toy.h5mu")).arg("--out").arg(p("run")).args(["--modality-weights", "cell", "--max-epochs", "30", "--lr", "0.05", "--n-epochs-kl-warmup", "2", "--quiet", "--no-plots"]));
    // The cells in another order, the first 30 renamed (cells the run never saw); and all renamed.
    run_python(
        r#"
import sys, numpy as np, mudata, warnings
warnings.simplefilter("ignore")
src, other, new = sys.argv[1:4]
m = mudata.read_h5mu(src)
m2 = m[np.random.RandomState(0).permutation(m.n_obs)].copy()
for path, n_new in ((other, 30), (new, m2.n_obs)):
    names = np.array(m2.obs_names, dtype=object)
    names[:n_new] = [f"new_{i}" for i in range(n_new)]
    for k in m2.mod:
        m2.mod[k].obs_names = names
    m2.obs_names = names
    m2.write(path)
    m2 = m[np.random.RandomState(0).permutation(m.n_obs)].copy()
print("ok")
"#,
        &[&p("toy.h5mu"), &p("other.h5mu"), &p("new.h5mu")],
    );
    ok(bin().arg("embed").arg(p("run")).arg(p("toy.h5mu")).arg("--out").arg(p("full.h5ad")).arg("--no-plots"));
    let said = ok(bin().arg("embed").arg(p("run")).arg(p("other.h5mu")).arg("--out").arg(p("other.h5ad")).arg("--no-plots"));
    assert!(said.contains("30 of 200 cells") && said.contains("mean of the learned per-cell modality weights"), "{said}");
    let said = ok(bin().arg("embed").arg(p("run")).arg(p("new.h5mu")).arg("--out").arg(p("new.h5ad")).arg("--no-plots"));
    assert!(said.contains("200 of 200 cells"), "{said}");
    // --resume goes on training the same rows: it needs the training cells in their order
    let e = fails(bin().arg("train").arg(p("other.h5mu")).arg("--out").arg(p("run")).args(["--resume", "--max-epochs", "31"]));
    assert!(e.contains("cell 0 is `new_0`") && e.contains("same order"), "{e}");
    for (data, out) in [("toy.h5mu", "psi_full.h5ad"), ("other.h5mu", "psi_other.h5ad"), ("new.h5mu", "psi_new.h5ad")] {
        ok(bin().arg("impute").arg(p("run")).arg(p(data)).arg("--out").arg(p(out)).args(["--method", "decoder"]));
    }
    run_python(
        r#"
import sys, numpy as np, anndata
d = sys.argv[1]
for kind, key in (("", "X_splicevi_joint"), ("psi_", None)):
    full, other, new = (anndata.read_h5ad(f"{d}/{kind}{n}.h5ad") for n in ("full", "other", "new"))
    get = (lambda a: a.obsm[key]) if key else (lambda a: np.asarray(a.X))
    seen = ~other.obs_names.str.startswith("new_")
    assert seen.sum() == 170
    # a cell seen in training gives what it gave in the training file, at its new place
    rows = full.obs_names.get_indexer(other.obs_names[seen])
    assert np.allclose(get(other)[seen], get(full)[rows], rtol=0, atol=1e-6), np.abs(get(other)[seen] - get(full)[rows]).max()
    # a renamed cell reads the mean row: as in the file where every cell is new
    assert np.allclose(get(other)[~seen], get(new)[~seen], rtol=0, atol=1e-6)
    # and the mean row is not the cell's own (else this test could not tell them apart)
    orig = full.obs_names[np.random.RandomState(0).permutation(full.n_obs)]
    diff = np.abs(get(new) - get(full)[full.obs_names.get_indexer(orig)]).max()
    assert diff > 1e-4, diff
print("ok")
"#,
        &[d],
    );
}

/// The analyses match a categorical covariate's categories to the run's by name, as they do batches: a
/// file that lists them in another order, or only some of them, decodes and embeds each cell as the
/// training data did; a category the run never saw is refused by name. (They were taken by their
/// position in each file's own list: a subset of T1's cells decoded T1_a as T0_a.)
#[test]
fn categorical_covariates_are_matched_to_the_run_by_name() {
    use splicevi::analysis::posterior::open_run;
    use splicevi::data::h5write::{write_h5mu, Compression};
    use splicevi::data::ObsColumn;
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let data = p("d.h5mu");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "3", "--out"]).arg(&data));
    let run = p("run");
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--batch-key", "batch", "--categorical-covariate", "subtype", "--encode-covariates", "true", "--max-epochs", "2", "--quiet", "--no-plots"]));
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["categorical_levels"][0].as_array().map(|a| a.len()), Some(6), "{}", cfg["categorical_levels"]);
    // (latent means, decoder PSI) of the cells `names` from the data file `f`
    let outputs = |f: &Path, names: &[String]| -> (Vec<f32>, Vec<f32>) {
        let o = open_run(&run, f).unwrap();
        let cells: Vec<usize> = names.iter().map(|n| o.ds.cell_names.iter().position(|c| c == n).unwrap()).collect();
        let post = Posterior::new(&o.ds, &o.model, &o.params).unwrap();
        let lat = post.latents(&cells).unwrap().qz_m.data;
        let psi = post.decode(&cells, &DecodeOptions { transform_batch: vec![], n_samples: 1, seed: 0 }, Some(SplicingFn::Decoder), false).unwrap().psi.unwrap().data;
        (lat, psi)
    };
    let ds = splicevi::data::load::load(&data, &DataOptions::default()).unwrap();
    fn subtype(ds: &mut Dataset) -> (&mut Vec<i32>, &mut Vec<String>) {
        let col = ds.obs.iter_mut().find(|(n, _)| n == "subtype").map(|(_, c)| c).unwrap();
        let ObsColumn::Categorical { codes, categories, .. } = col else { panic!("subtype is not categorical") };
        (codes, categories)
    }
    // the same cells with the categories listed in reverse
    let mut rev = ds.clone();
    let (codes, cats) = subtype(&mut rev);
    let k = cats.len() as i32;
    cats.reverse();
    codes.iter_mut().for_each(|c| *c = k - 1 - *c);
    write_h5mu(&p("rev.h5mu"), &rev, None, None, &[], Compression { gzip_level: None }).unwrap();
    // T1's cells only, listing only T1's two subtypes (written by mudata, as a user would cut it)
    let t1 = p("t1.h5mu");
    let script = r#"
import sys, mudata as md
m = md.read_h5mu(sys.argv[1])
s = m[m.obs.cell_type == "T1"].copy()
for o in (s.obs, s["rna"].obs, s["splicing"].obs):
    if "subtype" in o:
        o["subtype"] = o["subtype"].cat.remove_unused_categories()
s.write(sys.argv[2])
print("\n".join(s.obs_names))
"#;
    let out = Command::new(python()).arg("-c").arg(script).arg(&data).arg(&t1).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t1_names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert!(t1_names.len() > 10, "{t1_names:?}");
    let sub = splicevi::data::load::load(&t1, &DataOptions { categorical_covariate_keys: vec!["subtype".into()], ..Default::default() }).unwrap();
    assert_eq!(sub.covariates.categorical[0].levels, ["T1_a", "T1_b"], "the subset lists two categories");

    let all = ds.cell_names.clone();
    // (compared whole, reported briefly: the vectors run to thousands of values)
    assert!(outputs(&data, &all) == outputs(&p("rev.h5mu"), &all), "categories listed in reverse: other latents or PSI");
    assert!(outputs(&data, &t1_names) == outputs(&t1, &t1_names), "a subset listing two categories: other latents or PSI");
    // the covariate matters (so the comparisons above can fail): other categories give other outputs
    let mut shifted = ds.clone();
    let (codes, _) = subtype(&mut shifted);
    codes.iter_mut().for_each(|c| *c = (*c + 1) % k);
    write_h5mu(&p("shifted.h5mu"), &shifted, None, None, &[], Compression { gzip_level: None }).unwrap();
    let (a, b) = (outputs(&data, &all), outputs(&p("shifted.h5mu"), &all));
    assert!(a.0 != b.0 && a.1 != b.1, "the categorical covariate changes neither the latent nor the decode");
    // --resume reads them the same way: resumed on either file, the same model
    let copy = |to: &Path| {
        std::fs::create_dir(to).unwrap();
        for e in std::fs::read_dir(&run).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    };
    let resumed = |name: &str, f: &Path| -> Vec<u8> {
        let r = p(name);
        copy(&r);
        ok(bin().arg("train").arg(f).arg("--out").arg(&r).args(["--resume", "--max-epochs", "3", "--quiet", "--no-plots"]));
        std::fs::read(r.join("model.safetensors")).unwrap()
    };
    assert!(resumed("res_a", &data) == resumed("res_b", &p("rev.h5mu")), "resumed on the reversed categories, another model");
    // a category the run never saw
    let mut unseen = ds.clone();
    subtype(&mut unseen).1[0] = "T9_z".into();
    write_h5mu(&p("unseen.h5mu"), &unseen, None, None, &[], Compression { gzip_level: None }).unwrap();
    for cmd in ["impute", "embed"] {
        let e = fails(bin().arg(cmd).arg(&run).arg(p("unseen.h5mu")).arg("--out").arg(p("unseen.out.h5ad")));
        assert!(e.contains("unseen.h5mu") && e.contains("category `T9_z` of `subtype` (cell ") && e.contains("was not in the training data"), "{cmd}: {e}");
    }
    // a run written before the levels were stored: categories by position, with a warning; a category
    // past the model's count is refused by name (it failed inside the decoder)
    let old = p("old");
    copy(&old);
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(old.join("config.json")).unwrap()).unwrap();
    let o = c.as_object_mut().unwrap();
    o.remove("categorical_levels");
    o.remove("label_levels");
    std::fs::write(old.join("config.json"), serde_json::to_string(&c).unwrap()).unwrap();
    let said = ok(bin().arg("impute").arg(&old).arg(&data).arg("--out").arg(p("old.h5ad")));
    assert!(said.contains("trained before runs stored") && said.contains("`subtype`"), "{said}");
    let mut seventh = ds.clone();
    let (codes, cats) = subtype(&mut seventh);
    cats.push("T9_z".into());
    codes[0] = 6;
    write_h5mu(&p("seventh.h5mu"), &seventh, None, None, &[], Compression { gzip_level: None }).unwrap();
    let e = fails(bin().arg("impute").arg(&old).arg(p("seventh.h5mu")).arg("--out").arg(p("seventh.h5ad")));
    assert!(e.contains("seventh.h5mu: `subtype` has 7 categories, but the model of") && e.contains("`T9_z` (cell 0, `") && e.contains("has no column in it"), "{e}");
    // ... but one that no cell has is harmless (a sliced file keeps its categories)
    let mut unused = ds.clone();
    subtype(&mut unused).1.push("T9_unused".into());
    write_h5mu(&p("unused.h5mu"), &unused, None, None, &[], Compression { gzip_level: None }).unwrap();
    ok(bin().arg("impute").arg(&old).arg(p("unused.h5mu")).arg("--out").arg(p("unused.h5ad")));
}

/// Options that would change nothing are refused, naming why (QA pass F found each accepted silently,
/// with byte-identical outputs): `--seed` with one sample (the posterior mean is decoded),
/// `--batch-correction true` on a one-batch run, `evaluate --knn` with nothing k-NN scores,
/// `--expand-variable-junctions` without a selection to widen, `embed --color-by` of a column the
/// output has anyway with `--no-plots`. And `evaluate --train` refuses, before training, outputs
/// inside `--train-dir` (it replaced the kept run's config.json) or a `--train-dir` at an output's path.
#[test]
fn options_that_would_change_nothing_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = d.join("toy.h5mu");
    let run = d.join("run");
    ok(bin().args(["simulate", "--size", "toy", "--seed", "3", "--out"]).arg(&data));
    ok(bin().arg("train").arg(&data).arg("--out").arg(&run).args(["--max-epochs", "1", "--quiet", "--no-plots"]));
    let out = |n: &str| d.join(n).display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["impute".into(), "--seed".into(), "5".into(), "--out".into(), out("i.h5ad")], "--seed 5 has no effect here: with --n-samples 1"),
        (vec!["normalize-expression".into(), "--seed".into(), "5".into(), "--out".into(), out("n.h5ad")], "--seed 5 has no effect here: with --n-samples 1"),
        (vec!["diff-splicing".into(), "--groupby".into(), "cell_type".into(), "--batch-correction".into(), "true".into(), "--out".into(), out("ds.tsv")], "--batch-correction true has no effect here"),
        (vec!["diff-expression".into(), "--groupby".into(), "cell_type".into(), "--batch-correction".into(), "true".into(), "--out".into(), out("de.tsv")], "--batch-correction true has no effect here"),
        (vec!["evaluate".into(), "--knn".into(), "5".into(), "--no-plots".into(), "--out".into(), out("e.tsv")], "--knn 5 has no effect here"),
        (vec!["evaluate".into(), "--expand-variable-junctions".into(), "--no-plots".into(), "--out".into(), out("e.tsv")], "--expand-variable-junctions widens"),
        (vec!["embed".into(), "--no-plots".into(), "--color-by".into(), "cell_type".into(), "--out".into(), out("l.h5ad")], "--color-by cell_type has no effect with --no-plots"),
        // (not a no-op, a message: the switch's value given with a space became a third path)
        (vec!["evaluate".into(), "--exclude-psi-one".into(), "false".into(), "--out".into(), out("e.tsv")], "`false` looks like a switch's value: give it with `=`"),
    ];
    for (args, want) in cases {
        let e = fails(bin().arg(&args[0]).arg(&run).arg(&data).args(&args[1..]));
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!d.join(args.last().unwrap()).exists(), "{args:?} wrote its output");
    }
    // the same options where they do something
    ok(bin().arg("impute").arg(&run).arg(&data).args(["--seed", "5", "--n-samples", "2", "--out"]).arg(d.join("i2.h5ad")));
    ok(bin().arg("evaluate").arg(&run).arg(&data).args(["--knn", "5", "--label", "cell_type", "--no-plots", "--out"]).arg(d.join("e2.tsv")));
    // evaluate --train: the outputs and the kept run apart, checked before any training
    let td = d.join("td");
    for (o, t, want) in [(td.join("config.json"), td.clone(), "is inside --train-dir"), (d.join("e3.tsv"), d.join("e3.tsv"), "is the path of --out"), (d.join("e4.tsv"), d.join("e4.pairs.tsv"), "is the path of")] {
        let e = fails(bin().args(["evaluate", "--train"]).arg(&data).arg("--train-dir").arg(&t).args(["--max-epochs", "1", "--quiet", "--no-plots", "--out"]).arg(&o));
        assert!(e.contains(want), "{}: {e}", o.display());
        assert!(!t.exists() && !o.exists(), "{}: something was trained or written", o.display());
    }
}
