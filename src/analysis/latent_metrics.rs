//! Latent-space quality metrics (model.md §8.1–§8.2): k-NN accuracy with stratification-free k-fold
//! cross-validation, and silhouette score. Brute-force distances, parallel over query cells: exact, and
//! fast enough for the tens of thousands of cells an evaluation uses.

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
    let total: f64 = (0..n)
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
            (b - a) / a.max(b)
        })
        .sum();
    total / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
