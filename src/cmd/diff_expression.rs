//! `splicevi diff-expression`: differential expression between groups of cells (model.md §7.7) into a TSV.

use super::diff_splicing::GroupArgs;
use crate::analysis::de::{de_tsv, differential_expression};
use crate::analysis::differential::{comparisons, write_tsv};
use crate::analysis::posterior::open_run;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
// (`--delta -0.1` reaches the range check instead of being read as a flag)
#[command(allow_negative_numbers = true)]
pub struct DiffExpressionArgs {
    /// Run directory written by `splicevi train`.
    pub run_dir: PathBuf,
    /// Data (same genes and junctions as the training data).
    pub data: PathBuf,
    #[command(flatten)]
    pub groups: GroupArgs,
    /// Minimum |log2 fold change| that counts as differential.
    #[arg(long, default_value_t = 0.25)]
    pub delta: f64,
}

pub fn run(args: DiffExpressionArgs, device: &crate::device::Device, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
    crate::util::check_output(&args.groups.out, &[&args.data], &[&args.run_dir])?;
    let o = open_run(&args.run_dir, &args.data)?;
    // Differential expression keeps the original's test whatever the preset (flags still apply).
    let opts = args.groups.change_options(args.delta, &o.run.batch_levels, &crate::train::presets::ORIGINAL_DS)?;
    let cmps = comparisons(&o.ds, &args.groups.groupby, args.groups.group1.as_deref(), args.groups.group2.as_deref())?;
    let mut post = o.posterior()?;
    super::analysis_device(&mut post, device, precision, "diff-expression")?;
    let mut results = Vec::new();
    for c in &cmps {
        // (one key for every comparison, as diff-splicing: a group's numbers do not depend on its place)
        let r = differential_expression(&post, c, &opts, 0)?;
        eprintln!(
            "{} vs {} ({} vs {} cells): {} of {} genes called at FDR {}",
            c.group1,
            c.group2,
            c.idx1.len(),
            c.idx2.len(),
            r.is_de_fdr.iter().filter(|&&b| b).count(),
            r.is_de_fdr.len(),
            opts.fdr
        );
        results.push(r);
    }
    write_tsv(&args.groups.out, &de_tsv(&results))?;
    eprintln!("wrote {}", args.groups.out.display());
    Ok(())
}
