//! The FCLayers epilogue kernels (kernels/dense_epilogue.cu) against their CPU twin
//! `model::dense_epilogue`, and the twin's backward against f64 central finite differences.
//!
//! * `twin_backward_matches_finite_differences`: every BatchNorm mode × LayerNorm × activation ×
//!   dropout, f64.
//! * `twin_is_what_fc_layers_computes`: the twin against `ops::fc_forward` / `fc_backward` on a real
//!   one-block FCLayers of the model (same output, same gradients, bit for bit in f64).
//! * `host_emu_dense_epilogue_matches_twin`: the kernel source compiled by the host C++20 compiler
//!   against kernels/host_emu.h, on fresh random inputs with every output poisoned (NaN) first.
//! * `gpu_dense_epilogue_matches_twin`: the same on a GPU; prints SKIPPED without one (no GPU has run it).
//!
//! Tolerance (f32 kernel vs f32 twin): |kernel − twin| ≤ 2e-4·|twin| + 2e-5·max|twin tensor| (for d(bias),
//! a sum over B rows that cancels under batch-statistics BatchNorm, max|twin tensor| counts as at least
//! B·max|dy0|).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use splicevi::cuda::dense_epilogue::{act_code, bn_code, dropout_args, EpilogueHost, EpilogueHostIn, EPI_THREADS};
use splicevi::cuda::{CudaDenseEpilogue, CudaDevice};
use splicevi::model::arch::Act;
use splicevi::model::dense_epilogue::{epilogue_bwd, epilogue_fwd, BnMode, BnParams, Epilogue};
use splicevi::model::ops::bn_running_update;
use splicevi::model::real::Real;
use splicevi::model::rng::DropStream;
use splicevi::model::tensor::Mat;

#[path = "common/emu.rs"]
mod emu;
use emu::{close, f32s, skipped};

#[derive(Clone)]
struct Case {
    b: usize,
    h: usize,
    e: Epilogue,
    y0: Vec<f64>,
    bias: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    rm: Vec<f64>,
    rv: Vec<f64>,
    dout: Vec<f64>,
}

fn all_epilogues(seed: u64) -> Vec<Epilogue> {
    let mut v = Vec::new();
    for bn in [BnMode::None, BnMode::Batch, BnMode::Running] {
        for ln in [false, true] {
            for act in [Act::None, Act::Relu, Act::LeakyRelu] {
                for drop in [false, true] {
                    let dropout = drop.then(|| (DropStream::new(seed, 77, 0.2), 0.2));
                    v.push(Epilogue { bn, ln, act, dropout });
                }
            }
        }
    }
    v
}

impl Case {
    fn random(seed: u64, b: usize, h: usize, e: Epilogue) -> Case {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut n = |s: f64, o: f64| -> Vec<f64> { (0..b * h).map(|_| o + s * r.sample::<f64, _>(StandardNormal)).collect() };
        let y0 = n(1.5, 0.3);
        let dout = n(1.0, 0.0);
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0xbeef);
        let mut v = |s: f64, o: f64| -> Vec<f64> { (0..h).map(|_| o + s * r.sample::<f64, _>(StandardNormal)).collect() };
        let (bias, gamma, beta, rm) = (v(0.5, 0.0), v(0.3, 1.0), v(0.3, 0.0), v(0.5, 0.2));
        let rv: Vec<f64> = v(0.5, 0.0).iter().map(|x| x.exp()).collect();
        Case { b, h, e, y0, bias, gamma, beta, rm, rv, dout }
    }

    fn run<T: Real>(&self) -> (Mat<T>, splicevi::model::dense_epilogue::EpilogueGrads<T>) {
        let c = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        let (gamma, beta, rm, rv) = (c(&self.gamma), c(&self.beta), c(&self.rm), c(&self.rv));
        let bn = BnParams { gamma: &gamma, beta: &beta, running_mean: &rm, running_var: &rv };
        let y0 = Mat::from_vec(self.b, self.h, c(&self.y0));
        let (out, tape) = epilogue_fwd(&self.e, &y0, &c(&self.bias), &bn);
        let g = epilogue_bwd(&self.e, &tape, &bn, &Mat::from_vec(self.b, self.h, c(&self.dout)));
        (out, g)
    }

    fn objective(&self) -> f64 {
        let (out, _) = self.run::<f64>();
        out.data.iter().zip(&self.dout).map(|(a, b)| a * b).sum()
    }
}

fn name(e: &Epilogue) -> String {
    format!("bn {:?} ln {} act {:?} dropout {}", e.bn, e.ln, e.act, e.dropout.is_some())
}

#[test]
fn twin_backward_matches_finite_differences() {
    for (k, e) in all_epilogues(5).into_iter().enumerate() {
        let c = Case::random(300 + k as u64, 4, 6, e);
        let (_, g) = c.run::<f64>();
        let fields: [(&str, fn(&mut Case) -> &mut Vec<f64>, &[f64]); 4] =
            [("y0", |c| &mut c.y0, &g.dy0.data), ("bias", |c| &mut c.bias, &g.d_bias), ("gamma", |c| &mut c.gamma, &g.d_gamma), ("beta", |c| &mut c.beta, &g.d_beta)];
        for (fname, field, grad) in fields {
            if e.bn == BnMode::None && (fname == "gamma" || fname == "beta") {
                assert!(grad.is_empty(), "{}: no BatchNorm gradients without BatchNorm", name(&e));
                continue;
            }
            let n = field(&mut c.clone()).len();
            assert_eq!(grad.len(), n, "{}: d_{fname} length", name(&e));
            for i in 0..n {
                let h = 1e-6;
                let at = |d: f64| {
                    let mut cc = c.clone();
                    field(&mut cc)[i] += d;
                    cc.objective()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!((fd - grad[i]).abs() <= 1e-6 * (1.0 + fd.abs()), "{}: d/d {fname}[{i}]: analytic {:e}, finite differences {fd:e}", name(&e), grad[i]);
            }
        }
    }
}

/// The twin against the model's own FCLayers (one block, no covariates): same output and the same
/// bias / BatchNorm gradients, in f64, for every option the block has.
#[test]
fn twin_is_what_fc_layers_computes() {
    use splicevi::model::arch::build_fclayers;
    use splicevi::model::ops::{fc_backward, fc_forward, BufUpdates, Cov, MainIn, Mode};
    use splicevi::model::params::{Grads, LayoutBuilder, Params};
    use splicevi::model::rng::streams;
    let (b, n_in, h) = (6, 7, 9);
    let mut seed = 40;
    for bn in [false, true] {
        for ln in [false, true] {
            for training in [false, true] {
                for act in [Act::Relu, Act::LeakyRelu] {
                    seed += 1;
                    let (mut fc, lb) = build_fclayers(LayoutBuilder::default(), "t", n_in, h, h, 1, bn, act, 0.2, 3);
                    fc.blocks[0].ln = ln;
                    let mut p = Params::<f64>::init(std::sync::Arc::new(lb.finish()), seed);
                    let mut r = ChaCha8Rng::seed_from_u64(seed);
                    let blk = fc.blocks[0].clone();
                    if let Some(bp) = &blk.bn {
                        for (i, v) in p.get_mut(bp.running_mean).iter_mut().enumerate() {
                            *v = 0.1 * i as f64 - 0.3;
                        }
                        for (i, v) in p.get_mut(bp.running_var).iter_mut().enumerate() {
                            *v = 0.5 + 0.2 * i as f64;
                        }
                        for v in p.get_mut(bp.w).iter_mut() {
                            *v = 1.0 + 0.3 * r.sample::<f64, _>(StandardNormal);
                        }
                    }
                    let x = Mat::from_vec(b, n_in, (0..b * n_in).map(|_| r.sample::<f64, _>(StandardNormal)).collect());
                    let dout = Mat::from_vec(b, h, (0..b * h).map(|_| r.sample::<f64, _>(StandardNormal)).collect());
                    let cov = Cov { cont: &[], n_cont: 0, cats: vec![] };
                    let mode = Mode { training, seed: seed * 7 };
                    let mut upd = BufUpdates::new();
                    let (y, cache) = fc_forward(&fc, &p, MainIn::Dense(&x), &cov, mode, &mut upd).unwrap();
                    let mut g = Grads::zeros(p.layout.clone());
                    fc_backward(&fc, &p, &cache, dout.clone(), &mut g, true);
                    // twin: the GEMM by hand, then the epilogue
                    let w = p.get(blk.lin.w);
                    let y0 = Mat::from_vec(b, h, (0..b * h).map(|k| (0..n_in).map(|t| x.at(k / h, t) * w[(k % h) * n_in + t]).sum()).collect());
                    let e = Epilogue {
                        bn: match (bn, training) {
                            (false, _) => BnMode::None,
                            (true, true) => BnMode::Batch,
                            (true, false) => BnMode::Running,
                        },
                        ln,
                        act,
                        dropout: training.then(|| (DropStream::new(mode.seed, streams::DROPOUT_BASE + fc.id * 64, 0.2), 0.2)),
                    };
                    let ones = vec![1.0; h];
                    let zeros = vec![0.0; h];
                    let bnp = match &blk.bn {
                        Some(bp) => BnParams { gamma: p.get(bp.w), beta: p.get(bp.b), running_mean: p.get(bp.running_mean), running_var: p.get(bp.running_var) },
                        None => BnParams { gamma: &ones, beta: &zeros, running_mean: &zeros, running_var: &ones },
                    };
                    let (out, tape) = epilogue_fwd(&e, &y0, p.get(blk.lin.b.unwrap()), &bnp);
                    let tg = epilogue_bwd(&e, &tape, &bnp, &dout);
                    let n = name(&e);
                    let near = |what: &str, a: &[f64], b: &[f64]| {
                        assert_eq!(a.len(), b.len(), "{n}: {what} length");
                        for (k, (x, y)) in a.iter().zip(b).enumerate() {
                            assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{n}: {what}[{k}]: twin {x:e}, fc_layers {y:e}");
                        }
                    };
                    near("output", &out.data, &y.data);
                    near("d bias", &tg.d_bias, g.get(blk.lin.b.unwrap()).unwrap());
                    if let Some(bp) = &blk.bn {
                        near("d gamma", &tg.d_gamma, g.get(bp.w).unwrap());
                        near("d beta", &tg.d_beta, g.get(bp.b).unwrap());
                    }
                    // d W = dy0ᵀ·x: the GEMM backward the twin's dy0 feeds
                    let dw: Vec<f64> = (0..h * n_in).map(|k| (0..b).map(|r| tg.dy0.at(r, k / n_in) * x.at(r, k % n_in)).sum()).collect();
                    near("d W", &dw, g.get(blk.lin.w).unwrap());
                }
            }
        }
    }
}

fn compare(c: &Case, got: &EpilogueHost) {
    let n = name(&c.e);
    let (out, g) = c.run::<f32>();
    close("out", &n, &got.out, &out.data, 0.0);
    close("dy0", &n, &got.dy0, &g.dy0.data, 0.0);
    // Σ over B rows of dy0: rounding of the order of B·max|dy0|
    let sum_floor = c.b as f64 * g.dy0.data.iter().fold(0f64, |a, &v| a.max((v as f64).abs()));
    close("d_bias", &n, &got.d_bias, &g.d_bias, sum_floor);
    close("d_gamma", &n, &got.d_gamma, &g.d_gamma, 0.0);
    close("d_beta", &n, &got.d_beta, &g.d_beta, 0.0);
    if c.e.bn == BnMode::Batch {
        // the running statistics' update, as ops::batchnorm_fwd pushes it
        let y: Vec<f32> = (0..c.b * c.h).map(|k| c.y0[k] as f32 + c.bias[k % c.h] as f32).collect();
        let (mean, _, var) = splicevi::model::ops::bn_batch_stats(&Mat::from_vec(c.b, c.h, y));
        let (rm, rv) = bn_running_update(&f32s(&c.rm), &f32s(&c.rv), &mean, &var, c.b);
        close("running_mean", &n, &got.running_mean, &f32s(&rm), 0.0);
        close("running_var", &n, &got.running_var, &f32s(&rv), 0.0);
    } else {
        assert_eq!(got.running_mean, f32s(&c.rm), "{n}: running statistics change only in training");
    }
}

fn parity_cases(seed: u64) -> Vec<Case> {
    all_epilogues(seed).into_iter().enumerate().map(|(k, e)| Case::random(seed + k as u64, 37, if k % 2 == 0 { 5 } else { 70 }, e)).collect()
}

const EPI_CU: &str = include_str!("../kernels/dense_epilogue.cu");

/// The harness main (the I/O preamble is common/emu.rs's).
const HARNESS: &str = r#"
int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string d = argv[1];
    FILE* f = std::fopen((d + "/params.txt").c_str(), "r");
    if (!f) return 3;
    int B, H, bn, ln, act, drop;
    unsigned long long key;
    unsigned thr;
    float scale;
    if (std::fscanf(f, "%d %d %d %d %d %llu %u %f %d", &B, &H, &bn, &ln, &act, &key, &thr, &scale, &drop) != 9) return 4;
    std::fclose(f);
    auto y0 = rd<float>(d, "y0"); auto bias = rd<float>(d, "bias"); auto gamma = rd<float>(d, "gamma");
    auto beta = rd<float>(d, "beta"); auto rm = rd<float>(d, "rm"); auto rv = rd<float>(d, "rv"); auto dout = rd<float>(d, "dout");
    const size_t n = (size_t)B * H;
    std::vector<float> mean(H, NAN), inv(H, NAN), rmo = rm, rvo = rv, out(n, NAN), pre(n, NAN), lni(B, NAN), g(n, NAN), dy0(n, NAN), db(H, NAN), dg(H, NAN), dbt(H, NAN);
    const unsigned cols = (H + 31) / 32, rows = (B + EPI_ROWS_PER_BLOCK - 1) / EPI_ROWS_PER_BLOCK;
    if (bn != BN_NONE) emu::launch(cols, EPI_COL_THREADS, 0, [&] {
        dense_bn_stats(y0.data(), bias.data(), B, H, bn, rm.data(), rv.data(), mean.data(), inv.data(), bn == BN_BATCH ? rmo.data() : nullptr, bn == BN_BATCH ? rvo.data() : nullptr);
    });
    emu::launch(rows, EPI_THREADS, 0, [&] {
        dense_epilogue_fwd(y0.data(), bias.data(), B, H, bn, mean.data(), inv.data(), gamma.data(), beta.data(), ln, act, key, thr, scale, drop, out.data(), pre.data(), lni.data());
    });
    emu::launch(rows, EPI_THREADS, 0, [&] {
        dense_epilogue_bwd_rows(dout.data(), pre.data(), lni.data(), B, H, ln, act, key, thr, scale, drop, g.data());
    });
    emu::launch(cols, EPI_COL_THREADS, 0, [&] {
        dense_epilogue_bwd_cols(g.data(), y0.data(), bias.data(), B, H, bn, mean.data(), inv.data(), gamma.data(), dy0.data(), db.data(), dg.data(), dbt.data());
    });
    wr(d, "out", out); wr(d, "pre", pre); wr(d, "rm", rmo); wr(d, "rv", rvo); wr(d, "dy0", dy0); wr(d, "db", db);
    wr(d, "dg", bn != BN_NONE ? dg : std::vector<float>()); wr(d, "dbeta", bn != BN_NONE ? dbt : std::vector<float>());
    return 0;
}
"#;

#[test]
fn host_emu_dense_epilogue_matches_twin() {
    assert_eq!(EPI_THREADS, 128);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exe = match emu::build(d, "dense_epilogue.cu", EPI_CU, HARNESS) {
        Ok(e) => e,
        Err(reason) => {
            skipped(&format!("host build (emulation) of kernels/dense_epilogue.cu: {reason}"));
            return;
        }
    };
    for c in parity_cases(400) {
        let (key, thr, scale, drop) = dropout_args(&c.e);
        std::fs::write(d.join("params.txt"), format!("{} {} {} {} {} {key} {thr} {scale:e} {drop}", c.b, c.h, bn_code(c.e.bn), c.e.ln as i32, act_code(c.e.act))).unwrap();
        for (n, v) in [("y0", &c.y0), ("bias", &c.bias), ("gamma", &c.gamma), ("beta", &c.beta), ("rm", &c.rm), ("rv", &c.rv), ("dout", &c.dout)] {
            emu::write_f32(d, n, &f32s(v));
        }
        emu::run(&exe, d);
        let got = EpilogueHost {
            out: emu::read_f32(d, "out"),
            pre_act: emu::read_f32(d, "pre"),
            running_mean: emu::read_f32(d, "rm"),
            running_var: emu::read_f32(d, "rv"),
            dy0: emu::read_f32(d, "dy0"),
            d_bias: emu::read_f32(d, "db"),
            d_gamma: emu::read_f32(d, "dg"),
            d_beta: emu::read_f32(d, "dbeta"),
        };
        compare(&c, &got);
    }
}

#[test]
fn device_dense_epilogue_matches_twin() {
    for dev in emu::devices("dense epilogue kernels vs model::dense_epilogue") {
        device_dense_epilogue_matches_twin_on(&dev);
    }
}

fn device_dense_epilogue_matches_twin_on(dev: &CudaDevice) {
    let kern = CudaDenseEpilogue::new(&dev).unwrap();
    for c in parity_cases(500) {
        let v = |x: &[f64]| f32s(x);
        let (y0, bias, gamma, beta, rm, rv, dout) = (v(&c.y0), v(&c.bias), v(&c.gamma), v(&c.beta), v(&c.rm), v(&c.rv), v(&c.dout));
        let inp = EpilogueHostIn { b: c.b, h: c.h, y0: &y0, bias: &bias, gamma: &gamma, beta: &beta, running_mean: &rm, running_var: &rv, dout: &dout };
        let got = kern.run_host(&c.e, &inp).unwrap();
        compare(&c, &got);
    }
}
