//! `initialize_embeddings_from_pca` (model.md §7.1): the partial encoder's junction embedding F (J × D)
//! from a truncated SVD of the training cells' PSI matrix (cells × J, zeros where unobserved), as
//! sklearn's randomized TruncatedSVD does (oversampling 10, 5 power iterations) — but seeded, where the
//! original is not (§12.21). The matrix stays sparse throughout.

use crate::data::Dataset;
use anyhow::Result;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// X Ω for the sparse PSI rows of `cells`: (n × J) · (J × k) → n × k, row-major.
fn x_times(ds: &Dataset, cells: &[usize], m: &[f64], k: usize) -> Vec<f64> {
    let s = &ds.splicing;
    let mut out = vec![0.0; cells.len() * k];
    out.par_chunks_mut(k).zip(cells.par_iter()).for_each(|(row, &c)| {
        for e in s.cell_range(c) {
            let (j, v) = (s.junction[e] as usize, s.psi[e] as f64);
            if v != 0.0 {
                for (o, &w) in row.iter_mut().zip(&m[j * k..(j + 1) * k]) {
                    *o += v * w;
                }
            }
        }
    });
    out
}

/// Xᵀ Y: (J × n) · (n × k) → J × k.
fn xt_times(ds: &Dataset, cells: &[usize], y: &[f64], k: usize) -> Vec<f64> {
    let s = &ds.splicing;
    let j_total = s.n_junctions;
    // Per-thread partial sums over cell blocks, added in a fixed order (deterministic).
    let parts: Vec<Vec<f64>> = cells
        .par_chunks(256.max(cells.len() / 64 + 1))
        .enumerate()
        .map(|(bi, block)| {
            let base = bi * 256.max(cells.len() / 64 + 1);
            let mut acc = vec![0.0; j_total * k];
            for (r, &c) in block.iter().enumerate() {
                let yr = &y[(base + r) * k..(base + r + 1) * k];
                for e in s.cell_range(c) {
                    let (j, v) = (s.junction[e] as usize, s.psi[e] as f64);
                    if v != 0.0 {
                        for (a, &w) in acc[j * k..(j + 1) * k].iter_mut().zip(yr) {
                            *a += v * w;
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut out = vec![0.0; j_total * k];
    for p in parts {
        out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
    }
    out
}

/// Orthonormalise the k columns of a row-major (rows × k) matrix in place (modified Gram–Schmidt).
fn orthonormalize(a: &mut [f64], rows: usize, k: usize) {
    for c in 0..k {
        for p in 0..c {
            let dot: f64 = (0..rows).map(|r| a[r * k + c] * a[r * k + p]).sum();
            (0..rows).for_each(|r| a[r * k + c] -= dot * a[r * k + p]);
        }
        let norm = (0..rows).map(|r| a[r * k + c].powi(2)).sum::<f64>().sqrt();
        let inv = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
        (0..rows).for_each(|r| a[r * k + c] *= inv);
    }
}

/// Eigen-decomposition of a small symmetric matrix (cyclic Jacobi). Returns (eigenvalues, eigenvectors
/// as columns of a row-major k × k matrix). Converged when the off-diagonal norm is 1e-14 of the
/// matrix's (relative, so a matrix of tiny or huge entries is resolved as well as one of unit scale).
pub(crate) fn sym_eig(mut a: Vec<f64>, k: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), k * k);
    let mut v = vec![0.0; k * k];
    (0..k).for_each(|i| v[i * k + i] = 1.0);
    let total_sq: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..k).flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * k + j].powi(2)).sum();
        if off <= 1e-28 * total_sq.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = a[p * k + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..k {
                    let (arp, arq) = (a[r * k + p], a[r * k + q]);
                    a[r * k + p] = c * arp - s * arq;
                    a[r * k + q] = s * arp + c * arq;
                }
                for r in 0..k {
                    let (apr, aqr) = (a[p * k + r], a[q * k + r]);
                    a[p * k + r] = c * apr - s * aqr;
                    a[q * k + r] = s * apr + c * aqr;
                }
                for r in 0..k {
                    let (vrp, vrq) = (v[r * k + p], v[r * k + q]);
                    v[r * k + p] = c * vrp - s * vrq;
                    v[r * k + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    ((0..k).map(|i| a[i * k + i]).collect(), v)
}

/// The top-`d` right singular vectors of the PSI matrix of `cells`, as a J × d row-major f32 matrix
/// (`components_ᵀ`). Columns beyond the matrix rank are zero. Signs: largest |entry| positive.
pub fn psi_embedding(ds: &Dataset, cells: &[usize], d: usize, seed: u64) -> Result<Vec<f32>> {
    let j = ds.n_junctions();
    let n = cells.len();
    anyhow::ensure!(n > 0 && j > 0, "SVD embedding init needs cells and junctions");
    let k = (d + 10).min(j).min(n).max(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_5FD);
    let omega: Vec<f64> = (0..j * k).map(|_| StandardNormal.sample(&mut rng)).collect();
    let mut y = x_times(ds, cells, &omega, k);
    orthonormalize(&mut y, n, k);
    for _ in 0..5 {
        let mut z = xt_times(ds, cells, &y, k);
        orthonormalize(&mut z, j, k);
        y = x_times(ds, cells, &z, k);
        orthonormalize(&mut y, n, k);
    }
    // B = Qᵀ X (k × J), stored transposed as Bᵀ = Xᵀ Q (J × k).
    let bt = xt_times(ds, cells, &y, k);
    // B Bᵀ = (Bᵀ)ᵀ Bᵀ (k × k).
    let mut bbt = vec![0.0; k * k];
    for r in 0..j {
        let row = &bt[r * k..(r + 1) * k];
        for a in 0..k {
            for b in 0..k {
                bbt[a * k + b] += row[a] * row[b];
            }
        }
    }
    let (evals, evecs) = sym_eig(bbt, k);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| evals[b].partial_cmp(&evals[a]).unwrap_or(std::cmp::Ordering::Equal));
    let mut out = vec![0f32; j * d];
    for (c, &e) in order.iter().take(d).enumerate() {
        let sigma = evals[e].max(0.0).sqrt();
        if sigma < 1e-10 {
            continue;
        }
        // v = Bᵀ u / σ
        let col: Vec<f64> = (0..j).map(|r| (0..k).map(|a| bt[r * k + a] * evecs[a * k + e]).sum::<f64>() / sigma).collect();
        let big = col.iter().copied().fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        let sign = if big < 0.0 { -1.0 } else { 1.0 };
        for r in 0..j {
            out[r * d + c] = (sign * col[r]) as f32;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_recovers_eigenpairs() {
        let a = vec![4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 1.0];
        let (ev, v) = sym_eig(a.clone(), 3);
        for e in 0..3 {
            for r in 0..3 {
                let av: f64 = (0..3).map(|c| a[r * 3 + c] * v[c * 3 + e]).sum();
                assert!((av - ev[e] * v[r * 3 + e]).abs() < 1e-10);
            }
        }
    }
}
