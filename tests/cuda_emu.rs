//! The host emulation of the CUDA backend (src/cuda/emu.rs): every kernel file compiles for the host
//! and loads, and launches go through the same wrappers as on a GPU.

#[path = "common/emu.rs"]
mod emu;

use splicevi::cuda::CudaDevice;

fn emu_or_skip(test: &str) -> Option<CudaDevice> {
    match CudaDevice::open_emulated() {
        Ok(d) => Some(d),
        Err(why) => {
            emu::skipped(&format!("{test}: no host emulation ({why})"));
            None
        }
    }
}

#[test]
fn every_kernel_file_loads_under_the_emulation() {
    let Some(dev) = emu_or_skip("every_kernel_file_loads_under_the_emulation") else { return };
    let names = dev.module_names();
    for m in ["adamw", "dense_epilogue", "expr_lik", "grad_norm", "latent", "mma_test", "partial", "sparse_linear", "special_test", "splicing_lik"] {
        assert!(names.contains(&m), "module {m} missing from {names:?}");
    }
    assert!(dev.is_emulated());
}
