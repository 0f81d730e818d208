//! Differential splicing (model.md §7.8): the change-mode test of `differential` on PSI, with the
//! change r = ψ2 − ψ1 (raw ΔPSI; δ = minimum |ΔPSI|), pseudocounts irrelevant, and the original's
//! columns: proba_ds, is_ds_fdr, bayes_factor, effect_size (= est_prob2 − est_prob1, the means over the
//! samples), emp_effect, est_prob1/2, emp_prob1/2 (mean observed PSI over the group's cells with
//! mask = 1, −1 if none), n_obs_group1/2, junction_id, gene_name. Rows are in junction order.
//!
//! The samples are streamed: pairs are decoded a block at a time and only per-junction counts and sums
//! are kept, so memory is O(block × J), never O(5000 × J).

use super::differential::{bayes_factor, decode_plan, fdr_calls, fmt_bool, fmt_f64, paired_plans, proba_de, sampled_groups, tsv_field, ChangeOptions, Comparison};
use super::posterior::{Posterior, SplicingFn};
use anyhow::Result;
use rayon::prelude::*;

#[derive(Clone, Debug, PartialEq)]
pub struct DsResult {
    pub group1: String,
    pub group2: String,
    pub junction_id: Vec<String>,
    pub gene_name: Vec<String>,
    pub proba_ds: Vec<f64>,
    pub is_ds_fdr: Vec<bool>,
    pub bayes_factor: Vec<f64>,
    pub effect_size: Vec<f64>,
    pub emp_effect: Vec<f64>,
    pub est_prob1: Vec<f64>,
    pub est_prob2: Vec<f64>,
    pub emp_prob1: Vec<f64>,
    pub emp_prob2: Vec<f64>,
    pub n_obs_group1: Vec<u64>,
    pub n_obs_group2: Vec<u64>,
    /// Welch's t-test p-value of the observed PSI, group 1 vs group 2 (`empirical_pvalues`); only when
    /// the test requires it (`ChangeOptions::max_emp_pvalue`), then written as a last column.
    pub emp_pvalue: Option<Vec<f64>>,
    /// Cells each group's samples were drawn from (fewer than the group with `filter_outlier_cells`).
    pub n_sampled_cells: (usize, usize),
    /// Sample pairs behind the probabilities.
    pub n_pairs: usize,
}

pub const DS_COLUMNS: [&str; 13] = [
    "junction_id",
    "gene_name",
    "proba_ds",
    "is_ds_fdr",
    "bayes_factor",
    "effect_size",
    "emp_effect",
    "est_prob1",
    "est_prob2",
    "emp_prob1",
    "emp_prob2",
    "n_obs_group1",
    "n_obs_group2",
];

/// Per junction, over the cells of `cells` that observe it: [count, Σψ, Σψ²] of the observed PSI.
pub fn psi_moments(spl: &crate::data::Splicing, cells: &[usize]) -> Vec<[f64; 3]> {
    let mut m = vec![[0f64; 3]; spl.n_junctions];
    for &c in cells {
        for e in spl.cell_range(c) {
            let (j, x) = (spl.junction[e] as usize, spl.psi[e] as f64);
            m[j][0] += 1.0;
            m[j][1] += x;
            m[j][2] += x * x;
        }
    }
    m
}

/// Mean observed PSI and number of observing cells per junction, from `psi_moments` (−1 where none
/// observe).
fn mean_and_count(m: &[[f64; 3]]) -> (Vec<f64>, Vec<u64>) {
    m.iter().map(|a| (if a[0] > 0.0 { a[1] / a[0] } else { -1.0 }, a[0] as u64)).unzip()
}

/// Mean observed PSI and number of observing cells per junction over `cells` (−1 where none observe).
pub fn empirical_psi(spl: &crate::data::Splicing, cells: &[usize]) -> (Vec<f64>, Vec<u64>) {
    mean_and_count(&psi_moments(spl, cells))
}

/// Per junction, the two-sided p-value of Welch's t-test between the observed PSI of two groups,
/// from their `psi_moments`: whether the counts themselves show a difference. 1 where a group has
/// fewer than 2 observing cells; where both groups' values are constant, 0 if the two constants
/// differ and 1 if not.
pub fn empirical_pvalues(m1: &[[f64; 3]], m2: &[[f64; 3]]) -> Vec<f64> {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    m1.par_iter()
        .zip(m2)
        .map(|(a, b)| {
            let (n1, n2) = (a[0], b[0]);
            if n1 < 2.0 || n2 < 2.0 {
                return 1.0;
            }
            let (mu1, mu2) = (a[1] / n1, b[1] / n2);
            // Unbiased variances; the sums of squares can round slightly negative.
            let v1 = ((a[2] - n1 * mu1 * mu1) / (n1 - 1.0)).max(0.0);
            let v2 = ((b[2] - n2 * mu2 * mu2) / (n2 - 1.0)).max(0.0);
            let (s1, s2) = (v1 / n1, v2 / n2);
            let se2 = s1 + s2;
            if se2 <= 1e-300 {
                return if (mu1 - mu2).abs() > 1e-12 { 0.0 } else { 1.0 };
            }
            let t = (mu2 - mu1).abs() / se2.sqrt();
            // Welch–Satterthwaite degrees of freedom.
            let df = se2 * se2 / (s1 * s1 / (n1 - 1.0) + s2 * s2 / (n2 - 1.0));
            let dist = StudentsT::new(0.0, 1.0, df.max(1.0)).expect("df ≥ 1");
            (2.0 * dist.sf(t)).min(1.0)
        })
        .collect()
}

/// The FDR calls over the tested junctions only: those observed in ≥ `min_obs` cells of both groups
/// and, with `emp_p` = (p-values, bound), whose empirical p-value is below the bound (every junction
/// when neither applies, then identical to `fdr_calls`).
pub fn fdr_calls_tested(proba: &[f64], n1: &[u64], n2: &[u64], min_obs: u64, emp_p: Option<(&[f64], f64)>, fdr: f64) -> Vec<bool> {
    if min_obs == 0 && emp_p.is_none() {
        return fdr_calls(proba, fdr);
    }
    let supported = |j: usize| emp_p.map_or(true, |(p, bound)| p[j] < bound);
    let tested: Vec<usize> = (0..proba.len()).filter(|&j| n1[j] >= min_obs && n2[j] >= min_obs && supported(j)).collect();
    let sub: Vec<f64> = tested.iter().map(|&j| proba[j]).collect();
    let mut out = vec![false; proba.len()];
    for (&j, c) in tested.iter().zip(fdr_calls(&sub, fdr)) {
        out[j] = c;
    }
    out
}

/// Run one comparison. `key` seeds its sample streams (the commands use 0 for every comparison, so
/// that a comparison's numbers do not depend on the others).
pub fn differential_splicing(post: &Posterior, cmp: &Comparison, method: SplicingFn, opts: &ChangeOptions, key: u64) -> Result<DsResult> {
    opts.validate()?;
    let j = post.ds.n_junctions();
    let sampled = sampled_groups(post, cmp, opts)?;
    let (p1, p2) = paired_plans(&sampled, post.model.dims.n_batch, opts, key)?;
    let n = p1.len();
    let delta = opts.delta as f32;
    // Per junction: Σψ1, Σψ2, #(r ≥ δ), #(r < −δ).
    let mut acc = vec![[0f64; 4]; j];
    let mut start = 0;
    while start < n {
        let end = (start + opts.block_cells).min(n);
        let s1 = decode_plan(post, &p1, start..end, Some(method), false, opts)?;
        let s2 = decode_plan(post, &p2, start..end, Some(method), false, opts)?;
        let rows = end - start;
        acc.par_iter_mut().enumerate().for_each(|(jj, a)| {
            for r in 0..rows {
                let (x1, x2) = (s1.data[r * j + jj], s2.data[r * j + jj]);
                a[0] += x1 as f64;
                a[1] += x2 as f64;
                // The change in f32 like the original's float32 scales.
                let d = x2 - x1;
                if d >= delta {
                    a[2] += 1.0;
                }
                if d < -delta {
                    a[3] += 1.0;
                }
            }
        });
        start = end;
    }
    let nf = n as f64;
    let proba: Vec<f64> = acc.iter().map(|a| proba_de(a[2], a[3], nf, opts.test_mode)).collect();
    let est1: Vec<f64> = acc.iter().map(|a| a[0] / nf).collect();
    let est2: Vec<f64> = acc.iter().map(|a| a[1] / nf).collect();
    let spl = &post.ds.splicing;
    let (m1, m2) = (psi_moments(spl, &cmp.idx1), psi_moments(spl, &cmp.idx2));
    let ((emp1, n1), (emp2, n2)) = (mean_and_count(&m1), mean_and_count(&m2));
    let emp_pvalue = opts.max_emp_pvalue.map(|_| empirical_pvalues(&m1, &m2));
    let emp_bound = emp_pvalue.as_deref().zip(opts.max_emp_pvalue);
    Ok(DsResult {
        group1: cmp.group1.clone(),
        group2: cmp.group2.clone(),
        junction_id: spl.junction_names.clone(),
        gene_name: if spl.gene_names.len() == j { spl.gene_names.clone() } else { vec![String::new(); j] },
        is_ds_fdr: fdr_calls_tested(&proba, &n1, &n2, opts.min_obs_cells, emp_bound, opts.fdr),
        bayes_factor: proba.iter().map(|&p| bayes_factor(p)).collect(),
        effect_size: est2.iter().zip(&est1).map(|(b, a)| b - a).collect(),
        emp_effect: emp2.iter().zip(&emp1).map(|(b, a)| b - a).collect(),
        proba_ds: proba,
        est_prob1: est1,
        est_prob2: est2,
        emp_prob1: emp1,
        emp_prob2: emp2,
        n_obs_group1: n1,
        n_obs_group2: n2,
        emp_pvalue,
        n_sampled_cells: (sampled.idx1.len(), sampled.idx2.len()),
        n_pairs: n,
    })
}

/// The TSV of one or more comparisons, each row ending with its `comparison`, `group1`, `group2`.
pub fn ds_tsv(results: &[DsResult]) -> String {
    let with_p = results.iter().any(|r| r.emp_pvalue.is_some());
    let mut s = DS_COLUMNS.join("\t");
    if with_p {
        s.push_str("\temp_pvalue");
    }
    // Every table names its comparison, as scvi's `_de_core` does for a `groupby` (and as `de_tsv` does).
    s.push_str("\tcomparison\tgroup1\tgroup2");
    s.push('\n');
    for r in results {
        for i in 0..r.proba_ds.len() {
            let cells = [
                tsv_field(&r.junction_id[i]).into_owned(),
                tsv_field(&r.gene_name[i]).into_owned(),
                fmt_f64(r.proba_ds[i]),
                fmt_bool(r.is_ds_fdr[i]).to_string(),
                fmt_f64(r.bayes_factor[i]),
                fmt_f64(r.effect_size[i]),
                fmt_f64(r.emp_effect[i]),
                fmt_f64(r.est_prob1[i]),
                fmt_f64(r.est_prob2[i]),
                fmt_f64(r.emp_prob1[i]),
                fmt_f64(r.emp_prob2[i]),
                r.n_obs_group1[i].to_string(),
                r.n_obs_group2[i].to_string(),
            ];
            s.push_str(&cells.join("\t"));
            if with_p {
                let p = r.emp_pvalue.as_ref().map_or(f64::NAN, |p| p[i]);
                s.push('\t');
                s.push_str(&fmt_f64(p));
            }
            let (g1, g2) = (tsv_field(&r.group1), tsv_field(&r.group2));
            s.push_str(&format!("\t{}\t{g1}\t{g2}", tsv_field(&format!("{} vs {}", r.group1, r.group2))));
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_obs_leaves_sparse_junctions_out_of_the_fdr_set() {
        let p = [1.0, 0.99, 0.9, 0.5];
        let (n1, n2) = ([50u64, 3, 40, 40], [50u64, 60, 40, 2]);
        assert_eq!(fdr_calls_tested(&p, &n1, &n2, 0, None, 0.05), fdr_calls(&p, 0.05));
        // Junction 1 (3 cells in group 1) is not tested: the prefix then has 1.0, 0.9 (mean 1−P 0.05).
        assert_eq!(fdr_calls_tested(&p, &n1, &n2, 10, None, 0.05), vec![true, false, true, false]);
        assert_eq!(fdr_calls_tested(&p, &n1, &n2, 100, None, 0.05), vec![false; 4]);
        // Without data support (p ≥ 0.05) junction 0 leaves the set; of 0.99, 0.9, 0.5 only the first
        // prefix keeps the running mean of 1−P at ≤ 0.05 (0.01, then 0.055).
        let emp = [0.2, 0.001, 0.01, 0.0];
        assert_eq!(fdr_calls_tested(&p, &n1, &n2, 0, Some((&emp, 0.05)), 0.05), vec![false, true, false, false]);
        assert_eq!(fdr_calls_tested(&p, &n1, &n2, 10, Some((&emp, 0.05)), 0.05), vec![false, false, false, false]);
    }

    #[test]
    fn empirical_pvalues_are_welch_t_tests_of_the_observed_psi() {
        // Junction 0: group 1 observes 0.1, 0.2, 0.3, 0.5 and group 2 0.6, 0.7, 0.9; junction 1: 0, 0.25,
        // 0.5, 0.5, 1 vs 0, 0, 0.5 (cells 0–4 and 5–9; cells 4 and 8 do not observe junction 0).
        // Junction 2: constant and equal (p 1); junction 3: constant but different (p 0); junction 4:
        // one observing cell in group 2 (p 1). Expected: scipy.stats.ttest_ind(equal_var=False) of the
        // values rounded to f32, as the dataset stores them.
        let psi: [[Option<f32>; 5]; 10] = [
            [Some(0.1), Some(0.0), Some(0.5), Some(0.2), Some(0.3)],
            [Some(0.2), Some(0.25), Some(0.5), Some(0.2), Some(0.3)],
            [Some(0.3), Some(0.5), None, None, None],
            [Some(0.5), Some(0.5), None, None, None],
            [None, Some(1.0), None, None, None],
            [Some(0.6), Some(0.0), Some(0.5), Some(0.7), Some(0.9)],
            [Some(0.7), Some(0.0), Some(0.5), Some(0.7), None],
            [Some(0.9), Some(0.5), None, None, None],
            [None, None, None, None, None],
            [None, None, None, None, None],
        ];
        let mut spl = crate::data::Splicing { n_cells: 10, n_junctions: 5, indptr: vec![0], ..Default::default() };
        for row in &psi {
            for (j, v) in row.iter().enumerate() {
                if let Some(v) = v {
                    spl.junction.push(j as u32);
                    spl.psi.push(*v);
                }
            }
            spl.indptr.push(spl.junction.len());
        }
        let (g1, g2) = (psi_moments(&spl, &[0, 1, 2, 3, 4]), psi_moments(&spl, &[5, 6, 7, 8, 9]));
        let p = empirical_pvalues(&g1, &g2);
        assert!((p[0] - 0.014932578741524899).abs() < 1e-12, "{}", p[0]);
        assert!((p[1] - 0.27906076637811).abs() < 1e-12, "{}", p[1]);
        assert_eq!(&p[2..], &[1.0, 0.0, 1.0]);
        // Symmetric in the groups.
        assert_eq!(p, empirical_pvalues(&g2, &g1));
    }
}
