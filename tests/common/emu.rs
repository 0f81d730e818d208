//! Shared by the kernel parity tests that run a kernel source on the host through kernels/host_emu.h:
//! the C++ harness's file I/O, the host build (or the reason it cannot be done), the binary files the
//! harness reads and writes, and the per-precision comparison.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Prints "SKIPPED: ..." straight to stderr (libtest captures the output of passing tests).
pub fn skipped(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\nSKIPPED: {msg}");
}

const EMU_H: &str = include_str!("../../kernels/host_emu.h");
const CHUNKS_CUH: &str = include_str!("../../kernels/chunks.cuh");
const MMA_CUH: &str = include_str!("../../kernels/mma.cuh");
const BLOCK_SCAN_CUH: &str = include_str!("../../kernels/block_scan.cuh");
const PARTIAL_COMMON_CUH: &str = include_str!("../../kernels/partial_common.cuh");

/// The harness preamble: `rd<T>(dir, name)` reads DIR/name.bin (empty when absent), `wr(dir, name, v)`
/// writes DIR/name.out, `ptr(v)` is null for an empty vector.
const HARNESS_IO: &str = r#"
#include <cstdio>
#include <string>
#include <vector>
template <class T> std::vector<T> rd(const std::string& d, const char* name) {
    std::vector<T> v;
    FILE* f = std::fopen((d + "/" + name + ".bin").c_str(), "rb");
    if (!f) return v;
    T x;
    while (std::fread(&x, sizeof(T), 1, f) == 1) v.push_back(x);
    std::fclose(f);
    return v;
}
template <class T> void wr(const std::string& d, const char* name, const std::vector<T>& v) {
    FILE* f = std::fopen((d + "/" + name + ".out").c_str(), "wb");
    if (!v.empty()) std::fwrite(v.data(), sizeof(T), v.size(), f);  // (fwrite's buffer must not be null)
    std::fclose(f);
}
template <class T> const T* ptr(const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); }
"#;

/// `SPLICEVI_EMU_CXXFLAGS`: sanitizers for the harnesses (scripts/emu-sanitize.sh), as for the library
/// emulation (src/cuda/emu.rs).
pub fn extra_cxx_flags() -> Vec<String> {
    std::env::var("SPLICEVI_EMU_CXXFLAGS").unwrap_or_default().split_whitespace().map(String::from).collect()
}

/// Compiles `kernel_src` (saved as `kernel_file`) with the harness `main_src` by the host C++20
/// compiler into `dir`. Err(reason) when there is no C++20 compiler; a compile error panics.
pub fn build(dir: &Path, kernel_file: &str, kernel_src: &str, main_src: &str) -> Result<PathBuf, String> {
    std::fs::write(dir.join("host_emu.h"), EMU_H).unwrap();
    std::fs::write(dir.join("chunks.cuh"), CHUNKS_CUH).unwrap();
    std::fs::write(dir.join("mma.cuh"), MMA_CUH).unwrap();
    std::fs::write(dir.join("block_scan.cuh"), BLOCK_SCAN_CUH).unwrap();
    std::fs::write(dir.join("partial_common.cuh"), PARTIAL_COMMON_CUH).unwrap();
    std::fs::write(dir.join(kernel_file), kernel_src).unwrap();
    let src = dir.join("harness.cpp");
    std::fs::write(&src, format!("#include \"{kernel_file}\"\n{HARNESS_IO}\n{main_src}")).unwrap();
    let exe = dir.join("harness");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = std::process::Command::new(&cxx)
        .args(["-O2", "-std=c++20", "-ffp-contract=off", "-pthread", "-x", "c++"])
        .args(extra_cxx_flags())
        .arg("-I")
        .arg(dir)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .map_err(|e| format!("no C++ compiler ({cxx}: {e})"))?;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() && err.contains("barrier") && err.contains("No such file") {
        return Err(format!("{cxx} has no C++20 <barrier>"));
    }
    assert!(out.status.success(), "{cxx} failed to compile kernels/{kernel_file} for the host emulation:\n{err}");
    Ok(exe)
}

/// Runs the harness on `dir` and asserts it succeeded.
pub fn run(exe: &Path, dir: &Path) {
    let st = std::process::Command::new(exe).arg(dir).status().unwrap();
    assert!(st.success(), "{} exited with {st}", exe.display());
}

pub fn write_f32(dir: &Path, name: &str, v: &[f32]) {
    std::fs::write(dir.join(format!("{name}.bin")), v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

pub fn write_u8(dir: &Path, name: &str, v: &[u8]) {
    std::fs::write(dir.join(format!("{name}.bin")), v).unwrap();
}

pub fn read_f32(dir: &Path, name: &str) -> Vec<f32> {
    let b = std::fs::read(dir.join(format!("{name}.out"))).unwrap();
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// f32 kernel vs f32 twin: |kernel − twin| ≤ 2e-4·|twin| + 2e-5·max(max|twin tensor|, floor), every
/// value finite. `floor` keeps sums that cancel from shrinking the tolerance to their own rounding.
pub fn close(what: &str, case: &str, got: &[f32], want: &[f32], floor: f64) {
    assert_eq!(got.len(), want.len(), "{case}: {what}: {} values, twin has {}", got.len(), want.len());
    let scale = want.iter().fold(floor, |a, &v| a.max((v as f64).abs()));
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g as f64, w as f64);
        let tol = 2e-4 * w.abs() + 2e-5 * scale;
        assert!(g.is_finite() && (g - w).abs() <= tol, "{case}: {what}[{k}] = {g:e}, twin {w:e} (tolerance {tol:e})");
    }
}

/// The devices a wrapper-level parity test runs on, as candle's per-device test macros do: cuda:0 where
/// a usable GPU exists, and always the host emulation of the device (src/cuda/emu.rs: the same
/// wrappers and launches, the kernel sources compiled for the host). What is missing is reported as
/// "SKIPPED: ..." (never silently); a usable GPU that fails to open is a failure.
/// `SPLICEVI_TEST_EMU=0` leaves the emulation out (scripts/gpu-check.sh: GPU time is for the GPU).
pub fn devices(test: &str) -> Vec<splicevi::cuda::CudaDevice> {
    let mut v = Vec::new();
    match splicevi::cuda::cuda_usable(0) {
        Ok(_) => v.push(splicevi::cuda::CudaDevice::open(0).expect("cuda:0 is usable but could not be opened")),
        Err(reason) => skipped(&format!("{test} on cuda:0: {reason}")),
    }
    if std::env::var("SPLICEVI_TEST_EMU").is_ok_and(|v| v == "0") {
        skipped(&format!("{test} under the host emulation: SPLICEVI_TEST_EMU=0"));
        return v;
    }
    match splicevi::cuda::CudaDevice::open_emulated() {
        Ok(d) => v.push(d),
        Err(reason) => skipped(&format!("{test} under the host emulation: {reason}")),
    }
    v
}
