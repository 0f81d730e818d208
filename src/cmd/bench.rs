//! `splicevi bench`: training throughput on simulated data at the simulator's sizes — seconds per
//! step and per epoch, cells/s, peak memory, the speed-up over the original's measured numbers, and
//! the fraction of the machine's floor (estimated training FLOPs ÷ measured GEMM peak), like llm.c's MFU.

use crate::data::simulate::{simulate, simulate_first, SimConfig, SimSize};
use crate::data::{DataOptions, Dataset};
use crate::device::Device;
use crate::model::{ExpressionArch, ModelConfig, SplicingDecoderArch, SplicingEncoderArch};
use crate::train::trainer::{dims_of, RunConfig, Trainer};
use crate::train::{presets, TrainConfig};
use anyhow::{bail, Result};
use clap::Args;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Simulator sizes to run (toy, small, medium, paper), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "small,medium")]
    pub size: Vec<String>,
    /// Presets to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "default,paper")]
    pub preset: Vec<String>,
    /// Minibatch size (the original was measured at 256).
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Timed steps per configuration (after one untimed warm-up step); 0 = one full epoch.
    #[arg(long, default_value_t = 0)]
    pub steps: usize,
    /// Stop after this many seconds of timed steps per configuration (at least 2 steps run, or the
    /// whole epoch when it has fewer).
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// Write the results as TSV here as well.
    #[arg(long)]
    pub tsv: Option<std::path::PathBuf>,
    /// With a CUDA device: after the timed steps, run this many more with every launch and cuBLAS call
    /// bracketed by timing events, and print the device time per kernel per step (0 = off)
    #[arg(long, default_value_t = 0)]
    pub profile_steps: usize,
    /// Simulate only the first N cells of each size (exactly the full simulation's first N): a step's
    /// cost depends on its minibatch, not on the cells around it; s/epoch is still given for the size's
    /// whole cell count. Default: every cell, except at paper, 25,600 (its 100,000 cells
    /// hold about 1.6 billion observed entries, tens of GB of host memory and minutes to simulate).
    #[arg(long)]
    pub sim_cells: Option<usize>,
    /// With a CUDA device: the step variants to run on each size and preset, comma-separated, each
    /// PRECISION[:DECODE] (precision f32 or bf16, splicing decode auto, sparse or dense), e.g.
    /// `bf16,bf16:sparse,f32`. The data is simulated once for all of them. Default: the global
    /// --precision and --splicing-decode.
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
}

/// One `--variants` entry: the GEMM precision and the splicing decode.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Variant {
    precision: crate::cuda::gemm::GemmPrecision,
    decode: crate::cuda::step::SplicingDecode,
}

impl Variant {
    fn parse(s: &str) -> Result<Variant> {
        use crate::cuda::gemm::GemmPrecision;
        let (p, d) = s.split_once(':').unwrap_or((s, "auto"));
        let precision = match p.trim() {
            "f32" => GemmPrecision::F32,
            "bf16" => GemmPrecision::Bf16,
            o => bail!("bench --variants: unknown precision `{o}` in `{s}` (f32 or bf16)"),
        };
        let decode = d.trim().parse().map_err(|e: String| anyhow::anyhow!("bench --variants: `{s}`: {e}"))?;
        Ok(Variant { precision, decode })
    }

    fn name(&self) -> String {
        format!("{:?}:{:?}", self.precision, self.decode).to_ascii_lowercase()
    }
}

/// Cells `bench` simulates at the paper size unless `--sim-cells` says otherwise: 100 minibatches of 256.
pub const PAPER_BENCH_CELLS: usize = 25_600;

fn parse_size(s: &str) -> Result<SimSize> {
    Ok(match s {
        "toy" => SimSize::Toy,
        "small" => SimSize::Small,
        "medium" => SimSize::Medium,
        "paper" => SimSize::Paper,
        o => bail!("bench --size: unknown size `{o}` (toy, small, medium, paper)"),
    })
}

/// Minibatch size of the original's timings.
const ORIGINAL_BATCH: usize = 256;

/// The original PyTorch implementation's training time per step, where one was measured: only the issue's
/// numbers (design.md §6), on a 2-core machine, batch 256, default options, at `small` and `medium`.
/// No other preset, size or batch size was timed, so those rows get none (no speed-up is claimed).
/// At `small` the issue gives seconds per epoch, so per step this is the epoch's average, its last
/// smaller minibatch included; the bench runs the epoch's own minibatches in order to compare like with
/// like.
fn original_seconds_per_step(size: SimSize, preset: &str, n_train: usize, batch: usize) -> Option<f64> {
    if preset != "default" || batch != ORIGINAL_BATCH {
        return None;
    }
    match size {
        SimSize::Small => Some(5.8 / n_train.div_ceil(batch) as f64),
        SimSize::Medium => Some(3.1),
        _ => None,
    }
}

/// Peak resident memory of this process since the last [`reset_peak_rss`] (else since it started),
/// VmHWM, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Reset VmHWM to the current resident size (Linux: "5" to /proc/self/clear_refs), so that the next
/// peak is one configuration's own, not the process's all-time one. False where it cannot be reset.
pub fn reset_peak_rss() -> bool {
    // Hand the earlier configurations' freed heap back first, or the new peak starts above it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Measured f32 GEMM throughput of this machine with the CPU backend's GEMM (FLOP/s), on every rayon
/// thread at once: training runs on all of them, and matrixmultiply's own product is single-threaded
/// (built without its `threading` feature), so one product alone would measure one core's peak.
fn cpu_gemm_peak() -> f64 {
    use rayon::prelude::*;
    let n = 768;
    let threads = rayon::current_num_threads().max(1);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        (0..threads).into_par_iter().for_each(|_| {
            let a = vec![1.0f32; n * n];
            let b = vec![0.5f32; n * n];
            let mut c = vec![0.0f32; n * n];
            unsafe {
                matrixmultiply::sgemm(n, n, n, 1.0, a.as_ptr(), n as isize, 1, b.as_ptr(), n as isize, 1, 0.0, c.as_mut_ptr(), n as isize, 1);
            }
            std::hint::black_box(&c);
        });
        best = best.max(threads as f64 * 2.0 * (n * n * n) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

/// Estimated forward FLOPs for one cell in minibatches of `batch` (dense-layer multiply-adds × 2;
/// elementwise work ignored). The partial encoder's first Linear is counted as the engine computes it,
/// folded per junction (model::partial: u_j = W₀[:,0] + W₀[:,1:]·F̂_j once per junction per step, a
/// J × D · D × Hh product shared by the minibatch's cells, then two multiply-adds per hidden unit per
/// pair), not as a (1 + D) × Hh product per pair: any implementation can fold it, so the floor must not
/// credit the unfolded arithmetic (that doubled the `paper` preset's count). The further sharing of
/// pairs with equal (junction, ψ) (the CPU backend's, and the grouped CUDA kernels') depends on the data
/// and is not counted: it can lift a fraction of the floor past 1, so `bench` also prints the fraction
/// counted on the distinct inputs.
fn forward_flops_per_cell(cfg: &ModelConfig, ds: &Dataset, batch: usize) -> f64 {
    let dims = dims_of(ds);
    let n = ds.n_cells().max(1) as f64;
    let expr_nnz = ds.expression.as_ref().map(|x| x.nnz()).unwrap_or(0) as f64 / n;
    let obs = ds.splicing.nnz() as f64 / n;
    let (g, j) = (dims.n_genes as f64, dims.n_junctions as f64);
    let h = cfg.resolved_n_hidden(&dims) as f64;
    let d = cfg.resolved_n_latent(&dims) as f64;
    let l = cfg.joint_latent(&dims) as f64;
    let (dd, hh, e) = (cfg.code_dim as f64, cfg.h_hidden_dim as f64, cfg.encoder_hidden_dim as f64);
    let mut f = 2.0 * expr_nnz * h + 2.0 * h * h * (cfg.n_layers_encoder as f64 - 1.0) + 4.0 * h * d;
    f += match cfg.splicing_encoder_architecture {
        SplicingEncoderArch::Partial => {
            obs * 2.0 * (2.0 * hh + hh * dd) + 2.0 * j * dd * hh / batch.max(1) as f64 + 2.0 * (dd * e + e * 2.0 * d)
        }
        SplicingEncoderArch::Vanilla => 2.0 * obs * h + 2.0 * h * h + 4.0 * h * d,
    };
    f += match cfg.expression_architecture {
        ExpressionArch::Linear => 2.0 * 2.0 * l * g,
        ExpressionArch::Vanilla => 2.0 * (l * h + h * h) + 2.0 * 2.0 * h * g,
    };
    f += match cfg.splicing_decoder_architecture {
        SplicingDecoderArch::Linear => 2.0 * obs * l,
        SplicingDecoderArch::Vanilla => 2.0 * (l * h + h * h) + 2.0 * obs * h,
    };
    f
}

/// Observed pairs of `cells` and the distinct inputs among them that the CPU's partial encoder runs its
/// h network for (model::partial `Groups`: one per (junction, ψ) with ψ ≠ 0, and one for every ψ = 0).
fn distinct_partial_inputs(spl: &crate::data::Splicing, cells: &[usize]) -> (usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let (mut pairs, mut zero) = (0usize, false);
    for &c in cells {
        for e in spl.indptr[c]..spl.indptr[c + 1] {
            pairs += 1;
            if spl.psi[e] == 0.0 {
                zero = true;
            } else {
                seen.insert((spl.junction[e], spl.psi[e].to_bits()));
            }
        }
    }
    (pairs, seen.len() + zero as usize)
}

/// The CUDA bf16 backward's schedule (`partial_pair_bwd_tc`) for one minibatch, by block size: host
/// arithmetic on the minibatch's pairs per junction, no timing. Four warps per block share d W₄ and
/// advance together, so a warp idles while its block's busiest warp has passes left.
fn print_tc_bwd_schedule(what: &str, spl: &crate::data::Splicing, cells: &[usize]) {
    let mut pairs = vec![0usize; spl.n_junctions];
    for &c in cells {
        for &j in &spl.junction[spl.indptr[c]..spl.indptr[c + 1]] {
            pairs[j as usize] += 1;
        }
    }
    use crate::cuda::partial::TcBwdSchedule;
    let (one, four) = (TcBwdSchedule::of(&pairs, 1, true), TcBwdSchedule::of(&pairs, 4, true));
    let s: Vec<String> = [(1, one), (4, four)]
        .iter()
        .map(|(w, s)| format!("{w} warp(s) per block: {} blocks, longest {} rounds, idle {:.1}%", s.blocks, s.longest, 100.0 * s.idle()))
        .collect();
    let strided = TcBwdSchedule::of(&pairs, 4, false);
    println!(
        "# {what}: bf16 backward schedule of the first minibatch (host arithmetic): {} passes of 16 pairs, {:.1} per warp; {} (junction j mod n_warps instead: longest {} rounds, idle {:.1}%)",
        one.passes,
        one.passes as f64 / (one.blocks as f64),
        s.join("; "),
        strided.longest,
        100.0 * strided.idle()
    );
}

/// Measured GEMM throughput of the device through the step's GEMM in the step's precision (cuBLAS:
/// f32, or bf16 operands with f32 accumulation on the tensor cores; the host product under the
/// emulation, on a small matrix), FLOP/s. The bf16 run's floor is the bf16 peak, as design.md §6's.
fn device_gemm_peak(dev: &crate::cuda::CudaDevice, precision: crate::cuda::gemm::GemmPrecision) -> Result<f64> {
    use crate::cuda::gemm::{GemmPrecision, Operand};
    let n = if dev.is_emulated() { 64 } else { 4096 };
    let g = crate::cuda::CudaGemm::new(dev)?;
    let mut c = dev.zeros::<f32>(n * n)?;
    // One warm-up, then the best of three rounds of four products.
    let mut time = |oa: &Operand, ob: &Operand| -> Result<f64> {
        g.gemm(precision, 1.0, oa, ob, 0.0, &mut c, n, n)?;
        dev.synchronize()?;
        let mut best = 0.0f64;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..4 {
                g.gemm(precision, 1.0, oa, ob, 0.0, &mut c, n, n)?;
            }
            dev.synchronize()?;
            best = best.max(4.0 * 2.0 * (n * n * n) as f64 / t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    match precision {
        GemmPrecision::F32 => {
            let (a, b) = (dev.upload(&vec![1.0f32; n * n])?, dev.upload(&vec![0.5f32; n * n])?);
            time(&Operand::new(&a, n, n, false)?, &Operand::new(&b, n, n, false)?)
        }
        GemmPrecision::Bf16 => {
            let (a, b) = (dev.upload(&vec![half::bf16::ONE; n * n])?, dev.upload(&vec![half::bf16::from_f32(0.5); n * n])?);
            time(&Operand::new(&a, n, n, false)?, &Operand::new(&b, n, n, false)?)
        }
    }
}

/// The per-kernel profile of `steps` steps: device ms per step, calls per step and share of the kernels'
/// total, longest first (`# profile` lines, so the TSV rows stay parseable).
fn print_profile(what: &str, prof: &[crate::cuda::runtime::KernelTime], steps: usize) {
    let total: f64 = prof.iter().map(|k| k.ms).sum();
    let n = steps.max(1) as f64;
    println!("# profile {what}: {:.3} ms of kernels per step over {steps} steps", total / n);
    for k in prof {
        println!("# profile {what}: {:>9.4} ms {:>6.1} calls {:>5.1}%  {}", k.ms / n, k.calls as f64 / n, 100.0 * k.ms / total.max(1e-300), k.name);
    }
    let (ms, calls) = fixed_order_passes(prof);
    println!(
        "# profile {what}: fixed-order reduction passes {:.4} ms {:.1} calls {:.1}% per step (what a float-atomic fast mode could save at most: {})",
        ms / n,
        calls as f64 / n,
        100.0 * ms / total.max(1e-300),
        FIXED_ORDER_PASSES.join(", ")
    );
}

/// The second passes that exist only so that sums run in a fixed order (the deterministic mode, the
/// only one built): each sums, in order, the partial sums its first pass wrote per chunk, warp or slot.
/// A float-atomic mode would fold them into their first passes, so their time bounds what it could save
/// (less the atomics' own cost); README "GPU (CUDA) backend" says why no such mode is built.
/// (partial_pool_combine also centres and divides the pooled codes, which a fast mode would still do;
/// pgrp_zero_sums is the grouped partial encoder's sum of group 0's per-warp partials.)
pub const FIXED_ORDER_PASSES: [&str; 6] = ["partial_slot_sums", "partial_group_sums", "partial_pool_combine", "pgrp_zero_sums", "glue_gather_rows_combine", "sparse_linear_combine"];

/// The profile's device ms and calls in [`FIXED_ORDER_PASSES`].
fn fixed_order_passes(prof: &[crate::cuda::runtime::KernelTime]) -> (f64, u64) {
    prof.iter().filter(|k| FIXED_ORDER_PASSES.contains(&k.name.as_str())).fold((0.0, 0), |(ms, c), k| (ms + k.ms, c + k.calls))
}

pub fn run(args: BenchArgs, device: &Device, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
    let dev: Option<&'static crate::cuda::CudaDevice> = match device {
        Device::Cuda(info) => Some(Box::leak(Box::new(crate::cuda::CudaDevice::open(info.ordinal)?))),
        Device::Cpu => None,
    };
    anyhow::ensure!(args.profile_steps == 0 || dev.is_some(), "bench: --profile-steps times CUDA kernels; it needs --device cuda");
    anyhow::ensure!(args.sim_cells != Some(0), "bench: --sim-cells must be positive");
    anyhow::ensure!(args.variants.is_empty() || dev.is_some(), "bench: --variants chooses CUDA step variants; it needs --device cuda");
    let variants: Vec<Variant> = if args.variants.is_empty() {
        vec![Variant { precision, decode: crate::cuda::step::splicing_decode() }]
    } else {
        args.variants.iter().map(|v| Variant::parse(v)).collect::<Result<_>>()?
    };
    // Every size and preset is checked before the first one runs (a typo must not cost a run's time).
    let sizes: Vec<SimSize> = args.size.iter().map(|s| parse_size(s)).collect::<Result<_>>()?;
    for p in &args.preset {
        presets::preset(p).map_err(|e| anyhow::anyhow!("bench --preset: {e}"))?;
    }
    // The floor's peak, measured once per precision.
    let mut peaks: Vec<(crate::cuda::gemm::GemmPrecision, f64)> = Vec::new();
    let mut peak_of = |p: crate::cuda::gemm::GemmPrecision| -> Result<f64> {
        if let Some(&(_, v)) = peaks.iter().find(|(q, _)| *q == p) {
            return Ok(v);
        }
        let v = match dev {
            Some(d) => {
                let v = device_gemm_peak(d, p)?;
                println!("device: {device} (the CUDA step, {p:?}); measured {p:?} GEMM peak {:.1} GFLOP/s", v / 1e9);
                v
            }
            None => {
                let v = cpu_gemm_peak();
                println!("device: cpu ({} rayon threads); measured f32 GEMM peak {:.1} GFLOP/s", rayon::current_num_threads(), v / 1e9);
                v
            }
        };
        peaks.push((p, v));
        Ok(v)
    };
    for v in &variants {
        peak_of(v.precision)?;
    }
    let header = "size\tpreset\tvariant\tcells\tgenes\tjunctions\tbatch\tsteps\ts_per_step\tcells_per_s\ts_per_epoch\tpeak_rss_mb\toriginal_s_per_step\tspeedup\test_gflop_per_cell\tfraction_of_floor";
    println!("{header}");
    let mut rows = vec![header.to_string()];
    let mut peak_reset = true;
    for (size_name, &size) in args.size.iter().zip(&sizes) {
        let cfg = SimConfig::preset(size, 0);
        let default_cells = if size == SimSize::Paper { PAPER_BENCH_CELLS } else { cfg.n_cells };
        let n_sim = args.sim_cells.unwrap_or(default_cells).min(cfg.n_cells);
        let (ds, _truth) = if n_sim < cfg.n_cells { simulate_first(&cfg, n_sim)? } else { simulate(&cfg)? };
        // s/epoch and the original's per-epoch figure are for the size's whole dataset
        let whole = cfg.n_cells as f64 / ds.n_cells() as f64;
        if n_sim < cfg.n_cells {
            println!(
                "# {size_name}: simulated its first {n_sim} of {} cells ({} observed splicing entries); s_per_epoch is for all {}",
                cfg.n_cells,
                ds.splicing.nnz(),
                cfg.n_cells
            );
        }
        for (preset_name, variant) in args.preset.iter().flat_map(|p| variants.iter().map(move |v| (p, *v))) {
            let peak = peak_of(variant.precision)?;
            let vname = if dev.is_some() { variant.name() } else { "cpu".to_string() };
            let what = if variants.len() > 1 { format!("{size_name} {preset_name} {vname}") } else { format!("{size_name} {preset_name}") };
            let (model, train0) = presets::preset(preset_name)?;
            let train = TrainConfig { batch_size: args.batch_size, max_epochs: 1, ..train0 };
            let dims = dims_of(&ds);
            model.validate(&dims)?;
            let data = DataOptions { batch_key: Some("batch".into()), ..Default::default() };
            let run = RunConfig::for_dataset(preset_name, model.clone(), train.clone(), data, &ds);
            let tmp = tempfile::tempdir()?;
            if let (Some(_), Some(why)) = (dev, crate::cuda::step::unsupported(&model, &dims)) {
                println!("# {what}: not run on the device: {why}");
                continue;
            }
            // This configuration's own peak: the earlier ones' (and the simulation's) are not in it.
            peak_reset &= reset_peak_rss();
            let mut t = Trainer::new(&ds, run, tmp.path())?;
            let partial = model.splicing_encoder_architecture == SplicingEncoderArch::Partial;
            // The step's partial-encoder kernels: grouped (the default) or per pair
            // (SPLICEVI_PARTIAL_KERNELS=pairs), whose layers may fit the bf16 tensor-core backward
            // (`partial_pair_bwd_tc`).
            let grouped = crate::cuda::partial::PartialKernels::grouped_by_default()?;
            let tc_bwd = partial && !grouped && crate::cuda::partial::tensor_cores_bwd_fit(model.h_hidden_dim, model.code_dim);
            if let Some(d) = dev {
                crate::cuda::step::set_splicing_decode(variant.decode);
                t.use_device(d, variant.precision)?;
                println!("# {what}: {}; {:?}, splicing decode {:?}", t.device_data_note().unwrap_or_default(), variant.precision, variant.decode);
                if partial {
                    let k = crate::cuda::partial::PartialKernels::for_step(grouped, matches!(variant.precision, crate::cuda::gemm::GemmPrecision::Bf16));
                    println!("# {what}: partial encoder kernels: {}", k.name());
                }
                let (hh, cd) = (model.h_hidden_dim, model.code_dim);
                if tc_bwd && matches!(variant.precision, crate::cuda::gemm::GemmPrecision::Bf16) {
                    let w = crate::cuda::partial::tc_bwd_warps_per_block(hh, cd, d.info().smem_optin, crate::cuda::partial::tc_bwd_warps_requested()?)?;
                    println!("# {what}: partial_pair_bwd_tc at {w} warps per block ({} bytes of shared memory)", crate::cuda::partial::tc_bwd_smem(hh, cd, w));
                }
            }
            let first = &t.train_cells[..t.train_cells.len().min(args.batch_size)];
            if tc_bwd && dev.is_some() {
                print_tc_bwd_schedule(&what, &ds.splicing, first);
            }
            // (pairs, distinct inputs) of the first minibatch, where the h network runs once per input
            let mut sharing = None;
            if partial && (dev.is_none() || grouped) {
                let (pairs, groups) = distinct_partial_inputs(&ds.splicing, first);
                sharing = Some((pairs, groups, first.len()));
                let who = if dev.is_none() { "the CPU's partial encoder runs" } else { "the grouped kernels run" };
                println!(
                    "# {what}: {who} the h network once per distinct (junction, ψ) input: {groups} for the first minibatch's {pairs} pairs ({:.1}x fewer); the floor counts every pair, so that sharing can lift fraction_of_floor past 1",
                    pairs as f64 / groups.max(1) as f64
                );
            }
            // Steady state: past the KL warm-up (mixing on, gate 1).
            let epoch = train.n_epochs_kl_warmup.unwrap_or(0);
            t.timed_steps(epoch, 0, 1)?;
            let n_steps_epoch = t.train_cells.len().div_ceil(args.batch_size);
            let target = if args.steps == 0 { n_steps_epoch } else { args.steps };
            let (mut secs, mut cells, mut steps) = (0.0, 0usize, 0usize);
            let launches0 = dev.map(|d| d.launches());
            // The epoch's minibatches in order, its last (smaller) one included, as an epoch of the
            // original ran them: over a whole epoch s/step is the original's per-epoch average. Timed in
            // runs of steps as training runs them (the next minibatch prepared on a second thread while
            // the device runs the current one): two first, then as many as --max-seconds leaves room for.
            let mut run = target.min(2);
            while steps < target && (steps < 2 || secs < args.max_seconds) {
                let (s, c) = t.timed_steps(epoch, steps, run)?;
                secs += s;
                cells += c;
                steps += run;
                let room = ((args.max_seconds - secs) / (secs / steps as f64)).floor().max(1.0) as usize;
                run = room.min(target.saturating_sub(steps)).max(1);
            }
            if let (Some(d), Some(l0)) = (dev, launches0) {
                // Each launch costs the host a few microseconds: a floor under the step's time.
                println!("# {what}: {:.0} kernel launches and cuBLAS calls per step", (d.launches() - l0) as f64 / steps as f64);
                if args.profile_steps > 0 {
                    // Separate steps: the events perturb the timed ones.
                    d.set_profiling(true);
                    for i in 0..args.profile_steps {
                        t.timed_steps(epoch, (steps + i) % n_steps_epoch.max(1), 1)?;
                    }
                    let prof = d.take_profile()?;
                    d.set_profiling(false);
                    print_profile(&what, &prof, args.profile_steps);
                }
            }
            if dev.is_some() {
                // The host's share of a device step (gather + pack), overlapped with the device's work
                // by the trainer's prefetch thread: if it exceeds s/step, the host is the bottleneck.
                let cells: Vec<usize> = t.train_cells.iter().take(args.batch_size).copied().collect();
                let t0 = Instant::now();
                let hb = t.device_host_batch(&cells, &crate::model::StepOptions::default())?;
                println!("# {what}: host preparation {:.1} ms per step ({:.1} MB copied per step)", t0.elapsed().as_secs_f64() * 1e3, hb.bytes() as f64 / 1e6);
            }
            let s_step = secs / steps as f64;
            let cps = cells as f64 / secs;
            let n_train_whole = (t.train_cells.len() as f64 * whole).round();
            let s_epoch = n_train_whole / cps;
            let orig = original_seconds_per_step(size, preset_name, n_train_whole as usize, args.batch_size);
            let flops = 3.0 * forward_flops_per_cell(&model, &ds, args.batch_size);
            let frac = flops * cps / peak;
            let row = format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.4}\t{:.0}\t{:.2}\t{:.0}\t{}\t{}\t{:.4}\t{:.3}",
                size_name,
                preset_name,
                vname,
                cfg.n_cells,
                ds.n_genes(),
                ds.n_junctions(),
                args.batch_size,
                steps,
                s_step,
                cps,
                s_epoch,
                peak_rss_bytes().unwrap_or(0) as f64 / 1e6,
                orig.map(|o| format!("{o:.4}")).unwrap_or_else(|| "-".into()),
                orig.map(|o| format!("{:.1}x", o / s_step)).unwrap_or_else(|| "-".into()),
                flops / 1e9,
                frac
            );
            println!("{row}");
            if let Some((pairs, groups, n)) = sharing.filter(|&(p, _, n)| p > 0 && n > 0) {
                // The same step counted on the arithmetic it does: the h network's per-pair share of
                // the count (two multiply-adds per hidden unit, then Hh × D) once per distinct input.
                let per_input = 2.0 * (2.0 * model.h_hidden_dim as f64 + (model.h_hidden_dim * model.code_dim) as f64);
                let done = flops - 3.0 * per_input * (pairs as f64 - groups as f64) / n as f64;
                println!(
                    "# {what}: counted on the distinct inputs instead (the first minibatch's {groups} of {pairs} pairs): {:.4} GFLOP per cell, {:.3} of the floor",
                    done / 1e9,
                    done * cps / peak
                );
            }
            if size == SimSize::Paper && preset_name == "paper" && dev.is_some() {
                println!("{}", criterion_line(&vname, cps, frac));
            }
            rows.push(row);
        }
    }
    if let Some(p) = &args.tsv {
        let text = rows.join("\n") + "\n";
        crate::util::write_atomic(p, |tmp| Ok(std::fs::write(tmp, text.as_bytes())?))?;
    }
    println!("{}", footnote(peak_reset));
    Ok(())
}

/// Issue 4's speed criterion (paper preset, paper size, one GPU). No timing of the original's paper
/// preset exists: the only GPU figure is design.md §6's estimate for PyTorch/scvi-tools models of this
/// family (10,000-25,000 cells/s, options not stated), so the line says the ratio is against that.
fn criterion_line(vname: &str, cps: f64, frac: f64) -> String {
    format!(
        "# criterion ({vname}; paper preset, paper size, one GPU): >= 20x the original and >= 0.40 of the floor; this run: {cps:.0} cells/s, {frac:.3} of the floor. No timing of the original's paper preset exists: against design.md §6's estimate for PyTorch/scvi-tools models of this family on one GPU (10,000-25,000 cells/s, options not stated; 20x = 200,000-500,000) it is {:.1}x-{:.1}x, an estimate, not a measured comparison",
        cps / 25_000.0,
        cps / 10_000.0
    )
}

/// The note under the table: what the original's numbers cover and what peak_rss_mb measures.
fn footnote(peak_reset: bool) -> String {
    let peak = if peak_reset {
        "peak_rss_mb: each configuration's own peak resident memory (VmHWM reset before it; the size's simulated data included)"
    } else {
        "peak_rss_mb: CUMULATIVE, the process's peak so far (VmHWM could not be reset here), so a row includes the earlier rows' peaks"
    };
    format!("(original_s_per_step and speedup: the original PyTorch SpliceVI on 2 CPU cores, timed only with the default preset at batch 256: 5.8 s/epoch at small, 3.1 s/step at medium; other presets, sizes and batch sizes were not timed: \"-\". {peak}. fraction_of_floor = estimated training FLOP/s ÷ the GEMM peak measured in the run's precision)")
}

#[cfg(test)]
mod tests {
    use super::Variant;
    use crate::cuda::gemm::GemmPrecision;
    use crate::cuda::step::SplicingDecode;

    /// Three cells over three junctions: ψ = 0 pairs share one input whatever their junction; equal
    /// non-zero ψ share one per junction.
    #[test]
    fn distinct_partial_inputs_counts_the_cpu_groups() {
        let spl = crate::data::Splicing {
            n_cells: 3,
            n_junctions: 3,
            indptr: vec![0, 3, 6, 7],
            junction: vec![0, 1, 2, 0, 1, 2, 2],
            psi: vec![0.5, 0.0, 0.25, 0.5, 0.0, 0.75, 0.0],
            ..Default::default()
        };
        assert_eq!(super::distinct_partial_inputs(&spl, &[0, 1]), (6, 4));
        assert_eq!(super::distinct_partial_inputs(&spl, &[0]), (3, 3));
        assert_eq!(super::distinct_partial_inputs(&spl, &[2, 1]), (4, 3));
    }

    /// Every name in FIXED_ORDER_PASSES is a kernel of kernels/*.cu (a renamed kernel would silently
    /// drop out of the sum), and the sum takes exactly those.
    #[test]
    fn fixed_order_passes_name_real_kernels() {
        use crate::cuda::runtime::KernelTime;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut src = String::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cu") {
                src += &std::fs::read_to_string(&p).unwrap();
            }
        }
        for k in super::FIXED_ORDER_PASSES {
            assert!(src.contains(&format!("\n{k}(")), "{k} is not a kernel in kernels/*.cu");
        }
        let t = |name: &str, ms: f64, calls: u64| KernelTime { name: name.into(), ms, calls };
        let prof = [t("partial_pair_bwd_tc", 5.0, 2), t("partial_slot_sums", 0.25, 2), t("sparse_linear_combine", 0.5, 4), t("glue_col_sum", 1.0, 6)];
        assert_eq!(super::fixed_order_passes(&prof), (0.75, 6));
    }

    /// The original was timed only with the default preset at batch 256, at small and medium: no other
    /// row is compared with those numbers.
    #[test]
    fn original_timings_only_where_measured() {
        use crate::data::simulate::SimSize;
        let f = super::original_seconds_per_step;
        assert_eq!(f(SimSize::Small, "default", 1800, 256), Some(5.8 / 8.0));
        assert_eq!(f(SimSize::Medium, "default", 18000, 256), Some(3.1));
        for preset in ["paper", "robust"] {
            assert_eq!(f(SimSize::Small, preset, 1800, 256), None, "{preset}");
            assert_eq!(f(SimSize::Medium, preset, 18000, 256), None, "{preset}");
        }
        assert_eq!(f(SimSize::Small, "default", 1800, 128), None);
        assert_eq!(f(SimSize::Paper, "default", 90000, 256), None);
        assert_eq!(f(SimSize::Toy, "default", 180, 256), None);
    }

    /// The paper criterion's line says its reference is an estimate, not a timing of the paper preset;
    /// the footnote says which rows have the original's numbers and what the peak column covers.
    #[test]
    fn criterion_and_footnote_say_what_was_measured() {
        let c = super::criterion_line("bf16:auto", 300_000.0, 0.5);
        assert!(c.contains("No timing of the original's paper preset exists") && c.contains("12.0x-30.0x, an estimate"), "{c}");
        let f = super::footnote(true);
        assert!(f.contains("timed only with the default preset at batch 256") && f.contains("each configuration's own peak"), "{f}");
        assert!(super::footnote(false).contains("CUMULATIVE"));
    }

    #[test]
    fn variants_name_a_precision_and_a_decode() {
        assert_eq!(Variant::parse("bf16:sparse").unwrap(), Variant { precision: GemmPrecision::Bf16, decode: SplicingDecode::Sparse });
        assert_eq!(Variant::parse("f32").unwrap(), Variant { precision: GemmPrecision::F32, decode: SplicingDecode::Auto });
        assert_eq!(Variant::parse("bf16:dense").unwrap().name(), "bf16:dense");
        let e = Variant::parse("f16:auto").unwrap_err().to_string();
        assert!(e.contains("f16") && e.contains("f32 or bf16"), "{e}");
        let e = Variant::parse("bf16:fast").unwrap_err().to_string();
        assert!(e.contains("bf16:fast") && e.contains("auto, sparse or dense"), "{e}");
    }
}
