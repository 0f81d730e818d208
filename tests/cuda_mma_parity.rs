//! The tensor-core building block (kernels/mma.cuh: one `mma.m16n8k16` bf16 × bf16 → f32 product per
//! warp) against an f64 product of the same bf16-rounded operands, through kernels/mma_test.cu.
//!
//! Under the host emulation this checks the kernels' fragment indexing against the emulation's reading
//! of the PTX fragment layout; on a GPU (where `devices` opens one) it checks that reading too: a wrong
//! register, half or lane order gives errors of the size of the products, not of f32 rounding. (No GPU
//! has run it yet.)
//!
//! Tolerance: the products of two bf16 are exact in f32, so the only error is the f32 summation of K
//! terms: |c − ref| ≤ 1e-5·Σ|a·b| (K ≤ 64).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splicevi::cuda::mma::CudaMmaTest;

#[path = "common/emu.rs"]
mod emu;

fn bf16(x: f32) -> f64 {
    half::bf16::from_f32(x).to_f32() as f64
}

#[test]
fn device_mma_matches_f64_product() {
    for dev in emu::devices("tensor-core mma (kernels/mma_test.cu)") {
        let mma = CudaMmaTest::new(&dev).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(7);
        for (k, n) in [(16usize, 8usize), (32, 24), (64, 64)] {
            // Values spanning several binades, some exactly representable, some not.
            let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| r.gen_range(-1.0f32..1.0) * 2f32.powi(r.gen_range(-4..4))).collect() };
            let a = draw(16 * k);
            let bt = draw(n * k);
            let c = mma.gemm_host(&a, &bt, k, n).unwrap();
            let mut worst = 0.0f64;
            for row in 0..16 {
                for col in 0..n {
                    let (mut s, mut mag) = (0.0f64, 0.0f64);
                    for kk in 0..k {
                        let p = bf16(a[row * k + kk]) * bf16(bt[col * k + kk]);
                        s += p;
                        mag += p.abs();
                    }
                    let got = c[row * n + col] as f64;
                    let err = (got - s).abs();
                    assert!(err <= 1e-5 * mag + 1e-30, "{}: k = {k}, n = {n}: c[{row}][{col}] = {got}, f64 product of the bf16 operands {s}", dev.info().name);
                    worst = worst.max(err / mag.max(1e-30));
                }
            }
            println!("{} k = {k} n = {n}: worst error {worst:.2e} of Σ|a·b|", dev.info().name);
        }
    }
}

#[test]
fn device_mma_rounds_operands_to_bf16() {
    // An operand that bf16 cannot hold: 1 + 2⁻¹⁰ rounds to 1, so the product must be exactly k
    // (had the kernel multiplied in f32 it would be k·(1 + 2⁻¹⁰)).
    for dev in emu::devices("tensor-core mma rounding (kernels/mma_test.cu)") {
        let mma = CudaMmaTest::new(&dev).unwrap();
        let (k, n) = (16, 8);
        let a = vec![1.0f32 + 2f32.powi(-10); 16 * k];
        let bt = vec![1.0f32; n * k];
        let c = mma.gemm_host(&a, &bt, k, n).unwrap();
        assert!(c.iter().all(|&v| v == k as f32), "{}: {:?}", dev.info().name, &c[..8]);
    }
}
