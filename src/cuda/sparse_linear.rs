//! Typed launches of kernels/sparse_linear.cu: an encoder's first Linear on the sparse minibatch,
//! y₀ = x·Wᵀ, and its weight gradient dW += dy₀ᵀ·x. CPU twin: [`crate::model::ops::linear_sparse_fwd`]
//! / [`crate::model::ops::linear_sparse_bwd`].
//!
//! **These kernels have never run on a GPU**: they were written and compiled without one. Their logic
//! is checked on the host by tests/cuda_sparse_linear_parity.rs (the kernel source compiled against
//! kernels/host_emu.h); the same test compares them on a GPU where one exists and skips elsewhere.
//! The column-major copy of the minibatch the backward walks comes from [`Sparse::to_csc`] on the host
//! (a device-side counting sort belongs with the GPU training step, which does not exist yet).

use super::runtime::{elementwise_grid, CudaDevice, DeviceMem, KernelArg, Kernel};
use crate::model::ops::Sparse;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block (SPL_THREADS in kernels/sparse_linear.cu); one warp per row / column.
pub const SPL_THREADS: u32 = 128;
const SPL_WARPS: usize = SPL_THREADS as usize / 32;
/// Entries per warp of the forward (SPL_CHUNK in kernels/sparse_linear.cu).
pub const SPL_CHUNK: usize = 256;

/// Floats of the forward's chunk scratch for `rows` rows, `nnz` entries, `n_out` outputs.
pub fn part_len(rows: usize, nnz: usize, n_out: usize) -> usize {
    super::chunk_ids(rows, nnz, SPL_CHUNK) * n_out
}

/// A CSR (forward) or CSC (backward) minibatch on the device: pointers (i64), minor indices (u32),
/// values.
pub struct SparseDev<'a> {
    pub ptr: &'a dyn DeviceMem<i64>,
    pub idx: &'a dyn DeviceMem<u32>,
    pub val: &'a dyn DeviceMem<f32>,
}

pub struct CudaSparseLinear<'d> {
    dev: &'d CudaDevice,
    transpose: Kernel,
    fwd: Kernel,
    combine: Kernel,
    bwd_w: Kernel,
}

fn warps(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.div_ceil(SPL_WARPS).max(1) as u32, 1, 1), block_dim: (SPL_THREADS, 1, 1), shared_mem_bytes: 0 }
}

impl<'d> CudaSparseLinear<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        let f = |n: &str| dev.function("sparse_linear", n);
        Ok(CudaSparseLinear { dev, transpose: f("sparse_linear_transpose")?, fwd: f("sparse_linear_fwd")?, combine: f("sparse_linear_combine")?, bwd_w: f("sparse_linear_bwd_w")? })
    }

    /// Enqueues Wᵀ (into `wt`, n_in × n_out) and y (rows × n_out) = x·Wᵀ for the CSR `x`.
    #[allow(clippy::too_many_arguments)]
    /// `part` is scratch of [`part_len`] floats.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &SparseDev<'_>,
        rows: usize,
        n_in: usize,
        n_out: usize,
        w: &dyn DeviceMem<f32>,
        wt: &mut dyn DeviceMem<f32>,
        part: &mut dyn DeviceMem<f32>,
        y: &mut dyn DeviceMem<f32>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("sparse_linear_fwd");
        ensure!(rows <= i32::MAX as usize && n_in <= i32::MAX as usize && n_out <= i32::MAX as usize, "sparse linear: sizes out of range");
        ensure!(w.elements() == n_out * n_in && wt.elements() == n_out * n_in, "sparse linear: W and Wᵀ need {n_out} × {n_in} entries");
        ensure!(x.ptr.elements() == rows + 1 && x.idx.elements() == x.val.elements(), "sparse linear: CSR arrays do not match {rows} rows");
        ensure!(y.elements() == rows * n_out, "sparse linear: y has {} entries for {rows} × {n_out}", y.elements());
        let n = n_out * n_in;
        let grid = elementwise_grid(n, SPL_THREADS, self.dev.info().multiprocessors);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (SPL_THREADS, 1, 1), shared_mem_bytes: 0 };
        let args: [&dyn KernelArg; 4] = [&w.device_address(), &(n_out as i32), &(n_in as i32), &wt.device_address()];
        self.dev.launch(&self.transpose, cfg, &args)?;
        // One warp per chunk of SPL_CHUNK entries of a row, then each row's chunks summed in order.
        let n_chunks = super::chunk_ids(rows, x.idx.elements(), SPL_CHUNK);
        ensure!(part.elements() >= n_chunks * n_out && n_chunks <= i32::MAX as usize, "sparse linear: chunk scratch of {} for {n_chunks} × {n_out}", part.elements());
        let args: [&dyn KernelArg; 8] = [
            &x.ptr.device_address(),
            &x.idx.device_address(),
            &x.val.device_address(),
            &(rows as i32),
            &(n_chunks as i32),
            &wt.device_address(),
            &(n_out as i32),
            &part.device_address(),
        ];
        self.dev.launch(&self.fwd, warps(n_chunks), &args)?;
        let args: [&dyn KernelArg; 5] = [&part.device_address(), &x.ptr.device_address(), &(rows as i32), &(n_out as i32), &y.device_address()];
        let cfg = LaunchConfig { grid_dim: ((rows * n_out).div_ceil(SPL_THREADS as usize).max(1) as u32, 1, 1), block_dim: (SPL_THREADS, 1, 1), shared_mem_bytes: 0 };
        self.dev.launch(&self.combine, cfg, &args)
    }

    /// Enqueues gw (n_out × n_in) += dy₀ᵀ·x for the CSC `xc` (column pointers over n_in columns, the
    /// row of each entry, values).
    pub fn backward_w(&self, xc: &SparseDev<'_>, rows: usize, n_in: usize, n_out: usize, dy: &dyn DeviceMem<f32>, gw: &mut dyn DeviceMem<f32>) -> Result<()> {
        let _r = crate::nvtx_range!("sparse_linear_bwd_w");
        ensure!(xc.ptr.elements() == n_in + 1 && xc.idx.elements() == xc.val.elements(), "sparse linear: CSC arrays do not match {n_in} columns");
        ensure!(dy.elements() == rows * n_out && gw.elements() == n_out * n_in, "sparse linear: dy or dW has the wrong size");
        let args: [&dyn KernelArg; 7] = [&xc.ptr.device_address(), &xc.idx.device_address(), &xc.val.device_address(), &(n_in as i32), &dy.device_address(), &(n_out as i32), &gw.device_address()];
        self.dev.launch(&self.bwd_w, warps(n_in), &args)
    }

    /// Convenience for tests: y = x·Wᵀ (poisoned with NaN first) and gw0 + dy₀ᵀ·x, copied back.
    pub fn run_host(&self, x: &Sparse<f32>, w: &[f32], n_out: usize, dy: &[f32], gw0: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let dev = self.dev;
        let (rows, n_in) = (x.rows, x.cols);
        let one = |v: Vec<u32>| if v.is_empty() { vec![0u32] } else { v };
        let onef = |v: Vec<f32>| if v.is_empty() { vec![0f32] } else { v };
        let ptr: Vec<i64> = x.indptr.iter().map(|&v| v as i64).collect();
        let (p, i, v) = (dev.upload(&ptr)?, dev.upload(&one(x.indices.clone()))?, dev.upload(&onef(x.values.clone()))?);
        let (cptr, crow, cval) = x.to_csc();
        let cptr: Vec<i64> = cptr.iter().map(|&v| v as i64).collect();
        let (cp, ci, cv) = (dev.upload(&cptr)?, dev.upload(&one(crow))?, dev.upload(&onef(cval))?);
        // (an empty minibatch gets one-element index buffers; the kernels never read them)
        let csr = SparseDev { ptr: &p, idx: &i, val: &v };
        let csc = SparseDev { ptr: &cp, idx: &ci, val: &cv };
        let (wd, mut wt, mut y) = (dev.upload(w)?, dev.upload(&vec![f32::NAN; w.len()])?, dev.upload(&vec![f32::NAN; rows * n_out])?);
        let (dyd, mut gw) = (dev.upload(dy)?, dev.upload(gw0)?);
        let mut part = dev.upload(&vec![f32::NAN; part_len(rows, i.len(), n_out)])?;
        self.forward(&csr, rows, n_in, n_out, &wd, &mut wt, &mut part, &mut y)?;
        self.backward_w(&csc, rows, n_in, n_out, &dyd, &mut gw)?;
        dev.synchronize()?;
        Ok((dev.download(&y)?, dev.download(&gw)?))
    }
}
