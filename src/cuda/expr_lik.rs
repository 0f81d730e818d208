//! Typed launch of kernels/expr_lik.cu: expression decode (softplus or softmax scale, × library) +
//! ZINB / NB / Poisson log-likelihood + gradients, one block per row. CPU twin:
//! [`crate::model::expr_lik::expr_row`].
//!
//! **This kernel has never run on a GPU**: it was written and compiled without one (nvcc 13.0, sm_80 /
//! sm_90 SASS + compute_80 PTX); tests/cuda_lik_parity.rs compares it with the CPU twin where a GPU
//! exists and skips (printing `SKIPPED:`) elsewhere. There are no performance numbers for it.

use super::runtime::{CudaDevice, DeviceMem, KernelArg, Kernel};
use crate::model::config::GeneLikelihood;
use crate::model::expr_lik::ScaleAct;
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block (EXPR_THREADS in kernels/expr_lik.cu).
pub const EXPR_THREADS: u32 = 256;

pub fn lik_code(l: GeneLikelihood) -> i32 {
    match l {
        GeneLikelihood::Zinb => 0,
        GeneLikelihood::Nb => 1,
        GeneLikelihood::Poisson => 2,
    }
}

pub fn act_code(a: ScaleAct) -> i32 {
    match a {
        ScaleAct::Softplus => 0,
        ScaleAct::Softmax => 1,
    }
}

/// Device inputs: B rows × G genes.
pub struct ExprLikInputs<'a> {
    /// Scale-head logits (B × G).
    pub raw: &'a dyn DeviceMem<f32>,
    /// Zero-inflation logits (B × G): ZINB only.
    pub pi: Option<&'a dyn DeviceMem<f32>>,
    /// θ with row stride `theta_stride` (0: one row of G shared by all cells; G: B × G). Not for Poisson.
    pub theta: Option<&'a dyn DeviceMem<f32>>,
    pub theta_stride: usize,
    /// Library ℓ per row (B).
    pub library: &'a dyn DeviceMem<f32>,
    /// Counts, CSR by row: indptr (B + 1, i64), gene indices (strictly ascending per row), values.
    pub x_ptr: &'a dyn DeviceMem<i64>,
    pub x_idx: &'a dyn DeviceMem<u32>,
    pub x_val: &'a dyn DeviceMem<f32>,
    /// Per-row multiplier of every gradient (None: 1).
    pub grad_weight: Option<&'a dyn DeviceMem<f32>>,
}

/// Device outputs.
pub struct ExprLikOutputs<'a> {
    /// −Σ_g log p per row (B), unmasked.
    pub rl: &'a mut dyn DeviceMem<f32>,
    /// d/d raw (B × G).
    pub d_raw: &'a mut dyn DeviceMem<f32>,
    /// d/d log θ per entry (B × G); may be None (e.g. Poisson).
    pub d_log_theta: Option<&'a mut dyn DeviceMem<f32>>,
    /// d/d π (B × G); may be None (NB / Poisson).
    pub d_pi: Option<&'a mut dyn DeviceMem<f32>>,
    /// d/d ℓ (B).
    pub d_library: &'a mut dyn DeviceMem<f32>,
}

/// Results copied back to the host.
#[derive(Clone, Debug)]
pub struct ExprLikHost {
    pub rl: Vec<f32>,
    pub d_raw: Vec<f32>,
    pub d_log_theta: Vec<f32>,
    pub d_pi: Vec<f32>,
    pub d_library: Vec<f32>,
}

pub struct CudaExprLik<'d> {
    dev: &'d CudaDevice,
    f: Kernel,
}

impl<'d> CudaExprLik<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        Ok(CudaExprLik { dev, f: dev.function("expr_lik", "expr_lik")? })
    }

    /// Enqueues the kernel for `n_genes` genes. Buffer lengths are checked; the CSR contents (ascending
    /// indices < G, indptr consistent) are trusted (see [`Self::run_host`], which validates them).
    pub fn launch(&self, lik: GeneLikelihood, act: ScaleAct, n_genes: usize, inp: &ExprLikInputs<'_>, out: &mut ExprLikOutputs<'_>) -> Result<()> {
        let _r = crate::nvtx_range!("expr_lik {}", lik.as_str());
        let g = n_genes;
        let b = inp.library.elements();
        ensure!(g >= 1 && g <= i32::MAX as usize, "expr_lik: G = {g} out of range");
        ensure!(b <= i32::MAX as usize, "expr_lik: {b} rows exceed one grid dimension");
        ensure!(inp.raw.elements() == b * g, "expr_lik: raw has {} elements for {b} × {g}", inp.raw.elements());
        ensure!(inp.x_ptr.elements() == b + 1, "expr_lik: x_ptr must have {} entries", b + 1);
        ensure!(inp.x_idx.elements() == inp.x_val.elements(), "expr_lik: x_idx and x_val differ in length");
        if lik == GeneLikelihood::Zinb {
            ensure!(inp.pi.is_some_and(|p| p.elements() == b * g), "expr_lik: ZINB needs pi with {b} × {g} entries");
        }
        if lik != GeneLikelihood::Poisson {
            ensure!(inp.theta_stride == 0 || inp.theta_stride == g, "expr_lik: theta_stride must be 0 or G");
            let need = if inp.theta_stride == 0 { g } else { b * g };
            ensure!(inp.theta.is_some_and(|t| t.elements() == need), "expr_lik: {lik} needs theta with {need} entries");
        }
        if let Some(wt) = inp.grad_weight {
            ensure!(wt.elements() == b, "expr_lik: grad_weight must have {b} entries");
        }
        ensure!(out.rl.elements() == b && out.d_library.elements() == b && out.d_raw.elements() == b * g, "expr_lik: output sizes do not match {b} × {g}");
        if let Some(o) = &out.d_log_theta {
            ensure!(o.elements() == b * g, "expr_lik: d_log_theta must have {b} × {g} entries");
        }
        if let Some(o) = &out.d_pi {
            ensure!(o.elements() == b * g, "expr_lik: d_pi must have {b} × {g} entries");
        }
        if b == 0 {
            return Ok(());
        }
        let opt = |m: Option<&dyn DeviceMem<f32>>| m.map(|m| m.device_address()).unwrap_or(0);
        let dth = out.d_log_theta.as_ref().map(|m| m.device_address()).unwrap_or(0);
        let dpi = out.d_pi.as_ref().map(|m| m.device_address()).unwrap_or(0);
        let theta = if lik == GeneLikelihood::Poisson { 0 } else { opt(inp.theta) };
        let pi = if lik == GeneLikelihood::Zinb { opt(inp.pi) } else { 0 };
        let cfg = LaunchConfig { grid_dim: (b as u32, 1, 1), block_dim: (EXPR_THREADS, 1, 1), shared_mem_bytes: 0 };
        let args: [&dyn KernelArg; 17] = [
            &inp.raw.device_address(),
            &pi,
            &theta,
            &(inp.theta_stride as i64),
            &inp.library.device_address(),
            &inp.x_ptr.device_address(),
            &inp.x_idx.device_address(),
            &inp.x_val.device_address(),
            &opt(inp.grad_weight),
            &(g as i32),
            &lik_code(lik),
            &act_code(act),
            &out.rl.device_address(),
            &out.d_raw.device_address(),
            &dth,
            &dpi,
            &out.d_library.device_address(),
        ];
        self.dev.launch(&self.f, cfg, &args)
    }

    /// Convenience for tests: validates and uploads host data (counts as CSR parts), poisons every
    /// output with NaN, launches, copies back. `pi` / `theta` may be empty when the likelihood does not
    /// use them (their outputs then come back as zeros written by the kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn run_host(
        &self,
        lik: GeneLikelihood,
        act: ScaleAct,
        n_genes: usize,
        raw: &[f32],
        pi: &[f32],
        theta: &[f32],
        theta_stride: usize,
        library: &[f32],
        x_ptr: &[usize],
        x_idx: &[u32],
        x_val: &[f32],
        grad_weight: Option<&[f32]>,
    ) -> Result<ExprLikHost> {
        let (b, g) = (library.len(), n_genes);
        ensure!(b > 0 && g > 0, "expr_lik run_host: needs at least one row and one gene");
        ensure!(x_ptr.len() == b + 1 && x_ptr[0] == 0 && x_ptr[b] == x_idx.len() && x_idx.len() == x_val.len(), "expr_lik: malformed count CSR");
        for i in 0..b {
            let idx = &x_idx[x_ptr[i]..x_ptr[i + 1]];
            ensure!(idx.windows(2).all(|w| w[0] < w[1]) && idx.iter().all(|&c| (c as usize) < g), "expr_lik: row {i}: gene indices must be strictly ascending and < G");
        }
        let dev = self.dev;
        let nan = |n: usize| dev.upload(&vec![f32::NAN; n]);
        let rawd = dev.upload(raw)?;
        let pid = if lik == GeneLikelihood::Zinb { Some(dev.upload(pi)?) } else { None };
        let thd = if lik != GeneLikelihood::Poisson { Some(dev.upload(theta)?) } else { None };
        let libd = dev.upload(library)?;
        let xp = dev.upload(&x_ptr.iter().map(|&v| v as i64).collect::<Vec<_>>())?;
        // Device buffers cannot be empty: a batch of all-zero rows gets one unused dummy entry.
        let (xi, xv) = if x_idx.is_empty() { (dev.upload(&[0u32])?, dev.upload(&[0f32])?) } else { (dev.upload(x_idx)?, dev.upload(x_val)?) };
        let wd = match grad_weight {
            Some(w) => Some(dev.upload(w)?),
            None => None,
        };
        let (mut rl, mut draw, mut dth, mut dpi, mut dlib) = (nan(b)?, nan(b * g)?, nan(b * g)?, nan(b * g)?, nan(b)?);
        let inp = ExprLikInputs {
            raw: &rawd,
            pi: pid.as_ref().map(|p| p as &dyn DeviceMem<f32>),
            theta: thd.as_ref().map(|p| p as &dyn DeviceMem<f32>),
            theta_stride,
            library: &libd,
            x_ptr: &xp,
            x_idx: &xi,
            x_val: &xv,
            grad_weight: wd.as_ref().map(|p| p as &dyn DeviceMem<f32>),
        };
        let mut out = ExprLikOutputs { rl: &mut rl, d_raw: &mut draw, d_log_theta: Some(&mut dth), d_pi: Some(&mut dpi), d_library: &mut dlib };
        self.launch(lik, act, g, &inp, &mut out)?;
        dev.synchronize()?;
        Ok(ExprLikHost { rl: dev.download(&rl)?, d_raw: dev.download(&draw)?, d_log_theta: dev.download(&dth)?, d_pi: dev.download(&dpi)?, d_library: dev.download(&dlib)? })
    }
}
