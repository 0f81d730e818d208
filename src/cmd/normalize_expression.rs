//! `splicevi normalize-expression`: normalized expression (px_scale, cells × genes) into an .h5ad.

use super::impute::compression;
use crate::analysis::impute::{read_name_list, write_normalized_expression, ExpressionOptions};
use crate::analysis::posterior::{batch_codes, open_run, DecodeOptions};
use crate::data::h5write::UnsValue;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
// (`--delta -0.1` reaches the range check instead of being read as a flag)
#[command(allow_negative_numbers = true)]
pub struct NormalizeExpressionArgs {
    /// Run directory written by `splicevi train`.
    pub run_dir: PathBuf,
    /// Data (same genes and junctions as the training data).
    pub data: PathBuf,
    /// Output .h5ad (X = normalized expression, cells × genes).
    #[arg(long)]
    pub out: PathBuf,
    /// Decode every cell under these batches and average (default: each cell's own batch).
    #[arg(long, num_args = 1..)]
    pub transform_batch: Vec<String>,
    /// Scale the normalized expression to this common library size (default: px_scale as is).
    #[arg(long)]
    pub library_size: Option<f64>,
    /// Posterior samples averaged per cell (1 = decode the posterior mean).
    #[arg(long, default_value_t = 1)]
    pub n_samples: usize,
    /// File with the genes to write, one name per line (default: all).
    #[arg(long)]
    pub genes: Option<PathBuf>,
    /// Cells decoded per block (memory ∝ block × genes).
    #[arg(long, default_value_t = 512)]
    pub block_cells: usize,
    /// Seed of the posterior samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// gzip level of X (0 = uncompressed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub gzip: u8,
}

pub fn run(args: NormalizeExpressionArgs, device: &crate::device::Device, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
    anyhow::ensure!(args.n_samples >= 1, "--n-samples must be ≥ 1");
    anyhow::ensure!(args.block_cells >= 1, "--block-cells must be ≥ 1");
    if args.seed != 0 && args.n_samples == 1 {
        anyhow::bail!("--seed {} has no effect here: with --n-samples 1 each cell is decoded from its posterior mean, and no sample is drawn; leave it out, or give --n-samples S > 1", args.seed);
    }
    if let Some(l) = args.library_size {
        crate::analysis::impute::check_library_size(l)?;
    }
    crate::util::check_output(&args.out, &[&args.data], &[&args.run_dir])?;
    let o = open_run(&args.run_dir, &args.data)?;
    let transform_batch = batch_codes(&o.run.batch_levels, &args.transform_batch)?;
    let genes = match &args.genes {
        Some(p) => Some(read_name_list(p, &o.ds.gene_names, "gene")?),
        None => None,
    };
    if o.ds.expression.is_none() {
        anyhow::bail!("{}: no expression modality to normalize", o.ds.source);
    }
    let mut post = o.posterior()?;
    super::analysis_device(&mut post, device, precision, "normalize-expression")?;
    let opts = ExpressionOptions {
        genes,
        decode: DecodeOptions { transform_batch, n_samples: args.n_samples, seed: args.seed },
        block_cells: args.block_cells,
        library_size: args.library_size,
        compression: compression(args.gzip),
    };
    let uns = vec![("splicevi_run".to_string(), UnsValue::String(args.run_dir.display().to_string()))];
    let s = write_normalized_expression(&post, &args.out, &opts, uns)?;
    eprintln!("wrote {} ({} cells × {} genes)", args.out.display(), s.n_cells, s.n_cols);
    Ok(())
}
