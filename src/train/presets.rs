//! Presets (model.md §14.5): `default` = the SPLICEVI model defaults with the `train()` defaults;
//! `paper` = the authors' configuration (§10). Both stay faithful to the original. `robust` = the
//! options that make the model learn what small data hold (docs/robust.md); recommended for new work.

use super::config::TrainConfig;
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

/// `diff-splicing --min-obs-cells` when the flag is not given, by the run's preset. `robust` tests only
/// junctions observed in at least 10 cells of each group: the change-mode test has no term for how well
/// a thinly observed junction's decoder weights are determined, and at `small` the false-call rate
/// falls with coverage from 15–19% below 10 observing cells to under 1% above 60 (docs/robust.md,
/// "Differential splicing: the false calls"). `default` and `paper` test every junction, as the original.
pub fn ds_min_obs_cells(preset: &str) -> u64 {
    match preset {
        "robust" => ROBUST_DS_MIN_OBS_CELLS,
        _ => 0,
    }
}

pub const ROBUST_DS_MIN_OBS_CELLS: u64 = 10;
