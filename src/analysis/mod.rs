//! Downstream analyses (model.md §7–§8): latent metrics so far.

pub mod latent_metrics;
