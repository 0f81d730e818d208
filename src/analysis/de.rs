//! Differential expression (model.md §7.7): the change-mode test of `differential` on px_scale, with
//! the change r = log2(ρ1 + ε) − log2(ρ2 + ε) and scvi-tools 1.4.1's pseudocount ε: for each group the
//! 0.9-quantile of the per-gene maximum scale over the genes whose mean expression input in that group is
//! below 0.01 (1e-10 when there is none), the larger of the two, divided by G, floored at 1e-10.
//! Columns as scvi's `differential_expression` (all_stats on): proba_de, proba_not_de, bayes_factor,
//! scale1, scale2, pseudocounts, delta, lfc_mean/median/std/min/max (computed with ε·1e-3), raw_mean1/2,
//! non_zeros_proportion1/2, raw_normalized_mean1/2 (counts × 1e4 / cell total), is_de_fdr_<fdr>,
//! comparison, group1, group2; rows sorted by proba_de, descending.

use super::differential::{bayes_factor, decode_plan, fdr_calls, fmt_bool, fmt_f64, order_desc, paired_plans, proba_de, sampled_groups, tsv_field, ChangeOptions, Comparison};
use super::impute_metrics::quantile_sorted;
use super::posterior::Posterior;
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Per-gene results of one comparison, in gene order (the TSV sorts them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeResult {
    pub group1: String,
    pub group2: String,
    pub fdr: f64,
    pub gene: Vec<String>,
    pub proba_de: Vec<f64>,
    pub bayes_factor: Vec<f64>,
    pub scale1: Vec<f64>,
    pub scale2: Vec<f64>,
    pub pseudocounts: f64,
    pub delta: f64,
    pub lfc_mean: Vec<f64>,
    pub lfc_median: Vec<f64>,
    pub lfc_std: Vec<f64>,
    pub lfc_min: Vec<f64>,
    pub lfc_max: Vec<f64>,
    pub raw_mean1: Vec<f64>,
    pub raw_mean2: Vec<f64>,
    pub non_zeros_proportion1: Vec<f64>,
    pub non_zeros_proportion2: Vec<f64>,
    pub raw_normalized_mean1: Vec<f64>,
    pub raw_normalized_mean2: Vec<f64>,
    pub is_de_fdr: Vec<bool>,
    pub n_pairs: usize,
}

/// scvi-tools 1.4.1 `estimate_pseudocounts_offset` on the per-gene maxima of the two groups' scales.
pub fn pseudocount_offset(max1: &[f64], max2: &[f64], zero1: &[bool], zero2: &[bool]) -> f64 {
    let eps = |mx: &[f64], zero: &[bool]| -> f64 {
        let mut v: Vec<f64> = mx.iter().zip(zero).filter(|(_, &z)| z).map(|(&m, _)| m).collect();
        if v.is_empty() {
            return 1e-10;
        }
        v.sort_by(f64::total_cmp);
        quantile_sorted(&v, 0.9)
    };
    let res = eps(max1, zero1).max(eps(max2, zero2));
    (res / max1.len().max(1) as f64).max(1e-10)
}

/// Mean, non-zero proportion and mean of counts × 1e4 / cell total of the expression input over `cells`.
fn raw_stats(x: &crate::data::Csr<f32>, cells: &[usize], scaling: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let g = x.n_cols;
    let (mut mean, mut nz, mut norm) = (vec![0f64; g], vec![0f64; g], vec![0f64; g]);
    for &c in cells {
        let (idx, val) = x.row(c);
        for (&gg, &v) in idx.iter().zip(val) {
            mean[gg as usize] += v as f64;
            if v != 0.0 {
                nz[gg as usize] += 1.0;
            }
            norm[gg as usize] += v as f64 * scaling[c];
        }
    }
    let n = cells.len().max(1) as f64;
    for v in [&mut mean, &mut nz, &mut norm] {
        v.iter_mut().for_each(|x| *x /= n);
    }
    (mean, nz, norm)
}

/// Run one comparison. `key` seeds its sample streams (the commands use 0 for every comparison, so
/// that a comparison's numbers do not depend on the others).
pub fn differential_expression(post: &Posterior, cmp: &Comparison, opts: &ChangeOptions, key: u64) -> Result<DeResult> {
    opts.validate()?;
    let Some(x) = &post.ds.expression else {
        bail!("{}: differential expression needs an expression modality", post.ds.source);
    };
    let g = post.ds.n_genes();
    let sampled = sampled_groups(post, cmp, opts)?;
    let (p1, p2) = paired_plans(&sampled, post.model.dims.n_batch, opts, key)?;
    let n = p1.len();
    let s1 = decode_plan(post, &p1, 0..n, None, true, opts)?;
    let s2 = decode_plan(post, &p2, 0..n, None, true, opts)?;
    // Genes not expressed in a group (mean input < 0.01) calibrate the pseudocount.
    let (mean1, nz1, _) = raw_stats(x, &cmp.idx1, &vec![0.0; post.ds.n_cells()]);
    let (mean2, nz2, _) = raw_stats(x, &cmp.idx2, &vec![0.0; post.ds.n_cells()]);
    let col = |s: &crate::model::Mat<f32>, gg: usize| -> Vec<f64> { (0..n).map(|i| s.data[i * g + gg] as f64).collect() };
    let max_of = |s: &crate::model::Mat<f32>| -> Vec<f64> { (0..g).into_par_iter().map(|gg| col(s, gg).into_iter().fold(f64::NEG_INFINITY, f64::max)).collect() };
    let zero1: Vec<bool> = mean1.iter().map(|&m| m < 0.01).collect();
    let zero2: Vec<bool> = mean2.iter().map(|&m| m < 0.01).collect();
    let pc = pseudocount_offset(&max_of(&s1), &max_of(&s2), &zero1, &zero2);
    let delta = opts.delta;
    struct GeneStats {
        proba: f64,
        scale1: f64,
        scale2: f64,
        lfc: [f64; 5],
    }
    let stats: Vec<GeneStats> = (0..g)
        .into_par_iter()
        .map(|gg| {
            let (a, b) = (col(&s1, gg), col(&s2, gg));
            let (mut plus, mut minus) = (0.0, 0.0);
            for (x, y) in a.iter().zip(&b) {
                let r = (x + pc).log2() - (y + pc).log2();
                if r >= delta {
                    plus += 1.0;
                }
                if r < -delta {
                    minus += 1.0;
                }
            }
            // The reported LFC distribution uses a 1000× smaller pseudocount, as scvi does.
            let mut lfc: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x + 1e-3 * pc).log2() - (y + 1e-3 * pc).log2()).collect();
            let nf = n as f64;
            let mean = lfc.iter().sum::<f64>() / nf;
            let std = (lfc.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / nf).sqrt();
            lfc.sort_by(f64::total_cmp);
            GeneStats {
                proba: proba_de(plus, minus, nf, opts.test_mode),
                scale1: a.iter().sum::<f64>() / nf,
                scale2: b.iter().sum::<f64>() / nf,
                lfc: [mean, quantile_sorted(&lfc, 0.5), std, lfc[0], lfc[n - 1]],
            }
        })
        .collect();
    // Normalised means use every cell's total of the expression input.
    let scaling: Vec<f64> = (0..post.ds.n_cells())
        .map(|c| {
            let t: f64 = x.row(c).1.iter().map(|&v| v as f64).sum();
            if t > 0.0 { 1e4 / t } else { 0.0 }
        })
        .collect();
    let (_, _, norm1) = raw_stats(x, &cmp.idx1, &scaling);
    let (_, _, norm2) = raw_stats(x, &cmp.idx2, &scaling);
    let proba: Vec<f64> = stats.iter().map(|s| s.proba).collect();
    Ok(DeResult {
        group1: cmp.group1.clone(),
        group2: cmp.group2.clone(),
        fdr: opts.fdr,
        gene: post.ds.gene_names.clone(),
        is_de_fdr: fdr_calls(&proba, opts.fdr),
        bayes_factor: proba.iter().map(|&p| bayes_factor(p)).collect(),
        proba_de: proba,
        scale1: stats.iter().map(|s| s.scale1).collect(),
        scale2: stats.iter().map(|s| s.scale2).collect(),
        pseudocounts: pc,
        delta,
        lfc_mean: stats.iter().map(|s| s.lfc[0]).collect(),
        lfc_median: stats.iter().map(|s| s.lfc[1]).collect(),
        lfc_std: stats.iter().map(|s| s.lfc[2]).collect(),
        lfc_min: stats.iter().map(|s| s.lfc[3]).collect(),
        lfc_max: stats.iter().map(|s| s.lfc[4]).collect(),
        raw_mean1: mean1,
        raw_mean2: mean2,
        non_zeros_proportion1: nz1,
        non_zeros_proportion2: nz2,
        raw_normalized_mean1: norm1,
        raw_normalized_mean2: norm2,
        n_pairs: n,
    })
}

/// The TSV of one or more comparisons (each sorted by proba_de, descending, ties in gene order).
pub fn de_tsv(results: &[DeResult]) -> String {
    let fdr = results.first().map(|r| r.fdr).unwrap_or(0.05);
    let head = [
        "gene",
        "proba_de",
        "proba_not_de",
        "bayes_factor",
        "scale1",
        "scale2",
        "pseudocounts",
        "delta",
        "lfc_mean",
        "lfc_median",
        "lfc_std",
        "lfc_min",
        "lfc_max",
        "raw_mean1",
        "raw_mean2",
        "non_zeros_proportion1",
        "non_zeros_proportion2",
        "raw_normalized_mean1",
        "raw_normalized_mean2",
    ];
    let mut s = head.join("\t");
    s.push_str(&format!("\tis_de_fdr_{fdr}\tcomparison\tgroup1\tgroup2\n"));
    for r in results {
        let (g1, g2) = (tsv_field(&r.group1), tsv_field(&r.group2));
        let cmp = tsv_field(&format!("{} vs {}", r.group1, r.group2)).into_owned();
        for i in order_desc(&r.proba_de) {
            let nums = [
                r.proba_de[i],
                1.0 - r.proba_de[i],
                r.bayes_factor[i],
                r.scale1[i],
                r.scale2[i],
                r.pseudocounts,
                r.delta,
                r.lfc_mean[i],
                r.lfc_median[i],
                r.lfc_std[i],
                r.lfc_min[i],
                r.lfc_max[i],
                r.raw_mean1[i],
                r.raw_mean2[i],
                r.non_zeros_proportion1[i],
                r.non_zeros_proportion2[i],
                r.raw_normalized_mean1[i],
                r.raw_normalized_mean2[i],
            ];
            s.push_str(&tsv_field(&r.gene[i]));
            for v in nums {
                s.push('\t');
                s.push_str(&fmt_f64(v));
            }
            s.push_str(&format!("\t{}\t{cmp}\t{g1}\t{g2}\n", fmt_bool(r.is_de_fdr[i])));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudocount_follows_scvi_1_4_1() {
        // Group 1: genes 0..4 unexpressed with maxima 1..5 → quantile 0.9 of [1,2,3,4,5] = 4.6.
        let max1 = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0];
        let max2 = [0.5; 6];
        let z1 = [true, true, true, true, true, false];
        let z2 = [false; 6];
        assert!((pseudocount_offset(&max1, &max2, &z1, &z2) - 4.6 / 6.0).abs() < 1e-12);
        // No unexpressed gene anywhere: 1e-10 / G, floored at 1e-10.
        assert_eq!(pseudocount_offset(&max1, &max2, &z2, &z2), 1e-10);
    }
}
