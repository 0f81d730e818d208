//! Typed launches of kernels/grad_norm.cu and kernels/adamw.cu, the GPU twins of [`crate::optim`].
//!
//! A training step enqueues `grad_norm` (two passes; writes the norm and the clip scale to device memory)
//! and then `adamw_step` reading that scale, with no host synchronisation in between; the norm is read
//! back only when it is logged. (Compiled without a GPU here; checked by tests/cuda_parity.rs on one.)

use super::runtime::{elementwise_grid, CudaDevice, DeviceMem, Kernel};
use crate::optim::{AdamConfig, WeightDecay};
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block of the grad-norm kernels (GN_THREADS in kernels/grad_norm.cu).
const GN_THREADS: u32 = 256;
/// Upper bound on the pass-1 blocks, hence on the partial sums the scratch buffer must hold.
pub const GRAD_NORM_MAX_BLOCKS: usize = 1024;
/// Entries per pass-1 thread before another block is added: the grid depends on n only (not on the
/// device), so the summation order, and the result, is the same on every GPU.
const GN_ITEMS_PER_THREAD: usize = 8;
/// Threads per block: ADAM_THREADS in kernels/adamw.cu, its kernels' `__launch_bounds__`.
const ADAM_THREADS: u32 = 256;

/// Number of pass-1 blocks for `n` gradient entries.
pub fn grad_norm_blocks(n: usize) -> usize {
    n.div_ceil(GN_THREADS as usize * GN_ITEMS_PER_THREAD).clamp(1, GRAD_NORM_MAX_BLOCKS)
}

pub struct CudaOptim<'d> {
    dev: &'d CudaDevice,
    partial: Kernel,
    finalize: Kernel,
    adamw: Kernel,
    adam_l2: Kernel,
}

fn null_or<T>(m: Option<&dyn DeviceMem<T>>) -> u64 {
    m.map(|m| m.device_address()).unwrap_or(0)
}

impl<'d> CudaOptim<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        Ok(CudaOptim {
            dev,
            partial: dev.function("grad_norm", "grad_norm_partial")?,
            finalize: dev.function("grad_norm", "grad_norm_finalize")?,
            adamw: dev.function("adamw", "adamw_step")?,
            adam_l2: dev.function("adamw", "adam_l2_step")?,
        })
    }

    /// Enqueues the global norm of the masked gradients and the clip scale for `max_norm`:
    /// `out[0]` = norm (f32), `out[1]` = scale; `sumsq`, if given, receives the f64 sum of squares.
    /// `partials` is scratch of at least [`grad_norm_blocks`]`(n)` doubles
    /// ([`GRAD_NORM_MAX_BLOCKS`] always suffices). Twin: `optim::clip_info` / `optim::grad_sumsq`.
    pub fn grad_norm(
        &self,
        grads: &dyn DeviceMem<f32>,
        mask: Option<&dyn DeviceMem<u8>>,
        max_norm: f32,
        partials: &mut dyn DeviceMem<f64>,
        out: &mut dyn DeviceMem<f32>,
        sumsq: Option<&mut dyn DeviceMem<f64>>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("grad_norm");
        let n = grads.elements();
        if let Some(m) = mask {
            ensure!(m.elements() == n, "grad norm: mask has {} entries for {n} gradients", m.elements());
        }
        let blocks = grad_norm_blocks(n);
        ensure!(partials.elements() >= blocks, "grad norm: scratch holds {} partial sums, {blocks} needed", partials.elements());
        ensure!(out.elements() >= 2, "grad norm: output needs 2 floats (norm, scale)");
        if let Some(s) = &sumsq {
            ensure!(s.elements() >= 1, "grad norm: sumsq output is empty");
        }
        let (g, k, p, o) = (grads.device_address(), null_or(mask), partials.device_address(), out.device_address());
        let s = sumsq.map(|s| s.device_address()).unwrap_or(0);
        let cfg = |grid: usize| LaunchConfig { grid_dim: (grid as u32, 1, 1), block_dim: (GN_THREADS, 1, 1), shared_mem_bytes: 0 };
        self.dev.launch(&self.partial, cfg(blocks), &[&g, &k, &(n as i64), &p])?;
        self.dev.launch(&self.finalize, cfg(1), &[&p, &(blocks as i32), &max_norm, &o, &s])
    }

    /// Enqueues one Adam/AdamW step (by `config.decay`) with the scalars of step number `step`
    /// (1-based: the optimizer's step count after incrementing). `grad_scale` = (buffer, index) of the
    /// clip scale written by [`Self::grad_norm`] (its `out`, index 1), or `None` for no scaling.
    /// `guard`: a device f64 (the gradient's sum of squares, [`Self::grad_norm`]'s `sumsq`) that, when not
    /// finite, makes the step change nothing.
    /// Twin: `optim::Adam::step`.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_step(
        &self,
        config: &AdamConfig,
        step: u64,
        params: &mut dyn DeviceMem<f32>,
        grads: &dyn DeviceMem<f32>,
        exp_avg: &mut dyn DeviceMem<f32>,
        exp_avg_sq: &mut dyn DeviceMem<f32>,
        mask: Option<&dyn DeviceMem<u8>>,
        grad_scale: Option<(&dyn DeviceMem<f32>, usize)>,
        guard: Option<&dyn DeviceMem<f64>>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("adam_step");
        ensure!(step >= 1, "optimizer step numbers start at 1");
        let n = params.elements();
        ensure!(grads.elements() == n, "optimizer step: {} gradients for {n} parameters", grads.elements());
        ensure!(exp_avg.elements() == n && exp_avg_sq.elements() == n, "optimizer step: moments have {}/{} entries for {n} parameters", exp_avg.elements(), exp_avg_sq.elements());
        if let Some(m) = mask {
            ensure!(m.elements() == n, "optimizer step: mask has {} entries for {n} parameters", m.elements());
        }
        let s = config.scalars(step);
        let (f, first) = match config.decay {
            WeightDecay::Decoupled => (&self.adamw, s.decay_factor),
            WeightDecay::L2 => (&self.adam_l2, s.l2),
        };
        let threads = ADAM_THREADS;
        let cfg = LaunchConfig { grid_dim: (elementwise_grid(n, threads, self.dev.info().multiprocessors), 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let (p, g, m, v, k) = (params.device_address(), grads.device_address(), exp_avg.device_address(), exp_avg_sq.device_address(), null_or(mask));
        let scale = match grad_scale {
            None => 0u64,
            Some((buf, i)) => {
                ensure!(i < buf.elements(), "optimizer step: grad scale index {i} outside a buffer of {}", buf.elements());
                buf.device_address() + 4 * i as u64
            }
        };
        let guard = null_or(guard);
        self.dev.launch(f, cfg, &[&p, &g, &m, &v, &k, &scale, &guard, &(n as i64), &first, &s.w1, &s.beta2, &s.w2, &s.eps, &s.step_size, &s.bc2_sqrt])
    }
}
