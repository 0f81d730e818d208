//! Fixed-count timing of the training step's parts (the same setup as `benches/train_step.rs`), for
//! `perf stat` comparisons on a busy machine: `cargo run --release --example step_parts -- default 20`.
//! Prints milliseconds per call of each part, wall and CPU (Linux); `host_batch` is the host's share of a
//! CUDA step (`HostBatch::build`; `host_batch_resident` with the dataset resident on the device). Criterion (`cargo bench --bench train_step`) is the
//! benchmark of record; this is its fixed-iteration twin for counting cycles and instructions.

use std::time::Instant;

use splicevi::data::simulate::{simulate, SimConfig, SimSize};
use splicevi::model::arch::SplEncP;
use splicevi::model::ops::Mode;
use splicevi::model::partial::{partial_backward, partial_forward};
use splicevi::model::{Batch, Grads, ModelConfig, SpliceVae, StepOptions};
use splicevi::train::trainer::dims_of;

/// CPU time of the whole process (all threads), from /proc/self/stat (clock ticks of 10 ms): on a shared
/// machine it moves far less than the wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn main() {
    splicevi::util::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map(String::as_str).unwrap_or("default");
    let iters: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    let only = args.get(3).cloned();
    // STEP_PARTS_SIZE=medium times the parts at the medium size (default small).
    let size = match std::env::var("STEP_PARTS_SIZE").as_deref() {
        Ok("medium") => SimSize::Medium,
        _ => SimSize::Small,
    };
    let (ds, _) = simulate(&SimConfig::preset(size, 0)).expect("simulating");
    let cells: Vec<usize> = (0..256).collect();
    let batch = Batch::from_dataset(&ds, &cells, true).expect("minibatch");
    let cfg = match preset {
        "paper" => ModelConfig::paper(),
        "robust" => ModelConfig::robust(),
        _ => ModelConfig::default(),
    };
    let model = SpliceVae::new(cfg, dims_of(&ds), ds.splicing.junc2atse.clone()).expect("model");
    let p = model.init_params::<f32>(0);
    let opts = StepOptions { training: true, kl_weight: 0.5, ..StepOptions::default() };
    let mode = Mode { training: true, seed: 1 };
    let want = |name: &str| only.as_deref().map_or(true, |o| o == name);
    let time = |name: &str, f: &mut dyn FnMut()| {
        if !want(name) {
            return;
        }
        f();
        let (t, c) = (Instant::now(), cpu_seconds());
        for _ in 0..iters {
            f();
        }
        let per = |s: f64| s * 1e3 / iters as f64;
        println!("{name:>17}: {:8.2} ms wall {:8.2} ms cpu", per(t.elapsed().as_secs_f64()), per(cpu_seconds() - c));
    };
    if let SplEncP::Partial(pe) = &model.arch.z_enc_spl {
        time("partial_forward", &mut || {
            std::hint::black_box(partial_forward(pe, &p, &batch.spl, mode));
        });
        let cache = partial_forward(pe, &p, &batch.spl, mode);
        time("partial_backward", &mut || {
            let mut grads = Grads::zeros(p.layout.clone());
            partial_backward(pe, &p, &batch.spl, &cache, &cache.pool, mode, &mut grads);
            std::hint::black_box(grads);
        });
    }
    time("forward", &mut || {
        std::hint::black_box(model.forward(&p, &batch, &opts).expect("forward"));
    });
    let fwd = model.forward(&p, &batch, &opts).expect("forward");
    time("backward", &mut || {
        std::hint::black_box(model.backward(&p, &batch, &fwd, None).expect("backward"));
    });
    // The host's share of a CUDA step: the minibatch's arrays and index structures packed for one copy.
    time("host_batch", &mut || {
        std::hint::black_box(splicevi::cuda::step::HostBatch::build(&model, &batch, &opts).expect("host batch"));
    });
    let hb = splicevi::cuda::step::HostBatch::build(&model, &batch, &opts).expect("host batch");
    println!("{:>17}: {:8.1} MB copied per step, {} observed entries", "host_batch", hb.bytes() as f64 / 1e6, batch.spl.nnz());
    // With the dataset resident on the device: once per dataset the per-cell inputs, then per step the
    // cells and their covariates only.
    if want("host_batch_resident") {
        let t = Instant::now();
        let host = splicevi::cuda::resident::ResidentHost::build(&model, &ds).expect("resident preparation");
        println!("{:>17}: {:8.1} ms once per dataset ({} cells)", "resident_prep", t.elapsed().as_secs_f64() * 1e3, ds.n_cells());
        time("host_batch_resident", &mut || {
            std::hint::black_box(splicevi::cuda::step::HostBatch::build_resident(&model, &ds, &host.index, &cells, true, &opts).expect("resident batch"));
        });
        let hb = splicevi::cuda::step::HostBatch::build_resident(&model, &ds, &host.index, &cells, true, &opts).expect("resident batch");
        println!("{:>17}: {:8.3} MB copied per step", "host_batch_resident", hb.bytes() as f64 / 1e6);
    }
}
