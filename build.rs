//! Compiles `kernels/*.cu` with nvcc into one fatbin per file (sm_80 + sm_90 SASS, compute_80 PTX) and
//! embeds them. Without nvcc the build succeeds and the CUDA backend reports "built without CUDA
//! kernels" at run time; `SPLICEVI_REQUIRE_NVCC=1` makes a missing nvcc (or a failing kernel) an error.
//!
//! nvcc is found through `$NVCC`, then `$CUDA_HOME/bin/nvcc`, then the project's pinned PyPI toolchain
//! (`.cuda-venv`, installed by `scripts/install-nvcc.sh`), then `nvcc` on PATH. The PyPI nvcc needs no
//! extra flags: its `nvcc.profile` points at the wheel's include/, cccl/ and nvvm/ (cicc, libdevice).
//! `$NVCC_CCBIN` selects the host compiler (`-ccbin`) when the default gcc is one nvcc rejects.
//!
//! Outputs in OUT_DIR: `<stem>.fatbin`, `<stem>.ptxas.log` (registers / shared memory / spills, read by
//! `scripts/ptxas-report.sh`) and `kernels.rs` (`KERNEL_FATBINS`, `KERNEL_ARCHS`, `KERNEL_NVCC`); the cfg
//! `splicevi_kernels` is set when the fatbins are embedded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Architectures in every fatbin: SASS for A100 and H100, PTX for anything newer (JIT by the driver; the
/// PTX ISA of nvcc 13.0 is 9.0, which driver 580 / CUDA 13.0 can JIT).
const GENCODE: &[&str] = &["arch=compute_80,code=sm_80", "arch=compute_90,code=sm_90", "arch=compute_80,code=compute_80"];
const ARCHS: &str = "sm_80, sm_90 (SASS) + compute_80 (PTX)";

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NVCC") {
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    if let Ok(h) = std::env::var("CUDA_HOME") {
        let p = Path::new(&h).join("bin/nvcc");
        if p.exists() {
            return Some(p);
        }
    }
    let venv = root.join(".cuda-venv");
    if let Ok(rd) = std::fs::read_dir(venv.join("lib")) {
        let mut cands: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("site-packages/nvidia/cu13/bin/nvcc")).collect();
        cands.sort();
        if let Some(p) = cands.into_iter().find(|p| p.exists()) {
            return Some(p);
        }
    }
    let ok = Command::new("nvcc").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    ok.then(|| PathBuf::from("nvcc"))
}

/// Every file under `kernels/` (sources and headers), so that editing a header rebuilds.
fn kernel_files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                kernel_files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let o = Command::new(nvcc).arg("--version").output().map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !o.status.success() {
        return Err(format!("{} --version failed: {}", nvcc.display(), String::from_utf8_lossy(&o.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&o.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88"
    Ok(text.lines().filter_map(|l| l.rsplit_once(", V").map(|(_, v)| v.trim().to_string())).next().unwrap_or_else(|| "unknown".into()))
}

fn compile(nvcc: &Path, root: &Path, src: &Path, fatbin: &Path) -> std::io::Result<Output> {
    let mut cmd = Command::new(nvcc);
    cmd.args(["--fatbin", "-O3", "-std=c++17", "-lineinfo", "-Xptxas=-v"]);
    for g in GENCODE {
        cmd.arg("-gencode").arg(g);
    }
    if let Ok(cc) = std::env::var("NVCC_CCBIN") {
        if !cc.is_empty() {
            cmd.arg("-ccbin").arg(cc);
        }
    }
    cmd.arg("-I").arg(root.join("kernels")).arg("-o").arg(fatbin).arg(src);
    cmd.output()
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let strict = std::env::var("SPLICEVI_REQUIRE_NVCC").map(|v| v == "1").unwrap_or(false);
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for v in ["NVCC", "CUDA_HOME", "NVCC_CCBIN", "SPLICEVI_REQUIRE_NVCC"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo::rustc-check-cfg=cfg(splicevi_kernels)");

    let mut files = Vec::new();
    kernel_files(&root.join("kernels"), &mut files);
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let sources: Vec<PathBuf> =
        files.iter().filter(|p| p.parent() == Some(&root.join("kernels")) && p.extension().is_some_and(|x| x == "cu")).cloned().collect();

    let mut entries: Vec<(String, PathBuf)> = Vec::new();
    let mut nvcc_ver = String::new();
    let fail = |msg: String| {
        if strict {
            panic!("{msg}");
        }
        // Cargo shows one line per warning: the first line plus nvcc's first error line.
        let mut lines = msg.lines();
        let head = lines.next().unwrap_or("");
        match lines.find(|l| l.contains("error")) {
            Some(err) => println!("cargo:warning={head} {}", err.trim()),
            None => println!("cargo:warning={head}"),
        }
    };
    match find_nvcc(&root) {
        None => fail("nvcc not found: building without CUDA kernels (CPU backend only); run scripts/install-nvcc.sh (or set NVCC) and `touch build.rs` to build them".into()),
        Some(nvcc) => match nvcc_version(&nvcc) {
            Err(e) => fail(e),
            Ok(ver) => {
                if nvcc.is_absolute() {
                    println!("cargo:rerun-if-changed={}", nvcc.display());
                }
                nvcc_ver = ver;
                // Compile the files concurrently (nvcc is single-threaded); at most one job per core.
                let jobs = std::env::var("NUM_JOBS").ok().and_then(|j| j.parse::<usize>().ok()).unwrap_or(2).max(1);
                let mut results: Vec<(PathBuf, String, std::io::Result<Output>)> = Vec::new();
                for chunk in sources.chunks(jobs) {
                    let done: Vec<_> = std::thread::scope(|s| {
                        let handles: Vec<_> = chunk
                            .iter()
                            .map(|src| {
                                let name = src.file_stem().unwrap().to_string_lossy().to_string();
                                let fatbin = out.join(format!("{name}.fatbin"));
                                let (nvcc, root) = (&nvcc, &root);
                                s.spawn(move || (src.clone(), name, compile(nvcc, root, src, &fatbin)))
                            })
                            .collect();
                        handles.into_iter().map(|h| h.join().unwrap()).collect()
                    });
                    results.extend(done);
                }
                let mut failed = false;
                for (src, name, res) in results {
                    match res {
                        Ok(o) if o.status.success() => {
                            // Keep ptxas' register / shared memory / spill report for scripts/ptxas-report.sh.
                            std::fs::write(out.join(format!("{name}.ptxas.log")), &o.stderr).ok();
                            entries.push((name.clone(), out.join(format!("{name}.fatbin"))));
                        }
                        Ok(o) => {
                            failed = true;
                            fail(format!("nvcc failed on {}:\n{}", src.display(), String::from_utf8_lossy(&o.stderr)));
                        }
                        Err(e) => {
                            failed = true;
                            fail(format!("cannot run nvcc {}: {e}", nvcc.display()));
                        }
                    }
                }
                // All or nothing: a partial kernel set would fail later in confusing ways.
                if failed {
                    entries.clear();
                }
            }
        },
    }

    let mut code = String::from("/// (kernel file stem, fatbin bytes) for every kernels/*.cu, embedded at build time.\n");
    code.push_str("pub const KERNEL_FATBINS: &[(&str, &[u8])] = &[\n");
    for (name, path) in &entries {
        code.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    code.push_str("/// Architectures in every embedded fatbin (empty when none are embedded).\n");
    code.push_str(&format!("pub const KERNEL_ARCHS: &str = {:?};\n", if entries.is_empty() { "" } else { ARCHS }));
    code.push_str("/// Version of the nvcc that compiled the kernels (empty when none are embedded).\n");
    code.push_str(&format!("pub const KERNEL_NVCC: &str = {:?};\n", if entries.is_empty() { "" } else { nvcc_ver.as_str() }));
    // Every kernels/ file's text, for the host emulation (cuda::emu compiles the very sources against
    // kernels/host_emu.h with the host C++ compiler; it needs no nvcc).
    code.push_str("/// (file name, text) of every file directly under kernels/.\n");
    code.push_str("pub const KERNEL_SOURCES: &[(&str, &str)] = &[\n");
    for f in files.iter().filter(|p| p.parent() == Some(&root.join("kernels"))) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        code.push_str(&format!("    ({name:?}, include_str!({:?})),\n", f.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(out.join("kernels.rs"), code).unwrap();
    if !entries.is_empty() {
        println!("cargo:rustc-cfg=splicevi_kernels");
    }
}
