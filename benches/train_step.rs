//! One training step of the CPU backend on a 256-cell minibatch of the `small` simulated dataset
//! (2,000 cells × 2,000 genes × 5,000 junctions), for the `default` and `paper` options, split into
//! its parts: the partial encoder's forward and backward (the hot spot: a small MLP over the
//! observed cell × junction pairs, its Hh-wide layers run once per group of pairs with the same
//! junction and PSI), the whole forward, and forward + backward.
//!
//! `cargo bench --bench train_step`. Whole-epoch throughput on every size is `splicevi bench`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use splicevi::data::simulate::{simulate, SimConfig, SimSize};
use splicevi::model::arch::SplEncP;
use splicevi::model::ops::Mode;
use splicevi::model::partial::{partial_backward, partial_forward};
use splicevi::model::{Batch, Grads, ModelConfig, SpliceVae, StepOptions};
use splicevi::train::trainer::dims_of;

fn bench(c: &mut Criterion) {
    let (ds, _) = simulate(&SimConfig::preset(SimSize::Small, 0)).expect("simulating small");
    let cells: Vec<usize> = (0..256).collect();
    let batch = Batch::from_dataset(&ds, &cells, true).expect("minibatch");
    eprintln!("train_step: small, 256 cells, {} observed cell × junction pairs", batch.spl.nnz());
    for (name, cfg) in [("default", ModelConfig::default()), ("paper", ModelConfig::paper())] {
        let model = SpliceVae::new(cfg, dims_of(&ds), ds.splicing.junc2atse.clone()).expect("model");
        let p = model.init_params::<f32>(0);
        let opts = StepOptions { training: true, kl_weight: 0.5, ..StepOptions::default() };
        let mode = Mode { training: true, seed: 1 };
        let mut g = c.benchmark_group(format!("step_small_{name}"));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(10));
        if let SplEncP::Partial(pe) = &model.arch.z_enc_spl {
            g.bench_function("partial_forward", |b| b.iter(|| partial_forward(pe, &p, &batch.spl, mode)));
            let cache = partial_forward(pe, &p, &batch.spl, mode);
            g.bench_function("partial_backward", |b| {
                b.iter(|| {
                    let mut grads = Grads::zeros(p.layout.clone());
                    partial_backward(pe, &p, &batch.spl, &cache, &cache.pool, mode, &mut grads);
                    grads
                })
            });
        }
        g.bench_function("forward", |b| b.iter(|| model.forward(&p, &batch, &opts).expect("forward")));
        let fwd = model.forward(&p, &batch, &opts).expect("forward");
        g.bench_function("backward", |b| b.iter(|| model.backward(&p, &batch, &fwd, None).expect("backward")));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
