//! The adversarial batch classifier of the training plan (model.md §5.4): scvi `Classifier` with
//! FCLayers(L → 32 → 32, BatchNorm, ReLU, dropout 0.1) → Linear(32 → n_batch) logits.
//!
//! Its parameters live in their own flat buffer (names `classifier.0.fc_layers.…`, `classifier.1.…`,
//! the original's module path inside `adversarial_classifier`).

use super::arch::{build_fclayers, build_linear, Act, FcLayers, LinearP};
use super::ops::{self, BufUpdates, Cov, MainIn, Mode};
use super::params::{Grads, LayoutBuilder, ParamLayout, Params};
use super::real::Real;
use super::tensor::Mat;
use anyhow::{bail, Result};
use std::sync::Arc;

pub const ADV_HIDDEN: usize = 32;
pub const ADV_DROPOUT: f64 = 0.1;
/// Mixed into step seeds so the classifier's dropout never shares a stream with the VAE's.
const SEED_SALT: u64 = 0xADE5_A41A_u64;

#[derive(Clone, Debug)]
pub struct Adversary {
    pub fc: FcLayers,
    pub out: LinearP,
    pub layout: Arc<ParamLayout>,
    pub n_batch: usize,
    pub n_latent: usize,
}

/// Result of a classifier forward/backward.
pub struct AdvResult<T> {
    pub loss: T,
    /// d(loss)/dz (B × L) — used for the fool term.
    pub dz: Mat<T>,
    /// Classifier parameter gradients.
    pub grads: Grads<T>,
    pub buffer_updates: BufUpdates,
}

impl Adversary {
    /// Classifier for a joint latent of size `n_latent` (L) and `n_batch` ≥ 2 batches.
    pub fn new(n_latent: usize, n_batch: usize) -> Result<Adversary> {
        if n_batch < 2 {
            bail!("the adversarial classifier needs at least 2 batches (got {n_batch})");
        }
        let lb = LayoutBuilder::default();
        let (fc, lb) =
            build_fclayers(lb, "classifier.0", n_latent, ADV_HIDDEN, ADV_HIDDEN, 2, true, Act::Relu, ADV_DROPOUT, 1);
        let (out, lb) = build_linear(lb, "classifier.1", ADV_HIDDEN, n_batch);
        Ok(Adversary { fc, out, layout: Arc::new(lb.finish()), n_batch, n_latent })
    }

    pub fn init_params<T: Real>(&self, seed: u64) -> Params<T> {
        Params::init(self.layout.clone(), seed)
    }

    /// Run the classifier on z with the given per-cell d(loss)/d(log-softmax) weights and return the
    /// loss, d/dz and parameter gradients.
    fn run<T: Real>(
        &self,
        p: &Params<T>,
        z: &Mat<T>,
        batch: &[u32],
        training: bool,
        seed: u64,
        fool: bool,
    ) -> Result<AdvResult<T>> {
        let b = z.rows;
        if z.cols != self.n_latent || batch.len() != b {
            bail!("adversary: z is {}×{}, expected {b}×{} with {b} batch codes", z.rows, z.cols, self.n_latent);
        }
        if let Some(i) = batch.iter().position(|&c| c as usize >= self.n_batch) {
            bail!("adversary: cell {i} has batch code {} ≥ {}", batch[i], self.n_batch);
        }
        let mode = Mode { training, seed: seed ^ SEED_SALT };
        let mut upd = BufUpdates::new();
        let cov = Cov::default();
        let (h, cache) = ops::fc_forward(&self.fc, p, MainIn::Dense(z), &cov, mode, &mut upd)?;
        let logits = ops::linear_dense_fwd(&self.out, p, &h);
        let k = self.n_batch;
        let bt = T::from_f64(b as f64);
        let mut dlog = Mat::zeros(b, k);
        let mut loss = 0f64;
        for i in 0..b {
            let row = logits.row(i);
            let mx = row.iter().copied().fold(row[0], |a, c| a.max(c));
            let lse = mx + row.iter().map(|&v| (v - mx).exp()).sum::<T>().ln();
            let bi = batch[i] as usize;
            // target weights t_ik of the log-softmax: loss = −(1/B) Σ_k t_ik ℓ_ik
            let tw = |kk: usize| -> T {
                if fool {
                    if kk == bi {
                        T::ZERO
                    } else {
                        T::ONE / T::from_f64((k - 1) as f64)
                    }
                } else if kk == bi {
                    T::ONE
                } else {
                    T::ZERO
                }
            };
            for kk in 0..k {
                let ls = row[kk] - lse;
                loss -= (tw(kk) * ls).to_f64() / b as f64;
                // d/dlogit of −(1/B) Σ t ℓ = (softmax·Σt − t)/B, Σt = 1
                dlog.data[i * k + kk] = (ls.exp() - tw(kk)) / bt;
            }
        }
        let mut grads = Grads::zeros(self.layout.clone());
        let dh = ops::linear_dense_bwd(&self.out, p, &h, &dlog, &mut grads, true).unwrap();
        let dz = ops::fc_backward(&self.fc, p, &cache, dh, &mut grads, true).unwrap();
        Ok(AdvResult { loss: T::from_f64(loss), dz, grads, buffer_updates: upd })
    }

    /// Fool term F = −(1/B) Σ_i Σ_{k≠b_i} log softmax(C(z_i))_k / (K−1) and dF/dz (add it as `extra_dz`
    /// of the VAE backward; the classifier gradients of this pass are discarded as in the original).
    pub fn fool<T: Real>(&self, p: &Params<T>, z: &Mat<T>, batch: &[u32], training: bool, seed: u64) -> Result<AdvResult<T>> {
        self.run(p, z, batch, training, seed, true)
    }

    /// Classifier loss −(1/B) Σ_i log softmax(C(z_i))_{b_i} on a detached z, with parameter gradients.
    pub fn classifier_step<T: Real>(
        &self,
        p: &Params<T>,
        z: &Mat<T>,
        batch: &[u32],
        training: bool,
        seed: u64,
    ) -> Result<AdvResult<T>> {
        self.run(p, z, batch, training, seed.wrapping_add(1), false)
    }

    pub fn apply_buffer_updates<T: Real>(&self, p: &mut Params<T>, upd: &BufUpdates) {
        for (idx, vals) in upd {
            p.get_mut(*idx).iter_mut().zip(vals).for_each(|(d, &v)| *d = T::from_f64(v));
        }
    }
}
