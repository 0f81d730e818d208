//! The partial splicing encoder's per-pair network and pooling (model.md §2.5 steps 1–6).
//!
//! Per observed pair (i, j): t = [ψ, ψ·F̂_j]; the first Linear is factored as
//! W₀t + b₀ = ψ·u_j + b₀ with u_j = W₀[:,0] + W₀[:,1:]·F̂_j computed once per junction per step.
//! Then LayerNorm(affine) → ReLU → dropout → Linear → LayerNorm(affine) → ReLU gives the code c_ij,
//! pooled per cell (sum or mean). Per-pair activations are never stored: the backward pass recomputes
//! them chunk by chunk, walking the pairs junction by junction so that each junction's gradient is
//! owned by one work item (deterministic, no atomics).

use super::arch::PartialEncP;
use super::batch::SplBatch;
use super::ops::{ln_row, ln_row_bwd, Mode};
use super::params::{Grads, Params};
use super::real::Real;
use super::rng;
use super::tensor::{matmul_nn, matmul_nt, matmul_tn_acc, Mat};
use rayon::prelude::*;

const NORM_EPS: f64 = 1e-8;

/// What the forward keeps: the pooled codes and the per-junction quantities.
#[derive(Clone, Debug)]
pub struct PartialCache<T> {
    /// B × D pooled codes (input of the post-pooling MLP).
    pub pool: Mat<T>,
    /// Observed pairs per cell.
    pub counts: Vec<usize>,
    /// J × D row-normalised embedding and the row norms.
    pub fhat: Mat<T>,
    pub fnorm: Vec<T>,
    /// J × Hh: u_j.
    pub u: Mat<T>,
    /// Divisor of each cell's pooled sum (1 for `sum`).
    pub den: Vec<T>,
    /// `partial_center_psi`: the reference code h(0) (D), subtracted once per observed pair.
    pub h0: Option<Vec<T>>,
}

struct Net<'a, T> {
    b0: &'a [T],
    g1: &'a [T],
    be1: &'a [T],
    w4: &'a [T],
    b4: &'a [T],
    g5: &'a [T],
    be5: &'a [T],
    hh: usize,
    dd: usize,
    dropout: f64,
}

/// Pairs per work item (fixed, so the reduction order never depends on the thread count).
const ITEM_PAIRS: usize = 32768;
/// Pairs per micro-chunk: the activations of a micro-chunk stay in cache.
const MICRO: usize = 256;

/// Activations of a micro-chunk of pairs (buffers reused across micro-chunks).
#[derive(Default)]
struct Scratch<T> {
    h1: Vec<T>,
    xhat1: Vec<T>,
    inv1: Vec<T>,
    a1: Vec<T>,
    /// Post-ReLU, post-dropout (input of the second Linear).
    d1: Vec<T>,
    mask1: Vec<T>,
    h2: Vec<T>,
    xhat2: Vec<T>,
    inv2: Vec<T>,
    a2: Vec<T>,
    /// Codes c (n × D).
    c: Vec<T>,
    dh2: Vec<T>,
    dd1: Vec<T>,
    pairs: Vec<usize>,
    psi: Vec<T>,
    jn: Vec<u32>,
}

impl<T: Real> Scratch<T> {
    fn new(hh: usize, dd: usize, n: usize) -> Self {
        let z = |k: usize| vec![T::ZERO; k];
        Scratch {
            h1: z(hh),
            xhat1: z(n * hh),
            inv1: z(n),
            a1: z(n * hh),
            d1: z(n * hh),
            mask1: z(n * hh),
            h2: z(n * dd),
            xhat2: z(n * dd),
            inv2: z(n),
            a2: z(n * dd),
            c: z(n * dd),
            dh2: z(n * dd),
            dd1: z(n * hh),
            pairs: Vec::with_capacity(n),
            psi: Vec::with_capacity(n),
            jn: Vec::with_capacity(n),
        }
    }
}

impl<T: Real> Net<'_, T> {
    /// Forward for the micro-chunk in `sc.pairs / sc.psi / sc.jn` (global pair ids are used for the
    /// dropout stream); leaves the codes in `sc.c` and the activations in `sc`.
    fn chunk_fwd(&self, u: &Mat<T>, mode: Mode, sc: &mut Scratch<T>) {
        let (hh, dd, n) = (self.hh, self.dd, sc.pairs.len());
        let dropout = mode.training && self.dropout > 0.0;
        let scale = T::from_f64(1.0 / (1.0 - self.dropout));
        let ds = rng::DropStream::new(mode.seed, rng::streams::PARTIAL_H, self.dropout);
        // Mask index space: pair·Hh_pad + t with Hh_pad a multiple of 4 (4 decisions per hash).
        let hh_pad = hh.div_ceil(4) * 4;
        for q in 0..n {
            let ur = u.row(sc.jn[q] as usize);
            let psi = sc.psi[q];
            for t in 0..hh {
                sc.h1[t] = psi * ur[t] + self.b0[t];
            }
            let xh = &mut sc.xhat1[q * hh..(q + 1) * hh];
            sc.inv1[q] = ln_row(&sc.h1, xh);
            let a1r = &mut sc.a1[q * hh..(q + 1) * hh];
            let d1r = &mut sc.d1[q * hh..(q + 1) * hh];
            for t in 0..hh {
                let a = xh[t] * self.g1[t] + self.be1[t];
                a1r[t] = a;
                d1r[t] = if a > T::ZERO { a } else { T::ZERO };
            }
            if dropout {
                let mr = &mut sc.mask1[q * hh..(q + 1) * hh];
                ds.fill_mask((sc.pairs[q] * hh_pad) as u64, scale, mr);
                for (d, &m) in d1r.iter_mut().zip(mr.iter()) {
                    *d *= m;
                }
            }
        }
        matmul_nt_serial(&sc.d1[..n * hh], n, hh, self.w4, dd, &mut sc.h2[..n * dd]);
        for q in 0..n {
            let row = &mut sc.h2[q * dd..(q + 1) * dd];
            for t in 0..dd {
                row[t] += self.b4[t];
            }
            sc.inv2[q] = ln_row(row, &mut sc.xhat2[q * dd..(q + 1) * dd]);
            for t in 0..dd {
                let a = sc.xhat2[q * dd + t] * self.g5[t] + self.be5[t];
                sc.a2[q * dd + t] = a;
                sc.c[q * dd + t] = if a > T::ZERO { a } else { T::ZERO };
            }
        }
    }

    /// Backward for the micro-chunk whose forward activations are in `sc` (call `chunk_fwd` first), given
    /// d(code) of pair q as `dcode(q)`. Accumulates the small parameters' gradients into `small`
    /// ([b0 | g1 | be1 | W4 | b4 | g5 | be5]) and leaves d(h1) (the first Linear's output) of pair q in
    /// `sc.dd1[q·Hh..]`, from which the caller takes d(u_j) = ψ · d(h1).
    fn chunk_bwd<'c>(&self, mode: Mode, sc: &mut Scratch<T>, dcode: impl Fn(usize) -> &'c [T], small: &mut [T])
    where
        T: 'c,
    {
        // (`sc.pairs` may be moved out by the caller; `sc.psi` holds one value per pair.)
        let (hh, dd, n) = (self.hh, self.dd, sc.psi.len());
        let (sb0, rest) = small.split_at_mut(hh);
        let (sg1, rest) = rest.split_at_mut(hh);
        let (sbe1, rest) = rest.split_at_mut(hh);
        let (sw4, rest) = rest.split_at_mut(dd * hh);
        let (sb4, rest) = rest.split_at_mut(dd);
        let (sg5, sbe5) = rest.split_at_mut(dd);
        // d(a2) = dcode · [a2 > 0]; LN5 affine; LN5 backward → dh2
        for q in 0..n {
            let dc = dcode(q);
            let row = &mut sc.dh2[q * dd..(q + 1) * dd];
            for t in 0..dd {
                let a = sc.a2[q * dd + t];
                let da = if a > T::ZERO { dc[t] } else { T::ZERO };
                sg5[t] += da * sc.xhat2[q * dd + t];
                sbe5[t] += da;
                row[t] = da * self.g5[t];
            }
            ln_row_bwd(&sc.xhat2[q * dd..(q + 1) * dd], sc.inv2[q], row);
            for t in 0..dd {
                sb4[t] += row[t];
            }
        }
        // W4 gradient (dh2ᵀ·d1) and d(d1) = dh2·W4
        unsafe {
            T::gemm_raw(dd, n, hh, T::ONE, sc.dh2.as_ptr(), 1, dd as isize, sc.d1.as_ptr(), hh as isize, 1, T::ONE, sw4.as_mut_ptr(), hh as isize, 1);
            T::gemm_raw(n, dd, hh, T::ONE, sc.dh2.as_ptr(), dd as isize, 1, self.w4.as_ptr(), hh as isize, 1, T::ZERO, sc.dd1.as_mut_ptr(), hh as isize, 1);
        }
        let drop = mode.training && self.dropout > 0.0;
        for q in 0..n {
            let row = &mut sc.dd1[q * hh..(q + 1) * hh];
            for t in 0..hh {
                let k = q * hh + t;
                let mut v = row[t];
                if drop {
                    v *= sc.mask1[k];
                }
                let da = if sc.a1[k] > T::ZERO { v } else { T::ZERO };
                sg1[t] += da * sc.xhat1[k];
                sbe1[t] += da;
                row[t] = da * self.g1[t];
            }
            ln_row_bwd(&sc.xhat1[q * hh..(q + 1) * hh], sc.inv1[q], row);
            for t in 0..hh {
                sb0[t] += row[t];
            }
        }
    }

    /// The reference code h(0) (ψ = 0, so the junction does not matter), without dropout; the
    /// activations stay in `sc` for `chunk_bwd`.
    fn reference_fwd(&self, u: &Mat<T>, sc: &mut Scratch<T>) -> Vec<T> {
        sc.pairs.clear();
        sc.pairs.push(0);
        sc.psi.clear();
        sc.psi.push(T::ZERO);
        sc.jn.clear();
        sc.jn.push(0);
        self.chunk_fwd(u, Mode { training: false, seed: 0 }, sc);
        sc.c[..self.dd].to_vec()
    }
}

/// Single-threaded GEMM (the callers already run in parallel): y[n×m] = x[n×k]·wᵀ (w is m×k).
fn matmul_nt_serial<T: Real>(x: &[T], n: usize, k: usize, w: &[T], m: usize, y: &mut [T]) {
    if n == 0 {
        return;
    }
    unsafe {
        T::gemm_raw(n, k, m, T::ONE, x.as_ptr(), k as isize, 1, w.as_ptr(), 1, k as isize, T::ZERO, y.as_mut_ptr(), m as isize, 1)
    }
}

fn net<'a, T: Real>(pe: &PartialEncP, p: &'a Params<T>) -> Net<'a, T> {
    Net {
        b0: p.get(pe.h0.b.unwrap()),
        g1: p.get(pe.ln1_w),
        be1: p.get(pe.ln1_b),
        w4: p.get(pe.h4.w),
        b4: p.get(pe.h4.b.unwrap()),
        g5: p.get(pe.ln5_w),
        be5: p.get(pe.ln5_b),
        hh: pe.h_hidden,
        dd: pe.code_dim,
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

    let counts: Vec<usize> = (0..b).map(|c| spl.indptr[c + 1] - spl.indptr[c]).collect();
    let psi_t = pair_inputs(pe, p, spl);
    let nt = net(pe, p);
    // Work items: runs of whole cells with about ITEM_PAIRS pairs; micro-chunks inside.
    let micro = pe.chunk.clamp(1, MICRO);
    let mut items: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < b {
        let mut end = start + 1;
        while end < b && spl.indptr[end + 1] - spl.indptr[start] <= ITEM_PAIRS {
            end += 1;
        }
        items.push((start, end));
        start = end;
    }
    let pooled: Vec<Vec<T>> = items
        .par_iter()
        .map(|&(c0, c1)| {
            let mut acc = vec![T::ZERO; (c1 - c0) * dd];
            let mut sc = Scratch::new(hh, dd, micro);
            let (e0, e1) = (spl.indptr[c0], spl.indptr[c1]);
            let mut cell = c0;
            let mut s = e0;
            while s < e1 {
                let e = (s + micro).min(e1);
                sc.pairs.clear();
                sc.pairs.extend(s..e);
                sc.psi.clear();
                sc.psi.extend_from_slice(&psi_t[s..e]);
                sc.jn.clear();
                sc.jn.extend_from_slice(&spl.junction[s..e]);
                nt.chunk_fwd(&u, mode, &mut sc);
                // Add each pair's code to its cell in pair order.
                for q in 0..e - s {
                    while spl.indptr[cell + 1] <= s + q {
                        cell += 1;
                    }
                    let dst = &mut acc[(cell - c0) * dd..(cell - c0 + 1) * dd];
                    for (a, &v) in dst.iter_mut().zip(&sc.c[q * dd..(q + 1) * dd]) {
                        *a += v;
                    }
                }
                s = e;
            }
            acc
        })
        .collect();
    let mut pool = Mat::zeros(b, dd);
    for (&(c0, _), acc) in items.iter().zip(pooled) {
        pool.data[c0 * dd..c0 * dd + acc.len()].copy_from_slice(&acc);
    }
    let h0 = pe.center.map(|_| {
        let mut sc = Scratch::new(hh, dd, 1);
        let h0 = nt.reference_fwd(&u, &mut sc);
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
    PartialCache { pool, counts, fhat, fnorm, u, den, h0 }
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
    // Pairs in junction-major order.
    let mut cnt = vec![0usize; j + 1];
    for &jj in &spl.junction {
        cnt[jj as usize + 1] += 1;
    }
    for i in 0..j {
        cnt[i + 1] += cnt[i];
    }
    let mut pos = cnt.clone();
    let mut order = vec![0usize; nnz];
    let mut cell_of = vec![0u32; nnz];
    for c in 0..b {
        for e in spl.indptr[c]..spl.indptr[c + 1] {
            let jj = spl.junction[e] as usize;
            order[pos[jj]] = e;
            cell_of[e] = c as u32;
            pos[jj] += 1;
        }
    }
    let psi_t = pair_inputs(pe, p, spl);
    let micro = pe.chunk.clamp(1, MICRO);
    let mut items: Vec<(usize, usize)> = Vec::new();
    let mut start = 0;
    while start < j {
        let mut end = start + 1;
        while end < j && cnt[end + 1] - cnt[start] <= ITEM_PAIRS {
            end += 1;
        }
        items.push((start, end));
        start = end;
    }
    let nt = net(pe, p);
    // Small per-item accumulators: [b0 | g1 | be1 | W4 | b4 | g5 | be5]
    let small_len = hh + hh + hh + dd * hh + dd + dd + dd;
    struct ItemOut<T> {
        small: Vec<T>,
        du: Vec<T>,
    }
    let outs: Vec<ItemOut<T>> = items
        .par_iter()
        .map(|&(j0, j1)| {
            let mut small = vec![T::ZERO; small_len];
            let mut du = vec![T::ZERO; (j1 - j0) * hh];
            let mut sc = Scratch::new(hh, dd, micro);
            let (p0, p1) = (cnt[j0], cnt[j1]);
            let mut s = p0;
            while s < p1 {
                let e = (s + micro).min(p1);
                let n = e - s;
                sc.pairs.clear();
                sc.pairs.extend_from_slice(&order[s..e]);
                sc.psi.clear();
                sc.psi.extend(order[s..e].iter().map(|&q| psi_t[q]));
                sc.jn.clear();
                sc.jn.extend(order[s..e].iter().map(|&q| spl.junction[q]));
                nt.chunk_fwd(&cache.u, mode, &mut sc);
                let pairs = std::mem::take(&mut sc.pairs);
                nt.chunk_bwd(mode, &mut sc, |q| dcell.row(cell_of[pairs[q]] as usize), &mut small);
                sc.pairs = pairs;
                for q in 0..n {
                    let row = &sc.dd1[q * hh..(q + 1) * hh];
                    let jl = sc.jn[q] as usize - j0;
                    let dst = &mut du[jl * hh..(jl + 1) * hh];
                    let psi = sc.psi[q];
                    for t in 0..hh {
                        dst[t] += psi * row[t];
                    }
                }
                s = e;
            }
            ItemOut { small, du }
        })
        .collect();
    let mut small = vec![T::ZERO; small_len];
    let mut du = Mat::zeros(j, hh);
    for (&(j0, _), o) in items.iter().zip(outs) {
        small.iter_mut().zip(&o.small).for_each(|(a, &v)| *a += v);
        du.data[j0 * hh..j0 * hh + o.du.len()].copy_from_slice(&o.du);
    }
    // The reference code: pool_i −= n_i · h(0), so d h(0) = −Σ_i n_i · dcell_i (ψ = 0: no d(u)).
    if cache.h0.is_some() {
        let mut dh0 = vec![T::ZERO; dd];
        for c in 0..b {
            let n = T::from_f64(cache.counts[c] as f64);
            dh0.iter_mut().zip(dcell.row(c)).for_each(|(a, &v)| *a -= n * v);
        }
        let mut sc = Scratch::new(hh, dd, 1);
        nt.reference_fwd(&cache.u, &mut sc);
        nt.chunk_bwd(Mode { training: false, seed: 0 }, &mut sc, |_| dh0.as_slice(), &mut small);
    }
    let mut off = 0;
    let mut put = |idx: Option<usize>, len: usize, g: &mut Grads<T>| {
        if let Some(idx) = idx {
            if let Some(sl) = g.slot(idx) {
                sl.iter_mut().zip(&small[off..off + len]).for_each(|(a, &v)| *a += v);
            }
        }
        off += len;
    };
    put(pe.h0.b, hh, g);
    put(Some(pe.ln1_w), hh, g);
    put(Some(pe.ln1_b), hh, g);
    put(Some(pe.h4.w), dd * hh, g);
    put(pe.h4.b, dd, g);
    put(Some(pe.ln5_w), dd, g);
    put(Some(pe.ln5_b), dd, g);

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
