//! scvi-tools' `filter_outlier_cells` for differential tests: before a group's cells are sampled, the
//! ones whose joint-latent posterior mean lies outside a robust elliptic envelope are dropped. scvi
//! fits sklearn's `EllipticEnvelope()` (contamination 0.1) to the group's latent means and keeps the
//! inliers; that is a Minimum Covariance Determinant fit (FastMCD: random h-subsets refined by C-steps,
//! h = ⌈(n + p + 1)/2⌉), the consistency correction (covariance × median(d²) / χ²_p(0.5)), one
//! reweighting step (points with corrected d² < χ²_p(0.975)), and a cut at the (1 − contamination)
//! percentile of the reweighted Mahalanobis distances.
//!
//! Why it matters (docs/robust.md): the change-mode test's spread is the between-cell variability of
//! the decoded values, and a group's cells that sit towards (or in) another group in the latent make
//! every real difference look uncertain. The FastMCD search here is seeded and runs every C-step on the
//! whole group (sklearn subsamples groups over 500 cells first), so which cells go can differ from
//! sklearn's in ties and near-ties; the procedure is the same.

use anyhow::{bail, Result};
use rand::seq::index::sample;
use rand::SeedableRng;
use rayon::prelude::*;
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// sklearn's `EllipticEnvelope` default.
pub const CONTAMINATION: f64 = 0.1;
/// FastMCD: random starts, C-steps per start before the best `KEEP_BEST` are refined to convergence.
const N_TRIALS: usize = 30;
const FIRST_STEPS: usize = 2;
const KEEP_BEST: usize = 10;
const MAX_STEPS: usize = 30;

/// Location, covariance factor and log-determinant of one support.
struct Fit {
    mean: Vec<f64>,
    /// Lower Cholesky factor of the covariance (row-major p × p).
    chol: Vec<f64>,
    logdet: f64,
}

/// Mean and MLE covariance (divisor = count) of the rows in `rows`, Cholesky-factored. A singular
/// covariance (a latent dimension constant over the support) gets a ridge of 1e-10 × (mean variance +
/// 1e-300), like a pseudo-inverse would treat it: distances along the dead direction stop counting.
fn fit(x: &[f64], p: usize, rows: &[usize]) -> Fit {
    let m = rows.len() as f64;
    let mut mean = vec![0f64; p];
    for &r in rows {
        for (a, v) in mean.iter_mut().zip(&x[r * p..(r + 1) * p]) {
            *a += v;
        }
    }
    mean.iter_mut().for_each(|a| *a /= m);
    let mut cov = vec![0f64; p * p];
    let mut d = vec![0f64; p];
    for &r in rows {
        for k in 0..p {
            d[k] = x[r * p + k] - mean[k];
        }
        for a in 0..p {
            for b in 0..=a {
                cov[a * p + b] += d[a] * d[b];
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= m);
    let ridge = 1e-10 * ((0..p).map(|k| cov[k * p + k]).sum::<f64>() / p as f64 + 1e-300);
    let chol = cholesky(&cov, p, ridge);
    let logdet = 2.0 * (0..p).map(|k| chol[k * p + k].ln()).sum::<f64>();
    Fit { mean, chol, logdet }
}

/// Lower Cholesky factor of the lower triangle of `a` (+ `ridge` on the diagonal; more where a pivot
/// still falls to ≤ 0 from rounding).
fn cholesky(a: &[f64], p: usize, ridge: f64) -> Vec<f64> {
    let mut l = vec![0f64; p * p];
    for i in 0..p {
        for j in 0..=i {
            let mut s = a[i * p + j] + if i == j { ridge } else { 0.0 };
            for k in 0..j {
                s -= l[i * p + k] * l[j * p + k];
            }
            if i == j {
                l[i * p + i] = if s > ridge { s.sqrt() } else { ridge.max(f64::MIN_POSITIVE).sqrt() };
            } else {
                l[i * p + j] = s / l[j * p + j];
            }
        }
    }
    l
}

/// Squared Mahalanobis distance of every row under `f` (forward substitution with the factor).
fn distances(x: &[f64], p: usize, f: &Fit) -> Vec<f64> {
    // Rows in parallel: a "rest" group can hold most of a 100k-cell dataset.
    x.par_chunks(p)
        .map_init(
            || vec![0f64; p],
            |y, row| {
                let mut s = 0.0;
                for i in 0..p {
                    let mut v = row[i] - f.mean[i];
                    for k in 0..i {
                        v -= f.chol[i * p + k] * y[k];
                    }
                    y[i] = v / f.chol[i * p + i];
                    s += y[i] * y[i];
                }
                s
            },
        )
        .collect()
}

/// The `h` rows with the smallest distances (ties by row index), sorted.
fn smallest(d: &[f64], h: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..d.len()).collect();
    if h < idx.len() {
        idx.select_nth_unstable_by(h, |&a, &b| d[a].total_cmp(&d[b]).then(a.cmp(&b)));
    }
    let mut s = idx[..h].to_vec();
    s.sort_unstable();
    s
}

/// C-steps from `support` until the determinant stops falling (or `steps` are done).
fn c_steps(x: &[f64], p: usize, h: usize, mut support: Vec<usize>, steps: usize) -> (Vec<usize>, Fit) {
    let mut f = fit(x, p, &support);
    for _ in 0..steps {
        let next = smallest(&distances(x, p, &f), h);
        if next == support {
            break;
        }
        let g = fit(x, p, &next);
        if g.logdet > f.logdet {
            break;
        }
        (support, f) = (next, g);
    }
    (support, f)
}

/// np.percentile's default (linear interpolation between order statistics).
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q / 100.0 * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

/// Which of the `n = x.len() / p` rows are inliers of the robust elliptic envelope that leaves out
/// `contamination` of them. Errors when the group is too small for a covariance (n ≤ p + 1); scvi then
/// warns and keeps every cell, which is what the caller does.
pub fn envelope_inliers(x: &[f64], p: usize, contamination: f64, seed: u64) -> Result<Vec<bool>> {
    anyhow::ensure!(p > 0 && x.len() % p == 0, "latent rows of {p} values expected");
    anyhow::ensure!((0.0..0.5).contains(&contamination), "contamination must be in [0, 0.5), got {contamination}");
    let n = x.len() / p;
    if n <= p + 1 {
        bail!("{n} cells in {p} latent dimensions: too few for a covariance");
    }
    if x.iter().any(|v| !v.is_finite()) {
        bail!("non-finite latent values");
    }
    let h = (n + p + 1).div_ceil(2).min(n);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut starts: Vec<(Vec<usize>, Fit)> = (0..N_TRIALS)
        .map(|_| {
            let mut s = sample(&mut rng, n, h).into_vec();
            s.sort_unstable();
            c_steps(x, p, h, s, FIRST_STEPS)
        })
        .collect();
    starts.sort_by(|a, b| a.1.logdet.total_cmp(&b.1.logdet));
    starts.truncate(KEEP_BEST);
    let (_, raw) = starts
        .into_iter()
        .map(|(s, _)| c_steps(x, p, h, s, MAX_STEPS))
        .min_by(|a, b| a.1.logdet.total_cmp(&b.1.logdet))
        .expect("at least one start");
    // Consistency correction, then one reweighting step (sklearn's MinCovDet).
    let chi2 = ChiSquared::new(p as f64).expect("p > 0");
    let d_raw = distances(x, p, &raw);
    let med = median(&d_raw);
    let scale = if med > 0.0 { med / chi2.inverse_cdf(0.5) } else { 1.0 };
    let cut = chi2.inverse_cdf(0.975);
    let kept: Vec<usize> = (0..n).filter(|&i| d_raw[i] / scale < cut).collect();
    let fin = if kept.len() > p { fit(x, p, &kept) } else { raw };
    let d = distances(x, p, &fin);
    let thr = percentile(&d, 100.0 * (1.0 - contamination));
    Ok(d.iter().map(|&v| v <= thr).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn gauss(n: usize, p: usize, seed: u64) -> Vec<f64> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n * p).map(|_| StandardNormal.sample(&mut r)).collect()
    }

    #[test]
    fn keeps_ninety_percent_and_drops_the_planted_outliers() {
        // 270 points of an anisotropic Gaussian and 30 shifted by 10 sd along a direction of small
        // variance: MCD must flag all 30.
        let (n, p) = (300, 5);
        let mut x = gauss(n, p, 1);
        for r in 0..n {
            x[r * p] *= 4.0;
        }
        for r in 270..n {
            x[r * p + 2] += 10.0;
        }
        // The classical covariance is stretched by them: several outliers sit closer than the farthest
        // inliers, so a plain Mahalanobis cut would keep some.
        let all: Vec<usize> = (0..n).collect();
        let plain = distances(&x, p, &fit(&x, p, &all));
        let inlier_max = plain[..270].iter().cloned().fold(0.0, f64::max);
        assert!(plain[270..].iter().any(|&d| d < inlier_max), "the test needs outliers that fool the plain covariance");
        let keep = envelope_inliers(&x, p, CONTAMINATION, 0).unwrap();
        assert_eq!(keep.iter().filter(|&&k| k).count(), 270, "the 90th percentile cut");
        assert!(keep[270..].iter().all(|&k| !k), "every planted outlier is dropped");
        // Seeded: the same call gives the same answer.
        assert_eq!(keep, envelope_inliers(&x, p, CONTAMINATION, 0).unwrap());
    }

    #[test]
    fn distances_and_fit_match_a_direct_computation() {
        let (n, p) = (50, 3);
        let x = gauss(n, p, 2);
        let rows: Vec<usize> = (0..n).collect();
        let f = fit(&x, p, &rows);
        // Direct: covariance, its inverse by Cramer's rule (3 × 3), then (x − μ)ᵀ S⁻¹ (x − μ).
        let mut c = [[0f64; 3]; 3];
        for r in 0..n {
            for a in 0..3 {
                for b in 0..3 {
                    c[a][b] += (x[r * 3 + a] - f.mean[a]) * (x[r * 3 + b] - f.mean[b]) / n as f64;
                }
            }
        }
        let det = c[0][0] * (c[1][1] * c[2][2] - c[1][2] * c[2][1]) - c[0][1] * (c[1][0] * c[2][2] - c[1][2] * c[2][0]) + c[0][2] * (c[1][0] * c[2][1] - c[1][1] * c[2][0]);
        assert!((f.logdet - det.ln()).abs() < 1e-9);
        let mut inv = [[0f64; 3]; 3];
        for a in 0..3 {
            for b in 0..3 {
                let (r0, r1) = ((b + 1) % 3, (b + 2) % 3);
                let (c0, c1) = ((a + 1) % 3, (a + 2) % 3);
                inv[a][b] = (c[r0][c0] * c[r1][c1] - c[r0][c1] * c[r1][c0]) / det;
            }
        }
        let d = distances(&x, p, &f);
        for r in 0..n {
            let v: Vec<f64> = (0..3).map(|k| x[r * 3 + k] - f.mean[k]).collect();
            let want: f64 = (0..3).map(|a| (0..3).map(|b| v[a] * inv[a][b] * v[b]).sum::<f64>()).sum();
            assert!((d[r] - want).abs() < 1e-9 * want.max(1.0), "row {r}: {} vs {want}", d[r]);
        }
    }

    #[test]
    fn constant_dimension_and_small_groups() {
        // A latent dimension constant over the group (a collapsed unit) must not break the fit.
        let (n, p) = (100, 4);
        let mut x = gauss(n, p, 3);
        for r in 0..n {
            x[r * p + 3] = 0.25;
        }
        let keep = envelope_inliers(&x, p, CONTAMINATION, 0).unwrap();
        assert_eq!(keep.iter().filter(|&&k| k).count(), 90);
        assert!(envelope_inliers(&x[..5 * p], p, CONTAMINATION, 0).is_err(), "5 cells in 4 dimensions");
        let mut bad = x.clone();
        bad[7] = f64::NAN;
        assert!(envelope_inliers(&bad, p, CONTAMINATION, 0).is_err());
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let y: Vec<f64> = (0..40 * 2).map(|_| r.gen::<f64>()).collect();
        assert_eq!(envelope_inliers(&y, 2, 0.0, 0).unwrap(), vec![true; 40], "contamination 0 keeps all");
    }
}
