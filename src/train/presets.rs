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
