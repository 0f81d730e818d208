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
/// Threads per block of the column kernels (EPI_COL_THREADS).
const EPI_COL_THREADS: u32 = 256;
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
    /// The column kernels: a block of EPI_COL_THREADS (8 row lanes × 32 columns) per strip of 32 columns.
    fn cols_cfg(h: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (h.div_ceil(32).max(1) as u32, 1, 1), block_dim: (EPI_COL_THREADS, 1, 1), shared_mem_bytes: 0 }
    }

    /// Enqueues the forward: out = dropout(act(LN?(BN?(y0 + bias)))), with the activation's input
    /// `pre_act` (B × H) and the LayerNorm's 1/std per row `ln_inv` (B) kept for the backward. With
    /// BatchNorm, `bn` holds its statistics (from [`Self::bn_stats`]) and affine parameters.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        e: &Epilogue,
        b: usize,
        h: usize,
        y0: &dyn DeviceMem<f32>,
        bias: &dyn DeviceMem<f32>,
        bn: Option<&BnDev<'_>>,
        out: &mut dyn DeviceMem<f32>,
        pre_act: &mut dyn DeviceMem<f32>,
        ln_inv: &mut dyn DeviceMem<f32>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("dense_epilogue_fwd");
        check_sizes(e, b, h, bn)?;
        for (n, m) in [("y0", y0.elements()), ("out", out.elements()), ("pre_act", pre_act.elements())] {
            ensure!(m >= b * h, "dense epilogue: {n} has {m} entries for {b} × {h}");
        }
        ensure!(bias.elements() >= h && ln_inv.elements() >= b, "dense epilogue: bias needs {h} entries and ln_inv {b}");
        let (bi, hi) = (b as i32, h as i32);
        let (key, thr, scale, drop) = dropout_args(e);
        let bn_a = |f: fn(&BnDev<'_>) -> u64| bn.map_or(0, f);
        let args: [&dyn KernelArg; 18] = [
            &y0.device_address(),
            &bias.device_address(),
            &bi,
            &hi,
            &bn_code(e.bn),
            &bn_a(|x| x.mean.device_address()),
            &bn_a(|x| x.inv_std.device_address()),
            &bn_a(|x| x.gamma.device_address()),
            &bn_a(|x| x.beta.device_address()),
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

    /// Enqueues the BatchNorm statistics of y0 + bias into `bn.mean` / `bn.inv_std`: the batch's
    /// (training, also updating the running statistics into `running_out`) or the running ones.
    pub fn bn_stats(&self, e: &Epilogue, b: usize, h: usize, y0: &dyn DeviceMem<f32>, bias: &dyn DeviceMem<f32>, bn: &BnDev<'_>, running_out: Option<(&dyn DeviceMem<f32>, &dyn DeviceMem<f32>)>) -> Result<()> {
        check_sizes(e, b, h, Some(bn))?;
        let upd = running_out.map_or((0, 0), |(m, v)| (m.device_address(), v.device_address()));
        let args: [&dyn KernelArg; 11] = [
            &y0.device_address(),
            &bias.device_address(),
            &(b as i32),
            &(h as i32),
            &bn_code(e.bn),
            &bn.running_mean.device_address(),
            &bn.running_var.device_address(),
            &bn.mean.device_address(),
            &bn.inv_std.device_address(),
            &upd.0,
            &upd.1,
        ];
        self.dev.launch(&self.stats, Self::cols_cfg(h), &args)
    }

    /// Enqueues the backward of [`Self::forward`]: from d(out) to d(y0) and d(bias) (and, with
    /// BatchNorm, d(gamma), d(beta) into `bn_grads`), all overwritten, through the scratch `g` (B × H).
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
        bn: Option<&BnDev<'_>>,
        g: &mut dyn DeviceMem<f32>,
        dy0: &mut dyn DeviceMem<f32>,
        d_bias: &mut dyn DeviceMem<f32>,
        bn_grads: Option<(&mut dyn DeviceMem<f32>, &mut dyn DeviceMem<f32>)>,
    ) -> Result<()> {
        let _r = crate::nvtx_range!("dense_epilogue_bwd");
        check_sizes(e, b, h, bn)?;
        ensure!(bn.is_none() || bn_grads.is_some(), "dense epilogue: BatchNorm's backward needs d(gamma) and d(beta)");
        for (n, m) in [("dout", dout.elements()), ("pre_act", pre_act.elements()), ("g", g.elements()), ("dy0", dy0.elements())] {
            ensure!(m >= b * h, "dense epilogue: {n} has {m} entries for {b} × {h}");
        }
        ensure!(d_bias.elements() >= h && ln_inv.elements() >= b, "dense epilogue: d_bias needs {h} entries and ln_inv {b}");
        let (bi, hi) = (b as i32, h as i32);
        let (key, thr, scale, drop) = dropout_args(e);
        let a = |m: &dyn DeviceMem<f32>| m.device_address();
        let args: [&dyn KernelArg; 12] = [&a(dout), &a(pre_act), &a(ln_inv), &bi, &hi, &(e.ln as i32), &act_code(e.act), &key, &thr, &scale, &drop, &g.device_address()];
        self.dev.launch(&self.bwd_rows, Self::rows_cfg(b), &args)?;
        let bn_a = |f: fn(&BnDev<'_>) -> u64| bn.map_or(0, f);
        let (dg, dbeta) = bn_grads.map_or((0, 0), |(x, y)| (x.device_address(), y.device_address()));
        let args: [&dyn KernelArg; 13] = [
            &g.device_address(),
            &a(y0),
            &a(bias),
            &bi,
            &hi,
            &bn_code(e.bn),
            &bn_a(|x| x.mean.device_address()),
            &bn_a(|x| x.inv_std.device_address()),
            &bn_a(|x| x.gamma.device_address()),
            &dy0.device_address(),
            &d_bias.device_address(),
            &dg,
            &dbeta,
        ];
        self.dev.launch(&self.bwd_cols, Self::cols_cfg(h), &args)
    }

    /// Uploads, poisons every output with NaN, runs the forward (stats, epilogue) and the backward
    /// (rows, columns), copies back. For the parity tests; the training step enqueues the same
    /// launches on its buffers.
    pub fn run_host(&self, e: &Epilogue, inp: &EpilogueHostIn<'_>) -> Result<EpilogueHost> {
        let (b, h) = (inp.b, inp.h);
        ensure!(inp.y0.len() == b * h && inp.dout.len() == b * h, "dense epilogue: y0 and dout need {b} × {h} entries");
        for (n, v) in [("bias", inp.bias), ("gamma", inp.gamma), ("beta", inp.beta), ("running_mean", inp.running_mean), ("running_var", inp.running_var)] {
            ensure!(v.len() == h, "dense epilogue: {n} needs {h} entries, got {}", v.len());
        }
        let dev = self.dev;
        let nan = |n: usize| dev.upload(&vec![f32::NAN; n.max(1)]);
        let (y0, bias, gamma, beta, rm, rv, dout) =
            (dev.upload(inp.y0)?, dev.upload(inp.bias)?, dev.upload(inp.gamma)?, dev.upload(inp.beta)?, dev.upload(inp.running_mean)?, dev.upload(inp.running_var)?, dev.upload(inp.dout)?);
        let (mean, inv, rm_out, rv_out) = (nan(h)?, nan(h)?, dev.upload(inp.running_mean)?, dev.upload(inp.running_var)?);
        let (mut out, mut pre, mut ln_inv, mut g, mut dy0, mut db, mut dg, mut dbeta) = (nan(b * h)?, nan(b * h)?, nan(b)?, nan(b * h)?, nan(b * h)?, nan(h)?, nan(h)?, nan(h)?);
        let bn = (e.bn != BnMode::None).then_some(BnDev { gamma: &gamma, beta: &beta, running_mean: &rm, running_var: &rv, mean: &mean, inv_std: &inv });
        if let Some(bn) = &bn {
            let upd = (e.bn == BnMode::Batch).then_some((&rm_out as &dyn DeviceMem<f32>, &rv_out as &dyn DeviceMem<f32>));
            self.bn_stats(e, b, h, &y0, &bias, bn, upd)?;
        }
        self.forward(e, b, h, &y0, &bias, bn.as_ref(), &mut out, &mut pre, &mut ln_inv)?;
        let bn_grads = bn.is_some().then_some((&mut dg as &mut dyn DeviceMem<f32>, &mut dbeta as &mut dyn DeviceMem<f32>));
        self.backward(e, b, h, &dout, &pre, &ln_inv, &y0, &bias, bn.as_ref(), &mut g, &mut dy0, &mut db, bn_grads)?;
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

/// BatchNorm's buffers of one block on the device (H each): affine parameters, running statistics and
/// the statistics the forward uses (written by [`CudaDenseEpilogue::bn_stats`]).
pub struct BnDev<'a> {
    pub gamma: &'a dyn DeviceMem<f32>,
    pub beta: &'a dyn DeviceMem<f32>,
    pub running_mean: &'a dyn DeviceMem<f32>,
    pub running_var: &'a dyn DeviceMem<f32>,
    pub mean: &'a dyn DeviceMem<f32>,
    pub inv_std: &'a dyn DeviceMem<f32>,
}

/// Sizes of a launch, and BatchNorm's buffers exactly when the epilogue has BatchNorm.
fn check_sizes(e: &Epilogue, b: usize, h: usize, bn: Option<&BnDev<'_>>) -> Result<()> {
    ensure!(b >= 1 && h >= 1 && b <= i32::MAX as usize && h <= i32::MAX as usize, "dense epilogue: B = {b}, H = {h} out of range");
    ensure!((e.bn != BnMode::None) == bn.is_some(), "dense epilogue: BatchNorm buffers given for {:?}", e.bn);
    if e.bn == BnMode::Batch {
        ensure!(b >= 2, "BatchNorm in training mode needs at least 2 cells in a minibatch (got {b})");
    }
    if let Some(bn) = bn {
        for (n, m) in [("gamma", bn.gamma), ("beta", bn.beta), ("running_mean", bn.running_mean), ("running_var", bn.running_var), ("mean", bn.mean), ("inv_std", bn.inv_std)] {
            ensure!(m.elements() >= h, "dense epilogue: BatchNorm {n} has {} entries for H = {h}", m.elements());
        }
    }
    Ok(())
}
