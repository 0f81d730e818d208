//! Imputation metrics on pairs (truth o, prediction p), as the original's evaluation computes them
//! (model.md §8.4, `_compute_imputation_metrics`): Pearson r (NaN when either side is constant),
//! Spearman ρ (average ranks for ties), mean / median / 90th percentile of |o − p| (numpy's linear
//! interpolation), min / max of p, SMAPE, cosine similarity, min-max ratio and RMSE.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ImputationMetrics {
    pub n: usize,
    pub pearson: f64,
    pub spearman: f64,
    pub l1_mean: f64,
    pub l1_median: f64,
    pub l1_p90: f64,
    pub pred_min: f64,
    pub pred_max: f64,
    pub smape: f64,
    pub cosine_sim: f64,
    pub minmax_ratio: f64,
    pub rmse: f64,
}

impl ImputationMetrics {
    /// (name, value) pairs in a fixed order, for tables.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("n", self.n as f64),
            ("pearson", self.pearson),
            ("spearman", self.spearman),
            ("l1_mean", self.l1_mean),
            ("l1_median", self.l1_median),
            ("l1_p90", self.l1_p90),
            ("pred_min", self.pred_min),
            ("pred_max", self.pred_max),
            ("smape", self.smape),
            ("cosine_sim", self.cosine_sim),
            ("minmax_ratio", self.minmax_ratio),
            ("rmse", self.rmse),
        ]
    }
}

/// Values read as f64, in order, without copying: a slice of f64 or f32, or two slices one after the
/// other ([`Chain`]: the "all" subset scores the dropped then the observed entries). f32 values convert
/// exactly, so a metric of f32 values equals the metric of the same values stored as f64, bit for bit.
pub trait Column {
    fn len(&self) -> usize;
    fn at(&self, i: usize) -> f64;
    fn values(&self) -> impl Iterator<Item = f64> + '_;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Column for [f64] {
    fn len(&self) -> usize {
        <[f64]>::len(self)
    }
    fn at(&self, i: usize) -> f64 {
        self[i]
    }
    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.iter().copied()
    }
}

impl Column for [f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    fn at(&self, i: usize) -> f64 {
        self[i] as f64
    }
    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.iter().map(|&v| v as f64)
    }
}

/// Two slices read as one column, the first then the second.
pub struct Chain<'a, T>(pub &'a [T], pub &'a [T]);

impl<T> Column for Chain<'_, T>
where
    [T]: Column,
{
    fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }
    fn at(&self, i: usize) -> f64 {
        if i < self.0.len() {
            self.0.at(i)
        } else {
            self.1.at(i - self.0.len())
        }
    }
    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.0.values().chain(self.1.values())
    }
}

/// Pearson correlation; NaN when either standard deviation is below 1e-12 (the original's `_safe_pearson`).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    pearson_of(a, b)
}

/// [`pearson`] of any two columns.
pub fn pearson_of<A: Column + ?Sized, B: Column + ?Sized>(a: &A, b: &B) -> f64 {
    let n = a.len();
    if n == 0 || n != b.len() {
        return f64::NAN;
    }
    let ma = a.values().sum::<f64>() / n as f64;
    let mb = b.values().sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.values().zip(b.values()) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    let (sa, sb) = ((saa / n as f64).sqrt(), (sbb / n as f64).sqrt());
    if sa < 1e-12 || sb < 1e-12 {
        return f64::NAN;
    }
    (sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0)
}

/// Ranks 1..n with ties given their average rank (scipy's `rankdata(method="average")`).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    average_ranks_of(x)
}

/// [`average_ranks`] of any column (sorted through u32 positions when they fit: 4 bytes per value less).
pub fn average_ranks_of<X: Column + ?Sized>(x: &X) -> Vec<f64> {
    let mut ranks = vec![0.0; x.len()];
    if x.len() <= u32::MAX as usize {
        let mut idx: Vec<u32> = (0..x.len() as u32).collect();
        idx.sort_by(|&i, &j| x.at(i as usize).total_cmp(&x.at(j as usize)));
        assign_average_ranks(x, &idx, &mut ranks);
    } else {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x.at(i).total_cmp(&x.at(j)));
        assign_average_ranks(x, &idx, &mut ranks);
    }
    ranks
}

/// Ranks from the stable ascending order `idx` of `x`.
fn assign_average_ranks<X: Column + ?Sized, I: Copy + TryInto<usize>>(x: &X, idx: &[I], ranks: &mut [f64]) {
    let pos = |i: I| -> usize { i.try_into().ok().expect("a position fits usize") };
    let mut s = 0;
    while s < idx.len() {
        let mut e = s + 1;
        while e < idx.len() && x.at(pos(idx[e])) == x.at(pos(idx[s])) {
            e += 1;
        }
        // Positions s..e (0-based) share the average of ranks s+1..=e.
        let r = (s + 1 + e) as f64 / 2.0;
        for &i in &idx[s..e] {
            ranks[pos(i)] = r;
        }
        s = e;
    }
}

/// Spearman correlation = Pearson correlation of the average ranks (NaN if either side is constant).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    spearman_of(a, b)
}

/// [`spearman`] of any two columns.
pub fn spearman_of<A: Column + ?Sized, B: Column + ?Sized>(a: &A, b: &B) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    let (ra, rb) = (average_ranks_of(a), average_ranks_of(b));
    // scipy returns NaN for a constant input; the ranks are then constant too.
    pearson(&ra, &rb)
}

/// numpy's default quantile (linear interpolation between order statistics) of already sorted values.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// All metrics of §8.4 on (truth, prediction) pairs.
pub fn imputation_metrics(truth: &[f64], pred: &[f64]) -> ImputationMetrics {
    imputation_metrics_of(truth, pred)
}

/// [`imputation_metrics`] of any two columns (f32 or f64, one slice or two chained), without copying them.
pub fn imputation_metrics_of<T: Column + ?Sized, P: Column + ?Sized>(truth: &T, pred: &P) -> ImputationMetrics {
    assert_eq!(truth.len(), pred.len(), "imputation_metrics: {} truths for {} predictions", truth.len(), pred.len());
    let n = truth.len();
    if n == 0 {
        let nan = f64::NAN;
        return ImputationMetrics {
            n,
            pearson: nan,
            spearman: nan,
            l1_mean: nan,
            l1_median: nan,
            l1_p90: nan,
            pred_min: nan,
            pred_max: nan,
            smape: nan,
            cosine_sim: nan,
            minmax_ratio: nan,
            rmse: nan,
        };
    }
    let nf = n as f64;
    let pairs = || truth.values().zip(pred.values());
    let mut abs: Vec<f64> = pairs().map(|(o, p)| (o - p).abs()).collect();
    let l1_mean = abs.iter().sum::<f64>() / nf;
    let smape = pairs().map(|(o, p)| 2.0 * (o - p).abs() / (o.abs() + p.abs() + 1e-8)).sum::<f64>() / nf;
    let minmax_ratio = pairs().map(|(o, p)| o.abs().min(p.abs()) / (o.abs().max(p.abs()) + 1e-8)).sum::<f64>() / nf;
    let rmse = (pairs().map(|(o, p)| (o - p) * (o - p)).sum::<f64>() / nf).sqrt();
    let dot: f64 = pairs().map(|(o, p)| o * p).sum();
    let no = truth.values().map(|o| o * o).sum::<f64>().sqrt();
    let np = pred.values().map(|p| p * p).sum::<f64>().sqrt();
    let cosine_sim = dot / (no * np + 1e-8);
    abs.sort_by(f64::total_cmp);
    let (l1_median, l1_p90) = (quantile_sorted(&abs, 0.5), quantile_sorted(&abs, 0.9));
    drop(abs);
    ImputationMetrics {
        n,
        pearson: pearson_of(truth, pred),
        spearman: spearman_of(truth, pred),
        l1_mean,
        l1_median,
        l1_p90,
        pred_min: pred.values().fold(f64::INFINITY, f64::min),
        pred_max: pred.values().fold(f64::NEG_INFINITY, f64::max),
        smape,
        cosine_sim,
        minmax_ratio,
        rmse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        // o = [0.1, 0.5, 0.9, 0.5], p = [0.2, 0.4, 0.6, 0.5]
        let o = [0.1, 0.5, 0.9, 0.5];
        let p = [0.2, 0.4, 0.6, 0.5];
        let m = imputation_metrics(&o, &p);
        // |o−p| = [0.1, 0.1, 0.3, 0]; sorted [0, 0.1, 0.1, 0.3]
        assert!((m.l1_mean - 0.125).abs() < 1e-12);
        assert!((m.l1_median - 0.1).abs() < 1e-12);
        // p90 position 0.9·3 = 2.7 → 0.1 + 0.7·0.2 = 0.24
        assert!((m.l1_p90 - 0.24).abs() < 1e-12);
        assert!((m.rmse - (0.11f64 / 4.0).sqrt()).abs() < 1e-12);
        // Pearson: mean o 0.5, mean p 0.425; cov sum = (-0.4)(-0.225)+0+(0.4)(0.175)+0 = 0.16
        // Σdo² = 0.32, Σdp² = 0.050625+0.000625+0.030625+0.005625 = 0.0875
        let r = 0.16 / (0.32f64.sqrt() * 0.0875f64.sqrt());
        assert!((m.pearson - r).abs() < 1e-12, "{} vs {r}", m.pearson);
        // Spearman with ties: ranks o = [1, 2.5, 4, 2.5], p = [1, 2, 4, 3]
        let rs = pearson(&[1.0, 2.5, 4.0, 2.5], &[1.0, 2.0, 4.0, 3.0]);
        assert!((m.spearman - rs).abs() < 1e-12);
        let smape = (2.0 * 0.1 / 0.3 + 2.0 * 0.1 / 0.9 + 2.0 * 0.3 / 1.5 + 0.0) / 4.0;
        assert!((m.smape - smape).abs() < 1e-6);
        let cos = (0.02 + 0.2 + 0.54 + 0.25) / ((0.01f64 + 0.25 + 0.81 + 0.25).sqrt() * (0.04f64 + 0.16 + 0.36 + 0.25).sqrt());
        assert!((m.cosine_sim - cos).abs() < 1e-7);
        let mm = (0.1 / 0.2 + 0.4 / 0.5 + 0.6 / 0.9 + 1.0) / 4.0;
        assert!((m.minmax_ratio - mm).abs() < 1e-6);
        assert_eq!((m.pred_min, m.pred_max, m.n), (0.2, 0.6, 4));
    }

    /// f32 columns and chained slices give the metrics of the same values as one f64 slice, bit for bit.
    #[test]
    fn columns_of_f32_and_chained_slices_equal_one_f64_slice() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Quantised so that ties occur (ranks average them).
            ((rng >> 40) % 50) as f32 / 49.0
        };
        let truth: Vec<f32> = (0..1000).map(|_| next()).collect();
        let pred: Vec<f32> = (0..1000).map(|_| next() * 0.5 + 0.25).collect();
        let t64: Vec<f64> = truth.iter().map(|&v| v as f64).collect();
        let p64: Vec<f64> = pred.iter().map(|&v| v as f64).collect();
        let want = imputation_metrics(&t64, &p64);
        assert!(want.pearson.is_finite() && want.spearman.is_finite());
        assert_eq!(imputation_metrics_of(&truth[..], &pred[..]), want);
        for cut in [0, 1, 377, 999, 1000] {
            let t = Chain(&truth[..cut], &truth[cut..]);
            let p = Chain(&pred[..cut], &pred[cut..]);
            assert_eq!(imputation_metrics_of(&t, &p), want, "cut at {cut}");
            assert_eq!(average_ranks_of(&t), average_ranks(&t64), "ranks, cut at {cut}");
        }
    }

    #[test]
    fn constant_inputs_give_nan_correlations() {
        let m = imputation_metrics(&[0.3, 0.3, 0.3], &[0.1, 0.2, 0.3]);
        assert!(m.pearson.is_nan() && m.spearman.is_nan());
        assert!(imputation_metrics(&[], &[]).pearson.is_nan());
        assert_eq!(average_ranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }
}
