//! The `splicevi` command line: one subcommand per module.

use clap::{Parser, Subcommand};

pub mod bench;
pub mod check_fixture;
pub mod diff_expression;
pub mod diff_splicing;
pub mod embed;
pub mod evaluate;
pub mod impute;
pub mod info;
pub mod normalize_expression;
pub mod option_flags;
mod option_help;
pub mod plot;
pub mod simulate;
pub mod train;
pub mod validate;

// Every command and subcommand reads `-0.5` after a flag as its value, so that the flag's own range
// check speaks instead of clap's "unexpected argument '-0'" (`allow_negative_numbers` on the root and
// on every variant below, and on `plot`'s).
#[derive(Parser, Debug)]
#[command(name = "splicevi", version, about = "SpliceVI: joint latent space of gene expression and alternative splicing")]
#[command(allow_negative_numbers = true)]
pub struct Cli {
    /// Worker threads for the CPU backend (default: all cores; at most 1024).
    #[arg(long, global = true, value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Compute device of every command: auto (cuda:0 where usable and the command's CUDA path has been
    /// validated on a GPU, else cpu, with a one-line reason), cpu, cuda or cuda:N (train, bench and
    /// check-fixture run the CUDA training step; the analyses run the step's encoders and decoders on
    /// the device, their tests on the host).
    #[arg(long, global = true, default_value = "auto", value_parser = crate::device::parse_device_spec)]
    pub device: crate::device::DeviceSpec,
    /// Precision of the CUDA step (every command with a CUDA device): f32, or
    /// bf16 GEMM operands with f32 accumulation, parameters, optimizer state and likelihood math.
    #[arg(long, global = true, default_value = "f32", value_parser = parse_precision)]
    pub precision: crate::cuda::gemm::GemmPrecision,
    /// Where the training data lives while a CUDA device trains (train, bench, evaluate --train): auto
    /// (on the device when it fits in half of its free memory, else streamed), device, or host (each
    /// minibatch gathered and packed on the host, copied once per step).
    #[arg(long, global = true, default_value = "auto", value_parser = parse_residency)]
    pub data_residency: crate::cuda::resident::Residency,
    /// How the CUDA step's splicing decoder output meets the likelihood: auto (dense where more than
    /// 7/(3K) of a minibatch's cell × junction entries are observed, K the decoder's input width), sparse
    /// (an SDDMM over the observed entries) or dense (one B × J GEMM and its backward GEMMs).
    #[arg(long, global = true, default_value = "auto", value_parser = parse_splicing_decode)]
    pub splicing_decode: crate::cuda::step::SplicingDecode,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a synthetic dataset in the SpliceVI .h5mu layout, with ground truth.
    #[command(allow_negative_numbers = true)]
    Simulate(simulate::SimulateArgs),
    /// Load and check a dataset; print a summary or the first error.
    #[command(allow_negative_numbers = true)]
    Validate(validate::ValidateArgs),
    /// Train a model; writes a run directory (checkpoint, config, metrics).
    #[command(allow_negative_numbers = true)]
    Train(train::TrainArgs),
    /// Latent representation of every cell into an .h5ad (obsm).
    #[command(allow_negative_numbers = true)]
    Embed(embed::EmbedArgs),
    /// Imputed PSI (cells × junctions) into an .h5ad, written block by block.
    #[command(allow_negative_numbers = true)]
    Impute(impute::ImputeArgs),
    /// Normalized expression (cells × genes) into an .h5ad.
    #[command(allow_negative_numbers = true)]
    NormalizeExpression(normalize_expression::NormalizeExpressionArgs),
    /// Differential splicing between groups of cells (TSV).
    #[command(allow_negative_numbers = true)]
    DiffSplicing(diff_splicing::DiffSplicingArgs),
    /// Differential expression between groups of cells (TSV).
    #[command(allow_negative_numbers = true)]
    DiffExpression(diff_expression::DiffExpressionArgs),
    /// The original's evaluation (model.md §8): imputation (masked ATSEs, resampled reads, test_impute)
    /// vs MeanBayes, the latent metrics of §8.1, and opt-in §8.2 cross-fold classification and §8.3
    /// Leiden clustering and subcluster splits (table + TSV; docs/evaluate.md).
    #[command(allow_negative_numbers = true)]
    Evaluate(evaluate::EvaluateArgs),
    /// Redraw a picture: training curves, imputation scatter, DS volcano, latent embedding (PNG + SVG).
    #[command(allow_negative_numbers = true)]
    Plot(plot::PlotArgs),
    /// Run conformance cases (../shared/fixtures format) and compare with the original's numbers.
    #[command(allow_negative_numbers = true)]
    CheckFixture(check_fixture::CheckFixtureArgs),
    /// Training throughput on simulated data (cells/s, s/epoch, peak memory, fraction of the floor).
    #[command(allow_negative_numbers = true)]
    Bench(bench::BenchArgs),
    /// Print the build (kernels embedded, archs), driver and devices.
    #[command(allow_negative_numbers = true)]
    Info(info::InfoArgs),
}

impl Command {
    /// Whether the command runs training steps (train, bench, evaluate --train): those keep freed
    /// memory in the process ([`crate::util::keep_freed_memory`]).
    pub fn trains(&self) -> bool {
        match self {
            Command::Train(_) | Command::Bench(_) => true,
            Command::Evaluate(a) => a.train,
            _ => false,
        }
    }
}

/// The most --threads: above the hardware threads of the largest machines (2 × 192 cores × 2) the
/// CPU backend gains nothing, and far above it spawning the pool crashes or hangs.
const MAX_THREADS: usize = 1024;

fn parse_threads(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a number of threads"))?;
    if n > MAX_THREADS {
        return Err(format!("{n} threads: at most {MAX_THREADS} (this machine has {} cores)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)));
    }
    Ok(n)
}

fn parse_residency(s: &str) -> Result<crate::cuda::resident::Residency, String> {
    s.parse()
}

fn parse_splicing_decode(s: &str) -> Result<crate::cuda::step::SplicingDecode, String> {
    s.parse()
}

fn parse_precision(s: &str) -> Result<crate::cuda::gemm::GemmPrecision, String> {
    match s {
        "f32" => Ok(crate::cuda::gemm::GemmPrecision::F32),
        "bf16" => Ok(crate::cuda::gemm::GemmPrecision::Bf16),
        o => Err(format!("invalid precision `{o}`: expected f32 or bf16")),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    // Every compute command resolves --device first, so an impossible request fails before any work.
    let compute = !matches!(&cli.command, Command::Simulate(_) | Command::Validate(_) | Command::Plot(_) | Command::Info(_));
    let mut resolved = None;
    if compute {
        // Every compute command has a CUDA path: `cuda[:N]` runs it, `auto` stays on the CPU until the
        // step has been validated on a GPU.
        let r = crate::device::resolve_for_training(cli.device)?;
        eprintln!("{}", r.describe());
        resolved = Some(r);
    }
    let device = resolved.map(|r| r.device).unwrap_or(crate::device::Device::Cpu);
    let precision = cli.precision;
    crate::cuda::resident::set_residency(cli.data_residency);
    crate::cuda::step::set_splicing_decode(cli.splicing_decode);
    // The CUDA-step options, set explicitly, are errors on the CPU (not silently ignored); the host
    // commands (simulate, validate, plot, info) ignore them as they ignore --device.
    if compute && !device.is_cuda() {
        if precision == crate::cuda::gemm::GemmPrecision::Bf16 {
            anyhow::bail!("--precision bf16 is a CUDA option (with --device cuda); the CPU backend computes in f32");
        }
        if cli.data_residency != crate::cuda::resident::Residency::Auto {
            anyhow::bail!("--data-residency is a CUDA option (with --device cuda); the CPU backend reads the data where it is");
        }
        if cli.splicing_decode != crate::cuda::step::SplicingDecode::Auto {
            anyhow::bail!("--splicing-decode is a CUDA option (with --device cuda); the CPU backend decodes the observed entries");
        }
    }
    match cli.command {
        Command::Simulate(a) => simulate::run(a),
        Command::Validate(a) => validate::run(a),
        Command::Train(a) => train::run(a, &device, precision),
        Command::Embed(a) => embed::run(a, &device, precision),
        Command::Impute(a) => impute::run(a, &device, precision),
        Command::NormalizeExpression(a) => normalize_expression::run(a, &device, precision),
        Command::DiffSplicing(a) => diff_splicing::run(a, &device, precision),
        Command::DiffExpression(a) => diff_expression::run(a, &device, precision),
        Command::Evaluate(a) => evaluate::run(a, &device, precision),
        Command::Plot(a) => plot::run(a),
        Command::CheckFixture(a) => check_fixture::run(a, &device, precision),
        Command::Bench(a) => bench::run(a, &device, precision),
        Command::Info(a) => info::run(a, cli.device, &step_options_given(&cli.precision, cli.data_residency, cli.splicing_decode)),
    }
}

/// The CUDA-step options given other than their defaults, as flags (what `info` reports).
fn step_options_given(precision: &crate::cuda::gemm::GemmPrecision, residency: crate::cuda::resident::Residency, decode: crate::cuda::step::SplicingDecode) -> Vec<String> {
    let mut v = Vec::new();
    if *precision == crate::cuda::gemm::GemmPrecision::Bf16 {
        v.push("--precision bf16".to_string());
    }
    if residency != crate::cuda::resident::Residency::Auto {
        v.push(format!("--data-residency {}", format!("{residency:?}").to_lowercase()));
    }
    if decode != crate::cuda::step::SplicingDecode::Auto {
        v.push(format!("--splicing-decode {}", format!("{decode:?}").to_lowercase()));
    }
    v
}

/// cuda:`ordinal`, opened once for the life of the process (device models borrow it; `evaluate --train`
/// trains and then analyses on the same context).
pub(crate) fn open_device(ordinal: usize) -> anyhow::Result<&'static crate::cuda::CudaDevice> {
    thread_local! {
        static OPEN: std::cell::RefCell<Vec<(usize, &'static crate::cuda::CudaDevice)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if let Some(d) = OPEN.with(|o| o.borrow().iter().find(|(n, _)| *n == ordinal).map(|(_, d)| *d)) {
        return Ok(d);
    }
    let d: &'static crate::cuda::CudaDevice = Box::leak(Box::new(crate::cuda::CudaDevice::open(ordinal)?));
    OPEN.with(|o| o.borrow_mut().push((ordinal, d)));
    Ok(d)
}

/// Runs `post`'s encoders and decoders on the device for an analysis (`--device cuda[:N]`), after
/// checking that the CUDA step implements the run's options; nothing on the CPU.
pub(crate) fn analysis_device<'a>(
    post: &mut crate::analysis::posterior::Posterior<'a>,
    device: &crate::device::Device,
    precision: crate::cuda::gemm::GemmPrecision,
    command: &str,
) -> anyhow::Result<()> {
    let crate::device::Device::Cuda(info) = device else { return Ok(()) };
    if let Some(why) = crate::cuda::step::unsupported(&post.model.cfg, &post.model.dims) {
        anyhow::bail!("--device cuda:{}: {why}", info.ordinal);
    }
    post.use_device(open_device(info.ordinal)?, precision)?;
    eprintln!("{command}: encoders and decoders on {device} in {precision:?} (the CUDA step; it had not run on a GPU when this build was made)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn only_training_commands_keep_freed_memory() {
        let trains = |args: &[&str]| Cli::try_parse_from(args).expect("parses").command.trains();
        assert!(trains(&["splicevi", "train", "d.h5mu", "--out", "run"]));
        assert!(trains(&["splicevi", "bench", "--size", "small"]));
        assert!(trains(&["splicevi", "evaluate", "--train", "d.h5mu", "--out", "e.tsv"]));
        assert!(!trains(&["splicevi", "evaluate", "run", "d.h5mu", "--out", "e.tsv"]));
        assert!(!trains(&["splicevi", "diff-splicing", "run", "d.h5mu", "--groupby", "g", "--group1", "a", "--out", "ds.tsv"]));
        assert!(!trains(&["splicevi", "impute", "run", "d.h5mu", "--out", "psi.h5ad"]));
    }

    /// --threads has a bound: far above it the pool's threads crash (100000) or hang (20000).
    #[test]
    fn threads_are_bounded() {
        let threads = |n: &str| Cli::try_parse_from(["splicevi", "--threads", n, "info"]).map(|c| c.threads);
        assert_eq!(threads("1024").unwrap(), Some(MAX_THREADS));
        assert_eq!(threads("2").unwrap(), Some(2));
        for n in ["1025", "20000", "100000"] {
            let e = threads(n).unwrap_err().to_string();
            assert!(e.contains("--threads") && e.contains("at most 1024"), "{n}: {e}");
        }
        assert!(threads("many").unwrap_err().to_string().contains("not a number of threads"));
    }

    /// The integer checks the load errors point to are flags of every command that reads data with
    /// its own data options (the analyses take them from the run's config.json).
    #[test]
    fn the_integer_checks_are_data_options() {
        for args in [&["splicevi", "train", "d.h5mu", "--out", "r"][..], &["splicevi", "validate", "d.h5mu"], &["splicevi", "evaluate", "--train", "d.h5mu", "--out", "e.tsv"]] {
            let mut v = args.to_vec();
            v.extend(["--require-integer-expression", "false", "--require-integer-splicing", "false"]);
            let cli = Cli::try_parse_from(&v).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let opts = match cli.command {
                Command::Train(a) => a.data_options,
                Command::Validate(a) => a.data_options,
                Command::Evaluate(a) => a.data_options,
                _ => unreachable!(),
            };
            assert!(!opts.require_integer_expression && !opts.require_integer_splicing, "{args:?}");
        }
        let Command::Train(a) = Cli::try_parse_from(["splicevi", "train", "d.h5mu", "--out", "r"]).unwrap().command else { unreachable!() };
        assert!(a.data_options.require_integer_expression && a.data_options.require_integer_splicing);
        // a run config written before the checks were options reads them as on
        let old: crate::data::DataOptions = serde_json::from_str(r#"{"rna_modality":"rna","splicing_modality":"splicing","rna_layer":null,"junc_counts_layer":"k","atse_counts_layer":"n","junc_ratio_layer":"r","psi_mask_layer":"m","event_id_key":"event_id","size_factor_key":"s","batch_key":null,"labels_key":null,"categorical_covariate_keys":[],"continuous_covariate_keys":[]}"#).unwrap();
        assert!(old.require_integer_expression && old.require_integer_splicing);
    }

    /// Every argument that takes a value, in every command and subcommand, reads a negative number as
    /// its value, so that its own check speaks (`simulate --target-unobserved -0.5` was clap's
    /// "unexpected argument '-0' found").
    #[test]
    fn every_value_takes_negative_numbers() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, bad: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_action().takes_values() && !cmd.is_allow_negative_numbers_set() && !arg.is_allow_negative_numbers_set() {
                    bad.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &format!("{path} {}", sub.get_name()), bad);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut bad = Vec::new();
        walk(&cli, "splicevi", &mut bad);
        assert!(bad.is_empty(), "arguments that read -1 as an unknown flag: {bad:?}");
        let e = Cli::try_parse_from(["splicevi", "--threads", "-1", "info"]).unwrap_err().to_string();
        assert!(e.contains("not a number of threads"), "{e}");
        assert!(Cli::try_parse_from(["splicevi", "simulate", "--out", "x.h5mu", "--target-unobserved", "-0.5", "--ds-atse-fraction", "-1"]).is_ok());
        assert!(Cli::try_parse_from(["splicevi", "plot", "volcano", "ds.tsv", "--fdr", "-1"]).is_ok());
    }

    /// `--help` of every command and subcommand (`plot curves` too) describes every argument and flag
    /// (a flag without a line was how `embed --modality` shipped, and `plot`'s inputs had none).
    #[test]
    fn every_argument_of_every_command_has_help() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let text = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
                if text.trim().is_empty() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let mut cli = Cli::command();
        cli.build();
        for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, sub.get_name(), &mut missing);
        }
        assert!(missing.is_empty(), "arguments without a help line: {missing:?}");
    }
}
