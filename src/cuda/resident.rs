//! The dataset resident on the device (design.md §4): uploaded once, so that a training step copies
//! only its cells and their cell-level covariates (`HostBatch::build_resident`) and the step gathers
//! every per-entry array and builds the index structures there (kernels/gather.cu).
//!
//! What is uploaded: the expression CSR (counts), the splicing CSR (junction, k, n, ψ), and what the
//! host computes once per cell instead of once per minibatch: the encoders' inputs where they are not
//! the counts (transformed values; `encode_covariates`' extra columns), and for the
//! Dirichlet-multinomial each cell's ATSE groups (`AtseGroups`, relative to the cell's row). Per-cell
//! facts the host needs (row pointers, which cells have counts) stay on the host in [`ResidentIndex`].
//!
//! When the dataset does not fit (or `--data-residency host`), the step streams each minibatch from
//! the host instead ([`crate::cuda::step::HostBatch::build`]).

use super::runtime::{CudaDevice, DevBuf};
use super::step::EncoderInputs;
use crate::data::Dataset;
use crate::model::arch::SplEncP;
use crate::model::config::{ExpressionInput, SplicingLoss};
use crate::model::spl_lik::AtseGroups;
use crate::model::{Batch, SpliceVae};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Where the training data lives while the steps run on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// On the device when it fits in half of the free device memory, else streamed.
    Auto,
    /// On the device (an error when it cannot be uploaded).
    Device,
    /// Streamed from the host, one packed minibatch per step.
    Host,
}

impl std::str::FromStr for Residency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Residency::Auto),
            "device" => Ok(Residency::Device),
            "host" => Ok(Residency::Host),
            o => Err(format!("invalid data residency `{o}`: expected auto, device or host")),
        }
    }
}

static RESIDENCY: AtomicU8 = AtomicU8::new(0);

/// The process' choice (`--data-residency`, a global option of the CLI).
pub fn set_residency(r: Residency) {
    RESIDENCY.store(r as u8, Ordering::Relaxed);
}

pub fn residency() -> Residency {
    match RESIDENCY.load(Ordering::Relaxed) {
        1 => Residency::Device,
        2 => Residency::Host,
        _ => Residency::Auto,
    }
}

/// Per-cell facts of the resident dataset the host needs to prepare a minibatch (shared with the
/// preparation thread).
pub struct ResidentIndex {
    pub n_cells: usize,
    /// Row pointers of the expression counts, the expression encoder's input when it is its own CSR,
    /// the splicing entries, the vanilla splicing encoder's input when it is its own CSR, and the
    /// Dirichlet-multinomial's groups.
    pub x_ptr: Vec<i64>,
    pub xe_ptr: Option<Vec<i64>>,
    pub s_ptr: Vec<i64>,
    pub ps_ptr: Option<Vec<i64>>,
    pub g_ptr: Option<Vec<i64>>,
    /// Columns of the expression encoder's and the vanilla splicing encoder's inputs.
    pub xe_cols: usize,
    pub ps_cols: usize,
    /// A positive count total (the expression mask) and an observed junction, per cell.
    pub has_expr: Vec<bool>,
    pub has_spl: Vec<bool>,
}

/// A CSR on the device: row pointers, column indices, values.
pub(crate) struct DevCsr {
    pub ptr: DevBuf<i64>,
    pub idx: DevBuf<u32>,
    pub val: DevBuf<f32>,
}

/// The dataset on the device.
pub struct DeviceDataset {
    pub index: Arc<ResidentIndex>,
    pub(crate) x: DevCsr,
    pub(crate) xe: Option<DevCsr>,
    pub(crate) s_ptr: DevBuf<i64>,
    pub(crate) s_junc: DevBuf<u32>,
    pub(crate) s_k: DevBuf<f32>,
    pub(crate) s_n: DevBuf<f32>,
    pub(crate) s_psi: DevBuf<f32>,
    pub(crate) ps: Option<DevCsr>,
    /// DM groups: per cell (pointers over the groups), each group's start in its cell's row, its ATSE,
    /// and each cell's entries in (ATSE, entry) order relative to its row.
    pub(crate) groups: Option<DevGroupsData>,
    bytes: usize,
}

pub(crate) struct DevGroupsData {
    pub ptr: DevBuf<i64>,
    pub start_rel: DevBuf<u32>,
    pub atse: DevBuf<u32>,
    pub ord_rel: DevBuf<u32>,
}

/// A host CSR in the upload's layout.
struct HostCsr {
    ptr: Vec<i64>,
    idx: Vec<u32>,
    val: Vec<f32>,
}

/// Cells per chunk of the host precomputation (chunks run in parallel).
const CHUNK: usize = 1024;

/// Device bytes the resident dataset of `m` over `ds` needs, estimated from the entry counts before
/// anything is built (an upper bound for the DM groups).
pub fn bytes_needed(m: &SpliceVae, ds: &Dataset) -> usize {
    let n = ds.n_cells();
    let x_nnz = ds.expression.as_ref().map_or(0, |x| x.indices.len());
    let nnz = ds.splicing.nnz();
    let cov_cols = m.dims.n_cont + m.arch.dec_cats.iter().sum::<usize>();
    let enc_cov = m.cfg.encode_covariates && cov_cols > 0;
    let vanilla = matches!(m.arch.z_enc_spl, SplEncP::Vanilla(_));
    let mut b = 8 * (n + 1) + 8 * x_nnz + 8 * (n + 1) + 16 * nnz;
    if enc_cov || m.cfg.expression_input != ExpressionInput::Raw {
        b += 8 * (n + 1) + 8 * (x_nnz + n * cov_cols);
    }
    if enc_cov && vanilla {
        b += 8 * (n + 1) + 8 * (nnz + n * cov_cols);
    }
    if m.cfg.splicing_loss_type == SplicingLoss::DirichletMultinomial {
        b += 8 * (n + 1) + 4 * nnz + 8 * nnz;
    }
    b
}

/// Every row's column indices distinct (the device CSC places at most one entry per (row, column)).
fn check_distinct(what: &str, source: &str, ptr: &[usize], idx: &[u32]) -> Result<()> {
    let bad = (0..ptr.len() - 1).into_par_iter().find_first(|&c| {
        let row = &idx[ptr[c]..ptr[c + 1]];
        if row.windows(2).all(|w| w[0] < w[1]) {
            return false;
        }
        let mut s = row.to_vec();
        s.sort_unstable();
        s.windows(2).any(|w| w[0] == w[1])
    });
    if let Some(c) = bad {
        bail!("{source}: {what} of cell {c} lists a column twice; every cell's entries must be distinct");
    }
    Ok(())
}

/// What the host computes once per dataset for the upload: the per-cell inputs beyond the counts and
/// the index.
pub struct ResidentHost {
    pub index: ResidentIndex,
    xe: Option<HostCsr>,
    ps: Option<HostCsr>,
    /// (pointers over cells, start in the row, ATSE) per group, and the rows' (ATSE, entry) order.
    groups: Option<(Vec<i64>, Vec<u32>, Vec<u32>, Vec<u32>)>,
}

impl ResidentHost {
    /// The per-cell inputs of `m` over `ds`, built on the host in parallel (chunks of cells), as the host
    /// pack computes them per minibatch.
    pub fn build(m: &SpliceVae, ds: &Dataset) -> Result<ResidentHost> {
        let _r = crate::nvtx_range!("dataset preparation");
        let x = ds.expression.as_ref().with_context(|| format!("{}: the model needs an expression modality", ds.source))?;
        let s = &ds.splicing;
        let n = ds.n_cells();
        anyhow::ensure!(x.n_rows == n && s.n_cells == n, "{}: {} expression rows, {} splicing rows, {n} cells", ds.source, x.n_rows, s.n_cells);
        anyhow::ensure!(n < u32::MAX as usize, "{}: {n} cells (at most 2³² − 1 on the device)", ds.source);
        check_distinct("the expression row", &ds.source, &x.indptr, &x.indices)?;
        check_distinct("the splicing row", &ds.source, &s.indptr, &s.junction)?;
        let dm = m.cfg.splicing_loss_type == SplicingLoss::DirichletMultinomial;
        let cells: Vec<usize> = (0..n).collect();
        // Per chunk of cells: the encoders' own inputs and the DM groups, as the host pack computes them.
        struct Chunk {
            xe: Option<(Vec<usize>, Vec<u32>, Vec<f32>, usize)>,
            ps: Option<(Vec<usize>, Vec<u32>, Vec<f32>, usize)>,
            groups: Option<(Vec<usize>, Vec<u32>, Vec<u32>, Vec<u32>)>,
        }
        let chunks: Vec<Result<Chunk>> = cells
            .par_chunks(CHUNK)
            .map(|part| -> Result<Chunk> {
                let batch = Batch::from_dataset(ds, part, true)?;
                let enc = EncoderInputs::of(m, &batch);
                let xe = match (enc.xe_cov, enc.xe_vals) {
                    (Some(sp), _) => Some((sp.indptr, sp.indices, sp.values, sp.cols)),
                    (None, Some(v)) => Some((batch.expr.indptr.clone(), batch.expr.indices.clone(), v, batch.expr.n_cols)),
                    (None, None) => None,
                };
                let ps = enc.ps_cov.map(|sp| (sp.indptr, sp.indices, sp.values, sp.cols));
                let groups = if dm {
                    let spl = &batch.spl;
                    let g = AtseGroups::build(spl, &m.junc2atse, &m.atse_ptr).with_context(|| format!("{}: cells from {}", ds.source, part[0]))?;
                    let mut per_cell = vec![0usize; part.len() + 1];
                    let (mut start_rel, mut atse, mut ord_rel) = (Vec::with_capacity(g.n_groups()), Vec::with_capacity(g.n_groups()), Vec::with_capacity(spl.nnz()));
                    for i in 0..part.len() {
                        let row0 = spl.indptr[i];
                        let (g0, g1) = (g.cell_ptr[i], g.cell_ptr[i + 1]);
                        per_cell[i + 1] = per_cell[i] + (g1 - g0);
                        for q in g0..g1 {
                            start_rel.push((g.grp_ptr[q] - row0) as u32);
                            atse.push(m.junc2atse[spl.junction[g.ord[g.grp_ptr[q]] as usize] as usize]);
                        }
                        ord_rel.extend(g.ord[row0..spl.indptr[i + 1]].iter().map(|&e| e - row0 as u32));
                    }
                    Some((per_cell, start_rel, atse, ord_rel))
                } else {
                    None
                };
                Ok(Chunk { xe, ps, groups })
            })
            .collect();
        let chunks: Vec<Chunk> = chunks.into_iter().collect::<Result<_>>()?;
        // Concatenate the chunks' CSRs (pointers offset by the entries before).
        fn join(parts: Vec<(Vec<usize>, Vec<u32>, Vec<f32>, usize)>) -> (HostCsr, usize) {
            let cols = parts.first().map_or(0, |p| p.3);
            let mut out = HostCsr { ptr: vec![0], idx: Vec::new(), val: Vec::new() };
            for (ptr, idx, val, _) in parts {
                let base = out.idx.len() as i64;
                out.ptr.extend(ptr[1..].iter().map(|&p| base + p as i64));
                out.idx.extend(idx);
                out.val.extend(val);
            }
            (out, cols)
        }
        let mut xe_parts = Vec::new();
        let mut ps_parts = Vec::new();
        let mut grp_parts = Vec::new();
        for c in chunks {
            xe_parts.extend(c.xe);
            ps_parts.extend(c.ps);
            grp_parts.extend(c.groups);
        }
        let xe = (!xe_parts.is_empty()).then(|| join(xe_parts));
        let ps = (!ps_parts.is_empty()).then(|| join(ps_parts));
        let groups = (!grp_parts.is_empty()).then(|| {
            let (mut ptr, mut start_rel, mut atse, mut ord_rel) = (vec![0i64], Vec::new(), Vec::new(), Vec::new());
            for (per_cell, sr, at, or) in grp_parts {
                let base = *ptr.last().unwrap();
                ptr.extend(per_cell[1..].iter().map(|&p| base + p as i64));
                start_rel.extend(sr);
                atse.extend(at);
                ord_rel.extend(or);
            }
            (ptr, start_rel, atse, ord_rel)
        });
        let i64s = |v: &[usize]| v.iter().map(|&p| p as i64).collect::<Vec<i64>>();
        let has_expr: Vec<bool> = (0..n).into_par_iter().map(|c| x.values[x.indptr[c]..x.indptr[c + 1]].iter().map(|&v| v as f64).sum::<f64>() > 0.0).collect();
        let has_spl: Vec<bool> = (0..n).map(|c| !s.cell_range(c).is_empty()).collect();
        let index = ResidentIndex {
            n_cells: n,
            x_ptr: i64s(&x.indptr),
            xe_ptr: xe.as_ref().map(|(c, _)| c.ptr.clone()),
            s_ptr: i64s(&s.indptr),
            ps_ptr: ps.as_ref().map(|(c, _)| c.ptr.clone()),
            g_ptr: groups.as_ref().map(|g| g.0.clone()),
            xe_cols: xe.as_ref().map_or(x.n_cols, |(_, c)| *c),
            ps_cols: ps.as_ref().map_or(s.n_junctions, |(_, c)| *c),
            has_expr,
            has_spl,
        };
        Ok(ResidentHost { index, xe: xe.map(|(c, _)| c), ps: ps.map(|(c, _)| c), groups })
    }
}

impl DeviceDataset {
    /// Builds the per-cell inputs of `m` over `ds` on the host (in parallel, once) and uploads them.
    pub fn upload(dev: &CudaDevice, m: &SpliceVae, ds: &Dataset) -> Result<DeviceDataset> {
        Self::upload_prepared(dev, ResidentHost::build(m, ds)?, ds)
    }

    /// Uploads `host` (built for `ds`) and `ds`' counts.
    pub fn upload_prepared(dev: &CudaDevice, host: ResidentHost, ds: &Dataset) -> Result<DeviceDataset> {
        let _r = crate::nvtx_range!("dataset upload");
        let ResidentHost { index, xe, ps, groups } = host;
        let x = ds.expression.as_ref().context("the dataset has no expression modality")?;
        let s = &ds.splicing;
        anyhow::ensure!(index.n_cells == ds.n_cells(), "the prepared dataset has {} cells, this one {}", index.n_cells, ds.n_cells());
        // Empty arrays are uploaded as one element (a device buffer is never empty).
        fn up<T: cudarc::driver::DeviceRepr + Copy + Default>(dev: &CudaDevice, v: &[T], what: &str) -> Result<DevBuf<T>> {
            let r = if v.is_empty() { dev.upload(&[T::default()]) } else { dev.upload(v) };
            r.with_context(|| format!("uploading the dataset's {what} ({} values) to the device", v.len()))
        }
        let csr = |c: &HostCsr, what: &str| -> Result<DevCsr> { Ok(DevCsr { ptr: up(dev, &c.ptr, what)?, idx: up(dev, &c.idx, what)?, val: up(dev, &c.val, what)? }) };
        let xd = DevCsr { ptr: up(dev, &index.x_ptr, "expression")?, idx: up(dev, &x.indices, "expression")?, val: up(dev, &x.values, "expression")? };
        let xe_d = xe.as_ref().map(|c| csr(c, "expression encoder input")).transpose()?;
        let ps_d = ps.as_ref().map(|c| csr(c, "splicing encoder input")).transpose()?;
        let groups_d = groups
            .as_ref()
            .map(|(p, sr, at, or)| -> Result<DevGroupsData> {
                Ok(DevGroupsData { ptr: up(dev, p, "ATSE groups")?, start_rel: up(dev, sr, "ATSE groups")?, atse: up(dev, at, "ATSE groups")?, ord_rel: up(dev, or, "ATSE groups")? })
            })
            .transpose()?;
        let dd = DeviceDataset {
            x: xd,
            xe: xe_d,
            s_ptr: up(dev, &index.s_ptr, "splicing")?,
            s_junc: up(dev, &s.junction, "splicing")?,
            s_k: up(dev, &s.k, "splicing")?,
            s_n: up(dev, &s.n, "splicing")?,
            s_psi: up(dev, &s.psi, "splicing")?,
            ps: ps_d,
            groups: groups_d,
            index: Arc::new(index),
            bytes: 0,
        };
        let csr_bytes = |c: &DevCsr| 8 * c.ptr.len() + 4 * (c.idx.len() + c.val.len());
        let bytes = csr_bytes(&dd.x)
            + dd.xe.as_ref().map_or(0, csr_bytes)
            + dd.ps.as_ref().map_or(0, csr_bytes)
            + 8 * dd.s_ptr.len()
            + 4 * (dd.s_junc.len() + dd.s_k.len() + dd.s_n.len() + dd.s_psi.len())
            + dd.groups.as_ref().map_or(0, |g| 8 * g.ptr.len() + 4 * (g.start_rel.len() + g.atse.len() + g.ord_rel.len()));
        Ok(DeviceDataset { bytes, ..dd })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_parses_and_names_the_choices() {
        assert_eq!("auto".parse::<Residency>(), Ok(Residency::Auto));
        assert_eq!("device".parse::<Residency>(), Ok(Residency::Device));
        assert_eq!("host".parse::<Residency>(), Ok(Residency::Host));
        let e = "gpu".parse::<Residency>().unwrap_err();
        assert!(e.contains("`gpu`") && e.contains("auto, device or host"), "{e}");
    }
}
