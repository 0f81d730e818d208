//! The host emulation of the CUDA backend: every `kernels/*.cu` compiled by the host C++20 compiler
//! against `kernels/host_emu.h` (one std::thread per CUDA thread, std::barrier for `__syncthreads` and
//! the warp primitives) into a shared library, loaded with `dlopen`, and launched through the very same
//! Rust wrappers and argument lists as on a GPU ([`super::CudaDevice::open_emulated`]).
//!
//! What it checks without a GPU: the wrappers (argument order and types, grid and block sizes, dynamic
//! shared memory, buffer sizes), the kernels' logic (indexing, phases, barriers, reductions) and every
//! chain of launches built on them (a training step). What it does not check: nvcc's code generation,
//! device math accuracy (expf/logf here are the host libm's), cuBLAS (GEMMs run on the host), timing.
//! Slow: a launch starts one OS thread per CUDA thread of a block. Tests keep problems small.
//!
//! Each kernel file becomes `lib<stem>.so` with one trampoline per kernel,
//! `sv_emu_<kernel>(grid, block, smem, argv)`, that reads the kernel's parameters from `argv` (the
//! layout of cuLaunchKernel's kernelParams: one pointer to each value) and runs the grid. The libraries
//! are cached in the temporary directory under a hash of the sources and the compiler, so a test
//! process compiles them once and later processes not at all.

use super::DeviceInfo;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

type RawFn = unsafe extern "C" fn(u32, u32, usize, *const *mut c_void);
type BoundsFn = unsafe extern "C" fn() -> u32;

/// One emulated kernel's trampoline, and the most threads per block its `__launch_bounds__` allows.
#[derive(Clone, Copy)]
pub struct EmuFn(RawFn, u32);

impl EmuFn {
    /// The block size its `__launch_bounds__` declares: a GPU refuses a larger block (ptxas allotted
    /// registers for that many threads), while the emulation would run it. 1,024 (the launch limit)
    /// where it declares none.
    pub fn max_threads(&self) -> u32 {
        self.1
    }

    /// Runs the kernel on a `grid` × `block` 1-D launch with `smem` bytes of dynamic shared memory.
    ///
    /// # Safety
    /// `argv` must hold one pointer to a value of each of the kernel's parameter types, in order, and
    /// every device address among them must be live emulated memory of the size the kernel reads.
    pub(crate) unsafe fn call(&self, grid: u32, block: u32, smem: usize, argv: *const *mut c_void) {
        (self.0)(grid, block, smem, argv)
    }
}

/// The loaded libraries: (kernel file stem, kernel name) → trampoline.
pub struct EmuKernels {
    functions: HashMap<(String, String), EmuFn>,
    modules: Vec<&'static str>,
    dir: PathBuf,
}

impl EmuKernels {
    pub fn module_names(&self) -> Vec<&'static str> {
        self.modules.clone()
    }

    pub fn function(&self, module: &str, name: &str) -> anyhow::Result<EmuFn> {
        self.functions
            .get(&(module.to_string(), name.to_string()))
            .copied()
            .ok_or_else(|| anyhow::anyhow!("kernel `{name}` not found in kernels/{module}.cu (host emulation in {})", self.dir.display()))
    }

    /// Where the compiled libraries are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What an emulated device reports.
pub fn device_info() -> DeviceInfo {
    DeviceInfo {
        ordinal: 0,
        name: "host emulation (kernels/host_emu.h)".into(),
        total_mem: 0,
        compute_capability: (0, 0),
        // Grid-stride kernels size their grid from this: few blocks keep the emulation quick.
        multiprocessors: 1,
        driver_version: 0,
        // An A100's (sm_80, the smaller of the two architectures the kernels are built for); an H100
        // allows 227 KiB.
        smem_optin: 163 * 1024,
    }
}

/// The emulated kernels, built on first use (process-wide). Err(reason) when there is no host C++20
/// compiler; a kernel that does not compile is an error naming it.
pub fn kernels() -> Result<&'static EmuKernels, String> {
    static KERNELS: OnceLock<Result<EmuKernels, String>> = OnceLock::new();
    KERNELS.get_or_init(build).as_ref().map_err(|e| e.clone())
}

/// The names of the `extern "C" __global__` functions defined in a kernel source.
pub fn kernel_names(src: &str) -> Vec<String> {
    kernel_decls(src).into_iter().map(|(name, _)| name).collect()
}

/// The `extern "C" __global__` functions defined in a kernel source: each name with the argument of
/// its `__launch_bounds__` (the source's text, e.g. `PART_THREADS`), where it has one.
pub fn kernel_decls(src: &str) -> Vec<(String, Option<String>)> {
    const MARK: &str = "extern \"C\" __global__ void";
    let mut names = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find(MARK) {
        rest = &rest[at + MARK.len()..];
        let mut s = rest;
        let mut bounds = None;
        loop {
            s = s.trim_start();
            let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
            let ident = &s[..end];
            s = &s[end..];
            if ident == "__launch_bounds__" {
                // Skip the balanced parentheses of its argument.
                let mut depth = 0usize;
                let mut cut = s.len();
                for (i, c) in s.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                cut = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let arg = s[..cut].trim();
                bounds = arg.strip_prefix('(').and_then(|a| a.strip_suffix(')')).map(|a| a.trim().to_string());
                s = &s[cut..];
                continue;
            }
            if !ident.is_empty() && s.trim_start().starts_with('(') {
                names.push((ident.to_string(), bounds.take()));
            }
            break;
        }
    }
    names
}

const TRAMPOLINE: &str = r#"
#include <cstddef>
#include <tuple>
#include <type_traits>
namespace sv_emu_trampoline {
// Reads one value of each parameter type from argv (cuLaunchKernel's kernelParams layout), in order,
// and runs the grid.
template <class... A>
void call(void (*k)(A...), unsigned grid, unsigned block, std::size_t smem, void** argv) {
    std::size_t i = 0;
    std::tuple<std::decay_t<A>...> args{*static_cast<std::decay_t<A>*>(argv[i++])...};
    emu::launch(grid, block, smem, [&] { std::apply(k, args); });
}
}  // namespace sv_emu_trampoline
"#;

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

/// Extra flags for the host compiler (`SPLICEVI_EMU_CXXFLAGS`, split on whitespace): sanitizers, so
/// that what a GPU would do differently from the host shows up here. `-fsanitize=alignment` traps a
/// vector or fragment access a GPU would fault on as misaligned; `-fsanitize=thread` (with libtsan
/// preloaded) reports two lanes touching the same memory with no barrier between them, a race the
/// emulation's thread timing may hide. `scripts/emu-sanitize.sh` runs the kernel tests both ways.
fn extra_flags() -> Vec<String> {
    std::env::var("SPLICEVI_EMU_CXXFLAGS").unwrap_or_default().split_whitespace().map(String::from).collect()
}

fn compile(cxx: &str, dir: &Path, stem: &str, tu: &Path, lib: &Path) -> Result<(), String> {
    let tmp = dir.join(format!("lib{stem}.so.{}.tmp", std::process::id()));
    let out = std::process::Command::new(cxx)
        .args(["-O1", "-std=c++20", "-ffp-contract=off", "-pthread", "-shared", "-fPIC", "-w", "-x", "c++"])
        .args(extra_flags())
        .arg("-I")
        .arg(dir)
        .arg(tu)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("no host C++ compiler ({cxx}: {e})"))?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        if err.contains("barrier") && err.contains("No such file") {
            return Err(format!("{cxx} has no C++20 <barrier>"));
        }
        return Err(format!("{cxx} failed to compile kernels/{stem}.cu for the host emulation:\n{err}"));
    }
    std::fs::rename(&tmp, lib).map_err(|e| format!("{}: {e}", lib.display()))
}

fn build() -> Result<EmuKernels, String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let sources = super::kernel_sources();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut h, cxx.as_bytes());
    fnv(&mut h, extra_flags().join(" ").as_bytes());
    fnv(&mut h, TRAMPOLINE.as_bytes());
    for (name, text) in sources {
        fnv(&mut h, name.as_bytes());
        fnv(&mut h, text.as_bytes());
    }
    let dir = std::env::temp_dir().join(format!("splicevi-emu-{h:016x}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, text) in sources {
        let p = dir.join(name);
        if std::fs::read_to_string(&p).ok().as_deref() != Some(*text) {
            let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &p)).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let units: Vec<(&'static str, Vec<(String, Option<String>)>)> = sources
        .iter()
        .filter_map(|(name, text)| name.strip_suffix(".cu").map(|stem| (stem, kernel_decls(text))))
        .filter(|(_, k)| !k.is_empty())
        .collect();
    // Compile the missing libraries concurrently.
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = units
            .iter()
            .map(|(stem, kernels)| {
                let (dir, cxx) = (&dir, &cxx);
                s.spawn(move || -> Result<(), String> {
                    let lib = dir.join(format!("lib{stem}.so"));
                    if lib.exists() {
                        return Ok(());
                    }
                    let mut tu = format!("#include \"host_emu.h\"\n#include \"{stem}.cu\"\n{TRAMPOLINE}");
                    for (k, bounds) in kernels {
                        tu.push_str(&format!(
                            "extern \"C\" void sv_emu_{k}(unsigned g, unsigned b, std::size_t smem, void** argv) {{ sv_emu_trampoline::call({k}, g, b, smem, argv); }}\n"
                        ));
                        // the bound evaluated by the compiler, in the kernel file's own macros
                        let max = bounds.as_deref().unwrap_or("1024");
                        tu.push_str(&format!("extern \"C\" unsigned sv_emu_bounds_{k}() {{ return (unsigned)({max}); }}\n"));
                    }
                    let tu_path = dir.join(format!("emu_{stem}.{}.cpp", std::process::id()));
                    std::fs::write(&tu_path, tu).map_err(|e| format!("{}: {e}", tu_path.display()))?;
                    let r = compile(cxx, dir, stem, &tu_path, &lib);
                    let _ = std::fs::remove_file(&tu_path);
                    r
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("compiler thread panicked".into()))).collect()
    });
    for r in results {
        r?;
    }
    let mut functions = HashMap::new();
    let mut modules = Vec::new();
    for (stem, kernels) in &units {
        let lib = dir.join(format!("lib{stem}.so"));
        let path = CString::new(lib.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: dlopen of a library we just built; its constructors are the C++ runtime's only.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a C string or null.
            let why = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) }.to_string_lossy().to_string();
            return Err(format!("loading {}: {why}", lib.display()));
        }
        for (k, _) in kernels {
            let symbol = |name: String| {
                let sym = CString::new(name.clone()).unwrap();
                // SAFETY: looks up a symbol of the library (kept loaded for the process' lifetime).
                let f = unsafe { libc::dlsym(handle, sym.as_ptr()) };
                if f.is_null() {
                    Err(format!("{}: no symbol {name}", lib.display()))
                } else {
                    Ok(f)
                }
            };
            // SAFETY: the trampoline and the bounds function have exactly these signatures (above).
            let f: RawFn = unsafe { std::mem::transmute::<*mut c_void, RawFn>(symbol(format!("sv_emu_{k}"))?) };
            let bounds: BoundsFn = unsafe { std::mem::transmute::<*mut c_void, BoundsFn>(symbol(format!("sv_emu_bounds_{k}"))?) };
            // SAFETY: returns a constant.
            functions.insert((stem.to_string(), k.clone()), EmuFn(f, unsafe { bounds() }));
        }
        modules.push(*stem);
    }
    Ok(EmuKernels { functions, modules, dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_skip_launch_bounds_and_macros() {
        let src = "extern \"C\" __global__ void __launch_bounds__(MAX(1, 2) * 32)\nfoo(int a) {}\n\
                   extern \"C\" __global__ void bar(float* x) {}\n\
                   extern \"C\" __global__ void __launch_bounds__(T) baz_f32(ARGS(float)) {}\n";
        assert_eq!(kernel_names(src), ["foo", "bar", "baz_f32"]);
        let decls = kernel_decls(src);
        assert_eq!(decls[0].1.as_deref(), Some("MAX(1, 2) * 32"));
        assert_eq!(decls[1].1, None);
        assert_eq!(decls[2].1.as_deref(), Some("T"));
    }

    /// The emulation refuses a launch its kernel's `__launch_bounds__` does not allow, as a GPU does
    /// (kernels/mma_test.cu's is 32 threads); the bound itself is read from the compiled library.
    #[test]
    fn a_block_above_the_launch_bounds_is_refused() {
        let dev = match super::super::CudaDevice::open_emulated() {
            Ok(d) => d,
            Err(why) => {
                eprintln!("SKIPPED: no host emulation ({why})");
                return;
            }
        };
        let f = dev.function("mma_test", "mma_gemm_test").unwrap();
        let (a, bt, k, n, c) = (0u64, 0u64, 16i32, 8i32, 0u64);
        let cfg = |threads| cudarc::driver::LaunchConfig { grid_dim: (1, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        // (refused before any argument is read: the null addresses are never used)
        let err = dev.launch(&f, cfg(64), &[&a, &bt, &k, &n, &c]).unwrap_err().to_string();
        assert!(err.contains("mma_gemm_test") && err.contains("__launch_bounds__(32)"), "{err}");
        let (k, v) = kernels().unwrap().functions.iter().find(|(k, _)| k.1 == "adamw_step").unwrap();
        assert_eq!((k.0.as_str(), v.max_threads()), ("adamw", 256));
    }

    /// A GPU refuses a block larger than the kernel's `__launch_bounds__`, and a kernel without one
    /// may be given registers that no launch of many threads can have: every kernel declares one, so
    /// that the emulation can hold each launch to it (runtime.rs) as the GPU will.
    #[test]
    fn every_kernel_declares_launch_bounds() {
        for (file, text) in super::super::kernel_sources().iter().filter(|(n, _)| n.ends_with(".cu")) {
            for (name, bounds) in kernel_decls(text) {
                assert!(bounds.is_some(), "kernels/{file}: {name} has no __launch_bounds__");
            }
        }
    }

    #[test]
    fn every_kernel_file_declares_kernels() {
        let n: usize = super::super::kernel_sources().iter().filter(|(n, _)| n.ends_with(".cu")).map(|(_, t)| kernel_names(t).len()).sum();
        assert!(n >= 20, "found {n} kernels");
    }
}
