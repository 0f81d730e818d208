//! A CUDA context on one device with one stream and every embedded kernel module loaded.
//!
//! Everything runs on a single stream, in order, so kernels take raw device pointers ([`DeviceMem`])
//! and cudarc's per-buffer event tracking is switched off: there is no other stream to synchronise
//! with, and it would otherwise record events around every launch.
//! (Written and compiled without a GPU; exercised by tests/cuda_parity.rs on a GPU machine.)

use super::emu::{EmuFn, EmuKernels};
use super::{cuda_usable, kernel_fatbins, DeviceInfo};
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Device memory a kernel wrapper can take: an owned [`DevBuf`] or an arena [`super::Region`].
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

/// Host memory standing in for device memory under the host emulation: one aligned allocation whose
/// address the emulated kernels read and write (never through a Rust reference while a kernel runs:
/// launches are synchronous there).
pub struct HostMem<T> {
    ptr: *mut T,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: plain memory; access is ordered by the (single, synchronous) emulated stream.
unsafe impl<T: Send> Send for HostMem<T> {}
unsafe impl<T: Sync> Sync for HostMem<T> {}

/// Alignment of emulated allocations (the arena's region boundary, so regions keep their alignment).
const HOST_ALIGN: usize = 256;

impl<T: Copy> HostMem<T> {
    fn zeroed(n: usize) -> Self {
        let bytes = (n * std::mem::size_of::<T>()).max(HOST_ALIGN);
        let layout = std::alloc::Layout::from_size_align(bytes, HOST_ALIGN.max(std::mem::align_of::<T>())).expect("host buffer layout");
        // SAFETY: non-zero size; every T here (floats, integers, bf16) is valid as zero bits.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        HostMem { ptr, len: n, layout }
    }
}

impl<T> Drop for HostMem<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr as *mut u8, self.layout) }
    }
}

/// An owned device buffer: cudarc's on a GPU, aligned host memory under the host emulation.
pub enum DevBuf<T> {
    Driver(CudaSlice<T>),
    Host(HostMem<T>),
}

impl<T> DevBuf<T> {
    pub fn len(&self) -> usize {
        match self {
            DevBuf::Driver(s) => s.len(),
            DevBuf::Host(h) => h.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> DeviceMem<T> for DevBuf<T> {
    fn device_address(&self) -> u64 {
        match self {
            DevBuf::Driver(s) => s.device_address(),
            DevBuf::Host(h) => h.ptr as u64,
        }
    }
    fn elements(&self) -> usize {
        self.len()
    }
}

/// A kernel entry point: a loaded CUDA function, or its host-emulated twin.
#[derive(Clone)]
pub struct Kernel {
    name: String,
    imp: KernelImpl,
    /// Dynamic shared memory a launch may use: 48 KiB, or what [`CudaDevice::opt_in_smem`] allowed.
    smem_limit: usize,
}

#[derive(Clone)]
enum KernelImpl {
    Driver(CudaFunction),
    Emu(EmuFn),
}

/// Dynamic shared memory a block may use without opting in.
pub const SMEM_DEFAULT_LIMIT: usize = 48 * 1024;

impl Kernel {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dynamic shared memory a launch of this kernel may use (bytes).
    pub fn smem_limit(&self) -> usize {
        self.smem_limit
    }
}

enum Backend {
    /// A CUDA context with one created stream and every embedded module loaded.
    Driver { ctx: Arc<CudaContext>, stream: Arc<CudaStream>, modules: HashMap<&'static str, Arc<CudaModule>> },
    /// The kernel sources compiled for the host against kernels/host_emu.h ([`super::emu`]): the same
    /// launches, memory as host allocations, one launch at a time. For tests without a GPU.
    Emu(&'static EmuKernels),
}

pub struct CudaDevice {
    info: DeviceInfo,
    backend: Backend,
    /// Kernel launches and cuBLAS calls so far (`splicevi bench` reports them per step: each costs the
    /// host a few microseconds, a floor under a step's time).
    launches: std::sync::atomic::AtomicU64,
    /// Times the host waited for the stream (synchronisations, device-to-host copies): each one drains
    /// the queue, so the GPU idles until the host enqueues again (`tests/cuda_step.rs` counts them per
    /// training step).
    host_waits: std::sync::atomic::AtomicU64,
    /// Per-kernel times while profiling is on ([`CudaDevice::set_profiling`]).
    profile: std::sync::Mutex<Option<Profile>>,
}

/// Device time per kernel name: CUDA events (with timing) around each launch and cuBLAS call on a GPU,
/// resolved when taken; the host's wall time of each launch under the emulation (its launches are
/// synchronous).
#[derive(Default)]
struct Profile {
    pending: Vec<(String, cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>,
    totals: std::collections::BTreeMap<String, (f64, u64)>,
}

/// One line of [`CudaDevice::take_profile`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub name: String,
    pub ms: f64,
    pub calls: u64,
}

/// Emulated launches share the emulator's global state (kernels/host_emu.h): one at a time per process.
static EMU_LAUNCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
        Ok(CudaDevice { info, backend: Backend::Driver { ctx, stream, modules }, launches: Default::default(), host_waits: Default::default(), profile: Default::default() })
    }

    /// The host emulation of the device ([`super::emu`]): every kernel file compiled by the host C++20
    /// compiler (once per process, cached on disk). Err(reason) where no such compiler exists.
    pub fn open_emulated() -> Result<Self, String> {
        let k = super::emu::kernels()?;
        Ok(CudaDevice { info: super::emu::device_info(), backend: Backend::Emu(k), launches: Default::default(), host_waits: Default::default(), profile: Default::default() })
    }

    /// Whether this is the host emulation rather than a GPU.
    pub fn is_emulated(&self) -> bool {
        matches!(self.backend, Backend::Emu(_))
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The CUDA stream (None under the host emulation).
    pub fn stream(&self) -> Option<&Arc<CudaStream>> {
        match &self.backend {
            Backend::Driver { stream, .. } => Some(stream),
            Backend::Emu(_) => None,
        }
    }

    /// Free device memory in bytes, when the driver says.
    pub fn free_memory(&self) -> Option<usize> {
        match &self.backend {
            Backend::Driver { ctx, .. } => ctx.mem_get_info().ok().map(|(f, _)| f),
            Backend::Emu(_) => None,
        }
    }

    /// Names of the loaded kernel modules (the kernels/*.cu file stems).
    pub fn module_names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = match &self.backend {
            Backend::Driver { modules, .. } => modules.keys().copied().collect(),
            Backend::Emu(k) => k.module_names(),
        };
        v.sort();
        v
    }

    /// Kernel `function` of kernels/`module`.cu.
    pub fn function(&self, module: &str, function: &str) -> Result<Kernel> {
        let imp = match &self.backend {
            Backend::Driver { modules, .. } => {
                let m = modules.get(module).with_context(|| format!("no kernel module `{module}` embedded (kernels/{module}.cu)"))?;
                KernelImpl::Driver(m.load_function(function).map_err(|e| anyhow!("kernel `{function}` not found in kernels/{module}.cu: {e:?}"))?)
            }
            Backend::Emu(k) => KernelImpl::Emu(k.function(module, function)?),
        };
        Ok(Kernel { name: function.to_string(), imp, smem_limit: SMEM_DEFAULT_LIMIT })
    }

    /// Lets launches of `k` use up to the device's opt-in limit of dynamic shared memory per block
    /// (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES; the host emulation enforces the same limit).
    /// Returns the new limit.
    pub fn opt_in_smem(&self, k: &mut Kernel) -> Result<usize> {
        let mut limit = self.info.smem_optin.max(SMEM_DEFAULT_LIMIT);
        if let KernelImpl::Driver(func) = &k.imp {
            use cudarc::driver::sys::CUfunction_attribute as A;
            // the kernel's static shared memory counts against the same limit
            let fixed = func.get_attribute(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES).map_err(|e| anyhow!("kernel {}: its static shared memory: {e:?}", k.name))?;
            limit = limit.saturating_sub(fixed.max(0) as usize);
            func.set_attribute(A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, limit as i32)
                .map_err(|e| anyhow!("kernel {}: allowing {limit} bytes of dynamic shared memory: {e:?}", k.name))?;
        }
        k.smem_limit = limit;
        Ok(limit)
    }

    /// Waits for all queued work; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        self.host_waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.backend {
            Backend::Driver { stream, .. } => {
                stream.synchronize().map_err(|e| anyhow!("CUDA stream synchronize on cuda:{}: {e:?}", self.info.ordinal))
            }
            Backend::Emu(_) => Ok(()),
        }
    }

    /// Copies a host slice to a new device buffer.
    pub fn upload<T: DeviceRepr + Copy>(&self, data: &[T]) -> Result<DevBuf<T>> {
        match &self.backend {
            Backend::Driver { stream, .. } => Ok(DevBuf::Driver(
                stream.clone_htod(data).map_err(|e| anyhow!("host-to-device copy of {} elements: {e:?}", data.len()))?,
            )),
            Backend::Emu(_) => {
                let h = HostMem::zeroed(data.len());
                // SAFETY: `h` holds data.len() elements.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), h.ptr, data.len()) };
                Ok(DevBuf::Host(h))
            }
        }
    }

    /// Copies a host slice into an existing device buffer of the same length.
    pub fn upload_into<T: DeviceRepr + Copy>(&self, data: &[T], dst: &mut DevBuf<T>) -> Result<()> {
        if dst.len() != data.len() {
            bail!("host-to-device copy: {} elements into a buffer of {}", data.len(), dst.len());
        }
        self.write(data, dst)
    }

    /// Copies a device buffer back (synchronises the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, src: &DevBuf<T>) -> Result<Vec<T>> {
        self.read(src)
    }

    /// Copies `data` into device memory `dst` (e.g. an arena region) of the same length, enqueued; `data`
    /// may be dropped right after: an asynchronous copy from pageable memory returns once the driver has
    /// staged the bytes (CUDA driver API, "API synchronization behavior"), so the host need not wait.
    /// (For pageable `data` only: a page-locked source is read later by the DMA engine and goes through
    /// [`Self::write_staged`], which the caller keeps alive until the stream has passed it.)
    pub fn write<T: DeviceRepr>(&self, data: &[T], dst: &mut dyn DeviceMem<T>) -> Result<()> {
        if dst.elements() != data.len() {
            bail!("host-to-device copy: {} elements into device memory of {}", data.len(), dst.elements());
        }
        match &self.backend {
            Backend::Driver { stream, .. } => {
                // SAFETY: `dst` holds data.len() elements of T (checked) and stays alive (its lifetime or owner).
                unsafe { cudarc::driver::result::memcpy_htod_async(dst.device_address(), data, stream.cu_stream()) }
                    .map_err(|e| anyhow!("host-to-device copy of {} elements: {e:?}", data.len()))
            }
            Backend::Emu(_) => {
                // SAFETY: `dst` is emulated device memory (a host allocation) of data.len() elements.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.device_address() as *mut T, data.len()) };
                Ok(())
            }
        }
    }

    /// A pool of staging buffers for copies to this device ([`StagingPool`]).
    pub fn staging_pool(&self) -> Arc<StagingPool> {
        let ctx = match &self.backend {
            Backend::Driver { ctx, .. } => Some(ctx.clone()),
            Backend::Emu(_) => None,
        };
        Arc::new(StagingPool { ctx, free: std::sync::Mutex::new(Vec::new()) })
    }

    /// Enqueues the copy of `src[..dst.elements()]` into `dst` without waiting for it: from page-locked
    /// memory the DMA engine reads while the host goes on, so `src` must stay untouched (and alive) until
    /// the stream has passed this point (the next synchronisation). Under the host emulation a memcpy.
    pub fn write_staged(&self, src: &StagingBuf, dst: &mut dyn DeviceMem<u8>) -> Result<()> {
        let n = dst.elements();
        if n > src.len {
            bail!("host-to-device copy: {n} bytes from a staging buffer of {}", src.len);
        }
        match (&self.backend, &src.imp) {
            (Backend::Driver { stream, .. }, StagingImpl::Pinned(p)) => {
                // SAFETY: the pinned buffer holds at least n bytes (checked) and outlives the copy (the
                // caller keeps it until the stream is synchronised); `dst` holds n bytes.
                let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr().map_err(|e| anyhow!("pinned buffer: {e:?}"))?, n) };
                unsafe { cudarc::driver::result::memcpy_htod_async(dst.device_address(), bytes, stream.cu_stream()) }
                    .map_err(|e| anyhow!("host-to-device copy of {n} bytes: {e:?}"))
            }
            (_, StagingImpl::Host(v)) => self.write(&v[..n], dst),
            (Backend::Emu(_), StagingImpl::Pinned(_)) => bail!("a page-locked staging buffer on the host emulation"),
        }
    }

    /// Copies device memory `src` (e.g. an arena region) to a new host vector (synchronises).
    pub fn read<T: DeviceRepr + Default + Clone>(&self, src: &dyn DeviceMem<T>) -> Result<Vec<T>> {
        let mut out = vec![T::default(); src.elements()];
        match &self.backend {
            Backend::Driver { stream, .. } => {
                // SAFETY: `src` holds out.len() elements of T.
                unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut out, src.device_address(), stream.cu_stream()) }
                    .map_err(|e| anyhow!("device-to-host copy of {} elements: {e:?}", out.len()))?;
                self.synchronize()?;
            }
            Backend::Emu(_) => {
                // (a GPU's copy back waits for the stream: counted as one)
                self.synchronize()?;
                // SAFETY: `src` is emulated device memory of out.len() elements.
                unsafe { std::ptr::copy_nonoverlapping(src.device_address() as *const T, out.as_mut_ptr(), out.len()) };
            }
        }
        Ok(out)
    }

    /// Copies `n` elements between device buffers (enqueued; `dst` and `src` must not overlap).
    pub fn copy<T>(&self, src: &dyn DeviceMem<T>, dst: &mut dyn DeviceMem<T>, n: usize) -> Result<()> {
        if n > src.elements() || n > dst.elements() {
            bail!("device-to-device copy of {n} elements: source {}, destination {}", src.elements(), dst.elements());
        }
        let bytes = n * std::mem::size_of::<T>();
        match &self.backend {
            Backend::Driver { stream, .. } => {
                // SAFETY: both hold at least n elements (checked).
                unsafe { cudarc::driver::result::memcpy_dtod_async(dst.device_address(), src.device_address(), bytes, stream.cu_stream()) }
                    .map_err(|e| anyhow!("device-to-device copy of {n} elements: {e:?}"))
            }
            Backend::Emu(_) => {
                // SAFETY: both are host allocations of at least n elements.
                unsafe { std::ptr::copy_nonoverlapping(src.device_address() as *const u8, dst.device_address() as *mut u8, bytes) };
                Ok(())
            }
        }
    }

    /// Sets `n` bytes at the start of `dst` to `byte` (enqueued).
    pub fn memset<T>(&self, dst: &mut dyn DeviceMem<T>, byte: u8) -> Result<()> {
        let bytes = dst.elements() * std::mem::size_of::<T>();
        match &self.backend {
            Backend::Driver { stream, .. } => {
                // SAFETY: `dst` holds `bytes` bytes.
                unsafe { cudarc::driver::result::memset_d8_async(dst.device_address(), byte, bytes, stream.cu_stream()) }
                    .map_err(|e| anyhow!("memset of {bytes} bytes: {e:?}"))
            }
            Backend::Emu(_) => {
                // SAFETY: a host allocation of `bytes` bytes.
                unsafe { std::ptr::write_bytes(dst.device_address() as *mut u8, byte, bytes) };
                Ok(())
            }
        }
    }

    /// A zero-filled device buffer.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits + Copy>(&self, n: usize) -> Result<DevBuf<T>> {
        match &self.backend {
            Backend::Driver { stream, .. } => Ok(DevBuf::Driver(
                stream.alloc_zeros(n).map_err(|e| anyhow!("allocating {n} elements on cuda:{}: {e:?}", self.info.ordinal))?,
            )),
            Backend::Emu(_) => Ok(DevBuf::Host(HostMem::zeroed(n))),
        }
    }

    /// Launches `f` with `args` pushed in order. The arguments must match the kernel's parameter list
    /// (the typed wrappers guarantee that).
    /// Kernel launches and cuBLAS calls enqueued so far.
    pub fn launches(&self) -> u64 {
        self.launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many times the host has waited for the stream so far ([`Self::synchronize`], and every copy
    /// back to the host, which synchronises).
    pub fn host_waits(&self) -> u64 {
        self.host_waits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a cuBLAS call (kernel launches count themselves).
    pub(crate) fn count_launch(&self) {
        self.launches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Switches the per-kernel profile on (discarding what it held) or off. While it is on, every
    /// launch and cuBLAS call is bracketed by two timed CUDA events, which costs host time: time steps
    /// with it off.
    pub fn set_profiling(&self, on: bool) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = on.then(Profile::default);
    }

    /// The time of each kernel (and cuBLAS call) since profiling was switched on or last taken, longest
    /// first; waits for the device. Err when profiling is off.
    pub fn take_profile(&self) -> Result<Vec<KernelTime>> {
        let mut g = self.profile.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = g.as_mut() else { bail!("the kernel profile is off (CudaDevice::set_profiling)") };
        for (name, start, end) in p.pending.drain(..) {
            let ms = start.elapsed_ms(&end).map_err(|e| anyhow!("timing kernel {name}: {e:?}"))? as f64;
            let t = p.totals.entry(name).or_default();
            t.0 += ms;
            t.1 += 1;
        }
        let mut v: Vec<KernelTime> = std::mem::take(&mut p.totals).into_iter().map(|(name, (ms, calls))| KernelTime { name, ms, calls }).collect();
        v.sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.name.cmp(&b.name)));
        Ok(v)
    }

    /// Runs `f`, one launch or cuBLAS call, and times it under `name` while profiling is on.
    pub(crate) fn timed<R>(&self, name: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let on = self.profile.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        if !on {
            return f();
        }
        match &self.backend {
            Backend::Driver { stream, .. } => {
                let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
                let start = stream.record_event(flags).map_err(|e| anyhow!("recording a timing event: {e:?}"))?;
                let r = f()?;
                let end = stream.record_event(flags).map_err(|e| anyhow!("recording a timing event: {e:?}"))?;
                if let Some(p) = self.profile.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    p.pending.push((name.to_string(), start, end));
                }
                Ok(r)
            }
            Backend::Emu(_) => {
                let t0 = std::time::Instant::now();
                let r = f()?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                if let Some(p) = self.profile.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    let t = p.totals.entry(name.to_string()).or_default();
                    t.0 += ms;
                    t.1 += 1;
                }
                Ok(r)
            }
        }
    }

    pub(crate) fn launch(&self, f: &Kernel, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        self.count_launch();
        self.timed(&f.name, || self.launch_now(f, cfg, args))
    }

    fn launch_now(&self, f: &Kernel, cfg: LaunchConfig, args: &[&dyn KernelArg]) -> Result<()> {
        match &f.imp {
            KernelImpl::Driver(func) => {
                let Backend::Driver { stream, .. } = &self.backend else { bail!("kernel {} belongs to another device", f.name) };
                let mut b = stream.launch_builder(func);
                for a in args {
                    a.push(&mut b);
                }
                // SAFETY: the wrapper that built `args` matches the kernel signature and keeps the buffers alive.
                unsafe { b.launch(cfg) }.map(|_| ()).map_err(|e| anyhow!("kernel {} launch failed: {e:?}", f.name))
            }
            KernelImpl::Emu(func) => {
                let (g, b) = (cfg.grid_dim, cfg.block_dim);
                if g.1 != 1 || g.2 != 1 || b.1 != 1 || b.2 != 1 || b.0 % 32 != 0 || b.0 == 0 {
                    bail!("kernel {}: the host emulation runs 1-D grids of whole warps only (grid {g:?}, block {b:?})", f.name);
                }
                // A GPU refuses more than 48 KiB unless the kernel opted in (opt_in_smem): fail here too.
                if cfg.shared_mem_bytes as usize > f.smem_limit || b.0 > 1024 {
                    bail!("kernel {}: {} bytes of dynamic shared memory / {} threads exceed the launch limits ({} bytes, 1024)", f.name, cfg.shared_mem_bytes, b.0, f.smem_limit);
                }
                if b.0 > func.max_threads() {
                    bail!("kernel {}: a block of {} threads exceeds its __launch_bounds__({}): a GPU refuses the launch", f.name, b.0, func.max_threads());
                }
                let argv: Vec<*mut std::ffi::c_void> = args.iter().map(|a| a.value_ptr() as *mut std::ffi::c_void).collect();
                let _one = EMU_LAUNCH.lock().unwrap_or_else(|e| e.into_inner());
                // SAFETY: the trampoline reads one value of each parameter's type from argv, in order; the
                // wrapper guarantees the list matches and that the buffers live.
                unsafe { func.call(g.0, b.0, cfg.shared_mem_bytes as usize, argv.as_ptr()) };
                Ok(())
            }
        }
    }
}

/// A scalar kernel argument (pushed by reference: cudarc copies the value at launch time).
pub(crate) trait KernelArg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
    /// Address of the value (cuLaunchKernel's kernelParams entry; the host emulation's too).
    fn value_ptr(&self) -> *const std::ffi::c_void;
}

macro_rules! kernel_arg {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
                b.arg(self);
            }
            fn value_ptr(&self) -> *const std::ffi::c_void {
                self as *const $t as *const std::ffi::c_void
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

/// Host memory a copy to the device reads: page-locked on a GPU (so the copy runs asynchronously
/// while the host goes on), a plain allocation under the host emulation (or where pinning failed).
pub struct StagingBuf {
    imp: StagingImpl,
    len: usize,
}

enum StagingImpl {
    Pinned(cudarc::driver::PinnedHostSlice<u8>),
    Host(Vec<u8>),
}

impl StagingBuf {
    /// Bytes it holds.
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// Whether it is page-locked.
    pub fn is_pinned(&self) -> bool {
        matches!(self.imp, StagingImpl::Pinned(_))
    }

    /// Its first `data.len()` bytes = `data`.
    pub fn fill(&mut self, data: &[u8]) -> Result<()> {
        ensure!(data.len() <= self.len, "{} bytes into a staging buffer of {}", data.len(), self.len);
        match &mut self.imp {
            StagingImpl::Pinned(p) => p.as_mut_slice().map_err(|e| anyhow!("pinned buffer: {e:?}"))?[..data.len()].copy_from_slice(data),
            StagingImpl::Host(v) => v[..data.len()].copy_from_slice(data),
        }
        Ok(())
    }
}

/// Staging buffers shared by the thread that prepares minibatches and the one that runs the steps:
/// taken to stage a minibatch, given back once the step that copied it has finished. Page-locked
/// allocations are slow, so they are kept and reused.
pub struct StagingPool {
    ctx: Option<Arc<CudaContext>>,
    free: std::sync::Mutex<Vec<StagingBuf>>,
}

impl StagingPool {
    /// A buffer of at least `bytes`: the smallest free one that is large enough, else a new one a
    /// quarter larger (page-locked on a GPU; pageable if pinning fails, which only costs speed).
    pub fn take(&self, bytes: usize) -> StagingBuf {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = (0..free.len()).filter(|&i| free[i].len >= bytes).min_by_key(|&i| free[i].len) {
            return free.swap_remove(i);
        }
        drop(free);
        let len = (bytes + bytes / 4).max(1 << 20);
        if let Some(ctx) = &self.ctx {
            // SAFETY: the bytes are written (`fill`) before any copy reads them.
            if let Ok(p) = unsafe { ctx.alloc_pinned::<u8>(len) } {
                return StagingBuf { imp: StagingImpl::Pinned(p), len };
            }
        }
        StagingBuf { imp: StagingImpl::Host(vec![0u8; len]), len }
    }

    /// Back into the pool (the copy that read it must be finished).
    pub fn give(&self, b: StagingBuf) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(b);
    }

    /// Buffers held free.
    pub fn n_free(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
