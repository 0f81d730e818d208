//! The CPU optimizer (src/optim.rs) against (a) values worked out by hand from torch's documented AdamW /
//! Adam algorithms, (b) a straightforward f64 re-implementation of those algorithms written here, and
//! (c) its own invariants: masking, clipping, determinism, resume from a saved state.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use splicevi::optim::{clip_grad_norm, clip_info, clip_scale, grad_norm, grad_sumsq, Adam, AdamConfig, AdamState};

fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.sample::<f32, _>(StandardNormal) * scale).collect()
}

/// torch.optim.AdamW / Adam (single-tensor path) in f64, written from the documented algorithm.
struct RefAdam {
    lr: f64,
    b1: f64,
    b2: f64,
    eps: f64,
    wd: f64,
    decoupled: bool,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl RefAdam {
    fn new(n: usize, lr: f64, wd: f64, eps: f64, decoupled: bool) -> Self {
        RefAdam { lr, b1: 0.9, b2: 0.999, eps, wd, decoupled, m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }
    fn step(&mut self, p: &mut [f64], g: &[f64], mask: Option<&[u8]>) {
        self.t += 1;
        for i in 0..p.len() {
            if mask.is_some_and(|k| k[i] == 0) {
                continue;
            }
            let mut gi = g[i];
            if self.decoupled {
                p[i] *= 1.0 - self.lr * self.wd;
            } else {
                gi += self.wd * p[i];
            }
            self.m[i] = self.b1 * self.m[i] + (1.0 - self.b1) * gi;
            self.v[i] = self.b2 * self.v[i] + (1.0 - self.b2) * gi * gi;
            let mhat = self.m[i] / (1.0 - self.b1.powi(self.t));
            let vhat = self.v[i] / (1.0 - self.b2.powi(self.t));
            p[i] -= self.lr * mhat / (vhat.sqrt() + self.eps);
        }
    }
}

#[test]
fn adamw_matches_hand_computed_steps() {
    // AdamW(lr 0.1, weight_decay 0.01, eps 1e-8), p0 = 1, gradients 0.5, -0.25, 1.0.
    // step 1: p = 1·(1 − 0.001) = 0.999; m = 0.05; v = 0.001·0.25 = 2.5e-4; m̂ = 0.5, v̂ = 0.25;
    //         p = 0.999 − 0.1·0.5/(0.5 + 1e-8) = 0.899000002
    // step 2: p = 0.899000002·0.999 = 0.898101001998; m = 0.045 − 0.025 = 0.02;
    //         v = 0.999·2.5e-4 + 0.001·0.0625 = 3.1225e-4; m̂ = 0.02/0.19 = 0.1052631579;
    //         v̂ = 3.1225e-4/0.001999 = 0.1562031016, √ = 0.3952253808;
    //         p = 0.898101001998 − 0.1·0.1052631579/0.3952253908 = 0.8714672987
    // step 3: m = 0.018 + 0.1 = 0.118; v = 3.11937750e-4 + 1e-3 = 1.31193775e-3 → p = 0.8047846724
    let mut opt = Adam::new(AdamConfig::adamw(0.1, 0.01, 1e-8), 1);
    let mut p = [1.0f32];
    let expected = [0.899000002f64, 0.8714672987058463, 0.804784672376384];
    for (g, want) in [0.5f32, -0.25, 1.0].into_iter().zip(expected) {
        opt.step(&mut p, &[g], None, 1.0).unwrap();
        assert!((p[0] as f64 - want).abs() < 2e-7, "step {}: p = {} expected {want}", opt.state.step, p[0]);
    }
    assert_eq!(opt.state.step, 3);
    assert!((opt.state.exp_avg[0] - 0.118).abs() < 1e-7);
    assert!((opt.state.exp_avg_sq[0] as f64 - 1.31193775e-3).abs() < 1e-9);
}

#[test]
fn adam_l2_matches_hand_computed_steps() {
    // Adam(lr 1e-3, weight_decay 0.5, eps 0.01) (the adversary's optimizer, decay exaggerated to show),
    // p0 = 2, gradient 0.03: g' = 0.03 + 0.5·2 = 1.03; m̂ = 1.03, √v̂ = 1.03;
    // p = 2 − 1e-3·1.03/(1.03 + 0.01) = 1.9990096153846.
    // step 2, gradient −0.5: g' = −0.5 + 0.5·1.9990096 = 0.4995048; p = 1.9980932560.
    let mut opt = Adam::new(AdamConfig::adam_l2(1e-3, 0.5, 0.01), 1);
    let mut p = [2.0f32];
    for (g, want) in [(0.03f32, 1.9990096153846153f64), (-0.5, 1.9980932559647038)] {
        opt.step(&mut p, &[g], None, 1.0).unwrap();
        assert!((p[0] as f64 - want).abs() < 3e-7, "step {}: p = {} expected {want}", opt.state.step, p[0]);
    }
}

#[test]
fn first_adamw_step_moves_each_entry_by_lr() {
    // With zero state, m̂ = g and √v̂ = |g|: the first update is lr·sign(g) (up to eps), after decay.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let p0 = randn(&mut rng, 1000, 1.0);
    let g = randn(&mut rng, 1000, 1.0);
    let mut p = p0.clone();
    Adam::new(AdamConfig::adamw(1e-2, 1e-3, 1e-8), p.len()).step(&mut p, &g, None, 1.0).unwrap();
    for i in 0..p.len() {
        let want = p0[i] as f64 * (1.0 - 1e-5) - 1e-2 * (g[i] as f64).signum();
        assert!((p[i] as f64 - want).abs() < 1e-6, "entry {i}: {} vs {want}", p[i]);
    }
}

fn run_against_reference(config: AdamConfig, decoupled: bool, seed: u64) {
    let n = 40_000; // spans several rayon chunks
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = randn(&mut rng, n, 1.0);
    let mut mask: Vec<u8> = (0..n).map(|_| (rng.gen::<f32>() > 0.1) as u8).collect();
    mask[0] = 0;
    mask[1] = 1;
    let p_start = p.clone();
    let mut p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let mut opt = Adam::new(config, n);
    let mut reference = RefAdam::new(n, config.lr, config.weight_decay, config.eps, decoupled);
    let steps = 25;
    for step in 0..steps {
        // Gradients of varying scale, some exactly zero.
        let mut g = randn(&mut rng, n, 0.1 * (1 + step % 4) as f32);
        g[1] = 0.0;
        let g64: Vec<f64> = g.iter().map(|&x| x as f64).collect();
        opt.step(&mut p, &g, Some(&mask), 1.0).unwrap();
        reference.step(&mut p64, &g64, Some(&mask));
    }
    let mut worst = 0.0f64;
    for i in 0..n {
        if mask[i] == 0 {
            assert_eq!(p[i].to_bits(), p_start[i].to_bits(), "masked entry {i} changed");
            assert_eq!((opt.state.exp_avg[i], opt.state.exp_avg_sq[i]), (0.0, 0.0), "masked entry {i} has moments");
            continue;
        }
        let err = (p[i] as f64 - p64[i]).abs();
        worst = worst.max(err);
        // Each f32 step rounds p twice (decay, update) and the update itself by a few ulp: at most about
        // one ulp of |p| per step, accumulated linearly over the steps as a worst case.
        let tol = steps as f64 * f32::EPSILON as f64 * (p64[i].abs() + 0.1);
        assert!(err < tol, "entry {i}: f32 {} vs f64 reference {} (err {err:e} > {tol:e})", p[i], p64[i]);
        assert!((opt.state.exp_avg[i] as f64 - reference.m[i]).abs() < 1e-6 * (1.0 + reference.m[i].abs()));
    }
    assert!(worst > 0.0, "f32 and f64 runs cannot agree exactly everywhere; the comparison is vacuous");
}

#[test]
fn adamw_matches_f64_reference_over_many_steps() {
    run_against_reference(AdamConfig::adamw(1e-2, 1e-2, 1e-8), true, 7);
}

#[test]
fn adam_l2_matches_f64_reference_over_many_steps() {
    run_against_reference(AdamConfig::adam_l2(1e-3, 1e-2, 0.01), false, 8);
}

#[test]
fn clipping_follows_torch() {
    // ||(3, 4)|| = 5; the masked-out 100 takes no part and stays as it is.
    let mut g = vec![3.0f32, 4.0, 100.0];
    let mask = [1u8, 1, 0];
    let r = clip_grad_norm(&mut g, Some(&mask), 1.0).unwrap();
    assert_eq!(r.norm, 5.0);
    let coef = 1.0f32 / (5.0 + 1e-6);
    assert_eq!(r.scale, coef);
    assert_eq!(g, vec![3.0 * coef, 4.0 * coef, 100.0]);
    // Below max_norm: factor exactly 1, gradients bit-for-bit unchanged.
    let mut g2 = vec![3.0f32, 4.0];
    let r2 = clip_grad_norm(&mut g2, None, 5.0 + 1e-3).unwrap();
    assert_eq!((r2.scale, g2), (1.0, vec![3.0, 4.0]));
    // torch.clamp propagates NaN; an infinite norm gives factor 0.
    assert!(clip_scale(f64::NAN, 5.0).is_nan());
    assert_eq!(clip_scale(f64::INFINITY, 5.0), 0.0);
    assert!(grad_norm(&[1.0], Some(&[1, 1])).is_err(), "mask length mismatch must be an error");
}

#[test]
fn norm_is_f64_and_thread_count_independent() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let g = randn(&mut rng, 1_000_003, 1e-3);
    let mask: Vec<u8> = (0..g.len()).map(|i| (i % 7 != 0) as u8).collect();
    let exact: f64 = g.iter().zip(&mask).filter(|(_, &k)| k != 0).map(|(&x, _)| x as f64 * x as f64).sum();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| grad_sumsq(&g, Some(&mask)).unwrap());
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(|| grad_sumsq(&g, Some(&mask)).unwrap());
    assert_eq!(one.to_bits(), two.to_bits());
    assert!((one - exact).abs() <= 1e-12 * exact, "{one} vs {exact}");
}

#[test]
fn fused_clip_scale_equals_clipping_in_place() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let n = 50_000;
    let g = randn(&mut rng, n, 1.0); // norm ≈ 224, so clipping to 5 is active
    let p0 = randn(&mut rng, n, 1.0);
    let cfg = AdamConfig::adamw(1e-3, 1e-3, 1e-8);

    let (mut pa, mut ga) = (p0.clone(), g.clone());
    let r = clip_grad_norm(&mut ga, None, 5.0).unwrap();
    assert!(r.scale < 0.05);
    Adam::new(cfg, n).step(&mut pa, &ga, None, 1.0).unwrap();

    let mut pb = p0.clone();
    let info = clip_info(&g, None, 5.0).unwrap();
    assert_eq!(info, r);
    Adam::new(cfg, n).step(&mut pb, &g, None, info.scale).unwrap();
    assert!(pa.iter().zip(&pb).all(|(a, b)| a.to_bits() == b.to_bits()), "fused scale differs from in-place clipping");
}

#[test]
fn resume_from_saved_state_is_exact() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let n = 20_000;
    let p0 = randn(&mut rng, n, 1.0);
    let grads: Vec<Vec<f32>> = (0..5).map(|_| randn(&mut rng, n, 0.3)).collect();
    let cfg = AdamConfig::adamw(1e-3, 1e-4, 1e-8);

    let mut straight = p0.clone();
    let mut a = Adam::new(cfg, n);
    for g in &grads {
        a.step(&mut straight, g, None, 1.0).unwrap();
    }

    let mut resumed = p0.clone();
    let mut b = Adam::new(cfg, n);
    for g in &grads[..3] {
        b.step(&mut resumed, g, None, 1.0).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    b.state.save(&path).unwrap();
    drop(b);
    let state = AdamState::load(&path, n).unwrap();
    assert_eq!(state.step, 3);
    let mut c = Adam::with_state(cfg, state);
    for g in &grads[3..] {
        c.step(&mut resumed, g, None, 1.0).unwrap();
    }
    assert_eq!(c.state, a.state);
    assert!(straight.iter().zip(&resumed).all(|(x, y)| x.to_bits() == y.to_bits()));

    let err = AdamState::load(&path, n + 1).unwrap_err().to_string();
    assert!(err.contains(&n.to_string()) && err.contains(&(n + 1).to_string()), "{err}");
}

#[test]
fn length_mismatches_are_errors() {
    let mut opt = Adam::new(AdamConfig::adamw(1e-3, 0.0, 1e-8), 3);
    assert!(opt.step(&mut [0.0; 3], &[0.0; 2], None, 1.0).is_err());
    assert!(opt.step(&mut [0.0; 3], &[0.0; 3], Some(&[1, 1]), 1.0).is_err());
    assert!(opt.step(&mut [0.0; 4], &[0.0; 4], None, 1.0).is_err());
    assert_eq!(opt.state.step, 0, "a rejected step must not advance the counter");
}

/// The optimizer state's safetensors bytes do not depend on the metadata map's hash order: the same
/// state saved again is the same file (the same seed gives bit-identical runs, checkpoints included),
/// and it reads back to the same state.
#[test]
fn the_same_optimizer_state_gives_the_same_bytes() {
    let st = splicevi::optim::AdamState { exp_avg: vec![0.5, -1.0, 2.0], exp_avg_sq: vec![0.25, 1.0, 4.0], step: 20 };
    let first = st.to_safetensors().unwrap();
    // each serialisation builds a new HashMap, whose iteration order is drawn anew
    for _ in 0..32 {
        assert_eq!(st.to_safetensors().unwrap(), first, "the bytes differ between two saves of one state");
    }
    let back = splicevi::optim::AdamState::from_safetensors(&first, 3, "test").unwrap();
    assert_eq!(back, st);
}
