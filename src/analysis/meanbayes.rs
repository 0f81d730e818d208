//! MeanBayes, the original's model-free imputation baseline (model.md §8.4, `mean_bayes.py`).
//!
//! A Beta(a, b) prior is fitted by the method of moments to the per-junction mean observed PSI (a
//! junction nobody observed counts as 0.5): m = mean of the means, v = their (population) variance;
//! Beta(1, 1) if v ≤ 1e-8 or m(1−m) ≤ 1e-8; else v is clipped to [1e-8, m(1−m) − 1e-8],
//! c = m(1−m)/v − 1, a = max(m·c, 1e-6), b = max((1−m)·c, 1e-6). An unobserved entry of junction j is
//! predicted by the posterior mean (a + S_j)/(a + b + N_j), S_j and N_j the sum and count of the observed
//! PSI of j; observed entries keep their PSI. With groups, each group gets its own prior and sums, and a
//! junction observed in fewer than `min_group_cells` cells of the group falls back to the global
//! posterior mean.

use crate::data::Splicing;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BetaPrior {
    pub a: f64,
    pub b: f64,
}

/// Method-of-moments Beta prior from per-junction mean PSI values.
pub fn fit_beta_prior(junction_means: &[f64]) -> BetaPrior {
    let n = junction_means.len() as f64;
    if junction_means.is_empty() {
        return BetaPrior { a: 1.0, b: 1.0 };
    }
    let m = junction_means.iter().sum::<f64>() / n;
    let v = junction_means.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    let max_var = m * (1.0 - m);
    if max_var <= 1e-8 || v <= 1e-8 {
        return BetaPrior { a: 1.0, b: 1.0 };
    }
    // numpy.clip semantics (max wins), which never panics.
    let v = v.max(1e-8).min(max_var - 1e-8);
    let c = max_var / v - 1.0;
    BetaPrior { a: (m * c).max(1e-6), b: ((1.0 - m) * c).max(1e-6) }
}

/// Observed-PSI sums and counts per junction over a set of cells.
fn junction_stats<'a>(spl: &Splicing, cells: impl Iterator<Item = &'a usize>) -> (Vec<f64>, Vec<f64>) {
    let mut s = vec![0f64; spl.n_junctions];
    let mut n = vec![0f64; spl.n_junctions];
    for &c in cells {
        for e in spl.cell_range(c) {
            let j = spl.junction[e] as usize;
            s[j] += spl.psi[e] as f64;
            n[j] += 1.0;
        }
    }
    (s, n)
}

fn means(s: &[f64], n: &[f64]) -> Vec<f64> {
    s.iter().zip(n).map(|(&s, &n)| if n > 0.0 { s / n } else { 0.5 }).collect()
}

fn posterior_means(prior: BetaPrior, s: &[f64], n: &[f64]) -> Vec<f64> {
    s.iter().zip(n).map(|(&s, &n)| (prior.a + s) / (prior.a + prior.b + n)).collect()
}

pub struct MeanBayes {
    pub global_prior: BetaPrior,
    /// Posterior mean per junction under the global prior.
    pub global: Vec<f64>,
    /// Per group: prior and the per-junction prediction (group posterior mean or the global fallback).
    pub groups: Vec<(BetaPrior, Vec<f64>)>,
    /// Group of each cell (empty without groups).
    pub group_of: Vec<u32>,
}

impl MeanBayes {
    /// Fit on the observed entries of `spl`. `groups`: a group code per cell (None = one global prior).
    pub fn fit(spl: &Splicing, groups: Option<&[u32]>, min_group_cells: usize) -> Self {
        let all: Vec<usize> = (0..spl.n_cells).collect();
        let (s, n) = junction_stats(spl, all.iter());
        let global_prior = fit_beta_prior(&means(&s, &n));
        let global = posterior_means(global_prior, &s, &n);
        let mut out = MeanBayes { global_prior, global, groups: Vec::new(), group_of: Vec::new() };
        if let Some(codes) = groups {
            assert_eq!(codes.len(), spl.n_cells, "MeanBayes: {} group codes for {} cells", codes.len(), spl.n_cells);
            let n_groups = codes.iter().copied().max().map_or(0, |m| m as usize + 1);
            let mut members = vec![Vec::new(); n_groups];
            codes.iter().enumerate().for_each(|(c, &g)| members[g as usize].push(c));
            for cells in &members {
                let (gs, gn) = junction_stats(spl, cells.iter());
                let prior = fit_beta_prior(&means(&gs, &gn));
                let grp = posterior_means(prior, &gs, &gn);
                let pred = (0..spl.n_junctions).map(|j| if gn[j] >= min_group_cells as f64 { grp[j] } else { out.global[j] }).collect();
                out.groups.push((prior, pred));
            }
            out.group_of = codes.to_vec();
        }
        out
    }

    /// Prediction for an unobserved entry (cell, junction).
    pub fn predict(&self, cell: usize, junction: usize) -> f64 {
        if self.group_of.is_empty() {
            self.global[junction]
        } else {
            self.groups[self.group_of[cell] as usize].1[junction]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 cells × 3 junctions; observed psi (exact in f32): cell0 {j0: 0.25, j1: 0.75}, cell1 {j0: 0.5},
    /// cell2 {j1: 1.0}.
    fn toy() -> Splicing {
        Splicing {
            n_cells: 3,
            n_junctions: 3,
            indptr: vec![0, 2, 3, 4],
            junction: vec![0, 1, 0, 1],
            k: vec![1.0, 3.0, 2.0, 3.0],
            n: vec![4.0, 4.0, 4.0, 3.0],
            psi: vec![0.25, 0.75, 0.5, 1.0],
            has_counts: true,
            ..Default::default()
        }
    }

    #[test]
    fn prior_and_predictions_match_hand_computation() {
        // Junction means: j0 0.375, j1 0.875, j2 (unobserved) 0.5 → m, v = population variance.
        let means = [0.375, 0.875, 0.5];
        let m: f64 = means.iter().sum::<f64>() / 3.0;
        let v: f64 = means.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 3.0;
        let c = m * (1.0 - m) / v - 1.0;
        let (a, b) = (m * c, (1.0 - m) * c);
        let mb = MeanBayes::fit(&toy(), None, 2);
        assert!((mb.global_prior.a - a).abs() < 1e-12 && (mb.global_prior.b - b).abs() < 1e-12);
        // j0: S = 0.75, N = 2; j2: S = 0, N = 0 → prior mean.
        assert!((mb.predict(2, 0) - (a + 0.75) / (a + b + 2.0)).abs() < 1e-12);
        assert!((mb.predict(0, 2) - a / (a + b)).abs() < 1e-12);
    }

    #[test]
    fn degenerate_means_give_a_uniform_prior_and_groups_fall_back() {
        assert_eq!(fit_beta_prior(&[0.5, 0.5, 0.5]), BetaPrior { a: 1.0, b: 1.0 });
        assert_eq!(fit_beta_prior(&[1.0, 1.0]), BetaPrior { a: 1.0, b: 1.0 });
        // Groups: {0, 1} and {2}. Group 0 observes j0 twice (≥ 2 → group posterior), j1 once (→ global).
        let mb = MeanBayes::fit(&toy(), Some(&[0, 0, 1]), 2);
        let (pg, pred0) = &mb.groups[0];
        // Group 0 junction means: j0 0.375, j1 0.75, j2 0.5.
        let exp = fit_beta_prior(&[0.375, 0.75, 0.5]);
        assert!((pg.a - exp.a).abs() < 1e-12 && (pg.b - exp.b).abs() < 1e-12, "{pg:?} vs {exp:?}");
        assert!((pred0[0] - (exp.a + 0.75) / (exp.a + exp.b + 2.0)).abs() < 1e-12);
        assert_eq!(pred0[1], mb.global[1]);
        assert_eq!(mb.predict(1, 1), mb.global[1]);
        // Group 1 observes j1 once only: everything falls back to the global posterior.
        assert_eq!(mb.groups[1].1, mb.global);
    }
}
