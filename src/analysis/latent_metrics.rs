//! Latent-space quality metrics (model.md §8.1–§8.2): k-NN accuracy with stratification-free k-fold
//! cross-validation, silhouette score, held-out scores of sklearn's `LogisticRegression(max_iter=1000)`
//! on the latent as it is (§8.1: no scaler; L2 with C = 1, lbfgs, multinomial for three or more classes
//! and the binary model for two), and the number of principal components explaining 90% of the
//! variance. Brute-force distances, parallel over query cells: exact, and fast enough for the tens of
//! thousands of cells an evaluation uses.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

fn sqdist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-NN classification accuracy of `labels` from the rows of `x` (n × d, row-major), `folds`-fold
/// cross-validated over a seeded permutation. Ties in the vote go to the smallest label.
pub fn knn_accuracy(x: &[f32], d: usize, labels: &[u32], k: usize, folds: usize, seed: u64) -> f64 {
    let n = labels.len();
    assert_eq!(x.len(), n * d, "knn_accuracy: {} values for {n}×{d}", x.len());
    if n < 2 {
        return f64::NAN;
    }
    let folds = folds.clamp(2, n);
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut fold_of = vec![0usize; n];
    for (r, &i) in perm.iter().enumerate() {
        fold_of[i] = r % folds;
    }
    let n_labels = labels.iter().copied().max().unwrap_or(0) as usize + 1;
    let correct: usize = (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * d..(i + 1) * d];
            let mut cand: Vec<(f32, usize)> =
                (0..n).filter(|&j| fold_of[j] != fold_of[i]).map(|j| (sqdist(xi, &x[j * d..(j + 1) * d]), j)).collect();
            let kk = k.min(cand.len());
            if kk == 0 {
                return 0;
            }
            cand.select_nth_unstable_by(kk - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let mut votes = vec![0usize; n_labels];
            cand[..kk].iter().for_each(|&(_, j)| votes[labels[j] as usize] += 1);
            let best = (0..n_labels).max_by(|&a, &b| votes[a].cmp(&votes[b]).then(b.cmp(&a))).unwrap_or(0);
            usize::from(best as u32 == labels[i])
        })
        .sum();
    correct as f64 / n as f64
}

/// Mean silhouette coefficient (Euclidean), as sklearn's `silhouette_score`.
pub fn silhouette(x: &[f32], d: usize, labels: &[u32]) -> f64 {
    let n = labels.len();
    let n_labels = labels.iter().copied().max().unwrap_or(0) as usize + 1;
    let mut sizes = vec![0usize; n_labels];
    labels.iter().for_each(|&l| sizes[l as usize] += 1);
    if sizes.iter().filter(|&&s| s > 0).count() < 2 {
        return f64::NAN;
    }
    // Per-cell values in parallel, summed in cell order: the result does not depend on the thread count.
    let per_cell: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut sums = vec![0f64; n_labels];
            for j in 0..n {
                if j != i {
                    sums[labels[j] as usize] += (sqdist(&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]) as f64).sqrt();
                }
            }
            let li = labels[i] as usize;
            if sizes[li] <= 1 {
                return 0.0;
            }
            let a = sums[li] / (sizes[li] - 1) as f64;
            let b = (0..n_labels).filter(|&l| l != li && sizes[l] > 0).map(|l| sums[l] / sizes[l] as f64).fold(f64::INFINITY, f64::min);
            // a cell with every other at its own point (a = b = 0): 0, as sklearn's nan_to_num gives
            if a.max(b) == 0.0 {
                0.0
            } else {
                (b - a) / a.max(b)
            }
        })
        .collect();
    per_cell.iter().sum::<f64>() / n as f64
}

/// Eigenvalues of a symmetric n × n matrix (row-major), by cyclic Jacobi rotations; descending.
pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Vec<f64> {
    let (mut ev, _) = crate::train::svd::sym_eig(a.to_vec(), n);
    ev.sort_by(|a, b| b.total_cmp(a));
    ev
}

/// Number of principal components explaining `frac` of the variance of the rows of `x` (n × d), as
/// the original computes it: PCA on the centred data, first k with cumulative ratio ≥ frac.
pub fn pcs_for_variance(x: &[f32], d: usize, frac: f64) -> usize {
    let n = if d == 0 { 0 } else { x.len() / d };
    if n < 2 || d == 0 {
        return 0;
    }
    let mut mean = vec![0f64; d];
    for r in 0..n {
        for t in 0..d {
            mean[t] += x[r * d + t] as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let cov: Vec<f64> = (0..d * d)
        .into_par_iter()
        .map(|k| {
            let (a, b) = (k / d, k % d);
            (0..n).map(|r| (x[r * d + a] as f64 - mean[a]) * (x[r * d + b] as f64 - mean[b])).sum::<f64>() / (n - 1) as f64
        })
        .collect();
    let ev = symmetric_eigenvalues(&cov, d);
    let total: f64 = ev.iter().map(|v| v.max(0.0)).sum();
    if total <= 0.0 {
        return 0;
    }
    let mut cum = 0.0;
    for (k, v) in ev.iter().enumerate().take(n.min(d)) {
        cum += v.max(0.0) / total;
        if cum >= frac - 1e-12 {
            return k + 1;
        }
    }
    n.min(d)
}

/// Logistic regression with an L2 penalty ½‖W‖² (C = 1; intercepts not penalised), fitted by L-BFGS:
/// sklearn's `LogisticRegression()` objective. Three or more classes: the multinomial model, every row
/// of W penalised (sklearn's; the unpenalised intercepts stay centred, as sklearn leaves them). Two
/// classes: sklearn's binary model, one weight vector for class 1 against class 0 (row 0 stays zero);
/// the multinomial form would put half the penalty on each row, a weaker penalty than sklearn's.
/// Returns (weights K × d, intercepts K).
///
/// Where it differs from sklearn's lbfgs: the objective is summed over cells, not averaged, and it
/// stops at a largest gradient entry below 1e-6 (or a relative change of the objective below 1e-10),
/// far tighter than sklearn's `tol=1e-4` on the averaged gradient: both reach the same optimum, ours
/// closer to it. The line search is a backtracking Armijo search, not scipy's Wolfe search, so the
/// iterates (and a fit cut short by `max_iter`) differ.
pub fn fit_logistic(x: &[f32], d: usize, y: &[u32], n_classes: usize, max_iter: usize) -> (Vec<f64>, Vec<f64>) {
    fit_logistic_weighted(x, d, y, n_classes, max_iter, None)
}

/// [`fit_logistic`] with sample weights (sklearn's `sample_weight`, and `class_weight` multiplied into
/// it): the objective Σᵢ wᵢ·lossᵢ + ½‖W‖². sklearn divides the data term and the penalty by Σᵢ wᵢ alike,
/// which leaves the optimum where it is. `None`: every weight 1.
pub fn fit_logistic_weighted(x: &[f32], d: usize, y: &[u32], n_classes: usize, max_iter: usize, weights: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
    let n = y.len();
    if let Some(w) = weights {
        assert_eq!(w.len(), n, "fit_logistic_weighted: {} weights for {n} cells", w.len());
    }
    let weight = |i: usize| weights.map_or(1.0, |w| w[i]);
    let k = n_classes;
    let np = k * d + k;
    // (binary: class 0's weights and intercept get no gradient, so they stay at 0)
    let fixed0 = k == 2;
    // Objective and gradient at theta = [W (K×d) | b (K)].
    let eval = |theta: &[f64]| -> (f64, Vec<f64>) {
        let (w, b) = theta.split_at(k * d);
        // Fixed chunks of cells, reduced in chunk order: the fit does not depend on the thread count.
        const CHUNK: usize = 256;
        let parts: Vec<(f64, Vec<f64>)> = (0..n.div_ceil(CHUNK))
            .into_par_iter()
            .map(|ch| {
                (ch * CHUNK..((ch + 1) * CHUNK).min(n)).fold((0.0f64, vec![0f64; np]), |(mut l, mut g), i| {
                    let xi = &x[i * d..(i + 1) * d];
                    let z: Vec<f64> = (0..k).map(|c| b[c] + (0..d).map(|t| w[c * d + t] * xi[t] as f64).sum::<f64>()).collect();
                    let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let se: f64 = z.iter().map(|v| (v - mx).exp()).sum();
                    let lse = mx + se.ln();
                    let wi = weight(i);
                    l += wi * (lse - z[y[i] as usize]);
                    for c in 0..k {
                        let pc = wi * ((z[c] - lse).exp() - if c == y[i] as usize { 1.0 } else { 0.0 });
                        for t in 0..d {
                            g[c * d + t] += pc * xi[t] as f64;
                        }
                        g[k * d + c] += pc;
                    }
                    (l, g)
                })
            })
            .collect();
        let (loss, mut grad) = parts.into_iter().fold((0.0, vec![0f64; np]), |(la, mut ga), (lb, gb)| {
            ga.iter_mut().zip(&gb).for_each(|(a, b)| *a += b);
            (la + lb, ga)
        });
        let reg: f64 = w.iter().map(|v| v * v).sum::<f64>() * 0.5;
        for (g, v) in grad.iter_mut().zip(w) {
            *g += v;
        }
        if fixed0 {
            grad[..d].iter_mut().for_each(|g| *g = 0.0);
            grad[k * d] = 0.0;
        }
        (loss + reg, grad)
    };
    let dot = |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
    let mut theta = vec![0f64; np];
    let (mut f, mut g) = eval(&theta);
    let mut hist: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = std::collections::VecDeque::new();
    for _ in 0..max_iter {
        if g.iter().fold(0.0f64, |m, v| m.max(v.abs())) < 1e-6 {
            break;
        }
        // Two-loop recursion for the L-BFGS direction.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, yv, rho) in hist.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        if let Some((s, yv, _)) = hist.back() {
            let gamma = dot(s, yv) / dot(yv, yv);
            q.iter_mut().for_each(|v| *v *= gamma);
        } else {
            let gn = dot(&g, &g).sqrt().max(1e-12);
            q.iter_mut().for_each(|v| *v /= gn);
        }
        for ((s, yv, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let bta = rho * dot(yv, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - bta) * si);
        }
        let mut dir: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            hist.clear();
            dir = g.iter().map(|v| -v / dot(&g, &g).sqrt().max(1e-12)).collect();
            slope = dot(&g, &dir);
        }
        // Backtracking (Armijo) line search.
        let mut step = 1.0;
        let mut accepted = None;
        for _ in 0..50 {
            let cand: Vec<f64> = theta.iter().zip(&dir).map(|(t, dv)| t + step * dv).collect();
            let (fc, gc) = eval(&cand);
            if fc <= f + 1e-4 * step * slope {
                accepted = Some((cand, fc, gc));
                break;
            }
            step *= 0.5;
        }
        let Some((cand, fc, gc)) = accepted else { break };
        let s: Vec<f64> = cand.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = gc.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-12 {
            hist.push_back((s, yv, 1.0 / sy));
            if hist.len() > 10 {
                hist.pop_front();
            }
        }
        let done = (f - fc).abs() <= 1e-10 * f.abs().max(1.0);
        theta = cand;
        f = fc;
        g = gc;
        if done {
            break;
        }
    }
    let b = theta.split_off(k * d);
    (theta, b)
}

/// The seeded permutation of `n` rows whose first ⌈test_frac·n⌉ are held out (the logistic regression's
/// and the age regression's split; §8.1 uses `random_state=0` for both, the permutation is ours).
fn holdout_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut crate::train::rng::stream(seed, crate::train::rng::Purpose::Analysis, crate::analysis::posterior::tags::CLASSIFIER_SPLIT, 0));
    perm
}

/// sklearn's `StandardScaler().fit_transform` of the rows of `x` (n × d): each column centred and
/// divided by its population standard deviation; a constant column becomes 0.
pub fn standardize(x: &[f32], d: usize) -> Vec<f64> {
    let n = if d == 0 { 0 } else { x.len() / d };
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for t in 0..d {
        let mean = (0..n).map(|r| out[r * d + t]).sum::<f64>() / n.max(1) as f64;
        let sd = ((0..n).map(|r| (out[r * d + t] - mean).powi(2)).sum::<f64>() / n.max(1) as f64).sqrt();
        let scale = if sd > 0.0 { sd } else { 1.0 };
        (0..n).for_each(|r| out[r * d + t] = (out[r * d + t] - mean) / scale);
    }
    out
}

/// sklearn's `r2_score` (force_finite): 1 − SS_res / SS_tot around the truths' mean; constant truths
/// give 1 when predicted exactly, else 0. NaN for no values.
pub fn r2_score(y: &[f64], pred: &[f64]) -> f64 {
    if y.is_empty() {
        return f64::NAN;
    }
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let ss_res: f64 = y.iter().zip(pred).map(|(a, b)| (a - b) * (a - b)).sum();
    let ss_tot: f64 = y.iter().map(|a| (a - mean) * (a - mean)).sum();
    if ss_tot == 0.0 {
        return if ss_res == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - ss_res / ss_tot
}

/// sklearn's `Ridge(alpha)` on the rows `rows` of `x` (n × d) and their `y`: min ‖y − Xw − b‖² + α‖w‖²,
/// the intercept unpenalised (fitted on centred data, by Cholesky as sklearn's solver for dense X).
/// Returns (w, b).
pub fn ridge_fit(x: &[f64], d: usize, y: &[f64], rows: &[usize], alpha: f64) -> (Vec<f64>, f64) {
    let m = rows.len().max(1) as f64;
    let xm: Vec<f64> = (0..d).map(|t| rows.iter().map(|&r| x[r * d + t]).sum::<f64>() / m).collect();
    let ym = rows.iter().map(|&r| y[r]).sum::<f64>() / m;
    // A = XcᵀXc + αI (row-major d × d), v = Xcᵀ yc
    let mut a = vec![0f64; d * d];
    let mut v = vec![0f64; d];
    for &r in rows {
        let xr: Vec<f64> = (0..d).map(|t| x[r * d + t] - xm[t]).collect();
        for p in 0..d {
            v[p] += xr[p] * (y[r] - ym);
            for q in 0..d {
                a[p * d + q] += xr[p] * xr[q];
            }
        }
    }
    (0..d).for_each(|p| a[p * d + p] += alpha);
    // Cholesky A = LLᵀ in place (lower triangle), then the two triangular solves.
    for j in 0..d {
        let s = a[j * d + j] - (0..j).map(|k| a[j * d + k] * a[j * d + k]).sum::<f64>();
        a[j * d + j] = s.max(f64::MIN_POSITIVE).sqrt();
        for i in j + 1..d {
            let s = a[i * d + j] - (0..j).map(|k| a[i * d + k] * a[j * d + k]).sum::<f64>();
            a[i * d + j] = s / a[j * d + j];
        }
    }
    for i in 0..d {
        v[i] = (v[i] - (0..i).map(|k| a[i * d + k] * v[k]).sum::<f64>()) / a[i * d + i];
    }
    for i in (0..d).rev() {
        v[i] = (v[i] - (i + 1..d).map(|k| a[k * d + i] * v[k]).sum::<f64>()) / a[i * d + i];
    }
    let b = ym - xm.iter().zip(&v).map(|(m, w)| m * w).sum::<f64>();
    (v, b)
}

fn predict(x: &[f64], d: usize, rows: &[usize], w: &[f64], b: f64) -> Vec<f64> {
    rows.iter().map(|&r| b + (0..d).map(|t| x[r * d + t] * w[t]).sum::<f64>()).collect()
}

/// A fitted [`ridge_cv`].
#[derive(Clone, Debug)]
pub struct RidgeCvFit {
    /// Index of the chosen alpha.
    pub best: usize,
    /// Mean R² over the folds, per alpha.
    pub cv_scores: Vec<f64>,
    pub w: Vec<f64>,
    pub b: f64,
}

/// sklearn's `RidgeCV(alphas, cv=folds)` on the rows `rows` of `x`: per alpha the mean R² over
/// `KFold(folds)` (unshuffled: contiguous folds of `rows` in order, the first n mod folds one row
/// larger), the first best alpha (GridSearchCV's), then `Ridge` refitted on every row.
pub fn ridge_cv(x: &[f64], d: usize, y: &[f64], rows: &[usize], alphas: &[f64], folds: usize) -> RidgeCvFit {
    let n = rows.len();
    let mut bounds = vec![0usize];
    for f in 0..folds {
        bounds.push(bounds[f] + n / folds + usize::from(f < n % folds));
    }
    let cv_scores: Vec<f64> = alphas
        .iter()
        .map(|&alpha| {
            (0..folds)
                .map(|f| {
                    let test = &rows[bounds[f]..bounds[f + 1]];
                    let train: Vec<usize> = rows[..bounds[f]].iter().chain(&rows[bounds[f + 1]..]).copied().collect();
                    let (w, b) = ridge_fit(x, d, y, &train, alpha);
                    r2_score(&test.iter().map(|&r| y[r]).collect::<Vec<_>>(), &predict(x, d, test, &w, b))
                })
                .sum::<f64>()
                / folds as f64
        })
        .collect();
    let best = (0..alphas.len()).fold(0, |bi, i| if cv_scores[i] > cv_scores[bi] { i } else { bi });
    let (w, b) = ridge_fit(x, d, y, rows, alphas[best]);
    RidgeCvFit { best, cv_scores, w, b }
}

/// Fewest cells an age regression takes (the authors' MIN_GROUP_N).
pub const AGE_MIN_CELLS: usize = 25;

/// §8.1's age R²: `x` the standardised latent (n × d) of the cells with an age `y`; 80/20 split (the
/// permutation of [`logistic_scores`]), RidgeCV over alphas logspace(−2, 3, 20) with 5 folds on the
/// training part, R² of the held-out part. NaN, as the authors skip it, for fewer than
/// [`AGE_MIN_CELLS`] cells or ages constant in either part.
pub fn age_r2(x: &[f64], d: usize, y: &[f64], seed: u64) -> f64 {
    let n = y.len();
    assert_eq!(x.len(), n * d, "age_r2: {} values for {n}×{d}", x.len());
    if n < AGE_MIN_CELLS {
        return f64::NAN;
    }
    let n_test = (0.2 * n as f64).ceil() as usize;
    let perm = holdout_permutation(n, seed);
    let (test, train) = perm.split_at(n_test);
    let varies = |rows: &[usize]| rows.iter().any(|&r| y[r] != y[rows[0]]);
    if !varies(train) || !varies(test) {
        return f64::NAN;
    }
    let alphas: Vec<f64> = (0..20).map(|i| 10f64.powf(-2.0 + 5.0 * i as f64 / 19.0)).collect();
    let fit = ridge_cv(x, d, y, train, &alphas, 5);
    r2_score(&test.iter().map(|&r| y[r]).collect::<Vec<_>>(), &predict(x, d, test, &fit.w, fit.b))
}

/// sklearn's accuracy and `precision_score` / `recall_score` / `f1_score` with `average="weighted",
/// zero_division=0`: per class of the truths and the predictions, precision tp/(tp+fp), recall
/// tp/(tp+fn) and F1 2tp/(2tp+fp+fn) (0 where the denominator is 0), averaged weighted by the class's
/// number of truths (a class only ever predicted weighs 0). NaN for no cells.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassScores {
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// (true positives, false positives, false negatives) of each class 0..n_classes.
pub fn confusion_counts(truth: &[u32], pred: &[u32], n_classes: usize) -> Vec<(usize, usize, usize)> {
    let mut c = vec![(0usize, 0usize, 0usize); n_classes];
    for (&t, &p) in truth.iter().zip(pred) {
        if t == p {
            c[t as usize].0 += 1;
        } else {
            c[p as usize].1 += 1;
            c[t as usize].2 += 1;
        }
    }
    c
}

/// a / b, 0 when b = 0 (sklearn's zero_division=0).
pub fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl ClassScores {
    pub const NAN: ClassScores = ClassScores { accuracy: f64::NAN, precision: f64::NAN, recall: f64::NAN, f1: f64::NAN };

    pub fn of(truth: &[u32], pred: &[u32]) -> ClassScores {
        assert_eq!(truth.len(), pred.len());
        let n = truth.len();
        if n == 0 {
            return ClassScores::NAN;
        }
        let n_classes = truth.iter().chain(pred).copied().max().unwrap() as usize + 1;
        let c = confusion_counts(truth, pred, n_classes);
        let (mut p, mut r, mut f) = (0.0, 0.0, 0.0);
        for &(tp, fp, fn_) in &c {
            let support = (tp + fn_) as f64;
            p += support * ratio(tp, tp + fp);
            r += support * ratio(tp, tp + fn_);
            f += support * ratio(2 * tp, 2 * tp + fp + fn_);
        }
        let correct: usize = c.iter().map(|x| x.0).sum();
        let n = n as f64;
        ClassScores { accuracy: correct as f64 / n, precision: p / n, recall: r / n, f1: f / n }
    }
}

/// The class (0..k) of largest logit b_c + w_c · x under a fitted logistic model (`w`: k × d), the
/// first on ties.
pub fn logistic_predict(w: &[f64], b: &[f64], k: usize, x: &[f32]) -> usize {
    let d = x.len();
    (0..k)
        .map(|c| b[c] + (0..d).map(|t| w[c * d + t] * x[t] as f64).sum::<f64>())
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |acc, (c, v)| if v > acc.1 { (c, v) } else { acc })
        .0
}

/// Held-out scores ([`ClassScores`]) of [`fit_logistic`] on the latent as given (§8.1 fits
/// `LogisticRegression(max_iter=1000)` on Z, no scaler), on a seeded split: `test_frac` of the cells
/// held out, rounded up, as sklearn's `train_test_split` (the permutation is ours, not numpy's). Classes
/// absent from the training part are never predicted; a training part of one class predicts it.
pub fn logistic_scores(x: &[f32], d: usize, labels: &[u32], test_frac: f64, seed: u64, max_iter: usize) -> ClassScores {
    let n = labels.len();
    assert_eq!(x.len(), n * d, "logistic_scores: {} values for {n}×{d}", x.len());
    let n_test = ((test_frac * n as f64).ceil() as usize).min(n);
    if n < 2 || n_test == 0 || n_test == n {
        return ClassScores::NAN;
    }
    let perm = holdout_permutation(n, seed);
    let (test, train) = perm.split_at(n_test);
    // Compact class codes over the training labels.
    let mut classes: Vec<u32> = train.iter().map(|&i| labels[i]).collect();
    classes.sort_unstable();
    classes.dedup();
    let truth: Vec<u32> = test.iter().map(|&i| labels[i]).collect();
    if classes.len() < 2 {
        return ClassScores::of(&truth, &vec![classes[0]; n_test]);
    }
    let code = |l: u32| classes.binary_search(&l).ok();
    let xt: Vec<f32> = train.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect();
    let yt: Vec<u32> = train.iter().map(|&i| code(labels[i]).unwrap() as u32).collect();
    let k = classes.len();
    let (w, b) = fit_logistic(&xt, d, &yt, k, max_iter);
    let pred: Vec<u32> = test
        .iter()
        .map(|&i| classes[logistic_predict(&w, &b, k, &x[i * d..(i + 1) * d])])
        .collect();
    ClassScores::of(&truth, &pred)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Silhouette, the logistic fit and the k-NN batch entropy are bit-identical on 1, 2 and 3 threads
    /// (their float sums are reduced in a fixed order).
    #[test]
    fn float_metrics_do_not_depend_on_the_thread_count() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (n, d) = (4000, 4);
        let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
        let x: Vec<f32> = (0..n * d).map(|t| labels[t / d] as f32 * 0.7 + rng.gen::<f32>()).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (w, b) = fit_logistic(&x, d, &labels, 3, 50);
                (silhouette(&x, d, &labels).to_bits(), w.iter().chain(&b).map(|v| v.to_bits()).collect::<Vec<_>>(), crate::analysis::scorecard::knn_batch_entropy(&x, d, &labels, 15).to_bits())
            })
        };
        let one = run(1);
        assert_eq!(run(2), one);
        assert_eq!(run(3), one);
    }

    #[test]
    fn separated_clusters_score_high_and_noise_scores_chance() {
        let mut x = Vec::new();
        let mut lab = Vec::new();
        for i in 0..200u32 {
            let c = i % 2;
            x.extend_from_slice(&[c as f32 * 10.0 + (i as f32 * 0.37).sin(), (i as f32 * 0.91).cos()]);
            lab.push(c);
        }
        assert_eq!(knn_accuracy(&x, 2, &lab, 15, 5, 0), 1.0);
        assert!(silhouette(&x, 2, &lab) > 0.8);
        // Labels unrelated to position: about chance.
        let shuffled: Vec<u32> = (0..200u32).map(|i| (i / 2) % 2).collect();
        let acc = knn_accuracy(&x, 2, &shuffled, 15, 5, 0);
        assert!((0.3..0.7).contains(&acc), "{acc}");
        assert!(logistic_scores(&x, 2, &lab, 0.2, 0, 1000).accuracy > 0.95);
        let lacc = logistic_scores(&x, 2, &shuffled, 0.2, 0, 1000).accuracy;
        assert!((0.25..0.75).contains(&lacc), "{lacc}");
        // a constant latent (a collapsed posterior): 0, as sklearn (0/0 per cell, turned into 0), not nan
        assert_eq!(silhouette(&vec![0.5f32; 400], 2, &lab), 0.0);
        // one cell apart from the rest, which sit at one point: only that cell's coefficient counts
        let mut y = vec![0f32; 400];
        y[0] = 1.0;
        let s = silhouette(&y, 2, &lab);
        assert!(s.is_finite() && s != 0.0, "{s}");
    }

    #[test]
    fn eigenvalues_and_pcs_match_hand_computation() {
        // [[2, 1], [1, 2]] has eigenvalues 3 and 1.
        let ev = symmetric_eigenvalues(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((ev[0] - 3.0).abs() < 1e-12 && (ev[1] - 1.0).abs() < 1e-12, "{ev:?}");
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 1.0];
        let ev = symmetric_eigenvalues(&a, 3);
        assert!((ev.iter().sum::<f64>() - 8.0).abs() < 1e-10, "trace preserved: {ev:?}");
        // The convergence test is relative: a collapsed latent's tiny covariance is resolved too.
        for scale in [1e-20, 1e20] {
            let ev = symmetric_eigenvalues(&[2.0 * scale, scale, scale, 2.0 * scale], 2);
            assert!((ev[0] / scale - 3.0).abs() < 1e-12 && (ev[1] / scale - 1.0).abs() < 1e-12, "{scale}: {ev:?}");
        }
        // Points on a line in 3-D (plus tiny noise in one axis): one component explains > 90%.
        let mut x = Vec::new();
        for i in 0..100 {
            let t = i as f32 * 0.1;
            x.extend_from_slice(&[t, 2.0 * t, 0.01 * ((i * 7) % 5) as f32]);
        }
        assert_eq!(pcs_for_variance(&x, 3, 0.9), 1);
        // Isotropic 4-D box corners: every component carries 25%, so 4 are needed for 90%.
        let mut y = Vec::new();
        for i in 0..16u32 {
            y.extend((0..4).map(|b| if i >> b & 1 == 1 { 1.0f32 } else { -1.0 }));
        }
        assert_eq!(pcs_for_variance(&y, 4, 0.9), 4);
        assert_eq!(pcs_for_variance(&y, 4, 0.5), 2);
    }

    /// sklearn's weighted precision / recall / F1 (zero_division=0), by hand: class 0 (3 truths) P 1,
    /// R 2/3, F1 0.8; class 1 (2) P R F1 0.5; class 2 (1) P 0.5, R 1, F1 2/3; class 4 (1) never
    /// predicted: 0 0 0; class 3 only predicted: weight 0. sklearn 1.9 gives 0.6428571428571429,
    /// 0.5714285714285714, 0.580952380952381.
    #[test]
    fn weighted_precision_recall_f1_as_sklearn() {
        let s = ClassScores::of(&[0, 0, 0, 1, 1, 2, 4], &[0, 0, 1, 1, 2, 2, 3]);
        assert!((s.precision - 4.5 / 7.0).abs() < 1e-15 && (s.precision - 0.6428571428571429).abs() < 1e-15, "{s:?}");
        assert!((s.recall - 4.0 / 7.0).abs() < 1e-15 && s.accuracy == s.recall, "{s:?}");
        assert!((s.f1 - (2.4 + 1.0 + 2.0 / 3.0) / 7.0).abs() < 1e-15 && (s.f1 - 0.580952380952381).abs() < 1e-14, "{s:?}");
        let perfect = ClassScores::of(&[1, 0, 1], &[1, 0, 1]);
        assert_eq!(perfect, ClassScores { accuracy: 1.0, precision: 1.0, recall: 1.0, f1: 1.0 });
        assert!(ClassScores::of(&[], &[]).f1.is_nan());
    }

    /// The fitted coefficients are sklearn's `LogisticRegression(tol=1e-10).fit(x, y)` (1.9.1): the
    /// binary model for two classes (one weight vector; the two-row multinomial form halves the
    /// penalty and gave other weights), the multinomial one for three.
    #[test]
    fn logistic_coefficients_match_sklearn() {
        let x = [-2.0f32, 0.5, -1.0, -0.3, 0.2, 1.0, 1.0, 0.1, 2.0, -0.7, 0.5, 0.4, -0.4, -1.1];
        let (w, b) = fit_logistic(&x, 2, &[0, 0, 1, 1, 1, 0, 1], 2, 1000);
        let close = |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(close(&w, &[0.0, 0.0, 0.821442017887299, -0.292779392274414]) && close(&b, &[0.0, 0.3133920907645959]), "{w:?} {b:?}");
        let (w, b) = fit_logistic(&x, 2, &[0, 0, 1, 1, 2, 2, 1], 3, 1000);
        let want_w = [-0.980902433136961, 0.05980157755649389, 0.1748544869043434, 0.010272251318712254, 0.8060479462326179, -0.07007382887520612];
        assert!(close(&w, &want_w) && close(&b, &[-0.33895169652566265, 0.5423673571063629, -0.20341566058069951]), "{w:?} {b:?}");
    }

    /// §8.1 fits the latent as it is (no scaler): a latent of tiny scale gives L2 (C = 1) weights too
    /// small to beat the intercept, and the classifier predicts the majority class everywhere, as
    /// sklearn's does here (coef 0.075, intercept −1.099, predicts 0). A scaler would separate the
    /// two classes perfectly.
    #[test]
    fn logistic_scores_fit_the_latent_unscaled() {
        let (n0, n1) = (150, 50);
        let x: Vec<f32> = (0..n0 + n1).map(|i| if i < n0 { -0.001 } else { 0.001 }).collect();
        let y: Vec<u32> = (0..n0 + n1).map(|i| u32::from(i >= n0)).collect();
        let (w, b) = fit_logistic(&x, 1, &y, 2, 1000);
        assert!((w[1] - 0.07502433).abs() < 1e-4 && (b[1] + 1.0986657).abs() < 1e-4, "{w:?} {b:?}");
        let s = logistic_scores(&x, 1, &y, 0.2, 0, 1000);
        // every held-out cell predicted 0: recall of class 0 is 1, of class 1 is 0
        assert!(s.accuracy < 0.95 && s.accuracy > 0.5, "{s:?}");
        assert!((s.precision - s.accuracy * s.accuracy).abs() < 1e-12, "{s:?}");
    }

    /// Ridge, RidgeCV (5 unshuffled folds, 20 alphas) and R² are sklearn 1.9.1's on a fixed data set:
    /// `RidgeCV(alphas=np.logspace(-2, 3, 20), cv=5).fit(X, y)` chooses alpha 7.8476 (index 11).
    #[test]
    fn ridge_cv_matches_sklearn() {
        let (n, d) = (30, 3);
        let x: Vec<f64> = (0..n * d).map(|k| ((k / d) as f64 * 1.3 + (k % d) as f64 * 0.7).sin() * ((k % d) + 1) as f64).collect();
        let y: Vec<f64> = (0..n).map(|i| x[i * d] - 0.5 * x[i * d + 1] + 1.5 * (i as f64 * 2.1).sin() + 10.0).collect();
        let rows: Vec<usize> = (0..n).collect();
        let close = |got: &[f64], want: &[f64], tol: f64| got.iter().zip(want).all(|(a, b)| (a - b).abs() < tol);
        let (w, b) = ridge_fit(&x, d, &y, &rows, 2.5);
        assert!(close(&w, &[0.14375260174668145, 0.08375973470607764, -0.23906886914314826], 1e-12) && (b - 9.994506548211284).abs() < 1e-12, "{w:?} {b}");
        assert!((r2_score(&y, &predict(&x, d, &rows, &w, b)) - 0.157142922427301).abs() < 1e-12);
        let alphas: Vec<f64> = (0..20).map(|i| 10f64.powf(-2.0 + 5.0 * i as f64 / 19.0)).collect();
        assert!((alphas[11] - 7.847599703514606).abs() < 1e-12);
        let fit = ridge_cv(&x, d, &y, &rows, &alphas, 5);
        assert_eq!(fit.best, 11, "{:?}", fit.cv_scores);
        assert!((fit.cv_scores[0] - 0.10202728220246171).abs() < 1e-12 && (fit.cv_scores[19] - 0.013443707601133382).abs() < 1e-12, "{:?}", fit.cv_scores);
        assert!(close(&fit.w, &[0.12242368821346838, 0.06421222848028903, -0.2199344007965777], 1e-12) && (fit.b - 9.993460469236878).abs() < 1e-12);
        // constant truths: 1 when predicted exactly, else 0 (sklearn's force_finite)
        assert_eq!((r2_score(&[2.0, 2.0], &[2.0, 2.0]), r2_score(&[2.0, 2.0], &[2.0, 1.0])), (1.0, 0.0));
        // the standardised columns have mean 0 and variance 1; a constant column becomes 0
        let z = standardize(&[1.0, 5.0, 3.0, 5.0, 5.0, 5.0], 2);
        assert!(close(&z, &[-1.224744871391589, 0.0, 0.0, 0.0, 1.224744871391589, 0.0], 1e-12), "{z:?}");
        // age R²: a latent that holds the age predicts it; too few cells or a constant age is nan
        let ages: Vec<f64> = (0..60).map(|i| [3.0, 18.0, 24.0][i % 3]).collect();
        let xa: Vec<f64> = ages.iter().enumerate().flat_map(|(i, &a)| [a / 10.0 + 0.01 * (i as f64).sin(), (i as f64 * 0.37).cos()]).collect();
        assert!(age_r2(&xa, 2, &ages, 0) > 0.99);
        assert!(age_r2(&xa[..48], 2, &ages[..24], 0).is_nan() && age_r2(&xa, 2, &[3.0; 60], 0).is_nan());
    }

    #[test]
    fn logistic_fit_reaches_the_optimum() {
        // Two 1-D points per class, symmetric: the optimum has b = 0 and a w satisfying the gradient
        // equation w + Σ (p_i − y_i) x_i = 0 for the binary (K = 2) softmax parametrisation.
        let x = [-2.0f32, -1.0, 1.0, 2.0];
        let y = [0u32, 0, 1, 1];
        let (w, b) = fit_logistic(&x, 1, &y, 2, 500);
        let grad_w1: f64 = w[1] + x.iter().zip(&y).map(|(&xi, &yi)| {
            let z = [w[0] * xi as f64 + b[0], w[1] * xi as f64 + b[1]];
            let p1 = 1.0 / (1.0 + (z[0] - z[1]).exp());
            (p1 - yi as f64) * xi as f64
        }).sum::<f64>();
        assert!(grad_w1.abs() < 1e-5, "gradient {grad_w1} at w {w:?} b {b:?}");
        assert!((b[0] - b[1]).abs() < 1e-5 && w[1] > w[0]);
    }
}
