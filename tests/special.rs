//! The f32 lgamma / digamma of kernels/special.cuh against an f64 reference written here.
//!
//! * `reference_*`: the f64 reference itself against closed forms and identities (so it is not trusted
//!   blindly).
//! * `host_build_*`: special.cuh compiled by the host C++ compiler (its functions are __host__ __device__)
//!   and evaluated on the CPU: checks the algorithm and its coefficients on machines without a GPU.
//!   Prints SKIPPED when no C++ compiler is found.
//! * `device_*`: the same functions on the GPU through kernels/special_test.cu. Prints SKIPPED when the
//!   binary has no kernels or the machine no usable GPU.
//!
//! Accuracy contract checked (eps = 2^-23): for x > 0, |f32 − ref| ≤ 4·eps·max(|ref|, 1); near the zeros
//! (lgamma on [0.5, 2.5], digamma on [1, 2]) also |f32 − ref| ≤ 8·eps·|ref| (relative accuracy); for
//! x < 0, within 4·eps of the size of the terms of the reflection formula.

#[path = "common/emu.rs"]
mod emu;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::process::Command;

const EPS: f64 = f32::EPSILON as f64;
const EULER: f64 = 0.577_215_664_901_532_9;
const LN_PI: f64 = 1.144_729_885_849_400_2;

// ---------------------------------------------------------------------------------------------------
// f64 reference

/// zeta(k) − 1 for k ≥ 2: direct sum to N − 1 (smallest terms first) plus the Euler–Maclaurin tail.
fn zeta_minus_one(k: u32) -> f64 {
    const N: f64 = 1000.0;
    let kf = k as f64;
    let mut s = 0.0;
    for n in (2..1000).rev() {
        s += (n as f64).powf(-kf);
    }
    let tail = N.powf(1.0 - kf) / (kf - 1.0) + 0.5 * N.powf(-kf) + kf / 12.0 * N.powf(-kf - 1.0)
        - kf * (kf + 1.0) * (kf + 2.0) / 720.0 * N.powf(-kf - 3.0);
    s + tail
}

fn zetas() -> &'static [f64] {
    use std::sync::OnceLock;
    static Z: OnceLock<Vec<f64>> = OnceLock::new();
    Z.get_or_init(|| (0..200).map(|k| if k < 2 { 0.0 } else { zeta_minus_one(k) }).collect())
}

/// lgamma(1 + t) = −γ t + Σ_{k≥2} (−1)^k ζ(k) t^k / k, |t| ≤ 0.5.
fn lgamma_1p_series(t: f64) -> f64 {
    let z = zetas();
    let mut s = -EULER * t;
    let mut tk = t;
    for (k, zk) in z.iter().enumerate().skip(2) {
        tk *= t;
        let term = tk * (1.0 + zk) / k as f64;
        s += if k % 2 == 0 { term } else { -term };
        if term.abs() < 1e-18 * s.abs().max(1e-300) {
            break;
        }
    }
    s
}

/// lgamma(2 + t) = (1 − γ) t + Σ_{k≥2} (−1)^k (ζ(k) − 1) t^k / k, |t| ≤ 0.5.
fn lgamma_2p_series(t: f64) -> f64 {
    let z = zetas();
    let mut s = (1.0 - EULER) * t;
    let mut tk = t;
    for (k, zk) in z.iter().enumerate().skip(2) {
        tk *= t;
        let term = tk * zk / k as f64;
        s += if k % 2 == 0 { term } else { -term };
        if term.abs() < 1e-18 * s.abs().max(1e-300) {
            break;
        }
    }
    s
}

/// Stirling series with 8 correction terms (x ≥ 20: truncation < 1e-25).
fn lgamma_stirling(x: f64) -> f64 {
    const B: [f64; 8] = [1.0 / 6.0, -1.0 / 30.0, 1.0 / 42.0, -1.0 / 30.0, 5.0 / 66.0, -691.0 / 2730.0, 7.0 / 6.0, -3617.0 / 510.0];
    let mut s = (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln();
    for (i, b) in B.iter().enumerate() {
        let k = (i + 1) as i32;
        s += b / ((2 * k) as f64 * (2 * k - 1) as f64 * x.powi(2 * k - 1));
    }
    s
}

fn ref_lgamma(x: f64) -> f64 {
    if x <= 0.0 {
        if x == x.floor() {
            return f64::INFINITY;
        }
        // lgamma(x) = ln π − ln|sin(πx)| − lgamma(1 − x), with sin(πx) from the exact reduced argument.
        let r = x - x.round();
        return LN_PI - (std::f64::consts::PI * r).sin().abs().ln() - ref_lgamma(1.0 - x);
    }
    if x < 0.5 {
        return lgamma_1p_series(x) - x.ln();
    }
    if x < 1.5 {
        return lgamma_1p_series(x - 1.0);
    }
    if x < 20.0 {
        // Down into [1.5, 2.5) (each y − 1 is exact): lgamma(x) = ln Π (x − j) + lgamma(2 + t).
        let (mut y, mut prod) = (x, 1.0);
        while y >= 2.5 {
            y -= 1.0;
            prod *= y;
        }
        return prod.ln() + lgamma_2p_series(y - 2.0);
    }
    lgamma_stirling(x)
}

/// ψ(1 + t) = −γ + Σ_{k≥2} (−1)^k ζ(k) t^(k−1), |t| ≤ 0.5.
fn digamma_1p_series(t: f64) -> f64 {
    let z = zetas();
    let mut s = -EULER;
    let mut tk = 1.0;
    for (k, zk) in z.iter().enumerate().skip(2) {
        tk *= t;
        let term = tk * (1.0 + zk);
        s += if k % 2 == 0 { term } else { -term };
        if term.abs() < 1e-18 * s.abs().max(1e-300) {
            break;
        }
    }
    s
}

fn ref_digamma(x: f64) -> f64 {
    if x <= 0.0 {
        if x == x.floor() {
            return f64::NAN;
        }
        // ψ(x) = ψ(1 − x) − π cot(πx)
        let r = x - x.round();
        let pi = std::f64::consts::PI;
        return ref_digamma(1.0 - x) - pi * (pi * r).cos() / (pi * r).sin();
    }
    if x < 0.5 {
        return digamma_1p_series(x) - 1.0 / x;
    }
    if x < 20.0 {
        // Down into [0.5, 1.5): ψ(x) = ψ(x − 1) + 1/(x − 1).
        let (mut y, mut acc) = (x, 0.0);
        while y >= 1.5 {
            y -= 1.0;
            acc += 1.0 / y;
        }
        return digamma_1p_series(y - 1.0) + acc;
    }
    let (y, acc) = (x, 0.0);
    const B: [f64; 8] = [1.0 / 6.0, -1.0 / 30.0, 1.0 / 42.0, -1.0 / 30.0, 5.0 / 66.0, -691.0 / 2730.0, 7.0 / 6.0, -3617.0 / 510.0];
    let mut s = y.ln() - 0.5 / y;
    for (i, b) in B.iter().enumerate() {
        let k = (i + 1) as i32;
        s -= b / ((2 * k) as f64 * y.powi(2 * k));
    }
    acc + s
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0)
}

#[test]
fn reference_lgamma_closed_forms_and_identities() {
    assert_eq!(ref_lgamma(1.0), 0.0);
    assert_eq!(ref_lgamma(2.0), 0.0);
    assert!(close(ref_lgamma(0.5), 0.5 * LN_PI, 1e-15));
    assert!(close(ref_lgamma(-0.5), (2.0 * std::f64::consts::PI.sqrt()).ln(), 1e-15));
    let mut log_fact = 0.0f64;
    for n in 1..40 {
        // lgamma(n) = ln (n − 1)!
        assert!(close(ref_lgamma(n as f64), log_fact, 2e-15), "lgamma({n}) = {} vs {log_fact}", ref_lgamma(n as f64));
        log_fact += (n as f64).ln();
    }
    // lgamma(1e6) = Σ_{k<1e6} ln k (Neumaier summation).
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for k in 2..1_000_000u32 {
        let v = (k as f64).ln();
        let t = s + v;
        c += if s.abs() >= v.abs() { (s - t) + v } else { (v - t) + s };
        s = t;
    }
    assert!(close(ref_lgamma(1e6), s + c, 1e-15), "{} vs {}", ref_lgamma(1e6), s + c);
    // lgamma(x + 1) − lgamma(x) = ln x across every branch boundary.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..2000 {
        let x: f64 = rng.gen_range(1e-3..30.0);
        assert!((ref_lgamma(x + 1.0) - ref_lgamma(x) - x.ln()).abs() < 1e-14 * (1.0 + ref_lgamma(x).abs()), "x = {x}");
    }
    // Near the zero at 1: lgamma(1 + t) ≈ −γ t.
    let x = 1.0 + 1e-9;
    assert!((ref_lgamma(x) / (x - 1.0) + EULER).abs() < 1e-8);
}

#[test]
fn reference_digamma_closed_forms_and_identities() {
    assert!(close(ref_digamma(1.0), -EULER, 1e-15));
    assert!(close(ref_digamma(0.5), -EULER - 2.0 * 2f64.ln(), 1e-15));
    assert!(close(ref_digamma(-0.5), 0.036_489_973_978_576_52, 1e-14));
    let mut h = 0.0f64;
    for n in 1..40 {
        assert!(close(ref_digamma(n as f64), h - EULER, 2e-15), "digamma({n}) = {} vs {}", ref_digamma(n as f64), h - EULER);
        h += 1.0 / n as f64;
    }
    // ψ(1e6) = H_{999999} − γ (summed smallest first).
    let harmonic: f64 = (1..1_000_000u32).rev().map(|k| 1.0 / k as f64).sum();
    assert!(close(ref_digamma(1e6), harmonic - EULER, 1e-14));
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for _ in 0..2000 {
        let x: f64 = rng.gen_range(1e-3..30.0);
        assert!((ref_digamma(x + 1.0) - ref_digamma(x) - 1.0 / x).abs() < 1e-14 * (1.0 + 1.0 / x), "x = {x}");
    }
    // The positive root.
    assert!(ref_digamma(1.461_632_144_968_362_3).abs() < 1e-15);
}

// ---------------------------------------------------------------------------------------------------
// inputs and the accuracy check shared by the host and device evaluations

fn positive_inputs() -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let mut x: Vec<f32> = Vec::new();
    for _ in 0..100_000 {
        x.push((rng.gen_range((1e-4f64).ln()..(1e6f64).ln())).exp() as f32);
    }
    for _ in 0..30_000 {
        x.push(rng.gen_range(0.0f32..10.0).max(1e-4));
    }
    for _ in 0..20_000 {
        x.push(rng.gen_range(0.9f32..2.1)); // around the zeros of lgamma and the root of digamma
    }
    for n in 1..=64 {
        x.push(n as f32);
        x.push(n as f32 + 0.5);
    }
    // Branch thresholds and their neighbours.
    for t in [0.5f32, 1.0, 1.5, 2.0, 2.5, 6.0, 8.0, 1.461_632_1] {
        x.extend([t, f32::from_bits(t.to_bits() - 1), f32::from_bits(t.to_bits() + 1)]);
    }
    x.extend([1e-30f32, 1e-10, 1e6, 1e7, 1e10, 1e20, 1e30]);
    x
}

fn negative_inputs() -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(2025);
    let mut x: Vec<f32> = (0..20_000).map(|_| -(rng.gen_range((1e-4f64).ln()..(1e3f64).ln())).exp() as f32).collect();
    x.extend([-0.5f32, -1.5, -2.5, -10.25, -100.75]);
    x.retain(|v| *v != v.floor());
    x
}

/// Checks f32 results against the reference; returns a summary line. Panics on the first violation
/// (after printing the worst cases). `!(err <= tol)` is deliberate: a NaN result must fail.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn check(what: &str, x: &[f32], lg: &[f32], dg: &[f32]) -> String {
    assert_eq!((lg.len(), dg.len()), (x.len(), x.len()), "{what}: output length");
    let mut worst = [(0.0f64, 0.0f32); 4]; // (error in eps units, x) for lgamma abs, digamma abs, lgamma rel, digamma rel
    let mut failures = Vec::new();
    for i in 0..x.len() {
        let xi = x[i] as f64;
        for (j, (got, want)) in [(lg[i] as f64, ref_lgamma(xi)), (dg[i] as f64, ref_digamma(xi))].into_iter().enumerate() {
            let name = if j == 0 { "lgamma" } else { "digamma" };
            if !want.is_finite() || want.abs() > f32::MAX as f64 {
                // Beyond f32 range the result must be the matching infinity.
                if !(got.is_infinite() && got.signum() == want.signum()) {
                    failures.push(format!("{name}({}) = {got}, expected ±inf like {want}", x[i]));
                }
                continue;
            }
            let err = (got - want).abs();
            let (scale, tol) = if xi > 0.0 {
                (want.abs().max(1.0), 4.0)
            } else {
                // Reflection: the error scales with the terms that are combined.
                let terms = if j == 0 {
                    LN_PI + ref_lgamma(-xi).abs() + (xi * (std::f64::consts::PI * (xi - xi.round())).sin()).abs().ln().abs()
                } else {
                    let r = xi - xi.round();
                    ref_digamma(-xi).abs() + 1.0 / xi.abs() + (std::f64::consts::PI / (std::f64::consts::PI * r).tan()).abs()
                };
                (terms.max(1.0), 4.0)
            };
            let units = err / (EPS * scale);
            if units > worst[j].0 {
                worst[j] = (units, x[i]);
            }
            if !(units <= tol) {
                failures.push(format!("{name}({:e}) = {got:e}, reference {want:e}: error {units:.2} eps·scale > {tol}", x[i]));
            }
            let near_zero = if j == 0 { (0.5..=2.5).contains(&xi) } else { (1.0..=2.0).contains(&xi) };
            if near_zero {
                let rel = if want == 0.0 { if got == 0.0 { 0.0 } else { f64::INFINITY } } else { err / (EPS * want.abs()) };
                if rel > worst[2 + j].0 {
                    worst[2 + j] = (rel, x[i]);
                }
                if !(rel <= 8.0) {
                    failures.push(format!("{name}({:e}) = {got:e}, reference {want:e}: relative error {rel:.2} eps > 8", x[i]));
                }
            }
        }
    }
    let summary = format!(
        "{what}: {} inputs; worst lgamma {:.2} eps (x = {:e}), digamma {:.2} eps (x = {:e}); near zeros: lgamma {:.2}, digamma {:.2} eps relative",
        x.len(),
        worst[0].0,
        worst[0].1,
        worst[1].0,
        worst[1].1,
        worst[2].0,
        worst[3].0
    );
    if !failures.is_empty() {
        panic!("{summary}\n{} failures, first ones:\n{}", failures.len(), failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n"));
    }
    summary
}

// ---------------------------------------------------------------------------------------------------
// host build of kernels/special.cuh

const SPECIAL_CUH: &str = include_str!("../kernels/special.cuh");

const HARNESS: &str = r#"
#include "special.cuh"
#include <cstdio>
#include <vector>
// argv: input file (f32), output file (n lgamma then n digamma, f32)
int main(int argc, char** argv) {
    if (argc != 3) return 2;
    FILE* in = std::fopen(argv[1], "rb");
    if (!in) return 3;
    std::vector<float> x;
    float v;
    while (std::fread(&v, 4, 1, in) == 1) x.push_back(v);
    std::fclose(in);
    std::vector<float> out;
    for (float a : x) out.push_back(sv::log_gamma(a));
    for (float a : x) out.push_back(sv::digamma(a));
    FILE* o = std::fopen(argv[2], "wb");
    if (!o) return 4;
    std::fwrite(out.data(), 4, out.size(), o);
    std::fclose(o);
    return 0;
}
"#;

/// Compiles the harness; Err(reason) when there is no working C++ compiler.
fn build_harness(dir: &std::path::Path) -> Result<PathBuf, String> {
    let src = dir.join("special_host.cpp");
    std::fs::write(&src, HARNESS).unwrap();
    let exe = dir.join("special_host");
    // The header is embedded at compile time so the test binary also runs away from the source tree
    // (scripts/gpu-check.sh carries it to GPU machines).
    std::fs::write(dir.join("special.cuh"), SPECIAL_CUH).unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    // -ffp-contract=off: plain IEEE f32 operations, as the test's tolerances assume the worst rounding.
    let out = Command::new(&cxx)
        .args(["-O2", "-std=c++17", "-ffp-contract=off", "-I"])
        .arg(dir)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .map_err(|e| format!("no C++ compiler ({cxx}: {e})"))?;
    if !out.status.success() {
        // A compiler that exists but rejects special.cuh is a real failure, not a skip.
        panic!("{cxx} failed to compile kernels/special.cuh for the host:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(exe)
}

fn run_host(exe: &std::path::Path, dir: &std::path::Path, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (inp, outp) = (dir.join("x.bin"), dir.join("y.bin"));
    std::fs::write(&inp, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let st = Command::new(exe).arg(&inp).arg(&outp).status().unwrap();
    assert!(st.success(), "special_host exited with {st}");
    let bytes = std::fs::read(&outp).unwrap();
    let y: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(y.len(), 2 * x.len());
    (y[..x.len()].to_vec(), y[x.len()..].to_vec())
}

#[test]
fn host_build_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    let exe = match build_harness(dir.path()) {
        Ok(e) => e,
        Err(reason) => {
            skipped(&format!("host build of kernels/special.cuh: {reason}"));
            return;
        }
    };
    let x = positive_inputs();
    let (lg, dg) = run_host(&exe, dir.path(), &x);
    println!("{}", check("host special.cuh, x > 0", &x, &lg, &dg));
    let xn = negative_inputs();
    let (lg, dg) = run_host(&exe, dir.path(), &xn);
    println!("{}", check("host special.cuh, x < 0", &xn, &lg, &dg));
    // Poles and specials follow torch: lgamma = +inf at 0, −1, ...; digamma(+0) = −inf, NaN at −1, −2.
    let (lg, dg) = run_host(&exe, dir.path(), &[0.0, -0.0, -1.0, -2.0, f32::INFINITY, f32::NAN]);
    assert!(lg[..4].iter().all(|v| *v == f32::INFINITY), "{lg:?}");
    assert_eq!((dg[0], dg[1]), (f32::NEG_INFINITY, f32::INFINITY));
    assert!(dg[2].is_nan() && dg[3].is_nan() && lg[5].is_nan() && dg[5].is_nan());
    assert_eq!((lg[4], dg[4]), (f32::INFINITY, f32::INFINITY));
}

// ---------------------------------------------------------------------------------------------------
// device

/// Prints "SKIPPED: ..." straight to the process's stderr: libtest captures `println!`/`eprintln!` of
/// passing tests, and a skip must be visible in a plain `cargo test` run.
fn skipped(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\nSKIPPED: {msg}");
}


#[test]
fn device_matches_reference() {
    for dev in emu::devices("device lgamma/digamma (kernels/special_test.cu)") {
        device_matches_reference_on(&dev);
    }
}

fn device_matches_reference_on(dev: &splicevi::cuda::CudaDevice) {
    let special = splicevi::cuda::CudaSpecial::new(&dev).unwrap();
    let x = positive_inputs();
    let (lg, dg) = special.eval_host(&x).unwrap();
    println!("{}", check(&format!("device {}, x > 0", dev.info().name), &x, &lg, &dg));
    let xn = negative_inputs();
    let (lg, dg) = special.eval_host(&xn).unwrap();
    println!("{}", check(&format!("device {}, x < 0", dev.info().name), &xn, &lg, &dg));
}
