//! The original's `clustering` and `subcluster_split_eval` blocks (model.md §8.3) for `splicevi evaluate`.
//!
//! Clustering: per latent, scanpy's `sc.pp.neighbors(use_rep=Z)` graph (exact Euclidean kNN, 15
//! neighbours counting the cell itself, UMAP connectivities: umap's smooth-kNN σ/ρ calibration and the
//! fuzzy union A + Aᵀ − A∘Aᵀ) and `sc.tl.leiden(resolution=1.0)` ([`super::leiden`]); the number of
//! clusters, the clusters holding one vs several classes of a label, and between two latents the
//! per-cell same-cluster overlap |C_a(i)∖{i} ∩ C_b(i)| / |C_a(i)∖{i}| and sklearn's
//! `adjusted_mutual_info_score`.
//!
//! Subcluster split: within the cells of one class, a seeded 50/50 split; sklearn's `KMeans(k,
//! n_init=10)` (k-means++, Lloyd) on half A; half B labelled by its nearest centre; a logistic
//! regression fitted on (standardised B, those labels) predicts A, scored against A's KMeans labels.

use super::evaluate::EvalRow;
use super::crossfold::balanced_class_weights;
use super::latent_metrics::{fit_logistic_weighted, logistic_predict, ClassScores};
use super::leiden::{leiden, modularity, Graph};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Exact k nearest neighbours of every row of `x` (n × d): row i's first neighbour is i itself at
/// distance 0 (as scanpy's kNN lists it), then the k − 1 nearest others by Euclidean distance (ties:
/// smaller index first). `idx` and `dist` are n × k.
#[derive(Clone, Debug)]
pub struct Knn {
    pub k: usize,
    pub idx: Vec<u32>,
    pub dist: Vec<f64>,
}

pub fn knn_exact(x: &[f32], d: usize, k: usize) -> Knn {
    let n = if d == 0 { 0 } else { x.len() / d };
    assert!(k >= 1 && k <= n, "knn_exact: k = {k} for {n} points");
    let rows: Vec<(Vec<u32>, Vec<f64>)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * d..(i + 1) * d];
            let mut cand: Vec<(f64, u32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (xi.iter().zip(&x[j * d..(j + 1) * d]).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>(), j as u32))
                .collect();
            let cmp = |a: &(f64, u32), b: &(f64, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
            if k > 1 {
                cand.select_nth_unstable_by(k - 2, cmp);
            }
            cand.truncate(k - 1);
            cand.sort_by(cmp);
            let idx = std::iter::once(i as u32).chain(cand.iter().map(|c| c.1)).collect();
            let dist = std::iter::once(0.0).chain(cand.iter().map(|c| c.0.sqrt())).collect();
            (idx, dist)
        })
        .collect();
    let (mut idx, mut dist) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
    for (i, dd) in rows {
        idx.extend(i);
        dist.extend(dd);
    }
    Knn { k, idx, dist }
}

const SMOOTH_K_TOLERANCE: f64 = 1e-5;
const MIN_K_DIST_SCALE: f64 = 1e-3;

/// umap's `smooth_knn_dist` (local_connectivity 1, bandwidth 1, 64 bisection steps): per row, ρ = the
/// distance to the nearest neighbour at a distance > 0, and σ with Σ_{j≥1} exp(−max(0, d_j − ρ)/σ) =
/// log2(k), floored at 1e-3 × the row's (or, where ρ = 0, all rows') mean distance. Returns (σ, ρ).
pub fn smooth_knn_dist(knn: &Knn) -> (Vec<f64>, Vec<f64>) {
    let k = knn.k;
    let n = knn.dist.len() / k;
    let target = (k as f64).log2();
    let mean_all = knn.dist.iter().sum::<f64>() / knn.dist.len().max(1) as f64;
    let (mut sigma, mut rho) = (vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let row = &knn.dist[i * k..(i + 1) * k];
        rho[i] = row.iter().copied().find(|&v| v > 0.0).unwrap_or(0.0);
        let (mut lo, mut hi, mut mid) = (0.0f64, f64::INFINITY, 1.0f64);
        for _ in 0..64 {
            let psum: f64 = row[1..].iter().map(|&v| if v - rho[i] > 0.0 { (-(v - rho[i]) / mid).exp() } else { 1.0 }).sum();
            if (psum - target).abs() < SMOOTH_K_TOLERANCE {
                break;
            }
            if psum > target {
                hi = mid;
                mid = (lo + hi) / 2.0;
            } else {
                lo = mid;
                mid = if hi == f64::INFINITY { mid * 2.0 } else { (lo + hi) / 2.0 };
            }
        }
        let floor = MIN_K_DIST_SCALE * if rho[i] > 0.0 { row.iter().sum::<f64>() / k as f64 } else { mean_all };
        sigma[i] = mid.max(floor);
    }
    (sigma, rho)
}

/// scanpy's UMAP connectivities of a kNN graph: membership a_ij = exp(−(d_ij − ρ_i)/σ_i) (1 where
/// d_ij ≤ ρ_i, 0 for the cell itself), symmetrised by the fuzzy union a_ij + a_ji − a_ij·a_ji.
pub fn umap_connectivities(knn: &Knn) -> Graph {
    let k = knn.k;
    let n = knn.dist.len() / k;
    let (sigma, rho) = smooth_knn_dist(knn);
    let mut a: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
    for i in 0..n {
        for t in 0..k {
            let j = knn.idx[i * k + t] as usize;
            if j == i {
                continue;
            }
            let dd = knn.dist[i * k + t];
            let v = if dd - rho[i] <= 0.0 || sigma[i] == 0.0 { 1.0 } else { (-(dd - rho[i]) / sigma[i]).exp() };
            if v != 0.0 {
                a[i].push((j as u32, v));
            }
        }
    }
    // fuzzy union: for each directed membership a_ij look up a_ji
    let get = |i: usize, j: u32| a[i].iter().find(|e| e.0 == j).map_or(0.0, |e| e.1);
    let mut lists: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
    for i in 0..n {
        for &(j, v) in &a[i] {
            let back = get(j as usize, i as u32);
            let u = v + back - v * back;
            lists[i].push((j, u));
            if back == 0.0 {
                // (j does not list i: the edge's other direction)
                lists[j as usize].push((i as u32, u));
            }
        }
    }
    Graph::from_lists(lists, vec![0.0; n])
}

/// Leiden clusters (labels 0.. by decreasing size) of the rows of `x` on scanpy's neighbours graph
/// with `n_neighbors` (the cell included), and the partition's modularity.
pub fn leiden_clusters(x: &[f32], d: usize, n_neighbors: usize, resolution: f64, seed: u64) -> (Vec<usize>, f64) {
    let knn = knn_exact(x, d, n_neighbors);
    let g = umap_connectivities(&knn);
    let c = leiden(&g, resolution, seed);
    let q = modularity(&g, &c, resolution);
    (c, q)
}

/// Contingency table of two labelings (dense labels): rows a, columns b.
fn contingency(a: &[usize], b: &[usize]) -> (Vec<Vec<u64>>, Vec<u64>, Vec<u64>) {
    let ra = a.iter().copied().max().map_or(0, |m| m + 1);
    let rb = b.iter().copied().max().map_or(0, |m| m + 1);
    let mut t = vec![vec![0u64; rb]; ra];
    a.iter().zip(b).for_each(|(&x, &y)| t[x][y] += 1);
    let sa: Vec<u64> = t.iter().map(|r| r.iter().sum()).collect();
    let sb: Vec<u64> = (0..rb).map(|j| t.iter().map(|r| r[j]).sum()).collect();
    (t, sa, sb)
}

/// Dense labels 0.. (order of first appearance).
fn dense(x: &[usize]) -> Vec<usize> {
    let mut map = std::collections::HashMap::new();
    x.iter().map(|v| { let n = map.len(); *map.entry(*v).or_insert(n) }).collect()
}

fn entropy(s: &[u64], n: f64) -> f64 {
    s.iter().filter(|&&v| v > 0).map(|&v| { let p = v as f64 / n; -p * p.ln() }).sum()
}

/// sklearn's `adjusted_mutual_info_score(a, b)` (average_method="arithmetic"): (MI − E[MI]) /
/// (mean(H(a), H(b)) − E[MI]), natural logs, E[MI] by the exact hypergeometric sum (lgamma), the
/// denominator kept at least machine epsilon from 0 as sklearn keeps it. 1 when both labelings are
/// one cluster (sklearn's special case).
pub fn ami(a: &[usize], b: &[usize]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (a, b) = (dense(a), dense(b));
    let n = a.len();
    let (t, sa, sb) = contingency(&a, &b);
    if n == 0 || (sa.len() == 1 && sb.len() == 1) {
        return 1.0;
    }
    let nf = n as f64;
    let mut mi = 0.0;
    for (i, row) in t.iter().enumerate() {
        for (j, &nij) in row.iter().enumerate() {
            if nij > 0 {
                let v = nij as f64;
                mi += v / nf * (nf * v / (sa[i] as f64 * sb[j] as f64)).ln();
            }
        }
    }
    let emi = expected_mutual_info(&sa, &sb, n);
    let (ha, hb) = (entropy(&sa, nf), entropy(&sb, nf));
    let normalizer = (ha + hb) / 2.0;
    let mut denom = normalizer - emi;
    denom = if denom < 0.0 { denom.min(-f64::EPSILON) } else { denom.max(f64::EPSILON) };
    (mi - emi) / denom
}

/// E[MI] of two labelings with marginals `a`, `b` under the permutation model (sklearn's
/// `expected_mutual_information`).
fn expected_mutual_info(a: &[u64], b: &[u64], n: usize) -> f64 {
    use crate::model::real::lgamma;
    let nf = n as f64;
    let lg = |x: f64| lgamma(x + 1.0);
    let gln_n = lg(nf);
    let mut emi = 0.0;
    for &ai in a {
        let af = ai as f64;
        for &bj in b {
            let bf = bj as f64;
            let start = 1.max((ai + bj) as i64 - n as i64) as u64;
            let end = ai.min(bj);
            let base = lg(af) + lg(bf) + lg(nf - af) + lg(nf - bf) - gln_n;
            for nij in start..=end {
                let v = nij as f64;
                let term2 = (nf * v).ln() - af.ln() - bf.ln();
                let gln = base - lg(v) - lg(af - v) - lg(bf - v) - lg(nf - af - bf + v);
                emi += v / nf * term2 * gln.exp();
            }
        }
    }
    emi
}

/// Adjusted Rand index (sklearn's `adjusted_rand_score`); 1 for identical partitions up to labels.
pub fn ari(a: &[usize], b: &[usize]) -> f64 {
    let (t, sa, sb) = contingency(&dense(a), &dense(b));
    let c2 = |x: u64| (x as f64) * (x as f64 - 1.0) / 2.0;
    let n = a.len() as u64;
    let sum_ij: f64 = t.iter().flatten().map(|&v| c2(v)).sum();
    let (sum_a, sum_b): (f64, f64) = (sa.iter().map(|&v| c2(v)).sum(), sb.iter().map(|&v| c2(v)).sum());
    let expected = sum_a * sum_b / c2(n);
    let max = (sum_a + sum_b) / 2.0;
    if max == expected {
        return 1.0;
    }
    (sum_ij - expected) / (max - expected)
}

/// Per cell, |C_a(i)∖{i} ∩ C_b(i)| / |C_a(i)∖{i}| (the share of the cell's cluster-mates in `a` that
/// share its cluster in `b`); `nan` where its cluster in `a` is the cell alone (the original's rule).
pub fn same_cluster_overlap(a: &[usize], b: &[usize]) -> Vec<f64> {
    let (a, b) = (dense(a), dense(b));
    let (t, sa, _) = contingency(&a, &b);
    a.iter().zip(&b).map(|(&x, &y)| if sa[x] <= 1 { f64::NAN } else { (t[x][y] - 1) as f64 / (sa[x] - 1) as f64 }).collect()
}

/// Clusters holding cells of one class and of several (the original: the set of
/// `obs[col].astype(str)` values of a cluster's cells has one element, or more; a cell without a
/// label counts as one more class, the original's `nan`), and the purity Σ_c max_l n_cl / n.
pub fn label_cluster_counts(clusters: &[usize], labels: &[Option<u32>]) -> (usize, usize, f64) {
    let unl = labels.iter().flatten().copied().max().map_or(0, |m| m + 1);
    let l: Vec<usize> = labels.iter().map(|x| x.unwrap_or(unl) as usize).collect();
    let (t, _, _) = contingency(&dense(clusters), &l);
    let one = t.iter().filter(|r| r.iter().filter(|&&v| v > 0).count() == 1).count();
    let purity = t.iter().map(|r| *r.iter().max().unwrap_or(&0)).sum::<u64>() as f64 / clusters.len().max(1) as f64;
    (one, t.len() - one, purity)
}

/// Median of the finite values (`nan` for none).
pub fn nanmedian(v: &[f64]) -> f64 {
    let mut f: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if f.is_empty() {
        return f64::NAN;
    }
    f.sort_by(f64::total_cmp);
    let m = f.len() / 2;
    if f.len() % 2 == 1 { f[m] } else { (f[m - 1] + f[m]) / 2.0 }
}

fn sq(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum()
}

/// A fitted k-means: centres (k × d), each row's label and the inertia (Σ squared distances).
#[derive(Clone, Debug)]
pub struct KMeansFit {
    pub centers: Vec<f64>,
    pub labels: Vec<u32>,
    pub inertia: f64,
}

/// Nearest centre of each row of `x` (ties: the smaller centre), and the squared distance to it.
pub fn nearest_center(x: &[f32], d: usize, centers: &[f64]) -> Vec<(u32, f64)> {
    let k = centers.len() / d.max(1);
    x.par_chunks(d.max(1))
        .map(|xi| (0..k).map(|c| (c as u32, sq(xi, &centers[c * d..(c + 1) * d]))).fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a }))
        .collect()
}

/// sklearn's greedy k-means++ seeding (2 + ⌊ln k⌋ candidates per centre, the one lowering the
/// potential most kept).
fn kmeans_pp(x: &[f32], d: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = x.len() / d;
    let trials = 2 + (k as f64).ln() as usize;
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let first = rng.gen_range(0..n);
    let mut centers: Vec<f64> = row(first).iter().map(|&v| v as f64).collect();
    let mut closest: Vec<f64> = (0..n).map(|i| sq(row(i), &centers[..d])).collect();
    let mut pot: f64 = closest.iter().sum();
    for _ in 1..k {
        let mut cum = Vec::with_capacity(n);
        let mut acc = 0.0;
        closest.iter().for_each(|&v| { acc += v; cum.push(acc) });
        let mut best: Option<(usize, f64, Vec<f64>)> = None;
        for _ in 0..trials {
            let r = rng.gen::<f64>() * pot;
            let cand = cum.partition_point(|&c| c < r).min(n - 1);
            let cc: Vec<f64> = row(cand).iter().map(|&v| v as f64).collect();
            let new: Vec<f64> = (0..n).map(|i| closest[i].min(sq(row(i), &cc))).collect();
            let p: f64 = new.iter().sum();
            if best.as_ref().is_none_or(|b| p < b.1) {
                best = Some((cand, p, new));
            }
        }
        let (cand, p, new) = best.unwrap();
        centers.extend(row(cand).iter().map(|&v| v as f64));
        closest = new;
        pot = p;
    }
    centers
}

/// One Lloyd run from `centers`: at most `max_iter` steps, stopping when the labels no longer change
/// or the centres move by Σ‖Δc‖² ≤ `tol`. An emptied cluster takes the row farthest from its centre
/// (sklearn's relocation).
fn lloyd(x: &[f32], d: usize, mut centers: Vec<f64>, max_iter: usize, tol: f64) -> KMeansFit {
    let n = x.len() / d;
    let k = centers.len() / d;
    let mut labels: Vec<u32> = vec![u32::MAX; n];
    let mut strict = false;
    for _ in 0..max_iter {
        let near = nearest_center(x, d, &centers);
        let new_labels: Vec<u32> = near.iter().map(|e| e.0).collect();
        let mut sums = vec![0.0; k * d];
        let mut counts = vec![0usize; k];
        for (i, &c) in new_labels.iter().enumerate() {
            counts[c as usize] += 1;
            for t in 0..d {
                sums[c as usize * d + t] += x[i * d + t] as f64;
            }
        }
        let mut far: Vec<usize> = (0..n).collect();
        far.sort_by(|&a, &b| near[b].1.total_cmp(&near[a].1).then(a.cmp(&b)));
        let mut far = far.into_iter();
        let mut new_centers = vec![0.0; k * d];
        for c in 0..k {
            if counts[c] == 0 {
                let i = far.next().unwrap_or(0);
                new_centers[c * d..(c + 1) * d].iter_mut().zip(&x[i * d..(i + 1) * d]).for_each(|(a, &b)| *a = b as f64);
            } else {
                for t in 0..d {
                    new_centers[c * d + t] = sums[c * d + t] / counts[c] as f64;
                }
            }
        }
        let shift: f64 = new_centers.iter().zip(&centers).map(|(a, b)| (a - b).powi(2)).sum();
        centers = new_centers;
        if new_labels == labels {
            strict = true;
            break;
        }
        labels = new_labels;
        if shift <= tol {
            break;
        }
    }
    let near = nearest_center(x, d, &centers);
    if !strict {
        labels = near.iter().map(|e| e.0).collect();
    }
    let inertia = near.iter().map(|e| e.1).sum();
    KMeansFit { centers, labels, inertia }
}

/// sklearn's `KMeans(n_clusters=k, n_init, max_iter=300, tol=1e-4)` (Lloyd, k-means++): the run of
/// least inertia among `n_init` seeded starts; tol is relative to the mean column variance of `x`.
pub fn kmeans(x: &[f32], d: usize, k: usize, n_init: usize, seed: u64) -> KMeansFit {
    let n = x.len() / d;
    assert!(k >= 1 && k <= n, "kmeans: k = {k} for {n} rows");
    let var_mean = (0..d)
        .map(|t| {
            let m = (0..n).map(|i| x[i * d + t] as f64).sum::<f64>() / n as f64;
            (0..n).map(|i| (x[i * d + t] as f64 - m).powi(2)).sum::<f64>() / n as f64
        })
        .sum::<f64>()
        / d as f64;
    let tol = 1e-4 * var_mean;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut best: Option<KMeansFit> = None;
    for _ in 0..n_init.max(1) {
        let c = kmeans_pp(x, d, k, &mut rng);
        let fit = lloyd(x, d, c, 300, tol);
        if best.as_ref().is_none_or(|b| fit.inertia < b.inertia) {
            best = Some(fit);
        }
    }
    best.unwrap()
}

/// Fewest cells of a class the subcluster split scores (the original skips smaller classes).
pub const SUBCLUSTER_MIN_CELLS: usize = 20;

/// The subcluster split score for one class and one k: `x` the class's cells (n × d). Half A (⌊n/2⌋,
/// seeded) is clustered by [`kmeans`] (n_init 10), half B labelled by the nearest centre; a logistic
/// regression ([`fit_logistic_weighted`], max_iter 2000, class_weight="balanced", on B standardised
/// with B's mean and SD as the original's `StandardScaler` pipeline) predicts A. Scores against A's KMeans labels; `None` when B
/// holds one label only (the regression needs two).
pub fn subcluster_split(x: &[f32], d: usize, k: usize, seed: u64) -> Option<ClassScores> {
    let n = x.len() / d;
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_b = n.div_ceil(2);
    let (b, a) = perm.split_at(n_b);
    let take = |rows: &[usize]| -> Vec<f32> { rows.iter().flat_map(|&i| x[i * d..(i + 1) * d].iter().copied()).collect() };
    let (xa, xb) = (take(a), take(b));
    let fit = kmeans(&xa, d, k, 10, seed.wrapping_add(1));
    let lb: Vec<u32> = nearest_center(&xb, d, &fit.centers).iter().map(|e| e.0).collect();
    let mut classes = lb.clone();
    classes.sort_unstable();
    classes.dedup();
    if classes.len() < 2 {
        return None;
    }
    let code: Vec<u32> = lb.iter().map(|l| classes.binary_search(l).unwrap() as u32).collect();
    // StandardScaler fitted on B (a constant column: scale 1, as sklearn)
    let (mut mean, mut sd) = (vec![0.0f64; d], vec![0.0f64; d]);
    for t in 0..d {
        mean[t] = (0..n_b).map(|i| xb[i * d + t] as f64).sum::<f64>() / n_b as f64;
        let v = (0..n_b).map(|i| (xb[i * d + t] as f64 - mean[t]).powi(2)).sum::<f64>() / n_b as f64;
        sd[t] = if v > 0.0 { v.sqrt() } else { 1.0 };
    }
    let scale = |m: &[f32]| -> Vec<f32> { m.chunks(d).flat_map(|r| (0..d).map(|t| ((r[t] as f64 - mean[t]) / sd[t]) as f32).collect::<Vec<_>>()).collect() };
    let (sa, sb) = (scale(&xa), scale(&xb));
    let kc = classes.len();
    // (class_weight="balanced", as the original's: w_c = n / (K · n_c) over B's clusters)
    let cw = balanced_class_weights(&code, kc);
    let sample_w: Vec<f64> = code.iter().map(|&c| cw[c as usize]).collect();
    let (w, bias) = fit_logistic_weighted(&sb, d, &code, kc, 2000, Some(&sample_w));
    let pred: Vec<u32> = sa.chunks(d).map(|xi| classes[logistic_predict(&w, &bias, kc, xi)]).collect();
    Some(ClassScores::of(&fit.labels, &pred))
}

/// The latents, in the order of their rows' `subset`.
pub const SPACES: [&str; 3] = ["joint", "expression", "splicing"];
/// The pairs of latents compared, as the original compares them.
pub const PAIRS: [(usize, usize); 3] = [(1, 0), (2, 0), (1, 2)];

/// The `clustering` block's settings.
#[derive(Clone, Copy, Debug)]
pub struct ClusterOptions {
    /// Neighbours of the graph, the cell itself counted (scanpy's `n_neighbors`).
    pub n_neighbors: usize,
    pub resolution: f64,
    pub seed: u64,
}

fn row(section: &str, subset: &str, method: &str, metric: String, value: f64) -> EvalRow {
    EvalRow { section: section.into(), subset: subset.into(), method: method.into(), metric, value }
}

/// The `clustering` rows of the latents `lat` (each n × `dims[s]`, in [`SPACES`] order) of n cells:
/// per latent `n_cells`, `n_clusters`, `modularity`, and with a label column (`labels`, one per cell,
/// named `column`) `n_clusters_one_COL`, `n_clusters_several_COL`, `purity_COL`, `ari_COL`, `ami_COL`;
/// per pair of latents (`A_vs_B`) the mean and median same-cluster overlap (`n_cells_overlap`: the
/// cells not alone in their cluster of A) and the AMI, and with a label column per class
/// (`n_cells_overlap:COL=CLASS`, `samecluster_overlap_mean:COL=CLASS`: the numbers of the original's
/// per tissue | cell type overlap heatmap; `labels` = (column, class names, each cell's class)).
/// Returns the rows and notes for stderr.
pub fn clustering_rows(lat: &[Vec<f32>], dims: &[usize], labels: Option<(&str, &[String], &[Option<u32>])>, o: &ClusterOptions) -> (Vec<EvalRow>, Vec<String>) {
    let (sec, method) = ("clustering", "leiden");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut clusters = Vec::new();
    for (s, space) in SPACES.iter().enumerate() {
        let n = lat[s].len() / dims[s].max(1);
        let (c, q) = leiden_clusters(&lat[s], dims[s], o.n_neighbors, o.resolution, o.seed);
        let n_clusters = c.iter().copied().max().map_or(0, |m| m + 1);
        rows.push(row(sec, space, method, "n_cells".into(), n as f64));
        rows.push(row(sec, space, method, "n_clusters".into(), n_clusters as f64));
        rows.push(row(sec, space, method, "modularity".into(), q));
        if let Some((col, _, l)) = labels {
            let (one, several, purity) = label_cluster_counts(&c, l);
            let unl = l.iter().flatten().copied().max().map_or(0, |m| m + 1);
            let lab: Vec<usize> = l.iter().map(|x| x.unwrap_or(unl) as usize).collect();
            rows.push(row(sec, space, method, format!("n_clusters_one_{col}"), one as f64));
            rows.push(row(sec, space, method, format!("n_clusters_several_{col}"), several as f64));
            rows.push(row(sec, space, method, format!("purity_{col}"), purity));
            rows.push(row(sec, space, method, format!("ari_{col}"), ari(&c, &lab)));
            rows.push(row(sec, space, method, format!("ami_{col}"), ami(&c, &lab)));
        }
        clusters.push(c);
    }
    for (a, b) in PAIRS {
        let subset = format!("{}_vs_{}", SPACES[a], SPACES[b]);
        let ov = same_cluster_overlap(&clusters[a], &clusters[b]);
        let kept: Vec<f64> = ov.iter().copied().filter(|v| !v.is_nan()).collect();
        let mean = if kept.is_empty() { f64::NAN } else { kept.iter().sum::<f64>() / kept.len() as f64 };
        if kept.is_empty() {
            notes.push(format!("clustering {subset} samecluster_overlap_mean, samecluster_overlap_median are nan: every cell is alone in its {} cluster", SPACES[a]));
        } else if kept.len() < ov.len() {
            notes.push(format!("clustering {subset}: {} of {} cells are alone in their {} cluster and left out of the same-cluster overlap", ov.len() - kept.len(), ov.len(), SPACES[a]));
        }
        rows.push(row(sec, &subset, method, "n_cells_overlap".into(), kept.len() as f64));
        rows.push(row(sec, &subset, method, "samecluster_overlap_mean".into(), mean));
        rows.push(row(sec, &subset, method, "samecluster_overlap_median".into(), nanmedian(&ov)));
        rows.push(row(sec, &subset, method, "ami".into(), ami(&clusters[a], &clusters[b])));
        if let Some((col, classes, l)) = labels {
            for (k, class) in classes.iter().enumerate() {
                if l.iter().all(|c| *c != Some(k as u32)) {
                    continue;
                }
                let v: Vec<f64> = ov.iter().zip(l).filter(|(o, c)| **c == Some(k as u32) && !o.is_nan()).map(|(o, _)| *o).collect();
                let mean = if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
                rows.push(row(sec, &subset, method, format!("n_cells_overlap:{col}={class}"), v.len() as f64));
                rows.push(row(sec, &subset, method, format!("samecluster_overlap_mean:{col}={class}"), mean));
            }
        }
    }
    (rows, notes)
}

/// The `subcluster_split` rows: for each class of `labels` (named `column`, class names `classes`)
/// chosen by `only` (all when empty) and each latent, `n_cells:COL=CLASS` and per k of `ks`
/// `kK_accuracy:COL=CLASS` and `kK_f1_weighted:COL=CLASS` ([`subcluster_split`]). A class of fewer
/// than [`SUBCLUSTER_MIN_CELLS`] cells, and a k of at least half the class's cells, are skipped with a
/// note (a named class gets `nan` rows).
pub fn subcluster_rows(lat: &[Vec<f32>], dims: &[usize], column: &str, classes: &[String], labels: &[Option<u32>], only: &[u32], ks: &[usize], seed: u64) -> (Vec<EvalRow>, Vec<String>) {
    let (sec, method) = ("subcluster_split", "kmeans_logistic");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let chosen: Vec<u32> = if only.is_empty() { (0..classes.len() as u32).collect() } else { only.to_vec() };
    for cls in chosen {
        let cells: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == Some(cls)).collect();
        let name = &classes[cls as usize];
        let tag = format!("{column}={name}");
        if cells.len() < SUBCLUSTER_MIN_CELLS {
            if !only.is_empty() {
                notes.push(format!("subcluster_split {tag}: {} cells, fewer than {SUBCLUSTER_MIN_CELLS}: its scores are nan", cells.len()));
                for space in SPACES {
                    rows.push(row(sec, space, method, format!("n_cells:{tag}"), cells.len() as f64));
                    for &k in ks {
                        rows.push(row(sec, space, method, format!("k{k}_accuracy:{tag}"), f64::NAN));
                        rows.push(row(sec, space, method, format!("k{k}_f1_weighted:{tag}"), f64::NAN));
                    }
                }
            } else if !cells.is_empty() {
                notes.push(format!("subcluster_split: {tag} skipped: {} cells, fewer than {SUBCLUSTER_MIN_CELLS}", cells.len()));
            }
            continue;
        }
        let skipped: Vec<String> = ks.iter().filter(|&&k| 2 * k >= cells.len()).map(|k| k.to_string()).collect();
        if !skipped.is_empty() {
            notes.push(format!("subcluster_split {tag}: k = {} skipped: at least half of its {} cells", skipped.join(", "), cells.len()));
        }
        for (s, space) in SPACES.iter().enumerate() {
            let d = dims[s];
            let x: Vec<f32> = cells.iter().flat_map(|&i| lat[s][i * d..(i + 1) * d].iter().copied()).collect();
            rows.push(row(sec, space, method, format!("n_cells:{tag}"), cells.len() as f64));
            for &k in ks.iter().filter(|&&k| 2 * k < cells.len()) {
                let sc = subcluster_split(&x, d, k, seed).unwrap_or_else(|| {
                    notes.push(format!("subcluster_split {space} {tag} k{k}: nan: the held-out half falls in one KMeans cluster (the logistic regression needs two)"));
                    ClassScores::NAN
                });
                rows.push(row(sec, space, method, format!("k{k}_accuracy:{tag}"), sc.accuracy));
                rows.push(row(sec, space, method, format!("k{k}_f1_weighted:{tag}"), sc.f1));
            }
        }
    }
    (rows, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points of `centres` with `per` rows each, uniform noise of ±`spread` (seeded); (x, blob of each row).
    fn blobs(centres: &[[f32; 2]], per: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut x, mut lab) = (Vec::new(), Vec::new());
        for (b, c) in centres.iter().enumerate() {
            for _ in 0..per {
                x.push(c[0] + rng.gen_range(-spread..spread));
                x.push(c[1] + rng.gen_range(-spread..spread));
                lab.push(b);
            }
        }
        (x, lab)
    }

    #[test]
    fn knn_lists_the_cell_first_then_the_nearest_others() {
        let x = [0.0f32, 0.0, 3.0, 0.0, 1.0, 0.0, 10.0, 0.0];
        let knn = knn_exact(&x, 2, 3);
        assert_eq!(knn.idx, vec![0, 2, 1, 1, 2, 0, 2, 0, 1, 3, 1, 2]);
        assert_eq!(&knn.dist[..3], &[0.0, 1.0, 3.0]);
        assert_eq!(&knn.dist[9..], &[0.0, 7.0, 9.0]);
    }

    /// scanpy 1.11.5 (umap-learn through `sc.pp.neighbors(adata, n_neighbors=4, use_rep="X")`, exact
    /// kNN for so few cells) on these 8 points, in a scratch venv: `obsp["connectivities"].toarray()`
    /// printed to 8 decimals. umap computes in float32, hence the tolerance.
    #[test]
    fn umap_connectivities_match_scanpy() {
        let x: [f32; 16] = [0.0, 0.0, 1.0, 0.0, 0.0, 1.5, 2.0, 2.0, 5.0, 5.0, 5.5, 4.0, 6.0, 6.2, 3.0, 3.5];
        #[rustfmt::skip]
        let want: [[f64; 8]; 8] = [
            [0.00000000, 1.00000000, 1.00000000, 0.28830865, 0.0, 0.0, 0.0, 0.0],
            [1.00000000, 0.00000000, 0.83208275, 0.66205591, 0.0, 0.0, 0.0, 0.0],
            [1.00000000, 0.83208275, 0.00000000, 0.75078124, 0.0, 0.0, 0.0, 0.0],
            [0.28830865, 0.66205591, 0.75078124, 0.00000000, 0.0, 0.0, 0.0, 1.00000000],
            [0.0, 0.0, 0.0, 0.0, 0.00000000, 1.00000000, 1.00000000, 0.66422737],
            [0.0, 0.0, 0.0, 0.0, 1.00000000, 0.00000000, 0.86557913, 0.72375214],
            [0.0, 0.0, 0.0, 0.0, 1.00000000, 0.86557913, 0.00000000, 0.29200909],
            [0.0, 0.0, 0.0, 1.00000000, 0.66422737, 0.72375214, 0.29200909, 0.00000000],
        ];
        let g = umap_connectivities(&knn_exact(&x, 2, 4));
        let mut got = [[0.0f64; 8]; 8];
        for i in 0..8 {
            for e in g.indptr[i]..g.indptr[i + 1] {
                got[i][g.nbr[e] as usize] = g.w[e];
            }
        }
        for i in 0..8 {
            for j in 0..8 {
                assert!((got[i][j] - want[i][j]).abs() < 2e-6, "connectivity ({i}, {j}) = {}, scanpy {}", got[i][j], want[i][j]);
            }
        }
    }

    /// The smooth-kNN calibration by hand: for the row (0, 1, 2, 3) with k = 4, ρ = 1 and σ solves
    /// 1 + e^{−1/σ} + e^{−2/σ} = log2 4 = 2, i.e. e^{−1/σ} = (√5 − 1)/2.
    #[test]
    fn smooth_knn_sigma_solves_the_log2_k_equation() {
        let knn = Knn { k: 4, idx: vec![0, 1, 2, 3], dist: vec![0.0, 1.0, 2.0, 3.0] };
        let (sigma, rho) = smooth_knn_dist(&knn);
        assert_eq!(rho[0], 1.0);
        let want = -1.0 / ((5f64.sqrt() - 1.0) / 2.0).ln();
        assert!((sigma[0] - want).abs() < 1e-4, "σ = {}, want {want}", sigma[0]);
    }

    /// sklearn 1.9.1 `adjusted_mutual_info_score` (scratch venv) on these pairs.
    #[test]
    fn ami_matches_sklearn() {
        let cases: [(&[usize], &[usize], f64); 4] = [
            (&[0, 0, 1, 1, 2, 2, 2, 0], &[1, 1, 0, 0, 0, 2, 2, 2], 0.31967265056964717),
            (&[0, 0, 0, 1, 1, 1, 2, 2, 2, 3], &[0, 0, 1, 1, 2, 2, 2, 3, 3, 3], 0.2662693564010161),
            (&[0, 1, 2, 3, 4], &[0, 0, 1, 1, 2], 0.0),
            (&[0, 0, 0, 0], &[0, 1, 2, 3], 0.0),
        ];
        for (a, b, want) in cases {
            let got = ami(a, b);
            assert!((got - want).abs() < 1e-12, "AMI({a:?}, {b:?}) = {got}, sklearn {want}");
        }
    }

    #[test]
    fn ami_is_one_for_relabelled_partitions_and_near_zero_for_independent_ones() {
        let a: Vec<usize> = (0..300).map(|i| i % 7).collect();
        let b: Vec<usize> = a.iter().map(|&c| (c * 3 + 5) % 7 + 10).collect();
        assert!((ami(&a, &b) - 1.0).abs() < 1e-12);
        assert!((ari(&a, &b) - 1.0).abs() < 1e-12);
        assert_eq!(ami(&[4, 4, 4], &[9, 9, 9]), 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (r1, r2): (Vec<usize>, Vec<usize>) = (0..3000).map(|_| (rng.gen_range(0..5), rng.gen_range(0..8))).unzip();
        let v = ami(&r1, &r2);
        assert!(v.abs() < 0.005, "AMI of independent labelings {v}");
        // a merge of two clusters keeps it high but below 1
        let merged: Vec<usize> = a.iter().map(|&c| c.min(5)).collect();
        let m = ami(&a, &merged);
        assert!(m > 0.8 && m < 1.0, "{m}");
    }

    /// Clusters a = {0,1,2}, {3,4}, {5}; b = {0,1}, {2,3,4,5}: cell 0 keeps 1 of its 2 mates (1/2),
    /// cell 2 none of 2 (0), cell 3 its one mate (1), cell 5 is alone in a (skipped).
    #[test]
    fn same_cluster_overlap_by_hand() {
        let a = [0, 0, 0, 1, 1, 2];
        let b = [7, 7, 8, 8, 8, 8];
        let o = same_cluster_overlap(&a, &b);
        assert_eq!(&o[..5], &[0.5, 0.5, 0.0, 1.0, 1.0]);
        assert!(o[5].is_nan());
        assert_eq!(nanmedian(&o), 0.5);
        // the other direction: b's cluster {2,3,4,5}: cell 2 shares a's cluster with none of 3
        let o = same_cluster_overlap(&b, &a);
        assert_eq!(o, vec![1.0, 1.0, 0.0, 1.0 / 3.0, 1.0 / 3.0, 0.0]);
    }

    #[test]
    fn clusters_of_one_and_several_classes() {
        // clusters 0: labels {0, 0}; 1: {0, 1}; 2: {unlabelled, unlabelled}; 3: {1, unlabelled}
        let c = [0, 0, 1, 1, 2, 2, 3, 3];
        let l = [Some(0), Some(0), Some(0), Some(1), None, None, Some(1), None];
        let (one, several, purity) = label_cluster_counts(&c, &l);
        assert_eq!((one, several), (2, 2));
        assert!((purity - 6.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn kmeans_finds_well_separated_blobs_and_the_split_score_is_perfect_on_them() {
        let (x, truth) = blobs(&[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], 40, 1.0, 1);
        let fit = kmeans(&x, 2, 3, 10, 0);
        assert!((ari(&fit.labels.iter().map(|&v| v as usize).collect::<Vec<_>>(), &truth) - 1.0).abs() < 1e-12);
        // inertia: the squared distances to the centres, which are the blob means
        let near = nearest_center(&x, 2, &fit.centers);
        assert!((near.iter().map(|e| e.1).sum::<f64>() - fit.inertia).abs() < 1e-9);
        for c in 0..3 {
            let rows: Vec<usize> = (0..120).filter(|&i| fit.labels[i] == c as u32).collect();
            let mx = rows.iter().map(|&i| x[2 * i] as f64).sum::<f64>() / rows.len() as f64;
            assert!((fit.centers[2 * c] - mx).abs() < 1e-9);
        }
        let s = subcluster_split(&x, 2, 3, 4).unwrap();
        assert_eq!(s.accuracy, 1.0);
        // k = 4 on 3 blobs: one is cut, still predicted well by the logistic regression
        let s = subcluster_split(&x, 2, 4, 4).unwrap();
        assert!(s.accuracy > 0.8, "{s:?}");
    }

    /// k-means++ seeding draws each next centre ∝ the squared distance to the nearest chosen one: with
    /// 1000 rows near the origin and three tiny blobs of 3 rows far away, k = 4 puts a centre on every
    /// far blob for (nearly) every seed; k uniformly drawn rows would hit the three blobs with
    /// probability ≈ 4!·(3/1009)³ ≈ 6e-7.
    #[test]
    fn kmeans_pp_seeds_a_centre_on_every_far_tiny_blob() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let far = [[100.0f32, 0.0], [0.0, 100.0], [100.0, 100.0]];
        let mut x: Vec<f32> = (0..2000).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        for c in far {
            for _ in 0..3 {
                x.extend([c[0] + rng.gen_range(-0.5f32..0.5), c[1] + rng.gen_range(-0.5f32..0.5)]);
            }
        }
        let seeds = 50;
        let hit = (0..seeds)
            .filter(|&seed| {
                let centers = kmeans_pp(&x, 2, 4, &mut ChaCha8Rng::seed_from_u64(seed));
                assert_eq!(centers.len(), 8);
                far.iter().all(|c| centers.chunks(2).any(|m| (m[0] - c[0] as f64).abs() < 1.0 && (m[1] - c[1] as f64).abs() < 1.0))
            })
            .count();
        assert!(hit * 10 >= seeds as usize * 9, "every far blob got a centre for {hit} of {seeds} seeds");
    }

    /// The per-class overlap rows are the overall overlap restricted to each class's cells (those not
    /// alone in their cluster), for classes with cells only; they average back to the overall mean.
    #[test]
    fn clustering_rows_give_the_overlap_per_label_class() {
        let (x, truth) = blobs(&[[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]], 40, 2.0, 7);
        let (y, _) = blobs(&[[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]], 40, 6.0, 8);
        let lat = vec![x.clone(), y, x];
        let classes: Vec<String> = ["a", "b", "c", "unused"].iter().map(|s| s.to_string()).collect();
        let l: Vec<Option<u32>> = truth.iter().enumerate().map(|(i, &t)| (i % 10 != 0).then_some(t as u32)).collect();
        let opts = ClusterOptions { n_neighbors: 10, resolution: 1.0, seed: 0 };
        let (rows, _) = clustering_rows(&lat, &[2, 2, 2], Some(("ct", &classes, &l)), &opts);
        let get = |subset: &str, metric: &str| rows.iter().find(|r| r.subset == subset && r.metric == metric).map(|r| r.value);
        for (a, b) in PAIRS {
            let subset = format!("{}_vs_{}", SPACES[a], SPACES[b]);
            let (ca, cb) = (leiden_clusters(&lat[a], 2, 10, 1.0, 0).0, leiden_clusters(&lat[b], 2, 10, 1.0, 0).0);
            let ov = same_cluster_overlap(&ca, &cb);
            let (mut total, mut cells) = (0.0, 0.0);
            for (k, class) in ["a", "b", "c"].iter().enumerate() {
                let v: Vec<f64> = (0..ov.len()).filter(|&i| l[i] == Some(k as u32) && !ov[i].is_nan()).map(|i| ov[i]).collect();
                let mean = get(&subset, &format!("samecluster_overlap_mean:ct={class}")).unwrap();
                assert!((mean - v.iter().sum::<f64>() / v.len() as f64).abs() < 1e-12, "{subset} {class}");
                assert_eq!(get(&subset, &format!("n_cells_overlap:ct={class}")), Some(v.len() as f64));
                total += mean * v.len() as f64;
                cells += v.len() as f64;
            }
            assert!(get(&subset, "samecluster_overlap_mean:ct=unused").is_none());
            // the labelled cells' overall mean (the unlabelled tenth left out)
            let lab: Vec<f64> = (0..ov.len()).filter(|&i| l[i].is_some() && !ov[i].is_nan()).map(|i| ov[i]).collect();
            assert!((total / cells - lab.iter().sum::<f64>() / lab.len() as f64).abs() < 1e-12);
        }
        // the same-space pair (joint and splicing are the same latent here) overlaps fully
        assert_eq!(get("splicing_vs_joint", "samecluster_overlap_mean:ct=a"), Some(1.0));
    }

    #[test]
    fn leiden_on_the_knn_graph_finds_the_blobs() {
        let (x, truth) = blobs(&[[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]], 50, 2.0, 2);
        let (c, q) = leiden_clusters(&x, 2, 15, 1.0, 0);
        // each blob is one or more whole clusters (resolution 1 may cut a blob, never merge two)
        let (t, _, _) = contingency(&c, &truth);
        assert!(t.iter().all(|r| r.iter().filter(|&&v| v > 0).count() == 1), "{t:?}");
        assert!(q > 0.6, "modularity {q}");
        let (c2, _) = leiden_clusters(&x, 2, 15, 0.1, 0);
        assert!((ari(&c2, &truth) - 1.0).abs() < 1e-12, "at resolution 0.1 the 4 blobs are the clusters");
    }
}
