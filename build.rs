//! Compiles `kernels/*.cu` with nvcc into one fatbin per file (sm_80 + sm_90 SASS, compute_80 PTX) and
//! embeds them. Without nvcc the build succeeds and the CUDA backend reports "built without CUDA
//! kernels" at run time; `SPLICEVI_REQUIRE_NVCC=1` makes a missing nvcc (or a failing kernel) an error.
//!
//! nvcc is found through `$NVCC`, then `$CUDA_HOME/bin/nvcc`, then the project's pinned PyPI toolchain
//! (`.cuda-venv`, installed by `scripts/install-nvcc.sh`), then `nvcc` on PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Ok(h) = std::env::var("CUDA_HOME") {
        let p = Path::new(&h).join("bin/nvcc");
        if p.exists() {
            return Some(p);
        }
    }
    let venv = root.join(".cuda-venv");
    if let Ok(rd) = std::fs::read_dir(venv.join("lib")) {
        for e in rd.flatten() {
            let p = e.path().join("site-packages/nvidia/cu13/bin/nvcc");
            if p.exists() {
                return Some(p);
            }
        }
    }
    let ok = Command::new("nvcc").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    ok.then(|| PathBuf::from("nvcc"))
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let strict = std::env::var("SPLICEVI_REQUIRE_NVCC").map(|v| v == "1").unwrap_or(false);
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=SPLICEVI_REQUIRE_NVCC");
    println!("cargo::rustc-check-cfg=cfg(splicevi_kernels)");

    let mut sources: Vec<PathBuf> = std::fs::read_dir(root.join("kernels"))
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "cu")).collect())
        .unwrap_or_default();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }

    let mut entries = Vec::new();
    let nvcc = find_nvcc(&root);
    match (&nvcc, strict) {
        (None, true) => panic!("SPLICEVI_REQUIRE_NVCC=1 but no nvcc found (set NVCC, or run scripts/install-nvcc.sh)"),
        (None, false) => println!("cargo:warning=nvcc not found: building without CUDA kernels (CPU backend only)"),
        (Some(nvcc), _) => {
            let mut failed = false;
            for src in &sources {
                let name = src.file_stem().unwrap().to_string_lossy().to_string();
                let fatbin = out.join(format!("{name}.fatbin"));
                let res = Command::new(nvcc)
                    .args(["--fatbin", "-O3", "-std=c++17", "--use_fast_math=false"])
                    .args(["-gencode", "arch=compute_80,code=sm_80"])
                    .args(["-gencode", "arch=compute_90,code=sm_90"])
                    .args(["-gencode", "arch=compute_80,code=compute_80"])
                    .arg("-Xptxas=-v")
                    .arg("-I").arg(root.join("kernels"))
                    .arg("-o").arg(&fatbin)
                    .arg(src)
                    .output();
                match res {
                    Ok(o) if o.status.success() => {
                        // Keep ptxas' register / shared memory / spill report for `scripts/ptxas-report.sh`.
                        std::fs::write(out.join(format!("{name}.ptxas.log")), &o.stderr).ok();
                        entries.push((name, fatbin));
                    }
                    Ok(o) => {
                        failed = true;
                        let msg = String::from_utf8_lossy(&o.stderr);
                        if strict {
                            panic!("nvcc failed on {}:\n{msg}", src.display());
                        }
                        println!("cargo:warning=nvcc failed on {}: {}", src.display(), msg.lines().next().unwrap_or(""));
                    }
                    Err(e) => {
                        failed = true;
                        if strict {
                            panic!("cannot run nvcc {}: {e}", nvcc.display());
                        }
                        println!("cargo:warning=cannot run nvcc {}: {e}", nvcc.display());
                    }
                }
            }
            if failed {
                entries.clear();
            }
        }
    }

    let mut code = String::from("/// (kernel file stem, fatbin bytes) for every kernels/*.cu, embedded at build time.\n");
    code.push_str("pub const KERNEL_FATBINS: &[(&str, &[u8])] = &[\n");
    for (name, path) in &entries {
        code.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    code.push_str(&format!("pub const KERNEL_ARCHS: &str = {:?};\n", if entries.is_empty() { "" } else { "sm_80, sm_90, compute_80 PTX" }));
    std::fs::write(out.join("kernels.rs"), code).unwrap();
    if !entries.is_empty() {
        println!("cargo:rustc-cfg=splicevi_kernels");
    }
}
