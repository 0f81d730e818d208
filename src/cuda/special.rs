//! Launch of kernels/special_test.cu: evaluates the device lgamma / digamma (kernels/special.cuh) over
//! an array, for tests/special.rs to compare with an f64 reference. (Needs a GPU; compiled here without.)

use super::runtime::{elementwise_grid, CudaDevice, DeviceMem, Kernel};
use anyhow::{ensure, Result};
use cudarc::driver::LaunchConfig;

pub struct CudaSpecial<'d> {
    dev: &'d CudaDevice,
    eval: Kernel,
}

impl<'d> CudaSpecial<'d> {
    pub fn new(dev: &'d CudaDevice) -> Result<Self> {
        Ok(CudaSpecial { dev, eval: dev.function("special_test", "special_eval")? })
    }

    /// `lgamma_out[i] = sv::log_gamma(x[i])`, `digamma_out[i] = sv::digamma(x[i])`.
    pub fn eval(&self, x: &dyn DeviceMem<f32>, lgamma_out: &mut dyn DeviceMem<f32>, digamma_out: &mut dyn DeviceMem<f32>) -> Result<()> {
        let n = x.elements();
        ensure!(lgamma_out.elements() == n && digamma_out.elements() == n, "special_eval: outputs must have {n} entries");
        let cfg = LaunchConfig { grid_dim: (elementwise_grid(n, 256, self.dev.info().multiprocessors), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (a, b, c) = (x.device_address(), lgamma_out.device_address(), digamma_out.device_address());
        self.dev.launch(&self.eval, cfg, &[&a, &b, &c, &(n as i64)])
    }

    /// Convenience: uploads `x`, evaluates, downloads (lgamma, digamma).
    pub fn eval_host(&self, x: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let xd = self.dev.upload(x)?;
        // Poison the outputs so an entry the kernel failed to write cannot pass as a result.
        let mut lg = self.dev.upload(&vec![f32::NAN; x.len()])?;
        let mut dg = self.dev.upload(&vec![f32::NAN; x.len()])?;
        self.eval(&xd, &mut lg, &mut dg)?;
        Ok((self.dev.download(&lg)?, self.dev.download(&dg)?))
    }
}
