//! The SPLICEVAE model (model.md §2–§5, §14) on the CPU: forward pass, hand-written backward pass,
//! parameters under the original state_dict names.
//!
//! # Using it
//!
//! ```no_run
//! use splicevi::model::{Batch, Dims, ModelConfig, Noise, SpliceVae, StepOptions};
//! # fn demo(ds: &splicevi::data::Dataset) -> anyhow::Result<()> {
//! // 1. Options and data-derived sizes. junc2atse[j] = ATSE index of junction j (sorted event ids).
//! let cfg = ModelConfig::default(); // or ModelConfig::paper(), or serde from JSON/TOML
//! let dims = Dims {
//!     n_genes: ds.n_genes(),
//!     n_junctions: ds.n_junctions(),
//!     n_atse: ds.splicing.n_atse(),
//!     n_batch: ds.covariates.batch.levels.len().max(1),
//!     n_labels: ds.covariates.labels.levels.len().max(1),
//!     n_obs: ds.n_cells(),
//!     n_cats_per_cov: ds.covariates.categorical.iter().map(|c| c.levels.len()).collect(),
//!     n_cont: ds.covariates.continuous_names.len(),
//! };
//! let model = SpliceVae::new(cfg, dims, ds.splicing.junc2atse.clone())?;
//! // 2. Parameters: one flat f32 buffer + name table (trainable values first: `p.trainable_mut()`).
//! let mut p = model.init_params::<f32>(0);
//! // 3. One training step on a minibatch of cells.
//! let batch = Batch::from_dataset(ds, &[0, 1, 2, 3], true)?;
//! let opts = StepOptions { kl_weight: 0.5, cross_gate: 0.0, training: true, use_z_mean: false,
//!                          routing: None, seed: 42, noise: Noise::Seeded };
//! let (out, grads) = model.step(&mut p, &batch, &opts, None)?; // also applies BatchNorm stat updates
//! println!("loss {} ‖g‖ {}", out.loss, grads.norm());
//! // grads.data lines up with p.trainable(): AdamW is one pass over both.
//! // 4. Save / load under the original names.
//! p.save_safetensors(std::path::Path::new("model.safetensors"), None)?;
//! # Ok(()) }
//! ```
//!
//! With an adversarial classifier (`adversary::Adversary`): run `model.forward`, feed
//! `out.inference.z` to `Adversary::fool`, pass the returned d(fool)/dz as `extra_dz` to
//! `model.backward`, then train the classifier with `Adversary::classifier_step` on z.
//!
//! Analyses: `inference_only` (latents), `decode_dense` (p and px_scale from a latent),
//! `dm_posterior_mean`.
//!
//! Everything is generic over `Real` (f32 in production; f64 for the gradient checks).

pub mod adversary;
pub mod arch;
pub mod batch;
pub mod config;
pub mod dense_epilogue;
pub mod expr_lik;
pub mod latent;
pub mod latent_step;
pub mod lik;
pub mod ops;
pub mod params;
pub mod partial;
pub mod real;
pub mod rng;
pub mod spl_lik;
pub mod tensor;
pub mod vae;
pub mod vmath;

pub use batch::{Batch, SplBatch};
pub use config::*;
pub use params::{Grads, ParamKind, ParamLayout, Params};
pub use real::Real;
pub use tensor::Mat;
pub use vae::{DenseDecode, Forward, Inference, Modality, Noise, SpliceVae, StepOptions, StepOutput};
