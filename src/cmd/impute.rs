//! `splicevi impute`: imputed PSI (cells × junctions) into an .h5ad, written block by block.

use crate::analysis::impute::{group_codes, read_name_list, write_imputed_psi, ImputeOptions, ObservedIn};
use crate::analysis::posterior::{batch_codes, open_run, DecodeOptions, SplicingFn};
use crate::data::h5write::{Compression, UnsValue};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
// (`--delta -0.1` reaches the range check instead of being read as a flag)
#[command(allow_negative_numbers = true)]
pub struct ImputeArgs {
    /// Run directory written by `splicevi train`.
    pub run_dir: PathBuf,
    /// Data (same genes and junctions as the training data).
    pub data: PathBuf,
    /// Output .h5ad (X = imputed PSI, cells × junctions).
    #[arg(long)]
    pub out: PathBuf,
    /// dm-posterior: (c·p + k)/(c + n) with the cell's own counts (the original's default for evaluations);
    /// decoder: the decoder's p.
    #[arg(long, value_enum, default_value = "dm-posterior")]
    pub method: SplicingFn,
    /// File with the junctions to write, one name per line (default: all).
    #[arg(long)]
    pub junctions: Option<PathBuf>,
    /// Decode every cell under these batches and average (default: each cell's own batch).
    #[arg(long, num_args = 1..)]
    pub transform_batch: Vec<String>,
    /// Posterior samples averaged per cell (1 = decode the posterior mean).
    #[arg(long, default_value_t = 1)]
    pub n_samples: usize,
    /// Write a sparse X holding only the junctions of ATSEs observed in the cell (or, with --groupby,
    /// in at least one cell of the cell's group).
    #[arg(long)]
    pub observed_only: bool,
    /// obs column defining the groups of --observed-only.
    #[arg(long, requires = "observed_only")]
    pub groupby: Option<String>,
    /// Cells decoded per block (memory ∝ block × junctions).
    #[arg(long, default_value_t = 256)]
    pub block_cells: usize,
    /// Seed of the posterior samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// gzip level of X (0 = uncompressed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub gzip: u8,
}

pub fn compression(level: u8) -> Compression {
    Compression { gzip_level: (level > 0).then_some(level) }
}

pub fn run(args: ImputeArgs, device: &crate::device::Device, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
    anyhow::ensure!(args.n_samples >= 1, "--n-samples must be ≥ 1");
    anyhow::ensure!(args.block_cells >= 1, "--block-cells must be ≥ 1");
    if args.seed != 0 && args.n_samples == 1 {
        anyhow::bail!("--seed {} has no effect here: with --n-samples 1 each cell is decoded from its posterior mean, and no sample is drawn; leave it out, or give --n-samples S > 1", args.seed);
    }
    crate::util::check_output(&args.out, &[&args.data], &[&args.run_dir])?;
    let o = open_run(&args.run_dir, &args.data)?;
    if args.method == SplicingFn::DmPosterior {
        crate::analysis::posterior::require_counts_for_dm_posterior(&o.ds)?;
    }
    let transform_batch = batch_codes(&o.run.batch_levels, &args.transform_batch)?;
    let junctions = match &args.junctions {
        Some(p) => Some(read_name_list(p, &o.ds.splicing.junction_names, "junction")?),
        None => None,
    };
    let sparse = match (args.observed_only, &args.groupby) {
        (false, _) => None,
        (true, None) => Some(ObservedIn::Cell),
        (true, Some(col)) => Some(ObservedIn::Group { column: col.clone(), codes: group_codes(&o.ds, "--groupby", col)? }),
    };
    // (the options are checked above, before the model is set up on its device)
    let mut post = o.posterior()?;
    super::analysis_device(&mut post, device, precision, "impute")?;
    let opts = ImputeOptions {
        method: args.method,
        junctions,
        decode: DecodeOptions { transform_batch, n_samples: args.n_samples, seed: args.seed },
        block_cells: args.block_cells,
        sparse,
        compression: compression(args.gzip),
    };
    let uns = vec![("splicevi_run".to_string(), UnsValue::String(args.run_dir.display().to_string()))];
    let s = write_imputed_psi(&post, &args.out, &opts, uns)?;
    eprintln!(
        "wrote {} ({} cells × {} junctions, {} PSI, {} values stored)",
        args.out.display(),
        s.n_cells,
        s.n_cols,
        args.method.name(),
        s.n_stored
    );
    Ok(())
}
