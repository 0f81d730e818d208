//! Presets (model.md §14.5): `default` = the SPLICEVI model defaults with the `train()` defaults;
//! `paper` = the authors' configuration (§10). Both stay faithful to the original. `robust` = the
//! options that make the model learn what small data hold (docs/robust.md); recommended for new work.

use super::config::TrainConfig;
use crate::analysis::differential::{ChangeOptions, TestMode};
use crate::model::ModelConfig;

pub const PRESETS: &[&str] = &["default", "paper", "robust"];

pub fn preset(name: &str) -> anyhow::Result<(ModelConfig, TrainConfig)> {
    match name {
        "default" => Ok((ModelConfig::default(), TrainConfig::default())),
        "paper" => Ok((ModelConfig::paper(), TrainConfig::paper())),
        // Not faithful by design: what the data holds (docs/robust.md).
        "robust" => Ok((ModelConfig::robust(), TrainConfig::robust())),
        other => anyhow::bail!("unknown preset `{other}` (known: {})", PRESETS.join(", ")),
    }
}

/// The differential-splicing test a run's preset implies where `diff-splicing`'s flags do not say.
/// `default` and `paper` run the original's test. `robust` runs one that is calibrated for what the
/// change-mode test gets wrong on small data (docs/robust.md, "The differential-splicing test of
/// `robust`"); each part is a flag of its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DsDefaults {
    /// `--min-obs-cells`: the change-mode test has no term for how well a thinly observed junction's
    /// decoder weights are determined; at `small` the false-call rate falls with coverage from 15–19%
    /// below 10 observing cells to under 1% above 60.
    pub min_obs_cells: u64,
    /// `--test-mode`: P(|ΔPSI| ≥ δ) (scvi's "two") instead of the larger one-sided probability.
    pub test_mode: TestMode,
    /// `--filter-outlier-cells`: scvi's robust envelope on each group's latent means.
    pub filter_outlier_cells: bool,
    /// `--max-emp-pvalue`: the observed PSI must show the difference (Welch's t, p below this).
    pub max_emp_pvalue: Option<f64>,
    /// `--batch-correction` (where the run has more than one batch): every sample decoded under each
    /// batch, pairs within a batch, so that what the decoder attributes to batch is not part of the
    /// spread between two cells.
    pub batch_correction: bool,
}

/// The original's test (`default`, `paper`).
pub const ORIGINAL_DS: DsDefaults = DsDefaults { min_obs_cells: 0, test_mode: TestMode::Three, filter_outlier_cells: false, max_emp_pvalue: None, batch_correction: false };

/// `robust`'s test.
pub const ROBUST_DS: DsDefaults = DsDefaults { min_obs_cells: ROBUST_DS_MIN_OBS_CELLS, test_mode: TestMode::Two, filter_outlier_cells: true, max_emp_pvalue: Some(0.05), batch_correction: true };

impl DsDefaults {
    /// `opts` with this test (batch correction only where the model has more than one batch).
    pub fn apply(&self, opts: ChangeOptions, n_batch: usize) -> ChangeOptions {
        ChangeOptions {
            min_obs_cells: self.min_obs_cells,
            test_mode: self.test_mode,
            filter_outlier_cells: self.filter_outlier_cells,
            max_emp_pvalue: self.max_emp_pvalue,
            batch_correction: self.batch_correction && n_batch > 1,
            ..opts
        }
    }
}

pub fn ds_defaults(preset: &str) -> DsDefaults {
    match preset {
        "robust" => ROBUST_DS,
        _ => ORIGINAL_DS,
    }
}

/// `diff-splicing --min-obs-cells` when the flag is not given, by the run's preset.
pub fn ds_min_obs_cells(preset: &str) -> u64 {
    ds_defaults(preset).min_obs_cells
}

pub const ROBUST_DS_MIN_OBS_CELLS: u64 = 10;
