//! model.md §8.4's resampled-reads protocol (the authors' `RESAMPLED_{10,50,75,90,99}_PERCENT_…` files)
//! and the pieces `evaluate` scores it and `test_impute` with.
//!
//! Read down-sampling ([`resample_splicing`]): every read of a cell is kept with probability 1 − F,
//! independently (binomial thinning): each junction count k becomes k' ~ Binomial(k, 1 − F), and the
//! ATSE's reads not on a listed junction (n − Σ k, zero when n is the sum of its junctions' counts)
//! are thinned the same way, so n' = Σ k' + Binomial(n − Σ k, 1 − F); PSI = k'/n' where n' > 0, and an
//! ATSE left with no read becomes unobserved in the cell. Given the number of reads kept, which reads
//! they are is a uniform draw without replacement (the multivariate hypergeometric of a fixed-size
//! down-sampling); the difference from drawing a fixed number round((1 − F)·N) is the kept total's
//! binomial spread (relative sd √(F / ((1 − F) N)) for N reads). The authors' script
//! (multinomial_resampling_masking.py) is not among the published sources; docs/evaluate.md says so.
//!
//! Truths ([`original_entries`], [`read_resampled_truth`], [`split_truths`]): the original PSI and ATSE
//! count of every originally observed entry, split into the entries the down-sampled data no longer
//! observes ("dropped") and those it still observes ("observed", their PSI now noisier).
//!
//! Junction filter ([`top_variable_junctions`]): the N junctions of largest PSI variance over the cells
//! where their PSI > 0 in the unmasked data, optionally with every junction of their ATSEs.

use super::evaluate::Entry;
use super::posterior::tags;
use crate::data::{Dataset, Splicing};
use crate::train::rng::{stream, Purpose};
use anyhow::{bail, Result};
use rand_distr::{Binomial, Distribution};

/// The authors' ATSE-count filter of the resampled-reads evaluation (eval_splicevi.sh MIN_ATSE_COUNT).
pub const RESAMPLED_MIN_ATSE_COUNT: f32 = 30.0;
/// The authors' top variable junctions of it (IMPUTE_TOP_N_HVJ).
pub const RESAMPLED_TOP_JUNCTIONS: usize = 10_000;

/// Down-sample the reads of `spl` (binomial thinning with keep probability 1 − `fraction`, seeded per
/// cell; see the module comment). The result has the same cells, junctions and ATSEs; an entry stays
/// observed when its ATSE keeps a read (n' > 0). Needs counts (not PSI-only data).
pub fn resample_splicing(spl: &Splicing, fraction: f64, seed: u64) -> Result<Splicing> {
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("the resample fraction (the share of each cell's reads removed) must be in (0, 1), got {fraction}");
    }
    if !spl.has_counts {
        bail!("read down-sampling needs the junction and ATSE counts; the data holds PSI only");
    }
    let keep = 1.0 - fraction;
    let mut out = Splicing { indptr: Vec::with_capacity(spl.n_cells + 1), junction: Vec::new(), k: Vec::new(), n: Vec::new(), psi: Vec::new(), ..empty_like(spl) };
    out.indptr.push(0);
    let thin = |x: f32, rng: &mut rand_chacha::ChaCha8Rng| -> Result<f32> {
        if x <= 0.0 {
            return Ok(0.0);
        }
        anyhow::ensure!(x.fract() == 0.0, "read down-sampling needs integer counts, found {x}");
        Ok(Binomial::new(x as u64, keep)?.sample(rng) as f32)
    };
    let mut kk: Vec<f32> = Vec::new();
    for c in 0..spl.n_cells {
        let mut rng = stream(seed, Purpose::Analysis, tags::RESAMPLE, c as u64);
        let r = spl.cell_range(c);
        // The cell's entries by ATSE (junctions ascending within the cell, so one ATSE's junctions need
        // not be adjacent): thin every junction count, then each ATSE's reads on no listed junction.
        kk.clear();
        for e in r.clone() {
            kk.push(thin(spl.k[e], &mut rng)?);
        }
        let mut atses: Vec<(u32, usize)> = r.clone().map(|e| (spl.junc2atse[spl.junction[e] as usize], e - r.start)).collect();
        atses.sort_unstable();
        let mut n_new = vec![0f32; r.len()];
        for group in atses.chunk_by(|a, b| a.0 == b.0) {
            let n0 = spl.n[r.start + group[0].1];
            let listed: f32 = group.iter().map(|&(_, i)| spl.k[r.start + i]).sum();
            let kept: f32 = group.iter().map(|&(_, i)| kk[i]).sum::<f32>() + thin((n0 - listed).max(0.0), &mut rng)?;
            group.iter().for_each(|&(_, i)| n_new[i] = kept);
        }
        for (i, e) in r.enumerate() {
            if n_new[i] > 0.0 {
                out.junction.push(spl.junction[e]);
                out.k.push(kk[i]);
                out.n.push(n_new[i]);
                out.psi.push(kk[i] / n_new[i]);
            }
        }
        out.indptr.push(out.junction.len());
    }
    Ok(out)
}

/// The same cells, junctions and ATSEs as `s` with no entry (a template for a rebuilt matrix).
fn empty_like(s: &Splicing) -> Splicing {
    Splicing {
        n_cells: s.n_cells,
        n_junctions: s.n_junctions,
        indptr: vec![0; s.n_cells + 1],
        junction: Vec::new(),
        k: Vec::new(),
        n: Vec::new(),
        psi: Vec::new(),
        has_counts: s.has_counts,
        junc2atse: s.junc2atse.clone(),
        atse_ids: s.atse_ids.clone(),
        junction_names: s.junction_names.clone(),
        gene_names: s.gene_names.clone(),
    }
}

/// Every observed entry of `spl` (cell-major, junctions ascending): the truths of the in-engine
/// protocol, read before the down-sampling.
pub fn original_entries(spl: &Splicing) -> Vec<Entry> {
    (0..spl.n_cells).flat_map(|c| spl.cell_range(c).map(move |e| Entry { cell: c as u32, junction: spl.junction[e], psi: spl.psi[e], k: spl.k[e], n: spl.n[e] })).collect()
}

/// Split the truths `original` (cell-major, junctions ascending) by whether `now` (the down-sampled
/// data) still observes their (cell, junction): (dropped, observed).
pub fn split_truths(original: &[Entry], now: &Splicing) -> Result<(Vec<Entry>, Vec<Entry>)> {
    let (mut dropped, mut observed) = (Vec::new(), Vec::new());
    for e in original {
        anyhow::ensure!((e.cell as usize) < now.n_cells, "a truth names cell {} of {}", e.cell, now.n_cells);
        let r = now.cell_range(e.cell as usize);
        if now.junction[r].binary_search(&e.junction).is_ok() {
            observed.push(*e);
        } else {
            dropped.push(*e);
        }
    }
    Ok((dropped, observed))
}

/// The layers of an authors' resampled file that [`read_resampled_truth`] reads.
#[derive(Clone, Debug, PartialEq)]
pub struct ResampledLayers {
    /// The PSI before the down-sampling (the truth): `junc_ratio_original`.
    pub psi: String,
    /// The ATSE counts before it (the ≥ N count filter): `cell_by_cluster_matrix_original`.
    pub atse_counts: String,
}

impl Default for ResampledLayers {
    fn default() -> Self {
        ResampledLayers { psi: "junc_ratio_original".into(), atse_counts: "cell_by_cluster_matrix_original".into() }
    }
}

/// The truths of an authors' resampled file `path` (already loaded as `ds`: its usual layers are the
/// down-sampled data): each stored non-zero of the original-PSI layer (as the authors', whose truths
/// are `junc_ratio_original > 0`) with its original ATSE count from the original-counts layer. That
/// layer is required when `need_counts` (an ATSE-count filter); without it (and not needed) the
/// entries carry n = 0 and k = NaN (the original counts are unknown). The returned line says what
/// was read.
pub fn read_resampled_truth(path: &std::path::Path, opts: &crate::data::DataOptions, ds: &Dataset, layers: &ResampledLayers, need_counts: bool) -> Result<(Vec<Entry>, String)> {
    use crate::data::h5::read_splicing_layer;
    use crate::data::validate::ValueRule;
    let file = path.display().to_string();
    let spl = &ds.splicing;
    let missing = |layer: &str, flag: &str, why: &str, present: &[String]| -> anyhow::Error {
        let list = if present.is_empty() { "none".to_string() } else { present.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ") };
        anyhow::anyhow!("{file}: the splicing modality has no layer {layer:?} (set by {flag}), {why}; layers present: {list}")
    };
    let psi = match read_splicing_layer(path, opts, &layers.psi, ValueRule::PSI, &ds.cell_names, &spl.junction_names)? {
        Ok((_, m)) => m,
        Err(present) => return Err(missing(&layers.psi, "--original-psi-layer", "the original PSI a resampled file is scored against (--resampled-input)", &present)),
    };
    let counts = match read_splicing_layer(path, opts, &layers.atse_counts, ValueRule::counts(false), &ds.cell_names, &spl.junction_names)? {
        Ok((_, m)) => Some(m),
        Err(present) if need_counts => {
            return Err(missing(
                &layers.atse_counts,
                "--original-atse-counts-layer",
                "the original ATSE counts the --min-atse-count filter reads (the down-sampled counts would filter on the wrong number); give --min-atse-count 0 to score without it",
                &present,
            ))
        }
        Err(_) => None,
    };
    let mut out = Vec::with_capacity(psi.nnz());
    for c in 0..psi.n_rows {
        let (cols, vals) = psi.row(c);
        let (ccols, cvals) = counts.as_ref().map(|m| m.row(c)).unwrap_or((&[], &[]));
        for (&j, &v) in cols.iter().zip(vals) {
            let n = ccols.binary_search(&j).map(|i| cvals[i]).unwrap_or(0.0);
            let k = if counts.is_some() { v * n } else { f32::NAN };
            out.push(Entry { cell: c as u32, junction: j, psi: v, k, n });
        }
    }
    let line = match &counts {
        Some(_) => format!("{file}: truths: {} entries with an original PSI > 0 ({}), their original ATSE counts from {}", out.len(), layers.psi, layers.atse_counts),
        None => format!("{file}: truths: {} entries with an original PSI > 0 ({}); no {} layer, so no original ATSE count (none is needed: --min-atse-count 0)", out.len(), layers.psi, layers.atse_counts),
    };
    Ok((out, line))
}

/// The junctions [`top_variable_junctions`] selects, and how many.
#[derive(Clone, Debug, PartialEq)]
pub struct VariableJunctions {
    /// Per junction: scored or not.
    pub keep: Vec<bool>,
    /// The N of largest variance (fewer when fewer have a variance > 0).
    pub seeds: usize,
    /// Junctions with a variance > 0 (seen with PSI > 0 in 2 or more cells).
    pub with_variance: usize,
    /// Junctions scored in all (with the ATSE expansion).
    pub scored: usize,
}

/// The `top` junctions of largest PSI variance over the cells where their PSI > 0 (`entries`: (cell's
/// junction, PSI) of the unmasked data; the population variance, as the authors' E[X²] − E[X]², here
/// computed about the mean); junctions with fewer than two such cells or a variance of 0 are never
/// selected (the authors' pool), so fewer than `top` are when fewer qualify. Ties (the same f64
/// variance) go to the lower junction index (the authors' argpartition leaves them unspecified).
/// With `expand` (the ATSE of each junction), every junction of a selected junction's ATSE is scored too.
pub fn top_variable_junctions(entries: impl Iterator<Item = (u32, f32)> + Clone, n_junctions: usize, top: usize, expand: Option<&[u32]>) -> VariableJunctions {
    let (mut count, mut sum) = (vec![0u64; n_junctions], vec![0f64; n_junctions]);
    for (j, p) in entries.clone().filter(|&(_, p)| p > 0.0) {
        count[j as usize] += 1;
        sum[j as usize] += p as f64;
    }
    let mut ss = vec![0f64; n_junctions];
    for (j, p) in entries.filter(|&(_, p)| p > 0.0) {
        let j = j as usize;
        let d = p as f64 - sum[j] / count[j] as f64;
        ss[j] += d * d;
    }
    let var: Vec<f64> = (0..n_junctions).map(|j| if count[j] >= 2 { ss[j] / count[j] as f64 } else { 0.0 }).collect();
    let mut pool: Vec<usize> = (0..n_junctions).filter(|&j| var[j] > 0.0).collect();
    let with_variance = pool.len();
    pool.sort_by(|&a, &b| var[b].total_cmp(&var[a]).then(a.cmp(&b)));
    pool.truncate(top);
    let mut keep = vec![false; n_junctions];
    pool.iter().for_each(|&j| keep[j] = true);
    if let Some(atse) = expand {
        let mut chosen: Vec<u32> = pool.iter().map(|&j| atse[j]).collect();
        chosen.sort_unstable();
        chosen.dedup();
        (0..n_junctions).filter(|&j| chosen.binary_search(&atse[j]).is_ok()).for_each(|j| keep[j] = true);
    }
    let scored = keep.iter().filter(|&&k| k).count();
    VariableJunctions { keep, seeds: pool.len(), with_variance, scored }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A splicing matrix from (cell, junction, k, n) rows (cell-major, junctions ascending) with the
    /// ATSE of each junction.
    fn spl(n_cells: usize, junc2atse: Vec<u32>, rows: &[(usize, u32, f32, f32)]) -> Splicing {
        let nj = junc2atse.len();
        let na = junc2atse.iter().max().map_or(0, |&a| a as usize + 1);
        let mut s = Splicing {
            n_cells,
            n_junctions: nj,
            has_counts: true,
            junc2atse,
            atse_ids: (0..na).map(|a| format!("a{a}")).collect(),
            junction_names: (0..nj).map(|j| format!("j{j}")).collect(),
            gene_names: vec![String::new(); nj],
            ..Default::default()
        };
        s.indptr = vec![0];
        for c in 0..n_cells {
            for &(_, j, k, n) in rows.iter().filter(|r| r.0 == c) {
                s.junction.push(j);
                s.k.push(k);
                s.n.push(n);
                s.psi.push(k / n);
            }
            s.indptr.push(s.junction.len());
        }
        s
    }

    /// Thinning keeps k' ≤ k, n' = Σ of the ATSE's k' (n is the sum of its junctions' counts here), PSI
    /// = k'/n', keeps about 1 − F of a large count, is seeded, and an ATSE with no read left is gone.
    #[test]
    fn downsampling_thins_reads_and_recounts_atses() {
        // cell 0: ATSE 0 = junctions 0, 2 (interleaved with ATSE 1 = junction 1, 3), large counts;
        // cell 1: ATSE 0 with 1 read only; cell 2 unobserved.
        let rows = [(0, 0, 60_000.0, 100_000.0), (0, 1, 3_000.0, 10_000.0), (0, 2, 40_000.0, 100_000.0), (0, 3, 7_000.0, 10_000.0), (1, 0, 1.0, 1.0), (1, 2, 0.0, 1.0)];
        let s = spl(3, vec![0, 1, 0, 1], &rows);
        let r = resample_splicing(&s, 0.3, 5).unwrap();
        assert_eq!(r.cell_range(0).len(), 4);
        let k: Vec<f32> = r.k[r.cell_range(0)].to_vec();
        let n: Vec<f32> = r.n[r.cell_range(0)].to_vec();
        for (i, (&k1, &k0)) in k.iter().zip(&s.k[..4]).enumerate() {
            assert!(k1 <= k0, "entry {i}: {k1} > {k0}");
            // law of large numbers: within 6 sd of (1 − F)·k
            let sd = (k0 as f64 * 0.3 * 0.7).sqrt();
            assert!((k1 as f64 - 0.7 * k0 as f64).abs() < 6.0 * sd, "entry {i}: kept {k1} of {k0}");
        }
        assert_eq!(n[0], k[0] + k[2]);
        assert_eq!(n[2], n[0]);
        assert_eq!(n[1], k[1] + k[3]);
        assert_eq!(n[3], n[1]);
        assert!(r.psi[r.cell_range(0)].iter().zip(k.iter().zip(&n)).all(|(&p, (&k, &n))| p == k / n));
        // seeded: the same seed, the same draw; another seed, another
        assert_eq!(resample_splicing(&s, 0.3, 5).unwrap(), r);
        assert_ne!(resample_splicing(&s, 0.3, 6).unwrap().k, r.k);
        // a single read is kept with probability 0.7: over seeds, cell 1 loses its ATSE (both junctions
        // unobserved at once) about 30% of the time, and keeps it whole otherwise
        let mut lost = 0;
        for seed in 0..400 {
            let r = resample_splicing(&s, 0.3, seed).unwrap();
            match r.cell_range(1).len() {
                0 => lost += 1,
                2 => assert_eq!((r.k[r.indptr[1]], r.n[r.indptr[1]], r.psi[r.indptr[1] + 1]), (1.0, 1.0, 0.0)),
                m => panic!("cell 1 kept {m} of its ATSE's 2 junctions"),
            }
            assert!(r.cell_range(2).is_empty());
        }
        assert!((80..160).contains(&lost), "lost {lost} of 400");
        assert!(resample_splicing(&s, 0.0, 0).is_err() && resample_splicing(&s, 1.0, 0).is_err());
    }

    /// Reads of an ATSE on no listed junction (n > Σ k) are thinned too: n' − Σ k' is their share.
    #[test]
    fn downsampling_thins_the_reads_on_no_listed_junction() {
        let s = spl(1, vec![0, 0], &[(0, 0, 0.0, 50_000.0), (0, 1, 10_000.0, 50_000.0)]);
        let r = resample_splicing(&s, 0.5, 1).unwrap();
        let rest = r.n[0] - r.k[0] - r.k[1];
        assert_eq!(r.k[0], 0.0);
        assert!((rest - 20_000.0).abs() < 6.0 * (40_000.0f32 * 0.25).sqrt(), "{rest}");
        assert_eq!(r.psi[1], r.k[1] / r.n[1]);
    }

    #[test]
    fn truths_split_by_what_is_still_observed() {
        let s = spl(2, vec![0, 0, 1], &[(0, 0, 1.0, 2.0), (0, 1, 1.0, 2.0), (0, 2, 3.0, 3.0), (1, 2, 2.0, 2.0)]);
        let now = spl(2, vec![0, 0, 1], &[(0, 2, 1.0, 1.0), (1, 2, 1.0, 1.0)]);
        let orig = original_entries(&s);
        let (d, o) = split_truths(&orig, &now).unwrap();
        assert_eq!(d.iter().map(|e| (e.cell, e.junction)).collect::<Vec<_>>(), [(0, 0), (0, 1)]);
        assert_eq!(o.iter().map(|e| (e.cell, e.junction, e.psi, e.n)).collect::<Vec<_>>(), [(0, 2, 1.0, 3.0), (1, 2, 1.0, 2.0)]);
    }

    /// The top N by the population variance of PSI > 0 (hand-computed), zeros left out of it, fewer
    /// than 2 cells or a variance of 0 never selected, ties to the lower index; the ATSE expansion adds
    /// exactly the other junctions of the selected junctions' ATSEs.
    #[test]
    fn top_variable_junctions_by_hand() {
        // junction: PSI > 0 values → population variance
        // 0: 0.25, 0.75 → 0.0625      1: 0.5, 1.0 (and a 0, left out) → 0.0625 (ties 0)
        // 2: 0.5, 0.5, 0.5 → 0        3: 0.9 alone → not estimable
        // 4: 0.125, 0.375, 0.125, 0.375 → 0.015625     5: 0.25, 0.5, 0.75 → 0.041666…
        let e: Vec<(u32, f32)> =
            vec![(0, 0.25), (0, 0.75), (1, 0.5), (1, 0.0), (1, 1.0), (2, 0.5), (2, 0.5), (2, 0.5), (3, 0.9), (4, 0.125), (4, 0.375), (4, 0.125), (4, 0.375), (5, 0.25), (5, 0.5), (5, 0.75)];
        let sel = |top: usize| top_variable_junctions(e.iter().copied(), 6, top, None);
        let idx = |v: &VariableJunctions| (0..6).filter(|&j| v.keep[j]).collect::<Vec<_>>();
        assert_eq!(idx(&sel(1)), [0]);
        assert_eq!(idx(&sel(2)), [0, 1]);
        assert_eq!(idx(&sel(3)), [0, 1, 5]);
        assert_eq!(idx(&sel(4)), [0, 1, 4, 5]);
        // never the constant or the single-cell junction
        let all = sel(10);
        assert_eq!((idx(&all), all.seeds, all.with_variance, all.scored), (vec![0, 1, 4, 5], 4, 4, 4));
        // a PSI of 0 counts as no observation: with it, junction 1's variance would be 1/6 and lead
        let mut e0 = e.clone();
        e0.retain(|&(j, _)| j != 0);
        let v = top_variable_junctions(e0.iter().copied(), 6, 1, None);
        assert_eq!(idx(&v), [1]);
        // expansion: ATSEs {0, 2}, {1, 3}, {4}, {5}: selecting 0 and 1 adds 2 and 3, nothing else
        let atse = [0u32, 1, 0, 1, 2, 3];
        let x = top_variable_junctions(e.iter().copied(), 6, 2, Some(&atse));
        assert_eq!((idx(&x), x.seeds, x.scored), (vec![0, 1, 2, 3], 2, 4));
        let x = top_variable_junctions(e.iter().copied(), 6, 3, Some(&atse));
        assert_eq!(idx(&x), [0, 1, 2, 3, 5]);
    }
}
