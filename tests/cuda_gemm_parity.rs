//! The cuBLAS GEMM wrapper (src/cuda/gemm.rs) against a host product, on a GPU; prints SKIPPED without
//! one. (No GPU has run it yet.)
//!
//! Every transposition pair, sizes that are not multiples of anything (37 × 23 × 19, and k = 1), f32 and
//! bf16 operands. The reference is an f64 product of the very operands the device sees (bf16-rounded
//! for bf16), so both precisions get the same tolerance: |gpu − ref| ≤ 1e-5·Σₖ|aᵢₖ·bₖⱼ| + 1e-30, every
//! value finite (the output starts as NaN and cuBLAS must not read it with β = 0).

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splicevi::cuda::gemm::{CudaGemm, GemmPrecision};
use splicevi::cuda::CudaDevice;

#[path = "common/emu.rs"]
mod emu;

/// op(X)[i][k] of a row-major r × c matrix.
fn at(x: &[f32], c: usize, t: bool, i: usize, k: usize) -> f64 {
    (if t { x[k * c + i] } else { x[i * c + k] }) as f64
}

#[test]
fn device_gemm_matches_host_product() {
    for dev in emu::devices("GEMM vs host product") {
        device_gemm_matches_host_product_on(&dev);
    }
}

fn device_gemm_matches_host_product_on(dev: &CudaDevice) {
    let g = CudaGemm::new(&dev).expect("cuBLAS handle");
    let mut r = ChaCha8Rng::seed_from_u64(5);
    for prec in [GemmPrecision::F32, GemmPrecision::Bf16] {
        for (m, n, k) in [(37, 23, 19), (5, 64, 1), (1, 3, 130)] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let mut a: Vec<f32> = (0..ar * ac).map(|_| r.gen_range(-2.0..2.0f32)).collect();
                let mut b: Vec<f32> = (0..br * bc).map(|_| r.gen_range(-2.0..2.0f32)).collect();
                if prec == GemmPrecision::Bf16 {
                    a.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32());
                    b.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32());
                }
                let got = g.run_host(prec, &a, ar, ac, ta, &b, br, bc, tb).unwrap();
                assert_eq!(got.len(), m * n);
                for i in 0..m {
                    for j in 0..n {
                        let (mut s, mut mag) = (0.0f64, 0.0f64);
                        for kk in 0..k {
                            let p = at(&a, ac, ta, i, kk) * at(&b, bc, tb, kk, j);
                            s += p;
                            mag += p.abs();
                        }
                        let v = got[i * n + j] as f64;
                        assert!(v.is_finite() && (v - s).abs() <= 1e-5 * mag + 1e-30, "{prec:?} {m}×{n}×{k} ta {ta} tb {tb}: C[{i}][{j}] = {v:e}, host {s:e}");
                    }
                }
            }
        }
    }
}

/// The TF32 product (`gemm_tf32`, the grouped partial encoder's in bf16): with operands already on the
/// TF32 grid (10 mantissa bits, so every rounding mode leaves them as they are) it must meet the f32
/// tolerance above; with operands off the grid it must differ from the f32 product (the rounding
/// happened) and stay within 2⁻¹⁰·Σₖ|aᵢₖ·bₖⱼ| of the exact one.
#[test]
fn device_gemm_tf32_matches_host_product() {
    use splicevi::cuda::gemm::round_tf32;
    for dev in emu::devices("TF32 GEMM vs host product") {
        let g = CudaGemm::new(&dev).expect("cuBLAS handle");
        let mut r = ChaCha8Rng::seed_from_u64(6);
        for on_grid in [true, false] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (m, n, k) = (37, 23, 19);
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let mut a: Vec<f32> = (0..ar * ac).map(|_| r.gen_range(-2.0..2.0f32)).collect();
                let mut b: Vec<f32> = (0..br * bc).map(|_| r.gen_range(-2.0..2.0f32)).collect();
                if on_grid {
                    a.iter_mut().for_each(|v| *v = round_tf32(*v));
                    b.iter_mut().for_each(|v| *v = round_tf32(*v));
                }
                let got = g.run_host_tf32(&a, ar, ac, ta, &b, br, bc, tb).unwrap();
                let f32_run = g.run_host(GemmPrecision::F32, &a, ar, ac, ta, &b, br, bc, tb).unwrap();
                let tol = if on_grid { 1e-5 } else { 2f64.powi(-10) };
                for i in 0..m {
                    for j in 0..n {
                        let (mut s, mut mag) = (0.0f64, 0.0f64);
                        for kk in 0..k {
                            let p = at(&a, ac, ta, i, kk) * at(&b, bc, tb, kk, j);
                            s += p;
                            mag += p.abs();
                        }
                        let v = got[i * n + j] as f64;
                        assert!(v.is_finite() && (v - s).abs() <= tol * mag + 1e-30, "TF32 (on the grid: {on_grid}) ta {ta} tb {tb}: C[{i}][{j}] = {v:e}, host {s:e}");
                    }
                }
                if !on_grid {
                    assert!(got != f32_run, "TF32 ta {ta} tb {tb}: the product equals the f32 one bit for bit");
                }
            }
        }
    }
}
