//! Ablation runner of docs/robust.md: simulate (seeded), mask 25% of each cell's ATSEs, train with a
//! preset plus option overrides, print the scorecard (one TSV row per seed and the mean).
//!
//! cargo run --release --example robust_ablation -- NAME PRESET SIZE SEEDS [KEY=VALUE ...]
//!   SIZE: toy | small | medium | CELLSxGENESxJUNCTIONS; SEEDS: e.g. 0,1,2
//!   KEY=VALUE: model or training option as in config.json (JSON values; bare words are strings),
//!   e.g. modality_penalty=None max_epochs=100 lr=0.001. `skip_ds=true` skips the DS part.
//!   `from_run=DIR` scores the model of a run directory instead of training one (DIR holds a checkpoint
//!   of this runner's training on the same size and seed, e.g. a copy of its run directory after epoch E:
//!   the same model as `max_epochs=E`, nothing in training depends on max_epochs); one seed only.
use splicevi::analysis::evaluate::mask_atses;
use splicevi::analysis::scorecard::{columns, score, ScoreOptions};
use splicevi::data::simulate::{simulate, SimConfig, SimSize};
use splicevi::data::DataOptions;
use splicevi::model::ModelConfig;
use splicevi::train::trainer::{load_model, RunConfig, TrainState, Trainer, STATE_FILE};
use splicevi::train::{presets, TrainConfig};
use splicevi::model::{Batch, Noise, Params, SpliceVae, StepOptions};
use std::time::Instant;

/// stderr diagnostic (docs/robust.md, the effect prior): over training-mode forwards of the trained
/// model on minibatches of 256 cells, ρ = Σ_j W_j C W_jᵀ / Σ W² (C the minibatch covariance of the
/// splicing output layer's input: the factor that turns `splicing_decoder_prior` into
/// `splicing_decoder_effect_prior`) and the mean over junctions of the decoded logit's variance W_j C W_jᵀ.
fn spread_diagnostic(ds: &splicevi::data::Dataset, model: &SpliceVae, p: &Params<f32>, seed: u64) -> anyhow::Result<()> {
    let mut m = model.clone();
    m.cfg.splicing_decoder_effect_prior = 1.0;
    let w2: f64 = p.get(m.spl_out_weight()).iter().map(|&v| (v as f64) * (v as f64)).sum();
    let n = ds.n_cells();
    let (mut wcw, mut nb) = (0.0, 0usize);
    for (i, c0) in (0..n).step_by(256).enumerate() {
        let cells: Vec<usize> = (c0..(c0 + 256).min(n)).collect();
        if cells.len() < 2 {
            continue;
        }
        let batch = Batch::from_dataset(ds, &cells, true)?;
        let opts = StepOptions { kl_weight: 1.0, cross_gate: 1.0, training: true, use_z_mean: false, routing: None, seed: seed ^ (i as u64 + 1), noise: Noise::Seeded };
        let fw = m.forward(p, &batch, &opts)?;
        let c = fw.effect_prior_metric().expect("metric");
        wcw += m.spl_decoder_effect_prior_at(p, &c) as f64 * m.dims.n_obs.max(1) as f64;
        nb += 1;
    }
    let wcw = wcw / nb.max(1) as f64;
    eprintln!(
        "spread seed {seed}: rho = sum WCW^T / sum W^2 = {:.3}; mean decoded logit variance per junction = {:.4}; sum W^2 = {:.2}",
        wcw / w2.max(1e-300),
        wcw / m.dims.n_junctions.max(1) as f64,
        w2
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 4, "usage: robust_ablation NAME PRESET SIZE SEEDS [KEY=VALUE ...]");
    let (name, preset, size, seeds) = (&args[0], &args[1], &args[2], &args[3]);
    let (m0, t0) = presets::preset(preset)?;
    let mut mv = serde_json::to_value(&m0)?;
    let mut tv = serde_json::to_value(&t0)?;
    let mut so = ScoreOptions::default();
    let mut from_run: Option<std::path::PathBuf> = None;
    for kv in &args[4..] {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("not KEY=VALUE: {kv}"))?;
        let val: serde_json::Value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        if k == "from_run" {
            from_run = Some(std::path::PathBuf::from(v));
        } else if k == "skip_ds" {
            so.skip_ds = val.as_bool().unwrap_or(false);
        } else if k == "ds_min_obs" {
            so.ds_min_obs = val.as_u64().ok_or_else(|| anyhow::anyhow!("ds_min_obs: a whole number"))?;
        } else if mv.get(k).is_some() {
            mv[k] = val;
        } else if tv.get(k).is_some() {
            tv[k] = val;
        } else {
            anyhow::bail!("unknown option {k}");
        }
    }
    let model: ModelConfig = serde_json::from_value(mv)?;
    let train: TrainConfig = serde_json::from_value(tv)?;
    let mut rows: Vec<Vec<(&'static str, f64)>> = Vec::new();
    for seed in seeds.split(',').map(|s| s.parse::<u64>()) {
        let seed = seed?;
        let cfg = match size.as_str() {
            "toy" => SimConfig::preset(SimSize::Toy, seed),
            "small" => SimConfig::preset(SimSize::Small, seed),
            "medium" => SimConfig::preset(SimSize::Medium, seed),
            s => {
                let v: Vec<usize> = s.split('x').map(|x| x.parse()).collect::<Result<_, _>>()?;
                anyhow::ensure!(v.len() == 3, "size CELLSxGENESxJUNCTIONS");
                SimConfig { n_cells: v[0], n_genes: v[1], n_junctions: v[2], ..SimConfig::preset(SimSize::Small, seed) }
            }
        };
        let (ds, truth) = simulate(&cfg)?;
        let (masked, dropped) = mask_atses(&ds, 0.25, seed)?;
        let tc = TrainConfig { seed, ..train.clone() };
        let data = DataOptions { batch_key: Some("batch".into()), ..Default::default() };
        let run = RunConfig::for_dataset(&preset, model.clone(), tc, data, &masked);
        let (model, params, epochs, secs) = match &from_run {
            Some(d) => {
                let (r, model, params) = load_model(d, &masked)?;
                anyhow::ensure!(r.train.seed == seed && seeds.split(',').count() == 1, "from_run: one seed, the run's ({})", r.train.seed);
                let state: TrainState = serde_json::from_str(&std::fs::read_to_string(d.join(STATE_FILE))?)?;
                eprintln!("scoring {} after {} epochs", d.display(), state.epochs_done);
                (model, params, state.epochs_done, f64::NAN)
            }
            None => {
                let dir = tempfile::tempdir()?;
                let t0 = Instant::now();
                let mut t = Trainer::new(&masked, run, dir.path())?;
                t.verbose = std::env::var("VERBOSE").is_ok();
                t.fit()?;
                (t.model.clone(), t.params.clone(), t.state.epochs_done, t0.elapsed().as_secs_f64())
            }
        };
        let sc = score(&ds, &truth, &masked, &dropped, &model, &params, &ScoreOptions { seed, ..so.clone() })?;
        if let Err(e) = spread_diagnostic(&masked, &model, &params, seed) {
            eprintln!("spread diagnostic failed: {e:#}");
        }
        let mut row = columns(&sc);
        row.push(("epochs", epochs as f64));
        row.push(("train_s", secs));
        if rows.is_empty() {
            println!("name\tseed\t{}", row.iter().map(|c| c.0).collect::<Vec<_>>().join("\t"));
        }
        println!("{name}\t{seed}\t{}", row.iter().map(|c| format!("{:.3}", c.1)).collect::<Vec<_>>().join("\t"));
        rows.push(row);
    }
    let n = rows.len() as f64;
    let mean: Vec<String> = (0..rows[0].len()).map(|c| format!("{:.3}", rows.iter().map(|r| r[c].1).sum::<f64>() / n)).collect();
    println!("{name}\tmean\t{}", mean.join("\t"));
    Ok(())
}
