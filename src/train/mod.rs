//! Training (model.md §5–§6): options, schedules, metrics, the trainer loop and presets.

pub mod config;
pub mod metrics;
pub mod presets;
pub mod rng;
pub mod schedule;
pub mod svd;
pub mod trainer;
pub use config::TrainConfig;
pub use trainer::{RunConfig, Trainer};
