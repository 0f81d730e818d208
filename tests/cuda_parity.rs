//! Every optimizer kernel against its CPU twin (src/optim.rs) on fresh random inputs, output buffers
//! poisoned with NaN first so an unwritten entry cannot pass.
//!
//! Without a GPU, or in a binary built without nvcc, each test prints "SKIPPED: <reason>" and returns.
//! Tolerances:
//! * grad norm: |gpu − cpu| ≤ 1 ulp of the f32 norm (both sum in f64, in different orders; the f64 sums
//!   agree to ~1e-15 relative, so the f32 roundings almost always coincide); the clip scale likewise;
//!   the f64 sum of squares to 1e-12 relative; two GPU runs bit-identical (fixed reduction order).
//! * Adam / AdamW: ≤ 1 ulp per entry. Both sides execute the same IEEE f32 operations in the same order
//!   with the same host-computed scalars and no FMA contraction, so the expected result is bit-identical;
//!   the test prints how many entries matched exactly.

#[path = "common/emu.rs"]
mod emu;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use splicevi::cuda::{ArenaPlan, CudaDevice, CudaOptim, DeviceArena, DeviceMem};
use splicevi::optim::{clip_info, grad_sumsq, Adam, AdamConfig};



fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.sample::<f32, _>(StandardNormal) * scale).collect()
}

fn random_mask(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| (rng.gen::<f32>() > 0.15) as u8).collect()
}

fn ulps(a: f32, b: f32) -> u32 {
    if a.to_bits() == b.to_bits() {
        return 0;
    }
    if a.is_nan() || b.is_nan() || a.signum() != b.signum() {
        return u32::MAX;
    }
    a.to_bits().abs_diff(b.to_bits())
}

#[test]
fn grad_norm_matches_cpu() {
    for dev in emu::devices("grad_norm kernels vs optim::clip_info") {
        grad_norm_matches_cpu_on(&dev);
    }
}

fn grad_norm_matches_cpu_on(dev: &CudaDevice) {
    let opt = CudaOptim::new(&dev).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(100);
    // Sizes: one entry, a block's worth, and one that caps the grid (the host emulation runs a block
    // at a time with one OS thread per CUDA thread: it stops below the cap).
    let sizes: &[(usize, f32)] = if dev.is_emulated() { &[(1, 5.0), (2047, 5.0), (40_009, 5.0)] } else { &[(1, 5.0), (2047, 5.0), (1_000_003, 5.0), (3_000_017, 1e9)] };
    for &(n, max_norm) in sizes {
        let g = randn(&mut rng, n, 0.05);
        let mask = random_mask(&mut rng, n);
        for use_mask in [false, true] {
            let m = use_mask.then_some(mask.as_slice());
            let cpu = clip_info(&g, m, max_norm).unwrap();
            let cpu_sumsq = grad_sumsq(&g, m).unwrap();

            let gd = dev.upload(&g).unwrap();
            let md = dev.upload(&mask).unwrap();
            let mut partials = dev.upload(&vec![f64::NAN; splicevi::cuda::optim::GRAD_NORM_MAX_BLOCKS]).unwrap();
            let mut out = dev.upload(&[f32::NAN; 2]).unwrap();
            let mut sumsq = dev.upload(&[f64::NAN]).unwrap();
            let mask_arg: Option<&dyn DeviceMem<u8>> = if use_mask { Some(&md) } else { None };
            opt.grad_norm(&gd, mask_arg, max_norm, &mut partials, &mut out, Some(&mut sumsq)).unwrap();
            let o = dev.download(&out).unwrap();
            let s = dev.download(&sumsq).unwrap()[0];
            let ctx = format!("n = {n}, mask = {use_mask}: gpu norm {} scale {} / cpu norm {} scale {}", o[0], o[1], cpu.norm, cpu.scale);
            assert!(ulps(o[0], cpu.norm as f32) <= 1, "{ctx}");
            assert!(ulps(o[1], cpu.scale) <= 1, "{ctx}");
            assert!((s - cpu_sumsq).abs() <= 1e-12 * cpu_sumsq, "{ctx}: sumsq {s} vs {cpu_sumsq}");

            // Deterministic: a second run is bit-identical.
            let mut out2 = dev.upload(&[f32::NAN; 2]).unwrap();
            opt.grad_norm(&gd, mask_arg, max_norm, &mut partials, &mut out2, None).unwrap();
            let o2 = dev.download(&out2).unwrap();
            assert_eq!((o[0].to_bits(), o[1].to_bits()), (o2[0].to_bits(), o2[1].to_bits()), "{ctx}: second run differs");
            println!("grad_norm {ctx}");
        }
    }
}

fn adam_parity(config: AdamConfig, name: &str, clip: Option<f32>) {
    for dev in emu::devices(&format!("{name} kernel vs optim::Adam::step")) {
        adam_parity_on(&dev, config, name, clip);
    }
}

fn adam_parity_on(dev: &CudaDevice, config: AdamConfig, name: &str, clip: Option<f32>) {
    let opt = CudaOptim::new(&dev).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(200);
    let n = if dev.is_emulated() { 30_011 } else { 1_234_567 };
    let p0 = randn(&mut rng, n, 1.0);
    let mask = random_mask(&mut rng, n);
    let mut cpu_p = p0.clone();
    let mut cpu = Adam::new(config, n);

    let mut p = dev.upload(&p0).unwrap();
    let mut m = dev.zeros::<f32>(n).unwrap();
    let mut v = dev.zeros::<f32>(n).unwrap();
    let md = dev.upload(&mask).unwrap();
    let mut partials = dev.zeros::<f64>(splicevi::cuda::optim::GRAD_NORM_MAX_BLOCKS).unwrap();
    let mut norm_out = dev.zeros::<f32>(2).unwrap();
    // A finite guard (the gradient's sum of squares, as DeviceModel::train_step passes) lets the step
    // through: the even steps run with one.
    let finite_guard = dev.upload(&[12.5f64]).unwrap();

    for step in 1..=4u64 {
        let g = randn(&mut rng, n, 0.01 * step as f32);
        let gd = dev.upload(&g).unwrap();
        let scale = match clip {
            Some(max_norm) => {
                let info = clip_info(&g, Some(&mask), max_norm).unwrap();
                opt.grad_norm(&gd, Some(&md), max_norm, &mut partials, &mut norm_out, None).unwrap();
                info.scale
            }
            None => 1.0,
        };
        cpu.step(&mut cpu_p, &g, Some(&mask), scale).unwrap();
        let scale_arg: Option<(&dyn DeviceMem<f32>, usize)> = if clip.is_some() { Some((&norm_out, 1)) } else { None };
        let guard: Option<&dyn DeviceMem<f64>> = if step % 2 == 0 { Some(&finite_guard) } else { None };
        opt.adam_step(&config, step, &mut p, &gd, &mut m, &mut v, Some(&md), scale_arg, guard).unwrap();
        if clip.is_some() {
            let o = dev.download(&norm_out).unwrap();
            assert_eq!(o[1].to_bits(), scale.to_bits(), "step {step}: device clip scale {} vs cpu {scale}", o[1]);
        }
    }
    let (gp, gm, gv) = (dev.download(&p).unwrap(), dev.download(&m).unwrap(), dev.download(&v).unwrap());
    // A guard that is not finite (a bad gradient the host has not seen yet) skips the whole step, even
    // over a gradient that is itself finite: parameters and moments keep their bits.
    for bad in [f64::NAN, f64::INFINITY] {
        let g = dev.upload(&randn(&mut rng, n, 0.5)).unwrap();
        let guard = dev.upload(&[bad]).unwrap();
        opt.adam_step(&config, 5, &mut p, &g, &mut m, &mut v, None, None, Some(&guard)).unwrap();
        let same = dev.download(&p).unwrap() == gp && dev.download(&m).unwrap() == gm && dev.download(&v).unwrap() == gv;
        assert!(same, "{name}: a step with guard {bad} changed the state");
    }
    let mut exact = 0usize;
    for i in 0..n {
        let worst = ulps(gp[i], cpu_p[i]).max(ulps(gm[i], cpu.state.exp_avg[i])).max(ulps(gv[i], cpu.state.exp_avg_sq[i]));
        assert!(
            worst <= 1,
            "{name}: entry {i} (mask {}): gpu p/m/v {} {} {} vs cpu {} {} {}",
            mask[i],
            gp[i],
            gm[i],
            gv[i],
            cpu_p[i],
            cpu.state.exp_avg[i],
            cpu.state.exp_avg_sq[i]
        );
        exact += (worst == 0) as usize;
        if mask[i] == 0 {
            assert_eq!(gp[i].to_bits(), p0[i].to_bits(), "{name}: masked entry {i} changed");
        }
    }
    println!("{name}: {n} entries, 4 steps, {exact} bit-identical to the CPU twin ({:.4}%)", 100.0 * exact as f64 / n as f64);
}

#[test]
fn adamw_matches_cpu() {
    adam_parity(AdamConfig::adamw(1e-3, 1e-3, 1e-8), "adamw_step", None);
}

#[test]
fn adamw_with_device_clip_scale_matches_cpu() {
    // max_norm 0.5 with norms of ~10: clipping is active every step.
    adam_parity(AdamConfig::adamw(1e-4, 1e-4, 1e-8), "adamw_step + grad_norm clip", Some(0.5));
}

#[test]
fn adam_l2_matches_cpu() {
    adam_parity(AdamConfig::adam_l2(1e-3, 1e-3, 0.01), "adam_l2_step", None);
}

#[test]
fn arena_regions_feed_the_kernels() {
    for dev in emu::devices("device arena + adamw_step") {
        arena_regions_feed_the_kernels_on(&dev);
    }
}

fn arena_regions_feed_the_kernels_on(dev: &CudaDevice) {
    let n = if dev.is_emulated() { 10_007 } else { 100_001 };
    let mut plan = ArenaPlan::new();
    plan.add::<f32>("params", n).unwrap().add::<f32>("grads", n).unwrap().add::<f32>("exp_avg", n).unwrap();
    plan.add::<f32>("exp_avg_sq", n).unwrap().add::<u8>("mask", n).unwrap();
    plan.add::<f64>("norm_partials", splicevi::cuda::optim::GRAD_NORM_MAX_BLOCKS).unwrap().add::<f32>("norm_out", 2).unwrap();
    println!("{plan}");
    let arena = DeviceArena::allocate(&dev, plan).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(300);
    let p0 = randn(&mut rng, n, 1.0);
    let g = randn(&mut rng, n, 1.0);
    let mask = random_mask(&mut rng, n);

    let (mut params, mut grads, mut mask_r) = (arena.region::<f32>("params").unwrap(), arena.region::<f32>("grads").unwrap(), arena.region::<u8>("mask").unwrap());
    dev.write(&p0, &mut params).unwrap();
    dev.write(&g, &mut grads).unwrap();
    dev.write(&mask, &mut mask_r).unwrap();
    assert!(arena.region::<f64>("params").is_err(), "a region must not be readable as the wrong element size");

    let opt = CudaOptim::new(&dev).unwrap();
    let config = AdamConfig::adamw(1e-3, 1e-2, 1e-8);
    let (mut p, mut m, mut v) = (params, arena.region::<f32>("exp_avg").unwrap(), arena.region::<f32>("exp_avg_sq").unwrap());
    let (mut partials, mut out) = (arena.region::<f64>("norm_partials").unwrap(), arena.region::<f32>("norm_out").unwrap());
    opt.grad_norm(&grads, Some(&mask_r), 5.0, &mut partials, &mut out, None).unwrap();
    opt.adam_step(&config, 1, &mut p, &grads, &mut m, &mut v, Some(&mask_r), Some((&out, 1)), None).unwrap();

    let gp = dev.read(&p).unwrap();
    assert!(ulps(dev.read(&out).unwrap()[0], clip_info(&g, Some(&mask), 5.0).unwrap().norm as f32) <= 1);

    let info = clip_info(&g, Some(&mask), 5.0).unwrap();
    let mut cpu_p = p0.clone();
    Adam::new(config, n).step(&mut cpu_p, &g, Some(&mask), info.scale).unwrap();
    let bad = (0..n).filter(|&i| ulps(gp[i], cpu_p[i]) > 1).count();
    assert_eq!(bad, 0, "{bad} entries differ by more than 1 ulp after a step on arena regions");
}
