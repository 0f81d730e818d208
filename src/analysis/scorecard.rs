//! The `robust` issue's scorecard on simulated data with known truth (docs/robust.md): 15-NN accuracy
//! (5-fold) of cell type and of the splicing-only subtype within each cell type, for the joint,
//! expression and splicing latents; k-NN batch entropy (mixing); masked-ATSE imputation (§8.4) against
//! MeanBayes; differential splicing between the planted subtype pairs (precision / recall at the FDR
//! target) and between random halves of one subtype.

use super::differential::{ChangeOptions, Comparison};
use super::ds::{differential_splicing, fdr_calls_tested};
use super::evaluate::{evaluate_imputation, Entry, TruthFilter, METHOD_DM, METHOD_MEANBAYES};
use super::latent_metrics::knn_accuracy;
use super::posterior::{Posterior, SplicingFn};
use crate::data::simulate::GroundTruth;
use crate::data::Dataset;
use crate::model::{Params, SpliceVae};
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

/// Every number of one trained model.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Scorecard {
    pub joint_celltype: f64,
    pub joint_subtype: f64,
    pub expr_celltype: f64,
    pub expr_subtype: f64,
    pub spl_celltype: f64,
    pub spl_subtype: f64,
    /// Mean over cells of the batch entropy of the 15 nearest neighbours in the joint latent,
    /// divided by ln(n_batch): 1 = perfectly mixed, 0 = separated.
    pub joint_batch_entropy: f64,
    pub imp_pearson: f64,
    pub imp_rmse: f64,
    pub mb_pearson: f64,
    pub mb_rmse: f64,
    /// Pooled over the planted pairs of every cell type.
    pub ds_precision: f64,
    pub ds_recall: f64,
    pub ds_called: usize,
    pub ds_planted: usize,
    /// False DS calls (DM posterior) on junctions of a planted ATSE (not themselves planted).
    pub ds_fp_in_planted_atse: usize,
    /// Junctions called between two random halves of subtype 0 (of J).
    pub halves_called: usize,
    /// The DM-posterior test on junctions observed in ≥ `ScoreOptions::ds_min_obs` cells of each group
    /// only (`diff-splicing --min-obs-cells`), from the same samples.
    pub ds_mo_precision: f64,
    pub ds_mo_recall: f64,
    pub ds_mo_called: usize,
    pub halves_mo_called: usize,
    /// The same with decoder PSI (`--method decoder`) instead of the DM posterior mean.
    pub ds_dec_precision: f64,
    pub ds_dec_recall: f64,
    pub ds_dec_called: usize,
    pub halves_dec_called: usize,
    /// `robust`'s own test (`train::presets::ROBUST_DS`: batch correction, coverage ≥ 10 cells, test
    /// mode "two", the outlier filter, empirical support p < 0.05), DM posterior; what `diff-splicing`
    /// runs on a `robust` run by default.
    pub ds_rb_precision: f64,
    pub ds_rb_recall: f64,
    pub ds_rb_called: usize,
    pub halves_rb_called: usize,
    /// Mean KL of the joint posterior per cell (collapse diagnostic).
    pub kl_per_cell: f64,
}

/// Options of the DS part.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    pub k: usize,
    pub ds_samples: usize,
    pub ds_delta: f64,
    pub skip_ds: bool,
    pub seed: u64,
    /// `min_obs_cells` of the filtered DS columns (`ds_mo_*`).
    pub ds_min_obs: u64,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions { k: 15, ds_samples: 2000, ds_delta: 0.1, skip_ds: false, seed: 0, ds_min_obs: crate::train::presets::ROBUST_DS_MIN_OBS_CELLS }
    }
}

/// k-NN accuracy of `sub` computed separately within each group of `group`, averaged weighted by the
/// group sizes (groups with < 2 cells or one sub-label are skipped).
pub fn knn_accuracy_within(x: &[f32], d: usize, group: &[u32], sub: &[u32], k: usize, seed: u64) -> f64 {
    let n_groups = group.iter().copied().max().map_or(0, |m| m as usize + 1);
    let (mut acc, mut tot) = (0.0, 0usize);
    for gi in 0..n_groups {
        let cells: Vec<usize> = (0..group.len()).filter(|&i| group[i] as usize == gi).collect();
        if cells.len() < 2 {
            continue;
        }
        let mut labels: Vec<u32> = cells.iter().map(|&i| sub[i]).collect();
        let mut levels = labels.clone();
        levels.sort_unstable();
        levels.dedup();
        if levels.len() < 2 {
            continue;
        }
        labels.iter_mut().for_each(|l| *l = levels.binary_search(l).unwrap() as u32);
        let xs: Vec<f32> = cells.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect();
        acc += knn_accuracy(&xs, d, &labels, k, 5, seed) * cells.len() as f64;
        tot += cells.len();
    }
    if tot == 0 {
        f64::NAN
    } else {
        acc / tot as f64
    }
}

/// Mean normalised entropy of the batch labels among each cell's k nearest neighbours (itself excluded).
pub fn knn_batch_entropy(x: &[f32], d: usize, batch: &[u32], k: usize) -> f64 {
    let n = batch.len();
    let nb = batch.iter().copied().max().map_or(1, |m| m as usize + 1);
    if nb < 2 || n < 2 {
        return f64::NAN;
    }
    let sq = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f32>();
    let s: f64 = (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * d..(i + 1) * d];
            let mut cand: Vec<(f32, usize)> = (0..n).filter(|&j| j != i).map(|j| (sq(xi, &x[j * d..(j + 1) * d]), j)).collect();
            let kk = k.min(cand.len());
            cand.select_nth_unstable_by(kk - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut cnt = vec![0usize; nb];
            cand[..kk].iter().for_each(|&(_, j)| cnt[batch[j] as usize] += 1);
            -cnt.iter().filter(|&&c| c > 0).map(|&c| {
                let p = c as f64 / kk as f64;
                p * p.ln()
            }).sum::<f64>()
                / (nb as f64).ln()
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum();
    s / n as f64
}

/// Score a model trained on `masked` (the ATSE-masked copy of `ds`; `dropped` its held-out entries).
pub fn score(ds: &Dataset, truth: &GroundTruth, masked: &Dataset, dropped: &[Entry], model: &SpliceVae, params: &Params<f32>, o: &ScoreOptions) -> Result<Scorecard> {
    let mut sc = Scorecard::default();
    let post = Posterior::new(ds, model, params)?;
    let n = ds.n_cells();
    let cells: Vec<usize> = (0..n).collect();
    let mut lat: [Vec<f32>; 3] = Default::default();
    let mut dims = [0usize; 3];
    let mut kl = 0.0;
    for block in cells.chunks(512) {
        let inf = post.latents(block)?;
        for (i, m) in [&inf.qz_m, &inf.qzm_expr, &inf.qzm_spl].into_iter().enumerate() {
            dims[i] = m.cols;
            lat[i].extend_from_slice(&m.data);
        }
        for (m, v) in inf.qz_m.data.iter().zip(&inf.qz_v.data) {
            kl += 0.5 * ((*v as f64) + (*m as f64).powi(2) - 1.0 - (*v as f64).ln());
        }
    }
    sc.kl_per_cell = kl / n as f64;
    let (ct, st) = (&truth.cell_type, &truth.subtype);
    let acc = |i: usize| (knn_accuracy(&lat[i], dims[i], ct, o.k, 5, o.seed), knn_accuracy_within(&lat[i], dims[i], ct, st, o.k, o.seed));
    (sc.joint_celltype, sc.joint_subtype) = acc(0);
    (sc.expr_celltype, sc.expr_subtype) = acc(1);
    (sc.spl_celltype, sc.spl_subtype) = acc(2);
    sc.joint_batch_entropy = knn_batch_entropy(&lat[0], dims[0], &truth.batch, o.k);

    let post_m = Posterior::new(masked, model, params)?;
    let mean = super::posterior::DecodeOptions { transform_batch: vec![], n_samples: 1, seed: 0 };
    let imp = evaluate_imputation(&post_m, dropped, TruthFilter::default(), None, &mean, 512)?;
    if let (Some(dm), Some(mb)) = (imp.get("dropped", METHOD_DM), imp.get("dropped", METHOD_MEANBAYES)) {
        (sc.imp_pearson, sc.imp_rmse, sc.mb_pearson, sc.mb_rmse) = (dm.pearson, dm.rmse, mb.pearson, mb.rmse);
    }

    if !o.skip_ds {
        let opts = ChangeOptions { n_samples_overall: o.ds_samples, seed: o.seed, ..ChangeOptions::new(o.ds_delta) };
        let j = ds.n_junctions();
        let mut c0: Vec<usize> = (0..n).filter(|&i| st[i] == 0).collect();
        c0.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(o.seed + 1));
        let (h1, h2) = c0.split_at(c0.len() / 2);
        let halves = Comparison { group1: "A".into(), group2: "B".into(), idx1: h1.to_vec(), idx2: h2.to_vec() };
        // Each cell type's two subtypes, with the junctions planted between them.
        let pairs: Vec<(Comparison, &Vec<bool>)> = truth
            .planted_ds_by_type
            .iter()
            .enumerate()
            .map(|(t, pl)| {
                let (a, b) = (2 * t as u32, 2 * t as u32 + 1);
                let members = |s: u32| (0..n).filter(|&i| st[i] == s).collect();
                (Comparison { group1: truth.subtype_names[a as usize].clone(), group2: truth.subtype_names[b as usize].clone(), idx1: members(a), idx2: members(b) }, pl)
            })
            .collect();
        for method in [SplicingFn::DmPosterior, SplicingFn::Decoder] {
            let (mut tp, mut called, mut planted) = (0, 0, 0);
            let (mut tp_mo, mut called_mo) = (0, 0);
            for (t, (cmp, pl)) in pairs.iter().enumerate() {
                let r = differential_splicing(&post, cmp, method, &opts, t as u64)?;
                called += r.is_ds_fdr.iter().filter(|&&c| c).count();
                tp += (0..j).filter(|&jj| r.is_ds_fdr[jj] && pl[jj]).count();
                if method == SplicingFn::DmPosterior {
                    let mo = fdr_calls_tested(&r.proba_ds, &r.n_obs_group1, &r.n_obs_group2, o.ds_min_obs, None, opts.fdr);
                    called_mo += mo.iter().filter(|&&c| c).count();
                    tp_mo += (0..j).filter(|&jj| mo[jj] && pl[jj]).count();
                    let a2j = &ds.splicing.junc2atse;
                    let mut planted_atse = vec![false; ds.splicing.n_atse()];
                    (0..j).filter(|&jj| pl[jj]).for_each(|jj| planted_atse[a2j[jj] as usize] = true);
                    sc.ds_fp_in_planted_atse += (0..j).filter(|&jj| r.is_ds_fdr[jj] && !pl[jj] && planted_atse[a2j[jj] as usize]).count();
                }
                planted += pl.iter().filter(|&&p| p).count();
            }
            let prec = if called > 0 { tp as f64 / called as f64 } else { f64::NAN };
            let rec = tp as f64 / planted.max(1) as f64;
            let hr = differential_splicing(&post, &halves, method, &opts, 99)?;
            let hc = hr.is_ds_fdr.iter().filter(|&&c| c).count();
            if method == SplicingFn::DmPosterior {
                sc.ds_mo_precision = if called_mo > 0 { tp_mo as f64 / called_mo as f64 } else { f64::NAN };
                sc.ds_mo_recall = tp_mo as f64 / planted.max(1) as f64;
                sc.ds_mo_called = called_mo;
                sc.halves_mo_called = fdr_calls_tested(&hr.proba_ds, &hr.n_obs_group1, &hr.n_obs_group2, o.ds_min_obs, None, opts.fdr).iter().filter(|&&c| c).count();
                (sc.ds_precision, sc.ds_recall, sc.ds_called, sc.ds_planted, sc.halves_called) = (prec, rec, called, planted, hc);
            } else {
                (sc.ds_dec_precision, sc.ds_dec_recall, sc.ds_dec_called, sc.halves_dec_called) = (prec, rec, called, hc);
            }
        }
        let ropts = crate::train::presets::ROBUST_DS.apply(opts.clone(), model.dims.n_batch);
        let (mut tp, mut called, mut planted) = (0, 0, 0);
        for (t, (cmp, pl)) in pairs.iter().enumerate() {
            let r = differential_splicing(&post, cmp, SplicingFn::DmPosterior, &ropts, t as u64)?;
            called += r.is_ds_fdr.iter().filter(|&&c| c).count();
            tp += (0..j).filter(|&jj| r.is_ds_fdr[jj] && pl[jj]).count();
            planted += pl.iter().filter(|&&p| p).count();
        }
        sc.ds_rb_precision = if called > 0 { tp as f64 / called as f64 } else { f64::NAN };
        sc.ds_rb_recall = tp as f64 / planted.max(1) as f64;
        sc.ds_rb_called = called;
        sc.halves_rb_called = differential_splicing(&post, &halves, SplicingFn::DmPosterior, &ropts, 99)?.is_ds_fdr.iter().filter(|&&c| c).count();
    }
    Ok(sc)
}

/// Column names and values of a scorecard, in a fixed order (the ablation table's columns).
pub fn columns(s: &Scorecard) -> Vec<(&'static str, f64)> {
    vec![
        ("joint_celltype", s.joint_celltype),
        ("joint_subtype", s.joint_subtype),
        ("expr_celltype", s.expr_celltype),
        ("spl_celltype", s.spl_celltype),
        ("spl_subtype", s.spl_subtype),
        ("batch_entropy", s.joint_batch_entropy),
        ("imp_pearson", s.imp_pearson),
        ("imp_rmse", s.imp_rmse),
        ("mb_pearson", s.mb_pearson),
        ("mb_rmse", s.mb_rmse),
        ("ds_precision", s.ds_precision),
        ("ds_recall", s.ds_recall),
        ("ds_called", s.ds_called as f64),
        ("halves_called", s.halves_called as f64),
        ("ds_fp_in_planted_atse", s.ds_fp_in_planted_atse as f64),
        ("dsmo_precision", s.ds_mo_precision),
        ("dsmo_recall", s.ds_mo_recall),
        ("dsmo_called", s.ds_mo_called as f64),
        ("halvesmo_called", s.halves_mo_called as f64),
        ("dsdec_precision", s.ds_dec_precision),
        ("dsdec_recall", s.ds_dec_recall),
        ("dsdec_called", s.ds_dec_called as f64),
        ("halvesdec_called", s.halves_dec_called as f64),
        ("dsrb_precision", s.ds_rb_precision),
        ("dsrb_recall", s.ds_rb_recall),
        ("dsrb_called", s.ds_rb_called as f64),
        ("halvesrb_called", s.halves_rb_called as f64),
        ("kl_per_cell", s.kl_per_cell),
    ]
}
