//! Presets (model.md §14.5): `default` = the SPLICEVI model defaults with the `train()` defaults;
//! `paper` = the authors' configuration (§10). Both stay faithful to the original.

use super::config::TrainConfig;
use crate::model::ModelConfig;

pub const PRESETS: &[&str] = &["default", "paper"];

pub fn preset(name: &str) -> anyhow::Result<(ModelConfig, TrainConfig)> {
    match name {
        "default" => Ok((ModelConfig::default(), TrainConfig::default())),
        "paper" => Ok((ModelConfig::paper(), TrainConfig::paper())),
        other => anyhow::bail!("unknown preset `{other}` (known: {})", PRESETS.join(", ")),
    }
}
