//! CUDA backend runtime: the kernels embedded by build.rs (one fatbin per `kernels/*.cu`), driver and
//! device discovery that never panics on a machine without the NVIDIA driver, a context + stream with the
//! modules loaded ([`CudaDevice`]), typed kernel wrappers ([`CudaOptim`], [`CudaSpecial`],
//! [`CudaSplicingLik`], [`CudaExprLik`], [`CudaLatent`], [`CudaDenseEpilogue`], [`CudaPartial`],
//! [`CudaSparseLinear`], [`CudaGlue`], [`CudaDecode`], [`CudaGather`], and the cuBLAS GEMMs [`CudaGemm`]), the model's training step
//! chained from them ([`step`]), the one-allocation device memory arena ([`arena`]), optional NVTX ranges
//! ([`nvtx`]) and the host emulation of the device ([`emu`]: the same wrappers and kernel sources on the
//! CPU, for tests). **None of it has run on a GPU yet.**
//!
//! Nothing CUDA is linked at build time: cudarc loads `libcuda.so` at run time (dynamic-loading), so the
//! same binary runs on CPU-only machines. The kernels need a device of compute capability 8.0 or newer
//! (SASS for sm_80 and sm_90, PTX for newer GPUs) and a driver that supports CUDA 13.0 (R580+), the
//! version of the nvcc that compiled them.

pub mod arena;
pub mod decode;
pub mod dense_epilogue;
pub mod emu;
pub mod expr_lik;
pub mod gather;
pub mod gemm;
pub mod glue;
pub mod latent;
pub mod mma;
pub mod nvtx;
pub mod optim;
pub mod partial;
pub mod resident;
pub mod runtime;
pub mod sparse_linear;
pub mod special;
pub mod splicing_lik;
pub mod step;

pub use arena::{ArenaPlan, DeviceArena, Region};
pub use optim::CudaOptim;
pub use runtime::{CudaDevice, DevBuf, DeviceMem, Kernel};
pub use decode::CudaDecode;
pub use dense_epilogue::CudaDenseEpilogue;
pub use expr_lik::CudaExprLik;
pub use gather::CudaGather;
pub use gemm::CudaGemm;
pub use glue::CudaGlue;
pub use latent::CudaLatent;
pub use partial::CudaPartial;
pub use sparse_linear::CudaSparseLinear;
pub use special::CudaSpecial;
pub use splicing_lik::CudaSplicingLik;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// Chunk ids of segmented work in chunks of `chunk` entries (kernels/chunks.cuh): an upper bound for
/// `n_segments` segments of `n_entries` entries in all, the warps of one launch.
pub fn chunk_ids(n_segments: usize, n_entries: usize, chunk: usize) -> usize {
    n_segments + n_entries / chunk.max(1) + 1
}

/// Oldest compute capability the embedded fatbins can run on.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);
/// Oldest driver API version (`cuDriverGetVersion`) that loads code from nvcc 13.0.
pub const MIN_DRIVER_VERSION: i32 = 13000;

/// The embedded fatbins: (kernel file stem, bytes). Empty when the binary was built without nvcc.
pub fn kernel_fatbins() -> &'static [(&'static str, &'static [u8])] {
    embedded::KERNEL_FATBINS
}

/// (file name, text) of every file under kernels/ (for the host emulation, [`emu`]).
pub fn kernel_sources() -> &'static [(&'static str, &'static str)] {
    embedded::KERNEL_SOURCES
}

/// Whether build.rs embedded the kernels.
pub fn kernels_embedded() -> bool {
    !embedded::KERNEL_FATBINS.is_empty()
}

/// Architectures in the embedded fatbins ("" when none).
pub fn kernel_archs() -> &'static str {
    embedded::KERNEL_ARCHS
}

/// Version of the nvcc that built the kernels ("" when none).
pub fn kernel_nvcc_version() -> &'static str {
    embedded::KERNEL_NVCC
}

/// Why the CUDA backend is unusable when no kernels are embedded.
pub const NO_KERNELS: &str = "this binary was built without CUDA kernels (nvcc was not found at build time; run \
                              scripts/install-nvcc.sh or set NVCC, then rebuild)";

/// The driver as seen through libcuda.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    /// `cuDriverGetVersion`, e.g. 13000 for CUDA 13.0.
    pub version: i32,
    pub device_count: usize,
}

impl DriverInfo {
    /// "13.0" for 13000.
    pub fn version_string(&self) -> String {
        format!("{}.{}", self.version / 1000, (self.version % 1000) / 10)
    }
}

/// One device, queried without creating a context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_mem: usize,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    pub driver_version: i32,
    /// Dynamic shared memory one block may use once its kernel opts in (bytes; 48 KiB without).
    pub smem_optin: usize,
}

impl DeviceInfo {
    /// Why the embedded kernels cannot run on this device, if they cannot.
    pub fn unsupported_reason(&self) -> Option<String> {
        if self.compute_capability < MIN_COMPUTE_CAPABILITY {
            return Some(format!(
                "cuda:{} ({}) has compute capability {}.{}; the kernels need {}.{} or newer",
                self.ordinal,
                self.name,
                self.compute_capability.0,
                self.compute_capability.1,
                MIN_COMPUTE_CAPABILITY.0,
                MIN_COMPUTE_CAPABILITY.1
            ));
        }
        if self.driver_version < MIN_DRIVER_VERSION {
            return Some(format!(
                "the NVIDIA driver supports CUDA {}.{}; the kernels (nvcc {}) need a driver for CUDA 13.0 or newer (R580+)",
                self.driver_version / 1000,
                (self.driver_version % 1000) / 10,
                kernel_nvcc_version()
            ));
        }
        None
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{}  {}  {:.1} GiB  compute capability {}.{}  {} SMs  {} KiB shared memory per block (opted in)",
            self.ordinal,
            self.name,
            self.total_mem as f64 / (1u64 << 30) as f64,
            self.compute_capability.0,
            self.compute_capability.1,
            self.multiprocessors,
            self.smem_optin / 1024
        )
    }
}

/// Runs `f`, turning a panic inside cudarc (it panics, rather than erroring, on a missing library or
/// symbol) into an error string.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            Err(format!("{what}: the CUDA driver library failed to load: {msg}"))
        }
    }
}

fn driver_err(what: &str, e: cudarc::driver::DriverError) -> String {
    format!("{what}: {e:?}")
}

/// Whether libcuda can be loaded (a cheap check that never panics).
pub fn driver_library_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names.
    std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// Driver version and device count, or why there is no usable driver. Never panics.
pub fn driver_info() -> Result<DriverInfo, String> {
    if !driver_library_present() {
        return Err("no NVIDIA driver: libcuda.so could not be loaded".into());
    }
    no_panic("cuInit", || {
        use cudarc::driver::{result, sys};
        let mut version = 0i32;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut version) }.result().map_err(|e| driver_err("cuDriverGetVersion", e))?;
        result::init().map_err(|e| driver_err("cuInit", e))?;
        let count = result::device::get_count().map_err(|e| driver_err("cuDeviceGetCount", e))?;
        Ok(DriverInfo { version, device_count: count.max(0) as usize })
    })
}

/// Properties of device `ordinal`, without creating a context. Never panics.
pub fn device_info(ordinal: usize) -> Result<DeviceInfo, String> {
    let driver = driver_info()?;
    if driver.device_count == 0 {
        return Err(format!("the NVIDIA driver (CUDA {}) reports no devices", driver.version_string()));
    }
    if ordinal >= driver.device_count {
        return Err(format!("no device cuda:{ordinal}: the driver reports {} device(s)", driver.device_count));
    }
    no_panic("device query", || {
        use cudarc::driver::{result, sys::CUdevice_attribute as A};
        let dev = result::device::get(ordinal as i32).map_err(|e| driver_err("cuDeviceGet", e))?;
        let name = result::device::get_name(dev).map_err(|e| driver_err("cuDeviceGetName", e))?;
        // SAFETY: `dev` comes from cuDeviceGet.
        let (total_mem, major, minor, sms, smem_optin) = unsafe {
            (
                result::device::total_mem(dev).map_err(|e| driver_err("cuDeviceTotalMem", e))?,
                result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).map_err(|e| driver_err("cuDeviceGetAttribute", e))?,
                result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).map_err(|e| driver_err("cuDeviceGetAttribute", e))?,
                result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map_err(|e| driver_err("cuDeviceGetAttribute", e))?,
                result::device::get_attribute(dev, A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).map_err(|e| driver_err("cuDeviceGetAttribute", e))?,
            )
        };
        let smem_optin = (smem_optin.max(0) as usize).max(48 * 1024);
        Ok(DeviceInfo { ordinal, name, total_mem, compute_capability: (major, minor), multiprocessors: sms, driver_version: driver.version, smem_optin })
    })
}

/// All devices the driver reports, or why there are none. Never panics.
pub fn devices() -> Result<Vec<DeviceInfo>, String> {
    let driver = driver_info()?;
    (0..driver.device_count).map(device_info).collect()
}

/// Device 0, when a driver and a device exist (whether or not the kernels are embedded: see
/// [`cuda_usable`] for that). Never panics, in particular not on a machine without libcuda.
pub fn cuda_available() -> Result<DeviceInfo, String> {
    device_info(0)
}

/// Device `ordinal` if the CUDA backend can run on it: kernels embedded, driver recent enough, device
/// new enough. Otherwise the one-line reason. Never panics.
pub fn cuda_usable(ordinal: usize) -> Result<DeviceInfo, String> {
    if !kernels_embedded() {
        return Err(NO_KERNELS.into());
    }
    let info = device_info(ordinal)?;
    match info.unsupported_reason() {
        Some(r) => Err(r),
        None => Ok(info),
    }
}

/// Whether cuBLAS can be loaded (the GEMMs of every device command need it): libcublas.so.13, which
/// itself loads libcublasLt.so.13, from the loader's path. A GPU machine may hold them elsewhere (a
/// CUDA toolkit's lib64, or the nvidia-cublas wheel PyTorch installs); the reason says what to do.
/// Checked once per process. Never panics.
pub fn blas_loadable() -> Result<(), String> {
    static LOADABLE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADABLE
        .get_or_init(|| {
            // SAFETY: opens and closes the library; nothing in it is called.
            let present = std::panic::catch_unwind(|| unsafe { cudarc::cublas::sys::is_culib_present() }).unwrap_or(false);
            if present {
                Ok(())
            } else {
                Err("cuBLAS is not on the library path (libcublas.so.13 and libcublasLt.so.13 from CUDA 13: put their folder on LD_LIBRARY_PATH)".into())
            }
        })
        .clone()
}
