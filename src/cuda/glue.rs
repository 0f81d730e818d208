//! Typed launches of kernels/glue.cu, the small kernels between the big ones in the CUDA training step
//! (strided column copies, elementwise maps, column sums, segmented sums, weighted row gathers), and
//! their CPU twins ([`twin`]: the same loops in the same order).
//!
//! **Never run on a GPU yet**: tests/cuda_glue_parity.rs checks every launch against its twin under the
//! host emulation (src/cuda/emu.rs) and on a GPU where one exists.

use super::runtime::{elementwise_grid, CudaDevice, DeviceMem, Kernel, KernelArg};
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block (GLUE_THREADS in kernels/glue.cu).
pub const GLUE_THREADS: u32 = 256;
const GLUE_WARPS: usize = GLUE_THREADS as usize / 32;
/// Entries per warp of [`CudaGlue::gather_rows_chunked`] in the training step (fixed: the sums' order
/// must not depend on the device).
pub const GATHER_ROWS_CHUNK: usize = 256;

/// The targets of a row gather (ptr's length − 1), its shapes checked.
fn gather_rows_targets(ptr: &dyn DeviceMem<i32>, src: &dyn DeviceMem<f32>, k: usize, out: &dyn DeviceMem<f32>) -> Result<usize> {
    let t = ptr.elements().saturating_sub(1);
    ensure!(out.elements() >= t * k, "glue gather_rows: out has {} elements for {t} × {k}", out.elements());
    ensure!(k >= 1 && k <= i32::MAX as usize && src.elements() % k == 0, "glue gather_rows: src of {} elements is not rows of {k}", src.elements());
    Ok(t)
}

/// f64 scratch of [`CudaGlue::gather_rows_chunked`] over `n_targets` targets, `n_entries` entries, `k`
/// columns, chunks of `chunk`.
pub fn gather_rows_part_len(n_targets: usize, n_entries: usize, k: usize, chunk: usize) -> usize {
    super::chunk_ids(n_targets, n_entries, chunk) * k
}

/// The elementwise maps of `glue_map`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MapOp {
    /// y = exp(x)
    Exp,
    /// y = softplus(x) + eps
    SoftplusEps(f32),
    /// y = x · a
    Mul,
    /// y = x · softplus'(a)
    MulSoftplusGrad,
    /// y = LeakyReLU(x) (slope 0.01)
    LeakyRelu,
    /// y = x · LeakyReLU'(a)
    MulLeakyReluGrad,
}

impl MapOp {
    fn code(self) -> (i32, f32) {
        match self {
            MapOp::Exp => (0, 0.0),
            MapOp::SoftplusEps(e) => (1, e),
            MapOp::Mul => (2, 0.0),
            MapOp::MulSoftplusGrad => (3, 0.0),
            MapOp::LeakyRelu => (4, 0.0),
            MapOp::MulLeakyReluGrad => (5, 0.0),
        }
    }
    fn needs_a(self) -> bool {
        matches!(self, MapOp::Mul | MapOp::MulSoftplusGrad | MapOp::MulLeakyReluGrad)
    }
}

/// A strided window of a row-major f32 matrix: `rows` × `cols` from element `offset`, row stride `ld`.
#[derive(Clone, Copy)]
pub struct Cols<'a> {
    pub mem: &'a dyn DeviceMem<f32>,
    pub offset: usize,
    pub ld: usize,
}

impl<'a> Cols<'a> {
    /// The whole of a `cols`-wide matrix.
    pub fn all(mem: &'a dyn DeviceMem<f32>, cols: usize) -> Self {
        Cols { mem, offset: 0, ld: cols }
    }
    /// Columns from `c0` of a `ld`-wide matrix.
    pub fn from(mem: &'a dyn DeviceMem<f32>, ld: usize, c0: usize) -> Self {
        Cols { mem, offset: c0, ld }
    }
    fn check(&self, rows: usize, cols: usize, what: &str) -> Result<u64> {
        ensure!(self.offset + cols <= self.ld || rows == 0, "glue: {what}: columns {}..{} exceed the row stride {}", self.offset, self.offset + cols, self.ld);
        if rows > 0 && cols > 0 {
            let need = (rows - 1) * self.ld + self.offset + cols;
            ensure!(self.mem.elements() >= need, "glue: {what} holds {} elements, {rows} × {cols} at stride {} needs {need}", self.mem.elements(), self.ld);
        }
        Ok(self.mem.device_address() + (self.offset * 4) as u64)
    }
}

pub struct CudaGlue<'d> {
    dev: &'d CudaDevice,
    copy_cols: Kernel,
    map: Kernel,
    col_sum: Kernel,
    seg_sum: Kernel,
    gather_rows: Kernel,
    gather_rows_part: Kernel,
    gather_rows_combine: Kernel,
    to_bf16: Kernel,
    scatter: Kernel,
    scatter_bf16: Kernel,
}

fn grid_cfg(dev: &CudaDevice, n: usize) -> LaunchConfig {
    let grid = elementwise_grid(n, GLUE_THREADS, dev.info().multiprocessors);
    LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (GLUE_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Columns per block of `glue_col_sum` (a function of the shape alone, so the summation order is too):
/// min(32, cols rounded up to a power of two), halved down to 4 while a tall input (≥ 1,024 rows: sums
/// over junctions) would get fewer than 128 blocks, so that its rows spread over more row lanes.
pub fn col_sum_strip(rows: usize, cols: usize) -> usize {
    let mut cw = cols.next_power_of_two().clamp(1, 32);
    while cw > 4 && rows >= 1024 && cols.div_ceil(cw) < 128 {
        cw /= 2;
    }
    cw
}

fn per_thread(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(GLUE_THREADS as usize).max(1) as u32, 1, 1), block_dim: (GLUE_THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn opt_addr<T>(m: Option<&dyn DeviceMem<T>>) -> u64 {
    m.map(|m| m.device_address()).unwrap_or(0)
}

impl<'d> CudaGlue<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        let f = |n: &str| dev.function("glue", n);
        Ok(CudaGlue {
            dev,
            copy_cols: f("glue_copy_cols")?,
            map: f("glue_map")?,
            col_sum: f("glue_col_sum")?,
            seg_sum: f("glue_seg_sum")?,
            gather_rows: f("glue_gather_rows")?,
            gather_rows_part: f("glue_gather_rows_part")?,
            gather_rows_combine: f("glue_gather_rows_combine")?,
            to_bf16: f("glue_to_bf16")?,
            scatter: f("glue_scatter")?,
            scatter_bf16: f("glue_scatter_bf16")?,
        })
    }

    /// dst = α·src (+ β·dst when β ≠ 0) over `rows` × `cols`.
    pub fn copy_cols(&self, src: Cols<'_>, dst: Cols<'_>, rows: usize, cols: usize, alpha: f32, beta: f32) -> Result<()> {
        let _r = crate::nvtx_range!("glue_copy_cols");
        let (s, d) = (src.check(rows, cols, "copy source")?, dst.check(rows, cols, "copy destination")?);
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        ensure!(rows <= i32::MAX as usize && cols <= i32::MAX as usize, "glue: copy of {rows} × {cols} out of range");
        let args: [&dyn KernelArg; 8] = [&s, &(src.ld as i64), &d, &(dst.ld as i64), &(rows as i32), &(cols as i32), &alpha, &beta];
        self.dev.launch(&self.copy_cols, grid_cfg(self.dev, rows * cols), &args)
    }

    /// dst = bf16(src) over `rows` × `cols` (row strides ld_src, ld_dst; round to nearest even).
    pub fn to_bf16(&self, src: Cols<'_>, dst: &mut dyn DeviceMem<half::bf16>, ld_dst: usize, rows: usize, cols: usize) -> Result<()> {
        let _r = crate::nvtx_range!("glue_to_bf16");
        let s = src.check(rows, cols, "bf16 source")?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        ensure!(cols <= ld_dst && dst.elements() >= (rows - 1) * ld_dst + cols, "glue to_bf16: destination of {} elements for {rows} × {cols} at stride {ld_dst}", dst.elements());
        ensure!(rows <= i32::MAX as usize && cols <= i32::MAX as usize, "glue: {rows} × {cols} out of range");
        let args: [&dyn KernelArg; 6] = [&s, &(src.ld as i64), &dst.device_address(), &(ld_dst as i64), &(rows as i32), &(cols as i32)];
        self.dev.launch(&self.to_bf16, grid_cfg(self.dev, rows * cols), &args)
    }

    /// y = op(x[, a]) over all of `y` (x and a at least as long).
    pub fn map(&self, op: MapOp, x: &dyn DeviceMem<f32>, a: Option<&dyn DeviceMem<f32>>, y: &mut dyn DeviceMem<f32>) -> Result<()> {
        let _r = crate::nvtx_range!("glue_map");
        let n = y.elements();
        ensure!(x.elements() >= n, "glue map: x has {} elements for {n}", x.elements());
        if op.needs_a() {
            ensure!(a.is_some_and(|a| a.elements() >= n), "glue map: {op:?} needs a second operand of {n} elements");
        }
        if n == 0 {
            return Ok(());
        }
        let (code, eps) = op.code();
        let args: [&dyn KernelArg; 6] = [&code, &x.device_address(), &opt_addr(a), &y.device_address(), &(n as i64), &eps];
        self.dev.launch(&self.map, grid_cfg(self.dev, n), &args)
    }

    /// out[c] = α Σ_r x[r, c] (+ β out[c]) for the `rows` × `cols` window `x`.
    pub fn col_sum(&self, x: Cols<'_>, rows: usize, cols: usize, alpha: f32, beta: f32, out: &mut dyn DeviceMem<f32>) -> Result<()> {
        let _r = crate::nvtx_range!("glue_col_sum");
        let xa = x.check(rows, cols, "column-sum input")?;
        ensure!(out.elements() >= cols, "glue col_sum: out has {} elements for {cols}", out.elements());
        if cols == 0 {
            return Ok(());
        }
        // a block per strip of cw columns, its GLUE_THREADS / cw row lanes over the rows
        let cw = col_sum_strip(rows, cols);
        let args: [&dyn KernelArg; 8] = [&xa, &(x.ld as i64), &(rows as i32), &(cols as i32), &(cw as i32), &alpha, &beta, &out.device_address()];
        let cfg = LaunchConfig { grid_dim: (cols.div_ceil(cw) as u32, 1, 1), block_dim: (GLUE_THREADS, 1, 1), shared_mem_bytes: 0 };
        self.dev.launch(&self.col_sum, cfg, &args)
    }

    /// out[t] = α f_t Σ_{m ∈ ptr[t]..ptr[t+1]} vals[ids[m]] (+ β out[t]); f_t = softplus'(sg[t]) or 1.
    #[allow(clippy::too_many_arguments)]
    pub fn seg_sum(
        &self,
        ptr: &dyn DeviceMem<i32>,
        ids: Option<&dyn DeviceMem<i32>>,
        vals: &dyn DeviceMem<f32>,
        sg: Option<&dyn DeviceMem<f32>>,
        alpha: f32,
        beta: f32,
        out: &mut dyn DeviceMem<f32>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("glue_seg_sum");
        let t = ptr.elements().saturating_sub(1);
        ensure!(out.elements() >= t && sg.is_none_or(|s| s.elements() >= t), "glue seg_sum: {t} targets, out {} elements", out.elements());
        if t == 0 {
            return Ok(());
        }
        let args: [&dyn KernelArg; 8] =
            [&ptr.device_address(), &opt_addr(ids), &vals.device_address(), &opt_addr(sg), &(t as i32), &alpha, &beta, &out.device_address()];
        self.dev.launch(&self.seg_sum, per_thread(t), &args)
    }

    /// [`Self::gather_rows`] for long segments (a minibatch's cells): one warp per chunk of `chunk`
    /// entries of a target, the chunks summed per target in order. `part` is f64 scratch of
    /// [`gather_rows_part_len`] elements; `n_entries` the segments' total (ptr[t]). With segments of at most `chunk` entries, the same bits as
    /// `gather_rows` (an f64 sum of one chunk, then + 0).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_rows_chunked(
        &self,
        ptr: &dyn DeviceMem<i32>,
        ids: Option<&dyn DeviceMem<i32>>,
        rows_of: &dyn DeviceMem<i32>,
        w: &dyn DeviceMem<f32>,
        src: &dyn DeviceMem<f32>,
        k: usize,
        alpha: f32,
        beta: f32,
        n_entries: usize,
        chunk: usize,
        part: &mut dyn DeviceMem<f64>,
        out: &mut dyn DeviceMem<f32>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("glue_gather_rows_chunked");
        let t = gather_rows_targets(ptr, src, k, out)?;
        ensure!(chunk >= 1 && chunk <= i32::MAX as usize, "glue gather_rows: chunk {chunk}");
        if t == 0 {
            return Ok(());
        }
        // (`n_entries` = ptr[t], the segments' total)
        let n_chunks = super::chunk_ids(t, n_entries, chunk);
        ensure!(part.elements() >= n_chunks * k && n_chunks <= i32::MAX as usize, "glue gather_rows: chunk scratch of {} for {n_chunks} × {k}", part.elements());
        let cfg = LaunchConfig { grid_dim: (n_chunks.div_ceil(GLUE_WARPS) as u32, 1, 1), block_dim: (GLUE_THREADS, 1, 1), shared_mem_bytes: 0 };
        let args: [&dyn KernelArg; 10] = [
            &ptr.device_address(),
            &opt_addr(ids),
            &rows_of.device_address(),
            &w.device_address(),
            &src.device_address(),
            &(k as i32),
            &(t as i32),
            &(chunk as i32),
            &(n_chunks as i32),
            &part.device_address(),
        ];
        self.dev.launch(&self.gather_rows_part, cfg, &args)?;
        let args: [&dyn KernelArg; 8] = [&part.device_address(), &ptr.device_address(), &(k as i32), &(t as i32), &(chunk as i32), &alpha, &beta, &out.device_address()];
        self.dev.launch(&self.gather_rows_combine, per_thread(t * k), &args)
    }

    /// out[t, :] = α Σ_{m ∈ ptr[t]..ptr[t+1]} w[e] src[rows_of[e], :] (+ β out[t, :]), e = ids[m] or m.
    #[allow(clippy::too_many_arguments)]
    pub fn gather_rows(
        &self,
        ptr: &dyn DeviceMem<i32>,
        ids: Option<&dyn DeviceMem<i32>>,
        rows_of: &dyn DeviceMem<i32>,
        w: &dyn DeviceMem<f32>,
        src: &dyn DeviceMem<f32>,
        k: usize,
        alpha: f32,
        beta: f32,
        out: &mut dyn DeviceMem<f32>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("glue_gather_rows");
        let t = gather_rows_targets(ptr, src, k, out)?;
        if t == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig { grid_dim: (t.div_ceil(GLUE_WARPS) as u32, 1, 1), block_dim: (GLUE_THREADS, 1, 1), shared_mem_bytes: 0 };
        let args: [&dyn KernelArg; 10] = [
            &ptr.device_address(),
            &opt_addr(ids),
            &rows_of.device_address(),
            &w.device_address(),
            &src.device_address(),
            &(k as i32),
            &(t as i32),
            &alpha,
            &beta,
            &out.device_address(),
        ];
        self.dev.launch(&self.gather_rows, cfg, &args)
    }

    /// out[rows_of[e] · ld + cols[e]] = α vals[e] for every entry e; the other elements of `out` keep
    /// their values. The entries must name distinct elements (checked by the caller's construction: a
    /// minibatch's cell × junction pairs).
    pub fn scatter(&self, rows_of: &dyn DeviceMem<i32>, cols: &dyn DeviceMem<i32>, vals: &dyn DeviceMem<f32>, ld: usize, alpha: f32, out: &mut dyn DeviceMem<f32>) -> Result<()> {
        let _r = crate::nvtx_range!("glue_scatter");
        self.scatter_with(&self.scatter, rows_of, cols, vals, ld, alpha, out.device_address(), out.elements())
    }

    /// [`Self::scatter`] into a bf16 matrix: out[rows_of[e] · ld + cols[e]] = bf16(α vals[e]) (round to
    /// nearest even, as [`Self::to_bf16`]); the other elements keep their values.
    pub fn scatter_bf16(&self, rows_of: &dyn DeviceMem<i32>, cols: &dyn DeviceMem<i32>, vals: &dyn DeviceMem<f32>, ld: usize, alpha: f32, out: &mut dyn DeviceMem<half::bf16>) -> Result<()> {
        let _r = crate::nvtx_range!("glue_scatter_bf16");
        self.scatter_with(&self.scatter_bf16, rows_of, cols, vals, ld, alpha, out.device_address(), out.elements())
    }

    /// The checks and launch both scatters share (`out`: the destination's address and element count).
    #[allow(clippy::too_many_arguments)]
    fn scatter_with(&self, kernel: &Kernel, rows_of: &dyn DeviceMem<i32>, cols: &dyn DeviceMem<i32>, vals: &dyn DeviceMem<f32>, ld: usize, alpha: f32, out: u64, out_len: usize) -> Result<()> {
        let n = vals.elements();
        ensure!(rows_of.elements() >= n && cols.elements() >= n, "glue scatter: {n} values, {} rows, {} columns", rows_of.elements(), cols.elements());
        ensure!(ld >= 1 && out_len % ld == 0, "glue scatter: out has {out_len} elements, not rows of {ld}");
        if n == 0 {
            return Ok(());
        }
        let args: [&dyn KernelArg; 7] = [&rows_of.device_address(), &cols.device_address(), &vals.device_address(), &(n as i64), &(ld as i64), &alpha, &out];
        self.dev.launch(kernel, grid_cfg(self.dev, n), &args)
    }
}

/// The CPU twins of kernels/glue.cu, on host slices (offsets and strides as the launches take them).
pub mod twin {
    use crate::model::arch::Act;
    use crate::model::ops::{act_fwd, act_grad};
    use crate::model::real::{softplus, softplus_grad};

    pub fn copy_cols(src: &[f32], s_off: usize, ld_src: usize, dst: &mut [f32], d_off: usize, ld_dst: usize, rows: usize, cols: usize, alpha: f32, beta: f32) {
        for r in 0..rows {
            for c in 0..cols {
                let v = alpha * src[s_off + r * ld_src + c];
                let d = &mut dst[d_off + r * ld_dst + c];
                *d = if beta != 0.0 { v + beta * *d } else { v };
            }
        }
    }

    pub fn to_bf16(src: &[f32], s_off: usize, ld_src: usize, dst: &mut [half::bf16], ld_dst: usize, rows: usize, cols: usize) {
        for r in 0..rows {
            for c in 0..cols {
                dst[r * ld_dst + c] = half::bf16::from_f32(src[s_off + r * ld_src + c]);
            }
        }
    }

    pub fn map(op: super::MapOp, x: &[f32], a: &[f32], y: &mut [f32]) {
        for t in 0..y.len() {
            y[t] = match op {
                super::MapOp::Exp => x[t].exp(),
                super::MapOp::SoftplusEps(e) => softplus(x[t]) + e,
                super::MapOp::Mul => x[t] * a[t],
                super::MapOp::MulSoftplusGrad => x[t] * softplus_grad(a[t]),
                super::MapOp::LeakyRelu => act_fwd(Act::LeakyRelu, x[t]),
                super::MapOp::MulLeakyReluGrad => x[t] * act_grad(Act::LeakyRelu, a[t]),
            };
        }
    }

    pub fn scatter(rows_of: &[i32], cols: &[i32], vals: &[f32], ld: usize, alpha: f32, out: &mut [f32]) {
        for (e, &v) in vals.iter().enumerate() {
            out[rows_of[e] as usize * ld + cols[e] as usize] = alpha * v;
        }
    }

    pub fn scatter_bf16(rows_of: &[i32], cols: &[i32], vals: &[f32], ld: usize, alpha: f32, out: &mut [half::bf16]) {
        for (e, &v) in vals.iter().enumerate() {
            out[rows_of[e] as usize * ld + cols[e] as usize] = half::bf16::from_f32(alpha * v);
        }
    }

    pub fn col_sum(x: &[f32], off: usize, ld: usize, rows: usize, cols: usize, alpha: f32, beta: f32, out: &mut [f32]) {
        for c in 0..cols {
            let s: f64 = (0..rows).map(|r| x[off + r * ld + c] as f64).sum();
            let v = alpha * s as f32;
            out[c] = if beta != 0.0 { v + beta * out[c] } else { v };
        }
    }

    pub fn seg_sum(ptr: &[i32], ids: Option<&[i32]>, vals: &[f32], sg: Option<&[f32]>, alpha: f32, beta: f32, out: &mut [f32]) {
        for t in 0..ptr.len().saturating_sub(1) {
            let s: f64 = (ptr[t]..ptr[t + 1]).map(|m| vals[ids.map_or(m, |i| i[m as usize]) as usize] as f64).sum();
            let mut v = alpha * s as f32;
            if let Some(sg) = sg {
                v *= softplus_grad(sg[t]);
            }
            out[t] = if beta != 0.0 { v + beta * out[t] } else { v };
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn gather_rows(ptr: &[i32], ids: Option<&[i32]>, rows_of: &[i32], w: &[f32], src: &[f32], k: usize, alpha: f32, beta: f32, out: &mut [f32]) {
        for t in 0..ptr.len().saturating_sub(1) {
            for c in 0..k {
                let mut s = 0f64;
                for m in ptr[t]..ptr[t + 1] {
                    let e = ids.map_or(m, |i| i[m as usize]) as usize;
                    s += w[e] as f64 * src[rows_of[e] as usize * k + c] as f64;
                }
                let v = alpha * s as f32;
                let o = &mut out[t * k + c];
                *o = if beta != 0.0 { v + beta * *o } else { v };
            }
        }
    }
}
