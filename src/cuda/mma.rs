//! Launch of kernels/mma_test.cu: one 16 × N tensor-core GEMM tile through kernels/mma.cuh (bf16
//! operands, f32 accumulation), for tests/cuda_mma_parity.rs to check the fragment layout against an
//! f64 product. **It has never run on a GPU**: under the host emulation it checks the kernel code
//! against the emulation's reading of the PTX fragment layout; only a GPU checks that reading.

use super::runtime::{CudaDevice, DeviceMem, KernelArg, Kernel};
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

pub struct CudaMmaTest<'d> {
    dev: &'d CudaDevice,
    gemm: Kernel,
}

impl<'d> CudaMmaTest<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        Ok(CudaMmaTest { dev, gemm: dev.function("mma_test", "mma_gemm_test")? })
    }

    /// c (16 × n, row-major, poisoned first) = bf16(a) (16 × k) · bf16(b), with b given column-major
    /// as `bt` (n × k). k a multiple of 16, n of 8.
    pub fn gemm_host(&self, a: &[f32], bt: &[f32], k: usize, n: usize) -> Result<Vec<f32>> {
        ensure!(k % 16 == 0 && n % 8 == 0 && k > 0 && n > 0, "mma_gemm_test: k = {k} must be a multiple of 16, n = {n} of 8");
        ensure!(a.len() == 16 * k && bt.len() == n * k, "mma_gemm_test: a is 16 × {k}, bt {n} × {k}");
        let (ad, bd) = (self.dev.upload(a)?, self.dev.upload(bt)?);
        let c = self.dev.upload(&vec![f32::NAN; 16 * n])?;
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
        let args: [&dyn KernelArg; 5] = [&ad.device_address(), &bd.device_address(), &(k as i32), &(n as i32), &c.device_address()];
        self.dev.launch(&self.gemm, cfg, &args)?;
        self.dev.synchronize()?;
        self.dev.download(&c)
    }
}
