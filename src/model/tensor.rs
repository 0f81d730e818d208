//! Dense row-major matrices and the three GEMM shapes a dense layer needs (forward, input gradient,
//! weight gradient), parallelised over independent output row blocks with rayon (deterministic: each
//! output element is computed by exactly one GEMM call whatever the thread count).

use super::real::Real;
use rayon::prelude::*;

/// Row-major matrix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mat<T> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<T>,
}

impl<T: Real> Mat<T> {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat { rows, cols, data: vec![T::ZERO; rows * cols] }
    }
    pub fn from_vec(rows: usize, cols: usize, data: Vec<T>) -> Self {
        assert_eq!(data.len(), rows * cols, "Mat::from_vec: {rows}x{cols} needs {} values", rows * cols);
        Mat { rows, cols, data }
    }
    #[inline]
    pub fn row(&self, r: usize) -> &[T] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    #[inline]
    pub fn row_mut(&mut self, r: usize) -> &mut [T] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }
    #[inline]
    pub fn at(&self, r: usize, c: usize) -> T {
        self.data[r * self.cols + c]
    }
    /// Columns `c0..c1` as a new matrix.
    pub fn cols_range(&self, c0: usize, c1: usize) -> Mat<T> {
        let w = c1 - c0;
        let mut out = Mat::zeros(self.rows, w);
        for r in 0..self.rows {
            out.row_mut(r).copy_from_slice(&self.row(r)[c0..c1]);
        }
        out
    }
    /// [self | other] side by side.
    pub fn hcat(&self, other: &Mat<T>) -> Mat<T> {
        assert_eq!(self.rows, other.rows);
        let mut out = Mat::zeros(self.rows, self.cols + other.cols);
        for r in 0..self.rows {
            let o = out.row_mut(r);
            o[..self.cols].copy_from_slice(self.row(r));
            o[self.cols..].copy_from_slice(other.row(r));
        }
        out
    }
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|v| v.to_f32()).collect()
    }
    pub fn cast<U: Real>(&self) -> Mat<U> {
        Mat { rows: self.rows, cols: self.cols, data: self.data.iter().map(|v| U::from_f64(v.to_f64())).collect() }
    }
}

/// Work below this many multiply-adds runs in one GEMM call.
const PAR_MIN_WORK: usize = 1 << 16;

fn row_block(m: usize, work_per_row: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    if m * work_per_row < PAR_MIN_WORK || threads == 1 {
        return m.max(1);
    }
    // Each output element is computed by one GEMM over the full inner dimension, so the split only
    // changes which thread computes it, not the summation order.
    let by_work = (PAR_MIN_WORK / work_per_row.max(1)).max(8);
    by_work.min(m.div_ceil(2 * threads).max(8)).max(1)
}

/// y[m×n] = x[m×k] · wᵀ (w is n×k, PyTorch Linear layout), plus `beta`·y.
pub fn matmul_nt<T: Real>(x: &[T], m: usize, k: usize, w: &[T], n: usize, y: &mut [T], beta: T) {
    debug_assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        y[..m * n].iter_mut().for_each(|v| *v *= beta);
        return;
    }
    let rb = row_block(m, k * n);
    y[..m * n].par_chunks_mut(rb * n).enumerate().for_each(|(bi, yb)| {
        let r0 = bi * rb;
        let rows = yb.len() / n;
        unsafe {
            T::gemm_raw(
                rows,
                k,
                n,
                T::ONE,
                x[r0 * k..].as_ptr(),
                k as isize,
                1,
                w.as_ptr(),
                1,
                k as isize,
                beta,
                yb.as_mut_ptr(),
                n as isize,
                1,
            )
        }
    });
}

/// dx[m×k] = dy[m×n] · w[n×k], plus `beta`·dx.
pub fn matmul_nn<T: Real>(dy: &[T], m: usize, n: usize, w: &[T], k: usize, dx: &mut [T], beta: T) {
    debug_assert!(dy.len() >= m * n && w.len() >= n * k && dx.len() >= m * k);
    if m == 0 || k == 0 {
        return;
    }
    if n == 0 {
        dx[..m * k].iter_mut().for_each(|v| *v *= beta);
        return;
    }
    let rb = row_block(m, k * n);
    dx[..m * k].par_chunks_mut(rb * k).enumerate().for_each(|(bi, xb)| {
        let r0 = bi * rb;
        let rows = xb.len() / k;
        unsafe {
            T::gemm_raw(
                rows,
                n,
                k,
                T::ONE,
                dy[r0 * n..].as_ptr(),
                n as isize,
                1,
                w.as_ptr(),
                k as isize,
                1,
                beta,
                xb.as_mut_ptr(),
                k as isize,
                1,
            )
        }
    });
}

/// dw[n×k] += dy[m×n]ᵀ · x[m×k] (weight gradient of a Linear layer).
pub fn matmul_tn_acc<T: Real>(dy: &[T], m: usize, n: usize, x: &[T], k: usize, dw: &mut [T]) {
    debug_assert!(dy.len() >= m * n && x.len() >= m * k && dw.len() >= n * k);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let rb = row_block(n, m * k);
    dw[..n * k].par_chunks_mut(rb * k).enumerate().for_each(|(bi, wb)| {
        let c0 = bi * rb;
        let rows = wb.len() / k;
        unsafe {
            T::gemm_raw(
                rows,
                m,
                k,
                T::ONE,
                dy[c0..].as_ptr(),
                1,
                n as isize,
                x.as_ptr(),
                k as isize,
                1,
                T::ONE,
                wb.as_mut_ptr(),
                k as isize,
                1,
            )
        }
    });
}

/// Column sums of a row-major m×n matrix added into `acc` (bias gradients), accumulated in f64.
pub fn col_sums_acc<T: Real>(a: &[T], m: usize, n: usize, acc: &mut [T]) {
    let mut s = vec![0f64; n];
    for r in 0..m {
        for (x, &v) in s.iter_mut().zip(&a[r * n..(r + 1) * n]) {
            *x += v.to_f64();
        }
    }
    for (o, v) in acc.iter_mut().zip(s) {
        *o += T::from_f64(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_nt(x: &[f64], m: usize, k: usize, w: &[f64], n: usize) -> Vec<f64> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
            }
        }
        y
    }

    #[test]
    fn gemm_shapes_match_naive() {
        let (m, k, n) = (300, 37, 129);
        let x: Vec<f64> = (0..m * k).map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0).collect();
        let w: Vec<f64> = (0..n * k).map(|i| ((i * 104729) % 97) as f64 / 48.0 - 1.0).collect();
        let mut y = vec![0.0; m * n];
        matmul_nt(&x, m, k, &w, n, &mut y, 0.0);
        let want = naive_nt(&x, m, k, &w, n);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-10);
        }
        // dx = y · w  (m×n · n×k)
        let mut dx = vec![0.0; m * k];
        matmul_nn(&y, m, n, &w, k, &mut dx, 0.0);
        for i in 0..m {
            for t in 0..k {
                let want: f64 = (0..n).map(|j| y[i * n + j] * w[j * k + t]).sum();
                assert!((dx[i * k + t] - want).abs() < 1e-8 * want.abs().max(1.0));
            }
        }
        // dw += yᵀ x  (n×k)
        let mut dw = vec![1.0; n * k];
        matmul_tn_acc(&y, m, n, &x, k, &mut dw);
        for j in 0..n {
            for t in 0..k {
                let want: f64 = 1.0 + (0..m).map(|i| y[i * n + j] * x[i * k + t]).sum::<f64>();
                assert!((dw[j * k + t] - want).abs() < 1e-8 * want.abs().max(1.0));
            }
        }
    }
}
