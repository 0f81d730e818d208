//! `splicevi info`: what this binary was built with (kernels, archs, nvcc, features) and what it finds at
//! run time (driver, devices, whether the kernels load there, CPU threads). Never fails for lack of a GPU.

use crate::cuda;
use crate::device::{self, DeviceSpec};
use clap::Args;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Also create a context on every supported device and load the embedded kernels there.
    #[arg(long)]
    pub load_kernels: bool,
}

/// `step_options`: the CUDA-step options given (`--precision bf16`, ...), which `info` reports and
/// does not use.
pub fn run(args: InfoArgs, asked: DeviceSpec, step_options: &[String]) -> anyhow::Result<()> {
    println!("splicevi {}", env!("CARGO_PKG_VERSION"));
    if cuda::kernels_embedded() {
        let names: Vec<&str> = cuda::kernel_fatbins().iter().map(|(n, _)| *n).collect();
        let bytes: usize = cuda::kernel_fatbins().iter().map(|(_, b)| b.len()).sum();
        println!("kernels: embedded, {} modules ({}), {} KiB", names.len(), names.join(", "), bytes / 1024);
        println!("  archs: {}", cuda::kernel_archs());
        println!("  nvcc:  {}", cuda::kernel_nvcc_version());
    } else {
        println!("kernels: not embedded — {}", cuda::NO_KERNELS);
    }
    println!("nvtx ranges: {}", if cuda::nvtx::enabled() { "on (feature nvtx)" } else { "off (build with --features nvtx)" });
    println!("cpu: {} rayon threads ({} cores available)", rayon::current_num_threads(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));

    match cuda::driver_info() {
        Err(reason) => println!("driver: none — {reason}"),
        Ok(d) => {
            println!("driver: CUDA {} ({}), {} device(s)", d.version_string(), d.version, d.device_count);
            if d.device_count == 0 {
                println!("  no CUDA devices visible (check CUDA_VISIBLE_DEVICES and that the GPU is attached)");
            }
            match cuda::blas_loadable() {
                Ok(()) => println!("  cuBLAS: loadable"),
                Err(r) => println!("  cuBLAS: NOT loadable — {r}"),
            }
            if d.version < cuda::MIN_DRIVER_VERSION {
                println!("  note: the embedded kernels need a driver for CUDA 13.0 or newer (R580+)");
            }
            for ordinal in 0..d.device_count {
                match cuda::device_info(ordinal) {
                    Err(e) => println!("  cuda:{ordinal}: cannot query — {e}"),
                    Ok(info) => {
                        let status = match info.unsupported_reason() {
                            Some(r) => format!("unsupported: {r}"),
                            None if !cuda::kernels_embedded() => "no kernels in this build".to_string(),
                            None => "supported".to_string(),
                        };
                        println!("  {info}  [{status}]");
                        if args.load_kernels && cuda::cuda_usable(ordinal).is_ok() {
                            match cuda::CudaDevice::open(ordinal) {
                                Ok(dev) => {
                                    let free = dev.free_memory().map(|f| format!("{:.1} GiB free", f as f64 / (1u64 << 30) as f64));
                                    println!("    kernels loaded: {}; {}", dev.module_names().join(", "), free.unwrap_or_else(|| "free memory unknown".into()));
                                    println!("    cuBLAS: {}", blas_smoke(&dev));
                                }
                                Err(e) => println!("    kernels FAILED to load: {e:#}"),
                            }
                        }
                    }
                }
            }
        }
    }
    let r = device::resolve(DeviceSpec::Auto)?;
    println!("--device auto → {}", r.describe().trim_start_matches("device: "));
    // what the --device given here would get (info itself never fails for lack of a GPU)
    if let DeviceSpec::Cuda(n) = asked {
        match device::resolve_for_training(asked) {
            Ok(r) => println!("--device cuda:{n} → {}", r.describe().trim_start_matches("device: ")),
            Err(e) => println!("--device cuda:{n} → unavailable: {e:#}"),
        }
    }
    if !step_options.is_empty() {
        println!("CUDA step options given: {} (used by the commands that run the CUDA step, with --device cuda)", step_options.join(" "));
    }
    Ok(())
}

/// One small product through cuBLAS in f32 and in bf16 (exact in both: small integers), checked
/// against its known result: says whether the GEMMs every device command needs work here.
fn blas_smoke(dev: &cuda::CudaDevice) -> String {
    use cuda::gemm::GemmPrecision;
    let run = || -> anyhow::Result<String> {
        let g = cuda::CudaGemm::new(dev)?;
        // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]
        let (a, b) = ([1.0f32, 2.0, 3.0, 4.0], [5.0f32, 6.0, 7.0, 8.0]);
        for prec in [GemmPrecision::F32, GemmPrecision::Bf16] {
            let c = g.run_host(prec, &a, 2, 2, false, &b, 2, 2, false)?;
            anyhow::ensure!(c == [19.0, 22.0, 43.0, 50.0], "{prec:?} product gave {c:?}, expected [19, 22, 43, 50]");
        }
        Ok("a product in f32 and in bf16 gave the right numbers".into())
    };
    match run() {
        Ok(s) => s,
        Err(e) => format!("FAILED — {e:#}"),
    }
}
