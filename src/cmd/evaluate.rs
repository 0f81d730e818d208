//! `splicevi evaluate`: the masked-ATSE imputation protocol against the MeanBayes baseline and latent
//! metrics (model.md §8.1, §8.4), for a trained run directory or for a model trained here on the masked
//! data (so the dropped entries are truly held out) with the same options as `splicevi train`.
//! Which of the original's evaluation blocks this covers, and where it differs: docs/evaluate.md.

use super::train::{resolve, OptionFlags, TrainArgs};
use crate::analysis::differential::write_tsv;
use crate::analysis::evaluate::{evaluate_imputation, evaluate_latents, mask_atses_in_place, nan_warnings, render, unmask_atses, rows, rows_tsv, Ages, LatentOptions, Labels, TruthFilter};
use crate::analysis::impute::group_codes;
use crate::analysis::posterior::{align_batches, Posterior};
use crate::data::{load::load, DataOptions, Dataset};
use crate::model::{Params, SpliceVae, SplicingLoss};
use crate::train::trainer::{check_training_data, dims_of, load_model, read_run_config, RunConfig, Trainer};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
// (`--delta -0.1` reaches the range check instead of being read as a flag)
#[command(allow_negative_numbers = true)]
pub struct EvaluateArgs {
    /// RUN_DIR DATA, or with --train just DATA.
    #[arg(num_args = 1..=2, value_name = "RUN_DIR|DATA")]
    pub paths: Vec<PathBuf>,
    /// Train a model on the masked data first, with the training flags below (as `splicevi train`).
    #[arg(long)]
    pub train: bool,
    /// With --train: where the run directory goes (default: a temporary directory, removed afterwards).
    #[arg(long, requires = "train")]
    pub train_dir: Option<PathBuf>,
    /// With --train: option preset (default | paper | robust).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// With --train: TOML file with [model] and [train] tables.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// No per-epoch lines while training.
    #[arg(long)]
    pub quiet: bool,
    /// Output TSV (long format: section, subset, method, metric, value). Names holding a tab, a line
    /// break or `"` are quoted as pandas quotes them, here and in OUT.pairs.tsv.
    #[arg(long)]
    pub out: PathBuf,
    /// obs column for the silhouette score and the classifiers (latent metrics): categorical, text or
    /// integer-valued. Cells without a label (NaN, a missing category) are left out of these metrics,
    /// and classes of fewer than 5 cells out of the classifiers; stderr says how many and which.
    #[arg(long)]
    pub label: Option<String>,
    /// obs column of each cell's age (numbers; NaN: none): the held-out R² of a ridge regression of
    /// the age on the standardised latent, per latent and split (model.md §8.1: RidgeCV over alphas
    /// 10^-2..10^3, 5 folds, 80/20), and with --label per class of 25 or more aged cells. The
    /// authors keep ages 3, 18 and 24 only: give the others NaN to do the same.
    #[arg(long)]
    pub age: Option<String>,
    /// obs column scored within each group of --label as well (15-NN accuracy of the sub-label among the
    /// cells of one label, averaged weighted by group size), e.g. `--label cell_type --sublabel subtype`.
    #[arg(long, requires = "label")]
    pub sublabel: Option<String>,
    /// Also the original's `clustering` block (model.md §8.3), section `clustering`: per latent, Leiden
    /// on scanpy's neighbours graph (exact Euclidean kNN, --cluster-neighbors, UMAP connectivities) of
    /// the cells the latent metrics score (--max-cells-latent); the number of clusters, their
    /// modularity and, with --label, the clusters holding one class vs several; between latents, the
    /// per-cell same-cluster overlap and the AMI (docs/evaluate.md).
    #[arg(long)]
    pub clustering: bool,
    /// Leiden resolution of --clustering (the original: 1.0).
    #[arg(long, default_value_t = 1.0)]
    pub leiden_resolution: f64,
    /// Neighbours of --clustering's graph, the cell itself counted (scanpy's n_neighbors; the original: 15).
    #[arg(long, default_value_t = 15)]
    pub cluster_neighbors: usize,
    /// obs column of the original's `subcluster_split_eval` (model.md §8.3), section `subcluster_split`:
    /// within each class of 20 or more cells (or those of --subcluster-of), a seeded 50/50 split,
    /// KMeans on one half, a logistic regression fitted on the other half's predicted clusters, scored
    /// on the first half against its KMeans labels, per latent and --subcluster-k.
    #[arg(long, value_name = "COL")]
    pub subcluster_label: Option<String>,
    /// Classes of --subcluster-label to score (repeat the flag; default: every class of 20 or more cells).
    #[arg(long, value_name = "CLASS", requires = "subcluster_label")]
    pub subcluster_of: Vec<String>,
    /// KMeans cluster counts of --subcluster-label (comma-separated; each at least 2; a k of half a
    /// class's cells or more is skipped for that class).
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 4, 8, 16])]
    pub subcluster_k: Vec<usize>,
    /// Fraction of each cell's observed ATSEs masked (at least one).
    #[arg(long, default_value_t = 0.25)]
    pub mask_fraction: f64,
    /// Seed of the masking, subsampling and classifier split (and of the posterior samples with
    /// --n-samples).
    #[arg(long, default_value_t = 0)]
    pub eval_seed: u64,
    /// Posterior samples of z per cell behind the imputation's predictions, each decoded and averaged
    /// (model.md §14.2). 1 (the original, §8.4): decoded from the posterior mean. The latent metrics
    /// read the posterior means (§8.1) and take no samples.
    #[arg(long, default_value_t = 1)]
    pub n_samples: usize,
    /// Also score truths with PSI = 0 (the original scores PSI > 0 only).
    #[arg(long)]
    pub include_zero_truth: bool,
    /// Do not score truths with PSI = 1.
    #[arg(long)]
    pub exclude_psi_one: bool,
    /// Score only entries whose original ATSE count is at least this.
    #[arg(long, default_value_t = 0.0)]
    pub min_atse_count: f32,
    /// obs column giving MeanBayes per-group priors (default: one global prior).
    #[arg(long)]
    pub meanbayes_groupby: Option<String>,
    /// Latent metrics on at most this many cells (a seeded subsample).
    #[arg(long, default_value_t = 20_000)]
    pub max_cells_latent: usize,
    /// Neighbours of the k-NN classifier.
    #[arg(long, default_value_t = 15)]
    pub knn: usize,
    /// Cells per inference block.
    #[arg(long, default_value_t = 512)]
    pub block_cells: usize,
    /// Most (truth, prediction) rows in the dropped-entry pairs TSV beside --out (a seeded subsample above).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_pairs: usize,
    /// Do not draw the imputation density scatter (OUT.impute.png / .svg).
    #[arg(long)]
    pub no_plots: bool,
    #[command(flatten)]
    pub data_options: DataOptions,
    #[command(flatten)]
    pub options: OptionFlags,
}

fn is_empty(v: &serde_json::Value) -> bool {
    v.as_object().is_none_or(|o| o.is_empty())
}

/// The model and training options of `--train` as `splicevi train` resolves them (preset → --config →
/// flags), each checked.
fn train_options(args: &EvaluateArgs, data: &std::path::Path) -> Result<(crate::model::ModelConfig, crate::train::TrainConfig)> {
    let targs = TrainArgs {
        data: data.to_path_buf(),
        out: args.train_dir.clone().unwrap_or_default(),
        preset: Some(args.preset.clone()),
        config: args.config.clone(),
        resume: false,
        overwrite: false,
        quiet: args.quiet,
        no_plots: true,
        data_options: args.data_options.clone(),
        options: args.options.clone(),
    };
    resolve(&targs)
}

/// Train on the masked data as `splicevi train` would, with the options [`train_options`] resolved.
fn train_here(
    args: &EvaluateArgs,
    (model, train): (crate::model::ModelConfig, crate::train::TrainConfig),
    masked: &Dataset,
    dir: &std::path::Path,
    device: &crate::device::Device,
    precision: crate::cuda::gemm::GemmPrecision,
) -> Result<()> {
    let run = RunConfig::for_dataset(&args.preset, model, train, args.data_options.clone(), masked);
    let mut t = Trainer::new(masked, run, dir)?;
    t.verbose = !args.quiet;
    super::train::attach_device(&mut t, device, precision)?;
    eprintln!("training on the masked data ({} cells); run dir {}", masked.n_cells(), dir.display());
    t.fit()
}

pub fn run(args: EvaluateArgs, device: &crate::device::Device, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
    let (run_dir, data) = match (args.train, args.paths.as_slice()) {
        (false, [r, d]) => (Some(r.clone()), d.clone()),
        (true, [d]) => (None, d.clone()),
        (false, _) => bail!("evaluate: give RUN_DIR DATA, or --train DATA"),
        (true, _) => bail!("evaluate --train: give only DATA (the model is trained here)"),
    };
    if run_dir.is_some() && (args.data_options != DataOptions::default() || !is_empty(&args.options.model) || !is_empty(&args.options.train) || args.config.is_some()) {
        bail!("evaluate: data, model and training options come from the run directory's config.json; they are only accepted with --train");
    }
    // Every output and option is checked before the data is masked and a model trained or run: the
    // files beside --out too (found at the end they would leave a half-written set).
    let run_dirs: Vec<&std::path::Path> = run_dir.iter().map(|r| r.as_path()).collect();
    crate::util::check_output(&args.out, &[&data], &run_dirs)?;
    let pairs = crate::plot::with_ext(&crate::plot::prefix_beside(&args.out, "pairs"), "tsv");
    crate::util::check_output_named(&format!("{} (the pairs table beside --out)", pairs.display()), &pairs, &[&data], &run_dirs)?;
    let picture = crate::plot::prefix_beside(&args.out, "impute");
    if !args.no_plots {
        super::plot::check_picture_outputs(&picture, &[&data], &run_dirs)?;
    }
    if let Some(t) = &args.train_dir {
        check_train_dir(t)?;
    }
    anyhow::ensure!(args.knn >= 1, "--knn must be at least 1, got {}", args.knn);
    anyhow::ensure!(args.max_cells_latent >= 2, "--max-cells-latent must be at least 2 (the latent metrics compare cells), got {}", args.max_cells_latent);
    anyhow::ensure!(args.block_cells >= 1, "--block-cells must be at least 1, got {}", args.block_cells);
    anyhow::ensure!(args.n_samples >= 1, "--n-samples must be at least 1, got {}", args.n_samples);
    anyhow::ensure!(args.mask_fraction > 0.0 && args.mask_fraction <= 1.0, "--mask-fraction (the mask fraction) must be in (0, 1], got {}", args.mask_fraction);
    anyhow::ensure!(args.min_atse_count.is_finite() && args.min_atse_count >= 0.0, "--min-atse-count must be a finite number ≥ 0, got {}", args.min_atse_count);
    anyhow::ensure!(args.leiden_resolution.is_finite() && args.leiden_resolution > 0.0, "--leiden-resolution must be a finite number > 0, got {}", args.leiden_resolution);
    anyhow::ensure!(args.cluster_neighbors >= 2, "--cluster-neighbors must be at least 2 (the cell itself and one other), got {}", args.cluster_neighbors);
    anyhow::ensure!(args.subcluster_k.iter().all(|&k| k >= 2), "--subcluster-k: each k must be at least 2 (the logistic regression needs two clusters), got {:?}", args.subcluster_k);
    let train_opts = if run_dir.is_none() { Some(train_options(&args, &data)?) } else { None };
    let data_options = match &run_dir {
        Some(r) => read_run_config(r)?.data,
        None => args.data_options.clone(),
    };
    // One copy of the data: masked in place for training and imputation, unmasked again for the
    // latents (which are computed on every observed entry). The extra memory is the removed entries.
    let mut ds = match &run_dir {
        Some(r) => crate::analysis::posterior::load_for_run(&data, &data_options, r)?,
        None => load(&data, &data_options)?,
    };
    // The obs columns the options name, and the options the data bounds, before any training.
    let mb_groups = obs_codes(&ds, "--meanbayes-groupby", args.meanbayes_groupby.as_deref())?;
    let labels = args.label.as_deref().map(|c| Labels::of_column(&ds, "--label", c)).transpose()?;
    let sublabels = args.sublabel.as_deref().map(|c| Labels::of_column(&ds, "--sublabel", c)).transpose()?;
    let ages = args.age.as_deref().map(|c| Ages::of_column(&ds, "--age", c)).transpose()?;
    check_knn(args.knn, ds.n_cells().min(args.max_cells_latent))?;
    if args.clustering && args.cluster_neighbors > ds.n_cells().min(args.max_cells_latent) {
        bail!("--cluster-neighbors {}: --clustering scores {} cells; give at most that many neighbours", args.cluster_neighbors, ds.n_cells().min(args.max_cells_latent));
    }
    let subcluster = args.subcluster_label.as_deref().map(|c| Labels::of_column(&ds, "--subcluster-label", c)).transpose()?;
    let subcluster_of = match &subcluster {
        Some(l) => subcluster_classes(l, &args.subcluster_of)?,
        None => Vec::new(),
    };
    if let Some((model, train)) = &train_opts {
        check_training_data(model, train, &ds)?;
        model.validate(&dims_of(&ds))?;
    }
    // Nothing may read the placeholder counts of PSI-only data: the truth filter's ATSE count, and
    // the DM posterior mean evaluate scores for a run with a concentration (the original's default).
    if args.min_atse_count > 0.0 {
        ds.require_splicing_counts(&format!("--min-atse-count {}", args.min_atse_count), "leave --min-atse-count at 0 for PSI-only data")?;
    }
    if let Some(r) = &run_dir {
        let loss = read_run_config(r)?.model.splicing_loss_type;
        if matches!(loss, SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial) {
            ds.require_splicing_counts(
                &format!("the masked imputation of {} (trained with --splicing-loss-type {loss}) scores the DM posterior mean (c·p + k)/(c + n), which", r.display()),
                "evaluate it on data with the count layers, or evaluate a run trained with --splicing-loss-type bce (evaluate --train … --splicing-loss-type bce)",
            )?;
        }
    }
    let (source, nnz) = (ds.source.clone(), ds.splicing.nnz());
    let dropped = mask_atses_in_place(&mut ds, args.mask_fraction, args.eval_seed)?;
    eprintln!("masked {} of {} observed entries ({} of each cell's observed ATSEs, seed {})", dropped.len(), nnz, args.mask_fraction, args.eval_seed);
    let tmp;
    let dir = match (&run_dir, &args.train_dir) {
        (Some(r), _) => r.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => {
            tmp = tempfile::tempdir().context("creating a temporary run directory")?;
            tmp.path().to_path_buf()
        }
    };
    if let Some(opts) = train_opts {
        train_here(&args, opts, &ds, &dir, device, precision)?;
    }
    let run = read_run_config(&dir)?;
    align_batches(&mut ds, &run.batch_levels, &dir.display().to_string())?;
    let (_, model, params): (RunConfig, SpliceVae, Params<f32>) = load_model(&dir, &ds)?;
    let cell_rows = crate::analysis::posterior::weight_table_rows(&dir, &ds, &model)?;
    let filter = TruthFilter { include_zero: args.include_zero_truth, exclude_one: args.exclude_psi_one, min_atse_count: args.min_atse_count };
    let imp = {
        let mut post_masked = Posterior::new(&ds, &model, &params)?;
        post_masked.cell_rows = cell_rows.clone();
        super::analysis_device(&mut post_masked, device, precision, "evaluate")?;
        let decode = crate::analysis::posterior::DecodeOptions { transform_batch: vec![], n_samples: args.n_samples, seed: args.eval_seed };
        evaluate_imputation(&post_masked, &dropped, filter, mb_groups.as_deref(), &decode, args.block_cells)?
    };
    unmask_atses(&mut ds, &dropped, &source)?;
    drop(dropped);
    let mut post = Posterior::new(&ds, &model, &params)?;
    post.cell_rows = cell_rows;
    super::analysis_device(&mut post, device, precision, "evaluate")?;
    // §8.1 scores the train and test splits apart: the run's split, where it records one.
    let parts = match crate::train::trainer::read_run_split(&dir)? {
        Some(split) => {
            let (parts, line) = crate::analysis::evaluate::split_parts(&split, &ds);
            eprintln!("note: evaluate: {line}");
            Some(parts)
        }
        None => {
            eprintln!(
                "note: evaluate: {} does not record its train/validation split (it predates {}): the latent metrics score all cells together",
                dir.display(),
                crate::train::trainer::SPLIT_FILE
            );
            None
        }
    };
    let lat_opts = LatentOptions {
        labels: labels.as_ref(),
        ages: ages.as_ref(),
        parts: parts.as_deref(),
        max_cells: args.max_cells_latent,
        k: args.knn,
        seed: args.eval_seed,
        block_cells: args.block_cells,
    };
    let (lat, notes) = evaluate_latents(&post, &lat_opts)?;
    for n in notes {
        eprintln!("note: evaluate: {n}");
    }
    let mut table = rows(Some(&imp), &lat, args.label.as_deref(), args.knn);
    let mut extra = extra_latent_rows(&args, &post, labels.as_ref(), sublabels.as_ref(), &ds)?;
    extra.extend(cluster_rows(&args, &post, labels.as_ref(), subcluster.as_ref(), &subcluster_of)?);
    table.extend(extra.iter().cloned());
    // (an undefined metric stays nan in the table; the lines say which and why)
    for w in nan_warnings(&table, &filter) {
        eprintln!("warning: evaluate: {w}");
    }
    write_tsv(&args.out, &rows_tsv(&table))?;
    eprintln!("wrote {}", args.out.display());
    // The dropped entries' (truth, prediction) pairs, and their density scatter.
    write_tsv(&pairs, &imp.dropped.tsv(&ds.cell_names, &ds.splicing.junction_names, args.max_pairs, args.eval_seed))?;
    eprintln!("wrote {} ({} dropped entries scored)", pairs.display(), imp.dropped.truth.len());
    if !args.no_plots {
        super::plot::auto("imputation", crate::plot::impute::ImputeScatter::from_file(&pairs), &picture);
    }
    // (the table on stdout last: a reader that went away ends the command there, its files written)
    println!("{}", render(Some(&imp), &lat, args.label.as_deref(), args.knn));
    for r in &extra {
        println!("{:<11} {} = {:.4}", r.subset, r.metric, r.value);
    }
    Ok(())
}

/// Sub-label accuracy within each label group (`--sublabel`; on the cells with both a label and a
/// sub-label) and the k-NN batch entropy (mixing, when there is more than one batch) of each latent,
/// on the same cells as the other latent metrics.
fn extra_latent_rows(args: &EvaluateArgs, post: &Posterior, labels: Option<&Labels>, sub: Option<&Labels>, ds: &Dataset) -> Result<Vec<crate::analysis::evaluate::EvalRow>> {
    use crate::analysis::scorecard::{knn_accuracy_within, knn_batch_entropy};
    let batch = &ds.covariates.batch.codes;
    let n_batch = ds.covariates.batch.levels.len();
    if sub.is_none() && n_batch < 2 {
        return Ok(Vec::new());
    }
    let n = ds.n_cells();
    let cells = latent_cells(n, args);
    let (lat, dims) = post.latent_means(&cells, args.block_cells)?;
    let mut out = Vec::new();
    for (i, space) in ["joint", "expression", "splicing"].into_iter().enumerate() {
        let mut push = |metric: String, value: f64| {
            out.push(crate::analysis::evaluate::EvalRow { section: "latent".into(), subset: space.into(), method: "splicevi".into(), metric, value })
        };
        if let (Some(sub), Some(lab)) = (sub, labels) {
            let both: Vec<usize> = (0..cells.len()).filter(|&r| sub.of_cell[cells[r]].is_some() && lab.of_cell[cells[r]].is_some()).collect();
            let s: Vec<u32> = both.iter().map(|&r| sub.of_cell[cells[r]].unwrap()).collect();
            let l: Vec<u32> = both.iter().map(|&r| lab.of_cell[cells[r]].unwrap()).collect();
            let x: Vec<f32> = both.iter().flat_map(|&r| lat[i][r * dims[i]..(r + 1) * dims[i]].iter().copied()).collect();
            let v = knn_accuracy_within(&x, dims[i], &l, &s, args.knn, args.eval_seed);
            push(format!("knn{}_accuracy_{}_within_{}", args.knn, args.sublabel.as_deref().unwrap(), args.label.as_deref().unwrap()), v);
        }
        if n_batch > 1 && batch.len() == n {
            let b: Vec<u32> = cells.iter().map(|&c| batch[c]).collect();
            push(format!("knn{}_batch_entropy", args.knn), knn_batch_entropy(&lat[i], dims[i], &b, args.knn));
        }
    }
    Ok(out)
}

/// The cells the extra latent metrics score: all, or a seeded subsample of --max-cells-latent (sorted).
fn latent_cells(n: usize, args: &EvaluateArgs) -> Vec<usize> {
    let mut cells: Vec<usize> = (0..n).collect();
    if n > args.max_cells_latent {
        use rand::seq::SliceRandom;
        cells.shuffle(&mut crate::train::rng::stream(args.eval_seed, crate::train::rng::Purpose::Analysis, crate::analysis::posterior::tags::SUBSAMPLE, 0));
        cells.truncate(args.max_cells_latent);
        cells.sort_unstable();
    }
    cells
}

/// The `clustering` (--clustering) and `subcluster_split` (--subcluster-label) rows of each latent, on
/// the cells [`latent_cells`] chooses; their notes go to stderr.
fn cluster_rows(args: &EvaluateArgs, post: &Posterior, labels: Option<&Labels>, sub: Option<&Labels>, sub_of: &[u32]) -> Result<Vec<crate::analysis::evaluate::EvalRow>> {
    use crate::analysis::clustering::{clustering_rows, subcluster_rows, ClusterOptions};
    if !args.clustering && sub.is_none() {
        return Ok(Vec::new());
    }
    let cells = latent_cells(post.ds.n_cells(), args);
    let (lat, dims) = post.latent_means(&cells, args.block_cells)?;
    let mut out = Vec::new();
    if args.clustering {
        let opts = ClusterOptions { n_neighbors: args.cluster_neighbors, resolution: args.leiden_resolution, seed: args.eval_seed };
        let l: Option<Vec<Option<u32>>> = labels.map(|l| cells.iter().map(|&c| l.of_cell[c]).collect());
        let (rows, notes) = clustering_rows(&lat, &dims, labels.map(|x| x.column.as_str()).zip(l.as_deref()), &opts);
        notes.iter().for_each(|n| eprintln!("note: evaluate: {n}"));
        out.extend(rows);
    }
    if let Some(sub) = sub {
        let l: Vec<Option<u32>> = cells.iter().map(|&c| sub.of_cell[c]).collect();
        let (rows, notes) = subcluster_rows(&lat, &dims, &sub.column, &sub.classes, &l, sub_of, &args.subcluster_k, args.eval_seed);
        notes.iter().for_each(|n| eprintln!("note: evaluate: {n}"));
        out.extend(rows);
    }
    Ok(out)
}

/// The codes of the --subcluster-of classes in `labels` (an unknown name is an error listing the classes).
fn subcluster_classes(labels: &Labels, names: &[String]) -> Result<Vec<u32>> {
    names
        .iter()
        .map(|n| match labels.classes.iter().position(|c| c == n) {
            Some(i) => Ok(i as u32),
            None => bail!("--subcluster-of {n}: no class `{n}` in --subcluster-label {} (classes: {})", labels.column, labels.classes.join(", ")),
        })
        .collect()
}

/// The codes of the obs column `column` names (`flag` names the option in errors).
fn obs_codes(ds: &Dataset, flag: &str, column: Option<&str>) -> Result<Option<Vec<u32>>> {
    column.map(|c| group_codes(ds, c).with_context(|| format!("{flag} {c}"))).transpose()
}

/// The k-NN classifier scores `n` cells by 5-fold cross-validation: each cell's neighbours come from
/// the other folds, n − ⌈n/5⌉ cells at the fewest. A larger --knn would silently become a vote of
/// every one of them.
fn check_knn(k: usize, n: usize) -> Result<()> {
    let most = n - n.div_ceil(5);
    if k > most {
        bail!("--knn {k}: the latent metrics score {n} cells by 5-fold cross-validation, so a cell has at most {most} neighbours to vote; give --knn {most} or fewer");
    }
    Ok(())
}

/// `--train-dir` is written by the training: it must be a directory (or absent) that holds no run, in a
/// place that can be written.
fn check_train_dir(dir: &std::path::Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--train-dir {}: exists and is not a directory", dir.display());
    }
    if dir.join(crate::train::trainer::CONFIG_FILE).exists() {
        bail!("--train-dir {}: already holds a run (config.json); give a new or empty directory", dir.display());
    }
    let probe = dir.join(crate::train::trainer::CONFIG_FILE);
    crate::util::check_output_named(&format!("--train-dir {}", dir.display()), &probe, &[], &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_is_bounded_by_the_cells_of_the_other_folds() {
        // 200 cells: folds of 40, 160 neighbours to vote at most
        assert!(check_knn(160, 200).is_ok());
        let e = check_knn(161, 200).unwrap_err().to_string();
        assert!(e.contains("--knn 161") && e.contains("at most 160"), "{e}");
        assert!(check_knn(1, 2).is_ok() && check_knn(2, 2).is_err());
        // 7 cells: folds of 2, 2, 1, 1, 1 → 5 neighbours at the fewest
        assert!(check_knn(5, 7).is_ok() && check_knn(6, 7).is_err());
    }
}
