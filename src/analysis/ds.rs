//! Differential splicing (model.md §7.8): the change-mode test of `differential` on PSI, with the
//! change r = ψ2 − ψ1 (raw ΔPSI; δ = minimum |ΔPSI|), pseudocounts irrelevant, and the original's
//! columns: proba_ds, is_ds_fdr, bayes_factor, effect_size (= est_prob2 − est_prob1, the means over the
//! samples), emp_effect, est_prob1/2, emp_prob1/2 (mean observed PSI over the group's cells with
//! mask = 1, −1 if none), n_obs_group1/2, junction_id, gene_name. Rows are in junction order.
//!
//! The samples are streamed: pairs are decoded a block at a time and only per-junction counts and sums
//! are kept, so memory is O(block × J), never O(5000 × J).

use super::differential::{bayes_factor, clean_text, decode_plan, fdr_calls, fmt_bool, fmt_f64, paired_plans, proba_de, ChangeOptions, Comparison};
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

/// Mean observed PSI and number of observing cells per junction over `cells` (−1 where none observe).
pub fn empirical_psi(spl: &crate::data::Splicing, cells: &[usize]) -> (Vec<f64>, Vec<u64>) {
    let mut sum = vec![0f64; spl.n_junctions];
    let mut cnt = vec![0u64; spl.n_junctions];
    for &c in cells {
        for e in spl.cell_range(c) {
            let j = spl.junction[e] as usize;
            sum[j] += spl.psi[e] as f64;
            cnt[j] += 1;
        }
    }
    let mean = sum.iter().zip(&cnt).map(|(&s, &n)| if n > 0 { s / n as f64 } else { -1.0 }).collect();
    (mean, cnt)
}

/// The FDR calls over the tested junctions only: those observed in ≥ `min_obs` cells of both groups
/// (all when `min_obs` = 0, then identical to `fdr_calls`).
pub fn fdr_calls_tested(proba: &[f64], n1: &[u64], n2: &[u64], min_obs: u64, fdr: f64) -> Vec<bool> {
    if min_obs == 0 {
        return fdr_calls(proba, fdr);
    }
    let tested: Vec<usize> = (0..proba.len()).filter(|&j| n1[j] >= min_obs && n2[j] >= min_obs).collect();
    let sub: Vec<f64> = tested.iter().map(|&j| proba[j]).collect();
    let mut out = vec![false; proba.len()];
    for (&j, c) in tested.iter().zip(fdr_calls(&sub, fdr)) {
        out[j] = c;
    }
    out
}

/// Run one comparison. `key` seeds its sample streams (use the comparison's position).
pub fn differential_splicing(post: &Posterior, cmp: &Comparison, method: SplicingFn, opts: &ChangeOptions, key: u64) -> Result<DsResult> {
    opts.validate()?;
    let j = post.ds.n_junctions();
    let (p1, p2) = paired_plans(cmp, post.model.dims.n_batch, opts, key)?;
    let n = p1.len();
    let delta = opts.delta as f32;
    // Per junction: Σψ1, Σψ2, #(r ≥ δ), #(r < −δ).
    let mut acc = vec![[0f64; 4]; j];
    let mut start = 0;
    while start < n {
        let end = (start + opts.block_cells).min(n);
        let s1 = decode_plan(post, &p1, start..end, Some(method), false, opts.block_cells)?;
        let s2 = decode_plan(post, &p2, start..end, Some(method), false, opts.block_cells)?;
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
    let proba: Vec<f64> = acc.iter().map(|a| proba_de(a[2], a[3], nf)).collect();
    let est1: Vec<f64> = acc.iter().map(|a| a[0] / nf).collect();
    let est2: Vec<f64> = acc.iter().map(|a| a[1] / nf).collect();
    let (emp1, n1) = empirical_psi(&post.ds.splicing, &cmp.idx1);
    let (emp2, n2) = empirical_psi(&post.ds.splicing, &cmp.idx2);
    let spl = &post.ds.splicing;
    Ok(DsResult {
        group1: cmp.group1.clone(),
        group2: cmp.group2.clone(),
        junction_id: spl.junction_names.clone(),
        gene_name: if spl.gene_names.len() == j { spl.gene_names.clone() } else { vec![String::new(); j] },
        is_ds_fdr: fdr_calls_tested(&proba, &n1, &n2, opts.min_obs_cells, opts.fdr),
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
        n_pairs: n,
    })
}

/// The TSV of one or more comparisons; with several, `comparison`, `group1`, `group2` columns follow.
pub fn ds_tsv(results: &[DsResult]) -> String {
    let multi = results.len() > 1;
    let mut s = DS_COLUMNS.join("\t");
    if multi {
        s.push_str("\tcomparison\tgroup1\tgroup2");
    }
    s.push('\n');
    for r in results {
        for i in 0..r.proba_ds.len() {
            let cells = [
                clean_text(&r.junction_id[i]),
                clean_text(&r.gene_name[i]),
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
            if multi {
                let (g1, g2) = (clean_text(&r.group1), clean_text(&r.group2));
                s.push_str(&format!("\t{g1} vs {g2}\t{g1}\t{g2}"));
            }
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
        assert_eq!(fdr_calls_tested(&p, &n1, &n2, 0, 0.05), fdr_calls(&p, 0.05));
        // Junction 1 (3 cells in group 1) is not tested: the prefix then has 1.0, 0.9 (mean 1−P 0.05).
        assert_eq!(fdr_calls_tested(&p, &n1, &n2, 10, 0.05), vec![true, false, true, false]);
        assert_eq!(fdr_calls_tested(&p, &n1, &n2, 100, 0.05), vec![false; 4]);
    }
}
