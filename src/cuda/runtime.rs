//! A CUDA context on one device with one stream and every embedded kernel module loaded.
//!
//! Everything runs on a single stream, in order, so kernels take raw device pointers ([`DeviceMem`])
//! and cudarc's per-buffer event tracking is switched off: there is no other stream to synchronise
//! with, and it would otherwise record events around every launch.
//! (Written and compiled without a GPU; exercised by tests/cuda_parity.rs on a GPU machine.)

use super::{cuda_usable, kernel_fatbins, DeviceInfo};
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Device memory a kernel wrapper can take: an owned [`CudaSlice`] or an arena [`super::Region`].
pub trait DeviceMem<T> {
    /// Raw device address of the first element.
    fn device_address(&self) -> u64;
    /// Number of elements.
    fn elements(&self) -> usize;
}

impl<T> DeviceMem<T> for CudaSlice<T> {
    fn device_address(&self) -> u64 {
        let (ptr, _guard) = self.device_ptr(self.stream());
        ptr
    }
    fn elements(&self) -> usize {
        self.len()
    }
}

pub struct CudaDevice {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
}

impl CudaDevice {
    /// Opens device `ordinal`: checks that the kernels are embedded and can run there, creates the
    /// context and loads every fatbin (a load failure names the kernel file).
    pub fn open(ordinal: usize) -> Result<Self> {
        let info = cuda_usable(ordinal).map_err(|r| anyhow!("cuda:{ordinal} unavailable: {r}"))?;
        // cuda_usable checked that libcuda loads and is new enough; cudarc panics (rather than erroring)
        // on a missing library or symbol, so keep a panic from taking the process down all the same.
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| anyhow!("creating a CUDA context on cuda:{ordinal}: the CUDA driver library panicked"))?
            .map_err(|e| anyhow!("creating a CUDA context on cuda:{ordinal}: {e:?}"))?;
        // SAFETY: all work goes through `stream`, the context's only stream, in order.
        unsafe { ctx.disable_event_tracking() };
        // A created (not the legacy default) stream: CUDA graph capture, which later training steps may
        // use, is not allowed on the legacy default stream.
        let stream = ctx.new_stream().map_err(|e| anyhow!("creating a CUDA stream on cuda:{ordinal}: {e:?}"))?;
        let mut modules = HashMap::new();
        for &(name, bytes) in kernel_fatbins() {
            // cuModuleLoadData accepts a fatbin image: the driver picks the SASS for this device or JITs
            // the PTX.
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(bytes.to_vec()))
                .map_err(|e| anyhow!("loading kernels/{name}.cu's fatbin on cuda:{ordinal} ({}): {e:?}", info.name))?;
            modules.insert(name, module);
        }
        Ok(CudaDevice { info, ctx, stream, modules })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Names of the loaded kernel modules (the kernels/*.cu file stems).
    pub fn module_names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.modules.keys().copied().collect();
        v.sort();
        v
    }

    /// Kernel `function` of kernels/`module`.cu.
    pub fn function(&self, module: &str, function: &str) -> Result<CudaFunction> {
        let m = self.modules.get(module).with_context(|| format!("no kernel module `{module}` embedded (kernels/{module}.cu)"))?;
        m.load_function(function).map_err(|e| anyhow!("kernel `{function}` not found in kernels/{module}.cu: {e:?}"))
    }

    /// Waits for all queued work; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| anyhow!("CUDA stream synchronize on cuda:{}: {e:?}", self.info.ordinal))
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(data).map_err(|e| anyhow!("host-to-device copy of {} elements: {e:?}", data.len()))
    }

    /// Copies a host slice into an existing device buffer of the same length.
    pub fn upload_into<T: DeviceRepr>(&self, data: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        if dst.len() != data.len() {
            bail!("host-to-device copy: {} elements into a buffer of {}", data.len(), dst.len());
        }
        self.stream.memcpy_htod(data, dst).map_err(|e| anyhow!("host-to-device copy of {} elements: {e:?}", data.len()))
    }

    /// Copies a device buffer back (synchronises the stream).
    pub fn download<T: DeviceRepr>(&self, src: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(src).map_err(|e| anyhow!("device-to-host copy of {} elements: {e:?}", src.len()))
    }

    /// Copies `data` into device memory `dst` (e.g. an arena region) of the same length; synchronises so
    /// `data` may be dropped right after.
    pub fn write<T: DeviceRepr>(&self, data: &[T], dst: &mut dyn DeviceMem<T>) -> Result<()> {
        if dst.elements() != data.len() {
            bail!("host-to-device copy: {} elements into device memory of {}", data.len(), dst.elements());
        }
        // SAFETY: `dst` holds data.len() elements of T (checked) and stays alive (its lifetime or owner).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.device_address(), data, self.stream.cu_stream()) }
            .map_err(|e| anyhow!("host-to-device copy of {} elements: {e:?}", data.len()))?;
        self.synchronize()
    }

    /// Copies device memory `src` (e.g. an arena region) to a new host vector (synchronises).
    pub fn read<T: DeviceRepr + Default + Clone>(&self, src: &dyn DeviceMem<T>) -> Result<Vec<T>> {
        let mut out = vec![T::default(); src.elements()];
        // SAFETY: `src` holds out.len() elements of T.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut out, src.device_address(), self.stream.cu_stream()) }
            .map_err(|e| anyhow!("device-to-host copy of {} elements: {e:?}", out.len()))?;
        self.synchronize()?;
        Ok(out)
    }

    /// A zero-filled device buffer.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros(n).map_err(|e| anyhow!("allocating {n} elements on cuda:{}: {e:?}", self.info.ordinal))
    }

    /// Launches `f` with `args` pushed in order. The arguments must match the kernel's parameter list
    /// (the typed wrappers guarantee that).
    pub(crate) fn launch(&self, f: &CudaFunction, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        let mut b = self.stream.launch_builder(f);
        for a in args {
            a.push(&mut b);
        }
        // SAFETY: the wrapper that built `args` matches the kernel signature and keeps the buffers alive.
        unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| anyhow!("kernel launch failed: {e:?}"))
    }
}

/// A scalar kernel argument (pushed by reference: cudarc copies the value at launch time).
pub(crate) trait KernelArg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

macro_rules! kernel_arg {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
        }
    )*};
}
kernel_arg!(f32, f64, i32, i64, u32, u64);

/// Grid size for a grid-stride elementwise kernel over `n` entries: enough blocks to fill the device a
/// few times over, never more than needed.
pub(crate) fn elementwise_grid(n: usize, threads: u32, multiprocessors: i32) -> u32 {
    let needed = n.div_ceil(threads as usize).max(1);
    let cap = (multiprocessors.max(1) as usize) * 8;
    needed.min(cap) as u32
}
