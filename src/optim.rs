//! The optimizer on the CPU (rayon): global gradient norm, torch's `clip_grad_norm_`, and the fused
//! Adam / AdamW step over the flat f32 parameter buffer. These are the CPU twins of `kernels/grad_norm.cu`
//! and `kernels/adamw.cu` (model.md §6.1–§6.2):
//! * the VAE: `AdamW(lr, betas (0.9, 0.999), eps 1e-8, weight_decay)` after clipping the total L2 norm of
//!   all module gradients to 5.0 ([`AdamConfig::adamw`]);
//! * the adversarial classifier: `Adam(lr 1e-3, eps 0.01, weight_decay)`, L2 decay added to the gradient,
//!   gradients unclipped ([`AdamConfig::adam_l2`]).
//!
//! Semantics follow torch 2.x's single-tensor implementation: `step += 1`; AdamW first decays
//! `p *= 1 - lr*wd`, Adam adds `wd*p` to the gradient; `m.lerp_(g, 1-beta1)`;
//! `v = v*beta2 + (1-beta2) g²`; `p += -(lr / (1-beta1^t)) * m / (sqrt(v) / sqrt(1-beta2^t) + eps)`.
//! Hyper-parameters are f64 (Python floats) and the per-step scalars are computed in f64 then rounded to
//! f32 once ([`StepScalars`]), as torch does; the kernel receives the very same f32 scalars and performs
//! the same IEEE operations without FMA contraction, so CPU and GPU results are bit-identical.
//!
//! A per-entry mask (`mask[i] != 0`: trainable) selects the entries that take part: masked-out entries
//! are excluded from the norm and left untouched by the step (moments included), like parameters with
//! `requires_grad=False` in torch. One step counter is kept for the whole buffer: torch keeps one per
//! tensor, which is the same as long as every trainable tensor receives a gradient at every step (true for
//! SPLICEVI, whose loss touches every module parameter; an unused embedding row still gets a zero
//! gradient because the embedding is one dense tensor).

use anyhow::{ensure, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Entries per rayon task. Also fixes the order of the f64 partial sums of the norm, so the result does
/// not depend on the number of threads.
const CHUNK: usize = 1 << 14;

/// Sum of squared gradients over the trainable entries, accumulated in f64 in a fixed order (per-chunk
/// sums, then the chunk sums in sequence): deterministic whatever the thread count.
pub fn grad_sumsq(grads: &[f32], mask: Option<&[u8]>) -> Result<f64> {
    if let Some(m) = mask {
        ensure!(m.len() == grads.len(), "grad norm: mask has {} entries but the gradient buffer has {}", m.len(), grads.len());
    }
    let partials: Vec<f64> = grads
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, g)| {
            let start = c * CHUNK;
            match mask {
                None => g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>(),
                Some(m) => g.iter().zip(&m[start..start + g.len()]).filter(|(_, &k)| k != 0).map(|(&x, _)| (x as f64) * (x as f64)).sum(),
            }
        })
        .collect();
    Ok(partials.iter().sum())
}

/// Global L2 norm of the trainable gradient entries (f64 accumulation).
pub fn grad_norm(grads: &[f32], mask: Option<&[u8]>) -> Result<f64> {
    Ok(grad_sumsq(grads, mask)?.sqrt())
}

/// torch's `clip_grad_norm_` factor: `min(max_norm / (norm + 1e-6), 1)` computed in f32 on the f32 norm.
/// A NaN norm gives NaN (torch.clamp propagates NaN, and torch then multiplies the gradients by it); an
/// infinite norm gives 0.
pub fn clip_scale(norm: f64, max_norm: f32) -> f32 {
    let coef = max_norm / (norm as f32 + 1e-6f32);
    if coef.is_nan() {
        coef
    } else {
        coef.min(1.0)
    }
}

/// Result of a clipping call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipResult {
    /// Total L2 norm before clipping.
    pub norm: f64,
    /// Factor the gradients were (or are to be) multiplied by.
    pub scale: f32,
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)` over the trainable entries: scales the gradients
/// in place when the factor is below 1. To save a pass, pass the returned `scale` to [`Adam::step`]
/// instead and call [`clip_info`] (the same numbers, gradients untouched).
pub fn clip_grad_norm(grads: &mut [f32], mask: Option<&[u8]>, max_norm: f32) -> Result<ClipResult> {
    let info = clip_info(grads, mask, max_norm)?;
    if info.scale != 1.0 {
        let s = info.scale;
        grads.par_chunks_mut(CHUNK).enumerate().for_each(|(c, g)| {
            let start = c * CHUNK;
            for (i, x) in g.iter_mut().enumerate() {
                if mask.is_none_or(|m| m[start + i] != 0) {
                    *x *= s;
                }
            }
        });
    }
    Ok(info)
}

/// The norm and clip factor of [`clip_grad_norm`] without touching the gradients.
pub fn clip_info(grads: &[f32], mask: Option<&[u8]>, max_norm: f32) -> Result<ClipResult> {
    let norm = grad_norm(grads, mask)?;
    Ok(ClipResult { norm, scale: clip_scale(norm, max_norm) })
}

/// How weight decay enters the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightDecay {
    /// AdamW: `p *= 1 - lr*wd` before the Adam update.
    Decoupled,
    /// Adam: `g += wd*p` (L2 penalty through the gradient).
    L2,
}

/// Hyper-parameters, as the Python floats torch receives.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decay: WeightDecay,
}

impl AdamConfig {
    /// torch.optim.AdamW with betas (0.9, 0.999): the VAE's optimizer (SPLICEVI: lr 1e-4, eps 1e-8,
    /// weight_decay 1e-3 by default).
    pub fn adamw(lr: f64, weight_decay: f64, eps: f64) -> Self {
        AdamConfig { lr, beta1: 0.9, beta2: 0.999, eps, weight_decay, decay: WeightDecay::Decoupled }
    }

    /// torch.optim.Adam with L2 weight decay and betas (0.9, 0.999): the adversarial classifier's
    /// optimizer (lr 1e-3, eps 0.01, weight_decay = the training weight_decay).
    pub fn adam_l2(lr: f64, weight_decay: f64, eps: f64) -> Self {
        AdamConfig { lr, beta1: 0.9, beta2: 0.999, eps, weight_decay, decay: WeightDecay::L2 }
    }

    /// The f32 scalars of step number `step` (1-based, i.e. after the increment), computed exactly once
    /// here for both the CPU step and the kernels.
    pub fn scalars(&self, step: u64) -> StepScalars {
        let t = step as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        let bc2 = 1.0 - self.beta2.powf(t);
        StepScalars {
            decay_factor: match self.decay {
                WeightDecay::Decoupled => (1.0 - self.lr * self.weight_decay) as f32,
                WeightDecay::L2 => 1.0,
            },
            l2: match self.decay {
                WeightDecay::Decoupled => 0.0,
                WeightDecay::L2 => self.weight_decay as f32,
            },
            w1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            w2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            step_size: (self.lr / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }
}

/// Per-step f32 constants shared by the CPU step and the kernels (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepScalars {
    /// `1 - lr*wd` (AdamW) or 1.
    pub decay_factor: f32,
    /// `wd` added to the gradient (Adam) or 0.
    pub l2: f32,
    /// `1 - beta1`, the lerp weight of the first moment.
    pub w1: f32,
    pub beta2: f32,
    /// `1 - beta2`.
    pub w2: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bc2_sqrt: f32,
}

/// The update of one entry, in torch's operation order. `g` is the (clipped) gradient.
#[inline(always)]
fn update(p: &mut f32, g: f32, m: &mut f32, v: &mut f32, s: &StepScalars, decoupled: bool) {
    let mut pv = *p;
    let g = if decoupled {
        pv *= s.decay_factor;
        g
    } else {
        g + s.l2 * pv
    };
    *m += s.w1 * (g - *m);
    *v *= s.beta2;
    *v += s.w2 * (g * g);
    let denom = v.sqrt() / s.bc2_sqrt + s.eps;
    pv += -s.step_size * (*m / denom);
    *p = pv;
}

/// Optimizer state: the two moments and the number of steps taken (torch's `exp_avg`, `exp_avg_sq`,
/// `step`). Saved in checkpoints for resuming.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamState {
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
    pub step: u64,
}

impl AdamState {
    pub fn zeros(n: usize) -> Self {
        AdamState { exp_avg: vec![0.0; n], exp_avg_sq: vec![0.0; n], step: 0 }
    }

    pub fn len(&self) -> usize {
        self.exp_avg.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exp_avg.is_empty()
    }

    /// safetensors bytes: tensors `exp_avg` and `exp_avg_sq` (F32, `[n]`), metadata `step`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        self.to_safetensors_with(HashMap::new())
    }

    /// [`Self::to_safetensors`] with `extra` metadata (a checkpoint's stamp).
    pub fn to_safetensors_with(&self, extra: HashMap<String, String>) -> Result<Vec<u8>> {
        let m = bytemuck::cast_slice::<f32, u8>(&self.exp_avg);
        let v = bytemuck::cast_slice::<f32, u8>(&self.exp_avg_sq);
        let n = self.exp_avg.len();
        let views = vec![
            ("exp_avg", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n], m)?),
            ("exp_avg_sq", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n], v)?),
        ];
        let mut meta = extra;
        meta.extend([("step".to_string(), self.step.to_string()), ("format".to_string(), "splicevi-adam-state-1".to_string())]);
        crate::model::params::sorted_header(safetensors::serialize(views, &Some(meta))?)
    }

    /// Inverse of [`Self::to_safetensors`]; `expected_len` is the parameter count of the model being
    /// resumed (a mismatch is an error naming both sizes). `what` names the source in errors.
    pub fn from_safetensors(bytes: &[u8], expected_len: usize, what: &str) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).with_context(|| format!("{what}: not a safetensors optimizer state"))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).with_context(|| format!("{what}: not a safetensors optimizer state"))?;
        let step = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .with_context(|| format!("{what}: metadata field `step` missing"))?
            .parse::<u64>()
            .with_context(|| format!("{what}: metadata field `step` is not an integer"))?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let t = st.tensor(name).with_context(|| format!("{what}: tensor `{name}` missing"))?;
            ensure!(t.dtype() == safetensors::Dtype::F32, "{what}: tensor `{name}` has dtype {:?}, expected F32", t.dtype());
            let data = t.data();
            ensure!(
                data.len() == expected_len * 4,
                "{what}: tensor `{name}` has {} entries but the model has {expected_len} parameters",
                data.len() / 4
            );
            Ok(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        };
        Ok(AdamState { exp_avg: read("exp_avg")?, exp_avg_sq: read("exp_avg_sq")?, step })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_safetensors()?;
        crate::util::write_atomic(path, |tmp| Ok(std::fs::write(tmp, &bytes)?))
    }

    pub fn load(path: &Path, expected_len: usize) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading optimizer state {}", path.display()))?;
        Self::from_safetensors(&bytes, expected_len, &path.display().to_string())
    }
}

/// Adam / AdamW over one flat buffer.
#[derive(Clone, Debug)]
pub struct Adam {
    pub config: AdamConfig,
    pub state: AdamState,
}

impl Adam {
    pub fn new(config: AdamConfig, n: usize) -> Self {
        Adam { config, state: AdamState::zeros(n) }
    }

    /// Resume from a saved state (its length must match the buffer this optimizer will step).
    pub fn with_state(config: AdamConfig, state: AdamState) -> Self {
        Adam { config, state }
    }

    /// Change the learning rate (schedulers).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// One optimizer step. `grad_scale` multiplies every gradient first (the clipping factor from
    /// [`clip_info`]; 1.0 for none), exactly as `clip_grad_norm_` would have scaled them in place.
    /// Returns the scalars used (step number = `self.state.step` afterwards).
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], mask: Option<&[u8]>, grad_scale: f32) -> Result<StepScalars> {
        let n = params.len();
        ensure!(grads.len() == n, "optimizer step: {} gradients for {n} parameters", grads.len());
        ensure!(self.state.len() == n, "optimizer step: state has {} entries for {n} parameters", self.state.len());
        if let Some(m) = mask {
            ensure!(m.len() == n, "optimizer step: mask has {} entries for {n} parameters", m.len());
        }
        self.state.step += 1;
        let s = self.config.scalars(self.state.step);
        let decoupled = self.config.decay == WeightDecay::Decoupled;
        let AdamState { exp_avg, exp_avg_sq, .. } = &mut self.state;
        params
            .par_chunks_mut(CHUNK)
            .zip(exp_avg.par_chunks_mut(CHUNK))
            .zip(exp_avg_sq.par_chunks_mut(CHUNK))
            .zip(grads.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (((p, m), v), g))| {
                let start = c * CHUNK;
                for i in 0..p.len() {
                    if mask.is_some_and(|k| k[start + i] == 0) {
                        continue;
                    }
                    update(&mut p[i], g[i] * grad_scale, &mut m[i], &mut v[i], &s, decoupled);
                }
            });
        Ok(s)
    }
}
