//! The training loop (model.md §6.2), run directory and resume.
//!
//! Every random draw comes from `rng::stream(seed, purpose, epoch, step)`, so a run resumed from the
//! checkpoint of epoch k continues exactly as the uninterrupted run did (same batches, dropout masks,
//! noise and coin flips): the checkpoint holds parameters, buffers, optimizer moments and the
//! schedule state, and nothing else is needed.

use super::config::{SchedulerKind, TrainConfig};
use super::metrics::{EpochMetrics, MetricsLog};
use super::rng::{stream, Purpose};
use super::schedule::{kl_and_gate, EarlyStopping, LrScheduler};
use crate::data::split::{sequential_batches, train_validation_split, Minibatches, SplitConfig};
use crate::data::{DataOptions, Dataset};
use crate::model::adversary::Adversary;
use crate::model::{Batch, Dims, Modality, ModalityWeights, ModelConfig, Noise, Params, SpliceVae, StepOptions, WarmupRouting};
use crate::optim::{clip_info, Adam, AdamConfig, AdamState};
use crate::util::{write_atomic, write_atomic_set, FileWriter};
use anyhow::{bail, Context, Result};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const BEST_FILE: &str = "best.safetensors";
pub const OPTIM_FILE: &str = "optimizer.safetensors";
pub const ADV_FILE: &str = "adversary.safetensors";
pub const ADV_OPTIM_FILE: &str = "adversary_optimizer.safetensors";
pub const STATE_FILE: &str = "train_state.json";
pub const FEATURES_FILE: &str = "features.json";
pub const SPLIT_FILE: &str = "split.json";
pub const METRICS_TSV: &str = "metrics.tsv";
pub const METRICS_JSONL: &str = "metrics.jsonl";
/// Held (flock) by the training writing the run directory; never removed (a lock file that goes can be
/// locked twice).
pub const LOCK_FILE: &str = ".splicevi-train.lock";

/// The safetensors metadata that stamps each file of a checkpoint with the epochs done and the global
/// step it was written after (train_state.json records the same): a set that an interrupted rename
/// (SIGKILL, power loss) left mixed is refused instead of silently resumed or analysed.
const STAMP_EPOCHS: &str = "splicevi_epochs_done";
const STAMP_STEP: &str = "splicevi_global_step";

/// The features a run was trained on, in order (`features.json`, written when the run starts): the
/// analyses and --resume refuse data whose genes, junctions or grouping of junctions into ATSEs differ,
/// since the weights are per feature and matching sizes alone would let a reordered file through. (The
/// original saves each modality's var_names with its model, model.md §7.9.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunFeatures {
    pub genes: Vec<String>,
    pub junctions: Vec<String>,
    /// The ATSE index of each junction (the per-ATSE parameters follow it; the ids may be renamed).
    pub junc2atse: Vec<u32>,
    /// The ATSE ids, in index order (messages).
    pub atse_ids: Vec<String>,
    /// With `--modality-weights cell`, the training data's cell names in order: row i of the per-cell
    /// weight table belongs to cell i, and the analyses find a cell's row by its name. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<String>,
}

impl RunFeatures {
    pub fn of(ds: &Dataset) -> Self {
        let s = &ds.splicing;
        RunFeatures {
            genes: ds.gene_names.clone(),
            junctions: s.junction_names.clone(),
            junc2atse: s.junc2atse.clone(),
            atse_ids: s.atse_ids.clone(),
            cells: Vec::new(),
        }
    }

    /// The features a run trained on `ds` records: with `cell` modality weights, also its cells.
    pub fn of_run(ds: &Dataset, cfg: &ModelConfig) -> Self {
        let cells = if cfg.modality_weights == ModalityWeights::Cell { ds.cell_names.clone() } else { Vec::new() };
        RunFeatures { cells, ..Self::of(ds) }
    }

    /// Err naming the first feature of `ds` that differs from the run's (position and both names).
    pub fn check(&self, ds: &Dataset, dir: &Path) -> Result<()> {
        let data = RunFeatures::of(ds);
        let lists = [("gene", &self.genes, &data.genes), ("junction", &self.junctions, &data.junctions)];
        for (what, run, got) in lists {
            if run.len() != got.len() {
                bail!("{}: {} {what}s, but the run {} was trained on {}", ds.source, got.len(), dir.display(), run.len());
            }
            if let Some(i) = (0..run.len()).find(|&i| run[i] != got[i]) {
                bail!(
                    "{}: {what} {i} is `{}`, but the run {} was trained with `{}` there (the data must hold the run's {what}s in the same order)",
                    ds.source, got[i], dir.display(), run[i]
                );
            }
        }
        if let Some(i) = (0..self.junc2atse.len().min(data.junc2atse.len())).find(|&i| self.junc2atse[i] != data.junc2atse[i]) {
            let id = |ids: &[String], a: u32| ids.get(a as usize).cloned().unwrap_or_default();
            bail!(
                "{}: junction {i} (`{}`) is in ATSE {} (`{}`), but in ATSE {} (`{}`) in the run {} (the junctions must be grouped into ATSEs, in ATSE order, as in training)",
                ds.source, data.junctions[i], data.junc2atse[i], id(&data.atse_ids, data.junc2atse[i]), self.junc2atse[i], id(&self.atse_ids, self.junc2atse[i]), dir.display()
            );
        }
        Ok(())
    }
}

/// The train/validation split of a run (`split.json`, written when the run starts): the training
/// data's cell names in order and the positions of its validation cells (§6.3), so that `evaluate`
/// can score the cells the model trained on apart from the others (§8.1's train and test splits).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSplit {
    pub cells: Vec<String>,
    pub validation: Vec<usize>,
}

/// The run's `split.json`; None for runs written before it existed.
pub fn read_run_split(dir: &Path) -> Result<Option<RunSplit>> {
    let path = dir.join(SPLIT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let split: RunSplit = serde_json::from_str(&text).with_context(|| format!("{}: damaged (empty or cut short?), not the run's train/validation split", path.display()))?;
    if let Some(&v) = split.validation.iter().find(|&&v| v >= split.cells.len()) {
        bail!("{}: validation cell {v} of {} cells", path.display(), split.cells.len());
    }
    Ok(Some(split))
}

/// The run's `features.json`; None for runs written before it existed.
pub fn read_run_features(dir: &Path) -> Result<Option<RunFeatures>> {
    let path = dir.join(FEATURES_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: unreadable", path.display()))?))
}

/// Checks `ds` against the features of the run in `dir`. Runs written before `features.json` existed
/// have none: only their sizes are checked (by the callers), and a warning says so. Returns the
/// features checked.
pub fn check_run_features(dir: &Path, ds: &Dataset) -> Result<Option<RunFeatures>> {
    match read_run_features(dir)? {
        Some(f) => f.check(ds, dir).map(|_| Some(f)),
        None => {
            eprintln!(
                "warning: {} has no {FEATURES_FILE} (the run predates it): only the numbers of genes, junctions and ATSEs of {} are checked against the run, not their names and order",
                dir.display(),
                ds.source
            );
            Ok(None)
        }
    }
}

/// What a run directory's `config.json` holds: everything needed to rebuild the model for analyses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    pub splicevi_version: String,
    pub preset: String,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataOptions,
    pub dims: Dims,
    pub data_source: String,
    /// Joint latent size L and per-encoder size d, for readers of the checkpoint.
    pub n_latent_joint: usize,
    pub n_latent_per_modality: usize,
    pub batch_levels: Vec<String>,
    /// The levels of each categorical covariate (`data.categorical_covariate_keys`, in that order) and
    /// of the labels, in the order the model's one-hot inputs and label tables use; the analyses match
    /// their data's categories to them by name. Empty in runs written before they were stored.
    #[serde(default)]
    pub categorical_levels: Vec<Vec<String>>,
    #[serde(default)]
    pub label_levels: Vec<String>,
}

impl RunConfig {
    /// The run description for training `model` / `train` on `ds`: sizes, batch levels and source come
    /// from the data, the latent sizes from the model options.
    pub fn for_dataset(preset: &str, model: ModelConfig, train: TrainConfig, data: DataOptions, ds: &Dataset) -> Self {
        let dims = dims_of(ds);
        RunConfig {
            splicevi_version: env!("CARGO_PKG_VERSION").to_string(),
            preset: preset.to_string(),
            n_latent_joint: model.joint_latent(&dims),
            n_latent_per_modality: model.resolved_n_latent(&dims),
            model,
            train,
            data,
            dims,
            data_source: ds.source.clone(),
            batch_levels: ds.covariates.batch.levels.clone(),
            categorical_levels: ds.covariates.categorical.iter().map(|c| c.levels.clone()).collect(),
            label_levels: ds.covariates.labels.levels.clone(),
        }
    }
}

/// Schedule state saved after every epoch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_done: usize,
    pub lr: f64,
    pub early_stopping: EarlyStopping,
    pub scheduler: LrScheduler,
    pub stopped_early: bool,
    pub global_step: u64,
}

/// A training failure that must stop the run (non-finite values), with where it happened.
#[derive(Debug)]
pub struct NonFinite {
    pub epoch: usize,
    pub step: u64,
    pub term: String,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // (epochs counted from 1, as the progress lines count them; the checkpoint is the caller's to name)
        write!(f, "non-finite {} in epoch {}, step {}", self.term, self.epoch + 1, self.step)
    }
}
impl std::error::Error for NonFinite {}

/// What differs between the data's sizes and a run's, in words ("genes: 100 in the data, 120 in the
/// run; ..."), or None.
pub fn dims_difference(data: &Dims, run: &Dims) -> Option<String> {
    let pairs = [
        ("genes", data.n_genes, run.n_genes),
        ("junctions", data.n_junctions, run.n_junctions),
        ("ATSEs", data.n_atse, run.n_atse),
        ("batches", data.n_batch, run.n_batch),
        ("labels", data.n_labels, run.n_labels),
        ("cells", data.n_obs, run.n_obs),
        ("continuous covariates", data.n_cont, run.n_cont),
    ];
    let mut v: Vec<String> = pairs.iter().filter(|(_, a, b)| a != b).map(|(w, a, b)| format!("{w}: {a} in the data, {b} in the run")).collect();
    if data.n_cats_per_cov != run.n_cats_per_cov {
        v.push(format!("categorical covariate levels: {:?} in the data, {:?} in the run", data.n_cats_per_cov, run.n_cats_per_cov));
    }
    if v.is_empty() && data != run {
        v.push(format!("{data:?} vs {run:?}"));
    }
    (!v.is_empty()).then(|| v.join("; "))
}

/// What is known before training starts and would otherwise stop it part-way, checked before any
/// file is written: a count splicing likelihood on data with PSI only (model.md §14.2: only the BCE
/// loss is possible there; the loader's k = 0, n = 1 are placeholders), and a training minibatch of
/// one cell when something trains with BatchNorm (the adversarial classifier, or the model with
/// `use_batch_norm`), which needs at least two cells in training mode. The minibatch sizes are those
/// of `train`'s split of `ds` (scvi moves a last minibatch of 1–2 cells to validation only when the
/// training size was not given, model.md §6.3).
pub fn check_training_data(model: &ModelConfig, train: &TrainConfig, ds: &Dataset) -> Result<()> {
    if model.splicing_loss_type != crate::model::SplicingLoss::Bce {
        ds.require_splicing_counts(
            &format!("the splicing likelihood {} (--splicing-loss-type) is a count likelihood that", model.splicing_loss_type),
            "train it with --splicing-loss-type bce, the loss for PSI-only data (model.md §14.2), or give the count layers",
        )?;
    }
    let dims = dims_of(ds);
    let mut batch_norm = Vec::new();
    if train.adversarial_mixing && dims.n_batch > 1 {
        batch_norm.push(format!(
            "the adversarial batch classifier (on with more than one batch: {} batches of --batch-key {}; --adversarial-mixing false turns it off)",
            dims.n_batch,
            ds.covariates.batch.name
        ));
    }
    if model.use_batch_norm != crate::model::NormPlacement::None {
        batch_norm.push(format!("the model's BatchNorm (--use-batch-norm {})", model.use_batch_norm));
    }
    if batch_norm.is_empty() {
        return Ok(());
    }
    let (n_train, bs) = (split(ds, train)?.0.len(), train.batch_size);
    let one = if bs == 1 {
        Some("--batch-size 1 makes every training minibatch 1 cell".to_string())
    } else if n_train % bs == 1 {
        Some(format!("the last training minibatch would hold 1 cell ({n_train} training cells, --batch-size {bs}, --train-size {})", train.train_size))
    } else {
        None
    };
    match one {
        Some(why) => bail!(
            "{}: {why}, but {} trains with BatchNorm, which needs at least 2 cells in a minibatch; give a --batch-size of 2 or more that leaves no single cell over (or another --train-size)",
            ds.source,
            batch_norm.join(" and ")
        ),
        None => Ok(()),
    }
}

pub fn dims_of(ds: &Dataset) -> Dims {
    Dims {
        n_genes: ds.n_genes(),
        n_junctions: ds.n_junctions(),
        n_atse: ds.splicing.n_atse(),
        n_batch: ds.covariates.batch.levels.len().max(1),
        n_labels: ds.covariates.labels.levels.len().max(1),
        n_obs: ds.n_cells(),
        n_cats_per_cov: ds.covariates.categorical.iter().map(|c| c.levels.len()).collect(),
        n_cont: ds.covariates.continuous_names.len(),
    }
}

pub struct Trainer<'a> {
    pub ds: &'a Dataset,
    pub run: RunConfig,
    pub dir: PathBuf,
    pub model: SpliceVae,
    pub params: Params<f32>,
    pub opt: Adam,
    pub adversary: Option<(Adversary, Params<f32>, Adam)>,
    pub train_cells: Vec<usize>,
    pub validation_cells: Vec<usize>,
    pub state: TrainState,
    pub log: MetricsLog,
    /// Print one line per epoch (besides the progress bar).
    pub verbose: bool,
    /// `fit` ended by early stopping with `restore_best`: the checkpoint holds the best epoch's weights.
    pub restored_best: bool,
    /// The epoch just finished is the best so far (`restore_best`): its checkpoint writes best.safetensors.
    save_best: bool,
    /// The CUDA step, when training runs on a device ([`Trainer::use_device`]). The host `params` and
    /// `opt.state` then trail the device's and are brought back at the end of every epoch.
    device: Option<DeviceRun>,
}

/// The model and the optimizer moments on a device.
struct DeviceRun {
    model: crate::cuda::step::DeviceModel<'static>,
    adam: crate::cuda::step::DeviceAdam,
    /// The resident dataset's host index (None: minibatches are streamed from the host).
    resident: Option<std::sync::Arc<crate::cuda::resident::ResidentIndex>>,
    /// Where the training data lives, in words (for the logs).
    data_note: String,
}

impl<'a> Trainer<'a> {
    /// A fresh run: build and initialise the model, split the cells.
    pub fn new(ds: &'a Dataset, run: RunConfig, dir: &Path) -> Result<Self> {
        run.train.validate()?;
        check_training_data(&run.model, &run.train, ds)?;
        let model = SpliceVae::new(run.model.clone(), run.dims.clone(), ds.splicing.junc2atse.clone())?;
        let seed = run.train.seed;
        let mut params = model.init_params::<f32>(seed);
        let (train_cells, validation_cells) = split(ds, &run.train)?;
        if run.model.initialize_embeddings_from_pca && run.model.splicing_encoder_architecture == crate::model::SplicingEncoderArch::Partial {
            let emb = super::svd::psi_embedding(ds, &train_cells, run.model.code_dim, seed)?;
            model.set_feature_embedding(&mut params, &emb)?;
        }
        model.init_data_statistics(&mut params, &ds.splicing, &train_cells)?;
        let opt = Adam::new(AdamConfig::adamw(run.train.lr, run.train.weight_decay, run.train.eps), params.layout.n_trainable);
        let adversary = if run.train.adversarial_mixing && run.dims.n_batch > 1 {
            let adv = Adversary::new(run.model.joint_latent(&run.dims), run.dims.n_batch)?;
            let ap = adv.init_params::<f32>(seed ^ 0xAD7E_u64);
            // Adam(lr 1e-3, eps 0.01, weight_decay = the training weight decay), §6.2 step 5.
            let aopt = Adam::new(AdamConfig::adam_l2(1e-3, run.train.weight_decay, 0.01), ap.layout.n_trainable);
            Some((adv, ap, aopt))
        } else {
            None
        };
        let scheduler = match (run.train.lr_scheduler_type, run.train.reduce_lr_on_plateau) {
            (SchedulerKind::Step, _) => LrScheduler::step_lr(run.train.step_size, run.train.lr_factor),
            (SchedulerKind::Plateau, true) => LrScheduler::plateau(run.train.lr_patience, run.train.lr_factor),
            (SchedulerKind::Plateau, false) => LrScheduler::None,
        };
        let state = TrainState {
            epochs_done: 0,
            lr: run.train.lr,
            early_stopping: EarlyStopping::new(run.train.early_stopping_patience, run.train.early_stopping_warmup()),
            scheduler,
            stopped_early: false,
            global_step: 0,
        };
        Ok(Trainer {
            ds,
            run,
            dir: dir.to_path_buf(),
            model,
            params,
            opt,
            adversary,
            train_cells,
            validation_cells,
            state,
            log: MetricsLog::default(),
            verbose: true,
            restored_best: false,
            save_best: false,
            device: None,
        })
    }

    /// Continue a run from its directory (the checkpoint written at the end of the last completed epoch).
    pub fn resume(ds: &'a Dataset, dir: &Path, max_epochs: Option<usize>) -> Result<Self> {
        let run = read_run_config(dir)?;
        let state = check_checkpoint(dir, true)?;
        // (before the model is built from the data's ATSE grouping)
        if let Some(diff) = dims_difference(&dims_of(ds), &run.dims) {
            bail!("{}: the data differs from the run {} in {diff}", ds.source, dir.display());
        }
        // `cell` modality weights: the table's rows are the training cells, in order.
        if let Some(f) = check_run_features(dir, ds)?.filter(|f| !f.cells.is_empty()) {
            if let Some((i, ours, theirs)) = first_cell_difference(&f.cells, &ds.cell_names) {
                bail!(
                    "{}: cell {i} is `{ours}`, but the run {} (modality weights `cell`: a weight row per training cell) was trained with `{theirs}` there; --resume needs the training cells in the same order",
                    ds.source,
                    dir.display()
                );
            }
        }
        // The split and the minibatches follow the cells' positions: the data must hold the run's cells
        // in the same order (split.json; runs from before it have none).
        let split = read_run_split(dir).context("--resume checks the data's cells against the run's split")?;
        if let Some(sp) = &split {
            if let Some((i, ours, theirs)) = first_cell_difference(&sp.cells, &ds.cell_names) {
                bail!(
                    "{}: cell {i} is `{ours}`, but the run {} was trained with `{theirs}` there ({SPLIT_FILE}); --resume needs the training data's cells in the same order (the split and the minibatches follow the cells' positions)",
                    ds.source,
                    dir.display()
                );
            }
        }
        let mut t = Trainer::new(ds, run, dir)?;
        if let Some(sp) = &split {
            let mut validation = t.validation_cells.clone();
            validation.sort_unstable();
            if validation != sp.validation {
                bail!(
                    "{}: {SPLIT_FILE} holds {} validation cells, but the run's options split {} off now (another splicevi version?); --resume would not continue it exactly",
                    dir.display(),
                    sp.validation.len(),
                    validation.len()
                );
            }
        }
        if let Some(m) = max_epochs {
            t.run.train.max_epochs = m;
        }
        t.params.load_safetensors(&dir.join(MODEL_FILE))?;
        check_params_finite(&t.params, &dir.join(MODEL_FILE))?;
        t.opt = Adam::with_state(t.opt.config, AdamState::load(&dir.join(OPTIM_FILE), t.params.layout.n_trainable)?);
        if let Some((_, ap, aopt)) = &mut t.adversary {
            ap.load_safetensors(&dir.join(ADV_FILE))?;
            *aopt = Adam::with_state(aopt.config, AdamState::load(&dir.join(ADV_OPTIM_FILE), ap.layout.n_trainable)?);
        }
        t.state = state;
        t.opt.set_lr(t.state.lr);
        t.log = MetricsLog::load(dir)?;
        t.log.truncate(t.state.epochs_done);
        Ok(t)
    }

    /// Run the training steps (and validation) on `dev` from now on, starting from the current
    /// parameters and optimizer state, with GEMM operands in `precision`. Errors for options the CUDA
    /// step does not implement.
    /// The dataset goes to the device too when `--data-residency` allows and it fits
    /// ([`crate::cuda::resident`]); else each minibatch is streamed from the host.
    pub fn use_device(&mut self, dev: &'static crate::cuda::CudaDevice, precision: crate::cuda::gemm::GemmPrecision) -> Result<()> {
        self.use_device_with(dev, precision, crate::cuda::resident::residency())
    }

    /// [`Self::use_device`] with the data's residency given.
    pub fn use_device_with(
        &mut self,
        dev: &'static crate::cuda::CudaDevice,
        precision: crate::cuda::gemm::GemmPrecision,
        residency: crate::cuda::resident::Residency,
    ) -> Result<()> {
        use crate::cuda::resident::{bytes_needed, DeviceDataset, Residency};
        let mut model = crate::cuda::step::DeviceModel::new(dev, &self.model, &self.params)?;
        model.precision = precision;
        let adam = model.adam_state(&self.opt.state)?;
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        let need = bytes_needed(&self.model, self.ds);
        let upload = match (residency, dev.free_memory()) {
            (Residency::Host, _) => Err("--data-residency host".to_string()),
            (Residency::Device, _) => Ok(()),
            (Residency::Auto, Some(free)) if need > free / 2 => {
                Err(format!("the dataset needs about {:.0} MiB on the device, more than half of the {:.0} MiB free", mib(need), mib(free)))
            }
            (Residency::Auto, _) => Ok(()),
        };
        // `auto` falls back to streaming when the upload itself fails (device memory taken meanwhile).
        let uploaded = match upload {
            Ok(()) => match (DeviceDataset::upload(dev, &self.model, self.ds), residency) {
                (Ok(dd), _) => Ok(dd),
                (Err(e), Residency::Device) => return Err(e.context("--data-residency device")),
                (Err(e), _) => Err(format!("the upload failed: {e:#}")),
            },
            Err(why) => Err(why),
        };
        let (resident, data_note) = match uploaded {
            Ok(dd) => {
                let note = format!("data resident on the device ({:.1} MiB); minibatches gathered there", mib(dd.bytes()));
                let index = dd.index.clone();
                model.attach_dataset(dd);
                (Some(index), note)
            }
            Err(why) => (None, format!("data streamed from the host, one packed minibatch per step ({why})")),
        };
        self.device = Some(DeviceRun { model, adam, resident, data_note });
        Ok(())
    }

    /// The host's share of a device step for `cells` (what the preparation thread makes): the packed
    /// minibatch, or with the dataset resident its cells and covariates only.
    pub fn device_host_batch(&self, cells: &[usize], opts: &StepOptions) -> Result<crate::cuda::step::HostBatch> {
        let resident = self.device.as_ref().and_then(|d| d.resident.as_deref());
        Ok(device_batch(self.ds, &self.model, resident, cells, opts)?.1)
    }

    /// Where the training data lives while the steps run on a device (None: on the CPU).
    pub fn device_data_note(&self) -> Option<&str> {
        self.device.as_ref().map(|d| d.data_note.as_str())
    }

    /// Whether the steps run on a device.
    pub fn on_device(&self) -> bool {
        self.device.is_some()
    }

    /// Bring the device's parameters and optimizer moments back to `params` / `opt.state`.
    pub fn sync_from_device(&mut self) -> Result<()> {
        if let Some(d) = &self.device {
            // The `cross_gate` buffer is the host's (the step reads the gate from its options; the
            // checkpoint keeps the last one, as the CPU trainer's does).
            let gate = self.params.by_name("cross_gate").map(|v| v[0]);
            self.params = d.model.download_params()?;
            if let Some(g) = gate {
                self.params.set_cross_gate(g as f64);
            }
            self.opt.state = d.model.download_adam(&d.adam, self.opt.state.step)?;
        }
        Ok(())
    }

    /// Train until max_epochs or early stopping. Returns the metrics of every epoch.
    pub fn fit(&mut self) -> Result<()> {
        if self.state.stopped_early || self.state.epochs_done >= self.run.train.max_epochs {
            // A resumed run with nothing left: its config.json keeps the max_epochs it trained under.
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        write_json(&self.dir.join(CONFIG_FILE), &self.run)?;
        // (a fresh run writes its own: a file left by an earlier run is not this one's)
        let fresh = self.state.epochs_done == 0;
        let features = self.dir.join(FEATURES_FILE);
        if fresh || !features.exists() {
            // (compact: a name per feature, about 4 MB at the paper size)
            let text = serde_json::to_string(&RunFeatures::of_run(self.ds, &self.run.model))?;
            write_atomic(&features, |p| Ok(std::fs::write(p, text.as_bytes())?))?;
        }
        let split = self.dir.join(SPLIT_FILE);
        if fresh || !split.exists() {
            let mut validation = self.validation_cells.clone();
            validation.sort_unstable();
            let text = serde_json::to_string(&RunSplit { cells: self.ds.cell_names.clone(), validation })?;
            write_atomic(&split, |p| Ok(std::fs::write(p, text.as_bytes())?))?;
        }
        let tc = self.run.train.clone();
        let batches = Minibatches::new(self.train_cells.clone(), tc.batch_size, tc.seed)?;
        let n_steps = batches.n_batches();
        while self.state.epochs_done < tc.max_epochs && !self.state.stopped_early {
            let epoch = self.state.epochs_done;
            let t0 = Instant::now();
            let bar = progress_bar(n_steps, epoch, tc.max_epochs);
            if !self.verbose {
                // (--quiet: no bar on a terminal either)
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let mut m = EpochMetrics::new(epoch, self.state.lr);
            let (kl, gate) = kl_and_gate(epoch, tc.n_epochs_kl_warmup, tc.max_kl_weight);
            (m.kl_weight, m.cross_gate) = (kl as f64, gate as f64);
            let list = batches.epoch(epoch as u64);
            let on_device = self.device.is_some();
            if on_device {
                let steps: Vec<(u64, &[usize])> = list.iter().enumerate().map(|(i, c)| (i as u64, c.as_slice())).collect();
                self.device_steps(epoch, &steps, &mut m, &mut |m| {
                    bar.set_message(format!("loss {:.2} (rec {:.2}, kl {:.2})", m.train_loss / m.n_train.max(1) as f64, m.rec_train / m.n_train.max(1) as f64, m.kl_train / m.n_train.max(1) as f64));
                    bar.inc(1);
                })?;
            }
            for (step_in_epoch, cells) in list.iter().enumerate().filter(|_| !on_device) {
                let step = self.state.global_step;
                self.train_step(epoch, step_in_epoch as u64, cells, &mut m).with_context(|| self.stopped(epoch, step))?;
                bar.set_message(format!("loss {:.2} (rec {:.2}, kl {:.2})", m.train_loss / m.n_train.max(1) as f64, m.rec_train / m.n_train.max(1) as f64, m.kl_train / m.n_train.max(1) as f64));
                bar.inc(1);
            }
            bar.finish_and_clear();
            m.finish_train();
            if !self.validation_cells.is_empty() {
                let step = self.state.global_step;
                self.validate(epoch, &mut m).with_context(|| self.stopped(epoch, step))?;
            }
            self.sync_from_device()?;
            // (without validation nothing else sees the last step's parameters before they are saved)
            let step = self.state.global_step.saturating_sub(1);
            self.check_finite(epoch).with_context(|| self.stopped(epoch, step))?;
            m.seconds = t0.elapsed().as_secs_f64();
            m.cells_per_s = self.train_cells.len() as f64 / m.seconds.max(1e-9);
            self.end_of_epoch(epoch, &m)?;
            if self.verbose {
                eprintln!("{}", m.summary_line(tc.max_epochs));
                if self.state.stopped_early {
                    eprintln!("{}", early_stopping_line(epoch, &self.state.early_stopping));
                }
            }
            if self.verbose && epoch == 0 {
                if let Some(d) = &self.device {
                    eprintln!("{}", d.model.memory_summary(Some(&d.adam)));
                }
            }
            self.log.push(m);
            let step = self.state.global_step;
            self.checkpoint().with_context(|| self.stopped(epoch, step))?;
        }
        if self.state.stopped_early && tc.restore_best && self.dir.join(BEST_FILE).exists() {
            finish_restore_best(&self.dir, &self.state)?;
            self.params.load_safetensors(&self.dir.join(BEST_FILE))?;
            self.restored_best = true;
        }
        Ok(())
    }

    /// What a run that stopped in `epoch` (0-based) at `step` leaves: the last checkpoint, or none when
    /// it stopped before its first epoch ended (epochs counted from 1 here, as the progress lines do).
    fn stopped(&self, epoch: usize, step: u64) -> String {
        if self.dir.join(MODEL_FILE).exists() {
            format!("training stopped in epoch {} (step {step}); the last good checkpoint, written after epoch {epoch}, is kept in {}", epoch + 1, self.dir.display())
        } else {
            format!(
                "training stopped in epoch {} (step {step}), before any checkpoint was written: {} holds no model (train again there once the error that follows is fixed)",
                epoch + 1,
                self.dir.display()
            )
        }
    }

    /// Run `n_steps` training steps at `epoch` on its minibatches from number `first` on (cycling past
    /// the last, which may be smaller), with no validation and no checkpoint, and return the wall time in
    /// seconds and the cells processed: what `splicevi bench` measures.
    pub fn timed_steps(&mut self, epoch: usize, first: usize, n_steps: usize) -> Result<(f64, usize)> {
        let batches = Minibatches::new(self.train_cells.clone(), self.run.train.batch_size, self.run.train.seed)?;
        let list = batches.epoch(epoch as u64);
        let mut m = EpochMetrics::default();
        let mut cells = 0;
        let t0 = Instant::now();
        let steps: Vec<(u64, &[usize])> = list.iter().enumerate().cycle().skip(first % list.len().max(1)).take(n_steps).map(|(i, b)| (i as u64, b.as_slice())).collect();
        if self.device.is_some() {
            cells = self.device_steps(epoch, &steps, &mut m, &mut |_| {})?;
        } else {
            for &(i, b) in &steps {
                self.train_step(epoch, i, b, &mut m)?;
                cells += b.len();
            }
        }
        if let Some(d) = &self.device {
            // Launches are asynchronous: the time includes the device's work.
            d.model.synchronize()?;
        }
        Ok((t0.elapsed().as_secs_f64(), cells))
    }

    /// One training step on the CPU (the device's go through [`Self::device_steps`]).
    fn train_step(&mut self, epoch: usize, step: u64, cells: &[usize], m: &mut EpochMetrics) -> Result<()> {
        let tc = &self.run.train;
        let opts = step_options(&self.run, epoch, step);
        let step_seed = opts.seed;
        self.params.set_cross_gate(opts.cross_gate);
        let batch = Batch::from_dataset(self.ds, cells, true)?;
        let fwd = self.model.forward(&self.params, &batch, &opts)?;
        let out = &fwd.out;
        let bad = |term: &str| NonFinite { epoch, step: self.state.global_step, term: term.to_string() };
        check_terms(out, &bad)?;
        let mut total = out.loss as f64;
        let fool = match &self.adversary {
            Some((adv, ap, _)) => {
                let f = adv.fool(ap, &out.inference.z, &batch.batch, true, step_seed)?;
                total += f.loss as f64;
                Some(f)
            }
            None => None,
        };
        let grads = self.model.backward(&self.params, &batch, &fwd, fool.as_ref().map(|f| &f.dz))?;
        self.model.apply_buffer_updates(&mut self.params, &fwd.out.buffer_updates);
        if let Some(i) = first_non_finite(&grads.data) {
            let name = self.params.layout.entries.iter().find(|e| e.offset <= i && i < e.offset + e.len).map(|e| e.name.clone()).unwrap_or_default();
            return Err(bad(&format!("gradient of `{name}`")).into());
        }
        let clip = match tc.gradient_clip {
            Some(max) => clip_info(&grads.data, None, max as f32)?.scale,
            None => 1.0,
        };
        self.opt.step(self.params.trainable_mut(), &grads.data, None, clip)?;
        if let (Some((adv, ap, aopt)), Some(f)) = (&mut self.adversary, &fool) {
            adv.apply_buffer_updates(ap, &f.buffer_updates);
            // The classifier trains on the detached z (§6.2 step 5; its gradients are not clipped).
            let c = adv.classifier_step(ap, &fwd.out.inference.z, &batch.batch, true, step_seed)?;
            adv.apply_buffer_updates(ap, &c.buffer_updates);
            if !c.loss.is_finite() {
                return Err(bad("adversarial classifier loss").into());
            }
            aopt.step(ap.trainable_mut(), &c.grads.data, None, 1.0)?;
            m.adv_loss += c.loss as f64;
            m.adv_steps += 1;
        }
        m.add_train(out, total);
        self.state.global_step += 1;
        Ok(())
    }

    /// Training steps on the device for `steps` (step number in the epoch, cells), each minibatch
    /// gathered and packed on a second thread while the device runs the one before. Returns the cells
    /// processed. After each step, `after_step(metrics)` (the progress bar).
    fn device_steps(&mut self, epoch: usize, steps: &[(u64, &[usize])], m: &mut EpochMetrics, after_step: &mut dyn FnMut(&EpochMetrics)) -> Result<usize> {
        let (ds, run, model) = (self.ds, self.run.clone(), self.model.clone());
        let resident = self.device.as_ref().and_then(|d| d.resident.clone());
        // Streamed minibatches are staged (page-locked on a GPU) here, given back after their step.
        let staging = self.device.as_ref().filter(|d| d.resident.is_none()).map(|d| d.model.staging_pool());
        let pool = staging.clone();
        std::thread::scope(|sc| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<PreparedStep>>(1);
            sc.spawn(move || {
                for &(step, cells) in steps {
                    let p = prepare_device_step(ds, &run, &model, resident.as_deref(), epoch, step, cells).and_then(|mut p| {
                        if let Some(pool) = &pool {
                            p.host.stage(pool)?;
                        }
                        Ok(p)
                    });
                    let stop = p.is_err();
                    // A closed channel: the consumer stopped (an error); so do we.
                    if tx.send(p).is_err() || stop {
                        break;
                    }
                }
            });
            let mut cells = 0;
            for p in rx.iter() {
                let p = p?;
                cells += p.batch.n_cells();
                let step = self.state.global_step;
                self.run_device_step(epoch, p, staging.as_deref(), m).with_context(|| self.stopped(epoch, step))?;
                after_step(m);
            }
            Ok(cells)
        })
    }

    /// One prepared training step on the device: [`Self::train_step`]'s options, minibatch and seeds; the
    /// adversary stays on the host (its input z and its gradient are B × L).
    fn run_device_step(&mut self, epoch: usize, p: PreparedStep, staging: Option<&crate::cuda::runtime::StagingPool>, m: &mut EpochMetrics) -> Result<()> {
        let tc = self.run.train.clone();
        let PreparedStep { batch, mut host, opts } = p;
        let step_seed = opts.seed;
        self.params.set_cross_gate(opts.cross_gate);
        let global = self.state.global_step;
        let bad = |term: &str| NonFinite { epoch, step: global, term: term.to_string() };
        let (b, l) = (batch.n_cells(), self.model.arch.l);
        let Trainer { device, adversary, opt, .. } = self;
        let dr = device.as_mut().expect("device run");
        let mut fool = None;
        // The adversary's fool term needs z on the host mid-step; without one the step waits for the
        // device once, at its end (DeviceModel::train_step).
        let mut fool_dz = |z: &[f32]| -> Result<Option<Vec<f32>>> {
            let Some((adv, ap, _)) = adversary.as_ref() else { return Ok(None) };
            let f = adv.fool(ap, &crate::model::Mat::from_vec(b, l, z.to_vec()), &batch.batch, true, step_seed)?;
            let dz = f.dz.data.clone();
            fool = Some(f);
            Ok(Some(dz))
        };
        let extra_dz: Option<&mut dyn FnMut(&[f32]) -> Result<Option<Vec<f32>>>> = if adversary.is_some() { Some(&mut fool_dz) } else { None };
        let clip = tc.gradient_clip.map(|c| c as f32);
        let update = crate::cuda::step::Update { adam: &mut dr.adam, config: &opt.config, step: opt.state.step + 1, clip };
        let r = dr.model.train_step(&host, &opts, extra_dz, update);
        // The step has finished with the staged minibatch (it ends synchronised): its buffer is free.
        if let (Some(pool), Some(buf)) = (staging, host.take_staged()) {
            pool.give(buf);
        }
        let (out, norm) = r.map_err(|e| match e.downcast_ref::<crate::cuda::step::NonFiniteGradient>() {
            Some(g) => bad(&format!("gradient ({g})")).into(),
            None => e,
        })?;
        check_sums(&out.rl_expr, &out.rl_spl, &out.kl, out.penalty, out.concentration_prior, out.loss, &bad)?;
        anyhow::ensure!(norm.is_some(), "the device step returned no gradient norm for a finite loss");
        let mut total = out.loss;
        if let Some(f) = &fool {
            total += f.loss as f64;
        }
        opt.state.step += 1;
        if let (Some((adv, ap, aopt)), Some(f)) = (adversary.as_mut(), &fool) {
            adv.apply_buffer_updates(ap, &f.buffer_updates);
            let zm = crate::model::Mat::from_vec(b, l, out.z.clone());
            let c = adv.classifier_step(ap, &zm, &batch.batch, true, step_seed)?;
            adv.apply_buffer_updates(ap, &c.buffer_updates);
            if !c.loss.is_finite() {
                return Err(bad("adversarial classifier loss").into());
            }
            aopt.step(ap.trainable_mut(), &c.grads.data, None, 1.0)?;
            m.adv_loss += c.loss as f64;
            m.adv_steps += 1;
        }
        m.add_train_terms(&out.rl_expr, &out.rl_spl, &out.kl, out.penalty, total);
        self.state.global_step += 1;
        Ok(())
    }

    fn validate(&mut self, epoch: usize, m: &mut EpochMetrics) -> Result<()> {
        let tc = &self.run.train;
        let (kl, _) = kl_and_gate(epoch, tc.n_epochs_kl_warmup, tc.max_kl_weight);
        // Validation runs with the gate at 1 (§4.1) in eval mode; posterior samples are still drawn. The
        // buffer is 1 from here to the next training step (§5.7), so a checkpoint written after a
        // validation run holds 1 even during the KL warm-up, and the analyses decode with the gate open.
        self.params.set_cross_gate(1.0);
        for (vstep, cells) in sequential_batches(&self.validation_cells, tc.batch_size).enumerate() {
            let seed: u64 = stream(tc.seed, Purpose::Step, epoch as u64, (1u64 << 40) + vstep as u64).gen();
            let opts = StepOptions { kl_weight: kl as f64, cross_gate: 1.0, training: false, use_z_mean: false, routing: None, seed, noise: Noise::Seeded };
            if let Some(dr) = self.device.as_mut() {
                let (_, host) = device_batch(self.ds, &self.model, dr.resident.as_deref(), cells, &opts)?;
                let out = dr.model.forward_backward_prepared(&host, &opts, &mut |_| Ok(None), false).with_context(|| format!("validation in epoch {}", epoch + 1))?;
                let global = self.state.global_step;
                let bad = |term: &str| NonFinite { epoch, step: global, term: format!("validation {term}") };
                check_sums(&out.rl_expr, &out.rl_spl, &out.kl, out.penalty, out.concentration_prior, out.loss, &bad)?;
                m.add_validation_terms(&out.rl_expr, &out.rl_spl, &out.kl, out.penalty);
                continue;
            }
            let batch = Batch::from_dataset(self.ds, cells, true)?;
            let fwd = self.model.forward(&self.params, &batch, &opts).with_context(|| format!("validation in epoch {}", epoch + 1))?;
            let bad = |term: &str| NonFinite { epoch, step: self.state.global_step, term: format!("validation {term}") };
            check_terms(&fwd.out, &bad)?;
            m.add_validation(&fwd.out);
        }
        m.finish_validation();
        Ok(())
    }

    fn end_of_epoch(&mut self, epoch: usize, m: &EpochMetrics) -> Result<()> {
        self.state.epochs_done = epoch + 1;
        self.save_best = false;
        if self.validation_cells.is_empty() {
            return Ok(());
        }
        let tc = &self.run.train;
        if tc.early_stopping {
            let (improved, stop) = self.state.early_stopping.update(epoch, m.rec_validation);
            // (written with the epoch's checkpoint, as one of its files)
            self.save_best = improved && tc.restore_best;
            if stop {
                self.state.stopped_early = true;
            }
        }
        // StepLR steps once per validation run; ReduceLROnPlateau watches elbo_validation (§6.1).
        let lr = self.state.scheduler.step(self.state.lr, tc.lr, m.elbo_validation);
        self.state.lr = lr;
        self.opt.set_lr(lr);
        Ok(())
    }

    /// Write the checkpoint of the epoch just finished: parameters, optimizer, schedule state, metrics,
    /// as one unit ([`write_atomic_set`]): every file is staged before any replaces the previous
    /// epoch's, train_state.json last, so a failure leaves the previous checkpoint whole. Each
    /// safetensors file is stamped with the epoch ([`check_checkpoint`] refuses a mixed set).
    pub fn checkpoint(&self) -> Result<()> {
        fn params<'b>(p: &'b Params<f32>, meta: &'b HashMap<String, String>) -> FileWriter<'b> {
            Box::new(move |t: &Path| Ok(std::fs::write(t, p.to_safetensors_bytes(Some(meta.clone()))?)?))
        }
        fn moments<'b>(a: &'b AdamState, meta: &'b HashMap<String, String>) -> FileWriter<'b> {
            Box::new(move |t: &Path| Ok(std::fs::write(t, a.to_safetensors_with(meta.clone())?)?))
        }
        fn text(s: String) -> FileWriter<'static> {
            Box::new(move |t: &Path| Ok(std::fs::write(t, s.as_bytes())?))
        }
        let meta = stamp(&self.state);
        let d = |f: &str| self.dir.join(f);
        let mut files: Vec<(PathBuf, FileWriter)> = vec![(d(MODEL_FILE), params(&self.params, &meta)), (d(OPTIM_FILE), moments(&self.opt.state, &meta))];
        if let Some((_, ap, aopt)) = &self.adversary {
            files.push((d(ADV_FILE), params(ap, &meta)));
            files.push((d(ADV_OPTIM_FILE), moments(&aopt.state, &meta)));
        }
        if self.save_best {
            files.push((d(BEST_FILE), params(&self.params, &meta)));
        }
        let (tsv, jsonl) = self.log.to_text()?;
        files.push((d(METRICS_TSV), text(tsv)));
        files.push((d(METRICS_JSONL), text(jsonl)));
        files.push((d(STATE_FILE), text(serde_json::to_string_pretty(&self.state)?)));
        write_atomic_set(files)
    }

    /// Before a checkpoint: every parameter and optimizer moment finite (a NaN model is never saved).
    fn check_finite(&self, epoch: usize) -> Result<()> {
        let bad = |term: String| -> anyhow::Error { NonFinite { epoch, step: self.state.global_step.saturating_sub(1), term }.into() };
        let name = |p: &Params<f32>, i: usize| p.layout.entries.iter().find(|e| e.offset <= i && i < e.offset + e.len).map(|e| e.name.clone()).unwrap_or_default();
        let mut sets = vec![("", &self.params, &self.opt.state)];
        if let Some((_, ap, aopt)) = &self.adversary {
            sets.push(("adversary ", ap, &aopt.state));
        }
        for (who, p, a) in sets {
            if let Some(i) = first_non_finite(&p.data) {
                return Err(bad(format!("{who}parameter `{}`", name(p, i))));
            }
            for (what, v) in [("exp_avg", &a.exp_avg), ("exp_avg_sq", &a.exp_avg_sq)] {
                if let Some(i) = first_non_finite(v) {
                    return Err(bad(format!("{who}optimizer moment {what} of `{}`", name(p, i))));
                }
            }
        }
        Ok(())
    }
}

/// Why training stopped after `epoch` (0-based; counted from 1 here, as the progress lines count).
/// The count is the checks that did not improve (Lightning's wait count: patience 0 stops after one).
pub fn early_stopping_line(epoch: usize, es: &EarlyStopping) -> String {
    let best = match (es.best, es.best_epoch) {
        (Some(b), Some(e)) => format!("best {b:.4} at epoch {}", e + 1),
        _ => "no finite value after the warm-up".to_string(),
    };
    format!(
        "early stopping after epoch {}: reconstruction_loss_validation did not improve for {} epoch{} ({best})",
        epoch + 1,
        es.wait,
        if es.wait == 1 { "" } else { "s" }
    )
}

/// Index of the first NaN or infinite value: a vectorised pass per worker, and the position only once
/// something is wrong.
fn first_non_finite(v: &[f32]) -> Option<usize> {
    let any = v.par_chunks(1 << 16).any(|c| c.iter().fold(false, |bad, x| bad | !x.is_finite()));
    if any {
        v.iter().position(|x| !x.is_finite())
    } else {
        None
    }
}

fn check_terms<F: Fn(&str) -> NonFinite>(out: &crate::model::StepOutput<f32>, bad: &F) -> Result<()> {
    check_sums(&out.rl_expr, &out.rl_spl, &out.kl, out.penalty as f64, out.concentration_prior as f64, out.loss as f64, bad)
}

/// The options of training step `step` of `epoch`: KL weight and cross gate of the schedule, the
/// warm-up coin flip (§4.1: one per minibatch picks the posterior; not for concatenate) and the seed of
/// the step's dropout masks and noise.
fn step_options(run: &RunConfig, epoch: usize, step: u64) -> StepOptions {
    let tc = &run.train;
    let (kl, gate) = kl_and_gate(epoch, tc.n_epochs_kl_warmup, tc.max_kl_weight);
    let routing = if gate < 1.0 && run.model.modality_weights != ModalityWeights::Concatenate && run.model.warmup_routing == WarmupRouting::Coin {
        let mut r = stream(tc.seed, Purpose::Routing, epoch as u64, step);
        Some(if r.gen::<bool>() { Modality::Splicing } else { Modality::Expression })
    } else {
        None
    };
    let step_seed: u64 = stream(tc.seed, Purpose::Step, epoch as u64, step).gen();
    StepOptions { kl_weight: kl as f64, cross_gate: gate as f64, training: true, use_z_mean: false, routing, seed: step_seed, noise: Noise::Seeded }
}

/// A device training step's inputs, made on the host ahead of the step.
struct PreparedStep {
    batch: Batch,
    host: crate::cuda::step::HostBatch,
    opts: StepOptions,
}

/// The options, minibatch and packed device inputs of training step `step` of `epoch` (the same
/// schedule, coin flip and seeds as [`Trainer::train_step`]).
/// With the dataset `resident` on the device only the cells and their covariates are packed (the
/// adversary reads the batch codes of the cells-only `batch`).
fn prepare_device_step(
    ds: &Dataset,
    run: &RunConfig,
    model: &SpliceVae,
    resident: Option<&crate::cuda::resident::ResidentIndex>,
    epoch: usize,
    step: u64,
    cells: &[usize],
) -> Result<PreparedStep> {
    let opts = step_options(run, epoch, step);
    let (batch, host) = device_batch(ds, model, resident, cells, &opts)?;
    Ok(PreparedStep { batch, host, opts })
}

/// The minibatch `cells` for a device step: gathered and packed on the host, or (dataset resident)
/// its cells and covariates only.
fn device_batch(
    ds: &Dataset,
    model: &SpliceVae,
    resident: Option<&crate::cuda::resident::ResidentIndex>,
    cells: &[usize],
    opts: &StepOptions,
) -> Result<(Batch, crate::cuda::step::HostBatch)> {
    use crate::cuda::step::HostBatch;
    Ok(match resident {
        Some(index) => {
            let batch = Batch::cells_only(ds, cells, true)?;
            let host = HostBatch::build_resident_from(model, &batch, index, cells, opts)?;
            (batch, host)
        }
        None => {
            let batch = Batch::from_dataset(ds, cells, true)?;
            let host = HostBatch::build(model, &batch, opts)?;
            (batch, host)
        }
    })
}

/// The first non-finite loss term, named.
fn check_sums<F: Fn(&str) -> NonFinite>(rl_expr: &[f32], rl_spl: &[f32], kl: &[f32], penalty: f64, prior: f64, loss: f64, bad: &F) -> Result<()> {
    let sum = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
    let terms = [
        ("reconstruction_loss_expression", sum(rl_expr)),
        ("reconstruction_loss_splicing", sum(rl_spl)),
        ("kl_divergence_z", sum(kl)),
        ("modality penalty", penalty),
        ("concentration prior", prior),
        ("loss", loss),
    ];
    for (name, v) in terms {
        if !v.is_finite() {
            return Err(bad(name).into());
        }
    }
    Ok(())
}

/// The original's split (§6.3), seeded.
pub fn split(ds: &Dataset, tc: &TrainConfig) -> Result<(Vec<usize>, Vec<usize>)> {
    let cfg = SplitConfig { train_size: (tc.train_size != 0.9).then_some(tc.train_size), batch_size: tc.batch_size, ..Default::default() };
    let s = train_validation_split(ds.n_cells(), &cfg, tc.seed)?;
    if s.train.is_empty() && s.moved > 0 {
        bail!(
            "{}: no training cells after the split ({} cells): when --train-size is not given, scvi's small-last-batch rule moves a last training minibatch of 1 or 2 cells out of training (model.md §6.3), and here that minibatch ({} of --batch-size {}) held every training cell; give --train-size 1 to train on all of them",
            ds.source,
            ds.n_cells(),
            s.moved,
            tc.batch_size
        );
    }
    if s.train.is_empty() {
        bail!("{}: no training cells after the split ({} cells)", ds.source, ds.n_cells());
    }
    Ok((s.train, s.validation))
}

/// The first position where the data's cells differ from a run's: (position, the data's cell, the
/// run's), "(none)" past the end of the shorter list.
fn first_cell_difference<'c>(run: &'c [String], data: &'c [String]) -> Option<(usize, &'c str, &'c str)> {
    let at = |v: &'c [String], i: usize| v.get(i).map_or("(none)", |s| s.as_str());
    (0..run.len().max(data.len())).find(|&i| run.get(i) != data.get(i)).map(|i| (i, at(data, i), at(run, i)))
}

/// The schedule state of the run's last checkpoint (read through [`check_checkpoint`], which also
/// checks that the checkpoint is whole).
pub fn read_train_state(dir: &Path) -> Result<TrainState> {
    let st = std::fs::read_to_string(dir.join(STATE_FILE)).with_context(|| format!("{}: no {STATE_FILE} to resume from", dir.display()))?;
    serde_json::from_str(&st).with_context(|| format!("{}: damaged {STATE_FILE} (empty or cut short?)", dir.display()))
}

/// The stamp of a checkpoint written with `state`: safetensors metadata (all values are strings).
fn stamp(state: &TrainState) -> HashMap<String, String> {
    HashMap::from([(STAMP_EPOCHS.to_string(), state.epochs_done.to_string()), (STAMP_STEP.to_string(), state.global_step.to_string())])
}

/// The (epochs done, global step) stamp of a checkpoint's safetensors file, read from its header
/// alone; None for a file written before the stamps existed.
pub fn read_stamp(path: &Path) -> Result<Option<(usize, u64)>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let size = f.metadata()?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).with_context(|| format!("{}: not a safetensors file (empty or cut short?)", path.display()))?;
    let n = u64::from_le_bytes(n);
    anyhow::ensure!(n <= size.saturating_sub(8) && n <= 1 << 30, "{}: not a safetensors file (a header of {n} bytes in {size})", path.display());
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let v: serde_json::Value = serde_json::from_slice(&header).with_context(|| format!("{}: not a safetensors file (unreadable header)", path.display()))?;
    let get = |k: &str| v.get("__metadata__").and_then(|m| m.get(k)).and_then(|x| x.as_str()).and_then(|x| x.parse::<u64>().ok());
    Ok(match (get(STAMP_EPOCHS), get(STAMP_STEP)) {
        (Some(e), Some(s)) => Some((e as usize, s)),
        _ => None,
    })
}

/// The run's last checkpoint, checked whole before it is used; returns its schedule state. The
/// analyses (`resume` false) need model.safetensors and train_state.json of the same epoch; --resume
/// also the optimizer (and the adversary's files) of that epoch, and the metrics of every epoch done.
/// Different stamps mean the checkpoint was interrupted while its files were renamed into place
/// (killed, or the machine stopped): refused, naming each file's epoch. Runs written before the stamps
/// existed have none and are taken as they are.
pub fn check_checkpoint(dir: &Path, resume: bool) -> Result<TrainState> {
    let redo = "train again there with --overwrite (or into another --out)";
    match (dir.join(MODEL_FILE).exists(), dir.join(STATE_FILE).exists()) {
        (false, false) => bail!("{}: no checkpoint ({MODEL_FILE}): its training stopped before the first epoch ended; train again there", dir.display()),
        (true, false) => bail!(
            "{}: incomplete checkpoint: {MODEL_FILE} without {STATE_FILE} (the run was interrupted while writing a checkpoint, or the file was removed), so which epoch the model is from is unknown; {redo}",
            dir.display()
        ),
        (false, true) => bail!("{}: incomplete checkpoint: {STATE_FILE} without {MODEL_FILE} (removed?); {redo}", dir.display()),
        (true, true) => {}
    }
    let mut state = read_train_state(dir)?;
    let mut files = vec![MODEL_FILE];
    if resume {
        let run = read_run_config(dir)?;
        files.push(OPTIM_FILE);
        if run.train.adversarial_mixing && run.dims.n_batch > 1 {
            files.extend([ADV_FILE, ADV_OPTIM_FILE]);
        }
        let missing: Vec<&str> = files.iter().copied().filter(|f| !dir.join(f).exists()).collect();
        if !missing.is_empty() {
            bail!("{}: incomplete checkpoint: no {} (--resume needs the optimizer state to continue the run exactly); {redo}", dir.display(), missing.join(", "));
        }
    }
    let read_stamps = || files.iter().map(|f| Ok((*f, read_stamp(&dir.join(f))?))).collect::<Result<Vec<_>>>();
    let mut stamps = read_stamps()?;
    let mixed = |state: &TrainState, stamps: &[(&str, Option<(usize, u64)>)]| {
        stamps.iter().any(|(_, s)| s.is_some()) && stamps.iter().any(|(_, s)| *s != Some((state.epochs_done, state.global_step)))
    };
    // An analysis reading a run while its training replaces the checkpoint can see the files mid-rename:
    // it reads again (the renames take milliseconds) while the training holds the lock.
    let mut tries = 0;
    while !resume && mixed(&state, &stamps) && training_active(dir) && tries < 50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        tries += 1;
        state = read_train_state(dir)?;
        stamps = read_stamps()?;
    }
    let want = (state.epochs_done, state.global_step);
    if !resume && mixed(&state, &stamps) && training_active(dir) {
        bail!("{}: a training is writing this run now (it holds {LOCK_FILE}) and its checkpoint was being replaced for 5 s; run this again once its epoch has ended", dir.display());
    }
    if mixed(&state, &stamps) && dir.join(crate::util::COMMIT_JOURNAL).exists() {
        bail!(
            "{}: the checkpoint's writing was interrupted between its renames (killed, or the machine stopped); its journal ({}) holds the rest: `splicevi train DATA --out {} --resume` completes it",
            dir.display(),
            crate::util::COMMIT_JOURNAL,
            dir.display()
        );
    }
    if mixed(&state, &stamps) {
        let mut list = vec![format!("{STATE_FILE}: after epoch {} (step {})", want.0, want.1)];
        list.extend(stamps.iter().map(|(f, s)| match s {
            Some((e, st)) => format!("{f}: after epoch {e} (step {st})"),
            None => format!("{f}: no epoch stamp (an older splicevi's)"),
        }));
        bail!(
            "{}: the checkpoint mixes files of different epochs ({}): its writing was interrupted (killed, or the machine stopped) while the files were renamed into place, so {}; {redo}",
            dir.display(),
            list.join(", "),
            if resume { "--resume cannot continue it exactly" } else { "the model is not the one train_state.json and the metrics describe" }
        );
    }
    if resume {
        let path = dir.join(METRICS_JSONL);
        anyhow::ensure!(path.exists(), "{}: missing, but {STATE_FILE} says {} epochs were done: --resume would lose their history; {redo}", path.display(), state.epochs_done);
        let log = MetricsLog::load(dir)?;
        if log.epochs.len() < state.epochs_done {
            bail!(
                "{}: holds {} epochs, but {STATE_FILE} says {} were done: --resume would lose their history (restore the file, or {redo})",
                path.display(),
                log.epochs.len(),
                state.epochs_done
            );
        }
        if let Some(i) = (0..state.epochs_done).find(|&i| log.epochs[i].epoch != i) {
            bail!("{}: line {} is epoch {}, expected {} (the epochs in order, from 0)", path.display(), i + 1, log.epochs[i].epoch, i);
        }
    }
    Ok(state)
}

/// Err naming the first tensor of `p` (read from `path`) that holds a NaN or an infinite value.
pub fn check_params_finite(p: &Params<f32>, path: &Path) -> Result<()> {
    if let Some(i) = first_non_finite(&p.data) {
        let e = p.layout.entries.iter().find(|e| e.offset <= i && i < e.offset + e.len);
        let (name, at) = e.map_or((String::new(), i), |e| (e.name.clone(), i - e.offset));
        bail!(
            "{}: tensor `{name}` holds a non-finite value ({} at index {at}): the model is unusable (its training diverged); train again, e.g. with a lower --lr",
            path.display(),
            p.data[i]
        );
    }
    Ok(())
}

/// A run that early stopping ended with `restore_best` gets the best epoch's weights copied into
/// model.safetensors by `fit`, after the last checkpoint: one interrupted in between holds the last
/// epoch's. Whether that copy is still to be made (best.safetensors' tensors differ from the model's).
pub fn restore_best_pending(dir: &Path, state: &TrainState, restore_best: bool) -> Result<bool> {
    let best = dir.join(BEST_FILE);
    if !(state.stopped_early && restore_best && best.exists()) {
        return Ok(false);
    }
    let (m, b) = (std::fs::read(dir.join(MODEL_FILE))?, std::fs::read(&best)?);
    let (m, b) = (parse_safetensors(&m, &dir.join(MODEL_FILE))?, parse_safetensors(&b, &best)?);
    let mut names = b.names();
    names.sort();
    let mut model_names = m.names();
    model_names.sort();
    Ok(names != model_names || names.iter().any(|n| m.tensor(n).ok().map(|t| t.data()) != b.tensor(n).ok().map(|t| t.data())))
}

fn parse_safetensors<'b>(bytes: &'b [u8], path: &Path) -> Result<safetensors::SafeTensors<'b>> {
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e:?}", path.display()))
}

/// The copy `fit` makes at the end of a run that early stopping ended with `restore_best`, and that
/// `--resume` makes when [`restore_best_pending`] finds it missing: model.safetensors =
/// best.safetensors' tensors, stamped with the final state.
pub fn finish_restore_best(dir: &Path, state: &TrainState) -> Result<()> {
    let b = std::fs::read(dir.join(BEST_FILE))?;
    let st = parse_safetensors(&b, &dir.join(BEST_FILE))?;
    let bytes = safetensors::serialize(st.tensors(), &Some(stamp(state))).map_err(|e| anyhow::anyhow!("{}: {e:?}", dir.join(MODEL_FILE).display()))?;
    write_atomic(&dir.join(MODEL_FILE), |p| Ok(std::fs::write(p, &bytes)?))
}

/// Whether a training holds the run directory's lock now (a shared lock cannot be had).
pub fn training_active(dir: &Path) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(f) = std::fs::File::open(dir.join(LOCK_FILE)) else { return false };
    // SAFETY: flock on a descriptor owned here; the shared lock goes with the file.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// An exclusive lock on a run directory, held by the training that writes it (released when dropped,
/// or when the process ends however it ends).
pub struct RunLock(#[allow(dead_code)] std::fs::File);

/// Creates `dir` if need be and locks it for one training ([`LOCK_FILE`], flock): a second training
/// into the same directory is refused, naming it, instead of mixing its files with the first's.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(dir).with_context(|| format!("--out {}: cannot create the run directory", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("--out {}: cannot write in the run directory", dir.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!("--out {}: another training is writing this run directory now (it holds {}); wait for it to end, or train into another --out", dir.display(), path.display());
        }
        return Err(e).with_context(|| format!("--out {}: locking {}", dir.display(), path.display()));
    }
    // Only the training holding the lock writes the run's files: a checkpoint whose renames were cut
    // short is completed from its journal (every file was staged whole first), and temporary files
    // found then were left by a training killed while writing (SIGKILL, power loss).
    let completed = crate::util::finish_interrupted_commit(dir)?;
    if completed > 0 {
        eprintln!("{}: completed a checkpoint whose writing was interrupted between its renames ({completed} file(s) renamed into place)", dir.display());
    }
    let run_files = [CONFIG_FILE, MODEL_FILE, BEST_FILE, OPTIM_FILE, ADV_FILE, ADV_OPTIM_FILE, STATE_FILE, FEATURES_FILE, SPLIT_FILE, METRICS_TSV, METRICS_JSONL, "curves.png", "curves.svg"];
    let left: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--out {}: reading the run directory", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp") && run_files.iter().any(|f| n.starts_with(&format!(".{f}."))))
        .map(|n| dir.join(n))
        .collect();
    for p in &left {
        std::fs::remove_file(p).with_context(|| format!("removing {}, left by an interrupted training", p.display()))?;
    }
    if !left.is_empty() {
        eprintln!("{}: removed {} temporary file(s) left by an interrupted training", dir.display(), left.len());
    }
    Ok(RunLock(f))
}

pub fn read_run_config(dir: &Path) -> Result<RunConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: not a run directory (no {CONFIG_FILE})", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: unreadable run config", path.display()))
}

/// A run directory whose training stopped before its first epoch ended has a config but no checkpoint;
/// one interrupted while writing a checkpoint has an incomplete or mixed one ([`check_checkpoint`]).
pub fn require_checkpoint(dir: &Path) -> Result<()> {
    check_checkpoint(dir, false).map(|_| ())
}

/// Load the trained model of a run directory.
pub fn load_model(dir: &Path, ds: &Dataset) -> Result<(RunConfig, SpliceVae, Params<f32>)> {
    let run = read_run_config(dir)?;
    let state = check_checkpoint(dir, false)?;
    if restore_best_pending(dir, &state, run.train.restore_best)? {
        bail!(
            "{}: early stopping ended this run with restore_best, but it was interrupted before the best epoch's weights replaced the last epoch's in {MODEL_FILE}; `splicevi train DATA --out {} --resume` finishes that (nothing is trained)",
            dir.display(),
            dir.display()
        );
    }
    let dims = dims_of(ds);
    anyhow::ensure!(
        dims.n_genes == run.dims.n_genes && dims.n_junctions == run.dims.n_junctions && dims.n_atse == run.dims.n_atse,
        "{}: {} genes / {} junctions / {} ATSEs, but the run {} was trained on {} / {} / {}",
        ds.source, dims.n_genes, dims.n_junctions, dims.n_atse, dir.display(), run.dims.n_genes, run.dims.n_junctions, run.dims.n_atse
    );
    check_run_features(dir, ds)?;
    let model = SpliceVae::new(run.model.clone(), run.dims.clone(), ds.splicing.junc2atse.clone())?;
    let mut params = model.init_params::<f32>(0);
    params.load_safetensors(&dir.join(MODEL_FILE))?;
    check_params_finite(&params, &dir.join(MODEL_FILE))?;
    Ok((run, model, params))
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    write_atomic(path, |p| Ok(std::fs::write(p, text.as_bytes())?))
}

fn progress_bar(n: usize, epoch: usize, max_epochs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(n as u64), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("epoch {}/{max_epochs} {{bar:30}} {{pos}}/{{len}} {{per_sec}} {{msg}}", epoch + 1))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::{early_stopping_line, first_non_finite, EarlyStopping};

    /// Epochs from 1 as the progress lines count, no `Some(..)`, and the checks that did not improve
    /// rather than the patience: patience 0 stops, as Lightning's does, after one such check.
    #[test]
    fn early_stopping_line_counts_from_one_and_says_how_long() {
        let mut es = EarlyStopping::new(0, 1);
        assert_eq!(es.update(0, 1.0), (false, false));
        assert_eq!(es.update(1, 5.0), (true, false));
        assert_eq!(es.update(2, 6.0), (false, true));
        assert_eq!(early_stopping_line(2, &es), "early stopping after epoch 3: reconstruction_loss_validation did not improve for 1 epoch (best 5.0000 at epoch 2)");
        let mut es = EarlyStopping::new(2, 0);
        es.update(0, 5.0);
        es.update(1, 5.0);
        assert_eq!(es.update(2, 7.0), (false, true));
        assert!(early_stopping_line(2, &es).ends_with("did not improve for 2 epochs (best 5.0000 at epoch 1)"));
    }

    #[test]
    fn first_non_finite_finds_the_first_bad_value_across_chunks() {
        let mut v = vec![1.5f32; 300_000];
        assert_eq!(first_non_finite(&v), None);
        v[250_000] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&v), Some(250_000));
        v[131_073] = f32::NAN;
        assert_eq!(first_non_finite(&v), Some(131_073));
        v[7] = f32::INFINITY;
        assert_eq!(first_non_finite(&v), Some(7));
        assert_eq!(first_non_finite(&[]), None);
    }
}
