//! `splicevi diff-splicing`: differential splicing between groups of cells (model.md §7.8) into a TSV.

use crate::analysis::differential::{comparisons, write_tsv, ChangeOptions, TestMode};
use crate::analysis::ds::{differential_splicing, ds_tsv};
use crate::analysis::posterior::{batch_codes, open_run, SplicingFn};
use crate::train::presets::DsDefaults;
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Group and test options shared by diff-splicing and diff-expression.
#[derive(Args, Debug, Clone)]
pub struct GroupArgs {
    /// obs column defining the groups (categorical, text or integer-valued; a group of a numeric
    /// column is named by its value, `214` or `214.0`).
    #[arg(long)]
    pub groupby: String,
    /// Group 1 (default: every group in turn, each against --group2 or the rest; at most 100 groups
    /// without it).
    #[arg(long)]
    pub group1: Option<String>,
    /// Group 2 (default: every cell not in group 1, named `Rest` in the table, or `Rest (all other
    /// cells)` when the column has a group called Rest). Without --group1: every other group in turn
    /// against this one.
    #[arg(long)]
    pub group2: Option<String>,
    /// Posterior-expected FDR target of the calls, in [0, 1] (1 calls every tested feature).
    #[arg(long, default_value_t = 0.05)]
    pub fdr: f64,
    /// Decode every sample under each batch in turn (pairs formed within a batch) instead of its own
    /// batch. `--batch-correction` alone means true. Default: true for diff-splicing on runs trained
    /// with `robust` (when they have more than one batch), false otherwise.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub batch_correction: Option<bool>,
    /// With batch correction (on by default on robust runs): the batches group 1 is decoded under (default: all).
    #[arg(long, num_args = 1..)]
    pub batchid1: Vec<String>,
    /// With batch correction (on by default on robust runs): the batches group 2 is decoded under (default: all).
    #[arg(long, num_args = 1..)]
    pub batchid2: Vec<String>,
    /// Posterior samples per group (the original's 5000).
    #[arg(long, default_value_t = 5000)]
    pub n_samples_overall: usize,
    /// Posterior samples of z per drawn cell, each decoded and averaged (model.md §14.2). 1 (the
    /// original): each drawn cell is decoded from its posterior mean (use_z_mean=True, §12.16).
    #[arg(long, default_value_t = 1)]
    pub n_samples: usize,
    /// Seed of the cell sampling (and of the posterior samples with --n-samples).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cells decoded per block.
    #[arg(long, default_value_t = 512)]
    pub block_cells: usize,
    /// How P(change) is formed from the pairs' changes: three = max(P(r ≥ δ), P(r < −δ)) (the
    /// original), two = P(|r| ≥ δ) (scvi-tools' default). Default: two for diff-splicing on runs
    /// trained with `robust`, three otherwise.
    #[arg(long, value_enum)]
    pub test_mode: Option<TestMode>,
    /// scvi's filter_outlier_cells: before sampling, drop each group's cells outside a robust
    /// (MCD) elliptic envelope of their joint-latent means, 10% of the group. Default: true for
    /// diff-splicing on runs trained with `robust`, false otherwise.
    #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub filter_outlier_cells: Option<bool>,
    /// Output TSV. A field holding a tab, a line break or `"` (a group, junction or gene name) is
    /// quoted as pandas quotes it, so `pd.read_csv(path, sep="\t")` reads the names unchanged.
    #[arg(long)]
    pub out: PathBuf,
}

impl GroupArgs {
    /// The test's options: the flags given, `base` for the rest.
    pub fn change_options(&self, delta: f64, levels: &[String], base: &DsDefaults) -> Result<ChangeOptions> {
        let ids = |v: &[String]| -> Result<Option<Vec<u32>>> { if v.is_empty() { Ok(None) } else { batch_codes(levels, v).map(Some) } };
        if self.batch_correction == Some(true) && levels.len() <= 1 {
            anyhow::bail!("--batch-correction true has no effect here: the run was trained with one batch (no --batch-key, or one value); leave it out");
        }
        let o = ChangeOptions {
            delta,
            fdr: self.fdr,
            n_samples_overall: self.n_samples_overall,
            n_samples: self.n_samples,
            batch_correction: self.batch_correction.unwrap_or(base.batch_correction && levels.len() > 1),
            batchid1: ids(&self.batchid1)?,
            batchid2: ids(&self.batchid2)?,
            seed: self.seed,
            block_cells: self.block_cells,
            min_obs_cells: 0,
            test_mode: self.test_mode.unwrap_or(base.test_mode),
            filter_outlier_cells: self.filter_outlier_cells.unwrap_or(base.filter_outlier_cells),
            max_emp_pvalue: None,
        };
        o.validate()?;
        Ok(o)
    }
}

#[derive(Args, Debug)]
// (`--delta -0.1` reaches the range check instead of being read as a flag)
#[command(allow_negative_numbers = true)]
pub struct DiffSplicingArgs {
    /// Run directory written by `splicevi train`.
    pub run_dir: PathBuf,
    /// Data (same genes and junctions as the training data).
    pub data: PathBuf,
    #[command(flatten)]
    pub groups: GroupArgs,
    /// Minimum |ΔPSI| that counts as differential.
    #[arg(long, default_value_t = 0.1)]
    pub delta: f64,
    /// PSI the test reads: dm-posterior (the original's default) or decoder.
    #[arg(long, value_enum, default_value = "dm-posterior")]
    pub method: SplicingFn,
    /// Test only junctions observed in at least this many cells of each group (others: is_ds_fdr
    /// False, outside the FDR set). 0 = all, the original. Default: 10 for runs trained with the
    /// `robust` preset, 0 (the original's test) otherwise.
    #[arg(long)]
    pub min_obs_cells: Option<u64>,
    /// Test only junctions whose observed PSI differ between the groups by Welch's t-test with a
    /// p-value below this (the `emp_pvalue` column): the counts must show the change the model
    /// reports. 1 = no such requirement (the original). Default: 0.05 for runs trained with
    /// `robust`, 1 otherwise.
    #[arg(long)]
    pub max_emp_pvalue: Option<f64>,
    /// Do not draw the volcano plot (OUT without .tsv, then .volcano.png / .svg).
    #[arg(long)]
    pub no_plots: bool,
}

pub fn run(args: DiffSplicingArgs, device: &crate::device::Device, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
    // ΔPSI lies in [-1, 1]: a δ of 1 or more can call nothing. (diff-expression's δ, a log fold
    // change, has no such bound: ChangeOptions::validate checks only δ ≥ 0.)
    anyhow::ensure!(args.delta < 1.0 || args.delta.is_nan(), "--delta (the minimum |ΔPSI|) must be below 1, got {}: |ΔPSI| is at most 1", args.delta);
    if let Some(p) = args.max_emp_pvalue {
        anyhow::ensure!(p > 0.0 && p <= 1.0, "--max-emp-pvalue (the empirical p-value bound) must be in (0, 1], got {p}");
    }
    crate::util::check_output(&args.groups.out, &[&args.data], &[&args.run_dir])?;
    if !args.no_plots {
        super::plot::check_picture_outputs(&crate::plot::prefix_beside(&args.groups.out, "volcano"), &[&args.data], &[&args.run_dir])?;
    }
    let o = open_run(&args.run_dir, &args.data)?;
    if args.method == SplicingFn::DmPosterior {
        crate::analysis::posterior::require_counts_for_dm_posterior(&o.ds)?;
    }
    let base = crate::train::presets::ds_defaults(&o.run.preset);
    let mut opts = args.groups.change_options(args.delta, &o.run.batch_levels, &base)?;
    opts.min_obs_cells = args.min_obs_cells.unwrap_or(base.min_obs_cells);
    opts.max_emp_pvalue = match args.max_emp_pvalue {
        Some(p) if p == 1.0 => None, // (1 filters nothing)
        Some(p) => Some(p),
        None => base.max_emp_pvalue,
    };
    opts.validate()?;
    if base != crate::train::presets::ORIGINAL_DS {
        eprintln!(
            "the {} preset's test (flags override): --batch-correction {} --min-obs-cells {} --test-mode {} --filter-outlier-cells {} --max-emp-pvalue {}",
            o.run.preset,
            opts.batch_correction,
            opts.min_obs_cells,
            opts.test_mode.to_possible_value().expect("value").get_name(),
            opts.filter_outlier_cells,
            opts.max_emp_pvalue.unwrap_or(1.0)
        );
    }
    let cmps = comparisons(&o.ds, &args.groups.groupby, args.groups.group1.as_deref(), args.groups.group2.as_deref())?;
    let mut post = o.posterior()?;
    super::analysis_device(&mut post, device, precision, "diff-splicing")?;
    let mut results = Vec::new();
    for c in &cmps {
        // (one key for every comparison: a group's numbers are those of its own --group1 run, whatever
        // the order of the groupby column's categories; the comparisons sample different cells)
        let r = differential_splicing(&post, c, args.method, &opts, 0)?;
        let sampled = if opts.filter_outlier_cells { format!(", {} vs {} sampled after the outlier filter", r.n_sampled_cells.0, r.n_sampled_cells.1) } else { String::new() };
        eprintln!(
            "{} vs {} ({} vs {} cells{sampled}): {} of {} junctions called at FDR {}",
            c.group1,
            c.group2,
            c.idx1.len(),
            c.idx2.len(),
            r.is_ds_fdr.iter().filter(|&&b| b).count(),
            r.is_ds_fdr.len(),
            opts.fdr
        );
        results.push(r);
    }
    write_tsv(&args.groups.out, &ds_tsv(&results))?;
    eprintln!("wrote {}", args.groups.out.display());
    if !args.no_plots {
        let out = &args.groups.out;
        super::plot::auto("volcano", crate::plot::volcano::Volcano::from_file(out, None), &crate::plot::prefix_beside(out, "volcano"));
    }
    Ok(())
}
