use super::option_flags::OptionTable;
use crate::data::{load::load, DataOptions};
use crate::cuda::gemm::GemmPrecision;
use crate::device::Device;
use crate::model::ModelConfig;
use crate::train::trainer::{check_checkpoint, check_training_data, dims_of, lock_run_dir, read_run_config, RunConfig, TrainState, Trainer};
use crate::train::{presets, TrainConfig};
use anyhow::{Context, Result};
use clap::{ArgMatches, Args, FromArgMatches};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(after_help = "The [default: …] of the model and training options are the `default` preset's; --preset paper \
or robust changes some of them (docs/robust.md). Every resolved value is written to RUN/config.json.")]
pub struct TrainArgs {
    /// Input data: a .h5mu with both modalities, or a Matrix Market directory with expression.mtx
    /// (a splicing-only .h5ad can be validated, not trained on: the model needs both modalities).
    pub data: PathBuf,
    /// Run directory: checkpoint, resolved config, metrics.
    #[arg(long)]
    pub out: PathBuf,
    /// Option preset: default | paper (faithful to the original) | robust (recommended for new work,
    /// docs/robust.md). [default: default]
    #[arg(long)]
    pub preset: Option<String>,
    /// TOML file with [model] and [train] tables (applied over the preset, under the flags).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (options come from its config.json;
    /// only --max-epochs may change: any other option is an error).
    #[arg(long)]
    pub resume: bool,
    /// Start a new run in --out although it holds one: its checkpoint, optimizer state, metrics and
    /// curves are removed first (without this, an existing run is an error).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// No per-epoch lines or progress bar on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Do not draw the training curves (RUN_DIR/curves.png / .svg) at the end.
    #[arg(long)]
    pub no_plots: bool,
    #[command(flatten)]
    pub data_options: DataOptions,
    #[command(flatten)]
    pub options: OptionFlags,
}

/// One flag per model and training option (see `option_flags`).
#[derive(Debug, Clone, Default)]
pub struct OptionFlags {
    pub model: Value,
    pub train: Value,
}

fn tables() -> (OptionTable, OptionTable) {
    (OptionTable::from_default("Model options", &ModelConfig::default()), OptionTable::from_default("Training options", &TrainConfig::default()))
}

impl FromArgMatches for OptionFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let (mt, tt) = tables();
        let mut f = OptionFlags { model: Value::Object(Default::default()), train: Value::Object(Default::default()) };
        mt.apply(m, &mut f.model).map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e.to_string()))?;
        tt.apply(m, &mut f.train).map_err(|e| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e.to_string()))?;
        Ok(f)
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for OptionFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let (mt, tt) = tables();
        tt.augment(mt.augment(cmd))
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

fn merge(base: &mut Value, over: &Value) {
    if let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
}

/// Whether option `key` of `T` is optional (deserializes from null), judged on `T`'s defaults.
fn optional<T: serde::de::DeserializeOwned>(defaults: &Value, key: &str) -> bool {
    let mut one = defaults.clone();
    match one.as_object_mut() {
        Some(m) if m.contains_key(key) => {
            m.insert(key.to_string(), Value::Null);
            serde_json::from_value::<T>(one).is_ok()
        }
        _ => false,
    }
}

/// TOML has no null: in a `--config` table the flag's `none` clears an optional option. Only optional
/// ones: an enum variant spelled "None" (modality_penalty, use_batch_norm) stays a string.
fn config_nones<T: serde::de::DeserializeOwned + serde::Serialize + Default>(table: &Value) -> Value {
    let defaults = serde_json::to_value(T::default()).unwrap_or(Value::Null);
    let mut out = table.clone();
    if let Some(o) = out.as_object_mut() {
        for (k, v) in o.iter_mut() {
            if v.as_str().is_some_and(super::option_flags::is_none_word) && optional::<T>(&defaults, k) {
                *v = Value::Null;
            }
        }
    }
    out
}

/// Deserialize a config, naming the offending option when a value has the wrong type or spelling
/// (serde_json's own message does not say which field it was).
fn parse<T: serde::de::DeserializeOwned + serde::Serialize + Default>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value::<T>(v.clone()).map_err(|e| {
        let base = serde_json::to_value(T::default()).unwrap_or(Value::Null);
        let culprit = v.as_object().and_then(|o| {
            o.iter().find(|(k, val)| {
                let mut one = base.clone();
                one.as_object_mut().map(|m| m.insert((*k).clone(), (*val).clone()));
                serde_json::from_value::<T>(one).is_err()
            })
        });
        match culprit {
            Some((k, val)) => anyhow::anyhow!("{what}: `{k}` = {val}: {e}"),
            None => anyhow::anyhow!("{what}: {e}"),
        }
    })
}

impl TrainArgs {
    /// The preset asked for (`default` when none was).
    pub fn preset_name(&self) -> &str {
        self.preset.as_deref().unwrap_or("default")
    }
}

/// The files `splicevi train` writes into a run directory (removed by --overwrite, in this order: the
/// checkpoint's mark train_state.json first and config.json last, so that a removal cut short leaves a
/// run the checks call incomplete, never one that looks whole).
const RUN_FILES: [&str; 13] = [
    crate::train::trainer::STATE_FILE,
    crate::train::trainer::MODEL_FILE,
    crate::train::trainer::BEST_FILE,
    crate::train::trainer::OPTIM_FILE,
    crate::train::trainer::ADV_FILE,
    crate::train::trainer::ADV_OPTIM_FILE,
    crate::train::trainer::METRICS_TSV,
    crate::train::trainer::METRICS_JSONL,
    "curves.png",
    "curves.svg",
    crate::train::trainer::SPLIT_FILE,
    crate::train::trainer::FEATURES_FILE,
    crate::train::trainer::CONFIG_FILE,
];

/// --resume takes its options from the run: a flag given beside it (other than --max-epochs) would be
/// ignored, so it is an error instead.
fn check_resume_flags(args: &TrainArgs) -> Result<()> {
    let mut given: Vec<String> = Vec::new();
    if let Some(p) = &args.preset {
        given.push(format!("--preset {p}"));
    }
    if let Some(c) = &args.config {
        given.push(format!("--config {}", c.display()));
    }
    if args.data_options != DataOptions::default() {
        given.push("a data option (--batch-key, layers, covariates, ...)".into());
    }
    let flags = |v: &Value| -> Vec<String> { v.as_object().map(|o| o.keys().map(|k| format!("--{}", OptionTable::flag(k))).collect()).unwrap_or_default() };
    given.extend(flags(&args.options.model));
    given.extend(flags(&args.options.train).into_iter().filter(|f| f != "--max-epochs"));
    if !given.is_empty() {
        anyhow::bail!(
            "--resume continues {} with the options in its config.json; only --max-epochs may change, but {} {} given: leave them out (to change them, start a new run with --overwrite, or in another directory)",
            args.out.display(),
            given.join(", "),
            if given.len() == 1 { "was" } else { "were" }
        );
    }
    Ok(())
}

/// A new run's directory must be absent, or a directory that holds no run, unless --overwrite.
/// Returns whether an earlier run is there to be removed ([`remove_run_files`]).
fn check_run_dir(args: &TrainArgs) -> Result<bool> {
    let out = &args.out;
    if out.exists() && !out.is_dir() {
        anyhow::bail!("--out {}: exists and is not a directory (train writes a run directory)", out.display());
    }
    if !out.join(crate::train::trainer::CONFIG_FILE).exists() {
        return Ok(false);
    }
    if !out.join(crate::train::trainer::MODEL_FILE).exists() {
        // a run that stopped before its first checkpoint: nothing to keep (its config and features go)
        return Ok(true);
    }
    if !args.overwrite {
        anyhow::bail!(
            "--out {}: already holds a run (config.json); continue it with --resume, start over with --overwrite, or choose another directory",
            out.display()
        );
    }
    Ok(true)
}

/// --overwrite: the earlier run's files go (only the run's own, never other files there), so that
/// none of them, e.g. an adversary's checkpoint, outlives it beside the new run.
fn remove_run_files(out: &std::path::Path) -> Result<()> {
    for f in RUN_FILES {
        let p = out.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("--overwrite: removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// preset → --config file → flags, each checked.
/// ModelConfig's serde aliases (alias, field): the original's other spellings, accepted in --config.
const MODEL_ALIASES: &[(&str, &str)] = &[("gene_dispersion", "dispersion"), ("splicing_loss", "splicing_loss_type")];

pub fn resolve(args: &TrainArgs) -> Result<(ModelConfig, TrainConfig)> {
    let (m0, t0) = presets::preset(args.preset_name())?;
    let mut model = serde_json::to_value(&m0)?;
    let mut train = serde_json::to_value(&t0)?;
    // The model and training options given explicitly (field, where): refused below when they would
    // do nothing.
    let mut given: Vec<(String, String)> = Vec::new();
    let mut given_train: Vec<(String, String)> = Vec::new();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: toml::Value = toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
        let mut file = serde_json::to_value(file)?;
        for t in ["model", "train"] {
            if let Some(v) = file.get(t).filter(|v| !v.is_object()) {
                anyhow::bail!("{}: `{t}` must be a table ([{t}] with its options as keys), found {v}", path.display());
            }
        }
        // serde's aliases, spelled as the fields before the merge (else the key and the field collide);
        // the messages name the key as written
        if let Some(obj) = file.get_mut("model").and_then(|m| m.as_object_mut()) {
            for (alias, field) in MODEL_ALIASES {
                if let Some(v) = obj.remove(*alias) {
                    if obj.contains_key(*field) {
                        anyhow::bail!("{}: [model] gives both {alias} and {field} (the same option)", path.display());
                    }
                    obj.insert(field.to_string(), v);
                    given.push((field.to_string(), format!("{}: [model] {alias}", path.display())));
                }
            }
        }
        if let Some(obj) = file.as_object() {
            if let Some(k) = obj.keys().find(|k| *k != "model" && *k != "train") {
                anyhow::bail!("{}: unknown table `{k}` (expected [model] and [train])", path.display());
            }
        }
        if let Some(obj) = file["model"].as_object() {
            let renamed: Vec<String> = given.iter().map(|(f, _)| f.clone()).collect();
            given.extend(obj.keys().filter(|k| !renamed.contains(k)).map(|k| (k.clone(), format!("{}: [model] {k}", path.display()))));
        }
        if let Some(obj) = file["train"].as_object() {
            given_train.extend(obj.keys().map(|k| (k.clone(), format!("{}: [train] {k}", path.display()))));
        }
        merge(&mut model, &config_nones::<ModelConfig>(&file["model"]));
        merge(&mut train, &config_nones::<TrainConfig>(&file["train"]));
        // Catch misspelt keys with the file named.
        parse::<ModelConfig>(model.clone(), &format!("{}: [model]", path.display()))?;
        parse::<TrainConfig>(train.clone(), &format!("{}: [train]", path.display()))?;
    }
    merge(&mut model, &args.options.model);
    merge(&mut train, &args.options.train);
    for (flags, g) in [(&args.options.model, &mut given), (&args.options.train, &mut given_train)] {
        if let Some(obj) = flags.as_object() {
            g.extend(obj.keys().map(|k| (k.clone(), format!("--{}", k.replace('_', "-")))));
        }
    }
    let model: ModelConfig = parse(model, "model options")?;
    let train: TrainConfig = parse(train, "training options")?;
    // (checked here, before the data is read, so that an error names the options' sources, not the data file)
    let sources = match &args.config {
        Some(p) => format!("the options (preset {}, {}, flags)", args.preset_name(), p.display()),
        None => format!("the options (preset {}, flags)", args.preset_name()),
    };
    model.validate_options().with_context(|| sources.clone())?;
    train.validate().with_context(|| sources.clone())?;
    let mut model_inert = model.inert_options();
    // (warmup_routing acts only during the KL warm-up, which a training option decides)
    if train.n_epochs_kl_warmup.unwrap_or(0) == 0 && model.warmup_routing != ModelConfig::default().warmup_routing && model_inert.iter().all(|(f, _)| *f != "warmup_routing") {
        model_inert.push(("warmup_routing", "there is no KL warm-up (n_epochs_kl_warmup is none or 0), and it routes the latent during the warm-up".into()));
    }
    let mut train_inert = train.inert_options();
    data_inert_options(&args.data_options, &mut model_inert, &mut train_inert);
    check_inert_options(&serde_json::to_value(&model)?, &serde_json::to_value(&m0)?, model_inert, &given)?;
    check_inert_options(&serde_json::to_value(&train)?, &serde_json::to_value(&t0)?, train_inert, &given_train)?;
    check_dispersion_keys(&model, &args.data_options, &given)?;
    // (a column named twice would be two identical one-hot blocks or inputs)
    for (flag, keys) in [("--categorical-covariate", &args.data_options.categorical_covariate_keys), ("--continuous-covariate", &args.data_options.continuous_covariate_keys)] {
        if let Some(k) = keys.iter().enumerate().find(|(i, k)| keys[..*i].contains(k)).map(|(_, k)| k) {
            anyhow::bail!("{flag} {k} is given twice: each obs column is one covariate");
        }
    }
    if let Some(l) = &args.data_options.labels_key {
        if model.dispersion != crate::model::Dispersion::GeneLabel {
            anyhow::bail!("--labels-key {l} has no effect here: labels are read only by --dispersion gene-label (this run's is {}); leave it out", model.dispersion.as_str());
        }
    }
    Ok((model, train))
}

/// Options that the data options leave with nothing to act on, added to the inert lists (refused by
/// [`check_inert_options`] when given away from the preset's value): the covariate options without
/// any covariate (a batch of one level adds nothing to a layer, as in scvi's FCLayers), the adversary's
/// switch without batches.
fn data_inert_options(data: &DataOptions, model_inert: &mut Vec<(&'static str, String)>, train_inert: &mut Vec<(&'static str, String)>) {
    if data.batch_key.is_none() && data.categorical_covariate_keys.is_empty() && data.continuous_covariate_keys.is_empty() {
        let why = "there are no covariates (no --batch-key, --categorical-covariate or --continuous-covariate)";
        for field in ["encode_covariates", "deeply_inject_covariates"] {
            if model_inert.iter().all(|(f, _)| *f != field) {
                model_inert.push((field, why.into()));
            }
        }
    }
    if data.batch_key.is_none() {
        train_inert.push(("adversarial_mixing", "there is no adversarial batch classifier without --batch-key".into()));
    }
}

/// An option given explicitly (`given`: field, where; a flag after the --config file, so the last
/// says) that the run would ignore (`inert`: [`ModelConfig::inert_options`],
/// [`crate::train::TrainConfig::inert_options`]; `value`: the config as JSON) is refused: a run that quietly
/// does not do what it was asked is worse than an error. The same option set by a preset (or given
/// again with the preset's value) is left to be ignored: `robust` keeps its §14.3 fixes for when the
/// mixing is switched back to an average.
fn check_inert_options(value: &Value, preset: &Value, inert: Vec<(&'static str, String)>, given: &[(String, String)]) -> Result<()> {
    for (field, why) in inert {
        // (restating the preset's own value changes nothing: a run's config.json, fed back as --config
        // with its preset, must train)
        if given.iter().any(|(f, _)| f == field) && value[field] != preset[field] {
            let v = match &value[field] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let said = given_as(given, field, &format!("--{}", field.replace('_', "-")), &v);
            anyhow::bail!("{said} has no effect here: {why}; leave it out");
        }
    }
    Ok(())
}

/// A dispersion per label needs labels (--labels-key): without them it has no meaning, and training
/// the G × 1 table would silently be the gene dispersion. A dispersion per batch without a batch key is
/// what the original trains then (scvi's px_r of G × n_batch with its one default batch), so it runs,
/// with a warning.
fn check_dispersion_keys(model: &ModelConfig, data: &DataOptions, given: &[(String, String)]) -> Result<()> {
    use crate::model::Dispersion;
    let said = || given_as(given, "dispersion", "--dispersion", model.dispersion.as_str());
    if model.dispersion == Dispersion::GeneLabel && data.labels_key.is_none() {
        anyhow::bail!(
            "{} needs --labels-key (a dispersion per gene and label, from the labels in that obs column); give --labels-key COL, or --dispersion gene",
            said()
        );
    }
    if model.dispersion == Dispersion::GeneBatch && data.batch_key.is_none() {
        eprintln!(
            "warning: {} without --batch-key: all cells are one batch, so the dispersion is one per gene (a G × 1 table, as the original trains it); give --batch-key COL for one per batch",
            said()
        );
    }
    Ok(())
}

/// How the user gave option `field` with value `v`, for a message: `--flag v` or `FILE: [model] key = v`
/// (the last place in `given` says), else `flag v`.
fn given_as(given: &[(String, String)], field: &str, flag: &str, v: &str) -> String {
    match given.iter().rev().find(|(f, _)| f == field) {
        Some((_, place)) if !place.starts_with("--") => format!("{place} = {v}"),
        _ => format!("{flag} {v}"),
    }
}

/// Moves `t`'s steps to the device when `device` is one: a clear error when the CUDA step does not
/// implement the run's options (the user asked for the device explicitly; `auto` never gets here
/// before the step is validated, see `device::CUDA_STEP_VALIDATED`).
pub fn attach_device(t: &mut Trainer<'_>, device: &Device, precision: GemmPrecision) -> Result<()> {
    if let Device::Cuda(info) = device {
        if let Some(why) = crate::cuda::step::unsupported(&t.run.model, &t.run.dims) {
            anyhow::bail!("--device cuda:{}: {why}", info.ordinal);
        }
        t.use_device(super::open_device(info.ordinal)?, precision)?;
        eprintln!("training steps on {device} in {precision:?} (the CUDA step; it had not run on a GPU when this build was made)");
        if let Some(note) = t.device_data_note() {
            eprintln!("{note}");
        }
    }
    Ok(())
}

pub fn run(args: TrainArgs, device: &Device, precision: GemmPrecision) -> Result<()> {
    if args.resume {
        if !args.out.join(crate::train::trainer::CONFIG_FILE).exists() {
            anyhow::bail!("--resume: {} holds no run to continue (no config.json); leave --resume out to start one there", args.out.display());
        }
        check_resume_flags(&args)?;
        let prev = read_run_config(&args.out)?;
        let max_epochs = args.options.train.get("max_epochs").and_then(|v| v.as_u64()).map(|v| v as usize);
        // (held until the end: no other training writes the run meanwhile)
        let _lock = lock_run_dir(&args.out)?;
        // (before the data is read: a finished run needs none)
        let state = check_checkpoint(&args.out, true)?;
        if let Some(msg) = nothing_to_resume(&args.out, &state, prev.train.max_epochs, max_epochs)? {
            if crate::train::trainer::restore_best_pending(&args.out, &state, prev.train.restore_best)? {
                crate::train::trainer::finish_restore_best(&args.out, &state)?;
                let best = state.early_stopping.best_epoch.map_or(String::new(), |e| format!(" (epoch {})", e + 1));
                eprintln!("{}: the best epoch's weights{best} now replace the last epoch's in model.safetensors (the run was interrupted before it did so)", args.out.display());
            }
            eprintln!("{msg}");
            return Ok(());
        }
        let mut ds = load(&args.data, &prev.data)?;
        // the covariates' codes in the run's levels, matched by name (as the analyses read them)
        crate::analysis::posterior::align_covariates(&mut ds, &prev, &args.out)?;
        let mut t = Trainer::resume(&ds, &args.out, max_epochs)?;
        t.verbose = !args.quiet;
        attach_device(&mut t, device, precision)?;
        eprintln!("resuming {} after epoch {}", args.out.display(), t.state.epochs_done);
        crate::util::set_interrupt_run(Some((args.out.clone(), resume_command(&args))));
        t.fit()?;
        eprintln!("{}", done_line(&t));
        curves(&args);
        return Ok(());
    }
    // Options and the run directory (that it can be written too) are checked before any data is read.
    let (model, train) = resolve(&args)?;
    check_run_dir(&args)?;
    crate::util::check_output_named(&format!("--out {}", args.out.display()), &args.out.join(crate::train::trainer::CONFIG_FILE), &[], &[])?;
    let ds = load(&args.data, &args.data_options)?;
    check_training_data(&model, &train, &ds)?;
    let dims = dims_of(&ds);
    model.validate(&dims).with_context(|| ds.source.clone())?;
    let run = RunConfig::for_dataset(args.preset_name(), model, train, args.data_options.clone(), &ds);
    let mut t = Trainer::new(&ds, run, &args.out)?;
    t.verbose = !args.quiet;
    attach_device(&mut t, device, precision)?;
    // Every check has passed (the split included): only now is the directory taken and an earlier
    // run's files removed. (Checked again under the lock: another training may have written a run.)
    let _lock = lock_run_dir(&args.out)?;
    if check_run_dir(&args)? {
        remove_run_files(&args.out)?;
    }
    eprintln!(
        "training on {} cells ({} train / {} validation), {} genes, {} junctions in {} ATSEs; run dir {}",
        ds.n_cells(), t.train_cells.len(), t.validation_cells.len(), ds.n_genes(), ds.n_junctions(), ds.splicing.n_atse(), args.out.display()
    );
    crate::util::set_interrupt_run(Some((args.out.clone(), resume_command(&args))));
    t.fit()?;
    eprintln!("{}", done_line(&t));
    curves(&args);
    Ok(())
}

/// Why a run has no validation cells: train_size 1, or a data set so small that train_size's share
/// (rounded up, as scvi rounds it) takes every cell.
fn no_validation_reason(t: &Trainer<'_>) -> String {
    let ts = t.run.train.train_size;
    if ts >= 1.0 {
        return "no validation cells: train_size 1".to_string();
    }
    let n = t.ds.n_cells();
    format!("no validation cells: train_size {ts} of {n} cells, rounded up, leaves none ({} train)", t.train_cells.len())
}

/// The last line of a training: epochs, and the validation loss of the weights the checkpoint holds
/// (the best epoch's when early stopping restored them; epochs counted from 1).
fn done_line(t: &Trainer<'_>) -> String {
    let n = t.state.epochs_done;
    let head = format!("done: {n} epoch{}{}", if n == 1 { "" } else { "s" }, if t.state.stopped_early { " (early stopping)" } else { "" });
    let last = t.log.epochs.last();
    let es = &t.state.early_stopping;
    match (t.restored_best, es.best, es.best_epoch) {
        _ if t.validation_cells.is_empty() => format!("{head}; final validation reconstruction loss n/a ({})", no_validation_reason(t)),
        (true, Some(best), Some(e)) => format!(
            "{head}; restored the weights of epoch {}, the best (validation reconstruction loss {best:.4}; the last epoch's was {})",
            e + 1,
            last.map_or("n/a".to_string(), |m| format!("{:.4}", m.reconstruction_loss_validation))
        ),
        _ => format!("{head}; final validation reconstruction loss {}", last.map_or("n/a".to_string(), |m| format!("{:.4}", m.reconstruction_loss_validation))),
    }
}

/// The command line that continues a run (the signal handler's message).
fn resume_command(args: &TrainArgs) -> String {
    format!("splicevi train {} --out {} --resume", args.data.display(), args.out.display())
}

/// --resume when the run has nothing left to train: Ok(Some(why)) when the run already is what was
/// asked (exit 0, nothing written), an error when --max-epochs asks for what it cannot become.
fn nothing_to_resume(out: &std::path::Path, state: &TrainState, run_max: usize, asked: Option<usize>) -> Result<Option<String>> {
    let (done, dir) = (state.epochs_done, out.display());
    if let Some(m) = asked.filter(|&m| m < done) {
        anyhow::bail!(
            "--resume --max-epochs {m}: {dir} has already trained {done} epochs, and a run cannot be shortened (for {m} epochs, train a new run with --overwrite or in another directory); nothing was changed"
        );
    }
    if state.stopped_early {
        let best = state.early_stopping.best_epoch.map_or(String::new(), |e| format!(", best epoch {}", e + 1));
        let why = format!(
            "{dir} stopped early after epoch {done}{best}; --resume continues a run as if it had not stopped, and this one stopped itself. To train further, start a new run (--overwrite or another --out) with a larger --early-stopping-patience or --early-stopping false"
        );
        // (the run's own max_epochs, or fewer, asks for nothing more: a requeued job's command line)
        return match asked.filter(|&m| m > done && m > run_max) {
            Some(m) => Err(anyhow::anyhow!("--resume --max-epochs {m}: {why}; nothing was changed")),
            None => Ok(Some(format!("nothing left to train: {why}"))),
        };
    }
    if done >= asked.unwrap_or(run_max) {
        let limit = asked.map_or(format!("its max_epochs is {run_max}"), |m| format!("--max-epochs {m}"));
        return Ok(Some(format!("nothing left to train: {dir} has trained {done} epochs ({limit}); to train longer, --resume --max-epochs M with M above {done}")));
    }
    Ok(None)
}

/// Training curves beside the metrics (RUN_DIR/curves.png and .svg) unless --no-plots.
fn curves(args: &TrainArgs) {
    if !args.no_plots {
        super::plot::auto("training-curves", crate::plot::curves::Curves::from_run_dir(&args.out), &args.out.join("curves"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModalityPenalty, NormPlacement};

    fn train_args(extra: &[&str]) -> TrainArgs {
        use clap::Parser;
        let mut v = vec!["splicevi", "train", "d.h5mu", "--out", "run"];
        v.extend_from_slice(extra);
        match crate::cmd::Cli::try_parse_from(v).unwrap().command {
            crate::cmd::Command::Train(a) => a,
            _ => unreachable!(),
        }
    }

    /// A dispersion per label without --labels-key has no meaning: refused, naming both flags (a
    /// dispersion per batch without --batch-key is the original's G × 1 table: it resolves).
    #[test]
    fn gene_label_dispersion_needs_labels() {
        let e = resolve(&train_args(&["--dispersion", "gene-label"])).unwrap_err().to_string();
        assert!(e.contains("--dispersion gene-label") && e.contains("--labels-key"), "{e}");
        let (m, _) = resolve(&train_args(&["--dispersion", "gene-label", "--labels-key", "cell_type"])).unwrap();
        assert_eq!(m.dispersion, crate::model::Dispersion::GeneLabel);
        // the same from a --config file
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("c.toml");
        std::fs::write(&cfg, "[model]\ndispersion = \"gene-label\"\n").unwrap();
        assert!(resolve(&train_args(&["--config", cfg.to_str().unwrap()])).unwrap_err().to_string().contains("--labels-key"));
        assert!(resolve(&train_args(&["--dispersion", "gene-batch"])).is_ok());
    }

    /// An option given explicitly that the model would ignore is refused, naming where it was given
    /// and why; the same option from a preset is left to rest, as are options at their defaults.
    #[test]
    fn explicit_options_that_would_do_nothing_are_refused() {
        let e = format!("{:#}", resolve(&train_args(&["--code-dim", "32", "--splicing-encoder-architecture", "vanilla"])).unwrap_err());
        assert!(e.contains("--code-dim 32 has no effect") && e.contains("partial splicing encoder"), "{e}");
        let e = format!("{:#}", resolve(&train_args(&["--modality-weights", "concatenate", "--mixing-variance", "independent"])).unwrap_err());
        assert!(e.contains("--mixing-variance independent") && e.contains("concatenate"), "{e}");
        // at the default value, or where the option acts: accepted
        assert!(resolve(&train_args(&["--code-dim", "16", "--splicing-encoder-architecture", "vanilla"])).is_ok());
        assert!(resolve(&train_args(&["--modality-weights", "concatenate", "--modality-penalty", "None"])).is_ok());
        assert!(resolve(&train_args(&["--modality-weights", "concatenate", "--modality-penalty", "Jeffreys"])).is_ok());
        assert!(resolve(&train_args(&["--mixing-variance", "independent"])).is_ok());
        // training options, and a model option a training option leaves out
        let e = format!("{:#}", resolve(&train_args(&["--lr-patience", "3"])).unwrap_err());
        assert!(e.contains("--lr-patience 3 has no effect here") && e.contains("reduce_lr_on_plateau = false"), "{e}");
        assert!(resolve(&train_args(&["--lr-patience", "3", "--reduce-lr-on-plateau", "true"])).is_ok());
        let e = format!("{:#}", resolve(&train_args(&["--early-stopping", "false", "--early-stopping-patience", "3"])).unwrap_err());
        assert!(e.contains("--early-stopping-patience 3") && e.contains("early stopping is off"), "{e}");
        let e = format!("{:#}", resolve(&train_args(&["--train-size", "1", "--lr-scheduler-type", "step"])).unwrap_err());
        assert!(e.contains("--lr-scheduler-type step has no effect here") && e.contains("no validation cells"), "{e}");
        let e = format!("{:#}", resolve(&train_args(&["--train-size", "1", "--restore-best", "true"])).unwrap_err());
        assert!(e.contains("--restore-best true") && e.contains("no validation cells"), "{e}");
        let e = format!("{:#}", resolve(&train_args(&["--warmup-routing", "mix", "--n-epochs-kl-warmup", "none"])).unwrap_err());
        assert!(e.contains("--warmup-routing mix") && e.contains("no KL warm-up"), "{e}");
        // paper's StepLR options and robust's restore_best act where they are
        assert!(resolve(&train_args(&["--preset", "paper", "--step-size", "100", "--lr-factor", "0.5"])).is_ok());
        assert!(resolve(&train_args(&["--preset", "robust", "--train-size", "1"])).is_ok());
        // robust's partial-encoder options and its DM concentration rest when the user changes the part
        let (m, _) = resolve(&train_args(&["--preset", "robust", "--splicing-encoder-architecture", "vanilla", "--splicing-loss-type", "binomial"])).unwrap();
        assert!(m.partial_center_psi && m.dm_concentration == crate::model::DmConcentration::Scalar);
        // from a --config file: the file and the key are named
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("c.toml");
        std::fs::write(&cfg, "[model]\nsplicing_loss = \"binomial\"\ndm_exact_softmax = true\n").unwrap();
        let e = format!("{:#}", resolve(&train_args(&["--config", cfg.to_str().unwrap()])).unwrap_err());
        assert!(e.contains("c.toml: [model] dm_exact_softmax = true") && e.contains("binomial"), "{e}");
        // (the file spells the loss by its alias, which the merge reads as the field)
        let (m, _) = resolve(&train_args(&["--config", cfg.to_str().unwrap(), "--dm-exact-softmax", "false"])).unwrap();
        assert_eq!(m.splicing_loss_type, crate::model::SplicingLoss::Binomial);
        // a flag that switches the part back on makes the file's key act
        assert!(resolve(&train_args(&["--config", cfg.to_str().unwrap(), "--splicing-loss-type", "dirichlet_multinomial"])).is_ok());
        // an alias is named as written
        std::fs::write(&cfg, "[model]\ngene_dispersion = \"gene-batch\"\ngene_likelihood = \"poisson\"\n").unwrap();
        let e = format!("{:#}", resolve(&train_args(&["--config", cfg.to_str().unwrap()])).unwrap_err());
        assert!(e.contains("c.toml: [model] gene_dispersion = gene-batch has no effect") && e.contains("Poisson"), "{e}");
        std::fs::write(&cfg, "[model]\ngene_dispersion = \"gene-label\"\n").unwrap();
        let e = format!("{:#}", resolve(&train_args(&["--config", cfg.to_str().unwrap()])).unwrap_err());
        assert!(e.contains("c.toml: [model] gene_dispersion = gene-label needs --labels-key"), "{e}");
        // restating the preset's own value changes nothing: robust's whole config fed back with its
        // preset trains (JeffreysExact and mix rest under its concatenated latent), another value does not
        let (rm, rt) = presets::preset("robust").unwrap();
        let mut table = toml::map::Map::new();
        table.insert("model".into(), toml::Value::try_from(&rm).unwrap());
        table.insert("train".into(), toml::Value::try_from(&rt).unwrap());
        std::fs::write(&cfg, toml::to_string(&toml::Value::Table(table)).unwrap()).unwrap();
        let (m, t) = resolve(&train_args(&["--preset", "robust", "--config", cfg.to_str().unwrap()])).unwrap();
        assert_eq!((serde_json::to_value(&m).unwrap(), serde_json::to_value(&t).unwrap()), (serde_json::to_value(&rm).unwrap(), serde_json::to_value(&rt).unwrap()));
        assert!(resolve(&train_args(&["--preset", "robust", "--modality-penalty", "JeffreysExact"])).is_ok());
        let e = format!("{:#}", resolve(&train_args(&["--preset", "robust", "--modality-penalty", "MMD"])).unwrap_err());
        assert!(e.contains("--modality-penalty MMD has no effect here"), "{e}");
        // options the data options leave with nothing to act on
        for (flags, needle) in [
            (&["--encode-covariates", "true"][..], "--encode-covariates true has no effect here: there are no covariates"),
            (&["--deeply-inject-covariates", "true", "--expression-architecture", "vanilla"][..], "--deeply-inject-covariates true has no effect here: there are no covariates"),
            (&["--adversarial-mixing", "false"][..], "--adversarial-mixing false has no effect here: there is no adversarial batch classifier"),
            (&["--labels-key", "cell_type"][..], "--labels-key cell_type has no effect here: labels are read only by --dispersion gene-label"),
        ] {
            let e = format!("{:#}", resolve(&train_args(flags)).unwrap_err());
            assert!(e.contains(needle), "{flags:?}: {e}");
        }
        for flags in [&["--encode-covariates", "true", "--batch-key", "batch"][..], &["--encode-covariates", "true", "--continuous-covariate", "age"][..], &["--adversarial-mixing", "false", "--batch-key", "batch"][..], &["--adversarial-mixing", "true"][..]] {
            assert!(resolve(&train_args(flags)).is_ok(), "{flags:?}");
        }
        // an option out of range is refused before the data is read, naming where the options came from
        std::fs::write(&cfg, "[model]\nn_latent = 0\n").unwrap();
        let e = format!("{:#}", resolve(&train_args(&["--config", cfg.to_str().unwrap()])).unwrap_err());
        assert!(e.contains("the options (preset default, ") && e.contains("c.toml, flags): model: n_latent must be ≥ 1"), "{e}");
        // a table's name that is not a table
        std::fs::write(&cfg, "model = 3\n").unwrap();
        let e = format!("{:#}", resolve(&train_args(&["--config", cfg.to_str().unwrap()])).unwrap_err());
        assert!(e.contains("`model` must be a table"), "{e}");
    }

    /// TOML has no null, so a --config file says `"none"` as the flag does, for exactly the Option
    /// fields; enum variants spelled "None" keep their meaning, and other options still refuse it.
    #[test]
    fn a_config_file_clears_optional_options_with_none() {
        fn optional_keys<T: serde::de::DeserializeOwned + serde::Serialize + Default>() -> Vec<String> {
            let d = serde_json::to_value(T::default()).unwrap();
            let mut v: Vec<String> = d.as_object().unwrap().keys().filter(|k| optional::<T>(&d, k)).cloned().collect();
            v.sort();
            v
        }
        assert_eq!(optional_keys::<ModelConfig>(), ["n_hidden", "n_latent", "splicing_concentration"]);
        assert_eq!(optional_keys::<TrainConfig>(), ["early_stopping_warmup_epochs", "gradient_clip", "n_epochs_kl_warmup"]);

        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("c.toml");
        let cfg_s = cfg.to_str().unwrap();
        std::fs::write(
            &cfg,
            "[model]\nn_latent = \"none\"\nn_hidden = \"None\"\nsplicing_concentration = \"null\"\nmodality_penalty = \"None\"\nuse_layer_norm = \"none\"\n\
             [train]\ngradient_clip = \"none\"\nn_epochs_kl_warmup = \"none\"\nearly_stopping_warmup_epochs = \"none\"\n",
        )
        .unwrap();
        // robust sets n_latent, the warm-up and clipping: the file clears them
        let (m, t) = resolve(&train_args(&["--preset", "robust", "--config", cfg_s])).unwrap();
        assert_eq!((m.n_latent, m.n_hidden, m.splicing_concentration), (None, None, None));
        assert_eq!((m.modality_penalty, m.use_layer_norm), (ModalityPenalty::None, NormPlacement::None));
        assert_eq!((t.gradient_clip, t.n_epochs_kl_warmup, t.early_stopping_warmup_epochs), (None, None, None));
        // a flag still overrides the file
        let (m, _) = resolve(&train_args(&["--config", cfg_s, "--n-latent", "4"])).unwrap();
        assert_eq!(m.n_latent, Some(4));
        // not optional: still an error that names the option
        std::fs::write(&cfg, "[train]\nmax_epochs = \"none\"\n").unwrap();
        let e = format!("{:#}", resolve(&train_args(&["--config", cfg_s])).unwrap_err());
        assert!(e.contains("max_epochs"), "{e}");
    }
}
