//! kernels/decode_dense.cu against its CPU twins (splicevi::cuda::decode::twin: the loops of
//! SpliceVae::decode_dense) on fresh random inputs with NaN-poisoned outputs, on every device
//! (`emu::devices`: cuda:0 where usable, always the host emulation). ATSEs of 1–6 junctions whose
//! junctions are interleaved, logits up to ±25 (past the 1e-6 clamp), rows of 1 and of 2,500 entries.
//! Tolerance (f32): 1e-5 relative + 1e-7 × the output's scale (device expf/logf differ from the host's
//! by a few ulps; the softmax's f64 sum runs in another order).

#[path = "common/emu.rs"]
mod emu;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splicevi::cuda::decode::twin;
use splicevi::model::spl_lik::DM_LSE_EPS;
use splicevi::cuda::{CudaDecode, CudaDevice};

fn check(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-30f64, |a, &v| a.max((v as f64).abs()));
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * (w as f64).abs() + 1e-7 * scale;
        assert!(g.is_finite() && ((g - w) as f64).abs() <= tol, "{what}[{k}] = {g:e}, twin {w:e} (tolerance {tol:e})");
    }
}

/// `n_atse` ATSEs of 1–6 junctions, junction ids shuffled (interleaved layout): (atse_ptr, atse_junc, J).
fn atses(r: &mut ChaCha8Rng, n_atse: usize) -> (Vec<usize>, Vec<u32>, usize) {
    let sizes: Vec<usize> = (0..n_atse).map(|_| r.gen_range(1..=6)).collect();
    let j: usize = sizes.iter().sum();
    let mut perm: Vec<u32> = (0..j as u32).collect();
    for i in (1..j).rev() {
        perm.swap(i, r.gen_range(0..=i));
    }
    let mut ptr = vec![0usize];
    for s in &sizes {
        ptr.push(ptr.last().unwrap() + s);
    }
    (ptr, perm, j)
}

fn decode_on(dev: &CudaDevice) {
    let k = CudaDecode::new(dev).unwrap();
    let mut r = ChaCha8Rng::seed_from_u64(5);
    for (b, n_atse) in [(1usize, 1usize), (7, 40), (33, 300)] {
        let (ptr, junc, j) = atses(&mut r, n_atse);
        let logits: Vec<f32> = (0..b * j).map(|_| if r.gen_bool(0.1) { r.gen_range(-25.0..25.0) } else { r.gen_range(-4.0..4.0) }).collect();
        let ptr64: Vec<i64> = ptr.iter().map(|&v| v as i64).collect();
        let (lg, pd, jd) = (dev.upload(&logits).unwrap(), dev.upload(&ptr64).unwrap(), dev.upload(&junc).unwrap());
        // (the DM with the original's 1e-8 in its log-sum-exp, §12.26, and without: dm_exact_softmax)
        for (dm, eps) in [(false, DM_LSE_EPS), (true, DM_LSE_EPS), (true, 0.0)] {
            let mut p = dev.upload(&vec![f32::NAN; b * j]).unwrap();
            k.psi(&lg, b, j, &pd, &jd, dm, eps as f32, &mut p).unwrap();
            let want = twin::psi(&logits, b, j, &ptr, &junc, dm, eps);
            check(&format!("psi B {b} J {j} dm {dm} ε {eps:e}"), &dev.download(&p).unwrap(), &want);
            if dm {
                // Each ATSE's probabilities sum to 1 (less the 1e-8 inside the log).
                let got = dev.download(&p).unwrap();
                for i in 0..b {
                    for a in 0..n_atse {
                        let s: f64 = junc[ptr[a]..ptr[a + 1]].iter().map(|&jj| got[i * j + jj as usize] as f64).sum();
                        assert!((s - 1.0).abs() < 1e-5, "psi dm: cell {i} ATSE {a} sums to {s}");
                    }
                }
            }
        }
        // In place (p is the logits' buffer), as the step decodes.
        let mut inplace = dev.upload(&logits).unwrap();
        let src = splicevi::cuda::step::TView::<f32>::of(&inplace);
        k.psi(&src, b, j, &pd, &jd, true, DM_LSE_EPS as f32, &mut inplace).unwrap();
        check(&format!("psi in place B {b}"), &dev.download(&inplace).unwrap(), &twin::psi(&logits, b, j, &ptr, &junc, true, DM_LSE_EPS));
    }
    for (b, n) in [(1usize, 1usize), (5, 37), (9, 2500)] {
        let x: Vec<f32> = (0..b * n).map(|_| r.gen_range(-30.0..30.0)).collect();
        let xd = dev.upload(&x).unwrap();
        let mut y = dev.upload(&vec![f32::NAN; b * n]).unwrap();
        k.row_softmax(&xd, b, n, &mut y).unwrap();
        check(&format!("row_softmax {b} × {n}"), &dev.download(&y).unwrap(), &twin::row_softmax(&x, b, n));
    }
}

#[test]
fn decode_kernels_match_twins() {
    for dev in emu::devices("decode_dense kernels vs their CPU twins") {
        decode_on(&dev);
    }
}
