//! Typed launches of kernels/dense_epilogue.cu: the FCLayers epilogue around a cuBLAS GEMM (bias,
//! BatchNorm, LayerNorm, activation, dropout), forward and backward. CPU twin:
//! [`crate::model::dense_epilogue`].
//!
//! **This kernel has never run on a GPU**: it was written and compiled without one. Its logic is
//! checked on the host by tests/cuda_dense_epilogue_parity.rs (the kernel source compiled against
//! kernels/host_emu.h); the same test compares it on a GPU where one exists and skips elsewhere.

use super::runtime::{CudaDevice, DeviceMem, KernelArg, Kernel};
use crate::model::arch::Act;
use crate::model::dense_epilogue::{BnMode, Epilogue};
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block (EPI_THREADS in kernels/dense_epilogue.cu).
pub const EPI_THREADS: u32 = 128;
const EPI_ROWS_PER_BLOCK: usize = EPI_THREADS as usize / 32;

pub fn bn_code(b: BnMode) -> i32 {
    match b {
        BnMode::None => 0,
        BnMode::Batch => 1,
        BnMode::Running => 2,
    }
}

pub fn act_code(a: Act) -> i32 {
    match a {
        Act::None => 0,
        Act::Relu => 1,
        Act::LeakyRelu => 2,
    }
}

/// (key, threshold, scale, on) of the dropout arguments.
pub fn dropout_args(e: &Epilogue) -> (u64, u32, f32, i32) {
    match e.dropout {
        Some((ds, p)) => (ds.key(), ds.threshold(), (1.0 / (1.0 - p)) as f32, 1),
        None => (0, 0, 1.0, 0),
    }
}

/// Host inputs of [`CudaDenseEpilogue::run_host`] (B × H, H-vectors).
pub struct EpilogueHostIn<'a> {
    pub b: usize,
    pub h: usize,
    pub y0: &'a [f32],
    pub bias: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub running_mean: &'a [f32],
    pub running_var: &'a [f32],
    pub dout: &'a [f32],
}

/// Results copied back.
#[derive(Clone, Debug)]
pub struct EpilogueHost {
    pub out: Vec<f32>,
    pub pre_act: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub dy0: Vec<f32>,
    pub d_bias: Vec<f32>,
    pub d_gamma: Vec<f32>,
    pub d_beta: Vec<f32>,
}

pub struct CudaDenseEpilogue<'d> {
    dev: &'d CudaDevice,
    stats: Kernel,
    fwd: Kernel,
    bwd_rows: Kernel,
    bwd_cols: Kernel,
}

impl<'d> CudaDenseEpilogue<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        let f = |n: &str| dev.function("dense_epilogue", n);
        Ok(CudaDenseEpilogue { dev, stats: f("dense_bn_stats")?, fwd: f("dense_epilogue_fwd")?, bwd_rows: f("dense_epilogue_bwd_rows")?, bwd_cols: f("dense_epilogue_bwd_cols")? })
    }

    fn rows_cfg(b: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (b.div_ceil(EPI_ROWS_PER_BLOCK) as u32, 1, 1), block_dim: (EPI_THREADS, 1, 1), shared_mem_bytes: 0 }
    }
    fn cols_cfg(h: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (h.div_ceil(EPI_THREADS as usize) as u32, 1, 1), block_dim: (EPI_THREADS, 1, 1), shared_mem_bytes: 0 }
    }

    /// Enqueues the forward of a block without BatchNorm: out = dropout(act(LN?(y0 + bias))), with the
    /// activation's input `pre_act` (B × H) and the LayerNorm's 1/std per row `ln_inv` (B) kept for
    /// the backward. (BatchNorm needs the statistics launch and the running-stat buffers: see
    /// [`Self::run_host`]; the training step does not wire it yet.)
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        e: &Epilogue,
        b: usize,
        h: usize,
        y0: &dyn DeviceMem<f32>,
        bias: &dyn DeviceMem<f32>,
        out: &mut dyn DeviceMem<f32>,
        pre_act: &mut dyn DeviceMem<f32>,
        ln_inv: &mut dyn DeviceMem<f32>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("dense_epilogue_fwd");
        ensure!(e.bn == BnMode::None, "dense epilogue: the device forward without the statistics launch takes no BatchNorm");
        ensure!(b >= 1 && h >= 1 && b <= i32::MAX as usize && h <= i32::MAX as usize, "dense epilogue: B = {b}, H = {h} out of range");
        for (n, m) in [("y0", y0.elements()), ("out", out.elements()), ("pre_act", pre_act.elements())] {
            ensure!(m >= b * h, "dense epilogue: {n} has {m} entries for {b} × {h}");
        }
        ensure!(bias.elements() >= h && ln_inv.elements() >= b, "dense epilogue: bias needs {h} entries and ln_inv {b}");
        let (bi, hi) = (b as i32, h as i32);
        let (key, thr, scale, drop) = dropout_args(e);
        let none = 0u64;
        let args: [&dyn KernelArg; 18] = [
            &y0.device_address(),
            &bias.device_address(),
            &bi,
            &hi,
            &bn_code(e.bn),
            &none,
            &none,
            &none,
            &none,
            &(e.ln as i32),
            &act_code(e.act),
            &key,
            &thr,
            &scale,
            &drop,
            &out.device_address(),
            &pre_act.device_address(),
            &ln_inv.device_address(),
        ];
        self.dev.launch(&self.fwd, Self::rows_cfg(b), &args)
    }

    /// Enqueues the backward of [`Self::forward`]: from d(out) to d(y0) and d(bias) (overwritten),
    /// through the scratch `g` (B × H).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        e: &Epilogue,
        b: usize,
        h: usize,
        dout: &dyn DeviceMem<f32>,
        pre_act: &dyn DeviceMem<f32>,
        ln_inv: &dyn DeviceMem<f32>,
        y0: &dyn DeviceMem<f32>,
        bias: &dyn DeviceMem<f32>,
        g: &mut dyn DeviceMem<f32>,
        dy0: &mut dyn DeviceMem<f32>,
        d_bias: &mut dyn DeviceMem<f32>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("dense_epilogue_bwd");
        ensure!(e.bn == BnMode::None, "dense epilogue: the device backward takes no BatchNorm");
        for (n, m) in [("dout", dout.elements()), ("pre_act", pre_act.elements()), ("g", g.elements()), ("dy0", dy0.elements())] {
            ensure!(m >= b * h, "dense epilogue: {n} has {m} entries for {b} × {h}");
        }
        ensure!(d_bias.elements() >= h && ln_inv.elements() >= b, "dense epilogue: d_bias needs {h} entries and ln_inv {b}");
        let (bi, hi) = (b as i32, h as i32);
        let (key, thr, scale, drop) = dropout_args(e);
        let a = |m: &dyn DeviceMem<f32>| m.device_address();
        let args: [&dyn KernelArg; 12] = [&a(dout), &a(pre_act), &a(ln_inv), &bi, &hi, &(e.ln as i32), &act_code(e.act), &key, &thr, &scale, &drop, &g.device_address()];
        self.dev.launch(&self.bwd_rows, Self::rows_cfg(b), &args)?;
        let none = 0u64;
        let args: [&dyn KernelArg; 13] =
            [&g.device_address(), &a(y0), &a(bias), &bi, &hi, &bn_code(e.bn), &none, &none, &none, &dy0.device_address(), &d_bias.device_address(), &none, &none];
        self.dev.launch(&self.bwd_cols, Self::cols_cfg(h), &args)
    }

    /// Uploads, poisons every output with NaN, runs the forward (stats, epilogue) and the backward
    /// (rows, columns), copies back. For the parity tests; a training step would enqueue the same four
    /// launches on arena buffers between its GEMMs.
    pub fn run_host(&self, e: &Epilogue, inp: &EpilogueHostIn<'_>) -> Result<EpilogueHost> {
        let (b, h) = (inp.b, inp.h);
        ensure!(b >= 1 && h >= 1 && b <= i32::MAX as usize && h <= i32::MAX as usize, "dense epilogue: B = {b}, H = {h} out of range");
        ensure!(inp.y0.len() == b * h && inp.dout.len() == b * h, "dense epilogue: y0 and dout need {b} × {h} entries");
        for (n, v) in [("bias", inp.bias), ("gamma", inp.gamma), ("beta", inp.beta), ("running_mean", inp.running_mean), ("running_var", inp.running_var)] {
            ensure!(v.len() == h, "dense epilogue: {n} needs {h} entries, got {}", v.len());
        }
        if e.bn == BnMode::Batch {
            ensure!(b >= 2, "BatchNorm in training mode needs at least 2 cells in a minibatch (got {b})");
        }
        let dev = self.dev;
        let nan = |n: usize| dev.upload(&vec![f32::NAN; n.max(1)]);
        let (y0, bias, gamma, beta, rm, rv, dout) =
            (dev.upload(inp.y0)?, dev.upload(inp.bias)?, dev.upload(inp.gamma)?, dev.upload(inp.beta)?, dev.upload(inp.running_mean)?, dev.upload(inp.running_var)?, dev.upload(inp.dout)?);
        let (mean, inv, rm_out, rv_out) = (nan(h)?, nan(h)?, dev.upload(inp.running_mean)?, dev.upload(inp.running_var)?);
        let (out, pre, ln_inv, g, dy0, db, dg, dbeta) = (nan(b * h)?, nan(b * h)?, nan(b)?, nan(b * h)?, nan(b * h)?, nan(h)?, nan(h)?, nan(h)?);
        let (bi, hi, bn) = (b as i32, h as i32, bn_code(e.bn));
        let (key, thr, scale, drop) = dropout_args(e);
        let a = |m: &dyn DeviceMem<f32>| m.device_address();
        if e.bn != BnMode::None {
            let upd = if e.bn == BnMode::Batch { (a(&rm_out), a(&rv_out)) } else { (0, 0) };
            let args: [&dyn KernelArg; 11] = [&a(&y0), &a(&bias), &bi, &hi, &bn, &a(&rm), &a(&rv), &a(&mean), &a(&inv), &upd.0, &upd.1];
            dev.launch(&self.stats, Self::cols_cfg(h), &args)?;
        }
        let args: [&dyn KernelArg; 18] = [
            &a(&y0),
            &a(&bias),
            &bi,
            &hi,
            &bn,
            &a(&mean),
            &a(&inv),
            &a(&gamma),
            &a(&beta),
            &(e.ln as i32),
            &act_code(e.act),
            &key,
            &thr,
            &scale,
            &drop,
            &a(&out),
            &a(&pre),
            &a(&ln_inv),
        ];
        dev.launch(&self.fwd, Self::rows_cfg(b), &args)?;
        let args: [&dyn KernelArg; 12] = [&a(&dout), &a(&pre), &a(&ln_inv), &bi, &hi, &(e.ln as i32), &act_code(e.act), &key, &thr, &scale, &drop, &a(&g)];
        dev.launch(&self.bwd_rows, Self::rows_cfg(b), &args)?;
        let args: [&dyn KernelArg; 13] = [&a(&g), &a(&y0), &a(&bias), &bi, &hi, &bn, &a(&mean), &a(&inv), &a(&gamma), &a(&dy0), &a(&db), &a(&dg), &a(&dbeta)];
        dev.launch(&self.bwd_cols, Self::cols_cfg(h), &args)?;
        dev.synchronize()?;
        let bn_on = e.bn != BnMode::None;
        Ok(EpilogueHost {
            out: dev.download(&out)?,
            pre_act: dev.download(&pre)?,
            running_mean: dev.download(&rm_out)?,
            running_var: dev.download(&rv_out)?,
            dy0: dev.download(&dy0)?,
            d_bias: dev.download(&db)?,
            d_gamma: if bn_on { dev.download(&dg)? } else { Vec::new() },
            d_beta: if bn_on { dev.download(&dbeta)? } else { Vec::new() },
        })
    }
}
