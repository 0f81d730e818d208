//! The partial splicing encoder's per-pair network and pooling (model.md §2.5 steps 1–6).
//!
//! Per observed pair (i, j): t = [ψ, ψ·F̂_j]; the first Linear is factored as
//! W₀t + b₀ = ψ·u_j + b₀ with u_j = W₀[:,0] + W₀[:,1:]·F̂_j computed once per junction per step.
//! The LayerNorm after it is folded per junction too ([`Fold`]): its input is affine in ψ, so its
//! mean and variance are closed-form in ψ and the affine output is α·(g₁⊙ũ_j) + β·(g₁⊙b̃) + be₁ —
//! two FMAs per element and no per-pair reduction. Then ReLU → dropout → Linear → LayerNorm(affine)
//! → ReLU gives the code c_ij, pooled per cell (sum or mean).
//!
//! The first block's output depends on the pair only through (j, ψ), and not on j when ψ = 0, so
//! pairs are processed in [`Groups`] that share it: the Hh-wide work (the first block, the second
//! Linear, their backward) runs once per group, and per pair only what its own dropout mask changes.
//! The forward keeps the dropout keep bits (one bit per element) and, while it fits in
//! [`STASH_MAX_BYTES`], each pair's second-block LayerNorm output (D + 1 values). The backward walks the
//! pairs junction by junction so that each junction's gradient is owned by one work item
//! (deterministic, no atomics).

use super::arch::PartialEncP;
use super::batch::SplBatch;
use super::ops::{ln_row, ln_row_bwd, sorted_span, Mode, LN_EPS};
use super::params::{Grads, Params};
use super::real::{dot8, fold8, Real};
use super::rng;
use super::tensor::{matmul_nn, matmul_nt, matmul_tn_acc, Mat};
use rayon::prelude::*;

const NORM_EPS: f64 = 1e-8;

/// The first block folded per junction. With ũ_j = u_j − mean(u_j) and b̃ = b₀ − mean(b₀), the
/// LayerNorm input ψ·u_j + b₀ centres to ψ·ũ_j + b̃, whose variance is
/// ψ²·s_uu(j) + 2ψ·s_ub(j) + s_bb (each s = ⟨·,·⟩/Hh, kept in f64 against cancellation), so
/// x̂ = α·ũ_j + β·b̃ with β = 1/√(var + ε) and α = ψβ.
#[derive(Clone, Debug)]
pub struct Fold<T> {
    /// J × Hh: ũ_j.
    pub ut: Mat<T>,
    /// J × Hh: g₁ ⊙ ũ_j.
    pub ug: Mat<T>,
    pub suu: Vec<f64>,
    pub sub: Vec<f64>,
    /// b̃ and g₁ ⊙ b̃ (Hh), ‖b̃‖²/Hh.
    pub bt: Vec<T>,
    pub bg: Vec<T>,
    pub sbb: f64,
}

impl<T: Real> Fold<T> {
    fn new(u: &Mat<T>, b0: &[T], g1: &[T]) -> Self {
        let hh = b0.len();
        let inv_h = 1.0 / hh as f64;
        let bmean = b0.iter().map(|v| v.to_f64()).sum::<f64>() * inv_h;
        let bt: Vec<T> = b0.iter().map(|&v| T::from_f64(v.to_f64() - bmean)).collect();
        let bg: Vec<T> = bt.iter().zip(g1).map(|(&b, &g)| b * g).collect();
        let sbb = bt.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>() * inv_h;
        let j = u.rows;
        let mut ut = Mat::zeros(j, hh);
        let mut ug = Mat::zeros(j, hh);
        let mut suu = vec![0.0; j];
        let mut sub = vec![0.0; j];
        ut.data
            .par_chunks_mut(hh)
            .zip(ug.data.par_chunks_mut(hh))
            .zip(suu.par_iter_mut().zip(sub.par_iter_mut()))
            .enumerate()
            .for_each(|(jj, ((utr, ugr), (su, sb)))| {
                let ur = u.row(jj);
                let m = ur.iter().map(|v| v.to_f64()).sum::<f64>() * inv_h;
                let (mut a, mut c) = (0.0, 0.0);
                for t in 0..hh {
                    let v = ur[t].to_f64() - m;
                    utr[t] = T::from_f64(v);
                    ugr[t] = utr[t] * g1[t];
                    a += utr[t].to_f64() * utr[t].to_f64();
                    c += utr[t].to_f64() * bt[t].to_f64();
                }
                *su = a * inv_h;
                *sb = c * inv_h;
            });
        Fold { ut, ug, suu, sub, bt, bg, sbb }
    }

    /// (α, β) of a pair with input ψ at junction j.
    #[inline]
    fn coefs(&self, j: usize, psi: f64) -> (f64, f64) {
        let var = (psi * psi * self.suu[j] + 2.0 * psi * self.sub[j] + self.sbb).max(0.0);
        let beta = 1.0 / (var + LN_EPS).sqrt();
        (psi * beta, beta)
    }

    /// (α, β) of input 0 at any junction: the same bits as [`Fold::coefs`] gives for ψ = 0.
    fn zero_coefs(&self) -> (f64, f64) {
        let beta = 1.0 / (self.sbb.max(0.0) + LN_EPS).sqrt();
        (0.0, beta)
    }
}

/// Observed pairs grouped by what their first block computes. The folded first block of a pair depends
/// only on its junction and its input ψ, and not on the junction at all when ψ = 0 (α = 0). So pairs
/// with the same junction and input share the first block's output r (before dropout), and every pair
/// with input 0 shares one. Per group the forward computes W₄·(scale·r) once, and per pair only
/// removes the share of the units its dropout mask drops (about p·Hh of them, half of which the ReLU
/// has zeroed already); the backward sums each group's second-Linear gradients and runs the
/// first-block backward once per group. In the simulator's data 90% of the observed pairs have
/// ψ = 0 or 1 (the fewer reads an ATSE has, the more so), so most of the per-pair Hh-wide work goes.
/// Without dropout (evaluation) all pairs of a group have the same code.
#[derive(Clone, Debug, Default)]
pub struct Groups<T> {
    /// The pairs in junction-major order, the order both passes walk them in ("positions"); within
    /// a junction the pairs of one group are consecutive and in pair order.
    pub order: Vec<u32>,
    /// Start of each junction's positions (J + 1 entries).
    pub jptr: Vec<usize>,
    /// Group (0: the input-0 group) and cell of the pair at each position.
    pub gid_at: Vec<u32>,
    pub cell_at: Vec<u32>,
    /// The groups. Group 0 (input 0) has junction 0 as a stand-in: with α = 0 no junction enters.
    pub table: GroupTable<T>,
    /// Pairs in group 0.
    pub n_zero: usize,
}

/// Per group: junction, input, and the folded first block's α and β.
#[derive(Clone, Debug, Default)]
pub struct GroupTable<T> {
    pub jn: Vec<u32>,
    pub psi: Vec<T>,
    pub alpha: Vec<f64>,
    pub beta: Vec<f64>,
}

impl<T: Copy> GroupTable<T> {
    fn push(&mut self, jn: u32, psi: T, (alpha, beta): (f64, f64)) {
        self.jn.push(jn);
        self.psi.push(psi);
        self.alpha.push(alpha);
        self.beta.push(beta);
    }

    fn append(&mut self, o: &GroupTable<T>) {
        self.jn.extend_from_slice(&o.jn);
        self.psi.extend_from_slice(&o.psi);
        self.alpha.extend_from_slice(&o.alpha);
        self.beta.extend_from_slice(&o.beta);
    }

    pub fn len(&self) -> usize {
        self.jn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jn.is_empty()
    }
}

/// The groups of one block of junctions (local ids 1.., in junction order) and the local group id of
/// each of its positions (0: the input-0 group).
#[derive(Default)]
struct ItemGroups<T> {
    table: GroupTable<T>,
    local: Vec<u32>,
}

impl<T: Real> Groups<T> {
    fn build(spl: &SplBatch, psi_t: &[T], fold: &Fold<T>) -> Self {
        let (j, b, nnz) = (spl.n_junctions, spl.n_cells(), spl.nnz());
        assert!(nnz < u32::MAX as usize, "partial encoder: {nnz} observed pairs in one batch (at most 2³² − 2)");
        // Junction-major order, a block of SORT_JUNCTIONS junctions at a time (in parallel; the same
        // result on any number of threads). A cell's junctions are ascending, so a block's pairs are
        // one contiguous range of each cell's row, found by binary search; a counting sort inside the
        // block keeps every write stream in cache. Within a junction pairs stay in pair order.
        let blocks: Vec<(usize, usize)> =
            (0..j.div_ceil(SORT_JUNCTIONS)).map(|k| (k * SORT_JUNCTIONS, ((k + 1) * SORT_JUNCTIONS).min(j))).collect();
        let ranges: Vec<(Vec<(usize, usize)>, Vec<usize>)> = blocks
            .par_iter()
            .map(|&(j0, j1)| {
                let mut rows = Vec::with_capacity(b);
                let mut count = vec![0usize; j1 - j0];
                for c in 0..b {
                    let (s, e) = (spl.indptr[c], spl.indptr[c + 1]);
                    let row = &spl.junction[s..e];
                    debug_assert!(
                        row.windows(2).all(|w| w[0] < w[1]),
                        "partial encoder: junctions of cell {c} not ascending"
                    );
                    let span = sorted_span(row, j0, j1);
                    let (lo, hi) = (s + span.start, s + span.end);
                    for &x in &spl.junction[lo..hi] {
                        count[x as usize - j0] += 1;
                    }
                    rows.push((lo, hi));
                }
                (rows, count)
            })
            .collect();
        let mut jptr = vec![0usize; j + 1];
        for (&(j0, _), (_, count)) in blocks.iter().zip(&ranges) {
            for (k, &n) in count.iter().enumerate() {
                jptr[j0 + k + 1] = jptr[j0 + k] + n;
            }
        }
        let mut order = vec![0u32; nnz];
        let mut cell_at = vec![0u32; nnz];
        let mut slices = Vec::with_capacity(blocks.len());
        let (mut rest_o, mut rest_c) = (order.as_mut_slice(), cell_at.as_mut_slice());
        for &(j0, j1) in &blocks {
            let n = jptr[j1] - jptr[j0];
            let (o, r) = std::mem::take(&mut rest_o).split_at_mut(n);
            let (c, rc) = std::mem::take(&mut rest_c).split_at_mut(n);
            slices.push((o, c));
            rest_o = r;
            rest_c = rc;
        }
        // Then per block: each junction's pairs reordered so that equal non-zero inputs are adjacent
        // (a stable counting sort by first appearance: input-0 pairs first, then one run per distinct
        // input), and the block's groups listed.
        let lists: Vec<ItemGroups<T>> = blocks
            .par_iter()
            .zip(ranges.par_iter().zip(slices.into_par_iter()))
            .map(|(&(j0, j1), ((rows, _), (ord, cel)))| {
                let p0 = jptr[j0];
                let mut next: Vec<usize> = (j0..j1).map(|jj| jptr[jj] - p0).collect();
                let mut psi = vec![T::ZERO; ord.len()];
                for (c, &(lo, hi)) in rows.iter().enumerate() {
                    for e in lo..hi {
                        let k = spl.junction[e] as usize - j0;
                        let p = next[k];
                        next[k] += 1;
                        ord[p] = e as u32;
                        cel[p] = c as u32;
                        psi[p] = psi_t[e];
                    }
                }
                let mut out = ItemGroups::default();
                let (mut keys, mut class, mut tmp, mut start): (Vec<u64>, Vec<u32>, Vec<u32>, Vec<usize>) =
                    Default::default();
                // Past a few distinct inputs at a junction (deep coverage), a map instead of a scan.
                let mut index: std::collections::HashMap<u64, usize> = Default::default();
                for jj in j0..j1 {
                    let r = jptr[jj] - p0..jptr[jj + 1] - p0;
                    let (run, cells, psi) = (&mut ord[r.clone()], &mut cel[r.clone()], &psi[r]);
                    keys.clear();
                    class.clear();
                    index.clear();
                    for &v in psi.iter() {
                        if v == T::ZERO {
                            class.push(0);
                            continue;
                        }
                        let k = v.to_f64().to_bits();
                        let found = if keys.len() <= SCAN_KEYS {
                            keys.iter().position(|&x| x == k)
                        } else {
                            if index.is_empty() {
                                index.extend(keys.iter().enumerate().map(|(i, &x)| (x, i)));
                            }
                            index.get(&k).copied()
                        };
                        let c = match found {
                            Some(i) => i,
                            None => {
                                if !index.is_empty() {
                                    index.insert(k, keys.len());
                                }
                                keys.push(k);
                                out.table.push(jj as u32, v, fold.coefs(jj, v.to_f64()));
                                keys.len() - 1
                            }
                        };
                        class.push(c as u32 + 1);
                    }
                    let base = out.table.len() - keys.len();
                    if keys.len() >= 2 {
                        // Stable counting sort of the run (pairs and their cells) by class.
                        start.clear();
                        start.resize(keys.len() + 2, 0);
                        for &c in &class {
                            start[c as usize + 1] += 1;
                        }
                        for i in 0..=keys.len() {
                            start[i + 1] += start[i];
                        }
                        let n = run.len();
                        tmp.clear();
                        tmp.resize(3 * n, 0);
                        let (te, rest) = tmp.split_at_mut(n);
                        let (tc, tl) = rest.split_at_mut(n);
                        for i in 0..n {
                            let c = class[i] as usize;
                            te[start[c]] = run[i];
                            tc[start[c]] = cells[i];
                            tl[start[c]] = class[i];
                            start[c] += 1;
                        }
                        run.copy_from_slice(te);
                        cells.copy_from_slice(tc);
                        class.copy_from_slice(tl);
                    }
                    // Local group id per position (0: the input-0 group).
                    out.local.extend(class.iter().map(|&c| if c == 0 { 0 } else { (base + c as usize) as u32 }));
                }
                out
            })
            .collect();
        // Global ids: group 0, then each block's groups in block order.
        let mut g = Groups::<T>::default();
        g.table.push(0, T::ZERO, fold.zero_coefs());
        let mut offsets = Vec::with_capacity(lists.len());
        for l in &lists {
            offsets.push(g.table.len() - 1);
            g.table.append(&l.table);
        }
        g.n_zero = lists.iter().map(|l| l.local.iter().filter(|&&c| c == 0).count()).sum();
        let mut gid_at = vec![0u32; nnz];
        let mut gid_parts = Vec::with_capacity(lists.len());
        let mut rest = gid_at.as_mut_slice();
        for l in &lists {
            let (a, r) = std::mem::take(&mut rest).split_at_mut(l.local.len());
            gid_parts.push(a);
            rest = r;
        }
        lists.par_iter().zip(offsets.par_iter()).zip(gid_parts.into_par_iter()).for_each(|((l, &off), gids)| {
            for (g, &c) in gids.iter_mut().zip(&l.local) {
                *g = if c == 0 { 0 } else { (off + c as usize) as u32 };
            }
        });
        Groups { order, jptr, gid_at, cell_at, ..g }
    }

    fn len(&self) -> usize {
        self.table.len()
    }
}

/// What the forward keeps: the pooled codes and the per-junction and per-group quantities.
#[derive(Clone, Debug)]
pub struct PartialCache<T> {
    /// B × D pooled codes (input of the post-pooling MLP).
    pub pool: Mat<T>,
    /// Observed pairs per cell.
    pub counts: Vec<usize>,
    /// J × D row-normalised embedding and the row norms.
    pub fhat: Mat<T>,
    pub fnorm: Vec<T>,
    /// The folded first block.
    pub fold: Fold<T>,
    /// Divisor of each cell's pooled sum (1 for `sum`).
    pub den: Vec<T>,
    /// `partial_center_psi`: the reference code h(0) (D), subtracted once per observed pair.
    pub h0: Option<Vec<T>>,
    /// The h network's dropout keep bits, ⌈Hh / 64⌉ words per pair in position order ([`Groups::order`];
    /// [`PartialCache::keep_by_pair`] gives them in pair order), empty without dropout. One bit per
    /// element, so the backward reads the forward's decisions instead of hashing them again.
    pub keep: Vec<u64>,
    /// The second block's LayerNorm output and inverse deviation of every pair, [x̂₂ (D) | 1/σ₂] in
    /// position order, so the backward skips the LayerNorm it would otherwise recompute. Kept by
    /// training passes only, and only up to [`STASH_MAX_BYTES`]; the backward otherwise recomputes
    /// them (the same values either way).
    pub stash: Vec<T>,
    /// The pairs' groups (see [`Groups`]).
    pub groups: Groups<T>,
    /// Per group: W₄·(scale·r_g), the second Linear's output (bias excluded) of a pair of the group
    /// whose dropout keeps every unit; scale·r_g; the units with r_g > 0.
    pub go: GroupOut<T>,
}

impl<T> PartialCache<T> {
    /// The keep bits in the batch's pair order (pair e's ⌈Hh / 64⌉ words at e·⌈Hh / 64⌉), as the
    /// CUDA kernel writes them.
    pub fn keep_by_pair(&self) -> Vec<u64> {
        let n = self.groups.order.len();
        if n == 0 || self.keep.is_empty() {
            return Vec::new();
        }
        let kw = self.keep.len() / n;
        let mut out = vec![0u64; self.keep.len()];
        for (p, &e) in self.groups.order.iter().enumerate() {
            let e = e as usize;
            out[e * kw..(e + 1) * kw].copy_from_slice(&self.keep[p * kw..(p + 1) * kw]);
        }
        out
    }
}

/// Largest stash of second-block activations kept between the forward and the backward (D + 1
/// values per observed pair: 16.5 MB at `small` and 66 MB at `medium` with the default code_dim 16).
/// Above it, as for the authors' configuration at full size, the backward recomputes them instead.
pub const STASH_MAX_BYTES: usize = 256 << 20;

struct Net<'a, T> {
    be1: &'a [T],
    g1: &'a [T],
    w4: &'a [T],
    b4: &'a [T],
    g5: &'a [T],
    be5: &'a [T],
    /// W₄ transposed (Hh × D): row t is unit t's column, what a dropped unit removes.
    w4t: Vec<T>,
    hh: usize,
    dd: usize,
    dropout: f64,
}

/// Distinct inputs at a junction found by a linear scan before `Groups::build` switches to a map.
const SCAN_KEYS: usize = 16;
/// Junctions per block of the junction-major counting sort (fixed, like the work items).
const SORT_JUNCTIONS: usize = 256;
/// Pairs per work item (fixed, so the reduction order never depends on the thread count).
const ITEM_PAIRS: usize = 8192;
/// Pairs (or groups) per micro-chunk: the activations of a micro-chunk stay in cache.
const MICRO: usize = 256;

/// Groups waiting for their batched first-block work: their ids, and for the backward the sums of
/// their pairs' d(h2) and dropped-unit corrections.
struct GroupBuf<T> {
    ids: Vec<u32>,
    /// n × Hh: scale·r_g.
    d1: Vec<T>,
    /// n × D: Σ over the group's pairs of d(h2).
    s: Vec<T>,
    /// n × Hh: Σ over the group's pairs of (W₄ᵀ d(h2))_t for each dropped unit t with r_t > 0.
    dcorr: Vec<T>,
    /// n × Hh: d(d1) summed over the kept units of the group's pairs.
    dd1: Vec<T>,
    cap: usize,
    hh: usize,
    dd: usize,
}

impl<T: Real> GroupBuf<T> {
    fn new(hh: usize, dd: usize, cap: usize) -> Self {
        let z = |k: usize| vec![T::ZERO; k];
        GroupBuf {
            ids: Vec::with_capacity(cap),
            d1: z(cap * hh),
            s: z(cap * dd),
            dcorr: z(cap * hh),
            dd1: z(cap * hh),
            cap,
            hh,
            dd,
        }
    }

    /// Start a group's sums (zeroed).
    fn push(&mut self, id: u32) {
        let (q, hh, dd) = (self.ids.len(), self.hh, self.dd);
        self.ids.push(id);
        self.s[q * dd..(q + 1) * dd].iter_mut().for_each(|v| *v = T::ZERO);
        self.dcorr[q * hh..(q + 1) * hh].iter_mut().for_each(|v| *v = T::ZERO);
    }

    /// The last group's d(h2) sum and corrections.
    fn last_mut(&mut self) -> (&mut [T], &mut [T]) {
        let (q, hh, dd) = (self.ids.len() - 1, self.hh, self.dd);
        (&mut self.s[q * dd..(q + 1) * dd], &mut self.dcorr[q * hh..(q + 1) * hh])
    }
}

/// Per group: W₄·(scale·r) (G × D), scale·r (G × Hh) and the units with r > 0 (G × ⌈Hh/64⌉ words).
#[derive(Clone, Debug, Default)]
pub struct GroupOut<T> {
    pub hg: Vec<T>,
    pub hr: Vec<T>,
    pub rpos: Vec<u64>,
}

impl<T> GroupOut<T> {
    fn row(&self, g: usize, hh: usize, dd: usize) -> GroupRow<'_, T> {
        let kw = hh.div_ceil(64);
        GroupRow {
            hg: &self.hg[g * dd..(g + 1) * dd],
            hr: &self.hr[g * hh..(g + 1) * hh],
            rpos: &self.rpos[g * kw..(g + 1) * kw],
        }
    }
}

/// One group's rows of [`GroupOut`].
#[derive(Clone, Copy)]
struct GroupRow<'a, T> {
    hg: &'a [T],
    hr: &'a [T],
    rpos: &'a [u64],
}

/// A group's pairs' d(h2) summed per dropped unit (Hh × D, only the `touched` units non-zero): what
/// the dropped units take from the group's W₄ gradient and d(d1), applied once per group by
/// [`DropSums::finish`] instead of once per pair.
struct DropSums<T> {
    sums: Vec<T>,
    touched: Vec<u64>,
}

impl<T: Real> DropSums<T> {
    fn new(hh: usize, dd: usize) -> Self {
        DropSums { sums: vec![T::ZERO; hh * dd], touched: vec![0; hh.div_ceil(64)] }
    }

    /// Adds a pair's d(h2) to each of its dropped units with r > 0.
    #[inline]
    fn add(&mut self, words: &[u64], rpos: &[u64], dh2: &[T]) {
        let dd = dh2.len();
        for (w, ((&word, &pos), tw)) in words.iter().zip(rpos).zip(self.touched.iter_mut()).enumerate() {
            let mut dropped = !word & pos;
            *tw |= dropped;
            while dropped != 0 {
                let t = w * 64 + dropped.trailing_zeros() as usize;
                dropped &= dropped - 1;
                let row = &mut self.sums[t * dd..(t + 1) * dd];
                for k in 0..dd {
                    row[k] += dh2[k];
                }
            }
        }
    }

    /// For each touched unit t with sum σ_t: ⟨W₄[:, t], σ_t⟩ into the group's d(d1) correction
    /// `dcorr` and (scale·r_t)·σ_t into the W₄ correction row t; then clears the sums.
    fn finish(&mut self, w4t: &[T], hr: &[T], dcorr: &mut [T], corr_w4t: &mut [T]) {
        let dd = w4t.len() / hr.len();
        for (w, tw) in self.touched.iter_mut().enumerate() {
            let mut bits = std::mem::take(tw);
            while bits != 0 {
                let t = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let row = &mut self.sums[t * dd..(t + 1) * dd];
                dcorr[t] += dot8(&w4t[t * dd..(t + 1) * dd], row);
                let (s, cw) = (hr[t], &mut corr_w4t[t * dd..(t + 1) * dd]);
                for k in 0..dd {
                    cw[k] += s * row[k];
                    row[k] = T::ZERO;
                }
            }
        }
    }
}

/// Backward accumulators of one work item (junctions j0 .. j0 + q.len()/Hh).
struct BwdAcc<T> {
    /// [R | be1 | W4 | b4 | g5 | be5] with R = Σ β·d(a1).
    small: Vec<T>,
    j0: usize,
    /// Per junction (Hh): Q_j = Σ α·d(a1).
    q: Vec<T>,
    /// Per junction: Σ ψβm₁, Σ ψβm₂α, Σ ψβm₂β, Σ βm₂α (m₁, m₂ the LayerNorm backward's two means).
    c: Vec<[f64; 4]>,
    /// Σ βm₁ and Σ βm₂β.
    e1: f64,
    e3: f64,
}

impl<T: Real> BwdAcc<T> {
    fn new(hh: usize, dd: usize, j0: usize, nj: usize) -> Self {
        BwdAcc {
            small: vec![T::ZERO; hh + hh + dd * hh + 3 * dd],
            j0,
            q: vec![T::ZERO; nj * hh],
            c: vec![[0.0; 4]; nj],
            e1: 0.0,
            e3: 0.0,
        }
    }
}

/// What a backward work item adds up for the input-0 group, whose pairs span every junction: the
/// d(h2) sum and the dropped-unit corrections (merged over items in item order, then one group
/// backward), and for every group the W₄ gradient of the dropped units (Hh × D, subtracted at the merge).
struct ItemSums<T> {
    acc: BwdAcc<T>,
    s0: Vec<T>,
    dcorr0: Vec<T>,
    corr_w4t: Vec<T>,
}

impl<T: Real> Net<'_, T> {
    /// Whether the h network's dropout acts in this pass.
    fn dropout_on(&self, mode: Mode) -> bool {
        mode.training && self.dropout > 0.0
    }

    /// Inverted-dropout scale of the kept units (1 without dropout).
    fn scale(&self, mode: Mode) -> T {
        if self.dropout_on(mode) {
            T::from_f64(1.0 / (1.0 - self.dropout))
        } else {
            T::ONE
        }
    }

    /// scale·ReLU(α·(g₁⊙ũ_j) + β·(g₁⊙b̃) + be₁), the folded first block of each group in `ids`, into
    /// the rows of `d1` (the same expression the dropped-unit corrections evaluate per unit).
    fn group_rows(&self, fold: &Fold<T>, groups: &Groups<T>, ids: &[u32], scale: T, d1: &mut [T]) {
        let hh = self.hh;
        let (bg, be1) = (&fold.bg[..hh], &self.be1[..hh]);
        for (q, &id) in ids.iter().enumerate() {
            let id = id as usize;
            let (a, b) = (T::from_f64(groups.table.alpha[id]), T::from_f64(groups.table.beta[id]));
            let row = &mut d1[q * hh..(q + 1) * hh];
            if groups.table.alpha[id] == 0.0 {
                // The input-0 group: α·ũ_j is +0 or −0 for every j, which leaves the sum's sign
                // and positive values unchanged.
                for t in 0..hh {
                    let v = b * bg[t] + be1[t];
                    row[t] = if v > T::ZERO { v * scale } else { T::ZERO };
                }
            } else {
                let ug = &fold.ug.row(groups.table.jn[id] as usize)[..hh];
                for t in 0..hh {
                    let v = a * ug[t] + (b * bg[t] + be1[t]);
                    row[t] = if v > T::ZERO { v * scale } else { T::ZERO };
                }
            }
        }
    }

    /// W₄·(scale·r_g) of every group (G × D, bias excluded).
    fn group_outputs(&self, fold: &Fold<T>, groups: &Groups<T>, scale: T) -> GroupOut<T> {
        let (hh, dd, ng) = (self.hh, self.dd, groups.len());
        let kw = hh.div_ceil(64);
        let mut out = GroupOut { hg: vec![T::ZERO; ng * dd], hr: vec![T::ZERO; ng * hh], rpos: vec![0u64; ng * kw] };
        out.hg
            .par_chunks_mut(MICRO * dd)
            .zip(out.hr.par_chunks_mut(MICRO * hh).zip(out.rpos.par_chunks_mut(MICRO * kw)))
            .enumerate()
            .for_each(|(ci, (hg, (hr, rpos)))| {
                let n = hg.len() / dd;
                let ids: Vec<u32> = (ci * MICRO..ci * MICRO + n).map(|g| g as u32).collect();
                self.group_rows(fold, groups, &ids, scale, hr);
                matmul_nt_serial(hr, n, hh, self.w4, dd, hg);
                // Word by word without a branch per unit (half of them are positive, unpredictably).
                for q in 0..n {
                    let row = &hr[q * hh..(q + 1) * hh];
                    for (w, units) in row.chunks(64).enumerate() {
                        let mut bits = 0u64;
                        for (i, &v) in units.iter().enumerate() {
                            bits |= ((v > T::ZERO) as u64) << i;
                        }
                        rpos[q * kw + w] = bits;
                    }
                }
            });
        out
    }

    /// The second Linear's output of one pair of group g: the group's W₄·(scale·r) plus the bias,
    /// less each dropped unit's share (scale·r_t)·W₄[:, t], for the units with r_t > 0 (`rpos`).
    #[inline]
    fn pair_h2(&self, g: GroupRow<'_, T>, words: &[u64], out: &mut [T]) {
        let dd = self.dd;
        let (out, hg, b4) = (&mut out[..dd], &g.hg[..dd], &self.b4[..dd]);
        for t in 0..dd {
            out[t] = hg[t] + b4[t];
        }
        for (w, (&word, &pos)) in words.iter().zip(g.rpos).enumerate() {
            let mut dropped = !word & pos;
            while dropped != 0 {
                let t = w * 64 + dropped.trailing_zeros() as usize;
                dropped &= dropped - 1;
                let s = g.hr[t];
                let col = &self.w4t[t * dd..(t + 1) * dd];
                for k in 0..dd {
                    out[k] -= s * col[k];
                }
            }
        }
    }

    /// The per-pair part of the backward: from x̂₂, 1/σ₂ and d(code), accumulates the g₅, be₅ and b₄
    /// gradients into `small` and writes d(h2).
    fn pair_bwd(&self, xh: &[T], inv2: T, dc: &[T], small: &mut [T], dh2: &mut [T]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { self.pair_bwd_avx512(xh, inv2, dc, small, dh2) };
        }
        self.pair_bwd_any(xh, inv2, dc, small, dh2)
    }

    /// [`Net::pair_bwd`] in 512-bit registers (a code row of 16 f32 is one): no FMA, so the same bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn pair_bwd_avx512(&self, xh: &[T], inv2: T, dc: &[T], small: &mut [T], dh2: &mut [T]) {
        self.pair_bwd_any(xh, inv2, dc, small, dh2)
    }

    #[inline(always)]
    fn pair_bwd_any(&self, xh: &[T], inv2: T, dc: &[T], small: &mut [T], dh2: &mut [T]) {
        let (hh, dd) = (self.hh, self.dd);
        let rest = &mut small[2 * hh + dd * hh..];
        let (sb4, rest) = rest.split_at_mut(dd);
        let (sg5, sbe5) = rest.split_at_mut(dd);
        // (Every slice cut to length dd first, so the loops carry no bounds checks and vectorise.)
        let (sg5, sbe5, sb4, g5, be5) =
            (&mut sg5[..dd], &mut sbe5[..dd], &mut sb4[..dd], &self.g5[..dd], &self.be5[..dd]);
        let (xh, dc, dh2) = (&xh[..dd], &dc[..dd], &mut dh2[..dd]);
        for t in 0..dd {
            let a2 = xh[t] * g5[t] + be5[t];
            let da = if a2 > T::ZERO { dc[t] } else { T::ZERO };
            sg5[t] += da * xh[t];
            sbe5[t] += da;
            dh2[t] = da * g5[t];
        }
        ln_row_bwd(xh, inv2, dh2);
        for t in 0..dd {
            sb4[t] += dh2[t];
        }
    }

    /// The backward of the groups in `gb` given their d(h2) sums and corrections: the W₄ gradient of
    /// their kept units, d(a1) of each group, and the folded first block's sums (see `Fold` and the
    /// unfold in [`partial_backward`]). d(a1) is linear in d(h2) with α, β and ψ fixed within a group,
    /// so one pass over the summed d(a1) does what one per pair would. `hr` holds the groups' scale·r
    /// rows as the forward computed them ([`GroupOut::hr`]); without it they are computed here. Empties
    /// `gb`.
    #[allow(clippy::too_many_arguments)]
    fn groups_bwd(
        &self,
        fold: &Fold<T>,
        groups: &Groups<T>,
        hr: Option<&[T]>,
        gb: &mut GroupBuf<T>,
        scale: T,
        dropout: bool,
        acc: &mut BwdAcc<T>,
    ) {
        let (hh, dd, n) = (self.hh, self.dd, gb.ids.len());
        if n == 0 {
            return;
        }
        match hr {
            Some(hr) => {
                for (q, &id) in gb.ids.iter().enumerate() {
                    gb.d1[q * hh..(q + 1) * hh].copy_from_slice(&hr[id as usize * hh..(id as usize + 1) * hh]);
                }
            }
            None => self.group_rows(fold, groups, &gb.ids, scale, &mut gb.d1),
        }
        let (sr, rest) = acc.small.split_at_mut(hh);
        let (sbe1, rest) = rest.split_at_mut(hh);
        let sw4 = &mut rest[..dd * hh];
        // W4 gradient (Sᵀ·d1, every unit counted as kept: the dropped ones are subtracted at the
        // merge) and d(d1) = S·W4 less the dropped units' share.
        unsafe {
            T::gemm_raw(
                dd,
                n,
                hh,
                T::ONE,
                gb.s.as_ptr(),
                1,
                dd as isize,
                gb.d1.as_ptr(),
                hh as isize,
                1,
                T::ONE,
                sw4.as_mut_ptr(),
                hh as isize,
                1,
            );
            T::gemm_raw(
                n,
                dd,
                hh,
                T::ONE,
                gb.s.as_ptr(),
                dd as isize,
                1,
                self.w4.as_ptr(),
                hh as isize,
                1,
                T::ZERO,
                gb.dd1.as_mut_ptr(),
                hh as isize,
                1,
            );
        }
        if dropout {
            gb.dd1[..n * hh].iter_mut().zip(&gb.dcorr[..n * hh]).for_each(|(d, &c)| *d -= c);
        }
        let inv_h = 1.0 / hh as f64;
        for (q, &id) in gb.ids.iter().enumerate() {
            let id = id as usize;
            let jj = groups.table.jn[id] as usize;
            let (al, be) = (groups.table.alpha[id], groups.table.beta[id]);
            let (a, b) = (T::from_f64(al), T::from_f64(be));
            // (The input-0 group adds nothing to any junction's sums, α = ψ = 0: it runs with a
            // one-junction scratch accumulator at junction 0 that the merge does not copy.)
            let jl = jj - acc.j0;
            let qj = &mut acc.q[jl * hh..(jl + 1) * hh];
            // d(a1) = d(d1)·scale·[r > 0] (d1 > 0 exactly when r > 0), its sums, and the three dot
            // products of the LayerNorm backward.
            let (d1r, dd1) = (&gb.d1[q * hh..(q + 1) * hh], &gb.dd1[q * hh..(q + 1) * hh]);
            let ug = if al == 0.0 { &fold.bg[..] } else { fold.ug.row(jj) };
            let dots = fused_a1_backward(d1r, dd1, scale, a, b, [self.g1, ug, &fold.bg], sbe1, sr, qj);
            // LayerNorm backward means of d(x̂) = g₁⊙d(a1): m₁ = mean(d x̂), m₂ = mean(d x̂ ⊙ x̂).
            let m1 = dots[0].to_f64() * inv_h;
            let m2 = (al * dots[1].to_f64() + be * dots[2].to_f64()) * inv_h;
            let psi = groups.table.psi[id].to_f64();
            let c = &mut acc.c[jl];
            c[0] += psi * be * m1;
            c[1] += psi * be * m2 * al;
            c[2] += psi * be * m2 * be;
            c[3] += be * m2 * al;
            acc.e1 += be * m1;
            acc.e3 += be * m2 * be;
        }
        gb.ids.clear();
    }

    /// The code of every group (G × D) from its second-Linear output `hg` when no unit is dropped.
    fn group_codes(&self, hg: &[T]) -> Vec<T> {
        let dd = self.dd;
        let (b4, g5, be5) = (&self.b4[..dd], &self.g5[..dd], &self.be5[..dd]);
        let mut codes = vec![T::ZERO; hg.len()];
        codes.par_chunks_mut(dd).zip(hg.par_chunks(dd)).for_each(|(code, h)| {
            let h2: Vec<T> = (0..dd).map(|t| h[t] + b4[t]).collect();
            let mut xh = vec![T::ZERO; dd];
            ln_row(&h2, &mut xh);
            for t in 0..dd {
                let a = xh[t] * g5[t] + be5[t];
                code[t] = if a > T::ZERO { a } else { T::ZERO };
            }
        });
        codes
    }

    /// The reference code h(0): the code of input 0 without dropout.
    fn reference_code(&self, fold: &Fold<T>, groups: &Groups<T>) -> Vec<T> {
        let h2 = self.reference_h2(fold, groups);
        let mut xh = vec![T::ZERO; self.dd];
        ln_row(&h2, &mut xh);
        xh.iter()
            .zip(self.g5)
            .zip(self.be5)
            .map(|((&x, &g), &b)| {
                let a = x * g + b;
                if a > T::ZERO {
                    a
                } else {
                    T::ZERO
                }
            })
            .collect()
    }

    /// The second Linear's output (with bias) of the reference pair ψ = 0 without dropout.
    fn reference_h2(&self, fold: &Fold<T>, groups: &Groups<T>) -> Vec<T> {
        let (hh, dd) = (self.hh, self.dd);
        let mut d1 = vec![T::ZERO; hh];
        self.group_rows(fold, groups, &[0], T::ONE, &mut d1);
        let mut h2 = vec![T::ZERO; dd];
        matmul_nt_serial(&d1, 1, hh, self.w4, dd, &mut h2);
        h2.iter_mut().zip(self.b4).for_each(|(v, &b)| *v += b);
        h2
    }
}

/// d(a1) = d(d1)·scale·[d1 > 0] of one pair (d1 > 0 exactly when a1 > 0 and the unit was kept), added
/// to Σ d(a1) (`sbe1`), Σ β·d(a1) (`sr`) and the junction's Σ α·d(a1) (`qj`); returns ⟨d(a1), v⟩ for the
/// three vectors `v`, each summed exactly as [`super::real::dot8`] sums (eight lanes, then the same combination), so
/// the result is bit-identical to separate passes.
///
/// Compiled twice: for x86-64's baseline (SSE2, four f32 lanes) and for AVX2 (eight), picked at run
/// time. Each lane does the same operations in the same order either way (no FMA contraction), so
/// both give the same bits.
#[allow(clippy::too_many_arguments)]
#[inline]
fn fused_a1_backward<T: Real>(
    d1r: &[T],
    dd1: &[T],
    scale: T,
    a: T,
    b: T,
    v: [&[T]; 3],
    sbe1: &mut [T],
    sr: &mut [T],
    qj: &mut [T],
) -> [T; 3] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { fused_a1_backward_avx2(d1r, dd1, scale, a, b, v, sbe1, sr, qj) };
    }
    fused_a1_backward_any(d1r, dd1, scale, a, b, v, sbe1, sr, qj)
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
unsafe fn fused_a1_backward_avx2<T: Real>(
    d1r: &[T],
    dd1: &[T],
    scale: T,
    a: T,
    b: T,
    v: [&[T]; 3],
    sbe1: &mut [T],
    sr: &mut [T],
    qj: &mut [T],
) -> [T; 3] {
    fused_a1_backward_any(d1r, dd1, scale, a, b, v, sbe1, sr, qj)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fused_a1_backward_any<T: Real>(
    d1r: &[T],
    dd1: &[T],
    scale: T,
    a: T,
    b: T,
    v: [&[T]; 3],
    sbe1: &mut [T],
    sr: &mut [T],
    qj: &mut [T],
) -> [T; 3] {
    let hh = d1r.len();
    let (d1r, dd1, sbe1, sr, qj) = (&d1r[..hh], &dd1[..hh], &mut sbe1[..hh], &mut sr[..hh], &mut qj[..hh]);
    let (v0, v1, v2) = (&v[0][..hh], &v[1][..hh], &v[2][..hh]);
    let mut acc = [[T::ZERO; 8]; 3];
    let n8 = hh / 8 * 8;
    // Fixed-size blocks of eight: no bounds checks, so the loop body vectorises.
    let block = |x: &[T], c: usize| -> [T; 8] { x[c..c + 8].try_into().unwrap() };
    for c in (0..n8).step_by(8) {
        let (x, g, w0, w1, w2) = (block(d1r, c), block(dd1, c), block(v0, c), block(v1, c), block(v2, c));
        let (mut s1, mut s2, mut s3) = (block(sbe1, c), block(sr, c), block(qj, c));
        for l in 0..8 {
            let d = if x[l] > T::ZERO { g[l] * scale } else { T::ZERO };
            s1[l] += d;
            s2[l] += b * d;
            s3[l] += a * d;
            acc[0][l] += d * w0[l];
            acc[1][l] += d * w1[l];
            acc[2][l] += d * w2[l];
        }
        sbe1[c..c + 8].copy_from_slice(&s1);
        sr[c..c + 8].copy_from_slice(&s2);
        qj[c..c + 8].copy_from_slice(&s3);
    }
    let mut rest = [T::ZERO; 3];
    for t in n8..hh {
        let d = if d1r[t] > T::ZERO { dd1[t] * scale } else { T::ZERO };
        sbe1[t] += d;
        sr[t] += b * d;
        qj[t] += a * d;
        rest[0] += d * v0[t];
        rest[1] += d * v1[t];
        rest[2] += d * v2[t];
    }
    [fold8(&acc[0], rest[0]), fold8(&acc[1], rest[1]), fold8(&acc[2], rest[2])]
}

/// Single-threaded GEMM (the callers already run in parallel): y[n×m] = x[n×k]·wᵀ (w is m×k).
fn matmul_nt_serial<T: Real>(x: &[T], n: usize, k: usize, w: &[T], m: usize, y: &mut [T]) {
    if n == 0 {
        return;
    }
    unsafe {
        T::gemm_raw(
            n,
            k,
            m,
            T::ONE,
            x.as_ptr(),
            k as isize,
            1,
            w.as_ptr(),
            1,
            k as isize,
            T::ZERO,
            y.as_mut_ptr(),
            m as isize,
            1,
        )
    }
}

fn net<'a, T: Real>(pe: &PartialEncP, p: &'a Params<T>) -> Net<'a, T> {
    let (hh, dd) = (pe.h_hidden, pe.code_dim);
    let w4 = p.get(pe.h4.w);
    let mut w4t = vec![T::ZERO; hh * dd];
    for k in 0..dd {
        for t in 0..hh {
            w4t[t * dd + k] = w4[k * hh + t];
        }
    }
    Net {
        g1: p.get(pe.ln1_w),
        be1: p.get(pe.ln1_b),
        w4,
        b4: p.get(pe.h4.b.unwrap()),
        g5: p.get(pe.ln5_w),
        be5: p.get(pe.ln5_b),
        w4t,
        hh,
        dd,
        dropout: pe.dropout,
    }
}

/// W₀[:, 1:] as a contiguous Hh × D matrix.
fn w0_tail<T: Real>(pe: &PartialEncP, p: &Params<T>) -> Vec<T> {
    let (hh, dd) = (pe.h_hidden, pe.code_dim);
    let w0 = p.get(pe.h0.w);
    let mut out = vec![T::ZERO; hh * dd];
    for t in 0..hh {
        out[t * dd..(t + 1) * dd].copy_from_slice(&w0[t * (dd + 1) + 1..(t + 1) * (dd + 1)]);
    }
    out
}

/// Runs of whole rows of a CSR-like pointer array with about `size` entries each (at least one row).
fn work_items(ptr: &[usize], size: usize) -> Vec<(usize, usize)> {
    let rows = ptr.len() - 1;
    let mut items = Vec::new();
    let mut start = 0;
    while start < rows {
        let mut end = start + 1;
        while end < rows && ptr[end + 1] - ptr[start] <= size {
            end += 1;
        }
        items.push((start, end));
        start = end;
    }
    items
}

/// Pooled codes P (B × D) of the observed pairs of a minibatch.
pub fn partial_forward<T: Real>(pe: &PartialEncP, p: &Params<T>, spl: &SplBatch, mode: Mode) -> PartialCache<T> {
    let (hh, dd) = (pe.h_hidden, pe.code_dim);
    let j = spl.n_junctions;
    let b = spl.n_cells();
    // F̂ and u
    let emb = p.get(pe.emb);
    let mut fhat = Mat::zeros(j, dd);
    let mut fnorm = vec![T::ZERO; j];
    for jj in 0..j {
        let row = &emb[jj * dd..(jj + 1) * dd];
        let nrm = row.iter().map(|&v| v * v).sum::<T>().sqrt();
        fnorm[jj] = nrm;
        let den = nrm.max(T::from_f64(NORM_EPS));
        for (o, &v) in fhat.row_mut(jj).iter_mut().zip(row) {
            *o = v / den;
        }
    }
    let w0t = w0_tail(pe, p);
    let mut u = Mat::zeros(j, hh);
    matmul_nt(&fhat.data, j, dd, &w0t, hh, &mut u.data, T::ZERO);
    let w0 = p.get(pe.h0.w);
    u.data.par_chunks_mut(hh).for_each(|row| {
        for t in 0..hh {
            row[t] += w0[t * (dd + 1)];
        }
    });

    let nt = net(pe, p);
    let fold = Fold::new(&u, p.get(pe.h0.b.unwrap()), nt.g1);
    drop(u);

    let counts: Vec<usize> = (0..b).map(|c| spl.indptr[c + 1] - spl.indptr[c]).collect();
    let psi_t = pair_inputs(pe, p, spl);
    let groups = Groups::build(spl, &psi_t, &fold);
    let dropout = nt.dropout_on(mode);
    let scale = nt.scale(mode);
    let go = nt.group_outputs(&fold, &groups, scale);

    let nnz = spl.nnz();
    let (mut pool, keep, stash) = if mode.training {
        // Work items: runs of whole junctions, walked in the backward's order so that every per-pair
        // array is read and written in sequence. Each item pools into its own B × D sums, added in item
        // order; items of at least 8·B pairs bound those sums to half a value per pair.
        let items = work_items(&groups.jptr, ITEM_PAIRS.max(8 * b));
        let kw = hh.div_ceil(64);
        // Mask index space: pair·Hh_pad + t with Hh_pad a multiple of 4 (4 decisions per hash).
        let hh_pad = hh.div_ceil(4) * 4;
        let ds = rng::DropStream::new(mode.seed, rng::streams::PARTIAL_H, nt.dropout);
        // Only a training pass is followed by a backward.
        let stashed = nnz * (dd + 1) * std::mem::size_of::<T>() <= STASH_MAX_BYTES;
        // Each work item writes its own positions' stash rows: disjoint slices that together cover the
        // buffer, so it is not zeroed first (16.5 MB at `small`).
        let stash_len = if stashed { nnz * (dd + 1) } else { 0 };
        let mut stash: Vec<T> = Vec::with_capacity(stash_len);
        let mut stash_parts = Vec::with_capacity(items.len());
        let mut stash_rest = &mut stash.spare_capacity_mut()[..stash_len];
        for &(j0, j1) in &items {
            let pairs = groups.jptr[j1] - groups.jptr[j0];
            let (st, sr) = std::mem::take(&mut stash_rest).split_at_mut(if stashed { pairs * (dd + 1) } else { 0 });
            stash_parts.push(st);
            stash_rest = sr;
        }
        // (What the set_len below relies on: the items' slices cover the buffer.)
        assert!(stash_rest.is_empty(), "partial encoder work items do not cover every pair");
        // The keep bits are hashed in pair order, a micro-chunk of consecutive pairs per call (one call
        // per pair would cost more than the rest of the pair's work), then copied to positions.
        let mut by_pair = vec![0u64; if dropout { nnz * kw } else { 0 }];
        by_pair.par_chunks_mut(MICRO * kw).enumerate().for_each(|(ci, out)| {
            let (s, n) = (ci * MICRO, out.len() / kw);
            if hh % 64 == 0 {
                // Consecutive pairs of exactly kw words each: one call.
                ds.fill_bits((s * hh_pad) as u64, n * hh, out);
            } else {
                for q in 0..n {
                    ds.fill_bits(((s + q) * hh_pad) as u64, hh, &mut out[q * kw..(q + 1) * kw]);
                }
            }
        });
        // Then gathered into position order in a loop of their own: a random read per pair, which the
        // walk below would stall on, while here many are in flight at once (it matters at `medium`,
        // where the words outgrow the caches). Every chunk writes all its words, so no zeroing first.
        let keep_len = if dropout { nnz * kw } else { 0 };
        let mut keep: Vec<u64> = Vec::with_capacity(keep_len);
        keep.spare_capacity_mut()[..keep_len].par_chunks_mut(MICRO * kw.max(1)).enumerate().for_each(|(ci, out)| {
            for (q, slot) in out.chunks_mut(kw).enumerate() {
                let e = groups.order[ci * MICRO + q] as usize;
                // (Word by word: a copy of one word is a memcpy call.)
                for k in 0..kw {
                    slot[k].write(by_pair[e * kw + k]);
                }
            }
        });
        // SAFETY: the chunks cover the first keep_len words and each wrote every one of its words.
        unsafe { keep.set_len(keep_len) };
        drop(by_pair);
        let (g5, be5) = (&nt.g5[..dd], &nt.be5[..dd]);
        let pooled: Vec<Vec<T>> = items
            .par_iter()
            .zip(stash_parts.into_par_iter())
            .map(|(&(j0, j1), st)| {
                let mut acc = vec![T::ZERO; b * dd];
                let (mut h2, mut xh) = (vec![T::ZERO; dd], vec![T::ZERO; dd]);
                let p0 = groups.jptr[j0];
                for p in groups.jptr[j0]..groups.jptr[j1] {
                    let id = groups.gid_at[p] as usize;
                    let w: &[u64] = if dropout { &keep[p * kw..(p + 1) * kw] } else { &[] };
                    nt.pair_h2(go.row(id, hh, dd), w, &mut h2);
                    let inv2 = ln_row(&h2, &mut xh);
                    let cell = groups.cell_at[p] as usize;
                    let dst = &mut acc[cell * dd..(cell + 1) * dd];
                    for t in 0..dd {
                        let a = xh[t] * g5[t] + be5[t];
                        dst[t] += if a > T::ZERO { a } else { T::ZERO };
                    }
                    if stashed {
                        let row = &mut st[(p - p0) * (dd + 1)..(p - p0 + 1) * (dd + 1)];
                        for t in 0..dd {
                            row[t].write(xh[t]);
                        }
                        row[dd].write(inv2);
                    }
                }
                acc
            })
            .collect();
        let mut pool = Mat::zeros(b, dd);
        for acc in &pooled {
            pool.data.iter_mut().zip(acc).for_each(|(a, &v)| *a += v);
        }
        drop(pooled);
        // SAFETY: the work items partition the positions 0..nnz (runs of whole junctions covering every
        // junction), and each wrote all dd + 1 stash values of each of its positions, so the first
        // stash_len elements are initialised.
        unsafe { stash.set_len(stash_len) };
        (pool, keep, stash)
    } else {
        // Without dropout every pair of a group has the group's code, so a cell's pool is the sum of
        // its pairs' group codes in pair order: the same bits whichever other cells share the batch.
        let codes = nt.group_codes(&go.hg);
        let mut of_pair = vec![0u32; nnz];
        for (&e, &g) in groups.order.iter().zip(&groups.gid_at) {
            of_pair[e as usize] = g;
        }
        let mut pool = Mat::zeros(b, dd);
        pool.data.par_chunks_mut(dd).enumerate().for_each(|(c, row)| {
            for &g in &of_pair[spl.indptr[c]..spl.indptr[c + 1]] {
                let code = &codes[g as usize * dd..(g as usize + 1) * dd];
                for t in 0..dd {
                    row[t] += code[t];
                }
            }
        });
        (pool, Vec::new(), Vec::new())
    };
    let h0 = pe.center.map(|_| {
        let h0 = nt.reference_code(&fold, &groups);
        for c in 0..b {
            let n = T::from_f64(counts[c] as f64);
            pool.row_mut(c).iter_mut().zip(&h0).for_each(|(v, &r)| *v -= n * r);
        }
        h0
    });
    let den = pool_divisors(pe, p, &counts);
    for c in 0..b {
        let n = den[c];
        if n != T::ONE {
            pool.row_mut(c).iter_mut().for_each(|v| *v /= n);
        }
    }
    PartialCache { pool, counts, fhat, fnorm, fold, den, h0, keep, stash, groups, go }
}

/// Per-pair inputs ψ (or ψ − ψ̄_j with `partial_center_psi`).
fn pair_inputs<T: Real>(pe: &PartialEncP, p: &Params<T>, spl: &SplBatch) -> Vec<T> {
    match pe.center {
        None => spl.psi.iter().map(|&v| T::from_f32(v)).collect(),
        Some(ci) => {
            let cen = p.get(ci);
            spl.psi.iter().zip(&spl.junction).map(|(&v, &j)| T::from_f32(v) - cen[j as usize]).collect()
        }
    }
}

/// Divisor of each cell's pooled sum: max(#obs, 1) for `mean`, the `pool_divisor` buffer for `fixed`,
/// 1 for `sum`.
fn pool_divisors<T: Real>(pe: &PartialEncP, p: &Params<T>, counts: &[usize]) -> Vec<T> {
    match (pe.divisor, pe.pool_mean) {
        (Some(di), _) => {
            let v = p.get(di)[0].max(T::from_f64(1e-6));
            vec![v; counts.len()]
        }
        (None, true) => counts.iter().map(|&n| T::from_f64(n.max(1) as f64)).collect(),
        (None, false) => vec![T::ONE; counts.len()],
    }
}

/// Backward from d(pool) (B × D): accumulates the gradients of the embedding and the h network.
pub fn partial_backward<T: Real>(
    pe: &PartialEncP,
    p: &Params<T>,
    spl: &SplBatch,
    cache: &PartialCache<T>,
    dpool: &Mat<T>,
    mode: Mode,
    g: &mut Grads<T>,
) {
    let (hh, dd) = (pe.h_hidden, pe.code_dim);
    let j = spl.n_junctions;
    let b = spl.n_cells();
    let nnz = spl.nnz();
    // d(code) per cell
    let mut dcell = dpool.clone();
    for c in 0..b {
        let n = cache.den[c];
        if n != T::ONE {
            dcell.row_mut(c).iter_mut().for_each(|v| *v /= n);
        }
    }
    let groups = &cache.groups;
    let micro = pe.chunk.clamp(1, MICRO);
    let items = work_items(&groups.jptr, ITEM_PAIRS);
    let nt = net(pe, p);
    let dropout = nt.dropout_on(mode);
    assert!(
        !dropout || nnz == 0 || !cache.keep.is_empty(),
        "partial_backward: dropout is on but the forward ran without it (no keep bits)"
    );
    let scale = nt.scale(mode);
    let kw = hh.div_ceil(64);
    let fold = &cache.fold;
    let stashed = !cache.stash.is_empty();
    let sums: Vec<ItemSums<T>> = items
        .par_iter()
        .map(|&(j0, j1)| {
            let mut acc = BwdAcc::new(hh, dd, j0, j1 - j0);
            let (mut s0, mut dcorr0) = (vec![T::ZERO; dd], vec![T::ZERO; hh]);
            let mut corr_w4t = vec![T::ZERO; if dropout { hh * dd } else { 0 }];
            let mut gb = GroupBuf::new(hh, dd, micro);
            // The dropped units' sums of the current group and of the input-0 group.
            let (mut drop_cur, mut drop0) = (DropSums::new(hh, dd), DropSums::new(hh, dd));
            let (mut h2, mut xbuf, mut dh2) = (vec![T::ZERO; dd], vec![T::ZERO; dd], vec![T::ZERO; dd]);
            let mut cur = u32::MAX;
            for p in groups.jptr[j0]..groups.jptr[j1] {
                let id = groups.gid_at[p];
                let g = cache.go.row(id as usize, hh, dd);
                let words: &[u64] = if dropout { &cache.keep[p * kw..(p + 1) * kw] } else { &[] };
                let (xh, inv2): (&[T], T) = if stashed {
                    let row = &cache.stash[p * (dd + 1)..(p + 1) * (dd + 1)];
                    (&row[..dd], row[dd])
                } else {
                    nt.pair_h2(g, words, &mut h2);
                    let inv2 = ln_row(&h2, &mut xbuf);
                    (&xbuf, inv2)
                };
                nt.pair_bwd(xh, inv2, dcell.row(groups.cell_at[p] as usize), &mut acc.small, &mut dh2);
                if id == 0 {
                    for t in 0..dd {
                        s0[t] += dh2[t];
                    }
                    if dropout {
                        drop0.add(words, g.rpos, &dh2);
                    }
                    continue;
                }
                if id != cur {
                    if cur != u32::MAX && dropout {
                        let hr = cache.go.row(cur as usize, hh, dd).hr;
                        drop_cur.finish(&nt.w4t, hr, gb.last_mut().1, &mut corr_w4t);
                    }
                    if gb.ids.len() == gb.cap {
                        nt.groups_bwd(fold, groups, Some(&cache.go.hr), &mut gb, scale, dropout, &mut acc);
                    }
                    gb.push(id);
                    cur = id;
                }
                let srow = gb.last_mut().0;
                for t in 0..dd {
                    srow[t] += dh2[t];
                }
                if dropout {
                    drop_cur.add(words, g.rpos, &dh2);
                }
            }
            if cur != u32::MAX && dropout {
                let hr = cache.go.row(cur as usize, hh, dd).hr;
                drop_cur.finish(&nt.w4t, hr, gb.last_mut().1, &mut corr_w4t);
            }
            nt.groups_bwd(fold, groups, Some(&cache.go.hr), &mut gb, scale, dropout, &mut acc);
            if dropout {
                drop0.finish(&nt.w4t, cache.go.row(0, hh, dd).hr, &mut dcorr0, &mut corr_w4t);
            }
            ItemSums { acc, s0, dcorr0, corr_w4t }
        })
        .collect();
    // Merge in item order: [R | be1 | W4 | b4 | g5 | be5], Q_j, the per-junction and global scalars.
    let mut small = vec![T::ZERO; hh + hh + dd * hh + 3 * dd];
    let mut q = Mat::zeros(j, hh);
    let mut cj = vec![[0.0f64; 4]; j];
    let (mut e1, mut e3) = (0.0f64, 0.0f64);
    let (mut s0, mut dcorr0, mut corr_w4t) = (vec![T::ZERO; dd], vec![T::ZERO; hh], vec![T::ZERO; hh * dd]);
    let mut merge = |acc: &BwdAcc<T>, small: &mut Vec<T>, with_junctions: bool| {
        small.iter_mut().zip(&acc.small).for_each(|(a, &v)| *a += v);
        e1 += acc.e1;
        e3 += acc.e3;
        if with_junctions {
            q.data[acc.j0 * hh..acc.j0 * hh + acc.q.len()].copy_from_slice(&acc.q);
            cj[acc.j0..acc.j0 + acc.c.len()].copy_from_slice(&acc.c);
        }
    };
    for it in &sums {
        merge(&it.acc, &mut small, true);
        s0.iter_mut().zip(&it.s0).for_each(|(a, &v)| *a += v);
        dcorr0.iter_mut().zip(&it.dcorr0).for_each(|(a, &v)| *a += v);
        corr_w4t.iter_mut().zip(&it.corr_w4t).for_each(|(a, &v)| *a += v);
    }
    drop(sums);
    // The dropped units' share of the W4 gradient, counted as kept in the groups' outer products.
    if dropout {
        let sw4 = &mut small[2 * hh..2 * hh + dd * hh];
        for t in 0..hh {
            for k in 0..dd {
                sw4[k * hh + t] -= corr_w4t[t * dd + k];
            }
        }
    }
    // The input-0 group, whose pairs every item saw.
    if groups.n_zero > 0 {
        let mut gb = GroupBuf::new(hh, dd, 1);
        gb.push(0);
        let (sr, dc) = gb.last_mut();
        sr.copy_from_slice(&s0);
        dc.copy_from_slice(&dcorr0);
        let mut acc = BwdAcc::new(hh, dd, 0, 1);
        nt.groups_bwd(fold, groups, Some(&cache.go.hr), &mut gb, scale, dropout, &mut acc);
        merge(&acc, &mut small, false);
    }
    // The reference code: pool_i −= n_i · h(0), so d h(0) = −Σ_i n_i · dcell_i. Its pair has ψ = 0 and
    // no dropout, so it adds nothing to Q_j or the per-junction scalars.
    if cache.h0.is_some() {
        let mut dh0 = vec![T::ZERO; dd];
        for c in 0..b {
            let n = T::from_f64(cache.counts[c] as f64);
            dh0.iter_mut().zip(dcell.row(c)).for_each(|(a, &v)| *a -= n * v);
        }
        let h2 = nt.reference_h2(fold, groups);
        let mut xh = vec![T::ZERO; dd];
        let inv2 = ln_row(&h2, &mut xh);
        let mut acc = BwdAcc::new(hh, dd, 0, 1);
        let mut gb = GroupBuf::new(hh, dd, 1);
        gb.push(0);
        let (sr, _) = gb.last_mut();
        nt.pair_bwd(&xh, inv2, &dh0, &mut acc.small, sr);
        nt.groups_bwd(fold, groups, None, &mut gb, T::ONE, false, &mut acc);
        merge(&acc, &mut small, false);
    }
    // Unfold the first block (see `Fold`):
    //   d u_j = g₁⊙Q_j − Σψβm₁ − (Σψβm₂α)·ũ_j − (Σψβm₂β)·b̃
    //   d b₀  = g₁⊙R − Σβm₁ − Σ_j (Σβm₂α)_j·ũ_j − (Σβm₂β)·b̃
    //   d g₁  = Σ_j ũ_j⊙Q_j + b̃⊙R,   d be₁ = Σ d(a1)
    let g1 = nt.g1;
    let (sr, rest) = small.split_at(hh);
    let mut du = Mat::zeros(j, hh);
    du.data.par_chunks_mut(hh).enumerate().for_each(|(jj, row)| {
        let (qj, ut, c) = (q.row(jj), fold.ut.row(jj), &cj[jj]);
        for t in 0..hh {
            row[t] = T::from_f64(
                g1[t].to_f64() * qj[t].to_f64() - c[0] - c[1] * ut[t].to_f64() - c[2] * fold.bt[t].to_f64(),
            );
        }
    });
    let mut db0 = vec![0.0f64; hh];
    let mut dg1 = vec![0.0f64; hh];
    for jj in 0..j {
        let (qj, ut, c3) = (q.row(jj), fold.ut.row(jj), cj[jj][3]);
        for t in 0..hh {
            db0[t] -= c3 * ut[t].to_f64();
            dg1[t] += ut[t].to_f64() * qj[t].to_f64();
        }
    }
    for t in 0..hh {
        db0[t] += g1[t].to_f64() * sr[t].to_f64() - e1 - e3 * fold.bt[t].to_f64();
        dg1[t] += fold.bt[t].to_f64() * sr[t].to_f64();
    }
    let put = |idx: Option<usize>, vals: &mut dyn Iterator<Item = T>, g: &mut Grads<T>| {
        if let Some(idx) = idx {
            if let Some(sl) = g.slot(idx) {
                sl.iter_mut().zip(vals).for_each(|(a, v)| *a += v);
            }
        }
    };
    put(pe.h0.b, &mut db0.iter().map(|&v| T::from_f64(v)), g);
    put(Some(pe.ln1_w), &mut dg1.iter().map(|&v| T::from_f64(v)), g);
    let mut off = 0;
    let mut take = |len: usize| {
        let s = &rest[off..off + len];
        off += len;
        s
    };
    put(Some(pe.ln1_b), &mut take(hh).iter().copied(), g);
    put(Some(pe.h4.w), &mut take(dd * hh).iter().copied(), g);
    put(pe.h4.b, &mut take(dd).iter().copied(), g);
    put(Some(pe.ln5_w), &mut take(dd).iter().copied(), g);
    put(Some(pe.ln5_b), &mut take(dd).iter().copied(), g);

    // u_j = W₀[:,0] + W₀[:,1:]·F̂_j
    if let Some(gw0) = g.slot(pe.h0.w) {
        let mut tail = vec![T::ZERO; hh * dd];
        matmul_tn_acc(&du.data, j, hh, &cache.fhat.data, dd, &mut tail);
        for t in 0..hh {
            let mut s0 = T::ZERO;
            for jj in 0..j {
                s0 += du.data[jj * hh + t];
            }
            gw0[t * (dd + 1)] += s0;
            for c in 0..dd {
                gw0[t * (dd + 1) + 1 + c] += tail[t * dd + c];
            }
        }
    }
    if let Some(gemb) = g.slot(pe.emb) {
        let w0t = w0_tail(pe, p);
        let mut dfhat = Mat::zeros(j, dd);
        matmul_nn(&du.data, j, hh, &w0t, dd, &mut dfhat.data, T::ZERO);
        for jj in 0..j {
            let nrm = cache.fnorm[jj];
            let fh = cache.fhat.row(jj);
            let dfh = dfhat.row(jj);
            let dst = &mut gemb[jj * dd..(jj + 1) * dd];
            if nrm > T::from_f64(NORM_EPS) {
                let dot = fh.iter().zip(dfh).map(|(&a, &b)| a * b).sum::<T>();
                for c in 0..dd {
                    dst[c] += (dfh[c] - fh[c] * dot) / nrm;
                }
            } else {
                for c in 0..dd {
                    dst[c] += dfh[c] / T::from_f64(NORM_EPS);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Net;
    use rand::{Rng, SeedableRng};

    /// The AVX-512 instance of the per-pair backward against the portable one, bit for bit (the same
    /// operations in the same order, only in wider registers), on code widths that fill one register,
    /// part of one and more than one.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn pair_bwd_avx512_is_the_portable_instance_bit_for_bit() {
        if !std::is_x86_feature_detected!("avx512f") {
            println!("SKIPPED: this CPU has no AVX-512F");
            return;
        }
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (hh, dd) in [(64, 16), (32, 7), (40, 37)] {
            let mut v = |n: usize| (0..n).map(|_| r.gen_range(-2.0..2.0f32)).collect::<Vec<f32>>();
            let (be1, g1, w4, b4, g5, be5) = (v(hh), v(hh), v(dd * hh), v(dd), v(dd), v(dd));
            let w4t = v(hh * dd);
            let nt = Net { be1: &be1, g1: &g1, w4: &w4, b4: &b4, g5: &g5, be5: &be5, w4t, hh, dd, dropout: 0.1 };
            for _ in 0..50 {
                let (xh, dc, small0) = (v(dd), v(dd), v(2 * hh + dd * hh + 3 * dd));
                let inv2 = v(1)[0].abs() + 0.1;
                let (mut s1, mut s2) = (small0.clone(), small0.clone());
                let (mut d1, mut d2) = (vec![f32::NAN; dd], vec![f32::NAN; dd]);
                nt.pair_bwd_any(&xh, inv2, &dc, &mut s1, &mut d1);
                // SAFETY: the CPU supports AVX-512F (checked above).
                unsafe { nt.pair_bwd_avx512(&xh, inv2, &dc, &mut s2, &mut d2) };
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
                assert_eq!(bits(&d1), bits(&d2), "d(h2), Hh {hh}, D {dd}");
                assert_eq!(bits(&s1), bits(&s2), "accumulators, Hh {hh}, D {dd}");
                assert!(d1.iter().all(|x| x.is_finite()), "d(h2) not written");
            }
        }
    }
}
