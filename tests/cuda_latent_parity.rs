//! The fused latent step (kernels/latent.cu) against its CPU twin `model::latent_step`, and the twin's
//! backward against f64 central finite differences.
//!
//! * `twin_backward_matches_finite_differences`: every mixing × penalty × latent distribution, f64.
//! * `host_emu_latent_matches_twin`: the kernel source compiled by the host C++20 compiler against
//!   kernels/host_emu.h and run on the CPU (its logic: indexing, warp reductions, clamps, masks), on
//!   fresh random inputs with every output poisoned (NaN) first, against the f32 twin.
//! * `gpu_latent_matches_twin`: the same comparison on a GPU; prints SKIPPED without one.
//!   (No GPU has run it yet.)
//!
//! Tolerance (f32 kernel vs f32 twin; both accumulate in f32 in different orders, expf/logf differ in
//! the last bit): |kernel − twin| ≤ 2e-4·|twin| + 2e-5·max|twin tensor| per element.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use splicevi::cuda::latent::{mix_code, penalty_code, penalty_scale, LatentHost};
use splicevi::cuda::{CudaDevice, CudaLatent};
use splicevi::model::config::ModalityPenalty;
use splicevi::model::latent_step::{latent_step_bwd, latent_step_fwd, LatentIn, Mix};
use splicevi::model::real::Real;
use splicevi::model::tensor::Mat;
use splicevi::model::vae::Modality;

#[path = "common/emu.rs"]
mod emu;
use emu::{close, f32s, skipped};

const MIXES: [Mix; 7] = [
    Mix::Concat,
    Mix::Softmax { independent: false },
    Mix::Softmax { independent: true },
    Mix::PerDim { mask_spl: false },
    Mix::PerDim { mask_spl: true },
    Mix::Routed(Modality::Expression),
    Mix::Routed(Modality::Splicing),
];
const PENALTIES: [ModalityPenalty; 4] = [ModalityPenalty::None, ModalityPenalty::Jeffreys, ModalityPenalty::Mmd, ModalityPenalty::JeffreysExact];

/// One random problem (values in f64; converted per precision).
#[derive(Clone)]
struct Case {
    b: usize,
    d: usize,
    mix: Mix,
    ln: bool,
    penalty: ModalityPenalty,
    mu_e: Vec<f64>,
    v_e: Vec<f64>,
    mu_s: Vec<f64>,
    v_s: Vec<f64>,
    raw: Vec<f64>,
    mask_e: Vec<bool>,
    mask_s: Vec<bool>,
    eps: Vec<f64>,
    dz: Vec<f64>,
    dqm: Option<Vec<f64>>,
    kl_scale: f64,
    kl_weight: f64,
}

impl Case {
    fn l(&self) -> usize {
        if self.mix == Mix::Concat {
            2 * self.d
        } else {
            self.d
        }
    }

    /// `tiny_var`: 3% of the variances near 1e-7 (the clamp at 1e-6 acts); off for finite differences.
    #[allow(clippy::too_many_arguments)]
    fn random(seed: u64, b: usize, d: usize, mix: Mix, ln: bool, penalty: ModalityPenalty, with_dqm: bool, tiny_var: bool) -> Case {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut normal = |s: f64| -> f64 { s * r.sample::<f64, _>(StandardNormal) };
        let mu_e: Vec<f64> = (0..b * d).map(|_| normal(1.0)).collect();
        let mu_s: Vec<f64> = (0..b * d).map(|_| normal(1.0)).collect();
        let v_e: Vec<f64> = (0..b * d).map(|_| normal(0.7).exp()).collect();
        let v_s: Vec<f64> = (0..b * d).map(|_| normal(0.7).exp()).collect();
        let raw_len = match mix {
            Mix::Softmax { .. } => 2 * b,
            Mix::PerDim { .. } => d,
            _ => 0,
        };
        let raw: Vec<f64> = (0..raw_len).map(|_| normal(1.0)).collect();
        let l = if mix == Mix::Concat { 2 * d } else { d };
        let eps: Vec<f64> = (0..b * l).map(|_| normal(1.0)).collect();
        let dz: Vec<f64> = (0..b * l).map(|_| normal(1.0)).collect();
        let dqm = with_dqm.then(|| (0..b * l).map(|_| normal(1.0)).collect::<Vec<f64>>());
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let mask_e: Vec<bool> = (0..b).map(|_| r.gen::<f64>() > 0.1).collect();
        let mask_s: Vec<bool> = (0..b).map(|_| r.gen::<f64>() > 0.2).collect();
        let mut c = Case { b, d, mix, ln, penalty, mu_e, v_e, mu_s, v_s, raw, mask_e, mask_s, eps, dz, dqm, kl_scale: 0.37 / b as f64, kl_weight: 0.37 };
        if tiny_var {
            for k in 0..b * d {
                if r.gen::<f64>() < 0.03 {
                    c.v_e[k] = 1e-7 * (1.0 + r.gen::<f64>());
                }
                if r.gen::<f64>() < 0.03 {
                    c.v_s[k] = 1e-7 * (1.0 + r.gen::<f64>());
                }
            }
        }
        c
    }
}

fn mat<T: Real>(rows: usize, cols: usize, v: &[f64]) -> Mat<T> {
    Mat::from_vec(rows, cols, v.iter().map(|&x| T::from_f64(x)).collect())
}

struct Mats<T> {
    mu_e: Mat<T>,
    v_e: Mat<T>,
    mu_s: Mat<T>,
    v_s: Mat<T>,
    eps: Mat<T>,
    raw: Vec<T>,
}

impl Case {
    fn mats<T: Real>(&self) -> Mats<T> {
        let (b, d) = (self.b, self.d);
        Mats {
            mu_e: mat(b, d, &self.mu_e),
            v_e: mat(b, d, &self.v_e),
            mu_s: mat(b, d, &self.mu_s),
            v_s: mat(b, d, &self.v_s),
            eps: mat(b, self.l(), &self.eps),
            raw: self.raw.iter().map(|&x| T::from_f64(x)).collect(),
        }
    }
    fn input<'a, T: Real>(&'a self, m: &'a Mats<T>) -> LatentIn<'a, T> {
        LatentIn {
            mu_e: &m.mu_e,
            v_e: &m.v_e,
            mu_s: &m.mu_s,
            v_s: &m.v_s,
            mix: self.mix,
            raw: &m.raw,
            mask_e: &self.mask_e,
            mask_s: &self.mask_s,
            eps: &m.eps,
            ln: self.ln,
            penalty: self.penalty,
        }
    }

    /// The scalar whose gradient latent_step_bwd computes: ⟨dz, z⟩ + ⟨dqm, qz_m⟩ + kl_scale Σ KL_i + penalty.
    fn objective(&self, m: &Mats<f64>) -> f64 {
        let out = latent_step_fwd(&self.input(m), self.kl_weight).unwrap();
        let mut s: f64 = out.z.data.iter().zip(&self.dz).map(|(a, b)| a * b).sum();
        if let Some(q) = &self.dqm {
            s += out.qz_m.data.iter().zip(q).map(|(a, b)| a * b).sum::<f64>();
        }
        s + self.kl_scale * out.kl.iter().sum::<f64>() + out.penalty
    }
}

/// Twin results in the kernel's layout.
fn twin_f32(c: &Case) -> LatentHost {
    let m = c.mats::<f32>();
    let inp = c.input(&m);
    let out = latent_step_fwd(&inp, c.kl_weight).unwrap();
    let dz = mat::<f32>(c.b, c.l(), &c.dz);
    let dqm = c.dqm.as_ref().map(|q| mat::<f32>(c.b, c.l(), q));
    let g = latent_step_bwd(&inp, &out, &dz, dqm.as_ref(), c.kl_scale as f32, c.kl_weight as f32);
    LatentHost {
        qz_m: out.qz_m.data.clone(),
        qz_v: out.qz_v.data.clone(),
        z: out.z.data.clone(),
        kl_row: out.kl.clone(),
        pen_row: vec![out.penalty], // compared as a total
        d_mu_e: g.post.mu_e.data,
        d_v_e: g.post.v_e.data,
        d_mu_s: g.post.mu_s.data,
        d_v_s: g.post.v_s.data,
        d_raw: g.d_raw,
    }
}

/// The kernel's penalty total as the loss uses it (pen rows summed; JeffreysExact × kl_weight / paired).
fn kernel_penalty(c: &Case, h: &LatentHost) -> f64 {
    let s: f64 = h.pen_row.iter().map(|&v| v as f64).sum();
    if c.penalty == ModalityPenalty::JeffreysExact {
        let np = c.mask_e.iter().zip(&c.mask_s).filter(|(a, b)| **a && **b).count();
        if np == 0 {
            0.0
        } else {
            s * c.kl_weight / np as f64
        }
    } else {
        s
    }
}

fn compare(c: &Case, got: &LatentHost) {
    let name = format!("mix {:?} ln {} penalty {} dqm {}", c.mix, c.ln, c.penalty.as_str(), c.dqm.is_some());
    let want = twin_f32(c);
    close("qz_m", &name, &got.qz_m, &want.qz_m, 0.0);
    close("qz_v", &name, &got.qz_v, &want.qz_v, 0.0);
    close("z", &name, &got.z, &want.z, 0.0);
    close("kl", &name, &got.kl_row, &want.kl_row, 0.0);
    let (p, pw) = (kernel_penalty(c, got), want.pen_row[0] as f64);
    assert!((p - pw).abs() <= 1e-4 * pw.abs() + 1e-5, "{name}: penalty {p:e}, twin {pw:e}");
    if c.mix == Mix::Concat || c.penalty == ModalityPenalty::None {
        assert!(got.pen_row.iter().all(|&v| v == 0.0), "{name}: pen_row must be 0 without a penalty");
    }
    close("d_mu_e", &name, &got.d_mu_e, &want.d_mu_e, 0.0);
    close("d_v_e", &name, &got.d_v_e, &want.d_v_e, 0.0);
    close("d_mu_s", &name, &got.d_mu_s, &want.d_mu_s, 0.0);
    close("d_v_s", &name, &got.d_v_s, &want.d_v_s, 0.0);
    close("d_raw", &name, &got.d_raw, &want.d_raw, 0.0);
}

/// Every case of the parity suites (B = 37 is not a multiple of the 4 cells per block; d = 5 and 40
/// exercise one and two columns per lane).
fn parity_cases(seed: u64) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut s = seed;
    for (mi, &mix) in MIXES.iter().enumerate() {
        for (pi, &pen) in PENALTIES.iter().enumerate() {
            for ln in [false, true] {
                s += 1;
                let d = if (mi + pi) % 2 == 0 { 5 } else { 40 };
                cases.push(Case::random(s, 37, d, mix, ln, pen, (mi + pi + ln as usize) % 2 == 0, true));
            }
        }
    }
    cases
}

// =====================================================================================================
// The twin's backward against f64 central finite differences.

#[test]
fn twin_backward_matches_finite_differences() {
    let mut seed = 900;
    for &mix in &MIXES {
        for &pen in &PENALTIES {
            for ln in [false, true] {
                seed += 1;
                let c = Case::random(seed, 5, 3, mix, ln, pen, seed % 2 == 0, false);
                let m = c.mats::<f64>();
                let out = latent_step_fwd(&c.input(&m), c.kl_weight).unwrap();
                let dz = mat::<f64>(c.b, c.l(), &c.dz);
                let dqm = c.dqm.as_ref().map(|q| mat::<f64>(c.b, c.l(), q));
                let g = latent_step_bwd(&c.input(&m), &out, &dz, dqm.as_ref(), c.kl_scale, c.kl_weight);
                let name = format!("mix {mix:?} ln {ln} penalty {}", pen.as_str());
                let fields: [(&str, fn(&mut Case) -> &mut Vec<f64>, &[f64]); 5] = [
                    ("mu_e", |c| &mut c.mu_e, &g.post.mu_e.data),
                    ("v_e", |c| &mut c.v_e, &g.post.v_e.data),
                    ("mu_s", |c| &mut c.mu_s, &g.post.mu_s.data),
                    ("v_s", |c| &mut c.v_s, &g.post.v_s.data),
                    ("raw", |c| &mut c.raw, &g.d_raw),
                ];
                for (fname, field, grad) in fields {
                    let n = field(&mut c.clone()).len();
                    if fname == "raw" && matches!(mix, Mix::Softmax { .. }) {
                        assert_eq!(grad.len(), 2 * c.b, "{name}: softmax d_raw is per cell");
                    } else {
                        assert_eq!(grad.len(), n, "{name}: d_{fname} length");
                    }
                    for k in 0..n {
                        let h = 1e-6 * field(&mut c.clone())[k].abs().max(1.0);
                        let at = |delta: f64| {
                            let mut cc = c.clone();
                            field(&mut cc)[k] += delta;
                            cc.objective(&cc.mats::<f64>())
                        };
                        let fd = (at(h) - at(-h)) / (2.0 * h);
                        let an = grad[k];
                        assert!((fd - an).abs() <= 1e-6 * (1.0 + fd.abs()), "{name}: d/d {fname}[{k}]: analytic {an:e}, finite differences {fd:e}");
                    }
                }
            }
        }
    }
}

#[test]
fn twin_refuses_mmd_rbf_and_the_kernel_codes_do_too() {
    let c = Case::random(1, 4, 2, Mix::Softmax { independent: false }, false, ModalityPenalty::MmdRbf, false, false);
    let m = c.mats::<f64>();
    assert!(latent_step_fwd(&c.input(&m), 1.0).is_err());
    let e = penalty_code(ModalityPenalty::MmdRbf).unwrap_err().to_string();
    assert!(e.contains("MMDRbf") && e.contains("--device cpu"), "{e}");
    assert_eq!(penalty_scale(ModalityPenalty::JeffreysExact, 0.25), 0.25);
    assert_eq!(penalty_scale(ModalityPenalty::Jeffreys, 0.25), 1.0);
}

// =====================================================================================================
// Host emulation of the kernel source.

const LATENT_CU: &str = include_str!("../kernels/latent.cu");

/// The harness main (the I/O preamble is common/emu.rs's).
const HARNESS: &str = r#"
int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string d = argv[1];
    FILE* f = std::fopen((d + "/params.txt").c_str(), "r");
    if (!f) return 3;
    int B, D, mix, pmask, sindep, ln, pen;
    float kl_scale, pen_scale;
    if (std::fscanf(f, "%d %d %d %d %d %d %d %f %f", &B, &D, &mix, &pmask, &sindep, &ln, &pen, &kl_scale, &pen_scale) != 9) return 4;
    std::fclose(f);
    const int L = mix == MIX_CONCAT ? 2 * D : D;
    auto me = rd<float>(d, "mu_e"); auto ve = rd<float>(d, "v_e"); auto ms = rd<float>(d, "mu_s"); auto vs = rd<float>(d, "v_s");
    auto raw = rd<float>(d, "raw"); auto mke = rd<uint8_t>(d, "mask_e"); auto mks = rd<uint8_t>(d, "mask_s");
    auto eps = rd<float>(d, "eps"); auto dz = rd<float>(d, "dz"); auto dqm = rd<float>(d, "dqm");
    const size_t bl = (size_t)B * L, bd = (size_t)B * D;
    std::vector<float> qm(bl, NAN), qv(bl, NAN), z(bl, NAN), kl(B, NAN), pr(B, NAN);
    std::vector<float> gme(bd, NAN), gve(bd, NAN), gms(bd, NAN), gvs(bd, NAN), rc(2 * B, NAN), rows(bd, NAN), rp(D, NAN);
    const unsigned grid = (B + LAT_ROWS_PER_BLOCK - 1) / LAT_ROWS_PER_BLOCK;
    emu::launch(grid, LAT_THREADS, 0, [&] {
        latent_fwd(me.data(), ve.data(), ms.data(), vs.data(), B, D, mix, ptr(raw), mke.data(), mks.data(), pmask, sindep, eps.data(), ln, pen, qm.data(), qv.data(), z.data(), kl.data(), pr.data());
    });
    emu::launch(grid, LAT_THREADS, 0, [&] {
        latent_bwd(me.data(), ve.data(), ms.data(), vs.data(), B, D, mix, ptr(raw), mke.data(), mks.data(), pmask, sindep, eps.data(), ln, pen, qm.data(), qv.data(), z.data(), dz.data(), ptr(dqm), kl_scale, pen_scale, gme.data(), gve.data(), gms.data(), gvs.data(), rc.data(), rows.data());
    });
    if (mix == MIX_PERDIM) emu::launch(1, LAT_THREADS, 0, [&] { latent_perdim_raw_bwd(rows.data(), B, D, raw.data(), rp.data()); });
    wr(d, "qz_m", qm); wr(d, "qz_v", qv); wr(d, "z", z); wr(d, "kl_row", kl); wr(d, "pen_row", pr);
    wr(d, "d_mu_e", gme); wr(d, "d_v_e", gve); wr(d, "d_mu_s", gms); wr(d, "d_v_s", gvs);
    wr(d, "d_raw", mix == MIX_SOFTMAX ? rc : (mix == MIX_PERDIM ? rp : std::vector<float>()));
    return 0;
}
"#;

#[test]
fn host_emu_latent_matches_twin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exe = match emu::build(d, "latent.cu", LATENT_CU, HARNESS) {
        Ok(e) => e,
        Err(reason) => {
            skipped(&format!("host build (emulation) of kernels/latent.cu: {reason}"));
            return;
        }
    };
    for c in parity_cases(100) {
        let pscale = penalty_scale(c.penalty, c.kl_weight as f32);
        let perdim_mask = matches!(c.mix, Mix::PerDim { mask_spl: true }) as i32;
        let soft_indep = matches!(c.mix, Mix::Softmax { independent: true }) as i32;
        std::fs::write(
            d.join("params.txt"),
            format!("{} {} {} {perdim_mask} {soft_indep} {} {} {:e} {:e}", c.b, c.d, mix_code(c.mix), c.ln as i32, penalty_code(c.penalty).unwrap(), c.kl_scale as f32, pscale),
        )
        .unwrap();
        for (name, v) in [("mu_e", &c.mu_e), ("v_e", &c.v_e), ("mu_s", &c.mu_s), ("v_s", &c.v_s), ("raw", &c.raw), ("eps", &c.eps), ("dz", &c.dz)] {
            emu::write_f32(d, name, &f32s(v));
        }
        match &c.dqm {
            Some(q) => emu::write_f32(d, "dqm", &f32s(q)),
            None => {
                let _ = std::fs::remove_file(d.join("dqm.bin"));
            }
        }
        emu::write_u8(d, "mask_e", &c.mask_e.iter().map(|&x| x as u8).collect::<Vec<u8>>());
        emu::write_u8(d, "mask_s", &c.mask_s.iter().map(|&x| x as u8).collect::<Vec<u8>>());
        emu::run(&exe, d);
        let got = LatentHost {
            qz_m: emu::read_f32(d, "qz_m"),
            qz_v: emu::read_f32(d, "qz_v"),
            z: emu::read_f32(d, "z"),
            kl_row: emu::read_f32(d, "kl_row"),
            pen_row: emu::read_f32(d, "pen_row"),
            d_mu_e: emu::read_f32(d, "d_mu_e"),
            d_v_e: emu::read_f32(d, "d_v_e"),
            d_mu_s: emu::read_f32(d, "d_mu_s"),
            d_v_s: emu::read_f32(d, "d_v_s"),
            d_raw: emu::read_f32(d, "d_raw"),
        };
        compare(&c, &got);
    }
}

// =====================================================================================================
// GPU.

#[test]
fn device_latent_matches_twin() {
    for dev in emu::devices("latent kernel vs model::latent_step") {
        device_latent_matches_twin_on(&dev);
    }
}

fn device_latent_matches_twin_on(dev: &CudaDevice) {
    let kern = CudaLatent::new(&dev).unwrap();
    for c in parity_cases(200) {
        let m = c.mats::<f32>();
        let dz = f32s(&c.dz);
        let dqm = c.dqm.as_ref().map(|q| f32s(q));
        let got = kern.run_host(&c.input(&m), &dz, dqm.as_deref(), c.kl_scale as f32, c.kl_weight as f32).unwrap();
        compare(&c, &got);
    }
}
