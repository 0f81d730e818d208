//! `splicevi evaluate`: the masked-ATSE imputation protocol (or the resampled-reads one, and
//! `test_impute`: analysis::resample) against the MeanBayes baseline and latent metrics (model.md
//! §8.1, §8.4), and opt-in the cross-fold classification (§8.2, analysis::crossfold) and clustering
//! (§8.3, analysis::clustering), for a trained run directory or for a model trained here on the masked
//! data (so the dropped entries are truly held out) with the same options as `splicevi train`.
//! Which of the original's evaluation blocks this covers, and where it differs: docs/evaluate.md.

use super::train::{resolve, OptionFlags, TrainArgs};
use crate::analysis::differential::write_tsv;
use crate::analysis::evaluate::{
    evaluate_imputation_with, evaluate_latent_sample, imputation_nan_warnings, imputation_rows, latent_nan_warnings, mask_atses_in_place, render, rows, rows_tsv, unmask_atses, Ages, LatentOptions, Labels, Truths,
    TruthFilter, LatentSample,
};
use crate::analysis::resample::{original_entries, read_resampled_truth, resample_splicing, split_truths, top_variable_junctions, ResampledLayers, VariableJunctions, RESAMPLED_MIN_ATSE_COUNT, RESAMPLED_TOP_JUNCTIONS};
use crate::analysis::impute::group_codes;
use crate::analysis::posterior::{align_covariates, Posterior};
use crate::data::{load::load, DataOptions, Dataset, Splicing};
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
    /// Train a model on the masked (or down-sampled: --resample-fraction, --resampled-input) data
    /// first, with the training flags below (as `splicevi train`).
    #[arg(long)]
    pub train: bool,
    /// With --train: where the run directory goes (default: a temporary directory, removed afterwards).
    #[arg(long, requires = "train")]
    pub train_dir: Option<PathBuf>,
    /// With --train: option preset (default | paper | robust).
    #[arg(long, default_value = "default", requires = "train")]
    pub preset: String,
    /// With --train: TOML file with [model] and [train] tables.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// With --train: no per-epoch lines while training.
    #[arg(long, requires = "train")]
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
    /// obs columns to classify by 5-fold cross-validation on each latent (model.md §8.2; comma-separated
    /// or repeated): StratifiedKFold, StandardScaler + LogisticRegression(max_iter=2000,
    /// class_weight="balanced") and a RandomForest(--cross-fold-trees, class_weight="balanced_subsample"),
    /// with a Dummy(prior) baseline; accuracy and weighted precision / recall / F1 as mean and sd (ddof 0)
    /// over the folds, per-class scores of the out-of-fold predictions, and paired t-tests of the fold
    /// scores between the latents. On the cells of the other latent metrics (--max-cells-latent); cells
    /// without a label and classes of fewer than 5 cells are left out (stderr names them). Rows of
    /// section `cross_fold`; folds, trees and permutation seeded by --eval-seed.
    #[arg(long, value_delimiter = ',', value_name = "COL[,COL...]")]
    pub cross_fold: Vec<String>,
    /// With --cross-fold: also the label-permutation baseline (the labels shuffled, seeded, then the
    /// same folds-and-classifiers pipeline; methods `permuted_logistic`, `permuted_random_forest`). It
    /// doubles the cross-fold time.
    #[arg(long)]
    pub cross_fold_permuted: bool,
    /// With --cross-fold: trees of the random forest (§8.2: 300).
    #[arg(long, default_value_t = crate::analysis::crossfold::N_TREES)]
    pub cross_fold_trees: usize,
    /// Also the original's `clustering` block (model.md §8.3), section `clustering`: per latent, Leiden
    /// on scanpy's neighbours graph (exact Euclidean kNN, --cluster-neighbors, UMAP connectivities) of
    /// the cells the latent metrics score (--max-cells-latent); the number of clusters, their
    /// modularity and, with --label, the clusters holding one class vs several; between latents, the
    /// per-cell same-cluster overlap and the AMI (docs/evaluate.md).
    #[arg(long)]
    pub clustering: bool,
    /// Leiden resolution of --clustering (the original: 1.0).
    #[arg(long, default_value_t = 1.0, requires = "clustering")]
    pub leiden_resolution: f64,
    /// Neighbours of --clustering's graph, the cell itself counted (scanpy's n_neighbors; the original: 15).
    #[arg(long, default_value_t = 15, requires = "clustering")]
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
    #[arg(long, value_delimiter = ',', default_values_t = [2usize, 4, 8, 16], requires = "subcluster_label")]
    pub subcluster_k: Vec<usize>,
    /// Fraction of each cell's observed ATSEs masked (at least one). Not with --resample-fraction or
    /// --resampled-input (the down-sampling replaces the masking).
    #[arg(long, default_value_t = 0.25, conflicts_with_all = ["resample_fraction", "resampled_input"])]
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
    /// Also score truths with PSI = 0 (the original scores PSI > 0 only). Not with --resampled-input
    /// (its original-PSI layer stores the entries with PSI > 0 only).
    #[arg(long)]
    pub include_zero_truth: bool,
    /// Do not score truths with PSI = 1 (`--exclude-psi-one=false`: do score them). Default: scored,
    /// except in the resampled-reads block (the authors' setting there).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub exclude_psi_one: Option<bool>,
    /// Score only entries whose original ATSE count is at least this. Default: 0, except 30 in the
    /// resampled-reads block (the authors' setting there; read from the original counts).
    #[arg(long)]
    pub min_atse_count: Option<f32>,
    /// Also score the model on the data as given (model.md §8.4's `test_impute`, the "upper bound"):
    /// the DM posterior mean and the decoder PSI against the PSI of the observed entries (section
    /// `test_impute`, subset `observed`), with the truth filters above. Not with --resampled-input
    /// (the file holds the down-sampled data): run it on the unmasked file.
    #[arg(long)]
    pub test_impute: bool,
    /// The resampled-reads protocol (model.md §8.4, the authors' current setting) instead of the
    /// masked-ATSE one: remove this fraction of each cell's reads (each read kept with probability
    /// 1 − F, seeded by --eval-seed; an ATSE left with no read becomes unobserved), predict on (and
    /// with --train, train on) the down-sampled data, and score against the original PSI (section
    /// `resampled`: subsets dropped, observed, all).
    #[arg(long, conflicts_with = "resampled_input")]
    pub resample_fraction: Option<f64>,
    /// DATA is an authors' resampled file (`RESAMPLED_*_PERCENT_…`): its usual layers hold the
    /// down-sampled data, --original-psi-layer the truth; scored as --resample-fraction's data.
    #[arg(long)]
    pub resampled_input: bool,
    /// With --resampled-input: the layer of the original PSI (the truth).
    #[arg(long, default_value = "junc_ratio_original", requires = "resampled_input")]
    pub original_psi_layer: String,
    /// With --resampled-input: the layer of the original ATSE counts (read by --min-atse-count).
    #[arg(long, default_value = "cell_by_cluster_matrix_original", requires = "resampled_input")]
    pub original_atse_counts_layer: String,
    /// Score only the N junctions of largest PSI variance over the cells where their PSI > 0 in the
    /// unmasked data (ties to the lower junction index); 0: every junction. Default: every junction,
    /// except 10000 in the resampled-reads block (the authors' setting there).
    #[arg(long, value_name = "N")]
    pub top_variable_junctions: Option<usize>,
    /// With the top variable junctions: also score every other junction of their ATSEs.
    #[arg(long)]
    pub expand_variable_junctions: bool,
    /// obs column giving MeanBayes per-group priors (default: one global prior).
    #[arg(long)]
    pub meanbayes_groupby: Option<String>,
    /// Latent metrics on at most this many cells (a seeded subsample).
    #[arg(long, default_value_t = 20_000)]
    pub max_cells_latent: usize,
    /// Neighbours of the k-NN classifier.
    #[arg(long, default_value_t = DEFAULT_KNN)]
    pub knn: usize,
    /// Cells per inference block.
    #[arg(long, default_value_t = 512)]
    pub block_cells: usize,
    /// Most (truth, prediction) rows in the dropped-entry pairs TSV beside --out (a seeded subsample above).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_pairs: usize,
    /// Draw no picture: neither the imputation density scatter (OUT.impute.png / .svg) nor, with --age,
    /// the age R² heatmap (OUT.age_r2.png / .svg).
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
    what: &str,
    dir: &std::path::Path,
    device: &crate::device::Device,
    precision: crate::cuda::gemm::GemmPrecision,
) -> Result<()> {
    let run = RunConfig::for_dataset(&args.preset, model, train, args.data_options.clone(), masked);
    let mut t = Trainer::new(masked, run, dir)?;
    t.verbose = !args.quiet;
    super::train::attach_device(&mut t, device, precision)?;
    eprintln!("training on the {what} data ({} cells); run dir {}", masked.n_cells(), dir.display());
    t.fit()
}

pub fn run(args: EvaluateArgs, device: &crate::device::Device, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
    let (run_dir, data) = match (args.train, args.paths.as_slice()) {
        (false, [r, d]) => (Some(r.clone()), d.clone()),
        (true, [d]) => (None, d.clone()),
        (false, p) => bail!("evaluate: give RUN_DIR DATA, or --train DATA (got {}){}", paths_said(p), stray_value_hint(p)),
        (true, p) => bail!("evaluate --train: give only DATA (the model is trained here; got {}){}", paths_said(p), stray_value_hint(p)),
    };
    if run_dir.is_some() && (args.data_options != DataOptions::default() || !is_empty(&args.options.model) || !is_empty(&args.options.train) || args.config.is_some()) {
        bail!("evaluate: data, model and training options come from the run directory's config.json; they are only accepted with --train");
    }
    // Every output and option is checked before the data is masked and a model trained or run: the
    // files beside --out too (found at the end they would leave a half-written set).
    let run_dirs: Vec<&std::path::Path> = run_dir.iter().map(|r| r.as_path()).collect();
    let pairs = crate::plot::with_ext(&crate::plot::prefix_beside(&args.out, "pairs"), "tsv");
    let picture = crate::plot::prefix_beside(&args.out, "impute");
    // (the age R² heatmap only with --age: without it the table has no age rows to draw)
    let age_picture = args.age.as_ref().map(|_| crate::plot::prefix_beside(&args.out, "age_r2"));
    let mut outputs = vec![(format!("--out {}", args.out.display()), args.out.clone()), (format!("{} (the pairs table beside --out)", pairs.display()), pairs.clone())];
    if !args.no_plots {
        outputs.extend(std::iter::once(&picture).chain(age_picture.iter()).flat_map(|p| super::plot::picture_outputs(p)));
    }
    for (label, f) in &outputs {
        crate::util::check_output_named(label, f, &[&data], &run_dirs)?;
    }
    if let Some(t) = &args.train_dir {
        check_train_dir(t)?;
        // The kept run and the outputs may not overlap: an output inside it would replace one of its
        // files (config.json, metrics.tsv), and an output's path as the run directory fails after training.
        check_train_dir_apart(t, &outputs)?;
    }
    anyhow::ensure!(args.knn >= 1, "--knn must be at least 1, got {}", args.knn);
    anyhow::ensure!(args.max_cells_latent >= 2, "--max-cells-latent must be at least 2 (the latent metrics compare cells), got {}", args.max_cells_latent);
    anyhow::ensure!(args.block_cells >= 1, "--block-cells must be at least 1, got {}", args.block_cells);
    anyhow::ensure!(args.n_samples >= 1, "--n-samples must be at least 1, got {}", args.n_samples);
    anyhow::ensure!(args.cross_fold_trees >= 1, "--cross-fold-trees must be at least 1, got {}", args.cross_fold_trees);
    if args.cross_fold.is_empty() && (args.cross_fold_permuted || args.cross_fold_trees != crate::analysis::crossfold::N_TREES) {
        bail!("--cross-fold-permuted and --cross-fold-trees go with --cross-fold COL");
    }
    if let Some(c) = args.cross_fold.iter().enumerate().find_map(|(i, c)| args.cross_fold[..i].contains(c).then_some(c)) {
        bail!("--cross-fold names `{c}` twice");
    }
    anyhow::ensure!(args.mask_fraction > 0.0 && args.mask_fraction <= 1.0, "--mask-fraction (the mask fraction) must be in (0, 1], got {}", args.mask_fraction);
    if let Some(m) = args.min_atse_count {
        anyhow::ensure!(m.is_finite() && m >= 0.0, "--min-atse-count must be a finite number ≥ 0, got {m}");
    }
    if let Some(f) = args.resample_fraction {
        anyhow::ensure!(f > 0.0 && f < 1.0, "--resample-fraction (the share of each cell's reads removed) must be in (0, 1), got {f}");
    }
    if args.resampled_input && args.test_impute {
        bail!("--test-impute scores the unmasked data, and a --resampled-input file holds the down-sampled reads (its original counts are not all there): run `evaluate --test-impute` on the unmasked file");
    }
    if args.resampled_input && args.include_zero_truth {
        bail!("--include-zero-truth: a --resampled-input file's original PSI layer ({}) stores the entries with PSI > 0 only (the authors' truths), so a PSI of 0 cannot be told from no observation", args.original_psi_layer);
    }
    // The truths each imputation block scores: the masked block and test_impute by the flags (the
    // original's defaults), the resampled-reads block with the authors' filters unless a flag says otherwise.
    let resampling = args.resample_fraction.is_some() || args.resampled_input;
    let base_filter = TruthFilter { include_zero: args.include_zero_truth, exclude_one: args.exclude_psi_one.unwrap_or(false), min_atse_count: args.min_atse_count.unwrap_or(0.0) };
    let (imp_filter, imp_top) = if resampling {
        (
            TruthFilter { exclude_one: args.exclude_psi_one.unwrap_or(true), min_atse_count: args.min_atse_count.unwrap_or(RESAMPLED_MIN_ATSE_COUNT), ..base_filter },
            args.top_variable_junctions.unwrap_or(RESAMPLED_TOP_JUNCTIONS),
        )
    } else {
        (base_filter, args.top_variable_junctions.unwrap_or(0))
    };
    let ti_top = args.top_variable_junctions.unwrap_or(0);
    let section = if resampling { "resampled" } else { "imputation" };
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
    let targets: Vec<Labels> = args.cross_fold.iter().map(|c| Labels::of_column(&ds, "--cross-fold", c)).collect::<Result<_>>()?;
    check_knn(args.knn, ds.n_cells().min(args.max_cells_latent))?;
    if args.knn != DEFAULT_KNN && args.label.is_none() && ds.covariates.batch.levels.len() <= 1 {
        bail!("--knn {} has no effect here: the k-NN metrics score the --label classes (none given) and the batch mixing (one batch here); leave it out", args.knn);
    }
    if args.expand_variable_junctions && imp_top == 0 && ti_top == 0 {
        bail!("--expand-variable-junctions widens the --top-variable-junctions selection, and none is made here (give --top-variable-junctions N)");
    }
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
    // (a resampled file's count filter reads its original-counts layer)
    if args.resample_fraction.is_some() {
        ds.require_splicing_counts("--resample-fraction (read down-sampling)", "down-sample data with the count layers")?;
    } else if !args.resampled_input && base_filter.min_atse_count > 0.0 {
        ds.require_splicing_counts(&format!("--min-atse-count {}", base_filter.min_atse_count), "leave --min-atse-count at 0 for PSI-only data")?;
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
    // The junctions scored (top variable ones, from the unmasked data) and the truths: the masked
    // ATSEs, or the original PSI of the entries the down-sampled data no longer / still observes.
    let variable = |entries: &mut dyn Iterator<Item = (u32, f32)>, top: usize, block: &str| -> Option<VariableJunctions> {
        if top == 0 {
            return None;
        }
        let e: Vec<(u32, f32)> = entries.collect();
        let v = top_variable_junctions(e.iter().copied(), ds.n_junctions(), top, args.expand_variable_junctions.then_some(&ds.splicing.junc2atse[..]));
        eprintln!(
            "note: evaluate: {block} scores the {} junctions of largest PSI variance (top {top} of the {} with a variance > 0 over the cells where PSI > 0){}",
            v.seeds,
            v.with_variance,
            if args.expand_variable_junctions { format!(", {} with the other junctions of their ATSEs", v.scored) } else { String::new() }
        );
        Some(v)
    };
    let all_entries = |s: &Splicing| -> Vec<(u32, f32)> { s.junction.iter().copied().zip(s.psi.iter().copied()).collect() };
    let ti_hvj = if args.test_impute { variable(&mut all_entries(&ds.splicing).into_iter(), ti_top, "test_impute") } else { None };
    let (dropped, observed_truth, original_splicing, imp_hvj) = if let Some(f) = args.resample_fraction {
        let hvj = variable(&mut all_entries(&ds.splicing).into_iter(), imp_top, section);
        let down = resample_splicing(&ds.splicing, f, args.eval_seed)?;
        let (d, o) = split_truths(&original_entries(&ds.splicing), &down)?;
        eprintln!(
            "resampled: removed {f} of each cell's reads (seed {}): {} of {nnz} observed entries are no longer observed, {} still are",
            args.eval_seed,
            d.len(),
            o.len()
        );
        let original = std::mem::replace(&mut ds.splicing, down);
        ds.source = format!("{source} (resampled: {f} of each cell's reads removed, seed {})", args.eval_seed);
        (d, Some(o), Some(original), hvj)
    } else if args.resampled_input {
        let layers = ResampledLayers { psi: args.original_psi_layer.clone(), atse_counts: args.original_atse_counts_layer.clone() };
        let (truth, line) = read_resampled_truth(&data, &data_options, &ds, &layers, imp_filter.min_atse_count > 0.0)?;
        eprintln!("note: evaluate: {line}");
        // (the authors' variable junctions are those of the unmasked test file: its PSI is this truth)
        let hvj = variable(&mut truth.iter().map(|e| (e.junction, e.psi)), imp_top, section);
        let (d, o) = split_truths(&truth, &ds.splicing)?;
        eprintln!("{}: {} of the {} truths are no longer observed, {} still are", data.display(), d.len(), truth.len(), o.len());
        (d, Some(o), None, hvj)
    } else {
        let hvj = variable(&mut all_entries(&ds.splicing).into_iter(), imp_top, section);
        let dropped = mask_atses_in_place(&mut ds, args.mask_fraction, args.eval_seed)?;
        eprintln!("masked {} of {} observed entries ({} of each cell's observed ATSEs, seed {})", dropped.len(), nnz, args.mask_fraction, args.eval_seed);
        (dropped, None, None, hvj)
    };
    let (tmp, _tmp_registered);
    let dir = match (&run_dir, &args.train_dir) {
        (Some(r), _) => r.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => {
            tmp = tempfile::tempdir().context("creating a temporary run directory")?;
            // (a signal removes it too: it ends the process before the TempDir's drop)
            _tmp_registered = crate::util::Registered::temp_dir(tmp.path());
            tmp.path().to_path_buf()
        }
    };
    if let Some(opts) = train_opts {
        train_here(&args, opts, &ds, if resampling { "down-sampled" } else { "masked" }, &dir, device, precision)?;
    }
    let run = read_run_config(&dir)?;
    align_covariates(&mut ds, &run, &dir)?;
    let (_, model, params): (RunConfig, SpliceVae, Params<f32>) = load_model(&dir, &ds)?;
    let cell_rows = crate::analysis::posterior::weight_table_rows(&dir, &ds, &model)?;
    let decode = crate::analysis::posterior::DecodeOptions { transform_batch: vec![], n_samples: args.n_samples, seed: args.eval_seed };
    let imp = {
        let mut post_masked = Posterior::new(&ds, &model, &params)?;
        post_masked.cell_rows = cell_rows.clone();
        super::analysis_device(&mut post_masked, device, precision, "evaluate")?;
        let truths = Truths { dropped: &dropped, observed: observed_truth.as_deref(), junctions: imp_hvj.as_ref().map(|v| &v.keep[..]) };
        evaluate_imputation_with(&post_masked, &truths, imp_filter, mb_groups.as_deref(), &decode, args.block_cells)?
    };
    // The latents (and test_impute) read the data as given: unmasked, or the reads before the
    // down-sampling; a resampled file has only its down-sampled reads.
    if let Some(original) = original_splicing {
        ds.splicing = original;
        ds.source = source.clone();
    } else if args.resampled_input {
        eprintln!("note: evaluate: the latent metrics read {} as given, its down-sampled reads", data.display());
    } else {
        unmask_atses(&mut ds, &dropped, &source)?;
    }
    drop((dropped, observed_truth));
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
    // The latent means of the cells scored, encoded once for §8.1's metrics and the blocks below.
    let sample = LatentSample::of(&post, args.max_cells_latent, args.eval_seed, args.block_cells)?;
    let (lat, notes) = evaluate_latent_sample(&sample, &lat_opts);
    for n in notes {
        eprintln!("note: evaluate: {n}");
    }
    // test_impute (§8.4, the "upper bound"): the observed entries of the data as given.
    let ti = if args.test_impute {
        let truths = Truths { dropped: &[], observed: None, junctions: ti_hvj.as_ref().map(|v| &v.keep[..]) };
        let mut r = evaluate_imputation_with(&post, &truths, base_filter, None, &decode, args.block_cells)?;
        r.results.retain(|(subset, _, _)| subset == "observed");
        Some(r)
    } else {
        None
    };
    let mut table = imputation_rows(section, &imp);
    table.extend(rows(None, &lat, args.label.as_deref(), args.knn));
    let mut extra = extra_latent_rows(&args, &sample, labels.as_ref(), sublabels.as_ref(), &ds);
    extra.extend(cluster_rows(&args, &sample, labels.as_ref(), subcluster.as_ref(), &subcluster_of));
    table.extend(extra.iter().cloned());
    if let Some(ti) = &ti {
        table.extend(imputation_rows("test_impute", ti));
    }
    let xfold = cross_fold_table(&args, &sample, &targets);
    table.extend(xfold.iter().cloned());
    // (an undefined metric stays nan in the table; the lines say which and why)
    let top_rule = |v: &Option<VariableJunctions>| -> Vec<String> {
        v.iter().map(|v| format!("the {} most variable junctions (--top-variable-junctions){}", v.seeds, if args.expand_variable_junctions { " and their ATSEs' others" } else { "" })).collect()
    };
    let mut warnings = imputation_nan_warnings(&table, section, &imp_filter, &top_rule(&imp_hvj));
    warnings.extend(imputation_nan_warnings(&table, "test_impute", &base_filter, &top_rule(&ti_hvj)));
    warnings.extend(latent_nan_warnings(&table));
    for w in warnings {
        eprintln!("warning: evaluate: {w}");
    }
    write_tsv(&args.out, &rows_tsv(&table))?;
    eprintln!("wrote {}", args.out.display());
    // The dropped entries' (truth, prediction) pairs, and their density scatter.
    write_tsv(&pairs, &imp.dropped.tsv(&ds.cell_names, &ds.splicing.junction_names, args.max_pairs, args.eval_seed))?;
    eprintln!("wrote {} ({} dropped entries scored)", pairs.display(), imp.dropped.truth.len());
    if !args.no_plots {
        super::plot::auto("imputation", crate::plot::impute::ImputeScatter::from_file(&pairs), &picture);
        // (read back from the written table, so that `plot age-r2 E.tsv` redraws the same picture)
        if let Some(p) = &age_picture {
            super::plot::auto("age R²", crate::plot::age_r2::AgeR2Heatmap::from_file(&args.out), p);
        }
    }
    // (the table on stdout last: a reader that went away ends the command there, its files written)
    println!("{}", render(Some(&imp), &lat, args.label.as_deref(), args.knn));
    if let Some(ti) = &ti {
        for (_, method, m) in &ti.results {
            println!("test_impute observed {method:<22} n = {}, pearson = {:.4}, l1_mean = {:.4}, rmse = {:.4}", m.n, m.pearson, m.l1_mean, m.rmse);
        }
    }
    // (the per-class same-cluster overlaps, three latent pairs × two rows per class, stay in the TSV)
    for r in extra.iter().filter(|r| !(r.section == "clustering" && r.metric.contains(':'))) {
        // (counts as integers)
        let v = if r.metric.starts_with("n_") && r.value.fract() == 0.0 { format!("{}", r.value) } else { format!("{:.4}", r.value) };
        println!("{:<16} {:<22} {} = {v}", r.section, r.subset, r.metric);
    }
    for r in xfold.iter().filter(|r| r.metric.starts_with("accuracy_mean_") || r.metric.starts_with("f1_weighted_mean_")) {
        let sd = xfold.iter().find(|s| s.subset == r.subset && s.method == r.method && s.metric == r.metric.replacen("_mean_", "_sd_", 1)).map_or(f64::NAN, |s| s.value);
        println!("cross_fold {:<11} {:<22} {} = {:.4} ± {:.4}", r.subset, r.method, r.metric, r.value, sd);
    }
    Ok(())
}

/// §8.2's cross-fold classification of each `--cross-fold` column on the joint, expression and
/// splicing posterior means of the cells the other latent metrics score.
fn cross_fold_table(args: &EvaluateArgs, sample: &LatentSample, targets: &[Labels]) -> Vec<crate::analysis::evaluate::EvalRow> {
    use crate::analysis::crossfold::{cross_fold_rows, CrossFoldOptions, Target, N_FOLDS};
    let LatentSample { cells, lat, dims } = sample;
    let spaces: Vec<(&str, &[f32], usize)> = LatentSample::SPACES.into_iter().enumerate().map(|(i, s)| (s, &lat[i][..], dims[i])).collect();
    let opts = CrossFoldOptions { folds: N_FOLDS, n_trees: args.cross_fold_trees, permuted: args.cross_fold_permuted, seed: args.eval_seed };
    let mut out = Vec::new();
    for t in targets {
        let started = std::time::Instant::now();
        let (rows, notes, warnings) = cross_fold_rows(&spaces, &Target::of(t, cells, N_FOLDS), &opts);
        notes.iter().for_each(|n| eprintln!("note: evaluate: {n}"));
        warnings.iter().for_each(|w| eprintln!("warning: evaluate: {w}"));
        eprintln!("cross-fold classification of `{}`: {} cells, {:.1} s", t.column, cells.len(), started.elapsed().as_secs_f64());
        out.extend(rows);
    }
    out
}

/// Sub-label accuracy within each label group (`--sublabel`; on the cells with both a label and a
/// sub-label) and the k-NN batch entropy (mixing, when there is more than one batch) of each latent,
/// on the same cells as the other latent metrics.
fn extra_latent_rows(args: &EvaluateArgs, sample: &LatentSample, labels: Option<&Labels>, sub: Option<&Labels>, ds: &Dataset) -> Vec<crate::analysis::evaluate::EvalRow> {
    use crate::analysis::scorecard::{knn_accuracy_within, knn_batch_entropy};
    let batch = &ds.covariates.batch.codes;
    let n_batch = ds.covariates.batch.levels.len();
    let n = ds.n_cells();
    let LatentSample { cells, lat, dims } = sample;
    let mut out = Vec::new();
    for (i, space) in LatentSample::SPACES.into_iter().enumerate() {
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
    out
}

/// The `clustering` (--clustering) and `subcluster_split` (--subcluster-label) rows of each latent, on
/// the cells of `sample`; their notes go to stderr.
fn cluster_rows(args: &EvaluateArgs, sample: &LatentSample, labels: Option<&Labels>, sub: Option<&Labels>, sub_of: &[u32]) -> Vec<crate::analysis::evaluate::EvalRow> {
    use crate::analysis::clustering::{clustering_rows, subcluster_rows, ClusterOptions};
    let LatentSample { cells, lat, dims } = sample;
    let mut out = Vec::new();
    if args.clustering {
        let opts = ClusterOptions { n_neighbors: args.cluster_neighbors, resolution: args.leiden_resolution, seed: args.eval_seed };
        let l: Option<Vec<Option<u32>>> = labels.map(|l| cells.iter().map(|&c| l.of_cell[c]).collect());
        let (rows, notes) = clustering_rows(lat, dims, labels.zip(l.as_deref()).map(|(x, l)| (x.column.as_str(), &x.classes[..], l)), &opts);
        notes.iter().for_each(|n| eprintln!("note: evaluate: {n}"));
        out.extend(rows);
    }
    if let Some(sub) = sub {
        let l: Vec<Option<u32>> = cells.iter().map(|&c| sub.of_cell[c]).collect();
        let (rows, notes) = subcluster_rows(lat, dims, &sub.column, &sub.classes, &l, sub_of, &args.subcluster_k, args.eval_seed);
        notes.iter().for_each(|n| eprintln!("note: evaluate: {n}"));
        out.extend(rows);
    }
    out
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
    column.map(|c| group_codes(ds, flag, c)).transpose()
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

/// The positional arguments given, for a message.
fn paths_said(p: &[std::path::PathBuf]) -> String {
    match p.len() {
        0 => "none".into(),
        _ => format!("{}: {}", p.len(), p.iter().map(|x| format!("`{}`", x.display())).collect::<Vec<_>>().join(", ")),
    }
}

/// A stray `true` / `false` among them is the value of a switch given with a space (`--exclude-psi-one
/// false`); those take it with `=`.
fn stray_value_hint(p: &[std::path::PathBuf]) -> String {
    match p.iter().find(|x| matches!(x.to_str(), Some("true" | "false"))) {
        Some(v) => format!("; `{}` looks like a switch's value: give it with `=` (e.g. --exclude-psi-one={})", v.display(), v.display()),
        None => String::new(),
    }
}

/// `--knn`'s default (the original's k-NN classifier).
const DEFAULT_KNN: usize = 15;

/// `--train-dir` apart from every output (label, path): none inside it, and it not an output's path or
/// inside one.
fn check_train_dir_apart(dir: &std::path::Path, outputs: &[(String, std::path::PathBuf)]) -> Result<()> {
    let d = crate::util::resolved_path(dir);
    for (label, f) in outputs {
        let o = crate::util::resolved_path(f);
        if d.starts_with(&o) {
            bail!("--train-dir {}: is the path of {label}; give the run another directory", dir.display());
        }
        if o.starts_with(&d) {
            bail!("{label}: is inside --train-dir {} (the run evaluate trains and keeps); write it elsewhere", dir.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_dir_and_outputs_do_not_overlap() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |s: &str| tmp.path().join(s);
        let out = |f: std::path::PathBuf| vec![("--out X".to_string(), f)];
        // an output inside the kept run (also spelled through `..` and with the run absent)
        let e = check_train_dir_apart(&p("run"), &out(p("run/config.json"))).unwrap_err().to_string();
        assert!(e.contains("--out X: is inside --train-dir"), "{e}");
        assert!(check_train_dir_apart(&p("run"), &out(p("other/../run/metrics.tsv"))).is_err());
        // the run directory at an output's path, or inside it
        let e = check_train_dir_apart(&p("e.tsv"), &out(p("e.tsv"))).unwrap_err().to_string();
        assert!(e.contains("is the path of --out X"), "{e}");
        assert!(check_train_dir_apart(&p("e.pairs.tsv/run"), &out(p("e.pairs.tsv"))).is_err());
        // apart: fine, a sibling whose name starts alike too
        check_train_dir_apart(&p("run"), &out(p("run2/e.tsv"))).unwrap();
        check_train_dir_apart(&p("run"), &out(p("e.tsv"))).unwrap();
    }

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
