//! Layer-level ops with hand-written backward passes: Linear (dense and sparse input), BatchNorm1d,
//! LayerNorm, (Leaky)ReLU, dropout, and scvi's FCLayers block built from them.
//!
//! Convention: `*_forward` returns the output and a cache; `*_backward` takes the cache and the gradient
//! of the output, accumulates parameter gradients into `Grads`, and returns the input gradient when asked.

use super::arch::{Act, BnP, FcLayers, LinearP};
use super::params::{Grads, Params};
use super::real::{dot8, sum8, Real};
use super::rng;
use super::tensor::{col_sums_acc, matmul_nn, matmul_nt, matmul_tn_acc, Mat};
use anyhow::{bail, Result};
use rayon::prelude::*;

pub const BN_EPS: f64 = 1e-3;
pub const BN_MOMENTUM: f64 = 0.01;
pub const LN_EPS: f64 = 1e-5;
pub const LEAKY_SLOPE: f64 = 0.01;

/// CSR matrix in the compute type (the first-layer input of the encoders).
#[derive(Clone, Debug, Default)]
pub struct Sparse<T> {
    pub rows: usize,
    pub cols: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<T>,
}

impl<T: Real> Sparse<T> {
    /// Column-major index of the same entries: (col_ptr, row of each entry, value).
    pub fn to_csc(&self) -> (Vec<usize>, Vec<u32>, Vec<T>) {
        let mut cnt = vec![0usize; self.cols + 1];
        for &c in &self.indices {
            cnt[c as usize + 1] += 1;
        }
        for i in 0..self.cols {
            cnt[i + 1] += cnt[i];
        }
        let mut pos = cnt.clone();
        let nnz = self.indices.len();
        let mut rows = vec![0u32; nnz];
        let mut vals = vec![T::ZERO; nnz];
        for r in 0..self.rows {
            for e in self.indptr[r]..self.indptr[r + 1] {
                let c = self.indices[e] as usize;
                rows[pos[c]] = r as u32;
                vals[pos[c]] = self.values[e];
                pos[c] += 1;
            }
        }
        (cnt, rows, vals)
    }
}

/// A block input: dense, or sparse (only the first block of the encoders).
#[derive(Clone, Debug)]
pub enum In<T> {
    Dense(Mat<T>),
    Sparse(Sparse<T>),
}

impl<T: Real> In<T> {
    pub fn rows(&self) -> usize {
        match self {
            In::Dense(m) => m.rows,
            In::Sparse(s) => s.rows,
        }
    }
}

/// Covariates of a minibatch as FCLayers consume them. `cats[k]` is the k-th categorical input
/// ([batch, extra categorical covariates…]); FCLayers skip inputs whose size is 0 in `cat_sizes`.
#[derive(Clone, Debug, Default)]
pub struct Cov<'a> {
    /// B × n_cont, row-major.
    pub cont: &'a [f32],
    pub n_cont: usize,
    pub cats: Vec<&'a [u32]>,
}

impl Cov<'_> {
    /// Covariate columns [cont, one-hots] for a layer with `n_cont` continuous inputs (0 or all) and
    /// categorical sizes `cat_sizes`, appended to each row by `push(row, col_offset_within_cov, value)`.
    fn for_each<F: FnMut(usize, f32)>(&self, row: usize, n_cont: usize, cat_sizes: &[usize], mut push: F) {
        if n_cont > 0 {
            for c in 0..n_cont {
                push(c, self.cont[row * self.n_cont + c]);
            }
        }
        let mut off = n_cont;
        for (k, &n) in cat_sizes.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let code = self.cats[k][row] as usize;
            push(off + code, 1.0);
            off += n;
        }
    }

    pub fn check(&self, fc: &FcLayers, rows: usize) -> Result<()> {
        if fc.n_cont > 0 && (self.n_cont != fc.n_cont || self.cont.len() != rows * fc.n_cont) {
            bail!("layer expects {} continuous covariates, the batch has {}", fc.n_cont, self.n_cont);
        }
        for (k, &n) in fc.cat_sizes.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let Some(codes) = self.cats.get(k) else {
                bail!("layer expects categorical input {k} ({n} levels), the batch has none")
            };
            if codes.len() != rows {
                bail!("categorical input {k} has {} values for {rows} cells", codes.len());
            }
            if let Some(bad) = codes.iter().position(|&c| c as usize >= n) {
                bail!("categorical input {k}: cell {bad} has code {} but the model has {n} levels", codes[bad]);
            }
        }
        Ok(())
    }

    /// Dense [x | covariates] for a block that injects covariates.
    pub fn concat_dense<T: Real>(&self, x: &Mat<T>, n_cont: usize, cat_sizes: &[usize]) -> Mat<T> {
        let w = n_cont + cat_sizes.iter().sum::<usize>();
        if w == 0 {
            return x.clone();
        }
        let mut out = Mat::zeros(x.rows, x.cols + w);
        for r in 0..x.rows {
            let row = out.row_mut(r);
            row[..x.cols].copy_from_slice(x.row(r));
            let (_, cov) = row.split_at_mut(x.cols);
            self.for_each(r, n_cont, cat_sizes, |c, v| cov[c] = T::from_f32(v));
        }
        out
    }

    /// Sparse [x | covariates].
    pub fn concat_sparse<T: Real>(&self, x: &Sparse<T>, n_cont: usize, cat_sizes: &[usize]) -> Sparse<T> {
        let w = n_cont + cat_sizes.iter().sum::<usize>();
        if w == 0 {
            return x.clone();
        }
        let mut out = Sparse { rows: x.rows, cols: x.cols + w, indptr: vec![0], ..Default::default() };
        for r in 0..x.rows {
            for e in x.indptr[r]..x.indptr[r + 1] {
                out.indices.push(x.indices[e]);
                out.values.push(x.values[e]);
            }
            let base = x.cols as u32;
            self.for_each(r, n_cont, cat_sizes, |c, v| {
                out.indices.push(base + c as u32);
                out.values.push(T::from_f32(v));
            });
            out.indptr.push(out.indices.len());
        }
        out
    }
}

/// Forward mode of a step.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// BatchNorm batch statistics + running-stat updates, and dropout.
    pub training: bool,
    pub seed: u64,
}

/// BatchNorm running-stat updates produced by a training-mode forward: (entry index, new values).
pub type BufUpdates = Vec<(usize, Vec<f64>)>;

// ---------------------------------------------------------------------------------------------
// Linear

/// y = x·Wᵀ + b for a dense x (B × n_in).
pub fn linear_dense_fwd<T: Real>(lin: &LinearP, p: &Params<T>, x: &Mat<T>) -> Mat<T> {
    assert_eq!(x.cols, lin.n_in, "linear input width");
    let mut y = Mat::zeros(x.rows, lin.n_out);
    matmul_nt(&x.data, x.rows, lin.n_in, p.get(lin.w), lin.n_out, &mut y.data, T::ZERO);
    if let Some(b) = lin.b {
        let b = p.get(b);
        y.data.par_chunks_mut(lin.n_out.max(1)).for_each(|row| {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        });
    }
    y
}

/// Parameter gradients of a dense Linear, and the input gradient when `need_dx`.
pub fn linear_dense_bwd<T: Real>(
    lin: &LinearP,
    p: &Params<T>,
    x: &Mat<T>,
    dy: &Mat<T>,
    g: &mut Grads<T>,
    need_dx: bool,
) -> Option<Mat<T>> {
    if let Some(gw) = g.slot(lin.w) {
        matmul_tn_acc(&dy.data, dy.rows, lin.n_out, &x.data, lin.n_in, gw);
    }
    if let Some(b) = lin.b {
        if let Some(gb) = g.slot(b) {
            col_sums_acc(&dy.data, dy.rows, lin.n_out, gb);
        }
    }
    need_dx.then(|| {
        let mut dx = Mat::zeros(dy.rows, lin.n_in);
        matmul_nn(&dy.data, dy.rows, lin.n_out, p.get(lin.w), lin.n_in, &mut dx.data, T::ZERO);
        dx
    })
}

/// y = x·Wᵀ + b for a sparse x: only the stored entries are multiplied.
pub fn linear_sparse_fwd<T: Real>(lin: &LinearP, p: &Params<T>, x: &Sparse<T>) -> Mat<T> {
    assert_eq!(x.cols, lin.n_in, "sparse linear input width");
    let (n_in, n_out) = (lin.n_in, lin.n_out);
    let w = p.get(lin.w);
    // Wᵀ so that each input column is a contiguous row.
    let mut wt = vec![T::ZERO; n_in * n_out];
    wt.par_chunks_mut(n_out.max(1)).enumerate().for_each(|(c, row)| {
        for (o, v) in row.iter_mut().enumerate() {
            *v = w[o * n_in + c];
        }
    });
    let bias = lin.b.map(|b| p.get(b));
    let mut y = Mat::zeros(x.rows, n_out);
    y.data.par_chunks_mut(n_out.max(1)).enumerate().for_each(|(r, row)| {
        if let Some(b) = bias {
            row.copy_from_slice(b);
        }
        for e in x.indptr[r]..x.indptr[r + 1] {
            let v = x.values[e];
            let wr = &wt[x.indices[e] as usize * n_out..][..n_out];
            for (o, &ww) in row.iter_mut().zip(wr) {
                *o += v * ww;
            }
        }
    });
    y
}

/// Input columns per work item of [`linear_sparse_bwd`] (a 128 × 128 f32 block is 64 KiB).
const SPARSE_BWD_COLS: usize = 128;

/// Whether every row of a CSR index lists its columns in increasing order (validated data does).
pub fn rows_sorted(indptr: &[usize], indices: &[u32]) -> bool {
    indptr.windows(2).all(|w| indices[w[0]..w[1]].windows(2).all(|c| c[0] < c[1]))
}

/// The positions of a sorted index row whose values lie in [lo, hi) (two binary searches).
#[inline]
pub fn sorted_span(row: &[u32], lo: usize, hi: usize) -> std::ops::Range<usize> {
    let s = row.partition_point(|&c| (c as usize) < lo);
    s..s + row[s..].partition_point(|&c| (c as usize) < hi)
}

/// Weight and bias gradients of a sparse-input Linear (no input gradient: the input is data).
pub fn linear_sparse_bwd<T: Real>(lin: &LinearP, x: &Sparse<T>, dy: &Mat<T>, g: &mut Grads<T>) {
    let (n_in, n_out) = (lin.n_in, lin.n_out);
    if let Some(b) = lin.b {
        if let Some(gb) = g.slot(b) {
            col_sums_acc(&dy.data, dy.rows, n_out, gb);
        }
    }
    let Some(gw) = g.slot(lin.w) else { return };
    let mut dwt = vec![T::ZERO; n_in * n_out];
    if rows_sorted(&x.indptr, &x.indices) {
        // Blocks of input columns in parallel, each walking the rows in order and taking its span of
        // every (sorted) row by binary search: each column sums its entries in row order, as the
        // column-major walk below does (the same bits), without building the column-major copy.
        dwt.par_chunks_mut(SPARSE_BWD_COLS * n_out.max(1)).enumerate().for_each(|(bi, blk)| {
            let c0 = bi * SPARSE_BWD_COLS;
            let c1 = c0 + blk.len() / n_out.max(1);
            for r in 0..x.rows {
                let span = x.indptr[r]..x.indptr[r + 1];
                let (idx, vals) = (&x.indices[span.clone()], &x.values[span]);
                let dr = dy.row(r);
                for q in sorted_span(idx, c0, c1) {
                    let (c, v) = (idx[q] as usize - c0, vals[q]);
                    for (a, &d) in blk[c * n_out..(c + 1) * n_out].iter_mut().zip(dr) {
                        *a += v * d;
                    }
                }
            }
        });
    } else {
        let (cptr, rows, vals) = x.to_csc();
        dwt.par_chunks_mut(n_out.max(1)).enumerate().for_each(|(c, acc)| {
            for e in cptr[c]..cptr[c + 1] {
                let v = vals[e];
                let dr = dy.row(rows[e] as usize);
                for (a, &d) in acc.iter_mut().zip(dr) {
                    *a += v * d;
                }
            }
        });
    }
    gw.par_chunks_mut(n_in.max(1)).enumerate().for_each(|(o, wrow)| {
        for (c, w) in wrow.iter_mut().enumerate() {
            *w += dwt[c * n_out + o];
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Normalisation, activation, dropout

#[derive(Clone, Debug)]
pub struct NormCache<T> {
    pub xhat: Mat<T>,
    /// Per feature (BatchNorm) or per row (LayerNorm).
    pub inv_std: Vec<T>,
    /// BatchNorm only: batch statistics were used (training mode).
    pub batch_stats: bool,
}

/// BatchNorm1d over the rows of x (features = columns).
pub fn batchnorm_fwd<T: Real>(
    bn: &BnP,
    p: &Params<T>,
    x: &Mat<T>,
    training: bool,
    upd: &mut BufUpdates,
) -> Result<(Mat<T>, NormCache<T>)> {
    let b = x.rows;
    let (gamma, beta) = (p.get(bn.w), p.get(bn.b));
    let (mean, inv_std) = if training {
        if b < 2 {
            bail!("BatchNorm in training mode needs at least 2 cells in a minibatch (got {b})");
        }
        let (mean, inv_std, var) = bn_batch_stats(x);
        // running = (1 − momentum)·running + momentum·batch (unbiased variance), counter + 1
        let (rm, rv) = bn_running_update(p.get(bn.running_mean), p.get(bn.running_var), &mean, &var, b);
        upd.push((bn.running_mean, rm));
        upd.push((bn.running_var, rv));
        upd.push((bn.num_batches_tracked, vec![p.get(bn.num_batches_tracked)[0].to_f64() + 1.0]));
        (mean, inv_std)
    } else {
        bn_eval_stats(p.get(bn.running_mean), p.get(bn.running_var))
    };
    let (y, xhat) = bn_apply(x, &mean, &inv_std, gamma, beta);
    Ok((y, NormCache { xhat, inv_std, batch_stats: training }))
}

/// Per-column mean, 1/√(var + ε) and biased variance of a minibatch (f64 sums: fewer rounding errors
/// than the f32 reference, not more). Shared by `batchnorm_fwd` and the CUDA twin
/// `dense_epilogue` (kernels/dense_epilogue.cu: dense_bn_stats).
pub fn bn_batch_stats<T: Real>(x: &Mat<T>) -> (Vec<T>, Vec<T>, Vec<f64>) {
    let (b, n) = (x.rows, x.cols);
    let mut m64 = vec![0f64; n];
    for r in 0..b {
        for (m, &v) in m64.iter_mut().zip(x.row(r)) {
            *m += v.to_f64();
        }
    }
    m64.iter_mut().for_each(|m| *m /= b as f64);
    let mut v64 = vec![0f64; n];
    for r in 0..b {
        for ((s, &v), &m) in v64.iter_mut().zip(x.row(r)).zip(&m64) {
            let dv = v.to_f64() - m;
            *s += dv * dv;
        }
    }
    v64.iter_mut().for_each(|s| *s /= b as f64);
    let mean: Vec<T> = m64.iter().map(|&m| T::from_f64(m)).collect();
    let inv_std: Vec<T> = v64.iter().map(|&v| T::from_f64(1.0 / (v + BN_EPS).sqrt())).collect();
    (mean, inv_std, v64)
}

/// The running statistics after one training minibatch of `b` cells (momentum BN_MOMENTUM, unbiased
/// variance), in f64.
pub fn bn_running_update<T: Real>(rm: &[T], rv: &[T], mean: &[T], var: &[f64], b: usize) -> (Vec<f64>, Vec<f64>) {
    let mom = BN_MOMENTUM;
    let unb = b as f64 / (b as f64 - 1.0);
    let n = mean.len();
    (
        (0..n).map(|i| (1.0 - mom) * rm[i].to_f64() + mom * mean[i].to_f64()).collect(),
        (0..n).map(|i| (1.0 - mom) * rv[i].to_f64() + mom * var[i] * unb).collect(),
    )
}

/// Evaluation-mode statistics: the running mean and 1/√(running var + ε).
pub fn bn_eval_stats<T: Real>(rm: &[T], rv: &[T]) -> (Vec<T>, Vec<T>) {
    let eps = T::from_f64(BN_EPS);
    (rm.to_vec(), rv.iter().map(|&v| T::ONE / (v + eps).sqrt()).collect())
}

/// y = x̂·γ + β with x̂ = (x − mean)·inv_std; returns (y, x̂).
pub fn bn_apply<T: Real>(x: &Mat<T>, mean: &[T], inv_std: &[T], gamma: &[T], beta: &[T]) -> (Mat<T>, Mat<T>) {
    let (b, n) = (x.rows, x.cols);
    let mut xhat = Mat::zeros(b, n);
    let mut y = Mat::zeros(b, n);
    for r in 0..b {
        let (xr, hr) = (x.row(r), xhat.row_mut(r));
        for i in 0..n {
            hr[i] = (xr[i] - mean[i]) * inv_std[i];
        }
        let yr = y.row_mut(r);
        for i in 0..n {
            yr[i] = xhat.at(r, i) * gamma[i] + beta[i];
        }
    }
    (y, xhat)
}

pub fn batchnorm_bwd<T: Real>(bn: &BnP, p: &Params<T>, c: &NormCache<T>, dy: &Mat<T>, g: &mut Grads<T>) -> Mat<T> {
    let (dx, sum_dy, sum_dy_xhat) = bn_backward_core(&c.xhat, &c.inv_std, c.batch_stats, p.get(bn.w), dy);
    if let Some(gw) = g.slot(bn.w) {
        for i in 0..dy.cols {
            gw[i] += sum_dy_xhat[i];
        }
    }
    if let Some(gb) = g.slot(bn.b) {
        for i in 0..dy.cols {
            gb[i] += sum_dy[i];
        }
    }
    dx
}

/// BatchNorm backward from d(y): returns (dx, Σ_rows dy = dβ, Σ_rows dy·x̂ = dγ).
pub fn bn_backward_core<T: Real>(xhat: &Mat<T>, inv_std: &[T], batch_stats: bool, gamma: &[T], dy: &Mat<T>) -> (Mat<T>, Vec<T>, Vec<T>) {
    let (b, n) = (dy.rows, dy.cols);
    let mut s1 = vec![0f64; n];
    let mut s2 = vec![0f64; n];
    for r in 0..b {
        for i in 0..n {
            let d = dy.at(r, i).to_f64();
            s1[i] += d;
            s2[i] += d * xhat.at(r, i).to_f64();
        }
    }
    let sum_dy: Vec<T> = s1.iter().map(|&v| T::from_f64(v)).collect();
    let sum_dy_xhat: Vec<T> = s2.iter().map(|&v| T::from_f64(v)).collect();
    let mut dx = Mat::zeros(b, n);
    let bt = T::from_f64(b as f64);
    for r in 0..b {
        let row = dx.row_mut(r);
        for i in 0..n {
            let d = dy.at(r, i) * gamma[i];
            row[i] = if batch_stats {
                // dx = γ·inv_std·(dy − mean(dy) − x̂·mean(dy·x̂))
                gamma[i] * inv_std[i] * (dy.at(r, i) - sum_dy[i] / bt - xhat.at(r, i) * sum_dy_xhat[i] / bt)
            } else {
                d * inv_std[i]
            };
        }
    }
    (dx, sum_dy, sum_dy_xhat)
}

/// LayerNorm over each row, optional affine (gain, bias).
pub fn layernorm_fwd<T: Real>(x: &Mat<T>, affine: Option<(&[T], &[T])>) -> (Mat<T>, NormCache<T>) {
    let n = x.cols;
    let mut xhat = Mat::zeros(x.rows, n);
    let mut inv_std = vec![T::ZERO; x.rows];
    xhat.data.par_chunks_mut(n.max(1)).zip(inv_std.par_iter_mut()).enumerate().for_each(|(r, (h, s))| {
        *s = ln_row(x.row(r), h);
    });
    let y = match affine {
        None => xhat.clone(),
        Some((gw, gb)) => {
            let mut y = xhat.clone();
            y.data.par_chunks_mut(n.max(1)).for_each(|row| {
                for i in 0..n {
                    row[i] = row[i] * gw[i] + gb[i];
                }
            });
            y
        }
    };
    (y, NormCache { xhat, inv_std, batch_stats: false })
}

/// Normalise one row into `out`; returns 1/std.
#[inline(always)]
pub fn ln_row<T: Real>(x: &[T], out: &mut [T]) -> T {
    let n = T::from_f64(x.len() as f64);
    let mean = sum8(x) / n;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v - mean;
    }
    let var = dot8(out, out) / n;
    let inv = T::ONE / (var + T::from_f64(LN_EPS)).sqrt();
    for o in out.iter_mut() {
        *o *= inv;
    }
    inv
}

/// Backward of a LayerNorm row given d(x̂) (after the affine gain has been applied): in place.
#[inline(always)]
pub fn ln_row_bwd<T: Real>(xhat: &[T], inv_std: T, dxhat: &mut [T]) {
    let n = T::from_f64(xhat.len() as f64);
    let m1 = sum8(dxhat) / n;
    let m2 = dot8(dxhat, xhat) / n;
    for (d, &h) in dxhat.iter_mut().zip(xhat) {
        *d = inv_std * (*d - m1 - h * m2);
    }
}

/// LayerNorm backward; accumulates affine gradients into (gain, bias) slots when given.
pub fn layernorm_bwd<T: Real>(
    c: &NormCache<T>,
    dy: &Mat<T>,
    affine: Option<(&[T], usize, usize)>,
    g: &mut Grads<T>,
) -> Mat<T> {
    let n = dy.cols;
    let mut dx = dy.clone();
    if let Some((gain, wi, bi)) = affine {
        if let Some(gw) = g.slot(wi) {
            for r in 0..dy.rows {
                for i in 0..n {
                    gw[i] += dy.at(r, i) * c.xhat.at(r, i);
                }
            }
        }
        if let Some(gb) = g.slot(bi) {
            col_sums_acc(&dy.data, dy.rows, n, gb);
        }
        dx.data.par_chunks_mut(n.max(1)).for_each(|row| {
            for i in 0..n {
                row[i] *= gain[i];
            }
        });
    }
    dx.data.par_chunks_mut(n.max(1)).enumerate().for_each(|(r, row)| {
        ln_row_bwd(c.xhat.row(r), c.inv_std[r], row);
    });
    dx
}

#[inline(always)]
pub fn act_fwd<T: Real>(act: Act, v: T) -> T {
    match act {
        Act::None => v,
        Act::Relu => {
            if v > T::ZERO {
                v
            } else {
                T::ZERO
            }
        }
        Act::LeakyRelu => {
            if v > T::ZERO {
                v
            } else {
                v * T::from_f64(LEAKY_SLOPE)
            }
        }
    }
}

/// Derivative of the activation at its input v (PyTorch: 0 at exactly 0 for ReLU).
#[inline(always)]
pub fn act_grad<T: Real>(act: Act, v: T) -> T {
    match act {
        Act::None => T::ONE,
        Act::Relu => {
            if v > T::ZERO {
                T::ONE
            } else {
                T::ZERO
            }
        }
        Act::LeakyRelu => {
            if v > T::ZERO {
                T::ONE
            } else {
                T::from_f64(LEAKY_SLOPE)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// FCLayers

#[derive(Clone, Debug)]
pub struct BlockCache<T> {
    /// Full input of the block (with covariates when injected).
    pub input: In<T>,
    pub bn: Option<NormCache<T>>,
    pub ln: Option<NormCache<T>>,
    /// Input of the activation.
    pub act_in: Option<Mat<T>>,
    /// Dropout keep mask (already scaled by 1/(1−p)).
    pub drop: Option<Vec<T>>,
}

#[derive(Clone, Debug)]
pub struct FcCache<T> {
    pub blocks: Vec<BlockCache<T>>,
}

/// Main input of an FCLayers: dense, or sparse (encoders' first layer).
pub enum MainIn<'a, T> {
    Dense(&'a Mat<T>),
    Sparse(&'a Sparse<T>),
}

/// Forward through all blocks of an FCLayers.
pub fn fc_forward<T: Real>(
    fc: &FcLayers,
    p: &Params<T>,
    x: MainIn<T>,
    cov: &Cov,
    mode: Mode,
    upd: &mut BufUpdates,
) -> Result<(Mat<T>, FcCache<T>)> {
    let rows = match &x {
        MainIn::Dense(m) => m.rows,
        MainIn::Sparse(s) => s.rows,
    };
    cov.check(fc, rows)?;
    let mut caches = Vec::with_capacity(fc.blocks.len());
    let mut h: Option<Mat<T>> = None;
    for (bi, blk) in fc.blocks.iter().enumerate() {
        // Assemble the block input.
        let input: In<T> = if bi == 0 {
            match &x {
                MainIn::Dense(m) => In::Dense(cov.concat_dense(m, fc.n_cont, &fc.cat_sizes)),
                MainIn::Sparse(s) => In::Sparse(cov.concat_sparse(s, fc.n_cont, &fc.cat_sizes)),
            }
        } else {
            let prev = h.take().unwrap();
            if blk.inject {
                In::Dense(cov.concat_dense(&prev, fc.n_cont, &fc.cat_sizes))
            } else {
                In::Dense(prev)
            }
        };
        let mut y = match &input {
            In::Dense(m) => linear_dense_fwd(&blk.lin, p, m),
            In::Sparse(s) => linear_sparse_fwd(&blk.lin, p, s),
        };
        let bn_c = match &blk.bn {
            Some(bn) => {
                let (out, c) = batchnorm_fwd(bn, p, &y, mode.training, upd)?;
                y = out;
                Some(c)
            }
            None => None,
        };
        let ln_c = if blk.ln {
            let (out, c) = layernorm_fwd(&y, None);
            y = out;
            Some(c)
        } else {
            None
        };
        let act_in = if blk.act != Act::None {
            let a = y.clone();
            y.data.par_iter_mut().for_each(|v| *v = act_fwd(blk.act, *v));
            Some(a)
        } else {
            None
        };
        let drop = if mode.training && blk.dropout > 0.0 {
            let ds = rng::DropStream::new(mode.seed, rng::streams::DROPOUT_BASE + fc.id * 64 + bi as u64, blk.dropout);
            let scale = T::from_f64(1.0 / (1.0 - blk.dropout));
            let mask: Vec<T> =
                (0..y.data.len()).into_par_iter().map(|i| if ds.keep(i as u64) { scale } else { T::ZERO }).collect();
            y.data.par_iter_mut().zip(&mask).for_each(|(v, &m)| *v *= m);
            Some(mask)
        } else {
            None
        };
        caches.push(BlockCache { input, bn: bn_c, ln: ln_c, act_in, drop });
        h = Some(y);
    }
    Ok((h.unwrap(), FcCache { blocks: caches }))
}

/// Backward through an FCLayers. Returns d(main input) when `need_dx` (dense inputs only).
pub fn fc_backward<T: Real>(
    fc: &FcLayers,
    p: &Params<T>,
    cache: &FcCache<T>,
    dout: Mat<T>,
    g: &mut Grads<T>,
    need_dx: bool,
) -> Option<Mat<T>> {
    let mut d = dout;
    for (bi, blk) in fc.blocks.iter().enumerate().rev() {
        let c = &cache.blocks[bi];
        if let Some(mask) = &c.drop {
            d.data.par_iter_mut().zip(mask).for_each(|(v, &m)| *v *= m);
        }
        if let Some(a) = &c.act_in {
            d.data.par_iter_mut().zip(&a.data).for_each(|(v, &x)| *v *= act_grad(blk.act, x));
        }
        if let Some(lc) = &c.ln {
            d = layernorm_bwd(lc, &d, None, g);
        }
        if let (Some(bn), Some(bc)) = (&blk.bn, &c.bn) {
            d = batchnorm_bwd(bn, p, bc, &d, g);
        }
        let want_dx = bi > 0 || need_dx;
        let dx = match &c.input {
            In::Dense(m) => linear_dense_bwd(&blk.lin, p, m, &d, g, want_dx),
            In::Sparse(s) => {
                linear_sparse_bwd(&blk.lin, s, &d, g);
                assert!(!want_dx, "input gradient of a sparse (data) input requested");
                None
            }
        };
        if !want_dx {
            return None;
        }
        let dx = dx.unwrap();
        // Strip the covariate columns.
        d = if dx.cols == blk.n_main { dx } else { dx.cols_range(0, blk.n_main) };
    }
    Some(d)
}
