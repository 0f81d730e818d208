use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use splicevi::data::Csr;
use splicevi::model::*;
use std::time::Instant;

fn synth(g: usize, j: usize, a_sz: usize, b: usize, obs: f64, seed: u64) -> (Batch, Vec<u32>, usize) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let n_atse = j / a_sz;
    let junc2atse: Vec<u32> = (0..j).map(|x| (x / a_sz).min(n_atse - 1) as u32).collect();
    let mut expr = Csr { n_rows: b, n_cols: g, indptr: vec![0], ..Default::default() };
    let mut lib = vec![];
    for _ in 0..b { let mut s=0.0; for gg in 0..g { if r.gen_bool(0.3) { let v=r.gen_range(1..20) as f32; expr.indices.push(gg as u32); expr.values.push(v); s+=v; } } expr.indptr.push(expr.indices.len()); lib.push(s.max(1.0)); }
    let mut spl = SplBatch { n_junctions: j, indptr: vec![0], ..Default::default() };
    for _ in 0..b { for a in 0..n_atse { if r.gen_bool(obs) { let n = r.gen_range(1..40) as f32; let js: Vec<usize> = (a*a_sz..if a + 1 == n_atse { j } else { (a+1)*a_sz }).collect(); let mut rem = n; for (q,&jj) in js.iter().enumerate() { let k = if q+1==js.len() { rem } else { (rem * r.gen_range(0.0..1.0f32)).floor() }; rem -= k; spl.junction.push(jj as u32); spl.k.push(k); spl.n.push(n); spl.psi.push(k/n);} } } spl.indptr.push(spl.junction.len()); }
    let bt = Batch { expr, library: lib, batch: (0..b).map(|i| (i%2) as u32).collect(), labels: vec![0;b], cats: vec![], cont: vec![], n_cont:0, cell_idx: Some((0..b as u32).collect()), spl };
    (bt, junc2atse, n_atse)
}

#[test]
#[ignore]
fn perf() {
    for (name, cfg, g, j) in [("default 2k/5k", ModelConfig::default(), 2000, 5000), ("paper 2k/5k", ModelConfig::paper(), 2000, 5000), ("default 5k/20k", ModelConfig::default(), 5000, 20000), ("paper 5k/20k", ModelConfig::paper(), 5000, 20000)] {
        let b = if g == 2000 { 128 } else { 256 };
        let (batch, j2a, a) = synth(g, j, 3, b, 0.3, 1);
        let dims = Dims { n_genes: g, n_junctions: j, n_atse: a, n_batch: 2, n_labels: 1, n_obs: b, n_cats_per_cov: vec![], n_cont: 0 };
        let model = SpliceVae::new(cfg, dims, j2a).unwrap();
        let mut p = model.init_params::<f32>(0);
        let opts = StepOptions::default();
        let _ = model.step(&mut p, &batch, &opts, None).unwrap();
        let t = Instant::now();
        let n = 3;
        let mut tf = 0.0;
        for _ in 0..n {
            let t0 = Instant::now();
            let f = model.forward(&p, &batch, &opts).unwrap();
            tf += t0.elapsed().as_secs_f64();
            let _g = model.backward(&p, &batch, &f, None).unwrap();
        }
        println!("{name}: B={b} pairs={} step {:.3}s (fwd {:.3}s)", batch.spl.nnz(), t.elapsed().as_secs_f64()/n as f64, tf / n as f64);
    }
}

#[test]
#[ignore]
fn perf_parts() {
    use splicevi::model::arch::SplEncP;
    use splicevi::model::ops::Mode;
    let (g, j) = (5000, 20000);
    let b = 256;
    let (batch, j2a, a) = synth(g, j, 3, b, 0.3, 1);
    let dims = Dims { n_genes: g, n_junctions: j, n_atse: a, n_batch: 2, n_labels: 1, n_obs: b, n_cats_per_cov: vec![], n_cont: 0 };
    for cfg in [ModelConfig::default(), ModelConfig::paper()] {
        let model = SpliceVae::new(cfg, dims.clone(), j2a.clone()).unwrap();
        let p = model.init_params::<f32>(0);
        let SplEncP::Partial(pe) = &model.arch.z_enc_spl else { panic!() };
        let mode = Mode { training: true, seed: 1 };
        let t = Instant::now();
        let c = splicevi::model::partial::partial_forward(pe, &p, &batch.spl, mode);
        let tf = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut gr = Grads::zeros(p.layout.clone());
        splicevi::model::partial::partial_backward(pe, &p, &batch.spl, &c, &c.pool, mode, &mut gr);
        let tb = t.elapsed().as_secs_f64();
        let opts = StepOptions::default();
        let t = Instant::now();
        let f = model.forward(&p, &batch, &opts).unwrap();
        let tfw = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = model.backward(&p, &batch, &f, None).unwrap();
        let tbw = t.elapsed().as_secs_f64();
        println!("partial fwd {tf:.3} bwd {tb:.3} | model fwd {tfw:.3} bwd {tbw:.3}");
    }
}
