//! All model weights in one flat buffer with a name table whose names, shapes and order are the
//! original PyTorch state_dict's (model.md §2, fixtures/README.md).
//!
//! Offsets: trainable parameters occupy `[0, n_trainable)` (so gradients, Adam moments and weight decay
//! are plain slices of the same length), then frozen parameters and buffers. The name table keeps the
//! state_dict order regardless of offsets.

use super::real::{softplus_inv, Real};
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What an entry of the state dict is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Trained: has a gradient, gets weight decay.
    Param,
    /// An nn.Parameter with requires_grad = False (the binomial `log_phi_j`): saved, never trained.
    Frozen,
    /// A float buffer (BatchNorm running stats, `mod_weights` in equal mode, `cross_gate`).
    Buffer,
    /// BatchNorm `num_batches_tracked`: an i64 counter in the file, held as a float here.
    Counter,
}

impl ParamKind {
    pub fn trainable(self) -> bool {
        self == ParamKind::Param
    }
    /// `parameter` / `buffer` as in the fixtures' config.json.
    pub fn torch_kind(self) -> &'static str {
        match self {
            ParamKind::Param | ParamKind::Frozen => "parameter",
            ParamKind::Buffer | ParamKind::Counter => "buffer",
        }
    }
}

/// How an entry is initialised (model.md §2.9).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// U(−b, b) (PyTorch Linear default with b = 1/√fan_in).
    Uniform(f64),
    Normal { mean: f64, std: f64 },
    /// softplus⁻¹(eˣ), x ~ N(mean, std²): a softplus-parameterised value that is log-normal, drawn from
    /// the stream as `Normal` draws (so every other entry initialises as it would with `Normal`).
    SoftplusInvLogNormal { mean: f64, std: f64 },
    Const(f64),
}

#[derive(Clone, Debug)]
pub struct ParamEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
    pub init: Init,
    pub offset: usize,
    pub len: usize,
}

/// The name table.
#[derive(Clone, Debug, Default)]
pub struct ParamLayout {
    pub entries: Vec<ParamEntry>,
    /// Trainable values live in `[0, n_trainable)`.
    pub n_trainable: usize,
    pub total: usize,
    index: HashMap<String, usize>,
}

/// Collects entries in state-dict order; `finish` assigns offsets.
#[derive(Default)]
pub struct LayoutBuilder {
    entries: Vec<ParamEntry>,
}

impl LayoutBuilder {
    /// Adds an entry and returns its index in the table.
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], kind: ParamKind, init: Init) -> usize {
        let name = name.into();
        debug_assert!(!self.entries.iter().any(|e| e.name == name), "duplicate parameter {name}");
        self.entries.push(ParamEntry {
            name,
            shape: shape.to_vec(),
            kind,
            init,
            offset: 0,
            len: shape.iter().product(),
        });
        self.entries.len() - 1
    }
    pub fn finish(mut self) -> ParamLayout {
        let mut off = 0;
        for e in self.entries.iter_mut().filter(|e| e.kind.trainable()) {
            e.offset = off;
            off += e.len;
        }
        let n_trainable = off;
        for e in self.entries.iter_mut().filter(|e| !e.kind.trainable()) {
            e.offset = off;
            off += e.len;
        }
        let index = self.entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        ParamLayout { entries: self.entries, n_trainable, total: off, index }
    }
}

impl ParamLayout {
    pub fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
    pub fn entry(&self, idx: usize) -> &ParamEntry {
        &self.entries[idx]
    }
    pub fn range(&self, idx: usize) -> std::ops::Range<usize> {
        let e = &self.entries[idx];
        e.offset..e.offset + e.len
    }
}

/// Parameter values (and buffers) in one flat buffer.
#[derive(Clone, Debug)]
pub struct Params<T> {
    pub layout: Arc<ParamLayout>,
    pub data: Vec<T>,
}

impl<T: Real> Params<T> {
    pub fn zeros(layout: Arc<ParamLayout>) -> Self {
        let n = layout.total;
        Params { layout, data: vec![T::ZERO; n] }
    }

    /// Initialise every entry per its `Init`, in name-table order, from one seeded stream.
    pub fn init(layout: Arc<ParamLayout>, seed: u64) -> Self {
        let mut p = Params::zeros(layout.clone());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for e in layout.entries.iter() {
            let dst = &mut p.data[e.offset..e.offset + e.len];
            match e.init {
                Init::Uniform(b) => dst.iter_mut().for_each(|v| *v = T::from_f64(rng.gen_range(-b..=b))),
                Init::Normal { mean, std } => {
                    let n = Normal::new(mean, std).expect("finite normal");
                    dst.iter_mut().for_each(|v| *v = T::from_f64(n.sample(&mut rng)));
                }
                Init::SoftplusInvLogNormal { mean, std } => {
                    let n = Normal::new(mean, std).expect("finite normal");
                    dst.iter_mut().for_each(|v| *v = T::from_f64(softplus_inv(n.sample(&mut rng).exp())));
                }
                Init::Const(c) => dst.iter_mut().for_each(|v| *v = T::from_f64(c)),
            }
        }
        p
    }

    #[inline]
    pub fn get(&self, idx: usize) -> &[T] {
        &self.data[self.layout.range(idx)]
    }
    #[inline]
    pub fn get_mut(&mut self, idx: usize) -> &mut [T] {
        let r = self.layout.range(idx);
        &mut self.data[r]
    }
    pub fn by_name(&self, name: &str) -> Option<&[T]> {
        self.layout.find(name).map(|i| self.get(i))
    }
    pub fn by_name_mut(&mut self, name: &str) -> Option<&mut [T]> {
        self.layout.find(name).map(|i| self.get_mut(i))
    }
    /// The trainable region (what the optimizer updates).
    pub fn trainable(&self) -> &[T] {
        &self.data[..self.layout.n_trainable]
    }
    pub fn trainable_mut(&mut self) -> &mut [T] {
        let n = self.layout.n_trainable;
        &mut self.data[..n]
    }
    pub fn cast<U: Real>(&self) -> Params<U> {
        Params { layout: self.layout.clone(), data: self.data.iter().map(|v| U::from_f64(v.to_f64())).collect() }
    }
    /// Set the `cross_gate` buffer (saved in checkpoints; the step itself reads `StepOptions::cross_gate`).
    pub fn set_cross_gate(&mut self, g: f64) {
        if let Some(v) = self.by_name_mut("cross_gate") {
            v[0] = T::from_f64(g);
        }
    }

    /// Load every entry from a safetensors file. Shapes must match exactly; floats may be f32/f64/f16/bf16,
    /// counters i64/i32 or float. Returns the names in the file that are not in the table.
    pub fn load_safetensors(&mut self, path: &Path) -> Result<Vec<String>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.load_safetensors_bytes(&bytes, &path.display().to_string())
    }

    pub fn load_safetensors_bytes(&mut self, bytes: &[u8], what: &str) -> Result<Vec<String>> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("{what}: not a safetensors file: {e:?}"))?;
        let layout = self.layout.clone();
        for e in layout.entries.iter() {
            let t = st
                .tensor(&e.name)
                .map_err(|_| anyhow::anyhow!("{what}: tensor `{}` (shape {:?}) is missing", e.name, e.shape))?;
            if t.shape() != e.shape.as_slice() {
                bail!("{what}: tensor `{}` has shape {:?}, the model expects {:?}", e.name, t.shape(), e.shape);
            }
            let vals = tensor_to_f64(&t).with_context(|| format!("{what}: tensor `{}`", e.name))?;
            for (d, v) in self.data[e.offset..e.offset + e.len].iter_mut().zip(vals) {
                *d = T::from_f64(v);
            }
        }
        let extra = st.names().into_iter().filter(|n| layout.find(n).is_none()).cloned().collect();
        Ok(extra)
    }

    /// All entries as (name, dtype, shape, little-endian bytes): f32 for floats, i64 for counters.
    pub fn to_tensors(&self) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        self.layout
            .entries
            .iter()
            .map(|e| {
                let vals = &self.data[e.offset..e.offset + e.len];
                if e.kind == ParamKind::Counter {
                    let b: Vec<u8> = vals.iter().flat_map(|v| (v.to_f64().round() as i64).to_le_bytes()).collect();
                    (e.name.clone(), Dtype::I64, e.shape.clone(), b)
                } else {
                    let b: Vec<u8> = vals.iter().flat_map(|v| v.to_f32().to_le_bytes()).collect();
                    (e.name.clone(), Dtype::F32, e.shape.clone(), b)
                }
            })
            .collect()
    }

    /// Save to a safetensors file (written atomically) with the state-dict names.
    pub fn save_safetensors(&self, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
        let bytes = self.to_safetensors_bytes(metadata)?;
        crate::util::write_atomic(path, |tmp| Ok(std::fs::write(tmp, &bytes)?))
    }

    /// The bytes [`Self::save_safetensors`] writes.
    pub fn to_safetensors_bytes(&self, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
        tensors_to_bytes(&self.to_tensors(), metadata)
    }
}

/// Write (name, dtype, shape, bytes) tensors to a safetensors file, atomically.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = tensors_to_bytes(tensors, metadata)?;
    crate::util::write_atomic(path, |tmp| Ok(std::fs::write(tmp, &bytes)?))
}

fn tensors_to_bytes(tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b).map_err(|e| anyhow::anyhow!("{e:?}"))?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, &metadata).map_err(|e| anyhow::anyhow!("serialising: {e:?}"))?;
    sorted_header(bytes)
}

/// safetensors bytes with the header's JSON object keys in sorted order. `safetensors::serialize`
/// writes the metadata map in HashMap order, which changes from one map to the next, so the same state
/// saved twice gave two byte versions (the same seed must give bit-identical runs, files included).
/// The length is unchanged: the same keys and values, reordered, padded with spaces as before.
pub fn sorted_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    anyhow::ensure!(bytes.len() >= 8, "safetensors: {} bytes, no header", bytes.len());
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    anyhow::ensure!(bytes.len() >= 8 + n, "safetensors: header of {n} bytes in {} bytes", bytes.len());
    let header = std::str::from_utf8(&bytes[8..8 + n]).map_err(|e| anyhow::anyhow!("safetensors header: {e}"))?;
    // serde_json's map is a BTreeMap (no `preserve_order` feature in this build): keys come out sorted
    let v: serde_json::Value = serde_json::from_str(header.trim_end()).map_err(|e| anyhow::anyhow!("safetensors header: {e}"))?;
    let sorted = serde_json::to_string(&v)?;
    anyhow::ensure!(sorted.len() <= n, "safetensors: the sorted header is longer than the written one");
    bytes[8..8 + sorted.len()].copy_from_slice(sorted.as_bytes());
    bytes[8 + sorted.len()..8 + n].fill(b' ');
    Ok(bytes)
}

/// Any numeric safetensors tensor as f64 values.
pub fn tensor_to_f64(t: &TensorView) -> Result<Vec<f64>> {
    let d = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F16 => {
            d.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f64()).collect()
        }
        Dtype::BF16 => {
            d.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64()).collect()
        }
        Dtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::U8 => d.iter().map(|&v| v as f64).collect(),
        Dtype::BOOL => d.iter().map(|&v| (v != 0) as u8 as f64).collect(),
        other => bail!("unsupported dtype {other:?}"),
    })
}

/// Gradients of the trainable region (same offsets as `Params`).
#[derive(Clone, Debug)]
pub struct Grads<T> {
    pub layout: Arc<ParamLayout>,
    pub data: Vec<T>,
}

impl<T: Real> Grads<T> {
    pub fn zeros(layout: Arc<ParamLayout>) -> Self {
        let n = layout.n_trainable;
        Grads { layout, data: vec![T::ZERO; n] }
    }
    /// The gradient slot of entry `idx`; None for frozen parameters and buffers.
    #[inline]
    pub fn slot(&mut self, idx: usize) -> Option<&mut [T]> {
        let e = &self.layout.entries[idx];
        if e.kind.trainable() {
            Some(&mut self.data[e.offset..e.offset + e.len])
        } else {
            None
        }
    }
    pub fn get(&self, idx: usize) -> Option<&[T]> {
        let e = &self.layout.entries[idx];
        e.kind.trainable().then(|| &self.data[e.offset..e.offset + e.len])
    }
    pub fn by_name(&self, name: &str) -> Option<&[T]> {
        self.layout.find(name).and_then(|i| self.get(i))
    }
    pub fn add_assign(&mut self, other: &Grads<T>) {
        for (a, &b) in self.data.iter_mut().zip(&other.data) {
            *a += b;
        }
    }
    pub fn norm(&self) -> f64 {
        self.data.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>().sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dims, ModelConfig, NormPlacement, SpliceVae};

    fn model() -> SpliceVae {
        let cfg = ModelConfig { use_batch_norm: NormPlacement::Both, n_hidden: Some(4), n_latent: Some(2), ..ModelConfig::default() };
        let dims = Dims { n_genes: 5, n_junctions: 6, n_atse: 3, n_batch: 2, n_labels: 1, n_obs: 4, ..Dims::default() };
        SpliceVae::new(cfg, dims, vec![0, 0, 1, 1, 2, 2]).unwrap()
    }

    #[test]
    fn trainable_region_first_and_buffers_flagged() {
        let m = model();
        let l = &m.layout;
        for e in &l.entries {
            assert_eq!(e.kind.trainable(), e.offset + e.len <= l.n_trainable, "{}", e.name);
            if e.name.ends_with("running_mean") || e.name.ends_with("running_var") || e.name == "cross_gate" {
                assert_eq!(e.kind, ParamKind::Buffer, "{}", e.name);
            }
            if e.name.ends_with("num_batches_tracked") {
                assert_eq!(e.kind, ParamKind::Counter);
            }
        }
        let covered: usize = l.entries.iter().map(|e| e.len).sum();
        assert_eq!(covered, l.total);
    }

    #[test]
    fn safetensors_roundtrip_keeps_names_values_and_i64_counters() {
        let m = model();
        let mut p = m.init_params::<f32>(3);
        let nbt = m.layout.entries.iter().position(|e| e.kind == ParamKind::Counter).unwrap();
        p.get_mut(nbt)[0] = 12345.0;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        p.save_safetensors(&path, None).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(&m.layout.entries[nbt].name).unwrap();
        assert_eq!(t.dtype(), Dtype::I64);
        assert_eq!(i64::from_le_bytes(t.data().try_into().unwrap()), 12345);
        let mut q = Params::<f32>::zeros(m.layout.clone());
        let extra = q.load_safetensors(&path).unwrap();
        assert!(extra.is_empty());
        assert_eq!(p.data, q.data);
        // A file from a different architecture is rejected with the tensor's name.
        let other = SpliceVae::new(
            ModelConfig { n_hidden: Some(5), ..m.cfg.clone() },
            m.dims.clone(),
            m.junc2atse.clone(),
        )
        .unwrap();
        let mut r = Params::<f32>::zeros(other.layout.clone());
        let err = r.load_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("shape") && err.contains("z_encoder_expression"), "{err}");
    }

    #[test]
    fn init_is_seeded_and_follows_the_spec() {
        let m = model();
        let a = m.init_params::<f32>(7);
        let b = m.init_params::<f32>(7);
        let c = m.init_params::<f32>(8);
        assert_eq!(a.data, b.data);
        assert_ne!(a.data, c.data);
        let w = a.by_name("z_encoder_expression.encoder.fc_layers.Layer 0.0.weight").unwrap();
        let bound = 1.0 / (5f32).sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > bound / 2.0));
        assert!(a.by_name("cross_gate").unwrap() == [0.0]);
        assert!(a.by_name("mod_weights").unwrap().iter().all(|&v| v == 1.0));
        let rv = a.by_name("z_encoder_expression.encoder.fc_layers.Layer 0.1.running_var").unwrap();
        assert!(rv.iter().all(|&v| v == 1.0));
        let lp = a.by_name("log_phi_j").unwrap();
        let mean = lp.iter().sum::<f32>() / lp.len() as f32;
        assert!((mean - 100f32.ln()).abs() < 1.5, "log_phi mean {mean}");
    }
}
