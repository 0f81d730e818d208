//! A seeded UMAP layout (the original's `latent_visualization`: scanpy's `sc.pp.neighbors` then
//! `sc.tl.umap` with its defaults) for `embed --projection umap` and `plot embedding --projection umap`.
//! It lives beside [`super::clustering`] because it is that module's graph (exact kNN with the cell
//! itself counted, umap's fuzzy-union connectivities) laid out in 2-D; src/plot only draws the result.
//!
//! umap-learn's `simplicial_set_embedding`, step by step: edges below max/n_epochs dropped; a spectral
//! initialisation (the two leading non-trivial eigenvectors of D^-1/2 W D^-1/2, scaled to max |coord|
//! 10 plus N(0, 1e-4) noise, then each axis to [0, 10]); `optimize_layout_euclidean` (edge i sampled
//! every max_w / w_i epochs, both ends attracted with the (a, b) curve's gradient, `negative_sample_rate`
//! repulsive samples per positive one moving the head only, gradients clipped at ±4, the learning rate
//! falling linearly from 1). Differences: the random streams are ChaCha8 (seeded, single-threaded, so the
//! same input and seed give the same bits, but not umap-learn's numbers); the eigenvectors come from a
//! thick-restarted Lanczos (Rayleigh–Ritz on an explicit Krylov basis) instead of ARPACK; a graph of
//! several components (or an eigensolver that does not converge) starts from PCA of the data, where
//! umap-learn lays out each component apart (or starts at random); the arithmetic is f64, not f32.

use super::clustering::{knn_exact, umap_connectivities};
use super::leiden::Graph;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// scanpy's `sc.tl.umap` defaults (with `sc.pp.neighbors(n_neighbors=15)`); `seed` is its random_state.
#[derive(Clone, Debug, PartialEq)]
pub struct UmapOptions {
    /// Neighbours per cell, the cell itself included (scanpy's n_neighbors).
    pub n_neighbors: usize,
    pub min_dist: f64,
    pub spread: f64,
    /// None: 500 for at most 10,000 cells, else 200 (umap-learn's default).
    pub n_epochs: Option<usize>,
    /// Repulsive samples per attractive one (0 turns repulsion off).
    pub negative_sample_rate: usize,
    pub seed: u64,
}

impl Default for UmapOptions {
    fn default() -> Self {
        UmapOptions { n_neighbors: 15, min_dist: 0.5, spread: 1.0, n_epochs: None, negative_sample_rate: 5, seed: 0 }
    }
}

/// Where the optimisation started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    Spectral,
    /// The graph has several components, or the eigensolver did not converge.
    Pca,
}

/// umap's `find_ab_params`: (a, b) of 1 / (1 + a x^{2b}) fitted by least squares to 1 for x < min_dist and
/// exp(−(x − min_dist) / spread) beyond, on 300 points evenly over [0, 3·spread] (scipy's curve_fit is
/// Levenberg–Marquardt from (1, 1); so is this, with the analytic Jacobian).
pub fn find_ab_params(spread: f64, min_dist: f64) -> (f64, f64) {
    let xs: Vec<f64> = (0..300).map(|i| 3.0 * spread * i as f64 / 299.0).collect();
    let ys: Vec<f64> = xs.iter().map(|&x| if x < min_dist { 1.0 } else { (-(x - min_dist) / spread).exp() }).collect();
    let sse = |a: f64, b: f64| -> f64 { xs.iter().zip(&ys).map(|(&x, &y)| (1.0 / (1.0 + a * x.powf(2.0 * b)) - y).powi(2)).sum() };
    let (mut a, mut b) = (1.0f64, 1.0f64);
    let mut cost = sse(a, b);
    let mut lambda = 1e-3;
    for _ in 0..500 {
        let (mut jaa, mut jab, mut jbb, mut ga, mut gb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&x, &y) in xs.iter().zip(&ys) {
            if x <= 0.0 {
                // f = 1 at x = 0 whatever (a, b): no gradient
                continue;
            }
            let p = x.powf(2.0 * b);
            let den = 1.0 + a * p;
            let r = 1.0 / den - y;
            let da = -p / (den * den);
            let db = -a * p * 2.0 * x.ln() / (den * den);
            jaa += da * da;
            jab += da * db;
            jbb += db * db;
            ga += da * r;
            gb += db * r;
        }
        let mut improved = false;
        while lambda < 1e12 {
            let (m11, m22) = (jaa * (1.0 + lambda), jbb * (1.0 + lambda));
            let det = m11 * m22 - jab * jab;
            let (sa, sb) = ((-ga * m22 + gb * jab) / det, (-gb * m11 + ga * jab) / det);
            let c = sse(a + sa, b + sb);
            if c.is_finite() && c < cost {
                let small = sa.abs() <= 1e-12 * a.abs().max(1e-12) && sb.abs() <= 1e-12 * b.abs().max(1e-12);
                a += sa;
                b += sb;
                let rel = (cost - c) / cost.max(1e-300);
                cost = c;
                lambda = (lambda / 10.0).max(1e-12);
                improved = !(small || rel < 1e-15);
                break;
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
    }
    (a, b)
}

/// The layout (n × 2, row-major) of the rows of `x` (n × d).
pub fn umap_layout(x: &[f32], d: usize, o: &UmapOptions) -> Vec<f64> {
    umap_layout_init(x, d, o).0
}

/// [`umap_layout`] and where it started.
pub fn umap_layout_init(x: &[f32], d: usize, o: &UmapOptions) -> (Vec<f64>, Init) {
    assert!(d > 0 && x.len() % d == 0, "umap_layout: {} values are not n × {d}", x.len());
    let n = x.len() / d;
    if n == 0 {
        return (Vec::new(), Init::Pca);
    }
    let g = umap_connectivities(&knn_exact(x, d, o.n_neighbors.clamp(1, n)));
    let default_epochs = if n <= 10_000 { 500 } else { 200 };
    let n_epochs = o.n_epochs.unwrap_or(default_epochs);
    let g = prune(&g, if n_epochs > 10 { n_epochs } else { default_epochs });
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    rng.set_stream(1);
    let (mut emb, init) = match spectral_init(&g, &mut rng) {
        Some(e) => (e, Init::Spectral),
        None => {
            let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            (crate::plot::embedding::pca(&xf, d, 2).0, Init::Pca)
        }
    };
    noisy_scale(&mut emb, &mut rng);
    rescale_to_ten(&mut emb);
    let (a, b) = find_ab_params(o.spread, o.min_dist);
    let mut sgd = ChaCha8Rng::seed_from_u64(o.seed);
    sgd.set_stream(2);
    optimize_layout(&mut emb, &g, n_epochs, a, b, o.negative_sample_rate, &mut sgd);
    (emb, init)
}

/// umap-learn's pruning before the layout: edges with a weight below max / `n_epochs` go.
fn prune(g: &Graph, n_epochs: usize) -> Graph {
    let max = g.w.iter().copied().fold(0.0f64, f64::max);
    let cut = max / n_epochs as f64;
    let lists = (0..g.n()).map(|i| (g.indptr[i]..g.indptr[i + 1]).filter(|&e| g.w[e] >= cut).map(|e| (g.nbr[e], g.w[e])).collect()).collect();
    Graph::from_lists(lists, vec![0.0; g.n()])
}

fn components(g: &Graph) -> usize {
    let n = g.n();
    let mut seen = vec![false; n];
    let mut count = 0;
    let mut stack = Vec::new();
    for s in 0..n {
        if seen[s] {
            continue;
        }
        count += 1;
        seen[s] = true;
        stack.push(s);
        while let Some(v) = stack.pop() {
            for e in g.indptr[v]..g.indptr[v + 1] {
                let u = g.nbr[e] as usize;
                if !seen[u] {
                    seen[u] = true;
                    stack.push(u);
                }
            }
        }
    }
    count
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(y: &mut [f64], s: f64, x: &[f64]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += s * x);
}

/// Eigen-decomposition of a symmetric m × m matrix (row-major): [`crate::train::svd::sym_eig`]'s
/// cyclic Jacobi, its eigenvalues in decreasing order and the matching eigenvectors (column c of the
/// returned row-major m × m matrix).
fn symmetric_eigen(a: Vec<f64>, m: usize) -> (Vec<f64>, Vec<f64>) {
    let (vals, v) = crate::train::svd::sym_eig(a, m);
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| vals[j].total_cmp(&vals[i]).then(i.cmp(&j)));
    let mut vecs = vec![0.0; m * m];
    for (c, &i) in order.iter().enumerate() {
        (0..m).for_each(|k| vecs[k * m + c] = v[k * m + i]);
    }
    (order.iter().map(|&i| vals[i]).collect(), vecs)
}

/// umap's spectral initialisation: the 2 eigenvectors of N = D^-1/2 W D^-1/2 after the trivial one
/// (eigenvalue 1, ∝ √degree), i.e. of the normalised Laplacian I − N's smallest non-zero eigenvalues,
/// as n × 2 row-major columns ordered by eigenvalue. None when the graph has several components (the
/// trivial eigenvalue repeats) or the eigensolver does not reach umap's tolerance (residual 1e-4).
/// The eigensolver is a block (2 vectors) Krylov method with thick restarts and Rayleigh–Ritz on the
/// explicit basis; the basis is orthogonal to √degree throughout, so the trivial vector is deflated
/// exactly.
pub fn spectral_init(g: &Graph, rng: &mut ChaCha8Rng) -> Option<Vec<f64>> {
    spectral_eigenvectors(g, rng, 1e-4)
}

/// [`spectral_init`] with Ritz residuals down to `tol`.
fn spectral_eigenvectors(g: &Graph, rng: &mut ChaCha8Rng, tol: f64) -> Option<Vec<f64>> {
    const WANT: usize = 2;
    let n = g.n();
    if n < WANT + 2 || components(g) > 1 {
        return None;
    }
    let deg = g.degrees();
    let isd: Vec<f64> = deg.iter().map(|&k| 1.0 / k.sqrt()).collect();
    let wn: Vec<f64> = (0..n).flat_map(|i| (g.indptr[i]..g.indptr[i + 1]).map(move |e| (i, e))).map(|(i, e)| g.w[e] * isd[i] * isd[g.nbr[e] as usize]).collect();
    let apply = |v: &[f64]| -> Vec<f64> { (0..n).map(|i| (g.indptr[i]..g.indptr[i + 1]).map(|e| wn[e] * v[g.nbr[e] as usize]).sum()).collect() };
    let mut u0: Vec<f64> = deg.iter().map(|k| k.sqrt()).collect();
    let norm = dot(&u0, &u0).sqrt();
    u0.iter_mut().for_each(|x| *x /= norm);
    // Basis size: ARPACK's ncv in umap (max(2k + 1, √n)), at least 24 so small graphs converge in a pass.
    let m = ((n as f64).sqrt() as usize).max(2 * (WANT + 1) + 1).max(24).min(n - 1);
    let keep = (m / 2).max(WANT + 1).min(m - WANT).max(WANT);
    let (mut basis, mut images): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    // Adds `v` orthogonalised against √degree and the basis (twice: "twice is enough"); a fresh seeded
    // direction when nothing new is left (an invariant subspace).
    let expand = |basis: &mut Vec<Vec<f64>>, images: &mut Vec<Vec<f64>>, mut v: Vec<f64>, rng: &mut ChaCha8Rng| {
        for _ in 0..4 {
            let before = dot(&v, &v).sqrt();
            for _ in 0..2 {
                let c = dot(&u0, &v);
                axpy(&mut v, -c, &u0);
                for b in basis.iter() {
                    let c = dot(b, &v);
                    axpy(&mut v, -c, b);
                }
            }
            let after = dot(&v, &v).sqrt();
            if after > 1e-8 * before && after > 1e-300 {
                v.iter_mut().for_each(|x| *x /= after);
                let av = apply(&v);
                basis.push(v);
                images.push(av);
                return true;
            }
            v = (0..n).map(|_| StandardNormal.sample(&mut *rng)).collect();
        }
        false
    };
    // A block of WANT start vectors: a single-vector Krylov space holds one vector of each eigenspace,
    // so it would miss the second of a repeated eigenvalue (a cycle's cos and sin).
    for _ in 0..WANT {
        let start: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut *rng)).collect();
        if !expand(&mut basis, &mut images, start, rng) {
            return None;
        }
    }
    for _cycle in 0..200 {
        while basis.len() < m {
            let next = images[basis.len() - WANT].clone();
            if !expand(&mut basis, &mut images, next, rng) {
                return None;
            }
        }
        let k = basis.len();
        let mut h = vec![0.0; k * k];
        for i in 0..k {
            for j in i..k {
                let v = 0.5 * (dot(&basis[i], &images[j]) + dot(&basis[j], &images[i]));
                h[i * k + j] = v;
                h[j * k + i] = v;
            }
        }
        let (theta, s) = symmetric_eigen(h, k);
        let ritz = |c: usize, from: &[Vec<f64>]| -> Vec<f64> {
            let mut y = vec![0.0; n];
            for (i, b) in from.iter().enumerate() {
                axpy(&mut y, s[i * k + c], b);
            }
            y
        };
        let ys: Vec<Vec<f64>> = (0..keep).map(|c| ritz(c, &basis)).collect();
        let ays: Vec<Vec<f64>> = (0..keep).map(|c| ritz(c, &images)).collect();
        let residual = |c: usize| -> Vec<f64> { ays[c].iter().zip(&ys[c]).map(|(ay, y)| ay - theta[c] * y).collect() };
        let res: Vec<f64> = (0..WANT).map(|c| dot(&residual(c), &residual(c)).sqrt()).collect();
        if !res.iter().chain(&theta[..WANT]).all(|x| x.is_finite()) {
            return None;
        }
        if res.iter().all(|&r| r <= tol) {
            let mut out = vec![0.0; n * WANT];
            for (c, y) in ys.iter().take(WANT).enumerate() {
                // Sign: the largest |entry| positive, so a seed does not mirror the picture.
                let big = y.iter().copied().fold(0.0f64, |acc, x| if x.abs() > acc.abs() { x } else { acc });
                let sign = if big < 0.0 { -1.0 } else { 1.0 };
                (0..n).for_each(|i| out[i * WANT + c] = sign * y[i]);
            }
            return Some(out);
        }
        // Thick restart: keep the leading Ritz pairs (their images need no new products) and continue the
        // block Krylov space with the wanted pairs' residuals.
        let next: Vec<Vec<f64>> = (0..WANT).map(residual).collect();
        basis = ys;
        images = ays;
        for r in next {
            if !expand(&mut basis, &mut images, r, rng) {
                return None;
            }
        }
    }
    None
}

/// umap's `noisy_scale_coords`: scaled to max |coord| 10, plus N(0, 1e-4) noise.
fn noisy_scale(emb: &mut [f64], rng: &mut ChaCha8Rng) {
    let max = emb.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let expansion = if max > 0.0 { 10.0 / max } else { 1.0 };
    for x in emb.iter_mut() {
        let z: f64 = StandardNormal.sample(&mut *rng);
        *x = *x * expansion + 1e-4 * z;
    }
}

/// `simplicial_set_embedding`'s rescale of each axis to [0, 10] before the optimisation.
fn rescale_to_ten(emb: &mut [f64]) {
    for c in 0..2 {
        let (lo, hi) = emb.iter().skip(c).step_by(2).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        let span = hi - lo;
        emb.iter_mut().skip(c).step_by(2).for_each(|x| *x = if span > 0.0 { 10.0 * (*x - lo) / span } else { 0.0 });
    }
}

fn clip(v: f64) -> f64 {
    v.clamp(-4.0, 4.0)
}

/// umap's `optimize_layout_euclidean` (single-threaded, gamma 1, initial alpha 1, move_other): every
/// stored direction (i, j) of the graph is an edge, in CSR order.
fn optimize_layout(emb: &mut [f64], g: &Graph, n_epochs: usize, a: f64, b: f64, negative_sample_rate: usize, rng: &mut ChaCha8Rng) {
    let n = g.n();
    let max_w = g.w.iter().copied().fold(0.0f64, f64::max);
    if max_w <= 0.0 || n < 2 {
        return;
    }
    let head: Vec<usize> = (0..n).flat_map(|i| std::iter::repeat(i).take(g.indptr[i + 1] - g.indptr[i])).collect();
    let tail: Vec<usize> = g.nbr.iter().map(|&j| j as usize).collect();
    let eps: Vec<f64> = g.w.iter().map(|&w| max_w / w).collect();
    let eps_neg: Vec<f64> = eps.iter().map(|&e| e / negative_sample_rate as f64).collect();
    let mut next = eps.clone();
    let mut next_neg = eps_neg.clone();
    let mut alpha = 1.0;
    for epoch in 0..n_epochs {
        let ep = epoch as f64;
        for e in 0..head.len() {
            if next[e] > ep {
                continue;
            }
            let (j, k) = (head[e], tail[e]);
            let (dx, dy) = (emb[2 * j] - emb[2 * k], emb[2 * j + 1] - emb[2 * k + 1]);
            let d2 = dx * dx + dy * dy;
            let coeff = if d2 > 0.0 {
                // d2^(b − 1) as d2^b / d2: one powf per sample (they are most of the time)
                let pb = d2.powf(b);
                -2.0 * a * b * (pb / d2) / (a * pb + 1.0)
            } else {
                0.0
            };
            let (gx, gy) = (clip(coeff * dx) * alpha, clip(coeff * dy) * alpha);
            emb[2 * j] += gx;
            emb[2 * j + 1] += gy;
            emb[2 * k] -= gx;
            emb[2 * k + 1] -= gy;
            next[e] += eps[e];
            // (with rate 0: ∞ epochs per negative sample, (ep − ∞) / ∞ is NaN, which casts to 0)
            let n_neg = ((ep - next_neg[e]) / eps_neg[e]) as usize;
            for _ in 0..n_neg {
                let k = rng.gen_range(0..n);
                let (dx, dy) = (emb[2 * j] - emb[2 * k], emb[2 * j + 1] - emb[2 * k + 1]);
                let d2 = dx * dx + dy * dy;
                if d2 > 0.0 {
                    let coeff = 2.0 * b / ((0.001 + d2) * (a * d2.powf(b) + 1.0));
                    emb[2 * j] += clip(coeff * dx) * alpha;
                    emb[2 * j + 1] += clip(coeff * dy) * alpha;
                }
            }
            next_neg[e] += n_neg as f64 * eps_neg[e];
        }
        alpha = 1.0 - ep / n_epochs as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy 1.17.1's `curve_fit` on umap-learn's `find_ab_params` body (umap itself is not installed in
    /// .pyvenv; its documented values for min_dist 0.5 / 0.1 are a ≈ 0.583, b ≈ 1.334 / a ≈ 1.577,
    /// b ≈ 0.895).
    #[test]
    fn ab_params_match_umap() {
        for (min_dist, spread, a0, b0) in [
            (0.5, 1.0, 0.5830300203414425, 1.3341669924314914),
            (0.1, 1.0, 1.5769434602697652, 0.8950608778515733),
            (0.001, 1.0, 1.929073395935085, 0.7915045334274393),
            (0.5, 2.0, 0.2588787412869628, 1.0574996994409025),
        ] {
            let (a, b) = find_ab_params(spread, min_dist);
            assert!((a - a0).abs() < 1e-5 && (b - b0).abs() < 1e-5, "min_dist {min_dist}, spread {spread}: ({a}, {b}), scipy ({a0}, {b0})");
        }
    }

    #[test]
    fn jacobi_diagonalises_a_symmetric_matrix() {
        let m = 5;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut a = vec![0.0; m * m];
        for i in 0..m {
            for j in i..m {
                let v: f64 = rng.gen_range(-1.0..1.0);
                a[i * m + j] = v;
                a[j * m + i] = v;
            }
        }
        let (vals, vecs) = symmetric_eigen(a.clone(), m);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]), "{vals:?}");
        for c in 0..m {
            let v: Vec<f64> = (0..m).map(|k| vecs[k * m + c]).collect();
            for i in 0..m {
                let av: f64 = (0..m).map(|j| a[i * m + j] * v[j]).sum();
                assert!((av - vals[c] * v[i]).abs() < 1e-10, "eigenpair {c}");
            }
        }
    }

    /// A cycle of n nodes: N's eigenvalues are cos(2πk/n); the two after the trivial one (k = ±1) span
    /// cos and sin of the angle, so the spectral layout is the cycle drawn as a circle, in order.
    #[test]
    fn spectral_init_draws_a_cycle_as_a_circle() {
        let n = 200;
        let edges: Vec<(u32, u32, f64)> = (0..n).map(|i| (i as u32, ((i + 1) % n) as u32, 1.0)).collect();
        let g = Graph::from_edges(n, &edges);
        // (umap's tolerance, 1e-4, leaves the vectors ~0.07 off: the next eigenvalue is 1.5e-3 away)
        let e = spectral_eigenvectors(&g, &mut ChaCha8Rng::seed_from_u64(1), 1e-10).expect("a connected graph");
        let r: Vec<f64> = (0..n).map(|i| (e[2 * i].powi(2) + e[2 * i + 1].powi(2)).sqrt()).collect();
        let mean = r.iter().sum::<f64>() / n as f64;
        assert!((mean - (2.0 / n as f64).sqrt()).abs() < 1e-6 && r.iter().all(|&x| (x - mean).abs() < 1e-6), "radii {r:?}");
        // consecutive nodes a constant angle 2π/n apart
        for i in 0..n {
            let j = (i + 1) % n;
            let cos = (e[2 * i] * e[2 * j] + e[2 * i + 1] * e[2 * j + 1]) / (r[i] * r[j]);
            assert!((cos - (2.0 * std::f64::consts::PI / n as f64).cos()).abs() < 1e-8, "angle {i} → {j}: cos {cos}");
        }
    }

    #[test]
    fn spectral_init_of_two_components_falls_back() {
        // two 50-cycles, no edge between them
        let mut edges = Vec::new();
        for c in 0..2u32 {
            for i in 0..50u32 {
                edges.push((c * 50 + i, c * 50 + (i + 1) % 50, 1.0));
            }
        }
        let g = Graph::from_edges(100, &edges);
        assert_eq!(spectral_init(&g, &mut ChaCha8Rng::seed_from_u64(1)), None);
        // and so does the layout of two far clusters, from PCA, without panicking
        let x: Vec<f32> = (0..60).flat_map(|i| [if i < 30 { 0.0 } else { 100.0 } + (i % 30) as f32 * 0.01, (i % 7) as f32 * 0.01]).collect();
        let o = UmapOptions { n_neighbors: 5, n_epochs: Some(50), ..Default::default() };
        let (y, init) = umap_layout_init(&x, 2, &o);
        assert_eq!(init, Init::Pca);
        assert!(y.len() == 120 && y.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn tiny_inputs_do_not_panic() {
        let o = UmapOptions::default();
        assert!(umap_layout(&[], 3, &o).is_empty());
        let one = umap_layout(&[1.0, 2.0, 3.0], 3, &o);
        assert!(one.len() == 2 && one.iter().all(|v| v.is_finite()));
        let same = umap_layout(&[1.0f32; 30], 3, &o);
        assert!(same.len() == 20 && same.iter().all(|v| v.is_finite()));
    }

    /// 4 Gaussian blobs of 100 points in 10-D (sd 0.5). Blobs C and D differ only along axis 3, which
    /// has less variance than axes 1 and 2 and no covariance with them, so PCA (the start: the kNN graph
    /// has 4 components) puts C on top of D: only the repulsion pulls them apart.
    fn blobs() -> (Vec<f32>, Vec<usize>) {
        let centres: [[f32; 3]; 4] = [[8.0, 0.0, 0.0], [-8.0, 0.0, 0.0], [0.0, 8.0, -3.0], [0.0, 8.0, 3.0]];
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (mut x, mut lab) = (Vec::new(), Vec::new());
        for (c, centre) in centres.iter().enumerate() {
            for _ in 0..100 {
                for j in 0..10 {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    x.push(if j < 3 { centre[j] } else { 0.0 } + 0.5 * z as f32);
                }
                lab.push(c);
            }
        }
        (x, lab)
    }

    fn sq(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
    }

    /// Indices of the other rows by increasing distance from row i.
    fn ranked(x: &[f64], d: usize, i: usize) -> Vec<usize> {
        let n = x.len() / d;
        let mut o: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        o.sort_by(|&p, &q| sq(&x[i * d..(i + 1) * d], &x[p * d..(p + 1) * d]).total_cmp(&sq(&x[i * d..(i + 1) * d], &x[q * d..(q + 1) * d])));
        o
    }

    /// sklearn's trustworthiness: 1 − 2 / (n k (2n − 3k − 1)) Σ_i Σ_{j among i's k nearest in the layout}
    /// max(0, rank of j among i's neighbours in the input − k).
    fn trustworthiness(x: &[f64], d: usize, y: &[f64], k: usize) -> f64 {
        let n = x.len() / d;
        let mut penalty = 0.0;
        for i in 0..n {
            let mut rank = vec![0usize; n];
            for (r, j) in ranked(x, d, i).into_iter().enumerate() {
                rank[j] = r + 1;
            }
            for &j in ranked(y, 2, i).iter().take(k) {
                penalty += rank[j].saturating_sub(k) as f64;
            }
        }
        1.0 - 2.0 / (n as f64 * k as f64 * (2.0 * n as f64 - 3.0 * k as f64 - 1.0)) * penalty
    }

    /// Blobs stay apart: every point's 5 nearest neighbours in the layout share its blob for ≥ 95% of
    /// points, and the layout's neighbourhoods are the input's (trustworthiness at 5 ≥ 0.9). The PCA
    /// start fails the first (C and D overlap), so this checks the optimisation, not the start.
    #[test]
    fn separated_blobs_stay_separated() {
        let (x, lab) = blobs();
        let o = UmapOptions { seed: 3, ..Default::default() };
        let (y, init) = umap_layout_init(&x, 10, &o);
        assert_eq!(init, Init::Pca, "the blobs' kNN graph has 4 components");
        let purity = |y: &[f64]| (0..400).filter(|&i| ranked(y, 2, i).iter().take(5).all(|&j| lab[j] == lab[i])).count() as f64 / 400.0;
        let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let start = crate::plot::embedding::pca(&xf, 10, 2).0;
        assert!(purity(&start) < 0.9, "the start already separates the blobs ({})", purity(&start));
        let p = purity(&y);
        let t = trustworthiness(&xf, 10, &y, 5);
        let (gap, nearest) = blob_gaps(&y, &lab);
        assert!(p >= 0.95, "5-NN purity {p}");
        assert!(t >= 0.9, "trustworthiness {t}");
        // Apart at the picture's scale too: purity alone passes blobs shrunk to nearby dots (as they are
        // without the repulsion).
        assert!(gap >= 0.1 && nearest >= 0.95, "closest blob centres {gap} of the layout's extent apart; {nearest} of points nearest their own blob's centre");
    }

    /// (the smallest distance between two blobs' centres over the layout's extent, the fraction of points
    /// nearest their own blob's centre)
    fn blob_gaps(y: &[f64], lab: &[usize]) -> (f64, f64) {
        let k = lab.iter().max().unwrap() + 1;
        let mut c = vec![[0.0f64; 3]; k];
        for (i, &l) in lab.iter().enumerate() {
            c[l][0] += y[2 * i];
            c[l][1] += y[2 * i + 1];
            c[l][2] += 1.0;
        }
        let c: Vec<[f64; 2]> = c.iter().map(|v| [v[0] / v[2], v[1] / v[2]]).collect();
        let extent = (0..2).map(|a| {
            let (lo, hi) = y.iter().skip(a).step_by(2).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
            hi - lo
        }).fold(0.0, f64::max);
        let gap = (0..k).flat_map(|p| (p + 1..k).map(move |q| (p, q))).map(|(p, q)| sq(&c[p], &c[q]).sqrt()).fold(f64::INFINITY, f64::min) / extent;
        let nearest = lab.iter().enumerate().filter(|&(i, &l)| (0..k).all(|q| sq(&y[2 * i..2 * i + 2], &c[l]) <= sq(&y[2 * i..2 * i + 2], &c[q]))).count() as f64 / lab.len() as f64;
        (gap, nearest)
    }

    /// The mutation check kept: with the repulsion off (negative_sample_rate 0) each blob shrinks to a
    /// dot and C stays on D, so the test above would fail.
    #[test]
    fn without_repulsion_the_overlapping_blobs_stay_together() {
        let (x, lab) = blobs();
        let y = umap_layout(&x, 10, &UmapOptions { seed: 3, negative_sample_rate: 0, ..Default::default() });
        let (gap, _) = blob_gaps(&y, &lab);
        assert!(gap < 0.05, "closest blob centres {gap} of the extent apart without repulsion");
    }

    #[test]
    fn same_seed_same_bits_other_seed_other_layout() {
        // a noisy sine curve in 4-D: a connected graph, so the spectral start is used
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x: Vec<f32> = (0..300).flat_map(|i| {
            let t = i as f32 / 300.0;
            let z: [f32; 4] = std::array::from_fn(|_| rng.gen_range(-0.3..0.3));
            [6.0 * t + z[0], (6.0 * t).sin() + z[1], z[2], z[3]]
        }).collect();
        let o = UmapOptions { n_epochs: Some(100), ..Default::default() };
        let (a, init) = umap_layout_init(&x, 4, &o);
        assert_eq!(init, Init::Spectral);
        let b = umap_layout(&x, 4, &o);
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "same seed, different layout");
        let c = umap_layout(&x, 4, &UmapOptions { seed: 1, ..o });
        let moved = a.iter().zip(&c).filter(|(p, q)| (*p - *q).abs() > 1e-6).count();
        assert!(moved > 500, "another seed changed only {moved} of 600 coordinates");
    }
}
