//! Typed launches of kernels/decode_dense.cu: the analyses' dense decode from logits to probabilities
//! (splicing p of every junction, the expression scale's row softmax). CPU twin: [`twin`] (the loops of
//! `SpliceVae::decode_dense`: `spl_lik::dm_probs` per ATSE, `vae::softmax_rows`).
//!
//! **These kernels have never run on a GPU**: written and compiled without one. tests/cuda_decode_parity.rs
//! checks them on the host (the kernel source compiled against kernels/host_emu.h) and on a GPU where
//! one exists.

use super::runtime::{CudaDevice, DeviceMem, Kernel, KernelArg};
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

/// Threads per block (DEC_THREADS in kernels/decode_dense.cu).
pub const DEC_THREADS: u32 = 256;

pub struct CudaDecode<'d> {
    dev: &'d CudaDevice,
    psi: Kernel,
    softmax: Kernel,
}

impl<'d> CudaDecode<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        let f = |n: &str| dev.function("decode_dense", n);
        Ok(CudaDecode { dev, psi: f("decode_psi_dense")?, softmax: f("decode_row_softmax")? })
    }

    /// p (B × J) from the splicing logits (B × J, bias included; `p` may be the logits' buffer): the
    /// sigmoid, or with `dm` the within-ATSE softmax of the clamped sigmoids' logits. ATSE a's junctions
    /// are `atse_junc[atse_ptr[a]..atse_ptr[a + 1]]`, every junction in one ATSE. `lse_eps`: the DM
    /// log-sum-exp's epsilon (`ModelConfig::dm_lse_eps`).
    #[allow(clippy::too_many_arguments)]
    pub fn psi(&self, logits: &dyn DeviceMem<f32>, b: usize, j: usize, atse_ptr: &dyn DeviceMem<i64>, atse_junc: &dyn DeviceMem<u32>, dm: bool, lse_eps: f32, p: &mut dyn DeviceMem<f32>) -> Result<()> {
        let _r = crate::nvtx_range!("decode_psi_dense");
        let a = atse_ptr.elements().saturating_sub(1);
        ensure!(logits.elements() >= b * j && p.elements() >= b * j, "decode psi: logits / p need {b} × {j} entries");
        ensure!(atse_junc.elements() >= j, "decode psi: {} junctions grouped for J = {j}", atse_junc.elements());
        ensure!(b <= i32::MAX as usize && j <= i32::MAX as usize && a <= i32::MAX as usize, "decode psi: B = {b}, J = {j}, A = {a} out of range");
        if b == 0 || a == 0 {
            return Ok(());
        }
        let n = b * a;
        let cfg = LaunchConfig { grid_dim: (n.div_ceil(DEC_THREADS as usize) as u32, 1, 1), block_dim: (DEC_THREADS, 1, 1), shared_mem_bytes: 0 };
        let args: [&dyn KernelArg; 9] =
            [&logits.device_address(), &(b as i32), &(j as i32), &(a as i32), &atse_ptr.device_address(), &atse_junc.device_address(), &(dm as i32), &lse_eps, &p.device_address()];
        self.dev.launch(&self.psi, cfg, &args)
    }

    /// y = softmax over each row of x (B × n; `y` may be `x`'s buffer).
    pub fn row_softmax(&self, x: &dyn DeviceMem<f32>, b: usize, n: usize, y: &mut dyn DeviceMem<f32>) -> Result<()> {
        let _r = crate::nvtx_range!("decode_row_softmax");
        ensure!(x.elements() >= b * n && y.elements() >= b * n, "decode softmax: x / y need {b} × {n} entries");
        ensure!(b <= i32::MAX as usize && n <= i32::MAX as usize, "decode softmax: B = {b}, n = {n} out of range");
        if b == 0 || n == 0 {
            return Ok(());
        }
        let warps = DEC_THREADS as usize / 32;
        let cfg = LaunchConfig { grid_dim: (b.div_ceil(warps) as u32, 1, 1), block_dim: (DEC_THREADS, 1, 1), shared_mem_bytes: 0 };
        let args: [&dyn KernelArg; 4] = [&x.device_address(), &(b as i32), &(n as i32), &y.device_address()];
        self.dev.launch(&self.softmax, cfg, &args)
    }
}

/// The CPU twins, on host slices.
pub mod twin {
    use crate::model::real::sigmoid;
    use crate::model::spl_lik::dm_probs;
    use crate::model::Mat;

    /// `SpliceVae::decode_dense`'s p from B × J logits.
    pub fn psi(logits: &[f32], b: usize, j: usize, atse_ptr: &[usize], atse_junc: &[u32], dm: bool, lse_eps: f64) -> Vec<f32> {
        let mut p: Vec<f32> = logits.iter().map(|&x| sigmoid(x)).collect();
        if dm {
            let (mut raw, mut probs) = (Vec::new(), Vec::new());
            for i in 0..b {
                for a in 0..atse_ptr.len() - 1 {
                    let js = &atse_junc[atse_ptr[a]..atse_ptr[a + 1]];
                    raw.clear();
                    raw.extend(js.iter().map(|&jj| logits[i * j + jj as usize]));
                    dm_probs(&raw, lse_eps, &mut probs);
                    for (q, &jj) in js.iter().enumerate() {
                        p[i * j + jj as usize] = probs[q];
                    }
                }
            }
        }
        p
    }

    /// `vae::softmax_rows`.
    pub fn row_softmax(x: &[f32], b: usize, n: usize) -> Vec<f32> {
        crate::model::vae::softmax_rows(&Mat::from_vec(b, n, x.to_vec())).data
    }
}
