//! Synthetic minibatches shared by the whole-model tests (tests/gradcheck.rs, tests/cuda_step.rs).
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use splicevi::data::Csr;
use splicevi::model::{Batch, Dims, SplBatch};

/// ATSE of each of 11 junctions (interleaved; sizes 3, 1, 2, 3, 2 — one single-junction ATSE).
pub const JUNC2ATSE: [u32; 11] = [0, 2, 0, 1, 3, 2, 0, 3, 3, 4, 4];

/// A minibatch of `b` cells over `d` (junctions grouped by [`JUNC2ATSE`]): cell 0 has no expression, cell
/// 1 no observed junction, a gene is expressed with probability `p_expr`, ~60% of (cell, ATSE) pairs
/// are observed with some zero junction counts.
pub fn synth_batch(d: &Dims, b: usize, seed: u64, p_expr: f64) -> Batch {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut expr = Csr { n_rows: b, n_cols: d.n_genes, indptr: vec![0], ..Default::default() };
    let mut library = Vec::new();
    for c in 0..b {
        let mut s = 0.0;
        for g in 0..d.n_genes {
            if c != 0 && r.gen_bool(p_expr) {
                let v = r.gen_range(1..25) as f32;
                expr.indices.push(g as u32);
                expr.values.push(v);
                s += v;
            }
        }
        expr.indptr.push(expr.indices.len());
        library.push(if s > 0.0 { s } else { 1.0 });
    }
    let mut spl = SplBatch { n_junctions: d.n_junctions, indptr: vec![0], ..Default::default() };
    for c in 0..b {
        let observed: Vec<bool> = (0..d.n_atse).map(|_| c != 1 && r.gen_bool(0.6)).collect();
        let mut tot = vec![0u32; d.n_atse];
        let mut kk = vec![0u32; d.n_junctions];
        for a in 0..d.n_atse {
            if observed[a] {
                tot[a] = r.gen_range(1..30);
                let js: Vec<usize> = (0..d.n_junctions).filter(|&j| JUNC2ATSE[j] as usize == a).collect();
                for _ in 0..tot[a] {
                    // skewed split so that some junctions get 0 reads
                    let q = if r.gen_bool(0.7) { js[0] } else { js[r.gen_range(0..js.len())] };
                    kk[q] += 1;
                }
            }
        }
        for j in 0..d.n_junctions {
            let a = JUNC2ATSE[j] as usize;
            if observed[a] {
                spl.junction.push(j as u32);
                spl.k.push(kk[j] as f32);
                spl.n.push(tot[a] as f32);
                spl.psi.push(kk[j] as f32 / tot[a] as f32);
            }
        }
        spl.indptr.push(spl.junction.len());
    }
    let mut idx: Vec<u32> = (0..d.n_obs as u32).collect();
    for i in 0..b {
        let j = r.gen_range(i..idx.len());
        idx.swap(i, j);
    }
    idx.truncate(b);
    Batch {
        expr,
        library,
        batch: (0..b).map(|_| r.gen_range(0..d.n_batch as u32)).collect(),
        labels: (0..b).map(|_| r.gen_range(0..d.n_labels as u32)).collect(),
        cats: d.n_cats_per_cov.iter().map(|&n| (0..b).map(|_| r.gen_range(0..n as u32)).collect()).collect(),
        cont: (0..b * d.n_cont)
            .map(|_| {
                let v: f64 = StandardNormal.sample(&mut r);
                v as f32
            })
            .collect(),
        n_cont: d.n_cont,
        cell_idx: Some(idx),
        spl,
    }
}

