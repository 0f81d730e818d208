//! Decoding a trained model for analyses (model.md §7.3–§7.5, §14.2): normalized expression (px_scale),
//! decoder PSI (p) and the DM posterior-mean PSI of blocks of cells, optionally conditioned on other
//! batches (`transform_batch`, averaged over the list) and averaged over posterior samples.
//!
//! n_samples = 1 decodes the posterior mean qz_m (the original's `use_z_mean=True`). n_samples = S > 1
//! draws S samples z = qz_m + √qz_v·ε of the JOINT latent (softmax-ed for the logistic-normal latent),
//! decodes each and averages over the samples — never over cells (§14.2; the original's n_samples > 1
//! path averages over the cell axis, §12.15). The noise of cell c comes from its own seeded stream, so
//! results do not depend on the block size or the thread count.

use crate::data::Dataset;
use crate::model::{Batch, DmConcentration, Inference, Mat, Params, SpliceVae, SplicingLoss};
use crate::train::rng::{stream, Purpose};
use crate::train::trainer::RunConfig;
use anyhow::{bail, Context, Result};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// Stream tags (the `epoch` argument of `rng::stream` under `Purpose::Analysis`).
pub mod tags {
    pub const NOISE: u64 = 1;
    pub const DIFF_SAMPLE: u64 = 2;
    pub const MASK: u64 = 3;
    pub const SUBSAMPLE: u64 = 4;
    pub const CLASSIFIER_SPLIT: u64 = 5;
    /// §8.4's read down-sampling (`resample`).
    pub const RESAMPLE: u64 = 6;
    /// §8.2's cross-fold classification (`crossfold`): the folds' shuffle, the forest's trees, the
    /// permutation baseline's labels.
    pub const CV_FOLDS: u64 = 20;
    pub const FOREST: u64 = 21;
    pub const PERMUTE: u64 = 22;
}

/// Which PSI an analysis reads (the original's `norm_splicing_function`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SplicingFn {
    /// Decoder probabilities p (`get_normalized_splicing`, §7.4).
    Decoder,
    /// DM posterior mean (c·p + k)/(c + n) with the cell's own counts (`get_normalized_splicing_DM`, §7.5).
    DmPosterior,
}

impl SplicingFn {
    pub fn name(self) -> &'static str {
        match self {
            SplicingFn::Decoder => "decoder",
            SplicingFn::DmPosterior => "dm-posterior",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DecodeOptions {
    /// Batch codes to condition on, averaged over the list; empty = each cell's observed batch.
    pub transform_batch: Vec<u32>,
    /// Posterior samples per cell; 1 = decode the posterior mean.
    pub n_samples: usize,
    pub seed: u64,
}

/// What `decode` returns for a block of cells (rows in the order of the given cells).
pub struct Decoded {
    /// B × J PSI (the requested `SplicingFn`), when asked for.
    pub psi: Option<Mat<f32>>,
    /// B × G px_scale, when asked for.
    pub expr: Option<Mat<f32>>,
}

/// A trained model bound to a dataset, for analyses.
pub struct Posterior<'a> {
    pub ds: &'a Dataset,
    pub model: &'a SpliceVae,
    pub params: &'a Params<f32>,
    /// The `cross_gate` buffer of the checkpoint (1 after a normal training run).
    pub gate: f64,
    /// `cell` modality weights: each dataset row's row of the per-cell weight table, u32::MAX for a cell
    /// not seen in training (the mean row, §14.2); None: every cell reads the mean row. `new` takes the
    /// rows by position when the data have as many cells as the training data; the commands set them
    /// from the run's recorded cells (`weight_table_rows`).
    pub cell_rows: Option<Vec<u32>>,
    /// DM concentration per junction (empty when the splicing likelihood has none).
    pub conc: Vec<f32>,
    /// The CUDA step's encoders and decoders, when the analysis runs on a device ([`Self::use_device`]).
    device: Option<std::cell::RefCell<crate::cuda::step::DeviceModel<'a>>>,
}

impl<'a> Posterior<'a> {
    pub fn new(ds: &'a Dataset, model: &'a SpliceVae, params: &'a Params<f32>) -> Result<Self> {
        if ds.n_junctions() != model.dims.n_junctions || ds.n_genes() != model.dims.n_genes {
            bail!(
                "{}: {} genes / {} junctions, the model {} / {}",
                ds.source,
                ds.n_genes(),
                ds.n_junctions(),
                model.dims.n_genes,
                model.dims.n_junctions
            );
        }
        let gate = params.by_name("cross_gate").map(|v| v[0] as f64).unwrap_or(1.0);
        let conc = match model.cfg.splicing_loss_type {
            SplicingLoss::DirichletMultinomial | SplicingLoss::BetaBinomial => per_junction_concentration(model, params, &ds.splicing.junc2atse),
            SplicingLoss::Binomial | SplicingLoss::Bce => Vec::new(),
        };
        let cell_rows = (ds.n_cells() == model.dims.n_obs).then(|| (0..ds.n_cells() as u32).collect());
        Ok(Posterior { ds, model, params, gate, cell_rows, conc, device: None })
    }

    /// Runs the latents and the decode of [`Self::latent_means`] and [`Self::decode`] on `dev` (the CUDA
    /// step's encoders, latent step and decoders, `DeviceModel::{latents, decode_dense}`) with GEMM
    /// operands in `precision`. The rest of each analysis (sampling, the tests) stays on the host.
    /// The dataset goes to the device too when `--data-residency` allows and it fits in half of the
    /// free device memory: the encoders' minibatches are then gathered there.
    pub fn use_device(&mut self, dev: &'a crate::cuda::CudaDevice, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
        use crate::cuda::resident::{bytes_needed, residency, DeviceDataset, Residency};
        let mut dm = crate::cuda::step::DeviceModel::new(dev, self.model, self.params)?;
        dm.precision = precision;
        let fits = dev.free_memory().is_none_or(|free| bytes_needed(self.model, self.ds) <= free / 2);
        match residency() {
            Residency::Device => dm.attach_dataset(DeviceDataset::upload(dev, self.model, self.ds).context("--data-residency device")?),
            // auto: streamed when it does not fit, or when the upload fails
            Residency::Auto if fits => {
                if let Ok(dd) = DeviceDataset::upload(dev, self.model, self.ds) {
                    dm.attach_dataset(dd);
                }
            }
            _ => {}
        }
        self.device = Some(std::cell::RefCell::new(dm));
        Ok(())
    }

    pub fn on_device(&self) -> bool {
        self.device.is_some()
    }

    /// (qz_m, qz_v, library, qzm_expr, qzm_spl) of a block of cells (`batch` is theirs), on the device
    /// or the CPU.
    fn means(&self, cells: &[usize], batch: &Batch) -> Result<(Mat<f32>, Mat<f32>, Vec<f32>, Mat<f32>, Mat<f32>)> {
        let b = batch.n_cells();
        let (l, d) = (self.model.arch.l, self.model.arch.d);
        Ok(match &self.device {
            Some(dm) => {
                let x = dm.borrow_mut().latents_of_cells(batch, cells)?;
                (Mat::from_vec(b, l, x.qz_m), Mat::from_vec(b, l, x.qz_v), x.library, Mat::from_vec(b, d, x.mu_e), Mat::from_vec(b, d, x.mu_s))
            }
            None => {
                let i = self.model.inference_only(self.params, batch)?;
                (i.qz_m, i.qz_v, i.library, i.qzm_expr, i.qzm_spl)
            }
        })
    }

    pub fn batch(&self, cells: &[usize]) -> Result<Batch> {
        Ok(Batch { cell_idx: self.cell_idx(cells), ..Batch::from_dataset(self.ds, cells, false)? })
    }

    /// The weight-table rows of `cells` (None when no cell has one).
    fn cell_idx(&self, cells: &[usize]) -> Option<Vec<u32>> {
        let rows = self.cell_rows.as_ref()?;
        let idx: Vec<u32> = cells.iter().map(|&c| rows[c]).collect();
        (!idx.iter().all(|&r| r == u32::MAX)).then_some(idx)
    }

    /// Posterior means (eval mode) of a block of cells, on the CPU backend (every field of `Inference`).
    pub fn latents(&self, cells: &[usize]) -> Result<Inference<f32>> {
        self.model.inference_only(self.params, &self.batch(cells)?)
    }

    /// Posterior means of the joint, expression and splicing latents of `cells` (in that order, rows in
    /// `cells` order), inferred `block` cells at a time; with their widths.
    pub fn latent_means(&self, cells: &[usize], block: usize) -> Result<([Vec<f32>; 3], [usize; 3])> {
        let mut lat: [Vec<f32>; 3] = Default::default();
        let mut dims = [0usize; 3];
        for b in cells.chunks(block.max(1)) {
            // On a device with the dataset resident, the cells alone suffice (their entries are gathered there).
            let batch = match &self.device {
                Some(dm) if dm.borrow().resident_index().is_some() => Batch { cell_idx: self.cell_idx(b), ..Batch::cells_only(self.ds, b, false)? },
                _ => self.batch(b)?,
            };
            let (qz_m, _, _, mu_e, mu_s) = self.means(b, &batch)?;
            for (i, m) in [&qz_m, &mu_e, &mu_s].into_iter().enumerate() {
                dims[i] = m.cols;
                lat[i].extend_from_slice(&m.data);
            }
        }
        Ok((lat, dims))
    }

    /// Decode a block of cells: PSI (`psi_fn`) and/or px_scale, averaged over `opts.transform_batch`
    /// and `opts.n_samples` posterior samples.
    pub fn decode(&self, cells: &[usize], opts: &DecodeOptions, psi_fn: Option<SplicingFn>, expr: bool) -> Result<Decoded> {
        if psi_fn == Some(SplicingFn::DmPosterior) {
            require_counts_for_dm_posterior(self.ds)?;
        }
        if psi_fn == Some(SplicingFn::DmPosterior) && self.conc.is_empty() {
            bail!(
                "the DM posterior mean needs a concentration; the model's splicing likelihood `{}` has none (use --method decoder)",
                self.model.cfg.splicing_loss_type.as_str()
            );
        }
        let n_batch = self.model.dims.n_batch.max(1);
        if let Some(&b) = opts.transform_batch.iter().find(|&&b| b as usize >= n_batch) {
            bail!("transform batch code {b} ≥ the model's {n_batch} batches");
        }
        let batch = self.batch(cells)?;
        let (qz_m, qz_v, library, _, _) = self.means(cells, &batch)?;
        let s = opts.n_samples.max(1);
        let lats: Vec<Mat<f32>> = if s == 1 { vec![qz_m.clone()] } else { self.samples(cells, &qz_m, &qz_v, s, opts.seed) };
        let overrides: Vec<Option<u32>> = if opts.transform_batch.is_empty() { vec![None] } else { opts.transform_batch.iter().map(|&b| Some(b)).collect() };
        let n_terms = (lats.len() * overrides.len()) as f32;
        let (b, j, g) = (cells.len(), self.ds.n_junctions(), self.ds.n_genes());
        let mut psi_sum = psi_fn.map(|_| Mat::<f32>::zeros(b, j));
        let mut expr_sum = expr.then(|| Mat::<f32>::zeros(b, g));
        for ov in &overrides {
            let mut bt = batch.clone();
            if let Some(code) = ov {
                bt.batch.iter_mut().for_each(|x| *x = *code);
            }
            for lat in &lats {
                let (p, px_scale) = match &self.device {
                    Some(dm) => {
                        let d = dm.borrow_mut().decode_dense(&lat.data, &bt, self.gate, psi_fn.is_some(), expr)?;
                        (d.p.map(|v| Mat::from_vec(b, j, v)), d.px_scale.map(|v| Mat::from_vec(b, g, v)))
                    }
                    None => {
                        let d = self.model.decode_dense(self.params, lat, &bt, &library, self.gate)?;
                        (Some(d.p), Some(d.px_scale))
                    }
                };
                if let (Some(sum), Some(f), Some(mut p)) = (psi_sum.as_mut(), psi_fn, p) {
                    if f == SplicingFn::DmPosterior {
                        dm_posterior_rows(&mut p, &batch.spl, &self.conc);
                    }
                    add_into(sum, &p);
                }
                if let (Some(sum), Some(x)) = (expr_sum.as_mut(), px_scale) {
                    add_into(sum, &x);
                }
            }
        }
        let scale = |m: &mut Mat<f32>| {
            if n_terms > 1.0 {
                m.data.par_iter_mut().for_each(|v| *v /= n_terms);
            }
        };
        psi_sum.iter_mut().for_each(scale);
        expr_sum.iter_mut().for_each(scale);
        Ok(Decoded { psi: psi_sum, expr: expr_sum })
    }

    /// S samples of the joint latent for each cell (sample-major: one B × L matrix per sample).
    fn samples(&self, cells: &[usize], qz_m: &Mat<f32>, qz_v: &Mat<f32>, s: usize, seed: u64) -> Vec<Mat<f32>> {
        let l = qz_m.cols;
        let ln = self.model.cfg.latent_distribution == crate::model::LatentDistribution::Ln;
        let mut out = vec![Mat::<f32>::zeros(cells.len(), l); s];
        for (r, &c) in cells.iter().enumerate() {
            let mut rng = stream(seed, Purpose::Analysis, tags::NOISE, c as u64);
            for m in out.iter_mut() {
                let row = m.row_mut(r);
                for t in 0..l {
                    let e: f64 = StandardNormal.sample(&mut rng);
                    row[t] = qz_m.at(r, t) + qz_v.at(r, t).sqrt() * e as f32;
                }
                if ln {
                    let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = row.iter().map(|v| (v - mx).exp()).sum();
                    row.iter_mut().for_each(|v| *v = (*v - mx).exp() / sum);
                }
            }
        }
        out
    }
}

fn add_into(sum: &mut Mat<f32>, x: &Mat<f32>) {
    sum.data.par_iter_mut().zip(x.data.par_iter()).for_each(|(a, b)| *a += b);
}

/// φ per junction, as the model's `dm_posterior_mean` maps it: per ATSE (DM "atse"), per junction
/// (beta-binomial), or one scalar.
pub fn per_junction_concentration(model: &SpliceVae, params: &Params<f32>, junc2atse: &[u32]) -> Vec<f32> {
    let phi = model.concentration(params);
    let j = model.dims.n_junctions;
    (0..j)
        .map(|jj| match model.cfg.dm_concentration {
            DmConcentration::Atse if phi.len() == model.dims.n_atse && !junc2atse.is_empty() => phi[junc2atse[jj] as usize],
            _ if phi.len() == j => phi[jj],
            _ => phi[0],
        })
        .collect()
}

/// In place: p (B × J dense decoder probabilities) → DM posterior-mean PSI (§7.5)
/// clamp((c·p + k)/(c + n + 1e-8), 1e-8, 1 − 1e-8), k and n the cell's own counts (0 where unobserved).
/// Same arithmetic as `SpliceVae::dm_posterior_mean`, parallel over cells.
pub fn dm_posterior_rows(p: &mut Mat<f32>, spl: &crate::model::SplBatch, conc: &[f32]) {
    let j = p.cols;
    let (lo, hi) = (1e-8f32, 1.0 - 1e-8f32);
    let eps = 1e-8f32;
    let zero = 0.0f32;
    p.data.par_chunks_mut(j.max(1)).enumerate().for_each(|(i, row)| {
        // Observed entries first (they need p before the row is overwritten).
        let obs: Vec<(usize, f32)> = spl
            .cell_range(i)
            .map(|e| {
                let jj = spl.junction[e] as usize;
                let c = conc[jj];
                (jj, ((c * row[jj] + spl.k[e]) / (c + spl.n[e] + eps)).max(lo).min(hi))
            })
            .collect();
        for (jj, v) in row.iter_mut().enumerate() {
            let c = conc[jj];
            *v = ((c * *v + zero) / (c + zero + eps)).max(lo).min(hi);
        }
        for (jj, v) in obs {
            row[jj] = v;
        }
    });
}

/// A run directory and a dataset, ready for analyses.
pub struct OpenRun {
    pub run: crate::train::trainer::RunConfig,
    pub ds: Dataset,
    pub model: SpliceVae,
    pub params: Params<f32>,
    /// [`Posterior::cell_rows`] of `ds` ([`weight_table_rows`]).
    pub cell_rows: Option<Vec<u32>>,
}

impl OpenRun {
    /// The posterior of the run on its data, each cell reading its own row of a `cell` weight table.
    pub fn posterior(&self) -> Result<Posterior<'_>> {
        let mut post = Posterior::new(&self.ds, &self.model, &self.params)?;
        post.cell_rows = self.cell_rows.clone();
        Ok(post)
    }
}

/// `--method dm-posterior` reads the cells' counts: refused on PSI-only data (the commands check it
/// before any work; `Posterior::decode` again, for callers that do not).
pub fn require_counts_for_dm_posterior(ds: &Dataset) -> Result<()> {
    ds.require_splicing_counts("--method dm-posterior (the DM posterior mean (c·p + k)/(c + n), the default)", "use --method decoder")
}

/// `cell` modality weights (§14.2): the row of the run's per-cell weight table that each cell of `ds`
/// reads, found by cell name among the training cells `features.json` records; u32::MAX (the mean
/// learned row) for a cell the run did not train on, with a line saying how many there are. Runs that
/// predate the recorded cells take the rows by position when the numbers of cells agree. None for the
/// other modality weightings (nothing to look up).
pub fn weight_table_rows(run_dir: &std::path::Path, ds: &Dataset, model: &SpliceVae) -> Result<Option<Vec<u32>>> {
    if model.cfg.modality_weights != crate::model::ModalityWeights::Cell {
        return Ok(None);
    }
    let n_obs = model.dims.n_obs;
    let trained = crate::train::trainer::read_run_features(run_dir)?.map(|f| f.cells).unwrap_or_default();
    if trained.is_empty() {
        if ds.n_cells() == n_obs {
            eprintln!(
                "note: {} does not record its training cells (it predates that): the cells of {} read the per-cell modality weights by position",
                run_dir.display(),
                ds.source
            );
            return Ok(Some((0..n_obs as u32).collect()));
        }
        eprintln!(
            "note: {} does not record its training cells, and {} has {} cells where the training data had {n_obs}: every cell reads the mean of the learned per-cell modality weights",
            run_dir.display(),
            ds.source,
            ds.n_cells()
        );
        return Ok(Some(vec![u32::MAX; ds.n_cells()]));
    }
    if trained == ds.cell_names {
        return Ok(Some((0..n_obs as u32).collect()));
    }
    anyhow::ensure!(trained.len() == n_obs, "{}: {} training cells for a weight table of {n_obs} rows", run_dir.display(), trained.len());
    // a name the training data holds twice names no single row: the mean row
    let mut row_of: std::collections::HashMap<&str, u32> = std::collections::HashMap::with_capacity(n_obs);
    for (r, name) in trained.iter().enumerate() {
        if row_of.insert(name.as_str(), r as u32).is_some() {
            row_of.insert(name.as_str(), u32::MAX);
        }
    }
    let rows: Vec<u32> = ds.cell_names.iter().map(|c| row_of.get(c.as_str()).copied().unwrap_or(u32::MAX)).collect();
    let unseen = rows.iter().filter(|&&r| r == u32::MAX).count();
    if unseen > 0 {
        eprintln!(
            "note: {unseen} of {} cells of {} are not among the training cells of {} (by name): they read the mean of the learned per-cell modality weights",
            ds.n_cells(),
            ds.source,
            run_dir.display()
        );
    }
    Ok(Some(rows))
}

/// Load a run directory and data with the run's data options. The data's batches, labels and categorical
/// covariates are re-expressed in the run's levels (the one-hot layouts the model was trained with); a
/// level the run never saw is an error.
pub fn open_run(run_dir: &std::path::Path, data: &std::path::Path) -> Result<OpenRun> {
    let run = crate::train::trainer::read_run_config(run_dir)?;
    let mut ds = load_for_run(data, &run.data, run_dir)?;
    align_covariates(&mut ds, &run, run_dir)?;
    let (run, model, params) = crate::train::trainer::load_model(run_dir, &ds)?;
    let cell_rows = weight_table_rows(run_dir, &ds, &model)?;
    Ok(OpenRun { run, ds, model, params, cell_rows })
}

/// Load an analysis's data with `opts`, the data options of the run in `run_dir` (its config.json). The
/// analyses take no data flags, so a load error's advice to give `--require-integer-*` false is
/// replaced by what does apply: the run's own setting.
pub fn load_for_run(data: &std::path::Path, opts: &crate::data::DataOptions, run_dir: &std::path::Path) -> Result<Dataset> {
    use crate::data::validate::{DataError, INTEGER_EXPRESSION_HINT, INTEGER_SPLICING_HINT};
    crate::data::load::load(data, opts).map_err(|e| {
        let Some(de) = e.downcast_ref::<DataError>() else { return e };
        for (hint, what) in [(INTEGER_SPLICING_HINT, "splicing"), (INTEGER_EXPRESSION_HINT, "expression")] {
            if de.message.contains(hint) {
                let advice = format!(
                    " (the run `{}` was trained requiring integer {what} counts, require_integer_{what} in its config.json, and \
                     the analyses read data as their run did: give data like its training data, or use a run trained with \
                     --require-integer-{what} false)",
                    run_dir.display()
                );
                return DataError { message: de.message.replace(hint, &advice), ..de.clone() }.into();
            }
        }
        e
    })
}

/// Re-code `ds`'s batches, labels and categorical covariates in the levels of the run `run` (trained in
/// `run_dir`), matched by name: data whose file lists a column's categories in another order, or only
/// some of them, is decoded as the training data was (codes are positions in a file's own category
/// list, and the model's one-hot inputs are positions in the training data's).
pub fn align_covariates(ds: &mut Dataset, run: &RunConfig, run_dir: &std::path::Path) -> Result<()> {
    let (source, dir) = (ds.source.clone(), run_dir.display().to_string());
    let cells = &ds.cell_names;
    let cov = &mut ds.covariates;
    align_levels(&mut cov.batch, &run.batch_levels, "batch", &source, &dir, cells)?;
    if run.categorical_levels.is_empty() && run.label_levels.is_empty() {
        // A run written before the levels were stored: the codes are taken by position, as its training
        // data listed them; a level past the model's count is refused here, naming it.
        let mut legacy: Vec<(&crate::data::Categorical, usize)> = cov.categorical.iter().zip(run.dims.n_cats_per_cov.iter().copied()).collect();
        if run.data.labels_key.is_some() {
            legacy.push((&cov.labels, run.dims.n_labels));
        }
        for (c, n) in &legacy {
            // (a category past the count that no cell has is harmless: a sliced file keeps its categories)
            if let Some(i) = c.codes.iter().position(|&x| x as usize >= *n) {
                let extra = &c.levels[c.codes[i] as usize];
                bail!(
                    "{source}: `{}` has {} categories, but the model of {dir} was trained with {n}: `{extra}` (cell {i}, `{}`) has no column in it",
                    c.name,
                    c.levels.len(),
                    cells.get(i).map_or("?", |s| s.as_str())
                );
            }
        }
        if !legacy.is_empty() {
            eprintln!(
                "warning: {dir} was trained before runs stored their categorical covariates' and labels' levels: the categories of {} are taken by their position in the file, as its training data listed them",
                legacy.iter().map(|(c, _)| format!("`{}`", c.name)).collect::<Vec<_>>().join(", ")
            );
        }
        return Ok(());
    }
    align_levels(&mut cov.labels, &run.label_levels, "label", &source, &dir, cells)?;
    anyhow::ensure!(
        run.categorical_levels.len() == cov.categorical.len(),
        "{dir}: config.json has the levels of {} categorical covariates for {} keys",
        run.categorical_levels.len(),
        cov.categorical.len()
    );
    for (c, levels) in cov.categorical.iter_mut().zip(&run.categorical_levels) {
        align_levels(c, levels, "category", &source, &dir, cells)?;
    }
    Ok(())
}

/// Re-code one categorical column in `levels` (the training run's order; empty = not stored, left alone).
/// A level the run never saw is refused where a cell has it (`cells`: the names, for the message); one
/// that no cell has (mudata's slices keep every category) is left out.
fn align_levels(c: &mut crate::data::Categorical, levels: &[String], what: &str, source: &str, run: &str, cells: &[String]) -> Result<()> {
    if levels.is_empty() || c.levels == levels {
        return Ok(());
    }
    let map: Vec<Option<u32>> = c.levels.iter().map(|l| levels.iter().position(|x| x == l).map(|p| p as u32)).collect();
    if let Some(i) = c.codes.iter().position(|&x| map[x as usize].is_none()) {
        let l = &c.levels[c.codes[i] as usize];
        bail!(
            "{source}: {what} `{l}` of `{}` (cell {i}, `{}`) was not in the training data of {run} ({what} levels: {})",
            c.name,
            cells.get(i).map_or("?", |s| s.as_str()),
            levels.join(", ")
        );
    }
    c.codes.iter_mut().for_each(|x| *x = map[*x as usize].expect("checked above"));
    c.levels = levels.to_vec();
    Ok(())
}

/// Batch names → the run's batch codes.
pub fn batch_codes(levels: &[String], names: &[String]) -> Result<Vec<u32>> {
    names
        .iter()
        .map(|n| match levels.iter().position(|l| l == n) {
            Some(p) => Ok(p as u32),
            None if levels.is_empty() => bail!("batch `{n}`: the run has no batch covariate"),
            None => bail!("unknown batch `{n}` (batches of the run: {})", levels.join(", ")),
        })
        .collect()
}
