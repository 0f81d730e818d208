//! splicevi: SpliceVI (a multimodal VAE over gene expression and alternative splicing) as a native
//! Rust engine with a rayon CPU backend (the reference) and a CUDA backend (hand-written kernels).
//!
//! Layout: `data` (datasets, readers, validation, simulator, split), `model` (the SPLICEVAE written over
//! backend ops), `cuda` (device runtime and kernels), `cmd` (the CLI subcommands).

pub mod analysis;
pub mod cmd;
pub mod cuda;
pub mod data;
pub mod device;
pub mod model;
pub mod optim;
pub mod plot;
pub mod train;
pub mod util;
