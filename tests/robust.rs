//! The `robust` preset (docs/robust.md): learning on simulated data with splicing-only subtypes
//! (latents, differential splicing, masked-ATSE imputation), and the data statistics it stores in the
//! checkpoint.

use splicevi::analysis::evaluate::mask_atses;
use splicevi::analysis::scorecard::{score, ScoreOptions, Scorecard};
use splicevi::data::simulate::{simulate, SimConfig, SimSize};
use splicevi::data::{DataOptions, Dataset};
use splicevi::model::{ModelConfig, Params};
use splicevi::train::trainer::{load_model, RunConfig, Trainer};
use splicevi::train::{presets, TrainConfig};
use std::path::Path;
use std::sync::OnceLock;

fn run_config(ds: &Dataset, preset: &str, model: ModelConfig, train: TrainConfig) -> RunConfig {
    RunConfig::for_dataset(preset, model, train, DataOptions { batch_key: Some("batch".into()), ..Default::default() }, ds)
}

/// The `robust` preset exactly as `--preset robust` resolves it (100 epochs, batch 256), trained on a
/// simulated dataset (2,000 cells, 300 genes, 2,000 junctions; 3 cell types × 2 splicing-only subtypes,
/// 2 batches) with 25% of each cell's ATSEs held out, then scored.
fn scorecard() -> &'static Scorecard {
    static CELL: OnceLock<Scorecard> = OnceLock::new();
    CELL.get_or_init(|| {
        let cfg = SimConfig { n_cells: 2000, n_genes: 300, n_junctions: 2000, ..SimConfig::preset(SimSize::Small, 0) };
        let (ds, truth) = simulate(&cfg).unwrap();
        let (masked, dropped) = mask_atses(&ds, 0.25, 0).unwrap();
        let (model, train) = presets::preset("robust").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut t = Trainer::new(&masked, run_config(&masked, "robust", model, train), dir.path()).unwrap();
        t.verbose = false;
        t.fit().unwrap();
        // The filtered DS columns use the coverage filter `diff-splicing` applies to robust runs.
        let so = ScoreOptions { ds_min_obs: presets::ds_min_obs_cells("robust"), ..ScoreOptions::default() };
        let sc = score(&ds, &truth, &masked, &dropped, &t.model, &t.params, &so).unwrap();
        eprintln!("robust scorecard: {sc:?}");
        sc
    })
}

#[test]
fn robust_latents_separate_cell_types_and_splicing_only_subtypes() {
    let s = scorecard();
    assert!(s.joint_celltype >= 0.95, "joint latent, cell type 15-NN accuracy {:.3}", s.joint_celltype);
    assert!(s.joint_subtype >= 0.90, "joint latent, subtype-within-cell-type 15-NN accuracy {:.3}", s.joint_subtype);
    assert!(s.spl_subtype >= 0.90, "splicing latent, subtype-within-cell-type 15-NN accuracy {:.3}", s.spl_subtype);
    // each half is an embedding of its own modality (`cross_decoding = none`; with `both` the
    // expression half collapsed: 0.66 here)
    assert!(s.expr_celltype >= 0.95, "expression latent, cell type 15-NN accuracy {:.3}", s.expr_celltype);
}

#[test]
fn robust_differential_splicing_finds_the_planted_junctions_and_not_random_halves() {
    let s = scorecard();
    // The original's test and the coverage filter alone are not what a robust run gets (below); their
    // precision here is 0.79 and 0.81 (0.82 and 0.84 before `cross_decoding = none`; 0.73 and 0.76 at
    // `small`, docs/robust.md, "The expression half"): a floor that catches a regression.
    assert!(s.ds_precision >= 0.75, "DS precision {:.3} ({} called)", s.ds_precision, s.ds_called);
    assert!(s.ds_recall >= 0.5, "DS recall {:.3} ({} planted)", s.ds_recall, s.ds_planted);
    assert!(s.halves_called <= 20, "random halves of one subtype: {} of 2000 junctions called", s.halves_called);
    // Junctions seen in >= 10 cells of each group.
    assert!(s.ds_mo_precision >= 0.75, "DS precision with the coverage filter {:.3} ({} called)", s.ds_mo_precision, s.ds_mo_called);
    assert!(s.ds_mo_recall >= 0.5, "DS recall with the coverage filter {:.3}", s.ds_mo_recall);
    assert!(s.halves_mo_called <= 20, "random halves with the coverage filter: {} called", s.halves_mo_called);
    // `robust`'s own test (batch correction, coverage, test mode "two", the outlier filter, empirical
    // support), which is what `diff-splicing` runs on a robust run by default.
    assert!(s.ds_rb_precision >= 0.8, "DS precision with robust's test {:.3} ({} called)", s.ds_rb_precision, s.ds_rb_called);
    assert!(s.ds_rb_recall >= 0.5, "DS recall with robust's test {:.3}", s.ds_rb_recall);
    assert!(s.halves_rb_called <= 20, "random halves with robust's test: {} called", s.halves_rb_called);
}

#[test]
fn robust_imputation_beats_meanbayes_on_dropped_entries() {
    let s = scorecard();
    assert!(s.imp_pearson > s.mb_pearson, "Pearson {:.3} vs MeanBayes {:.3}", s.imp_pearson, s.mb_pearson);
    assert!(s.imp_rmse < s.mb_rmse, "RMSE {:.3} vs MeanBayes {:.3}", s.imp_rmse, s.mb_rmse);
}

/// The data statistics are computed from the training cells, saved as clearly named buffers only when
/// their option is on, and restored by `load_model` (so embed / evaluate on a saved run reproduce them).
#[test]
fn robust_statistics_are_checkpointed_and_absent_by_default() {
    let (ds, _) = simulate(&SimConfig::preset(SimSize::Toy, 3)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let train = |dir: &Path, preset: &str| {
        let (m, t) = presets::preset(preset).unwrap();
        let mut tr = Trainer::new(&ds, run_config(&ds, preset, m, TrainConfig { max_epochs: 1, batch_size: 64, ..t }), dir).unwrap();
        tr.verbose = false;
        tr.fit().unwrap();
        tr
    };
    let rob = train(&tmp.path().join("r"), "robust");
    let names = |dir: &Path| -> Vec<String> {
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().cloned().collect()
    };
    let rn = names(&tmp.path().join("r"));
    // `robust` uses the partial encoder: both buffers present.
    for b in ["z_encoder_splicing.psi_center", "z_encoder_splicing.pool_divisor"] {
        assert!(rn.iter().any(|n| n == b), "{b} missing from the robust checkpoint");
    }
    train(&tmp.path().join("d"), "default");
    let dn = names(&tmp.path().join("d"));
    assert!(!dn.iter().any(|n| n.contains("psi_center") || n.contains("pool_divisor")), "default checkpoint has robust buffers");

    // Population PSI = Σ k / Σ n over the training cells; divisor = median observed junctions per cell.
    let spl = &ds.splicing;
    let (mut sk, mut sn) = (vec![0f64; spl.n_junctions], vec![0f64; spl.n_junctions]);
    let mut counts = Vec::new();
    for &c in &rob.train_cells {
        counts.push(spl.cell_range(c).len());
        for e in spl.cell_range(c) {
            sk[spl.junction[e] as usize] += spl.k[e] as f64;
            sn[spl.junction[e] as usize] += spl.n[e] as f64;
        }
    }
    let (_, _, loaded): (_, _, Params<f32>) = load_model(&tmp.path().join("r"), &ds).unwrap();
    let center = loaded.by_name("z_encoder_splicing.psi_center").unwrap();
    for j in 0..spl.n_junctions {
        let want = if sn[j] > 0.0 { sk[j] / sn[j] } else { 0.0 };
        assert!((center[j] as f64 - want).abs() < 1e-6, "junction {j}: psi_center {} vs {want}", center[j]);
    }
    counts.sort_unstable();
    let m = counts.len();
    let med = if m % 2 == 1 { counts[m / 2] as f64 } else { 0.5 * (counts[m / 2 - 1] + counts[m / 2]) as f64 };
    assert_eq!(loaded.by_name("z_encoder_splicing.pool_divisor").unwrap()[0] as f64, med.max(1.0));
    // The loaded model equals the trained one (buffers included).
    assert_eq!(loaded.data, rob.params.data);
}

/// The `robust` issue's acceptance shape (1,500 cells × 300 genes × 1,200 junctions; 3 cell types × 2
/// splicing-only subtypes, 2 batches): `--preset robust` trained on the whole dataset, then
/// `diff-splicing` between each pair of subtypes with the test a robust run gets by default
/// (`presets::ds_defaults("robust")`) finds the planted junctions (pooled over the three pairs:
/// precision ≥ 0.8, recall ≥ 0.5 at FDR 0.05) and almost nothing between random halves of one subtype.
#[test]
fn robust_differential_splicing_at_the_acceptance_shape() {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use splicevi::analysis::differential::{ChangeOptions, Comparison};
    use splicevi::analysis::ds::differential_splicing;
    use splicevi::analysis::posterior::{Posterior, SplicingFn};
    let cfg = SimConfig { n_cells: 1500, n_genes: 300, n_junctions: 1200, ..SimConfig::preset(SimSize::Small, 0) };
    let (ds, truth) = simulate(&cfg).unwrap();
    let (model, train) = presets::preset("robust").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&ds, run_config(&ds, "robust", model, train), dir.path()).unwrap();
    t.verbose = false;
    t.fit().unwrap();
    let post = Posterior::new(&ds, &t.model, &t.params).unwrap();
    let opts = presets::ds_defaults("robust").apply(ChangeOptions::new(0.1), t.model.dims.n_batch);
    let st = &truth.subtype;
    let members = |s: u32| -> Vec<usize> { (0..ds.n_cells()).filter(|&i| st[i] == s).collect() };
    let (mut tp, mut called, mut planted) = (0, 0, 0);
    for (ti, pl) in truth.planted_ds_by_type.iter().enumerate() {
        let (a, b) = (2 * ti as u32, 2 * ti as u32 + 1);
        let cmp = Comparison { group1: truth.subtype_names[a as usize].clone(), group2: truth.subtype_names[b as usize].clone(), idx1: members(a), idx2: members(b) };
        let r = differential_splicing(&post, &cmp, SplicingFn::DmPosterior, &opts, ti as u64).unwrap();
        called += r.is_ds_fdr.iter().filter(|&&c| c).count();
        tp += r.is_ds_fdr.iter().zip(pl).filter(|(c, p)| **c && **p).count();
        planted += pl.iter().filter(|&&p| p).count();
    }
    let (precision, recall) = (tp as f64 / called.max(1) as f64, tp as f64 / planted as f64);
    eprintln!("acceptance shape, robust's test: precision {precision:.3} recall {recall:.3} ({called} called, {planted} planted)");
    assert!(precision >= 0.8, "DS precision {precision:.3} ({called} called)");
    assert!(recall >= 0.5, "DS recall {recall:.3} ({planted} planted)");
    let mut c0 = members(0);
    c0.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let (h1, h2) = c0.split_at(c0.len() / 2);
    let halves = Comparison { group1: "A".into(), group2: "B".into(), idx1: h1.to_vec(), idx2: h2.to_vec() };
    let hc = differential_splicing(&post, &halves, SplicingFn::DmPosterior, &opts, 99).unwrap().is_ds_fdr.iter().filter(|&&c| c).count();
    assert!(hc <= 12, "random halves of one subtype: {hc} of 1200 junctions called");
}
