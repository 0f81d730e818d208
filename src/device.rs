//! `--device auto|cpu|cuda[:N]`: parsing and resolution, shared by every command.
//!
//! `auto` picks cuda:0 when the binary embeds the kernels and a supported device is present, otherwise
//! the CPU with a one-line reason. An explicit `cuda[:N]` that cannot be honoured is an error (never a
//! silent fallback).

use crate::cuda;
use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                if let Some(n) = t.strip_prefix("cuda:").or_else(|| t.strip_prefix("gpu:")) {
                    if n.contains([',', '-']) && n.split([',', '-']).all(|x| x.trim().parse::<usize>().is_ok()) {
                        // design.md §7's data-parallel training (NCCL) is not built: say so, not "invalid"
                        return Err(format!("device `{s}`: a run uses one GPU; training on several (data-parallel, design.md §7) is not built"));
                    }
                    n.parse::<usize>().map(DeviceSpec::Cuda).map_err(|_| format!("invalid device `{s}`: the ordinal after `cuda:` must be a non-negative integer"))
                } else {
                    Err(format!("invalid device `{s}`: expected auto, cpu, cuda or cuda:N"))
                }
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// clap value parser of `--device` (a global option of the CLI: every command takes it).
pub fn parse_device_spec(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
}

/// A resolved device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(cuda::DeviceInfo),
}

impl Device {
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    pub fn ordinal(&self) -> Option<usize> {
        match self {
            Device::Cpu => None,
            Device::Cuda(i) => Some(i.ordinal),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => {
                let n = rayon::current_num_threads();
                write!(f, "cpu ({n} thread{})", if n == 1 { "" } else { "s" })
            }
            Device::Cuda(i) => write!(f, "cuda:{} ({})", i.ordinal, i.name),
        }
    }
}

/// The outcome of resolving a [`DeviceSpec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub device: Device,
    /// Why `auto` fell back to the CPU (None otherwise).
    pub fallback_reason: Option<String>,
}

impl Resolved {
    /// One line for logs: "device: cuda:0 (NVIDIA H100 ...)" or "device: cpu (2 threads): <reason>".
    pub fn describe(&self) -> String {
        match &self.fallback_reason {
            Some(r) => format!("device: {} — {r}", self.device),
            None => format!("device: {}", self.device),
        }
    }
}

/// Resolves `spec` against this binary and machine. Never panics (no driver is a reason, not a crash).
pub fn resolve(spec: DeviceSpec) -> Result<Resolved> {
    resolve_with(spec, usable_with_blas)
}

/// [`cuda::cuda_usable`], and cuBLAS loadable ([`cuda::blas_loadable`]): without it no device command
/// gets far, so `auto` falls back to the CPU with that reason and `cuda` is refused up front.
fn usable_with_blas(ordinal: usize) -> Result<cuda::DeviceInfo, String> {
    let info = cuda::cuda_usable(ordinal)?;
    cuda::blas_loadable()?;
    Ok(info)
}

/// [`resolve`] with the device probe injected (for tests).
pub fn resolve_with(spec: DeviceSpec, usable: impl Fn(usize) -> Result<cuda::DeviceInfo, String>) -> Result<Resolved> {
    match spec {
        DeviceSpec::Cpu => Ok(Resolved { device: Device::Cpu, fallback_reason: None }),
        DeviceSpec::Cuda(n) => match usable(n) {
            Ok(info) => Ok(Resolved { device: Device::Cuda(info), fallback_reason: None }),
            Err(r) => bail!("--device cuda:{n} requested but unavailable: {r}"),
        },
        DeviceSpec::Auto => match usable(0) {
            Ok(info) => Ok(Resolved { device: Device::Cuda(info), fallback_reason: None }),
            Err(r) => Ok(Resolved { device: Device::Cpu, fallback_reason: Some(format!("using the CPU: {r}")) }),
        },
    }
}

/// Whether the CUDA training step (`cuda::step`) has passed scripts/gpu-check.sh on a GPU. Until it
/// has, `--device auto` trains on the CPU and the step runs only where `--device cuda` asks for it:
/// it is tested against the CPU model under the host emulation only (src/cuda/emu.rs).
pub const CUDA_STEP_VALIDATED: bool = false;

/// [`resolve`] for every compute command (each has a CUDA path): `cuda[:N]` gets the device
/// (the command then checks that the step implements its options); `auto` stays on the CPU, with the
/// reason, while [`CUDA_STEP_VALIDATED`] is false.
pub fn resolve_for_training(spec: DeviceSpec) -> Result<Resolved> {
    resolve_for_training_with(spec, usable_with_blas)
}

/// [`resolve_for_training`] with the device probe injected (for tests).
pub fn resolve_for_training_with(spec: DeviceSpec, usable: impl Fn(usize) -> Result<cuda::DeviceInfo, String>) -> Result<Resolved> {
    let r = resolve_with(spec, usable)?;
    match (&r.device, spec) {
        (Device::Cuda(i), DeviceSpec::Auto) if !CUDA_STEP_VALIDATED => Ok(Resolved {
            device: Device::Cpu,
            fallback_reason: Some(format!(
                "using the CPU although cuda:{} ({}) is usable: the CUDA training step has not been validated on a GPU yet \
                 (it is tested under the host emulation); pass --device cuda to use it",
                i.ordinal, i.name
            )),
        }),
        _ => Ok(r),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(n: usize) -> Result<cuda::DeviceInfo, String> {
        if n == 0 {
            Ok(cuda::DeviceInfo {
                ordinal: 0,
                name: "Test GPU".into(),
                total_mem: 1 << 34,
                compute_capability: (9, 0),
                multiprocessors: 132,
                driver_version: 13000,
                smem_optin: 227 * 1024,
            })
        } else {
            Err(format!("no device cuda:{n}"))
        }
    }

    #[test]
    fn parse() {
        assert_eq!("auto".parse::<DeviceSpec>(), Ok(DeviceSpec::Auto));
        assert_eq!("CPU".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(3)));
        assert!("cuda:x".parse::<DeviceSpec>().unwrap_err().contains("ordinal"));
        for several in ["cuda:0,1", "cuda:0-3", "gpu:1, 2"] {
            assert!(several.parse::<DeviceSpec>().unwrap_err().contains("one GPU"), "{several}");
        }
        assert!("cuda:0,x".parse::<DeviceSpec>().unwrap_err().contains("ordinal"));
        assert!("tpu".parse::<DeviceSpec>().unwrap_err().contains("expected auto"));
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn resolution() {
        let r = resolve_with(DeviceSpec::Auto, gpu).unwrap();
        assert!(r.device.is_cuda() && r.fallback_reason.is_none());
        let r = resolve_with(DeviceSpec::Auto, |_| Err("no NVIDIA driver".into())).unwrap();
        assert_eq!(r.device, Device::Cpu);
        assert!(r.fallback_reason.unwrap().contains("no NVIDIA driver"));
        assert!(resolve_with(DeviceSpec::Cuda(1), gpu).unwrap_err().to_string().contains("cuda:1"));
        assert_eq!(resolve_with(DeviceSpec::Cpu, gpu).unwrap().device, Device::Cpu);
    }

    #[test]
    fn training_commands_get_the_device_only_when_asked_until_validated() {
        let r = resolve_for_training_with(DeviceSpec::Cuda(0), gpu).unwrap();
        assert!(r.device.is_cuda() && r.fallback_reason.is_none());
        let r = resolve_for_training_with(DeviceSpec::Auto, gpu).unwrap();
        if CUDA_STEP_VALIDATED {
            assert!(r.device.is_cuda());
        } else {
            assert_eq!(r.device, Device::Cpu);
            let why = r.fallback_reason.unwrap();
            assert!(why.contains("not been validated") && why.contains("--device cuda"), "{why}");
        }
        assert!(resolve_for_training_with(DeviceSpec::Cuda(1), gpu).unwrap_err().to_string().contains("no device cuda:1"));
        let r = resolve_for_training_with(DeviceSpec::Auto, |_| Err("no NVIDIA driver".into())).unwrap();
        assert!(r.device == Device::Cpu && r.fallback_reason.unwrap().contains("no NVIDIA driver"));
    }

    #[test]
    fn real_probe_does_not_panic() {
        // On a machine without the driver or kernels this must be a CPU fallback with a reason.
        let r = resolve(DeviceSpec::Auto).unwrap();
        if r.device == Device::Cpu {
            assert!(r.fallback_reason.is_some());
        }
    }
}
